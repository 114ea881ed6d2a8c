"""Metrics: Kaggle's BirdCLEF score (macro ROC-AUC over classes with a positive) and accuracy.

Kaggle's metric drops every class column whose solution has no positive, then calls
sklearn.metrics.roc_auc_score(average='macro') on the rest. macro_roc_auc reproduces it with
a rank formula (ties get average ranks), so training does not depend on sklearn's version.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def _rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties averaged (scipy.stats.rankdata's 'average')."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new_value = np.r_[np.ones(min(len(x), 1), bool), xs[1:] != xs[:-1]]  # the first value starts a run
    starts = np.flatnonzero(new_value)  # where each run of equal values begins in sorted order
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[np.cumsum(new_value) - 1]  # one vector op, not a loop per value
    return ranks


def binary_roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Probability that a random positive outranks a random negative (ties count half)."""
    y_true = np.asarray(y_true).astype(bool)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC needs at least one positive and one negative")
    ranks = _rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Kaggle's BirdCLEF metric on arrays [n_rows, n_classes]: the mean ROC-AUC over the
    classes with at least one positive. A class that is positive in every row has no
    negative, so no AUC: this raises, as sklearn <= 1.5 did (later sklearn warns and returns
    NaN, making the whole score NaN); a real BirdCLEF test set has no such class."""
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    if y_true.shape != y_score.shape:
        raise ValueError(f"shape mismatch: solution {y_true.shape} vs submission {y_score.shape}")
    scored = np.flatnonzero(y_true.sum(axis=0) > 0)
    if len(scored) == 0:
        raise ValueError("no class has a positive: the metric is undefined")
    return float(np.mean([binary_roc_auc(y_true[:, j], y_score[:, j]) for j in scored]))


def unscorable_reason(solution: pd.DataFrame, row_id_column: str = "row_id") -> str | None:
    """Why kaggle_score can give these labels no score, or None: it scores the classes with a
    positive (none: no score) and each of them needs a negative (macro_roc_auc raises otherwise)."""
    classes = [c for c in solution.columns if c != row_id_column]
    n_rows, positives = len(solution), solution[classes].sum()
    if not (positives > 0).any():
        return f"no class has a positive in its {n_rows} row(s)"
    everywhere = [c for c in classes if positives[c] == n_rows]
    if everywhere:
        return f"class(es) {everywhere[:5]} are positive in all {n_rows} rows, so ROC-AUC has no negative for them"
    return None


def kaggle_score(solution: pd.DataFrame, submission: pd.DataFrame, row_id_column: str = "row_id") -> float:
    """Kaggle's score() for BirdCLEF 2024 on the two CSVs' frames, rows matched by row_id."""
    missing = set(solution[row_id_column]) - set(submission[row_id_column])
    if missing:
        raise ValueError(f"submission lacks {len(missing)} row_id(s), e.g. {sorted(missing)[:3]}")
    classes = [c for c in solution.columns if c != row_id_column]
    lacking = [c for c in classes if c not in submission.columns]
    if lacking:
        raise ValueError(f"submission lacks class column(s) {lacking[:5]}")
    sub = submission.set_index(row_id_column).loc[solution[row_id_column], classes]
    return macro_roc_auc(solution[classes].to_numpy(), sub.to_numpy(dtype=np.float64))


def window_roc_auc(true_idx: np.ndarray, scores: np.ndarray) -> float:
    """macro_roc_auc of windows with one primary label each: [n] class indices against [n, C] scores
    (validation, cross-validation ensembles and the floor all score windows so)."""
    y_true = np.zeros(np.shape(scores), np.int8)
    y_true[np.arange(len(true_idx)), true_idx] = 1
    return macro_roc_auc(y_true, scores)


def accuracy(true_idx: np.ndarray, scores: np.ndarray) -> float:
    """Share of windows whose top-scoring class is the primary label."""
    return float(np.mean(np.argmax(scores, axis=1) == np.asarray(true_idx)))
