"""`make bench-train`: training throughput from the real cache against the model's ceiling.

For each model, on the current device, with the run's own batch size and precision:
  - real: samples/s of the training loop reading the feature cache through the DataLoader,
    augmentation included (train.loop.train_epoch, warm-up steps excluded);
  - ceiling: samples/s of the same train_step on random tensors already on the device;
  - their ratio. Below ~0.8 the data pipeline, not the model, is the bottleneck;
  - an epoch's seconds in training (the training windows at the real pace) and outside it
    (validation, metrics, curves when due, checkpoints handed to the background writer: the run's
    own train.loop.record_epoch). On a GPU a small dataset's epoch can spend more outside than in.
Results also go to bench/out/train.json (under BIRDKIT_ROOT when set).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from data.layout import LayoutError
from data.paths import output_root
from data.preprocess import PreprocessConfig, PreprocessError, ensure_cache
from train.config import config_for
from train import dist
from train.loop import (
    EpochResult, augment, batch_targets, make_optimizer, make_scaler, new_state, prepare, record_epoch, select_device,
    setup_model, train_epoch, train_step,
)
from train.models import DEFAULT_MODELS, MODEL_NAMES


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ceiling(model, cfg, n_classes: int, device, steps: int, warmup: int) -> float:
    """samples/s of train_step on random batches resident on the device."""
    optimizer = make_optimizer(cfg, model.parameters())
    scaler = make_scaler(cfg, device)
    x = torch.rand(cfg.batch_size, *cfg.features.shape, device=device)
    labels = torch.randint(0, n_classes, (cfg.batch_size,), device=device)
    y = batch_targets(cfg, labels, torch.nn.functional.one_hot(labels, n_classes).float())
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            t0 = time.perf_counter()
        xa, ya = augment(cfg, x, y, gen)  # the same per-batch work as the real loop
        train_step(model, xa, ya, cfg, optimizer, scaler, device)
    _sync(device)
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def real(model, cfg, data, device, steps: int, warmup: int) -> float:
    """samples/s of the real loop over the cache, epoch after epoch as training runs them (warm-up
    steps first, untimed: they start the persistent workers and let cuDNN pick its kernels)."""
    optimizer = make_optimizer(cfg, model.parameters())
    scaler = make_scaler(cfg, device)
    gen = torch.Generator().manual_seed(0)
    train_epoch(model, data.train_loader, cfg, optimizer, device, scaler, gen, max_steps=warmup)
    _sync(device)
    per_epoch = len(data.train_loader)
    samples, done, epoch, t0 = 0, 0, 1, time.perf_counter()
    while done < steps:  # a small dataset's epoch is a few steps: the timing spans epoch boundaries
        data.set_epoch(epoch)
        samples += train_epoch(model, data.train_loader, cfg, optimizer, device, scaler, gen,
                               max_steps=steps - done).samples
        done, epoch = done + min(per_epoch, steps - done), epoch + 1
    _sync(device)
    return samples / (time.perf_counter() - t0)


def bookkeeping(cfg, data, device, run_dir: Path, epochs: int = 4) -> float:
    """Median seconds per epoch that a run spends outside training (its first epochs, which also
    draw the curves and save the first best checkpoint, included in the median)."""
    state = new_state(cfg, data, device, dist.Dist(), pretrained=False)
    times = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # its epoch line would read as a real epoch's
            record_epoch(cfg, state, data, device, epoch, run_dir, EpochResult(0.0, 0.0))
        _sync(device)
        times.append(time.perf_counter() - t0)
    state.writer.wait()  # not timed: the next epoch's training overlaps it
    return float(np.median(times))


def bench(model_name: str, data_dir: Path, device: torch.device, steps: int, warmup: int, run_dir: Path,
          num_workers: int = -1) -> dict:
    cfg = config_for(model_name, str(data_dir.resolve()), pretrained=False, device=device.type,
                     num_workers=num_workers)
    cache_dir = ensure_cache(PreprocessConfig(data_dir=data_dir, features=cfg.features, progress=False))
    data = prepare(cfg, cache_dir, run_dir, device)
    model = setup_model(cfg, len(data.classes), device, pretrained=False)  # channels_last, cuDNN autotuning
    real_sps = real(model, cfg, data, device, steps, warmup)
    ceiling_sps = ceiling(model, cfg, len(data.classes), device, steps, warmup)
    outside_s = bookkeeping(cfg, data, device, run_dir)
    return {"model": model_name, "device": str(device), "batch": cfg.batch_size, "amp": cfg.amp and device.type == "cuda",
            "workers": data.train_loader.num_workers, "real_samples_per_s": real_sps,
            "ceiling_samples_per_s": ceiling_sps, "ratio": real_sps / ceiling_sps, "steps": steps,
            "epoch_train_s": len(data.splits.train) / real_sps, "epoch_outside_s": outside_s}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="dataset whose feature cache to read")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODEL_NAMES)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement (on a GPU: 200 or more)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--num-workers", type=int, default=-1, help="DataLoader workers (-1: the training default)")
    args = p.parse_args(argv)
    device = select_device(args.device)
    out = output_root() / "bench" / "out"
    scratch = out / "train_scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        rows = [bench(m, Path(args.data), device, args.steps, args.warmup, scratch, args.num_workers)
                for m in args.models]
    except (LayoutError, PreprocessError, ValueError) as e:  # refusals say what to do; no stack trace
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the measurement's checkpoints: nothing to keep
    print(f"\nbench-train on {device_name(device)}, data {Path(args.data).name}")
    print(f"{'model':14s} {'batch':>5s} {'workers':>7s} {'real samples/s':>15s} {'ceiling samples/s':>18s} {'ratio':>6s} "
          f"{'epoch s: training':>18s} {'outside':>8s}")
    for r in rows:
        print(f"{r['model']:14s} {r['batch']:5d} {r['workers']:7d} {r['real_samples_per_s']:15.1f} "
              f"{r['ceiling_samples_per_s']:18.1f} {r['ratio']:6.2f} {r['epoch_train_s']:18.2f} {r['epoch_outside_s']:8.2f}")
    (out / "train.json").write_text(json.dumps({"device": device_name(device), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
