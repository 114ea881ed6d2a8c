"""From the feature cache to training and validation windows, split by recording."""
from __future__ import annotations

import signal
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from data.preprocess import FeatureCache
from data.split import recording_folds, validation_recordings, without_holdout

# Windows of the training set held in RAM rather than read from the memmap, up to this size.
_PRELOAD_BYTES = 2 * 1024**3


@dataclass
class WindowSet:
    """Windows of a set of recordings: cache rows and their labels."""

    rows: np.ndarray  # [n] int64 rows of the cache
    label_idx: np.ndarray  # [n] int64 primary label
    targets: np.ndarray  # [n, classes] float32, primary and secondary labels = 1
    filenames: np.ndarray  # [n] str, the recording of each window
    span_first: np.ndarray  # [n] int64 first cache row of the window's recording
    span_len: np.ndarray  # [n] int64 windows the recording has in the cache (all of them)
    slot: np.ndarray  # [n] int64 position of the window among its recording's chosen windows

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
    rest = without_holdout(meta, cfg.holdout_fraction, cfg.seed)
    held = set(meta.filename) - set(rest.filename)
    if getattr(cfg, "folds", 0):  # cross-validation: one recording-grouped fold (bench/floor.py uses the same)
        val = {f for f, k in recording_folds(rest, cfg.folds, cfg.seed).items() if k == cfg.fold}
    else:
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
    splits = Splits(_windows(train_meta, *args), _windows(val_meta, *args), sorted(held), skipped)
    warn_untrained_classes(splits.train, classes)
    return splits


def warn_untrained_classes(train: WindowSet, classes: list[str], show: int = 10) -> None:
    """One line naming the classes no training window is labelled with: the model still outputs their
    columns (the submission needs them) but cannot learn them, and a list of skipped files hides it."""
    untrained = [c for c, seen in zip(classes, train.targets.any(axis=0)) if not seen]
    if untrained:
        more = f" (+{len(untrained) - show} more)" if len(untrained) > show else ""
        print(f"warning: {len(untrained)} of {len(classes)} classes have no training window, so the model cannot "
              f"learn them: {', '.join(untrained[:show])}{more}. Their recordings are unreadable or missing "
              "(preprocess lists them) or all validate: fix or add recordings")


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
    rows, labels, targets, names, first, length, slot = [], [], [], [], [], [], []
    for rec in meta.itertuples():
        target = np.zeros(len(classes), np.float32)
        target[col[rec.primary_label]] = 1.0
        for s in rec.secondary_labels:
            if s in col:  # secondary labels outside the class list are ignored
                target[col[s]] = 1.0
        every = cache.rows_of(rec.filename)
        r = every[:max_windows] if max_windows else every
        rows += list(r)
        labels += [col[rec.primary_label]] * len(r)
        targets += [target] * len(r)
        names += [rec.filename] * len(r)
        first += [every.start] * len(r)
        length += [len(every)] * len(r)
        slot += list(range(len(r)))
    ints = lambda v: np.asarray(v, np.int64)  # noqa: E731
    return WindowSet(
        rows=ints(rows), label_idx=ints(labels),
        targets=np.stack(targets) if targets else np.zeros((0, len(classes)), np.float32),
        filenames=np.asarray(names), span_first=ints(first), span_len=ints(length), slot=ints(slot),
    )


class CachedWindows(Dataset):
    """Batches of (features [B, n_mels, n_frames] float16, primary labels [B], multi-hot targets [B, C]).

    Features stay float16 (the cache's precision) until they are on the device: half the bytes to
    copy to a GPU, and the conversion runs there.

    Indexed by a list of window indices (one gather per batch: see `loader`). Small sets are copied
    to RAM once; large ones are read from the memory map. With `random_crop`, each training slot
    of a recording takes, every epoch, a different window from anywhere in the recording rather
    than always one of its first windows: the k-th slot takes the k-th window of a permutation
    seeded by (seed, epoch), so no window repeats within an epoch and a resumed run
    draws exactly what the killed one would have. The epoch comes with each batch key from
    EpochSampler, because persistent DataLoader workers hold their own copy of this object and
    never see set_epoch."""

    def __init__(self, cache: FeatureCache, ws: WindowSet, random_crop: bool = False, seed: int = 0):
        self.ws, self.random_crop, self.seed, self.epoch = ws, random_crop, seed, 0
        self._rec_first, where, self._recording_ids = np.unique(ws.span_first, return_index=True, return_inverse=True)
        self._rec_len = ws.span_len[where]  # windows per recording, [n recordings]
        self._rec_offset = np.cumsum(self._rec_len) - self._rec_len  # where each recording starts in a crop table
        self._crop_epoch: int | None = None
        needed = self._recording_rows() if random_crop else np.unique(ws.rows)  # sorted cache rows this set may read
        nbytes = len(needed) * cache.windows[0].nbytes if len(cache.windows) else 0
        if nbytes <= _PRELOAD_BYTES:
            self.x = torch.from_numpy(np.ascontiguousarray(cache.windows[needed]))  # [n, M, T] float16
            self.needed = needed  # row i of self.x is cache row needed[i]
        else:
            self.x, self.needed = cache.windows, None
        self.labels = torch.from_numpy(ws.label_idx)
        self.targets = torch.from_numpy(ws.targets)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ws)

    def rows_for(self, idx: np.ndarray, epoch: int | None = None) -> np.ndarray:
        """Cache rows of the windows at `idx` in `epoch` (default: the one set last)."""
        if not self.random_crop:
            return self.ws.rows[idx]
        epoch = self.epoch if epoch is None else epoch
        if self._crop_epoch != epoch:  # once per epoch per process, not per window
            self._crop_rows, self._crop_epoch = self._epoch_crops(epoch), epoch
        rec = self._recording_ids[idx]
        return self._crop_rows[self._rec_offset[rec] + self.ws.slot[idx] % self._rec_len[rec]]

    def _epoch_crops(self, epoch: int) -> np.ndarray:
        """Every recording's windows in this epoch's random order, recordings one after another:
        slot k of recording r reads entry offset[r] + k % len[r]. One vector sort instead of a
        Generator per window (measured at 114k windows: 3 µs per batch of 32 instead of 0.46 ms;
        the table takes ~30 ms once per epoch)."""
        rows = self._recording_rows()
        rec_of_row = np.repeat(np.arange(len(self._rec_len)), self._rec_len)  # [total rows]
        keys = np.random.default_rng((self.seed, epoch)).random(len(rows))
        return rows[np.lexsort((keys, rec_of_row))]  # grouped by recording, shuffled within each

    def _recording_rows(self) -> np.ndarray:
        """Every cache row of this set's recordings, recording after recording: sorted, as each
        recording's windows are consecutive rows of the cache."""
        within = np.arange(self._rec_len.sum()) - np.repeat(self._rec_offset, self._rec_len)
        return np.repeat(self._rec_first, self._rec_len) + within

    def local(self, rows: np.ndarray) -> np.ndarray:
        """Cache rows -> rows of self.x."""
        return rows if self.needed is None else np.searchsorted(self.needed, rows)

    def __getitem__(self, key):
        """key: window indices, or (epoch, window indices) as EpochSampler yields them."""
        epoch, idx = key if isinstance(key, tuple) else (None, key)
        idx = np.atleast_1d(np.asarray(idx, np.int64))
        local = self.local(self.rows_for(idx, epoch))
        if isinstance(self.x, torch.Tensor):
            x = self.x[torch.from_numpy(local)]
        else:  # memmap: one fancy read per batch
            x = torch.from_numpy(np.asarray(self.x[local]))
        t = torch.from_numpy(idx)
        return x, self.labels[t], self.targets[t]


def balance_weights(label_idx: np.ndarray, power: float) -> np.ndarray | None:
    """Sampling weight per window, proportional to (windows of its class)^-power: 0 is the plain
    shuffle (None), 1 draws every class equally often, 0.5 is between (rare species seen more
    often without being memorised)."""
    if power <= 0:
        return None
    counts = np.bincount(label_idx)
    w = counts[label_idx].astype(np.float64) ** -power
    return w / w.sum()


class EpochSampler(torch.utils.data.Sampler):
    """Batches of window indices for one epoch, a pure function of (seed, epoch): a resumed run
    replays the same order, and each of `world` processes (DistributedDataParallel) takes its own
    interleaved share of every epoch. With `weights`, windows are drawn with replacement by weight
    (class-balanced sampling); without, it is a plain shuffle (or the given order with shuffle off)."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True, weights: np.ndarray | None = None,
                 seed: int = 0, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.shuffle, self.weights = n, batch_size, shuffle, weights
        self.seed, self.rank, self.world, self.epoch = seed, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        rng = np.random.default_rng((self.seed, self.epoch))
        if self.weights is not None:
            order = rng.choice(self.n, size=self.n, replace=True, p=self.weights)
        else:
            order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        if self.world > 1:  # pad to a multiple of world so every process takes as many steps
            order = np.concatenate([order, order[: (-len(order)) % self.world]])
        return order[self.rank::self.world]

    def __iter__(self):
        """(epoch, window indices) per batch: the epoch travels with the key to the workers."""
        order = self.indices()
        starts = self._starts(len(order))
        for start, end in zip(starts, [*starts[1:], len(order)]):
            yield self.epoch, order[start:end].tolist()

    def _starts(self, n: int) -> list[int]:
        """Where each batch begins. A last batch of one window joins the batch before it: batch norm
        cannot train on one (inception_v3's auxiliary head raises), and how many windows each process
        gets changes with the number of GPUs."""
        starts = list(range(0, n, self.batch_size))
        return starts[:-1] if len(starts) > 1 and n - starts[-1] == 1 else starts

    def __len__(self) -> int:
        return len(self._starts(-(-self.n // self.world)))


def loader(dataset: CachedWindows, sampler: EpochSampler, num_workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader that fetches whole batches with one gather (batch_size=None: the sampler
    yields index lists), in worker processes when num_workers > 0, into pinned memory on CUDA.
    Workers persist across epochs: on a GPU an epoch of a small dataset takes well under a second,
    less than starting the workers again would.

    The loader draws its workers' seed from a generator of its own, not from torch's global stream
    (dropout's): persistent workers draw it once per run, so a resumed run would draw it once more
    than the killed one and go on differently. The workers need no randomness of their own: the
    windows and crops of a batch follow from its key (CachedWindows)."""
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers else None,
                      generator=torch.Generator(), worker_init_fn=_ignore_sigterm if num_workers else None)


def _ignore_sigterm(worker_id: int) -> None:
    """A worker leaves SIGTERM to the training process. Slurm and systemd send it to every process
    of a job; a worker it killed made torch raise "DataLoader worker ... is killed by signal" in
    the training process, and that error won over the interruption (exit 1, no word on how to
    resume). The worker still ends when its loader shuts down or its parent is gone."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
