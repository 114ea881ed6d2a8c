"""Optimiser, learning-rate schedule and weight averaging: the parts of a run that change the
weights other than the gradient itself."""
from __future__ import annotations

import copy
import math

import torch

from train.config import TrainConfig


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, final_factor: float = 0.01) -> float:
    """Multiplier of the base learning rate at optimiser step `step` (0-based).

    constant: 1 after the warm-up. cosine: from 1 down to `final_factor` over the steps after the
    warm-up. The warm-up rises linearly from 1/warmup_steps, so the first step is never at lr 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """A per-step scheduler for cfg.lr_schedule.

    constant/cosine: a LambdaLR with cfg.warmup_epochs of linear warm-up. onecycle: torch's
    OneCycleLR peaking at cfg.lr (from lr/25, down to lr/25e4, momentum cycled 0.95 -> 0.85 -> 0.95)
    with cfg.warmup_epochs as its rising phase (at most half the run: the fall needs steps of its
    own), or torch's 30% when there is none."""
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.lr_schedule == "onecycle":
        pct_start = min(0.5, warmup / total) if warmup else 0.3
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=pct_start)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, cfg.lr_schedule))


class EMA:
    """An exponential moving average of a model's weights, validated and saved in its place.

    The decay ramps up as (1 + n) / (10 + n) over the first updates (as in timm), so a short run
    is not dominated by its random initialisation; buffers (batch-norm statistics) are averaged too."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_v, v in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_v.dtype.is_floating_point:
                ema_v.lerp_(v.detach(), 1 - d)
            else:
                ema_v.copy_(v)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
