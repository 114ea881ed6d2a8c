"""From the feature cache to training and validation windows, split by recording."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from data.preprocess import FeatureCache
from data.split import holdout_recordings, validation_recordings

# Windows of the training set held in RAM rather than read from the memmap, up to this size.
_PRELOAD_BYTES = 2 * 1024**3


@dataclass
class WindowSet:
    """Windows of a set of recordings: cache rows and their labels."""

    rows: np.ndarray  # [n] int64 rows of the cache
    label_idx: np.ndarray  # [n] int64 primary label
    targets: np.ndarray  # [n, classes] float32, primary and secondary labels = 1
    filenames: np.ndarray  # [n] str, the recording of each window

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def recordings(self) -> list[str]:
        return sorted(set(self.filenames.tolist()))


@dataclass
class Splits:
    train: WindowSet
    val: WindowSet
    holdout: list[str]  # recordings never used here (see data/holdout.py)
    skipped: list[str]  # recordings of the metadata without cached features


def make_splits(cache: FeatureCache, meta: pd.DataFrame, classes: list[str], cfg) -> Splits:
    """Hold-out recordings out, then a grouped validation split of the rest."""
    held = set(holdout_recordings(meta, cfg.holdout_fraction, cfg.seed))
    rest = meta[~meta.filename.isin(held)]
    val = set(validation_recordings(rest, cfg.val_fraction, cfg.seed))
    cached = meta.filename.isin(cache.entries.index)
    skipped = sorted(meta.filename[~cached])
    usable = rest[rest.filename.isin(cache.entries.index)]
    train_meta = usable[~usable.filename.isin(val)]
    val_meta = usable[usable.filename.isin(val)]
    if len(train_meta) == 0 or len(val_meta) == 0:
        raise ValueError(
            f"need recordings on both sides of the validation split, got {len(train_meta)} train and "
            f"{len(val_meta)} validation (classes need >= 2 recordings to be validated)"
        )
    warn_unknown_secondary_labels(meta, classes)
    args = (cache, classes, cfg.max_windows_per_recording)
    return Splits(_windows(train_meta, *args), _windows(val_meta, *args), sorted(held), skipped)


def warn_unknown_secondary_labels(meta: pd.DataFrame, classes: list[str], show: int = 10) -> None:
    """One line naming the secondary labels that are not classes (they are ignored), if any."""
    known, counts = set(classes), {}
    for labels in meta.secondary_labels:
        for s in sorted(set(labels) - known):
            counts[s] = counts.get(s, 0) + 1
    if not counts:
        return
    names = [f"{s} ({n} recording{'s' if n > 1 else ''})" for s, n in sorted(counts.items())]
    more = f" (+{len(names) - show} more)" if len(names) > show else ""
    print(f"warning: secondary labels outside the {len(classes)} classes are ignored: {', '.join(names[:show])}{more}")


def _windows(meta: pd.DataFrame, cache: FeatureCache, classes: list[str], max_windows: int) -> WindowSet:
    col = {c: j for j, c in enumerate(classes)}
    rows, labels, targets, names = [], [], [], []
    for rec in meta.itertuples():
        target = np.zeros(len(classes), np.float32)
        target[col[rec.primary_label]] = 1.0
        for s in rec.secondary_labels:
            if s in col:  # secondary labels outside the class list are ignored
                target[col[s]] = 1.0
        r = cache.rows_of(rec.filename)
        r = r[:max_windows] if max_windows else r
        rows += list(r)
        labels += [col[rec.primary_label]] * len(r)
        targets += [target] * len(r)
        names += [rec.filename] * len(r)
    return WindowSet(
        rows=np.asarray(rows, np.int64),
        label_idx=np.asarray(labels, np.int64),
        targets=np.stack(targets) if targets else np.zeros((0, len(classes)), np.float32),
        filenames=np.asarray(names),
    )


class CachedWindows(Dataset):
    """(features [n_mels, n_frames] float32, primary label, multi-hot target) per window.

    Small sets are copied to RAM once; large ones are read from the memory map."""

    def __init__(self, cache: FeatureCache, ws: WindowSet):
        self.ws = ws
        nbytes = len(ws) * cache.windows[0].nbytes if len(cache.windows) else 0
        if nbytes <= _PRELOAD_BYTES:
            self.x = torch.from_numpy(np.ascontiguousarray(cache.windows[ws.rows]))  # [n, M, T] float16
            self.rows = None
        else:
            self.x, self.rows = cache.windows, ws.rows
        self.labels = torch.from_numpy(ws.label_idx)
        self.targets = torch.from_numpy(ws.targets)

    def __len__(self) -> int:
        return len(self.ws)

    def __getitem__(self, i: int):
        if self.rows is None:
            x = self.x[i].float()
        else:
            x = torch.from_numpy(np.asarray(self.x[self.rows[i]], dtype=np.float32))
        return x, self.labels[i], self.targets[i]
