"""`make package`: the exported model -> submission/dist/, ready to upload to Kaggle.

    submission/dist/
      dataset/                    a Kaggle dataset (kaggle datasets create -p submission/dist/dataset --dir-mode zip)
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
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat

from data.features import FEATURES_VERSION, FeatureConfig
from data.layout import (DEFAULT_COMPETITION, class_list, competition_of, find_metadata, read_metadata, slug_problem,
                         submission_columns)
from data.paths import REPO, Workspace, dist_dir, refuse_unwritable
from submission.budget import KAGGLE_TEST_SETS, UNKNOWN_TEST_SET, kaggle_test_set
from submission.infer import DEADLINE_MARGIN_MIN, MANIFEST_NAME, PostProcess
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


class NothingToJudgeBy(PackageError):
    """The labelled soundscapes exist but cannot be scored: a hold-out rebuilt alike would not be
    chosen over them (DATA's own) or would be alike (data/holdout's)."""


@dataclass
class PackageConfig:
    """What goes into submission/dist/."""

    onnx_paths: list[Path]  # best first; more than one: ensemble candidates
    out_dir: Path
    competition: str = DEFAULT_COMPETITION
    sample_columns: list[str] | None = None  # sample_submission's classes, to check the model's against
    data_dir: Path | None = None  # the training data: int8 calibration windows and labelled soundscapes
    int8: bool = False  # ship int8 models where `make score`'s metric drops by <= 0.005
    allow_class_mismatch: bool = False
    post: PostProcess = DEFAULT_POSTPROCESS
    combine: str = "mean"  # how ensemble members' probabilities combine: mean | min
    budget_min: float = 30.0  # ensemble members are added while the projected Kaggle time fits
    judge_ensemble: bool = False  # ship a longer best-first prefix only where the local score says it helps
    deadline_min: float | None = None  # the notebook's guard; None: the competition's Kaggle limit less 10 min
    dataset_title: str = DEFAULT_DATASET_TITLE
    notebook_title: str = DEFAULT_NOTEBOOK_TITLE
    bundle_wheels: bool = True
    python_versions: list[str] | None = None
    wheel_cache: Path | None = None


def slugify(title: str) -> str:
    """Kaggle's rule: the slug is the title lowercased with dashes for spaces."""
    return "-".join(title.lower().split())


def kaggle_username() -> str | None:
    """The user name only (never the key): env first, then kaggle.json where the kaggle client
    looks for it (KAGGLE_CONFIG_DIR, ~/.kaggle, else ~/.config/kaggle on Linux)."""
    from data.download import kaggle_config_dir

    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    try:
        return json.loads((kaggle_config_dir() / "kaggle.json").read_text()).get("username")
    except (OSError, ValueError):
        return None


def read_onnx_metadata(onnx_path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def check_model(meta: dict[str, str], onnx_path: Path, columns: list[str] | None, allow_class_mismatch: bool,
                data_dir: Path | None = None) -> None:
    """Refuse at packaging time what would otherwise fail (or silently score 0) on Kaggle."""
    if "features" not in meta or "classes" not in meta:
        raise PackageError(f"{onnx_path} lacks the kit's metadata (classes, features): export it with `make export`")
    if meta.get("features_version") != str(FEATURES_VERSION):
        raise PackageError(
            f"{onnx_path} was trained with features v{meta.get('features_version')} but the code to package "
            f"computes features v{FEATURES_VERSION}: re-train and re-export (`make train export`)")
    FeatureConfig.from_dict(json.loads(meta["features"]))  # parameters this code understands
    classes = json.loads(meta["classes"])
    if columns is not None and sorted(classes) != sorted(columns):
        only_model = sorted(set(classes) - set(columns))[:5]
        only_sub = sorted(set(columns) - set(classes))[:5]
        message = (f"{onnx_path.name} has {len(classes)} classes but sample_submission.csv has {len(columns)} "
                   f"columns: only in the model {only_model}, only in sample_submission {only_sub}")
        if not allow_class_mismatch:
            own = (data_dir is not None and find_metadata(data_dir) is not None
                   and sorted(class_list(read_metadata(data_dir))) == sorted(classes))
            fix = ("The model learnt its data's own species: that data's metadata and sample_submission.csv disagree; "
                   "make them agree and retrain" if own else "Train on this competition's data")
            raise PackageError(f"{message}. {fix}, or pass --allow-class-mismatch (columns the model lacks then get 0)")
        print(f"warning: {message}; columns the model lacks get 0")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_entry(root: Path, onnx_path: Path, index: int, meta: dict) -> dict:
    """Copy one model into the dataset; its manifest entry."""
    name = "model.onnx" if index == 0 else f"model-{index + 1}.onnx"
    shutil.copy2(onnx_path, root / name)
    return {"file": name, "sha256": sha256(root / name), "model_name": meta.get("model_name"),
            "run": meta.get("run"), "val_roc_auc": meta.get("val_roc_auc")}


def write_dataset(root: Path, cfg: PackageConfig, members: list[tuple[Path, dict]], wheels: WheelConfig,
                  dataset_id: str) -> None:
    root.mkdir(parents=True)
    wheel_files = []
    if cfg.bundle_wheels:
        try:
            wheel_files = fetch_wheels(wheels, root / WHEELS_DIR, cfg.wheel_cache)
        except WheelError as e:
            raise PackageError(str(e)) from None
    models = [model_entry(root, path, k, meta) for k, (path, meta) in enumerate(members)]
    for rel in PACKAGED_CODE:
        (root / "code" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / "code" / rel)
    meta = members[0][1]
    manifest = {
        "model_file": models[0]["file"], "model_files": [m["file"] for m in models], "models": models,
        "combine": cfg.combine, "competition": cfg.competition,
        "model_name": meta.get("model_name"), "classes": len(json.loads(meta["classes"])),
        "features_version": FEATURES_VERSION, "features": json.loads(meta["features"]),
        "val_roc_auc": meta.get("val_roc_auc"), "run": meta.get("run"), "dataset": meta.get("dataset"),
        "code": {rel: sha256(root / "code" / rel) for rel in PACKAGED_CODE},
        "postprocess": {"smooth_kernel": list(cfg.post.smooth_kernel), "mean_blend": cfg.post.mean_blend},
        "runtime": {"deadline_s": deadline_min(cfg) * 60},
        "wheels": {"dir": WHEELS_DIR, "bundled": cfg.bundle_wheels, "requirements": wheels.requirements(),
                   "python_versions": list(wheels.python_versions), "platforms": list(wheels.platforms),
                   "files": {p.name: sha256(p) for p in wheel_files}},
    }
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    dataset_meta = {"title": cfg.dataset_title, "id": dataset_id, "licenses": [{"name": "CC0-1.0"}]}
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


def choose_members(cfg: PackageConfig) -> list[tuple[Path, dict]]:
    """The best model, then the next ones while the projected Kaggle time stays in the budget."""
    members = []
    for k, path in enumerate(cfg.onnx_paths):
        if not path.exists():
            raise PackageError(f"{path} not found: run `make export` first")
        meta = read_onnx_metadata(path)
        check_model(meta, path, cfg.sample_columns, cfg.allow_class_mismatch, cfg.data_dir)
        if members and (meta["classes"], meta["features"]) != (members[0][1]["classes"], members[0][1]["features"]):
            print(f"package: {path.name} left out of the ensemble: other classes or features than {cfg.onnx_paths[0].name}")
            continue
        members.append((path, meta))
    if cfg.int8:
        members = [(int8_or_float(path, meta, cfg), meta) for path, meta in members]
    if len(members) > 1:
        members = fit_budget(members, cfg.budget_min, cfg.competition)
    if len(members) > 1 and cfg.judge_ensemble:
        members = judged_prefix(members, cfg)
    return members


def labelled_soundscapes(cfg: PackageConfig, what: str):
    """The labelled soundscapes `make score` would use for cfg.data_dir (PackageError naming `what` otherwise)."""
    from submission.score import ScoreError, UnscorableLabels, labelled_set

    if cfg.data_dir is None:
        raise PackageError(f"{what} needs --data: its labelled soundscapes score it")
    try:
        return labelled_set(Workspace.of(cfg.data_dir))
    except ScoreError as e:
        error = NothingToJudgeBy if isinstance(e, UnscorableLabels) else PackageError
        raise error(f"{what} is judged by the local score: {e}") from None


def withheld_split(members: list[tuple[Path, dict]], data_dir: Path) -> tuple[float, int] | None:
    """(holdout fraction, seed) that every member's run withheld from training on data_dir, or
    None where a run withheld nothing, used other settings than the rest, or is not found."""
    from train.config import TrainConfig

    runs_dir = Workspace.of(data_dir).runs_dir
    splits = set()
    for _, meta in members:
        config_path = runs_dir / str(meta.get("run")) / "config.json"
        if not config_path.exists():
            return None
        run = TrainConfig.load(config_path)
        splits.add((run.holdout_fraction, run.seed))
    if len(splits) != 1:
        return None
    fraction, seed = splits.pop()
    return (fraction, seed) if fraction > 0 else None


def build_withheld_holdout(members: list[tuple[Path, dict]], cfg: PackageConfig, why: str):
    """`make holdout` brought in by the package: where DATA has no labelled soundscapes, or only
    ones a member trained on, but the members' runs withheld recordings (`make train`'s default),
    mix those into soundscapes (replacing data/holdout/<name>) and judge on them. None where there
    is nothing withheld to build from."""
    from data.holdout import HoldoutConfig, build_holdout

    split = withheld_split(members, cfg.data_dir) if cfg.data_dir is not None else None
    if split is None:
        return None
    fraction, seed = split
    print(f"package: {why}: building them from the recordings the runs withheld "
          f"(`make holdout`, fraction {fraction:g}, seed {seed})")
    build_holdout(cfg.data_dir, HoldoutConfig.like_existing(cfg.data_dir, seed=seed, fraction=fraction,
                                                            competition=cfg.competition))
    return labelled_soundscapes(cfg, "an ensemble")


def leak_reason(labelled, members: list[tuple[Path, dict]], cfg: PackageConfig) -> str | None:
    """Why these soundscapes would flatter a member (it trained on recordings mixed into them), or None."""
    from submission.score import leaks

    ws = Workspace.of(cfg.data_dir)
    found = leaks(labelled, [meta for _, meta in members], ws, missing_ok=True)
    if not found:
        return None
    model, seen = found[0]
    return (f"{model.get('model_name')} ({model.get('run')}) trained on {len(seen)} recording(s) of the labelled "
            f"soundscapes of {ws.name}, which would favour it")


def judging_set(members: list[tuple[Path, dict]], cfg: PackageConfig, what: str):
    """(labelled soundscapes none of the members trained on, or None; why there are none)."""
    try:
        labelled = labelled_soundscapes(cfg, what)
        why = leak_reason(labelled, members, cfg)
        if why is None:
            return labelled, None
        heading = why
    except NothingToJudgeBy as e:
        return None, str(e)
    except PackageError as e:
        why, heading = str(e), f"no labelled soundscapes for {cfg.data_dir and Workspace.of(cfg.data_dir).name}"
    try:
        rebuilt = build_withheld_holdout(members, cfg, heading)
    except NothingToJudgeBy as e:  # the withheld recordings make too few soundscapes to score
        return None, str(e)
    if rebuilt is None:
        return None, why
    leak = leak_reason(rebuilt, members, cfg)
    return (rebuilt, None) if leak is None else (None, leak)


def judged_prefix(members: list[tuple[Path, dict]], cfg: PackageConfig) -> list[tuple[Path, dict]]:
    """The best-first prefix that scores best on the labelled soundscapes (submission/ensemble.py),
    built from the runs' withheld recordings where DATA has none, or only ones a member trained
    on; the best model alone where there is nothing fair to judge by."""
    from submission.ensemble import MIN_ENSEMBLE_GAIN, judge

    labelled, why = judging_set(members, cfg, "an ensemble")
    if labelled is None:
        print(f"package: shipping {members[0][1].get('model_name')} alone: {why}")
        return members[:1]
    verdict = judge([path for path, _ in members], cfg.combine, labelled.soundscapes, labelled.solution,
                    cfg.data_dir / "sample_submission.csv")
    names = [meta.get("model_name") for _, meta in members]
    print(f"package: local score of the best-first ensembles ({cfg.combine}): " + ", ".join(
        f"{' + '.join(names[:n])} {s:.4f}" for n, s in enumerate(verdict.scores, start=1)))
    print(f"package: shipping {' + '.join(names[:verdict.keep])} (a model joins only where it adds "
          f">= {MIN_ENSEMBLE_GAIN} to the local score)")
    return members[: verdict.keep]


def int8_or_float(path: Path, meta: dict, cfg: PackageConfig) -> Path:
    """The int8 version of a model when it scores within 0.005 of it on the labelled soundscapes."""
    from submission.quantize import MAX_SCORE_DROP, try_int8

    labelled, why = judging_set([(path, meta)], cfg, "--int8")  # rebuilt from what the run withheld where need be
    if labelled is None:  # both scores inflated alike: the drop still compares the two, so judge, but say so
        labelled = labelled_soundscapes(cfg, "--int8")
        print(f"package: note: {why}; the int8 check compares int8 with float on them all the same")
    ws = Workspace.of(cfg.data_dir)
    verdict = try_int8(path, ws.data_dir, labelled.soundscapes, labelled.solution, ws.export_dir)
    choice = "int8 shipped" if verdict.ship != path else f"kept float (drop > {MAX_SCORE_DROP})"
    print(f"package: {path.name} int8: local score {verdict.int8_score:.4f} vs float {verdict.float_score:.4f} "
          f"(drop {verdict.drop:+.4f}) -> {choice}")
    return verdict.ship


def deadline_min(cfg: PackageConfig) -> float:
    """--deadline-min, else the competition's Kaggle limit less the margin."""
    return kaggle_test_set(cfg.competition).deadline_min if cfg.deadline_min is None else cfg.deadline_min


def fit_budget(members: list[tuple[Path, dict]], budget_min: float,
               competition: str = DEFAULT_COMPETITION) -> list[tuple[Path, dict]]:
    """Measure each model here (one thread, one 4-minute soundscape) and keep the best-first
    prefix whose projected Kaggle time on the competition's test set fits the budget
    (submission/budget.py)."""
    import tempfile

    from bench.preprocess import synthetic_soundscape
    from data.audio_io import write_ogg
    from submission.budget import (MEASURED_SOUNDSCAPE_S, Costs, feature_seconds_per_soundscape,
                                   model_seconds_per_soundscape, single_core)

    cfg = FeatureConfig.from_dict(json.loads(members[0][1]["features"]))
    with tempfile.TemporaryDirectory() as tmp, single_core():
        scape = Path(tmp) / "soundscape.ogg"
        write_ogg(scape, synthetic_soundscape(MEASURED_SOUNDSCAPE_S), cfg.sample_rate_hz)
        decode_s, features_s = feature_seconds_per_soundscape(scape, cfg, repeats=1)
        kept, model_s = [], 0.0
        for path, meta in members:
            cost = model_seconds_per_soundscape(path, threads=1, repeats=1)
            projected = Costs(decode_s, features_s, model_s + cost).projected_min(kaggle_test_set(competition))
            verdict = "kept" if not kept or projected <= budget_min else "over budget, left out"
            print(f"package: {path.name} ({meta.get('model_name')}): {cost:.2f} s/soundscape; ensemble projected "
                  f"{projected:.1f} min on Kaggle (budget {budget_min:.0f}) -> {verdict}")
            if verdict == "kept":
                kept.append((path, meta))
                model_s += cost
    return kept


def package(cfg: PackageConfig) -> Path:
    """Build cfg.out_dir (replacing it whole, never half-written). Returns the notebook path."""
    members = choose_members(cfg)
    try:
        wheels = config_for(json.loads(members[0][1]["features"]), cfg.python_versions)
    except ValueError as e:
        raise PackageError(str(e)) from None
    user = kaggle_username() or USERNAME_PLACEHOLDER
    if user == USERNAME_PLACEHOLDER:
        print(f"note: no Kaggle user name found; ids use '{USERNAME_PLACEHOLDER}' (set KAGGLE_USERNAME and re-package)")
    dataset_id = f"{user}/{slugify(cfg.dataset_title)}"
    notebook_id = f"{user}/{slugify(cfg.notebook_title)}"
    out_dir = cfg.out_dir
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_dataset(tmp / "dataset", cfg, members, wheels, dataset_id)
    except PackageError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    notebook = write_notebook(tmp / "notebook", cfg.competition, dataset_id, notebook_id, cfg.notebook_title)
    old = out_dir.with_name(f".{out_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir / notebook.relative_to(tmp)


# --ensemble auto: candidates judged by the local score (make export exports this many by default).
# On the realbirds hold-out the mean of three models beat the best one alone (README, ensembles).
AUTO_ENSEMBLE = 3


def ensemble_arg(value: str) -> str | int:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--ensemble takes auto or a number of models >= 1, got {value!r}")
    return n


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m submission.package", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="dataset folder whose exported model to package")
    p.add_argument("--competition", help="Kaggle competition slug the notebook attaches (default: the --data "
                                          f"folder's name where it is one, e.g. data/birdclef-2025, else {DEFAULT_COMPETITION})")
    p.add_argument("--onnx", type=Path, nargs="+", help="model(s) to package, best first (default: the export of --data)")
    p.add_argument("--ensemble", type=ensemble_arg, default="auto",
                   help=f"auto (default): up to the {AUTO_ENSEMBLE} best exported models, a model joining only "
                        "where the local score on the labelled soundscapes of `make score` says it helps (the "
                        "best alone where there are none); N: up to N exported models, unjudged. Either way "
                        "kept while they fit --budget-min")
    p.add_argument("--combine", choices=["mean", "min"], default="mean", help="how ensemble members combine")
    p.add_argument("--budget-min", type=float, default=PackageConfig.budget_min,
                   help="projected Kaggle minutes the ensemble may take (measured here, projected onto the "
                        "competition's hidden test set on Kaggle's 4 cores: submission/budget.py)")
    p.add_argument("--deadline-min", type=float,
                   help="the notebook's own deadline: past its projection it switches to cheaper paths (default: "
                        f"the competition's Kaggle limit less {DEADLINE_MARGIN_MIN:g} min: "
                        f"{kaggle_test_set(DEFAULT_COMPETITION).deadline_min:g} for {DEFAULT_COMPETITION}, "
                        f"{kaggle_test_set('birdclef-2025').deadline_min:g} for birdclef-2025, "
                        f"{UNKNOWN_TEST_SET.deadline_min:g} for one the kit does not know)")
    p.add_argument("--int8", action="store_true",
                   help="quantise each model to int8 and ship it where the local score drops by <= 0.005")
    p.add_argument("--allow-class-mismatch", action="store_true",
                   help="package a model whose classes differ from sample_submission's columns")
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
    p.add_argument("--train-args", default="",
                   help="flags of `python -m train` for when nothing is exported or trained yet, as one string: "
                        "--train-args='--models simple_cnn' (make passes MODELS, SEED, DENOISE and TRAIN_ARGS)")
    return p.parse_args(argv)


def export_first(args: argparse.Namespace, ws: Workspace, n_models: int) -> int:
    """`make package` brings in `make export` (and it `make train`) where nothing is exported yet: its exit code."""
    from export.__main__ import main as export_main
    from export.to_onnx import export_finished

    if args.onnx or export_finished(ws.export_dir):
        return 0
    if (ws.export_dir / "model.onnx").exists():  # stopped part way: its candidates may be missing or stale
        print(f"package: the export of {ws.name} did not finish (no export.json), exporting again")
    else:
        print(f"package: no exported model for {ws.name} yet, exporting first")

    return export_main(["--data", str(args.data), "--top", str(n_models), f"--train-args={args.train_args}"])


def config_from_args(args: argparse.Namespace, ws: Workspace, n_models: int) -> PackageConfig:
    """The packaging config: the models given, else the export's best n_models (model.onnx, model-2.onnx, ...)."""
    exported = [ws.export_dir / "model.onnx", *sorted(ws.export_dir.glob("model-*.onnx"),
                                                      key=lambda p: int(p.stem.split("-")[1]))]
    columns = submission_columns(ws.data_dir) if (ws.data_dir / "sample_submission.csv").exists() else None
    return PackageConfig(
        onnx_paths=args.onnx or exported[:n_models], out_dir=args.out or dist_dir(),
        judge_ensemble=args.ensemble == "auto", competition=args.competition or competition_of(args.data),
        sample_columns=columns, allow_class_mismatch=args.allow_class_mismatch, data_dir=ws.data_dir, int8=args.int8,
        post=PostProcess(tuple(args.smooth_kernel), args.mean_blend), combine=args.combine,
        budget_min=args.budget_min, deadline_min=args.deadline_min, bundle_wheels=not args.no_wheels,
        python_versions=args.python_versions, wheel_cache=args.wheel_cache)


def print_config(cfg: PackageConfig) -> None:
    """config: {...} at start, warning first where the notebook's deadline is a guess."""
    if cfg.competition not in KAGGLE_TEST_SETS and cfg.deadline_min is None:
        print(f"warning: the kit does not know {cfg.competition}'s Kaggle limit; the notebook's guard assumes the "
              f"shortest known ({UNKNOWN_TEST_SET.limit_min:g} minutes: deadline {deadline_min(cfg):g}). Read the "
              "competition's Code Requirements and pass PACKAGE_ARGS=\"--deadline-min <limit - 10>\".",
              file=sys.stderr)
    columns = cfg.sample_columns
    shown = {**asdict(cfg), "sample_columns": f"{len(columns)} classes" if columns else None}  # not 182 names
    print("config:", json.dumps(shown, default=str))


def print_outcome(notebook: Path, cfg: PackageConfig) -> None:
    """Where the dataset and notebook are, which wheels they carry, and the next command."""
    dataset = notebook.parent.parent / "dataset"
    wheels = json.loads((dataset / MANIFEST_NAME).read_text())["wheels"]
    print(f"package: {dataset} (model + code) and {notebook} (attaches the competition {cfg.competition})")
    if wheels["bundled"]:
        print(f"package: wheels for Kaggle (Python {', '.join(wheels['python_versions'])}): "
              f"{', '.join(wheels['files']) or 'none'}")
    else:
        print(f"package: no wheels (--no-wheels): attach a dataset holding {', '.join(wheels['requirements'].values())} "
              "to the notebook")
    print("upload: make upload   (creates or versions the dataset, then pushes the notebook)")


@refuse_unwritable
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = slug_problem(args.competition) if args.competition else None
    if problem:  # before an export that may train for hours
        print(f"error: {problem}", file=sys.stderr)
        return 1
    n_models = AUTO_ENSEMBLE if args.ensemble == "auto" else args.ensemble
    ws = Workspace.of(args.data)
    rc = export_first(args, ws, n_models)
    if rc != 0:
        return rc
    cfg = config_from_args(args, ws, n_models)
    print_config(cfg)
    try:
        notebook = package(cfg)
    except PackageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_outcome(notebook, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
