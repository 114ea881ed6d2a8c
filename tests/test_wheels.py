"""Wheels for Kaggle's offline notebook: fetched for Kaggle's Python and platform (submission/wheels.py),
packaged into the dataset, installed offline and only when missing (submission/kaggle_setup.py).

Nothing here touches the test environment: installs go to a --target folder in tmp, and every pip
run is cut off from the package index except the one real download, which skips without PyPI."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import onnx
import pytest
from onnx import TensorProto, helper

from data.features import FEATURES_VERSION, FeatureConfig
from submission import kaggle_setup, notebook, package, wheels
from submission.kaggle_setup import SetupError, install_missing
from submission.wheels import NOISEREDUCE, ONNXRUNTIME, Wheel, WheelConfig, WheelError, fetch_wheels

REPO = Path(__file__).resolve().parents[1]
CLOSED_INDEX = "http://127.0.0.1:9/simple"  # the discard port: nothing listens, connections are refused


# ---------------------------------------------------------------- helpers (test_upload.py uses them too)


def build_wheel(folder: Path, dist: str = "birdkit-tinypkg", version: str = "0.1.0", tag: str = "py3-none-any") -> Path:
    """A minimal valid wheel, written by hand: one module whose VALUE is 42."""
    stem = dist.replace("-", "_")
    info = f"{stem}-{version}.dist-info"
    files = {
        f"{stem}/__init__.py": b"VALUE = 42\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": (f"Wheel-Version: 1.0\nGenerator: birdkit-tests\n"
                          f"Root-Is-Purelib: {'true' if tag.endswith('-any') else 'false'}\nTag: {tag}\n").encode(),
    }
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()) + f"{info}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in {**files, f"{info}/RECORD": record.encode()}.items():
            archive.writestr(name, data)
    return path


def tiny_onnx(path: Path, denoise: str = "none") -> Path:
    """An ONNX file with the kit's metadata: all that `make package` reads of a model."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "tiny", [x], [y]))
    for key, value in {"classes": json.dumps(["asbfly", "barswa"]), "model_name": "simple_cnn", "val_roc_auc": "0.75",
                       "features": json.dumps(FeatureConfig(denoise=denoise).to_dict()),
                       "features_version": str(FEATURES_VERSION)}.items():
        model.metadata_props.add(key=key, value=value)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def seeded_cache(cache: Path) -> Path:
    """A wheel cache already holding what the kit bundles, so packaging needs no network."""
    for tag in ("cp311-cp311-manylinux_2_28_x86_64", "cp312-cp312-manylinux_2_28_x86_64"):
        build_wheel(cache, "onnxruntime", ONNXRUNTIME.version, tag)
    build_wheel(cache, "noisereduce", NOISEREDUCE.version, "py3-none-any")
    return cache


@pytest.fixture
def offline_pip(monkeypatch):
    """pip sees no configuration and an index that refuses connections, once, quickly."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", CLOSED_INDEX)
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_TARGET", "PIP_CONSTRAINT"):
        monkeypatch.delenv(name, raising=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the list


def test_the_pins_are_the_kits_own():
    makefile = (REPO / "Makefile").read_text()
    requirements = (REPO / "requirements.txt").read_text()
    assert re.search(rf"^ORT_VERSION\s*\?=\s*{re.escape(ONNXRUNTIME.version)}\s*$", makefile, re.M)
    assert re.search(rf"^noisereduce=={re.escape(NOISEREDUCE.version)}\b", requirements, re.M)
    assert wheels.kit_wheels("none") == wheels.kit_wheels("spectral") == (ONNXRUNTIME,)
    assert wheels.kit_wheels("noisereduce") == (ONNXRUNTIME, NOISEREDUCE)


def test_a_python_version_that_is_not_x_y_is_refused():
    with pytest.raises(ValueError, match="python version must look like 3.11, got '311'"):
        WheelConfig(python_versions=("311",))


# ---------------------------------------------------------------- fetching

# One of Kaggle's Pythons that this machine's is not: the fetch must not fall back on this one.
KAGGLE_NOT_THIS_PYTHON = "3.11" if sys.version_info[:2] == (3, 12) else "3.12"


def test_pip_is_asked_for_kaggles_python_and_platform_then_the_cache_answers(tmp_path):
    calls = []
    kaggle, cp = KAGGLE_NOT_THIS_PYTHON, "cp3" + KAGGLE_NOT_THIS_PYTHON.split(".")[1]

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        build_wheel(dest, "onnxruntime", ONNXRUNTIME.version, f"{cp}-{cp}-manylinux_2_28_x86_64")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    cfg = WheelConfig(python_versions=(kaggle,), packages=(ONNXRUNTIME,))
    cache, dest = tmp_path / "cache", tmp_path / "dataset" / "wheels"

    got = fetch_wheels(cfg, dest, cache, run=fake_pip)

    [cmd] = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:"} <= set(cmd)
    assert cmd[cmd.index("--python-version") + 1] == kaggle != f"{sys.version_info.major}.{sys.version_info.minor}"
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"] == [
        "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    assert cmd[cmd.index("--implementation") + 1] == "cp"
    assert Path(cmd[cmd.index("-d") + 1]).parent == cache and cmd[-1] == "onnxruntime==1.32.0"
    assert [p.name for p in got] == [f"onnxruntime-1.32.0-{cp}-{cp}-manylinux_2_28_x86_64.whl"]
    assert got[0].parent == dest and got[0].read_bytes() == (cache / got[0].name).read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == [got[0].name]  # pip's private folder is gone

    again = fetch_wheels(cfg, tmp_path / "again", cache, run=fake_pip)  # a second `make package`
    assert len(calls) == 1 and [p.name for p in again] == [p.name for p in got]


def test_a_cached_wheel_for_another_python_or_platform_does_not_count(tmp_path):
    cache = tmp_path / "cache"
    build_wheel(cache, "onnxruntime", ONNXRUNTIME.version, "cp311-cp311-manylinux_2_28_x86_64")
    build_wheel(cache, "onnxruntime", ONNXRUNTIME.version, "cp312-cp312-macosx_11_0_arm64")
    build_wheel(cache, "onnxruntime", "1.31.0", "cp312-cp312-manylinux_2_28_x86_64")
    cfg = WheelConfig()
    assert wheels.cached_wheel(cache, ONNXRUNTIME, cfg, "3.11").name.startswith("onnxruntime-1.32.0-cp311")
    assert wheels.cached_wheel(cache, ONNXRUNTIME, cfg, "3.12") is None


def test_a_real_download_brings_kaggles_wheels_not_this_machines(tmp_path):
    """six is pure Python; markupsafe is compiled, and asked for a CPython that is not this one."""
    cp = "cp3" + KAGGLE_NOT_THIS_PYTHON.split(".")[1]
    cfg = WheelConfig(python_versions=(KAGGLE_NOT_THIS_PYTHON,), packages=(Wheel("six", "1.17.0", "six"),
                                                           Wheel("markupsafe", "3.0.3", "markupsafe")))
    try:
        got = fetch_wheels(cfg, tmp_path / "wheels", tmp_path / "cache")
    except WheelError as e:
        if e.unreachable:
            pytest.skip(f"PyPI is unreachable from here: {e}")
        raise
    names = sorted(p.name for p in got)
    assert names[1] == "six-1.17.0-py2.py3-none-any.whl"
    assert re.fullmatch(rf"markupsafe-3\.0\.3-{cp}-{cp}-.*manylinux.*_x86_64\.whl", names[0])
    assert all(zipfile.is_zipfile(p) for p in got)


def test_an_unreachable_index_says_where_to_run_make_package(tmp_path, offline_pip, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    model = tiny_onnx(tmp_path / "model.onnx")
    out = tmp_path / "dist"

    assert package.main(["--data", str(tmp_path), "--onnx", str(model), "--out", str(out),
                         "--wheel-cache", str(tmp_path / "empty-cache")]) == 1

    err = capsys.readouterr().err
    assert err == (
        "error: pip could not reach the package index to download onnxruntime==1.32.0 for Kaggle (Python 3.11, cp, "
        "manylinux_2_28_x86_64 / manylinux_2_17_x86_64 / manylinux2014_x86_64): connection refused.\n"
        "  Run `make package` where PyPI is reachable, or pass --no-wheels (PACKAGE_ARGS=--no-wheels) and attach "
        "the wheels dataset yourself.\n")
    assert not out.exists() and not (tmp_path / ".dist.tmp").exists()


# ---------------------------------------------------------------- packaging


def test_the_packaged_dataset_holds_the_wheels_its_manifest_lists(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    cache = seeded_cache(tmp_path / "cache")
    model = tiny_onnx(tmp_path / "model.onnx", denoise="noisereduce")
    out = tmp_path / "dist"

    assert package.main(["--data", str(tmp_path), "--onnx", str(model), "--out", str(out),
                         "--wheel-cache", str(cache)]) == 0

    dataset = out / "dataset"
    manifest = json.loads((dataset / "birdkit.json").read_text())["wheels"]
    on_disk = {p.name: sha256(p) for p in (dataset / "wheels").iterdir()}
    assert on_disk == manifest["files"]
    assert sorted(on_disk) == ["noisereduce-3.0.3-py3-none-any.whl",
                               "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                               "onnxruntime-1.32.0-cp312-cp312-manylinux_2_28_x86_64.whl"]
    assert manifest["requirements"] == {"onnxruntime": "onnxruntime==1.32.0", "noisereduce": "noisereduce==3.0.3"}
    assert manifest["bundled"] and manifest["dir"] == "wheels" and manifest["python_versions"] == ["3.11", "3.12"]
    assert (dataset / "code" / "submission" / "kaggle_setup.py").read_bytes() == \
        (REPO / "submission" / "kaggle_setup.py").read_bytes()
    assert "package: wheels for Kaggle (Python 3.11, 3.12): noisereduce-3.0.3" in capsys.readouterr().out


def test_no_wheels_packages_none_but_still_lists_what_the_notebook_needs(tmp_path, monkeypatch, offline_pip, capsys):
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    model = tiny_onnx(tmp_path / "model.onnx")
    out = tmp_path / "dist"

    assert package.main(["--data", str(tmp_path), "--onnx", str(model), "--out", str(out), "--no-wheels",
                         "--wheel-cache", str(tmp_path / "never-used")]) == 0

    manifest = json.loads((out / "dataset" / "birdkit.json").read_text())["wheels"]
    assert manifest["bundled"] is False and manifest["files"] == {}
    assert manifest["requirements"] == {"onnxruntime": "onnxruntime==1.32.0"}
    assert not (out / "dataset" / "wheels").exists() and not (tmp_path / "never-used").exists()
    assert "attach a dataset holding onnxruntime==1.32.0" in capsys.readouterr().out


def test_the_notebook_installs_missing_wheels_before_it_imports_the_kit(tmp_path, monkeypatch, offline_pip):
    """The notebook's own cells, run against the packaged dataset, with a requirement the kernel lacks."""
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    out = tmp_path / "dist"
    package.package(package.PackageConfig([tiny_onnx(tmp_path / "model.onnx")], out, bundle_wheels=False))
    dataset = out / "dataset"
    build_wheel(dataset / "wheels")
    manifest = json.loads((dataset / "birdkit.json").read_text())
    manifest["wheels"]["requirements"] = {"json": "json==0", "birdkit_tinypkg": "birdkit-tinypkg==0.1.0"}
    (dataset / "birdkit.json").write_text(json.dumps(manifest))
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "birdclef-kit-model").symlink_to(dataset, target_is_directory=True)
    nb = nbformat.read(next((out / "notebook").glob("*.ipynb")), as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert code == [notebook.LOCATE, notebook.SETUP, notebook.RUN]  # setup before the kit's first import
    site = tmp_path / "site"
    site.mkdir()
    env = {**os.environ, "BIRDKIT_INPUT_DIR": str(tmp_path / "input"), "PIP_TARGET": str(site),
           "PYTHONPATH": str(site)}

    result = subprocess.run([sys.executable, "-c", "\n".join(code[:2]) + "\nimport birdkit_tinypkg\n"
                             "print('VALUE', birdkit_tinypkg.VALUE)"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert "setup: json is importable" in result.stdout
    assert f"setup: installing birdkit-tinypkg==0.1.0 offline from {tmp_path / 'input' / 'birdclef-kit-model' / 'wheels'}" \
        in result.stdout
    assert result.stdout.endswith("setup: installed birdkit-tinypkg==0.1.0\nVALUE 42\n")
    assert (site / "birdkit_tinypkg" / "__init__.py").exists()


# ---------------------------------------------------------------- installing on Kaggle


def test_install_missing_skips_the_importable_and_installs_the_rest_offline(tmp_path, offline_pip, monkeypatch,
                                                                             capsys):
    build_wheel(tmp_path / "wheels")
    build_wheel(tmp_path / "wheels", "birdkit-other", "1.0")  # present, not asked for
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    installed = install_missing(tmp_path / "wheels", {"json": "json==0", "birdkit_tinypkg": "birdkit-tinypkg==0.1.0"},
                                target=site)

    assert installed == ["birdkit-tinypkg==0.1.0"]
    assert sorted(p.name for p in site.iterdir() if not p.name.startswith(".")) == [
        "birdkit_tinypkg", "birdkit_tinypkg-0.1.0.dist-info"]
    import birdkit_tinypkg

    assert birdkit_tinypkg.VALUE == 42 and Path(birdkit_tinypkg.__file__).is_relative_to(site)
    out = capsys.readouterr().out
    assert f"setup: installing birdkit-tinypkg==0.1.0 offline from {tmp_path / 'wheels'}\n" in out
    assert re.search(r"setup: json is importable \(.*\): not installing json==0\n", out)

    assert install_missing(tmp_path / "wheels", {"birdkit_tinypkg": "birdkit-tinypkg==0.1.0"}, target=site) == []
    assert "setup: birdkit_tinypkg is importable (birdkit-tinypkg 0.1.0): not installing" in capsys.readouterr().out
    sys.modules.pop("birdkit_tinypkg", None)


def test_a_missing_wheel_is_named_with_what_to_do(tmp_path):
    (tmp_path / "wheels").mkdir()
    build_wheel(tmp_path / "wheels", "birdkit-tinypkg", "0.0.9")  # another version does not count

    with pytest.raises(SetupError) as e:
        install_missing(tmp_path / "wheels", {"birdkit_tinypkg": "birdkit-tinypkg==0.1.0"})

    assert str(e.value) == (
        f"no wheel for birdkit-tinypkg==0.1.0 in {tmp_path / 'wheels'}, and this notebook has no internet to "
        "download it.\n  Re-run `make package` (without --no-wheels) where PyPI is reachable and upload the dataset "
        "again (`make upload`),\n  or attach a Kaggle dataset that holds the wheel to this notebook.")


def test_a_wheels_dataset_attached_by_hand_is_found(tmp_path, offline_pip, monkeypatch):
    build_wheel(tmp_path / "input" / "my-wheels" / "whl")
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    assert install_missing(tmp_path / "input" / "kit" / "wheels", {"birdkit_tinypkg": "birdkit-tinypkg==0.1.0"},
                           search_dir=tmp_path / "input", target=site) == ["birdkit-tinypkg==0.1.0"]
    assert (site / "birdkit_tinypkg").is_dir()
    sys.modules.pop("birdkit_tinypkg", None)


def test_wheels_datasets_are_found_in_both_of_kaggles_mount_layouts(tmp_path):
    from submission.kaggle_setup import find_wheel_dirs

    old, new = tmp_path / "my-wheels" / "whl", tmp_path / "datasets" / "me" / "ort-wheels"
    for folder in (old, new, new / "deeper"):
        build_wheel(folder)
    assert find_wheel_dirs(tmp_path) == [old, new, new / "deeper"]


def test_wheels_for_another_python_say_which_python_to_package_for(tmp_path, offline_pip):
    build_wheel(tmp_path / "wheels", tag="cp27-cp27mu-manylinux1_x86_64")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"

    with pytest.raises(SetupError) as e:
        install_missing(tmp_path / "wheels", {"birdkit_tinypkg": "birdkit-tinypkg==0.1.0"}, target=tmp_path / "site")

    assert str(e.value) == (
        "the kit's wheels for birdkit-tinypkg==0.1.0 (birdkit_tinypkg-0.1.0-cp27-cp27mu-manylinux1_x86_64.whl) do not "
        f"fit this notebook's Python {version} (cp{version.replace('.', '')}).\n"
        f"  Re-run `make package PACKAGE_ARGS='--python-version {version}'` and upload again (`make upload`).")


def test_kaggle_setup_needs_nothing_but_the_standard_library():
    source = (REPO / "submission" / "kaggle_setup.py").read_text()
    imported = set(re.findall(r"^\s*(?:from|import) ([\w.]+)", source, re.M))
    assert {name.split(".")[0] for name in imported} <= {"__future__", "importlib", "re", "subprocess", "sys",
                                                          "pathlib", "typing"}
    assert kaggle_setup.fits_this_python(Path("x-1-py3-none-any.whl"))
    assert kaggle_setup.fits_this_python(Path(f"x-1-cp3{sys.version_info.minor}-abi3-manylinux_2_28_x86_64.whl"))
    assert not kaggle_setup.fits_this_python(Path(f"x-1-cp3{sys.version_info.minor + 1}-abi3-linux_x86_64.whl"))


def test_a_requirement_missing_from_the_kits_wheels_is_installed_from_a_wheels_dataset_attached_by_hand(
        tmp_path, offline_pip, monkeypatch):
    from submission.kaggle_setup import install_missing

    kit_wheels = tmp_path / "input" / "kit" / "wheels"
    build_wheel(kit_wheels, "birdkit-tinypkg", "0.1.0")
    build_wheel(tmp_path / "input" / "my-wheels", "birdkit-other", "1.0")  # only in the dataset attached by hand
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    try:
        installed = install_missing(kit_wheels, {"birdkit_tinypkg": "birdkit-tinypkg==0.1.0",
                                                 "birdkit_other": "birdkit-other==1.0"},
                                    search_dir=tmp_path / "input", target=site)
        assert installed == ["birdkit-tinypkg==0.1.0", "birdkit-other==1.0"]
        assert (site / "birdkit_tinypkg").is_dir() and (site / "birdkit_other").is_dir()
    finally:
        sys.modules.pop("birdkit_tinypkg", None)
        sys.modules.pop("birdkit_other", None)


def test_a_wheel_built_for_an_older_cpython_abi_does_not_count_as_fitting_this_python():
    from submission.kaggle_setup import fits_this_python

    minor = sys.version_info.minor
    assert not fits_this_python(Path(f"x-1-cp3{minor - 1}-cp3{minor - 1}-manylinux_2_28_x86_64.whl"))
    assert fits_this_python(Path(f"x-1-cp3{minor - 1}-abi3-manylinux_2_28_x86_64.whl"))  # the stable ABI does


def test_the_cache_answers_with_the_build_kaggles_pip_prefers_most(tmp_path):
    from submission.wheels import ONNXRUNTIME, WheelConfig, cached_wheel

    for tag in ("cp312-cp312-manylinux2014_x86_64", "cp312-cp312-manylinux_2_28_x86_64", "cp312-abi3-manylinux2014_x86_64"):
        build_wheel(tmp_path, "onnxruntime", ONNXRUNTIME.version, tag)
    best = cached_wheel(tmp_path, ONNXRUNTIME, WheelConfig(), "3.12")
    assert best.name == f"onnxruntime-{ONNXRUNTIME.version}-cp312-cp312-manylinux_2_28_x86_64.whl"
