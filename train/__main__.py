"""`make train`: train MODELS on DATA, preprocessing first when the cache is missing or stale."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from data.features import DENOISE_MODES, FeatureConfig
from data.layout import LayoutError
from data.paths import Workspace
from data.preprocess import PreprocessConfig, ensure_cache
from train.config import SCHEDULES, TrainConfig, config_for
from train.loop import fit
from train.models import DEFAULT_MODELS, MODEL_NAMES
from train.report import format_table

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    p.add_argument("--data", required=True, help="dataset folder in the Kaggle layout")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODEL_NAMES, metavar="MODEL",
                   help=f"any of {', '.join(MODEL_NAMES)} (default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--schedule", default="full", choices=sorted(SCHEDULES), help="demo: short CPU schedule")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--loss", choices=["ce", "bce"])
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="ImageNet weights for torchvision models (default: on, off in the demo schedule)")
    p.add_argument("--windows-per-recording", type=int, dest="max_windows_per_recording",
                   help="train and validate on the first N windows of each recording (0: all)")
    p.add_argument("--holdout-fraction", type=float, help="share of recordings kept for make holdout")
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--num-workers", type=int, help="DataLoader workers")
    p.add_argument("--denoise", nargs="?", const="noisereduce", default="none", choices=DENOISE_MODES,
                   help="noise reduction in the features (own cache): none | spectral | noisereduce")
    p.add_argument("--resume", action="store_true",
                   help="continue each model's latest killed run where it stopped (same config)")
    p.add_argument("--preprocess-workers", type=int, default=0, help="processes for preprocessing (0: all cores)")
    return p.parse_args(argv)

def unfinished_run(runs_dir: Path, model: str) -> Path | None:
    """The latest run of `model` that was stopped before its summary was written."""
    candidates = [d for d in sorted(runs_dir.glob(f"{model}-*")) if (d / "last.pt").exists()
                  and not (d / "summary.json").exists()]
    return candidates[-1] if candidates else None

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return train_models(args)
    except (LayoutError, RuntimeError, ValueError) as e:  # refusals say what to do; no stack trace
        print(f"error: {e}", file=sys.stderr)
        return 1


def train_models(args: argparse.Namespace) -> int:
    data_dir = Path(args.data)
    features = FeatureConfig(denoise=args.denoise)
    ws = Workspace.of(data_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    summaries = []
    for model in args.models:
        overrides = {k: getattr(args, k) for k in (
            "epochs", "batch_size", "lr", "optimizer", "weight_decay", "loss", "pretrained",
            "max_windows_per_recording", "holdout_fraction", "val_fraction", "num_workers")}
        cfg = config_for(model, str(data_dir.resolve()), args.schedule, features=features, seed=args.seed,
                         device=args.device, **overrides)
        run_dir = ws.runs_dir / f"{model}-{stamp}"
        resume = args.resume and unfinished_run(ws.runs_dir, model)
        if resume:
            run_dir, cfg = resume, TrainConfig.load(resume / "config.json")
            print(f"train: resuming {run_dir.name} with its own config.json (command-line settings ignored)")
        cache_dir = ensure_cache(PreprocessConfig(data_dir=data_dir, features=cfg.features,
                                                  workers=args.preprocess_workers))
        summaries.append({**fit(cfg, cache_dir, run_dir, resume=bool(resume)), "dir": str(run_dir)})
    print("\nThis session's runs:")
    print(format_table(summaries))
    return 0

if __name__ == "__main__":
    sys.exit(main())
