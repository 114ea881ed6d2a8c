"""Kaggle-side setup, imported by the notebook FIRST, before anything that needs the kit's wheels.

Kaggle runs the submission with the internet off: the packages the kit needs and the image lacks
(onnxruntime, and noisereduce for models that use it) come as wheels in the kit's dataset
(`wheels/`, written by `make package`). install_missing pip-installs, offline, only the ones that
are not importable already, and says what it did. Standard library only: it runs before them.

    install_missing(kit_dir / "wheels", {"onnxruntime": "onnxruntime==1.32.0"}, search_dir=INPUT_DIR)
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Mapping

# Wheel folders of a dataset attached by hand: /kaggle/input/<slug>[/<dir>[/<dir>]]/*.whl, or in
# Kaggle's newer mount layout /kaggle/input/datasets/<owner>/<slug>[/<dir>]/*.whl.
SEARCH_DEPTH = 5


class SetupError(RuntimeError):
    """The kit cannot get what it needs; the message says what to do."""


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dist(spec: str) -> str:
    return re.split(r"[\s=<>!~;\[(]", spec.strip(), maxsplit=1)[0]


def _pinned(spec: str) -> str | None:
    match = re.search(r"==\s*([^\s,;]+)", spec)
    return match.group(1) if match else None


def _python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def wheels_for(spec: str, dirs: Iterable[Path]) -> list[Path]:
    """The .whl files in dirs of spec's distribution (and pinned version, if any)."""
    dist, version = _normalize(_dist(spec)), _pinned(spec)
    found = []
    for folder in dirs:
        for path in sorted(Path(folder).glob("*.whl")):
            parts = path.name[: -len(".whl")].split("-")
            if len(parts) >= 5 and _normalize(parts[0]) == dist and (version is None or parts[1] == version):
                found.append(path)
    return found


def fits_this_python(wheel: Path) -> bool:
    """Whether the wheel's python/abi tags accept this interpreter (the platform is not checked)."""
    parts = wheel.name[: -len(".whl")].split("-")
    py_tags, abi = parts[-3].split("."), parts[-2]
    major, minor = sys.version_info.major, sys.version_info.minor
    for tag in py_tags:
        if tag in (f"py{major}", f"py{major}{minor}", f"cp{major}{minor}"):
            return True
        if abi == "abi3" and tag.startswith(f"cp{major}") and tag[len(f"cp{major}"):].isdigit() \
                and int(tag[len(f"cp{major}"):]) <= minor:
            return True
    return False


def find_wheel_dirs(search_dir: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Folders up to `depth` levels under search_dir that hold wheels (a wheels dataset attached by hand)."""
    found: list[Path] = []
    for level in range(1, depth + 1):
        for hit in sorted(Path(search_dir).glob("/".join(["*"] * level) + ".whl")):
            if hit.parent not in found:
                found.append(hit.parent)
    return found


def installed_version(import_name: str, spec: str) -> str:
    """'<dist> <version>' of what provides import_name, as far as the metadata tells."""
    candidates = importlib.metadata.packages_distributions().get(import_name.split(".")[0], []) or [_dist(spec)]
    for dist in candidates:
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "version unknown"


def _pip_errors(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.startswith("ERROR")]
    return "\n  ".join(lines or [line.strip() for line in output.splitlines()[-3:]])


def _not_importable(requirements: Mapping[str, str]) -> dict[str, str]:
    """The requirements whose import name is not importable; says why each of the others is left alone."""
    missing: dict[str, str] = {}
    for import_name, spec in requirements.items():
        if importlib.util.find_spec(import_name) is None:
            missing[import_name] = spec
            continue
        have = installed_version(import_name, spec)
        pinned = _pinned(spec)
        note = f"; the kit was tested with {pinned}" if pinned and not have.endswith(f" {pinned}") else ""
        print(f"setup: {import_name} is importable ({have}{note}): not installing {spec}")
    return missing


def _wheel_dirs(wheel_dir: str | Path, specs: list[str], search_dir: str | Path | None) -> list[Path]:
    """wheel_dir, and the wheel folders under search_dir when wheel_dir lacks one; SetupError when a
    spec has no wheel in any of them."""
    dirs = [Path(wheel_dir)] if Path(wheel_dir).is_dir() else []
    if search_dir is not None and any(not wheels_for(spec, dirs) for spec in specs):
        dirs += [d for d in find_wheel_dirs(Path(search_dir)) if d not in dirs]
    absent = [spec for spec in specs if not wheels_for(spec, dirs)]
    if absent:
        looked = ", ".join(str(d) for d in dirs) or f"{wheel_dir} (absent)"
        raise SetupError(
            f"no wheel for {', '.join(absent)} in {looked}, and this notebook has no internet to download it.\n"
            "  Re-run `make package` (without --no-wheels) where PyPI is reachable and upload the dataset again "
            "(`make upload`),\n  or attach a Kaggle dataset that holds the wheel to this notebook.")
    return dirs


def _install_failed(specs: list[str], dirs: list[Path], output: str) -> SetupError:
    """Why pip failed: wheels built for another Python (say which to package for), else pip's own errors."""
    unfit = {spec: sorted(p.name for p in wheels_for(spec, dirs)) for spec in specs
             if not any(fits_this_python(p) for p in wheels_for(spec, dirs))}
    if unfit:
        spec, names = next(iter(unfit.items()))
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return SetupError(
            f"the kit's wheels for {spec} ({', '.join(names)}) do not fit this notebook's Python {version} "
            f"({_python_tag()}).\n  Re-run `make package PACKAGE_ARGS='--python-version {version}'` and "
            "upload again (`make upload`).")
    return SetupError(f"pip could not install {', '.join(specs)} offline:\n  {_pip_errors(output)}")


def _pip_install(specs: list[str], dirs: list[Path], target: str | Path | None) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--disable-pip-version-check", "--no-input",
           *[arg for d in dirs for arg in ("--find-links", str(d))], *(["--target", str(target)] if target else []),
           *specs]
    print(f"setup: installing {', '.join(specs)} offline from {', '.join(str(d) for d in dirs)}")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise _install_failed(specs, dirs, result.stdout + result.stderr)


def _require_importable(import_names: Iterable[str], specs: list[str], target: str | Path | None) -> None:
    """After pip: every import name importable now (from target, when installing there)."""
    if target is not None and str(target) not in sys.path:
        sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    still = [name for name in import_names if importlib.util.find_spec(name) is None]
    if still:
        raise SetupError(f"pip installed {', '.join(specs)}, yet {', '.join(still)} cannot be imported")


def install_missing(wheel_dir: str | Path, requirements: Mapping[str, str], *, search_dir: str | Path | None = None,
                    target: str | Path | None = None) -> list[str]:
    """pip-install offline, from wheel_dir, each requirement whose import name is not importable.

    requirements: import name -> pip requirement, e.g. {"onnxruntime": "onnxruntime==1.32.0"}.
    search_dir: where else to look for wheel folders when wheel_dir lacks one (e.g. /kaggle/input,
    for a wheels dataset attached by hand). target: install there (put on sys.path) instead of
    site-packages. Returns the requirements installed; raises SetupError when it cannot.
    """
    print(f"setup: Python {sys.version.split()[0]} ({_python_tag()}) on {sys.platform}")
    missing = _not_importable(requirements)
    if not missing:
        return []
    specs = list(missing.values())
    dirs = _wheel_dirs(wheel_dir, specs, search_dir)
    _pip_install(specs, dirs, target)
    _require_importable(missing, specs, target)
    print(f"setup: installed {', '.join(specs)}")
    return specs
