"""Recording-grouped splits: every window of a recording lands on the same side.

The held-out split is a pure function of (metadata, seed, fraction): training and
`make holdout` compute it independently and always agree, whatever ran first.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def grouped_split(meta: pd.DataFrame, fraction: float, seed: int, min_recordings: int) -> list[str]:
    """Filenames of about `fraction` of each class's recordings, at least one, taken only
    from classes with at least `min_recordings` recordings (a rare class keeps all of its
    recordings for training). Stratified by primary label, seeded, order-independent."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return []
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for _, files in sorted(meta.groupby("primary_label")["filename"]):
        files = sorted(files)
        if len(files) < min_recordings:
            continue
        k = max(1, int(round(fraction * len(files))))
        chosen += [files[i] for i in sorted(rng.permutation(len(files))[:k])]
    return sorted(chosen)


def holdout_recordings(meta: pd.DataFrame, fraction: float, seed: int) -> list[str]:
    """Recordings kept out of training entirely, for `make holdout` soundscapes."""
    return grouped_split(meta, fraction, seed, min_recordings=3)


def without_holdout(meta: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """The rows training may use: meta less the recordings `make holdout` keeps for scoring."""
    return meta[~meta.filename.isin(set(holdout_recordings(meta, fraction, seed)))]


def validation_recordings(meta: pd.DataFrame, fraction: float, seed: int) -> list[str]:
    """Recordings of the training side used for per-epoch validation."""
    return grouped_split(meta, fraction, seed + 1, min_recordings=2)


def recording_folds(meta: pd.DataFrame, folds: int, seed: int) -> dict[str, int]:
    """filename -> fold in [0, folds): every recording of a class is dealt round-robin over the
    folds after a seeded shuffle, so each fold holds about 1/folds of every class (grouped by
    recording, stratified by primary label). Shared by the kit's cross-validation (`--fold`) and
    the non-deep floor (bench/floor.py), so both are scored on the same folds."""
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    rng = np.random.default_rng(seed + 2)
    out: dict[str, int] = {}
    offset = 0  # rotate where each class starts so small classes do not all land in fold 0
    for _, files in sorted(meta.groupby("primary_label")["filename"]):
        files = sorted(files)
        for k, i in enumerate(rng.permutation(len(files))):
            out[files[i]] = (offset + k) % folds
        offset += len(files)
    return out


def fold_problem(meta: pd.DataFrame, folds: int, fold_ids: list[int], seed: int) -> str | None:
    """Why cross-validating meta (the hold-out already removed) on these folds cannot be scored,
    or None: each fold must validate on recordings of at least two classes (ROC-AUC needs a
    negative) and leave recordings to train on. Found before the first fold trains, not after."""
    bad = _unscorable_fold(meta, folds, fold_ids, seed)
    if bad is None:
        return None
    k, val = bad
    workable = [f for f in range(folds - 1, 1, -1) if _unscorable_fold(meta, f, list(range(f)), seed) is None]
    fix = (f"Use {workable[0]} folds, the most that work here (make cv FOLDS={workable[0]}; --cv {workable[0]})" if workable else
           "No number of folds works here: the data needs more recordings of more classes")
    return (f"with {folds} folds, fold {k} would validate on {len(val)} recording(s) of "
            f"{val.primary_label.nunique()} class(es) ({len(meta)} recordings in all): each fold needs recordings "
            f"of two classes or more. {fix}")


def _unscorable_fold(meta: pd.DataFrame, folds: int, fold_ids: list[int], seed: int) -> tuple[int, pd.DataFrame] | None:
    """(fold, its validation rows) of the first fold that cannot be scored, or None."""
    fold_of = recording_folds(meta, folds, seed)
    for k in fold_ids:
        val = meta[meta.filename.map(fold_of) == k]
        if val.primary_label.nunique() < 2 or len(val) == len(meta):
            return k, val
    return None
