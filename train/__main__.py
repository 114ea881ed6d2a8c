"""`make train`: train MODELS on DATA, preprocessing first when the cache is missing or stale.

Under `torchrun --nproc_per_node=N -m train ...` (`make train GPUS=N`) the same command trains
with DistributedDataParallel. `--cv K` trains K recording-grouped folds per model instead of one
run and prints the mean validation metrics, for several models those of their averaged probabilities too
(runs under train/runs/<data>/cv/, which export skips)."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from data.features import DENOISE_MODES, FeatureConfig
from data.layout import LayoutError, class_disagreement, read_metadata, require_two_classes
from data.paths import Workspace, refuse_unwritable
from data.preprocess import PreprocessConfig, cache_dir_for, cache_is_current, ensure_cache
from data.split import fold_problem, without_holdout
from submission.infer import combine_probs
from train import dist
from train.checkpoint import new_run_dir
from train.config import ACTIVATIONS, LR_SCHEDULES, RECIPES, SCHEDULES, TrainConfig, at_least, config_for
from train.loop import fit, probabilities, select_device
from train.metrics import accuracy, window_roc_auc
from train.models import DEFAULT_MODELS, MODEL_NAMES, fetch_imagenet_weights
from train.report import format_table

# Command-line settings that override the model's defaults when given.
OVERRIDES = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "loss", "pretrained",
             "max_windows_per_recording", "holdout_fraction", "val_fraction", "num_workers", "mixup_prob",
             "spec_mask", "random_crop", "balance_power", "lr_schedule", "warmup_epochs", "ema_decay",
             "channels_last", "amp", "input_hw", "power_mix_prob", "time_shift", "activation")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="dataset folder in the Kaggle layout")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODEL_NAMES, metavar="MODEL",
                   help=f"any of {', '.join(MODEL_NAMES)} (default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--schedule", default="full", choices=sorted(SCHEDULES), help="demo: short CPU schedule")
    p.add_argument("--recipe", default="auto", choices=RECIPES,
                   help="hyperparameters to start from: auto (the from-scratch recipe where it measured better "
                        "without ImageNet weights, else the seed's), seed, or scratch for any model")
    p.add_argument("--epochs", type=at_least(1))
    p.add_argument("--batch-size", type=at_least(1), help="per process under torchrun")
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--loss", choices=["ce", "bce"])
    p.add_argument("--activation", choices=ACTIVATIONS,
                   help="logits -> probabilities for validation, export and submission (auto: sigmoid for bce, "
                        "softmax for ce)")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="ImageNet weights for torchvision models (default: on, off in the demo schedule)")
    levers = p.add_argument_group("training levers (defaults per model in train/config.py)")
    levers.add_argument("--power-mix-prob", type=float,
                        help="share of batches where a second window is added in power (0: off)")
    levers.add_argument("--mixup-prob", type=float, help="share of batches mixed up (0: off)")
    levers.add_argument("--spec-mask", action=argparse.BooleanOptionalAction, default=None,
                        help="time/frequency masking")
    levers.add_argument("--time-shift", type=float, metavar="FRAC",
                        help="roll each window in time by up to FRAC of its length (0: off)")
    levers.add_argument("--random-crop", action=argparse.BooleanOptionalAction, default=None,
                        help="train on windows from anywhere in each recording, new ones every epoch")
    levers.add_argument("--balance-power", type=float, help="class-balanced sampling (0: off, 1: classes equal)")
    levers.add_argument("--lr-schedule", choices=LR_SCHEDULES)
    levers.add_argument("--warmup-epochs", type=float)
    levers.add_argument("--ema-decay", type=float, help="EMA of the weights (0: off; e.g. 0.999)")
    levers.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="CUDA only")
    levers.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed precision on CUDA")
    p.add_argument("--input-hw", type=parse_hw, metavar="HxW|native",
                   help="model input in px, e.g. 224x224; native: the features' own mel bins x frames "
                        "(default per model in train/config.py)")
    p.add_argument("--windows-per-recording", type=at_least(0), dest="max_windows_per_recording",
                   help="train and validate on N windows of each recording (0: all)")
    p.add_argument("--holdout-fraction", type=float, help="share of recordings kept for make holdout")
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--cv", type=int, default=0, metavar="K",
                   help="K-fold cross-validation grouped by recording (same folds as `make floor`)")
    p.add_argument("--cv-folds", type=int, nargs="+", metavar="K",
                   help="with --cv: run only these folds (0-based), e.g. to split a long cross-validation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--num-workers", type=at_least(0), help="DataLoader workers (default: 0 on CPU, up to 4 on CUDA, one per core)")
    p.add_argument("--denoise", nargs="?", const="noisereduce", default="none", choices=DENOISE_MODES,
                   help="noise reduction in the features (own cache): none | spectral | noisereduce")
    p.add_argument("--resume", action="store_true",
                   help="continue each model's latest killed run where it stopped (same config); with --cv, "
                        "reuse the folds already finished with these settings and continue the killed one")
    p.add_argument("--preprocess-workers", type=at_least(0), default=0, help="processes for preprocessing (0: all cores)")
    return p.parse_args(argv)


def parse_hw(text: str) -> tuple[int, int] | str:
    """'224x224' -> (224, 224); 'native' stays a word, resolved against the features later."""
    if text == "native":
        return text
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW in px (e.g. 224x224) or 'native', got {text!r}") from None
    return (h, w)


def unfinished_run(runs_dir: Path, model: str) -> Path | None:
    """The latest run of `model` that was stopped before its summary was written."""
    candidates = [d for d in sorted(runs_dir.glob(f"{model}-*")) if (d / "last.pt").exists()
                  and not (d / "summary.json").exists()]
    return candidates[-1] if candidates else None


@refuse_unwritable
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    d = dist.init(args.device)
    try:
        # Under torchrun a rank may sit in a collective, where a Python handler never runs: torchrun's own
        # SIGTERM handling stops them there, and RESUME=1 continues from last.pt all the same.
        with (sigterm_as_interrupt() if not d.active else contextlib.nullcontext()):
            return train_models(args, d)
    except (LayoutError, RuntimeError, ValueError) as e:  # refusals say what to do; no stack trace
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (Interrupted, KeyboardInterrupt) as e:  # Ctrl-C: last.pt holds the last finished epoch
        if d.main:  # one message, not one per process
            print(f"\ninterrupted{': ' + str(e) if isinstance(e, Interrupted) else ''}", file=sys.stderr)
        return 130
    finally:
        dist.finish(d)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """A kill (SIGTERM: a scheduler, a spot instance, `kill`) ends the run like Ctrl-C does, saying
    how to continue from last.pt. Only this process: a forked child keeps the default (the
    DataLoader's workers ignore the signal: train.data.loader)."""
    pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != pid:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def model_config(args: argparse.Namespace, model: str, features: FeatureConfig, **extra) -> TrainConfig:
    overrides = {k: getattr(args, k) for k in OVERRIDES}
    return config_for(model, str(Path(args.data).resolve()), args.schedule, recipe=args.recipe, features=features,
                      seed=args.seed, device=args.device, **overrides, **extra)


CACHE_POLL_S = 5.0


def cache_for(args: argparse.Namespace, cfg: TrainConfig, d: dist.Dist) -> Path:
    """The feature cache, built by rank 0 alone while the other processes wait. They wait by
    watching the cache, not in a barrier: NCCL gives up on a barrier after 10 minutes, and a
    competition's first preprocessing takes longer (torchrun stops them if rank 0 fails)."""
    pre = PreprocessConfig(data_dir=Path(args.data), features=cfg.features, workers=args.preprocess_workers)
    if d.main:
        ensure_cache(pre)
    else:
        cache_dir = cache_dir_for(pre.data_dir, pre.features, pre.max_windows_per_recording)
        while not cache_is_current(cache_dir, pre.data_dir):
            time.sleep(CACHE_POLL_S)
    dist.barrier(d)
    return ensure_cache(pre)  # current by now: only checks and returns its folder


class Interrupted(Exception):
    """Ctrl-C, with the command that continues."""


def train_models(args: argparse.Namespace, d: dist.Dist) -> int:
    if args.cv_folds and not args.cv:  # else an ordinary run trains and the folds are ignored
        raise ValueError("--cv-folds needs --cv K, the number of folds: e.g. --cv 5 --cv-folds 1 "
                         '(make cv FOLDS=5 TRAIN_ARGS="--cv-folds 1")')
    select_device(args.device)  # --device cuda without a GPU: now, not after preprocessing
    meta = read_metadata(Path(args.data))
    require_two_classes(Path(args.data), meta)  # before hours of preprocessing
    disagreement = class_disagreement(Path(args.data), meta)
    if disagreement and d.main:
        print(f"warning: {disagreement}", file=sys.stderr)
    if args.cv:
        try:
            return cross_validate(args, d)
        except KeyboardInterrupt:
            raise Interrupted("`make cv RESUME=1` (python -m train ... --resume) with the same settings reuses the "
                              "finished folds and continues the killed one from its last finished epoch") from None
    features = FeatureConfig(denoise=args.denoise)
    ws = Workspace.of(Path(args.data))
    fetch_weights_first(args, features, resumes=lambda m: unfinished_run(ws.runs_dir, m) is not None)
    stamp = dist.broadcast(d, time.strftime("%Y%m%d-%H%M%S"))  # one run folder for every process
    summaries = []
    for k, model in enumerate(args.models):
        try:
            summaries.append(train_one(args, d, ws, model, features, stamp))
        except KeyboardInterrupt:
            rest = " ".join(args.models[k:])  # a finished model would train again from scratch: not it
            raise Interrupted(f'`make train RESUME=1 MODELS="{rest}"` (python -m train ... --models {rest} --resume) '
                              f"with the same settings continues {model} from its last finished epoch (from the "
                              "start if none finished)" + (" and trains the rest" if args.models[k + 1:] else "")) from None
    print("\nThis session's runs:")
    print(format_table(summaries))
    return 0


def fetch_weights_first(args: argparse.Namespace, features: FeatureConfig,
                        resumes: Callable[[str], bool] = lambda model: False) -> None:
    """Every ImageNet weights file the models will load, fetched before the first model trains:
    a machine without them finds out now, not after hours. Not for a model whose every run
    --resume continues or reuses (`resumes(model)`): it loads its checkpoint, not ImageNet; a
    model with nothing to resume starts fresh and needs them. Every process fetches (torch.hub
    writes a temporary file and renames it), as building the model did: a rank waiting in a
    barrier would time out on a slow download."""
    wanted = [m for m in args.models if model_config(args, m, features).pretrained
              and not (args.resume and resumes(m))]
    if wanted:
        fetch_imagenet_weights(wanted)


def train_one(args: argparse.Namespace, d: dist.Dist, ws: Workspace, model: str, features: FeatureConfig,
              stamp: str) -> dict:
    """One model's run (or the continuation of its killed one, with --resume); its summary."""
    cfg = model_config(args, model, features)
    resume = args.resume and unfinished_run(ws.runs_dir, model)
    if resume:
        run_dir, cfg = resume, TrainConfig.load(resume / "config.json")
        print(f"train: resuming {run_dir.name} with its own config.json (command-line settings ignored)")
    cache_dir = cache_for(args, cfg, d)  # before the run folder: a failed preprocess leaves none behind
    if not resume:
        run_dir = claim_run_dir(d, ws.runs_dir, f"{model}-{stamp}")
        if args.resume:
            print(f"train: no killed run of {model} to resume, starting {run_dir.name}")
    return {**fit(cfg, cache_dir, run_dir, resume=bool(resume), d=d), "dir": str(run_dir)}


def claim_run_dir(d: dist.Dist, parent: Path, name: str, tail: str = "") -> Path:
    """A new run folder, created by rank 0 (train.checkpoint.new_run_dir) and the same on every rank."""
    return dist.broadcast(d, new_run_dir(parent, name, tail) if d.main else None)


def cross_validate(args: argparse.Namespace, d: dist.Dist) -> int:
    """K folds per model; validation metrics of the best epoch and of the last epoch (the last
    is the unbiased figure: the best epoch is chosen on the fold it is scored on)."""
    if args.cv < 2:
        raise ValueError(f"--cv needs at least 2 folds, got {args.cv} (make cv: FOLDS=2 or more, 5 by default; "
                         "one train/validation split is make train)")
    fold_ids = sorted(set(args.cv_folds)) if args.cv_folds else list(range(args.cv))  # a fold once: one folder each
    if not all(0 <= k < args.cv for k in fold_ids):
        raise ValueError(f"--cv-folds must be between 0 and {args.cv - 1}, got {fold_ids}")
    features = FeatureConfig(denoise=args.denoise)
    check_folds(args, features, fold_ids)
    cv_dir = Workspace.of(Path(args.data)).runs_dir / "cv"
    fetch_weights_first(args, features, resumes=lambda m: all(
        latest_fold_run(cv_dir, model_config(args, m, features, folds=args.cv, fold=k)) is not None for k in fold_ids))
    stamp = dist.broadcast(d, time.strftime("%Y%m%d-%H%M%S"))
    per_model = {}
    for model in args.models:
        per_model[model] = [fit_fold(args, model_config(args, model, features, folds=args.cv, fold=k), cv_dir,
                                     f"{model}-{stamp}", d) for k in fold_ids]
    lines = [cv_line(model, folds) for model, folds in per_model.items()]
    if len(per_model) > 1 and d.main:  # the other processes print nothing, and rank 0 wrote the files
        lines.append(cv_ensemble_line(cv_dir, per_model))
    which = "" if len(fold_ids) == args.cv else f", folds {' '.join(map(str, fold_ids))} only"
    print(f"\n{args.cv}-fold cross-validation grouped by recording (mean ± std over folds{which}):")
    print(f"{'model':16s} {'best-epoch acc':>15s} {'best-epoch AUC':>15s} {'last-epoch acc':>15s} {'last-epoch AUC':>15s}")
    print("\n".join(lines))
    return 0


def check_folds(args: argparse.Namespace, features: FeatureConfig, fold_ids: list[int]) -> None:
    """Refuse folds that cannot be scored before the first one trains (each model's hold-out)."""
    meta = read_metadata(Path(args.data))
    for model in args.models:
        cfg = model_config(args, model, features, folds=args.cv, fold=fold_ids[0])
        problem = fold_problem(without_holdout(meta, cfg.holdout_fraction, cfg.seed), args.cv, fold_ids, cfg.seed)
        if problem:
            raise ValueError(problem)


def fit_fold(args: argparse.Namespace, cfg: TrainConfig, cv_dir: Path, stem: str, d: dist.Dist) -> dict:
    """One fold's summary. With --resume, the latest run of this fold with this very config is
    reused when finished and continued when killed, so a rerun of a stopped `make cv` picks up
    where it stopped; without one (or with other settings) the fold trains in a new folder."""
    run = latest_fold_run(cv_dir, cfg) if args.resume else None
    if run is not None and (run / "summary.json").exists():
        print(f"\n=== {cfg.model} fold {cfg.fold}: finished in {run.name} with the same config, reused")
        return json.loads((run / "summary.json").read_text())
    cache_dir = cache_for(args, cfg, d)
    if run is not None:
        return fit(cfg, cache_dir, run, resume=True, d=d)
    run = claim_run_dir(d, cv_dir, stem, f"-fold{cfg.fold}")
    if args.resume:
        print(f"\n=== {cfg.model} fold {cfg.fold}: no killed run with this config to resume, starting {run.name}")
    return fit(cfg, cache_dir, run, d=d)


def latest_fold_run(cv_dir: Path, cfg: TrainConfig) -> Path | None:
    """The latest folder of cfg's model and fold trained with cfg (finished, or with a last.pt to resume)."""
    wanted = json.loads(json.dumps(cfg.to_dict()))  # as config.json holds it: tuples become lists
    for run in sorted(cv_dir.glob(f"{cfg.model}-*-fold{cfg.fold}"), reverse=True):
        if not ((run / "summary.json").exists() or (run / "last.pt").exists()) or not (run / "config.json").exists():
            continue
        if json.loads((run / "config.json").read_text()) == wanted:
            return run
    return None


def cv_line(model: str, folds: list[dict]) -> str:
    def cell(key: str) -> str:
        v = np.array([f[key] for f in folds], float)
        return f"{v.mean():.3f} ± {v.std():.3f}"
    return (f"{model:16s} {cell('val_accuracy'):>15s} {cell('val_roc_auc'):>15s} {cell('last_val_accuracy'):>15s} "
            f"{cell('last_val_roc_auc'):>15s}")


def cv_ensemble_line(cv_dir: Path, per_model: dict[str, list[dict]]) -> str:
    """The mean of the models' probabilities on each fold, as `make package` combines an ensemble
    (--combine mean): what averaging them would score on the same folds, from the logits each
    run kept (its best epoch's and its last's), without training again."""
    label = f"mean of {len(per_model)}"
    folds = []
    for summaries in zip(*per_model.values()):  # one fold: each model's run of it
        fold = ensemble_fold([cv_dir / s["run"] for s in summaries])
        if isinstance(fold, str):
            return f"{label:16s} not scored: {fold}"
        folds.append(fold)
    return cv_line(label, folds)


def ensemble_fold(runs: list[Path]) -> dict | str:
    """One fold's ensemble metrics, keyed as a fold summary is; or why the runs cannot be
    averaged (they validated on other windows: other --windows-per-recording, say)."""
    best = [np.load(r / "val_predictions.npz") for r in runs]
    last = [np.load(r / "val_last.npz") for r in runs]
    first = best[0]
    for run, b, z in zip(runs, best, last):
        if not (np.array_equal(b["filenames"], first["filenames"]) and np.array_equal(b["label_idx"], first["label_idx"])
                and np.array_equal(z["label_idx"], first["label_idx"]) and b["probs"].shape == first["probs"].shape):
            return (f"{run.name} validated on other windows or classes than {runs[0].name} "
                    "(train them with the same data settings to average them)")
    labels = first["label_idx"]
    last_probs = [probabilities(TrainConfig.load(r / "config.json").output_activation(),
                                torch.from_numpy(z["logits"])).numpy() for r, z in zip(runs, last)]
    mean_best = combine_probs(np.stack([b["probs"] for b in best]), "mean")  # [n, C]: the notebook's own rule
    mean_last = combine_probs(np.stack(last_probs), "mean")
    return {"val_accuracy": accuracy(labels, mean_best), "val_roc_auc": window_roc_auc(labels, mean_best),
            "last_val_accuracy": accuracy(labels, mean_last), "last_val_roc_auc": window_roc_auc(labels, mean_last)}


if __name__ == "__main__":
    sys.exit(main())
