"""One training run: cache -> splits -> epochs -> run folder.

A run folder (train/runs/<dataset>/<model>-<time>/) holds:
    config.json           the TrainConfig, printed at start
    split.json            train / validation / held-out recordings
    metrics.csv           one line per epoch: losses, val accuracy, val macro ROC-AUC, speed
    curves.png            the same as a picture (redrawn at most every CURVES_EVERY_S, and at the end)
    best.pt               weights, config and classes of the best epoch (val ROC-AUC)
    confusion.png         the best epoch's validation confusion matrix
    summary.json          written last: status "finished" and the best epoch's metrics
    last.pt               the resume point after every epoch (removed once the run finishes)
Checkpoints are written in a background thread (train.checkpoint) while the next epoch trains.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from train import dist
from data.layout import class_change, class_list, read_metadata
from data.preprocess import FeatureCache
from train.augment import mixup, power_mix, spec_mask, time_shift
from train.checkpoint import BackgroundWriter, atomic_torch_save, atomic_write, host_copy, run_lock
from train.config import TrainConfig
from train.data import CachedWindows, EpochSampler, balance_weights, loader, make_splits
from train.metrics import accuracy, window_roc_auc
from train.models import build_model, forward_logits
from train.optim import EMA, make_optimizer, make_scheduler
from train.plots import confusion, plot_confusion, plot_curves, top_confusions


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def determinism(device: torch.device) -> dict:
    """Whether the same seed reruns to the same metrics on this device. CPU: yes (tested). CUDA:
    only with deterministic algorithms, which the kit leaves off for speed (cuDNN autotuning)."""
    if device.type == "cpu":
        return {"device": "cpu", "deterministic": True}
    deterministic = torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    return {"device": torch.cuda.get_device_name(device), "deterministic": deterministic}


def select_device(pref: str) -> torch.device:
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device cuda, but torch sees no CUDA GPU (torch {torch.__version__}, CUDA build: "
                           f"{torch.version.cuda or 'none'}): use --device auto or cpu, or check nvidia-smi and "
                           "that .venv holds a CUDA build of torch")
    return torch.device(pref)


def batch_targets(cfg: TrainConfig, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, C] float: the primary label one-hot (ce) or primary + secondary labels (bce)."""
    if cfg.loss == "bce":
        return targets
    return F.one_hot(labels, targets.shape[1]).float()


def loss_fn(cfg: TrainConfig, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if cfg.loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, y)
    return F.cross_entropy(logits, y)  # y: class probabilities (soft after mixup)


def probabilities(activation: str, logits: torch.Tensor) -> torch.Tensor:
    """[B, C] logits -> probabilities, as the exported model computes them (TrainConfig.output_activation)."""
    return torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=-1)


def native_bf16() -> bool:
    """bf16 in hardware (Ampere and later). is_bf16_supported() alone also says yes for the
    emulated bf16 of a T4 or V100, which is slow there: those take fp16 with loss scaling."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def autocast_for(device: torch.device, enabled: bool):
    if device.type != "cuda" or not enabled:
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if native_bf16() else torch.float16)


CURVES_EVERY_S = 30.0  # curves.png at most this often (and after the last epoch): a CPU epoch is longer


@dataclass
class EpochResult:
    train_loss: float
    samples_per_s: float
    samples: int = 0  # this process's windows
    seconds: float = 0.0  # the pass's wall time


def augment(cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
    if cfg.time_shift > 0:
        x = time_shift(x, gen, cfg.time_shift)
    if cfg.spec_mask:
        x = spec_mask(x, gen)
    if cfg.mixup_prob > 0 and torch.rand(1, generator=gen).item() < cfg.mixup_prob:
        x, y = mixup(x, y, cfg.mixup_alpha, union_targets=cfg.loss == "bce", gen=gen)
    if cfg.power_mix_prob > 0 and torch.rand(1, generator=gen).item() < cfg.power_mix_prob:
        x, y = power_mix(x, y, cfg.power_mix_snr_db, cfg.features.top_db, gen, union_targets=cfg.loss == "bce")
    return x, y


def train_step(model, x, y, cfg: TrainConfig, optimizer, scaler, device) -> torch.Tensor:
    """One optimisation step on a batch already on the device: x [B, M, T], y [B, C].
    Returns the loss without waiting for the device."""
    with autocast_for(device, cfg.amp):
        logits, aux = forward_logits(model, x)  # [B, C], Inception: aux [B, C]
        loss = loss_fn(cfg, logits.float(), y)
        if aux is not None:
            loss = loss + cfg.aux_loss_weight * loss_fn(cfg, aux.float(), y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def train_epoch(model, loader, cfg: TrainConfig, optimizer, device, scaler, gen: torch.Generator,
                max_steps: int | None = None, scheduler=None, ema: EMA | None = None, world: int = 1,
                bar: str | None = None) -> EpochResult:
    """One pass over the loader (this process's share under DDP). samples_per_s counts every
    process's samples. bar: a progress bar with this label, shown on a terminal only (a log file
    or a test gets the epoch lines alone)."""
    model.train()
    losses, n, t0 = [], 0, time.perf_counter()
    batches = tqdm(loader, desc=bar, total=len(loader) if max_steps is None else min(max_steps, len(loader)),
                   unit="batch", leave=False, mininterval=1.0, disable=None if bar else True)
    for step, (x, labels, targets) in enumerate(batches):
        if max_steps is not None and step >= max_steps:
            break
        x, labels, targets = (t.to(device, non_blocking=True) for t in (x, labels, targets))
        x = x.float()  # float16 from the cache, converted on the device
        x, y = augment(cfg, x, batch_targets(cfg, labels, targets), gen)  # x [B, M, T], y [B, C]
        losses.append(train_step(model, x, y, cfg, optimizer, scaler, device) * len(x))
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(dist.unwrap(model))
        n += len(x)
    # summed over every process's windows under DDP; one device sync per epoch
    loss_sum = torch.stack(losses).sum() if losses else torch.zeros((), device=device)
    sums = torch.stack([loss_sum.double(), torch.tensor(float(n), dtype=torch.float64, device=device)])
    total, n_all = dist.sum_over_processes(sums).tolist()
    seconds = time.perf_counter() - t0
    return EpochResult(total / max(n_all, 1), n * world / seconds, n, seconds)


@torch.no_grad()
def predict(model, loader, cfg: TrainConfig, device) -> tuple[float, np.ndarray]:
    """(mean loss, logits [n, classes]) over a loader, in eval mode."""
    model.eval()
    total, n, out = 0.0, 0, []
    for x, labels, targets in loader:  # [B, M, T], [B], [B, C]
        x, labels, targets = (t.to(device, non_blocking=True) for t in (x, labels, targets))
        x = x.float()
        logits = model(x).float()  # no autocast: bf16 logits would tie scores the fp32 ONNX model keeps apart
        total += loss_fn(cfg, logits, batch_targets(cfg, labels, targets)).item() * len(x)
        n += len(x)
        out.append(logits.cpu())
    return total / max(n, 1), torch.cat(out).numpy()


def _atomic_json(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


@dataclass
class Prepared:
    """Everything a run trains and validates on."""

    classes: list[str]
    splits: object  # train.data.Splits
    train_loader: DataLoader
    val_loader: DataLoader

    def set_epoch(self, epoch: int) -> None:
        """The training order and random crops of `epoch` (a pure function of seed and epoch)."""
        self.train_loader.sampler.set_epoch(epoch)
        self.train_loader.dataset.set_epoch(epoch)


def prepare(cfg: TrainConfig, cache_dir: Path, run_dir: Path, device: torch.device,
            d: dist.Dist = dist.Dist()) -> Prepared:
    meta = read_metadata(Path(cfg.data_dir))
    classes = class_list(meta)
    cache = FeatureCache.open(cache_dir)
    splits = make_splits(cache, meta, classes, cfg)
    if d.main:
        _atomic_json(run_dir / "split.json", {
            "train": splits.train.recordings, "val": splits.val.recordings,
            "holdout": splits.holdout, "skipped": splits.skipped, "classes": classes,
        })
    print(f"data: {len(classes)} classes, {len(splits.train)} train windows "
          f"({len(splits.train.recordings)} recordings), {len(splits.val)} val windows "
          f"({len(splits.val.recordings)} recordings), {len(splits.holdout)} recordings held out")
    if splits.skipped:
        print(f"data: {len(splits.skipped)} recording(s) of the metadata have no features (unreadable or missing; "
              f"reasons in {cache_dir / 'entries.csv'})")
    pin = device.type == "cuda"
    workers = cfg.num_workers if cfg.num_workers >= 0 else (min(4, os.cpu_count() or 1) if pin else 0)
    train_sampler = EpochSampler(len(splits.train), cfg.batch_size, seed=cfg.seed, rank=d.rank, world=d.world,
                                 weights=balance_weights(splits.train.label_idx, cfg.balance_power))
    train_set = CachedWindows(cache, splits.train, random_crop=cfg.random_crop, seed=cfg.seed)
    val_sampler = EpochSampler(len(splits.val), max(cfg.batch_size, 64), shuffle=False)
    return Prepared(classes, splits, loader(train_set, train_sampler, workers, pin),
                    loader(CachedWindows(cache, splits.val), val_sampler, workers, pin))


@dataclass
class TrainState:
    """What an epoch changes; saved as last.pt after every epoch so a killed run resumes exactly."""

    model: torch.nn.Module  # wrapped in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    aug_gen: torch.Generator
    ema: EMA | None
    history: list
    best: dict | None = None
    writer: BackgroundWriter = field(default_factory=BackgroundWriter)  # this run's checkpoint files
    curves_drawn_at: float | None = None  # time.monotonic() of the last curves.png

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights validated and saved: the EMA where there is one."""
        return self.ema.module if self.ema is not None else dist.unwrap(self.model)

    def random_streams(self) -> dict:
        """This process's random states: its augmentation generator, torch's (CPU, and this
        process's GPU: dropout there), numpy's and Python's."""
        return {"aug_gen": self.aug_gen.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
                "numpy_rng": np.random.get_state(), "python_rng": random.getstate()}

    def set_random_streams(self, streams: dict) -> None:
        self.aug_gen.set_state(streams["aug_gen"])
        torch.set_rng_state(streams["torch_rng"])
        if streams.get("cuda_rng") is not None and torch.cuda.is_initialized():
            torch.cuda.set_rng_state(streams["cuda_rng"])
        np.random.set_state(streams["numpy_rng"])
        random.setstate(streams["python_rng"])

    def snapshot(self, classes: list[str], streams_by_rank: list[dict] | None = None) -> dict:
        """last.pt's contents, copied to host memory: the next epoch can train while it is written.
        streams_by_rank: every process's random_streams(), this one's alone by default (under
        torchrun each process draws its own augmentations; a resumed run gives each its own back)."""
        return host_copy({
            "model_state": dist.unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
            "scaler": self.scaler.state_dict(), "random_streams": streams_by_rank or [self.random_streams()],
            "history": self.history, "best": self.best, "classes": classes,
        })

    @staticmethod
    def evaluated_weights(snapshot: dict) -> dict:
        """The evaluated model's state_dict inside a snapshot: best.pt shares last.pt's copy."""
        return snapshot["ema"]["module"] if snapshot["ema"] is not None else snapshot["model_state"]

    def load(self, path: Path, classes: list[str], state: dict | None = None, d: dist.Dist = dist.Dist()) -> None:
        """Restore from last.pt (or from `state`, its contents already loaded); this process takes
        its own random streams."""
        if state is None:
            state = torch.load(path, map_location="cpu", weights_only=False)
        check_resume_classes(path, state["classes"], classes)
        dist.unwrap(self.model).load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.scaler.load_state_dict(state["scaler"])
        self.history, self.best = state["history"], state["best"]
        streams = state.get("random_streams") or [state]  # a last.pt of before: rank 0's streams at the top level
        if len(streams) == d.world:
            self.set_random_streams(streams[d.rank])
        else:  # saved by another number of processes: each starts fresh streams of its own
            print(f"resume: saved by {len(streams)} process(es), resumed by {d.world}: the random streams restart "
                  f"(the run goes on, not bit for bit as it would have)")
            self.aug_gen.manual_seed(self.aug_gen.initial_seed() + 7919 * len(self.history))


def check_resume_classes(path: Path, saved: list[str], classes: list[str]) -> None:
    if saved != classes:
        raise RuntimeError(f"cannot resume {path.parent.name}: it trained on {len(saved)} classes, the data now has "
                           f"{len(classes)} ({class_change(saved, classes)}); start a new run")


def fit(cfg: TrainConfig, cache_dir: Path, run_dir: Path, resume: bool = False, d: dist.Dist = dist.Dist()) -> dict:
    """Train one model; returns the summary also written to run_dir/summary.json. With resume,
    continue from run_dir/last.pt (model, optimizer, schedule, EMA, scaler, random states, epoch).
    Under torchrun every process calls this; rank 0 alone writes the run folder, and holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir) if d.main else nullcontext():
        return _fit(cfg, cache_dir, run_dir, resume, d)


def _fit(cfg: TrainConfig, cache_dir: Path, run_dir: Path, resume: bool, d: dist.Dist) -> dict:
    print(f"\n=== {cfg.model} -> {run_dir}" + (" (resuming)" if resume else ""))
    saved = None
    if resume and (run_dir / "last.pt").exists():  # refuse a changed class list before touching the run folder
        saved = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
        check_resume_classes(run_dir / "last.pt", saved["classes"], class_list(read_metadata(Path(cfg.data_dir))))
    print("config:", json.dumps(cfg.to_dict()))
    if d.main:
        cfg.save(run_dir / "config.json")
    seed_everything(cfg.seed)  # the same initial weights in every process
    device = dist.device_for(d, select_device(cfg.device))
    data = prepare(cfg, cache_dir, run_dir, device, d)
    state = new_state(cfg, data, device, d, pretrained=cfg.pretrained and not resume)
    if d.active:
        print(f"distributed: {d.world} processes, batch {cfg.batch_size} each ({cfg.batch_size * d.world} in all)")
        if device.type == "cpu" and d.main and not torch.cuda.is_available():  # torchrun without GPUs: works, slowly
            print(f"warning: no CUDA GPU here, so GPUS={d.world} trains {d.world} CPU processes (gloo) that share "
                  "these cores; GPUS=1 trains as fast or faster on a CPU", file=sys.stderr)
    if saved is not None:
        state.load(run_dir / "last.pt", data.classes, saved, d)
        print(f"resumed after epoch {len(state.history)}")
    try:
        for epoch in range(len(state.history) + 1, cfg.epochs + 1):
            run_epoch(cfg, state, data, device, epoch, run_dir, d)
    finally:  # the last submitted checkpoint lands on disk even when the run is interrupted
        state.writer.wait()
    if d.main:
        _finish(cfg, data.classes, state.history, state.best, state.evaluated, run_dir, processes=d.world)
    dist.barrier(d)
    return json.loads((run_dir / "summary.json").read_text())


def setup_model(cfg: TrainConfig, num_classes: int, device: torch.device, pretrained: bool) -> torch.nn.Module:
    model = build_model(cfg.model, num_classes, pretrained=pretrained, input_hw=cfg.input_hw).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # input shapes are fixed: pick the fastest kernels once
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)  # NHWC: tensor-core friendly convolutions
    return model


def make_scaler(cfg: TrainConfig, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling only for fp16 autocast on CUDA; bf16 and fp32 need none (a no-op scaler)."""
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp and not native_bf16())


def new_state(cfg: TrainConfig, data: Prepared, device: torch.device, d: dist.Dist, pretrained: bool) -> TrainState:
    model = setup_model(cfg, len(data.classes), device, pretrained)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    optimizer = make_optimizer(cfg, model.parameters())
    scaler = make_scaler(cfg, device)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1 + 1000 * d.rank)  # each process its own augmentations
    return TrainState(dist.wrap(d, model, device), optimizer, make_scheduler(cfg, optimizer, len(data.train_loader)),
                      scaler, aug_gen, ema, [])


def run_epoch(cfg: TrainConfig, state: TrainState, data: Prepared, device, epoch: int, run_dir: Path,
              d: dist.Dist = dist.Dist()) -> None:
    """Train, then validate and record (record_epoch)."""
    data.set_epoch(epoch)
    tr = train_epoch(state.model, data.train_loader, cfg, state.optimizer, device, state.scaler, state.aug_gen,
                     scheduler=state.scheduler, ema=state.ema, world=d.world,
                     bar=f"epoch {epoch}/{cfg.epochs}" if d.main else None)
    record_epoch(cfg, state, data, device, epoch, run_dir, tr, d)


def record_epoch(cfg: TrainConfig, state: TrainState, data: Prepared, device, epoch: int, run_dir: Path,
                 tr: EpochResult, d: dist.Dist = dist.Dist()) -> None:
    """Validate, print and write the epoch's metrics; hand the best checkpoint (when it improved)
    and last.pt (the resume point) to the background writer."""
    t0 = time.perf_counter()
    val_loss, logits = predict(state.evaluated, data.val_loader, cfg, device)
    probs = probabilities(cfg.output_activation(), torch.from_numpy(logits)).numpy()
    val = data.splits.val
    row = {
        "epoch": epoch, "train_loss": tr.train_loss, "val_loss": val_loss,
        "val_accuracy": accuracy(val.label_idx, probs),
        "val_roc_auc": window_roc_auc(val.label_idx, probs),
        "train_samples_per_s": tr.samples_per_s, "train_s": tr.seconds, "epoch_s": tr.seconds + time.perf_counter() - t0,
        "lr": state.optimizer.param_groups[0]["lr"],
    }
    state.history.append(row)
    best = state.best
    improved = best is None or (row["val_roc_auc"], row["val_accuracy"]) > (best["val_roc_auc"], best["val_accuracy"])
    print(f"epoch {epoch:3d}/{cfg.epochs}  train_loss {row['train_loss']:.4f}  val_loss {val_loss:.4f}  "
          f"val_acc {row['val_accuracy']:.4f}  val_auc {row['val_roc_auc']:.4f}  "
          f"{row['train_samples_per_s']:.0f} samples/s" + ("  *best" if improved else ""))
    if improved:
        state.best = row
    streams = dist.gather(d, state.random_streams())  # a collective: every process, before rank 0 writes
    if d.main:
        now = time.monotonic()
        draw = _curves_due(state.curves_drawn_at, now, epoch, cfg.epochs)
        _write_history(state.history, run_dir, cfg, draw)
        state.curves_drawn_at = now if draw else state.curves_drawn_at
        # The latest epoch's logits: any activation can be scored afterwards from them.
        np.savez_compressed(run_dir / "val_last.npz", logits=logits, label_idx=val.label_idx, epoch=epoch)
        last = state.snapshot(data.classes, streams)
        write_best = (_best_files(state.evaluated_weights(last), cfg, data.classes, row, probs, logits, val, run_dir)
                      if improved else None)

        def write_files() -> None:  # in the writer's thread: best first, then the resume point
            if write_best is not None:
                write_best()
            atomic_torch_save(last, run_dir / "last.pt")
        state.writer.submit(write_files)
    dist.barrier(d)


def _curves_due(drawn_at: float | None, now: float, epoch: int, epochs: int) -> bool:
    """Whether to redraw curves.png: never drawn yet, the last epoch, or CURVES_EVERY_S since the last."""
    return drawn_at is None or epoch == epochs or now - drawn_at >= CURVES_EVERY_S


def _write_history(history: list[dict], run_dir: Path, cfg: TrainConfig, draw: bool = True) -> None:
    """metrics.csv every epoch; curves.png when `draw` (a plot costs ~0.4 s, a GPU epoch less)."""
    df = pd.DataFrame(history)
    atomic_write(run_dir / "metrics.csv", lambda tmp: df.to_csv(tmp, index=False, float_format="%.6f"))
    if draw:
        plot_curves(df, run_dir / "curves.png", run_title(cfg))


def run_title(cfg: TrainConfig) -> str:
    """What a run's plots are titled: model and data, and which fold (five folds' curves look alike)."""
    fold = f", fold {cfg.fold} of {cfg.folds}, seed {cfg.seed}" if cfg.folds else ""
    return f"{cfg.model} on {Path(cfg.data_dir).name}{fold}"


def _best_files(weights: dict, cfg: TrainConfig, classes: list[str], row: dict, probs: np.ndarray,
                logits: np.ndarray, val, run_dir: Path):
    """A job writing best.pt (weights: a host-memory copy) and its validation predictions."""
    ckpt = {"model_state": weights, "config": cfg.to_dict(), "classes": classes, "epoch": row["epoch"], "metrics": row}

    def write() -> None:
        np.savez_compressed(run_dir / "val_predictions.npz", probs=probs.astype(np.float32), logits=logits,
                            label_idx=val.label_idx, filenames=val.filenames)
        atomic_torch_save(ckpt, run_dir / "best.pt")
    return write


def _finish(cfg: TrainConfig, classes: list[str], history: list[dict], best: dict, model, run_dir: Path,
            processes: int = 1) -> dict:
    pred = np.load(run_dir / "val_predictions.npz")
    m = confusion(pred["label_idx"], pred["probs"].argmax(1), len(classes))
    plot_confusion(m, classes, run_dir / "confusion.png", f"{cfg.model}: validation, epoch {best['epoch']}")
    mistakes = top_confusions(m, classes)
    if mistakes:
        print("most confused (true -> predicted: windows): "
              + ", ".join(f"{t} -> {p}: {c}" for t, p, c in mistakes))
    summary = {
        "status": "finished", "model": cfg.model, "run": run_dir.name, "best_epoch": best["epoch"],
        "epochs": len(history), "val_accuracy": best["val_accuracy"], "val_roc_auc": best["val_roc_auc"],
        "val_loss": best["val_loss"], "last_val_accuracy": history[-1]["val_accuracy"],
        "last_val_roc_auc": history[-1]["val_roc_auc"], "train_samples_per_s": float(np.median([h["train_samples_per_s"] for h in history])),
        "parameters": sum(p.numel() for p in model.parameters()), "classes": len(classes),
        "top_confusions": [list(x) for x in mistakes], "processes": processes, **determinism(next(model.parameters()).device),
    }
    _atomic_json(run_dir / "summary.json", summary)
    (run_dir / "last.pt").unlink(missing_ok=True)  # the resume point of a finished run is dead weight
    return summary
