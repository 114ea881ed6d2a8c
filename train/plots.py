"""Pictures a person would rather look at than read: learning curves and a confusion summary."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training boxes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def plot_curves(metrics: pd.DataFrame, path: Path, title: str) -> None:
    """Loss (train, val) and validation accuracy / ROC-AUC per epoch."""
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(metrics.epoch, metrics.train_loss, "o-", label="train loss")
    ax_loss.plot(metrics.epoch, metrics.val_loss, "o-", label="val loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.legend()
    ax_metric.plot(metrics.epoch, metrics.val_accuracy, "o-", label="val accuracy")
    ax_metric.plot(metrics.epoch, metrics.val_roc_auc, "o-", label="val macro ROC-AUC")
    ax_metric.set_ylim(0, 1.02)
    ax_metric.set_xlabel("epoch")
    ax_metric.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def confusion(true_idx: np.ndarray, pred_idx: np.ndarray, n_classes: int) -> np.ndarray:
    """[n_classes, n_classes] counts: row = true class, column = predicted."""
    m = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(m, (true_idx, pred_idx), 1)
    return m


def top_confusions(m: np.ndarray, classes: list[str], k: int = 5) -> list[tuple[str, str, int]]:
    """The k most frequent (true, predicted) mistakes."""
    off = m.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(off, axis=None)[::-1][:k]
    pairs = [np.unravel_index(i, off.shape) for i in flat]
    return [(classes[t], classes[p], int(off[t, p])) for t, p in pairs if off[t, p] > 0]


def tick_labels(n: int, height_in: float) -> tuple[int, float]:
    """(every how many classes a row/column is named, font size in pt) for n classes on a figure
    height_in tall: every class while a 4-pt name fits its row (BirdCLEF 2024's 182 all get one)."""
    row_pt = 0.75 * height_in * 72 / n  # the matrix takes ~3/4 of the figure's height
    fontsize = min(7.0, 0.8 * row_pt)
    return (1, fontsize) if fontsize >= 4 else (int(np.ceil(4 / fontsize)), 4.0)


def plot_confusion(m: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix (recall per true class on the diagonal)."""
    recall = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    size = min(3 + 0.28 * n, 30)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(recall, vmin=0, vmax=1, cmap="viridis")
    step, fontsize = tick_labels(n, size * 0.9)
    ticks = np.arange(0, n, step)
    ax.set_xticks(ticks, [classes[i] for i in ticks], rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, [classes[i] for i in ticks], fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.04, label="share of the true class's windows")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
