"""`make train`: train MODELS on DATA, preprocessing first when the cache is missing or stale."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from data.features import DENOISE_MODES, FeatureConfig
from data.paths import Workspace
from data.preprocess import PreprocessConfig, ensure_cache
from train.config import SCHEDULES, config_for
from train.loop import fit
from train.models import MODEL_NAMES
from train.report import format_table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    p.add_argument("--data", required=True, help="dataset folder in the Kaggle layout")
    p.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES, metavar="MODEL",
                   help=f"any of {', '.join(MODEL_NAMES)} (default: all)")
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
    p.add_argument("--preprocess-workers", type=int, default=0, help="processes for preprocessing (0: all cores)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = Path(args.data)
    features = FeatureConfig(denoise=args.denoise)
    cache_dir = ensure_cache(PreprocessConfig(data_dir=data_dir, features=features, workers=args.preprocess_workers))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    summaries = []
    for model in args.models:
        overrides = {k: getattr(args, k) for k in (
            "epochs", "batch_size", "lr", "optimizer", "weight_decay", "loss", "pretrained",
            "max_windows_per_recording", "holdout_fraction", "val_fraction", "num_workers")}
        cfg = config_for(model, str(data_dir.resolve()), args.schedule, features=features, seed=args.seed,
                         device=args.device, **overrides)
        run_dir = Workspace.of(data_dir).runs_dir / f"{model}-{stamp}"
        summaries.append({**fit(cfg, cache_dir, run_dir), "dir": str(run_dir)})
    print("\nThis session's runs:")
    print(format_table(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
