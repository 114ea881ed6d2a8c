"""Batch augmentations on feature windows [B, n_mels, n_frames], on the training device.

Cheap tensor ops that top BirdCLEF solutions found worth it: mixup teaches the overlapping calls
of soundscapes; time/frequency masking teaches robustness to masked calls; a time shift moves the
call within its window (most recordings of a small dataset are one window long, so random crops
have nothing else to offer them)."""
from __future__ import annotations

import torch


def _to(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A small CPU tensor of random draws moved to `like`'s device without stalling it.

    The draws come from the run's CPU generator, so a resumed run replays them on any device. A
    plain .to("cuda") from pageable memory waits for the GPU to finish its queue, every step;
    from pinned memory the copy is queued like a kernel."""
    if like.device.type != "cuda":
        return t
    return t.pin_memory().to(like.device, non_blocking=True)


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, union_targets: bool, gen: torch.Generator):
    """Blend each window with another of the batch.

    x [B, M, T], y [B, C] -> mixed x, mixed y. Targets are the union (max) of both windows' labels
    for sigmoid training (both species are present), the blend for softmax training."""
    lam = _to(torch.distributions.Beta(alpha, alpha).sample((len(x),)), x)  # [B]
    lam = torch.maximum(lam, 1 - lam)  # the first window stays dominant
    perm = _to(torch.randperm(len(x), generator=gen), x)
    x = lam.view(-1, 1, 1) * x + (1 - lam.view(-1, 1, 1)) * x[perm]
    if union_targets:
        y = torch.maximum(y, y[perm])
    else:
        y = lam.view(-1, 1) * y + (1 - lam.view(-1, 1)) * y[perm]
    return x, y


def power_mix(x: torch.Tensor, y: torch.Tensor, snr_db_range: tuple[float, float], top_db: float,
              gen: torch.Generator, union_targets: bool = True):
    """Add each window's sound to another's, as sounds add: in power, not in dB.

    Features are dB relative to the window's peak, scaled to [0, 1] (data.features.normalise).
    Undo the scaling, add the other window's power at a random level `snr_db` below, redo the
    scaling. Targets become the union of both windows' labels (both birds are audible), for
    softmax training (union_targets False) that union over its sum: a distribution, as mixup's blend."""
    lo, hi = snr_db_range
    snr_db = lo + (hi - lo) * _to(torch.rand(len(x), generator=gen), x)  # [B]
    perm = _to(torch.randperm(len(x), generator=gen), x)
    power = torch.pow(10.0, (x - 1.0) * top_db / 10.0)  # [B, M, T], peak 1
    mixed = power + torch.pow(10.0, -snr_db / 10.0).view(-1, 1, 1) * power[perm]
    db = 10.0 * torch.log10(mixed / mixed.amax(dim=(1, 2), keepdim=True))
    x = ((db + top_db) / top_db).clamp(0.0, 1.0)
    y = torch.maximum(y, y[perm])
    return x, y if union_targets else y / y.sum(dim=1, keepdim=True)


def spec_mask(x: torch.Tensor, gen: torch.Generator, max_time_frac: float = 0.15, max_freq_frac: float = 0.15) -> torch.Tensor:
    """One random time band and one random mel band per window set to 0 (silence)."""
    b, m, t = x.shape
    x = x.clone()
    for size, max_frac, dim in ((t, max_time_frac, 2), (m, max_freq_frac, 1)):
        width = (torch.rand(b, generator=gen) * max_frac * size).long()  # [B]
        start = (torch.rand(b, generator=gen) * (size - width)).long()
        pos = torch.arange(size).view(1, -1)
        band = (pos >= start.view(-1, 1)) & (pos < (start + width).view(-1, 1))  # [B, size]
        band = _to(band, x)
        x = x.masked_fill(band.unsqueeze(1) if dim == 2 else band.unsqueeze(2), 0.0)
    return x


def time_shift(x: torch.Tensor, gen: torch.Generator, max_frac: float) -> torch.Tensor:
    """Each window rolled along time by up to ±max_frac of its frames: x [B, M, T] -> [B, M, T].
    Circular, as if the recording looped; a soundscape's window starts anywhere in a call."""
    b, _, t = x.shape
    shift = ((torch.rand(b, generator=gen) * 2 - 1) * max_frac * t).long()  # [B] frames
    src = (torch.arange(t).view(1, -1) - shift.view(-1, 1)) % t  # [B, T]: out[:, :, j] = x[:, :, src[j]]
    return x.gather(2, _to(src, x).unsqueeze(1).expand_as(x))
