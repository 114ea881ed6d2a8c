"""`make package`: the exported model -> submission/dist/, ready to upload to Kaggle.

    submission/dist/
      dataset/                    a Kaggle dataset (kaggle datasets create -p submission/dist/dataset)
        dataset-metadata.json
        birdkit.json              manifest: model file, competition, class count, checksums
        model.onnx
        code/data/features.py     the feature definition training used, byte for byte
        code/submission/infer.py  the notebook's inference code
        code/submission/kaggle_setup.py  the notebook's first import: offline install of wheels/
        wheels/*.whl              what Kaggle's image lacks (onnxruntime, ...), for Kaggle's Python
                                  (submission/wheels.py; --no-wheels leaves it out)
      notebook/                   a Kaggle notebook (kaggle kernels push -p submission/dist/notebook)
        kernel-metadata.json      competition source, the dataset above, GPU off, internet off
        birdclef-kit-submission.ipynb
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import nbformat

from data.features import FEATURES_VERSION, FeatureConfig
from data.layout import submission_columns
from data.paths import REPO, Workspace, dist_dir
from submission.infer import MANIFEST_NAME, PostProcess
from submission.notebook import build_notebook
from submission.wheels import WHEELS_DIR, WheelConfig, WheelError, config_for, fetch_wheels

# The code the notebook imports, copied as is (package __init__ files included).
PACKAGED_CODE = ["data/__init__.py", "data/features.py", "submission/__init__.py", "submission/infer.py",
                 "submission/kaggle_setup.py"]
DEFAULT_DATASET_TITLE = "birdclef kit model"
DEFAULT_NOTEBOOK_TITLE = "birdclef kit submission"
USERNAME_PLACEHOLDER = "your-kaggle-username"
# Off: on the realbirds hold-out both smoothing and mean blending lowered the score (README,
# post-processing); `make score` prints what each variant would give on your soundscapes.
DEFAULT_POSTPROCESS = PostProcess()


class PackageError(RuntimeError):
    """Packaging refused; the message says why."""


def slugify(title: str) -> str:
    """Kaggle's rule: the slug is the title lowercased with dashes for spaces."""
    return "-".join(title.lower().split())


def kaggle_username() -> str | None:
    """The user name only (never the key): env first, then kaggle.json."""
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    try:
        return json.loads((config_dir / "kaggle.json").read_text()).get("username")
    except (OSError, ValueError):
        return None


def read_onnx_metadata(onnx_path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def check_model(meta: dict[str, str], onnx_path: Path, data_dir: Path | None) -> None:
    """Refuse at packaging time what would otherwise fail on Kaggle."""
    if "features" not in meta or "classes" not in meta:
        raise PackageError(f"{onnx_path} lacks the kit's metadata (classes, features): export it with `make export`")
    if meta.get("features_version") != str(FEATURES_VERSION):
        raise PackageError(
            f"{onnx_path} was trained with features v{meta.get('features_version')} but the code to package "
            f"computes features v{FEATURES_VERSION}: re-train and re-export (`make train export`)")
    FeatureConfig.from_dict(json.loads(meta["features"]))  # parameters this code understands
    if data_dir is not None and (data_dir / "sample_submission.csv").exists():
        classes = json.loads(meta["classes"])
        columns = submission_columns(data_dir)
        if sorted(classes) != sorted(columns):
            only_model = sorted(set(classes) - set(columns))[:5]
            only_sub = sorted(set(columns) - set(classes))[:5]
            print(f"warning: model classes ({len(classes)}) differ from sample_submission columns ({len(columns)}): "
                  f"only in the model {only_model}, only in sample_submission {only_sub}; missing columns get 0")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_dataset(root: Path, onnx_path: Path, meta: dict, competition: str, dataset_id: str, title: str,
                  post: PostProcess, wheels: WheelConfig, bundle_wheels: bool = True,
                  wheel_cache: Path | None = None) -> None:
    root.mkdir(parents=True)
    wheel_files = []
    if bundle_wheels:
        try:
            wheel_files = fetch_wheels(wheels, root / WHEELS_DIR, wheel_cache)
        except WheelError as e:
            raise PackageError(str(e)) from None
    shutil.copy2(onnx_path, root / "model.onnx")
    for rel in PACKAGED_CODE:
        (root / "code" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / "code" / rel)
    manifest = {
        "model_file": "model.onnx", "model_sha256": sha256(root / "model.onnx"), "competition": competition,
        "model_name": meta.get("model_name"), "classes": len(json.loads(meta["classes"])),
        "features_version": FEATURES_VERSION, "features": json.loads(meta["features"]),
        "val_roc_auc": meta.get("val_roc_auc"), "run": meta.get("run"), "dataset": meta.get("dataset"),
        "code": {rel: sha256(root / "code" / rel) for rel in PACKAGED_CODE},
        "postprocess": {"smooth_kernel": list(post.smooth_kernel), "mean_blend": post.mean_blend},
        "wheels": {"dir": WHEELS_DIR, "bundled": bundle_wheels, "requirements": wheels.requirements(),
                   "python_versions": list(wheels.python_versions), "platforms": list(wheels.platforms),
                   "files": {p.name: sha256(p) for p in wheel_files}},
    }
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    dataset_meta = {"title": title, "id": dataset_id, "licenses": [{"name": "CC0-1.0"}]}
    (root / "dataset-metadata.json").write_text(json.dumps(dataset_meta, indent=2) + "\n")


def write_notebook(root: Path, competition: str, dataset_id: str, notebook_id: str, title: str) -> Path:
    root.mkdir(parents=True)
    code_file = f"{notebook_id.split('/')[1]}.ipynb"
    nbformat.write(build_notebook(), root / code_file)
    kernel_meta = {
        "id": notebook_id, "title": title, "code_file": code_file, "language": "python",
        "kernel_type": "notebook", "is_private": "true", "enable_gpu": "false", "enable_tpu": "false",
        "enable_internet": "false", "dataset_sources": [dataset_id], "competition_sources": [competition],
        "kernel_sources": [], "model_sources": [],
    }
    (root / "kernel-metadata.json").write_text(json.dumps(kernel_meta, indent=2) + "\n")
    return root / code_file


def package(onnx_path: Path, out_dir: Path, competition: str, data_dir: Path | None = None,
            post: PostProcess = DEFAULT_POSTPROCESS, dataset_title: str = DEFAULT_DATASET_TITLE,
            notebook_title: str = DEFAULT_NOTEBOOK_TITLE, bundle_wheels: bool = True,
            python_versions: list[str] | None = None, wheel_cache: Path | None = None) -> Path:
    """Build out_dir (replacing it whole, never half-written). Returns the notebook path.

    bundle_wheels: put the wheels Kaggle's image lacks into dataset/wheels/ (submission/wheels.py),
    for python_versions (default: WheelConfig's), downloaded once into wheel_cache."""
    if not onnx_path.exists():
        raise PackageError(f"{onnx_path} not found: run `make export` first")
    meta = read_onnx_metadata(onnx_path)
    check_model(meta, onnx_path, data_dir)
    try:
        wheels = config_for(json.loads(meta["features"]), python_versions)
    except ValueError as e:
        raise PackageError(str(e)) from None
    user = kaggle_username() or USERNAME_PLACEHOLDER
    if user == USERNAME_PLACEHOLDER:
        print(f"note: no Kaggle user name found; ids use '{USERNAME_PLACEHOLDER}' (set KAGGLE_USERNAME and re-package)")
    dataset_id, notebook_id = f"{user}/{slugify(dataset_title)}", f"{user}/{slugify(notebook_title)}"
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_dataset(tmp / "dataset", onnx_path, meta, competition, dataset_id, dataset_title, post, wheels,
                      bundle_wheels, wheel_cache)
    except PackageError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    notebook = write_notebook(tmp / "notebook", competition, dataset_id, notebook_id, notebook_title)
    old = out_dir.with_name(f".{out_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir / notebook.relative_to(tmp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m submission.package", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="dataset folder whose exported model to package")
    p.add_argument("--competition", default="birdclef-2024", help="Kaggle competition slug")
    p.add_argument("--onnx", type=Path, help="model to package (default: the export of --data)")
    p.add_argument("--out", type=Path, help="output folder (default: submission/dist)")
    p.add_argument("--smooth-kernel", type=float, nargs="+", default=list(DEFAULT_POSTPROCESS.smooth_kernel),
                   help="weights over neighbouring windows, e.g. 0.25 0.5 0.25 (1 = off)")
    p.add_argument("--mean-blend", type=float, default=DEFAULT_POSTPROCESS.mean_blend,
                   help="share of the soundscape mean blended into each window (0 = off)")
    p.add_argument("--no-wheels", action="store_true",
                   help="leave the wheels Kaggle lacks (onnxruntime, ...) out of the dataset: no download; "
                        "attach a dataset holding them to the notebook yourself")
    p.add_argument("--python-version", action="append", dest="python_versions", metavar="X.Y",
                   help="Kaggle's Python, for the wheels (repeatable; default: "
                        f"{' and '.join(WheelConfig().python_versions)})")
    p.add_argument("--wheel-cache", type=Path,
                   help="where downloaded wheels are kept between runs (default: $BIRDKIT_WHEEL_CACHE or "
                        "submission/wheels-cache)")
    args = p.parse_args(argv)
    ws = Workspace.of(args.data)
    onnx_path = args.onnx or ws.export_dir / "model.onnx"
    if args.onnx is None and not onnx_path.exists():
        print(f"package: no exported model for {ws.name} yet, exporting first")
        from export.__main__ import main as export_main

        if export_main(["--data", str(args.data)]) != 0:
            return 1
    try:
        post = PostProcess(tuple(args.smooth_kernel), args.mean_blend)
        notebook = package(onnx_path, args.out or dist_dir(), args.competition, ws.data_dir, post,
                           bundle_wheels=not args.no_wheels, python_versions=args.python_versions,
                           wheel_cache=args.wheel_cache)
    except PackageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    dataset = notebook.parent.parent / "dataset"
    wheels = json.loads((dataset / MANIFEST_NAME).read_text())["wheels"]
    print(f"package: {dataset} (model + code) and {notebook}")
    if wheels["bundled"]:
        print(f"package: wheels for Kaggle (Python {', '.join(wheels['python_versions'])}): "
              f"{', '.join(wheels['files']) or 'none'}")
    else:
        print(f"package: no wheels (--no-wheels): attach a dataset holding {', '.join(wheels['requirements'].values())} "
              "to the notebook")
    print("upload: make upload   (creates or versions the dataset, then pushes the notebook)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
