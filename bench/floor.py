"""`make floor`: the non-deep floor. Log-mel band statistics + logistic regression, grouped K-fold CV.

Every recording of the metadata that is in the feature cache contributes its first
`windows_per_recording` 5-s windows. Each window becomes 2 * n_mels numbers: the mean and the
standard deviation over time of every mel band of its cached (normalised, [0, 1]) log-mel.
The features are standardised with the training folds' statistics and fed to a multinomial
logistic regression (L2, lbfgs). The folds are data.split.recording_folds, the same ones the
kit's own cross-validation uses: every window of a recording is on one side, and each fold
holds about 1/K of every class.

Per fold: window accuracy (top-1 against the primary label) and Kaggle's macro ROC-AUC (the mean
over the classes with a positive in that fold) on the held-out fold, then mean +- std over the
folds. A class absent from a fold's training side gets probability 0 there (a class with a single
recording is never predicted right: that is part of the floor). Results go to
bench/out/floor-<dataset>.json (under BIRDKIT_ROOT when set).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data.features import FeatureConfig
from data.layout import LayoutError, class_list, read_metadata, require_two_classes
from data.paths import Workspace, output_root
from data.preprocess import FeatureCache, PreprocessConfig, PreprocessError, ensure_cache
from data.split import recording_folds
from train.metrics import accuracy, window_roc_auc

# Figures quoted in the issue that asked for this floor, by dataset folder name.
REFERENCE = {"realbirds": {"accuracy": 0.625, "roc_auc": 0.924}}


class FloorError(ValueError):
    """The dataset cannot give a K-fold floor (too few recordings, a fold without data)."""


@dataclass(frozen=True)
class FloorConfig:
    folds: int = 5
    seed: int = 0
    windows_per_recording: int = 6  # the first N windows of each recording
    C: float = 1.0  # inverse L2 strength of the logistic regression
    max_iter: int = 5000  # lbfgs iterations; a fold that does not converge is reported

    def __post_init__(self):
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")
        if self.windows_per_recording < 1:
            raise ValueError(f"windows_per_recording must be >= 1, got {self.windows_per_recording}")
        if not self.C > 0:
            raise ValueError(f"C must be > 0, got {self.C}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")


# ------------------------------------------------------------------------------ features
FEW_ROWS = 20_000  # below this the logistic regression fits on one BLAS thread
STATS_CHUNK = 1024  # windows read and turned into float64 at a time: ~330 MB, whatever the dataset's size


def band_stats(windows: np.ndarray) -> np.ndarray:
    """[n, n_mels, n_frames] log-mel windows -> [n, 2 * n_mels]: each band's mean over time,
    then each band's standard deviation over time (population std, ddof=0), in float64."""
    w = np.asarray(windows, dtype=np.float64)
    if w.ndim != 3:
        raise ValueError(f"expected windows [n, n_mels, n_frames], got shape {w.shape}")
    return np.concatenate([w.mean(axis=2), w.std(axis=2)], axis=1)


def cached_band_stats(cache: FeatureCache, rows: np.ndarray) -> np.ndarray:
    """band_stats of the cache's windows at `rows`, a chunk at a time: a whole competition's
    windows in float64 would need ~90 GB."""
    X = np.empty((len(rows), 2 * cache.features.n_mels), dtype=np.float64)
    for start in range(0, len(rows), STATS_CHUNK):
        chunk = rows[start:start + STATS_CHUNK]
        X[start:start + len(chunk)] = band_stats(cache.windows[chunk])
    return X


@dataclass
class WindowTable:
    """One row per window: its band statistics, its primary label and its recording."""

    X: np.ndarray  # [n, 2 * n_mels] float64
    label_idx: np.ndarray  # [n] int, index into classes
    recording: np.ndarray  # [n] filename (object)
    classes: list[str]
    missing: list[str]  # recordings of the metadata that the cache does not hold


def window_table(cache: FeatureCache, meta: pd.DataFrame, classes: list[str], windows_per_recording: int) -> WindowTable:
    col = {c: i for i, c in enumerate(classes)}
    rows: list[int] = []
    labels: list[int] = []
    recs: list[str] = []
    missing: list[str] = []
    for rec in meta.itertuples():
        if rec.filename not in cache.entries.index:
            missing.append(rec.filename)
            continue
        r = list(cache.rows_of(rec.filename))[:windows_per_recording]
        rows += r
        labels += [col[rec.primary_label]] * len(r)
        recs += [rec.filename] * len(r)
    X = cached_band_stats(cache, np.asarray(rows, dtype=np.int64))
    return WindowTable(X, np.asarray(labels, dtype=np.int64), np.asarray(recs, dtype=object), classes, missing)


def window_folds(table: WindowTable, meta: pd.DataFrame, cfg: FloorConfig) -> np.ndarray:
    """[n] fold of every window: its recording's fold in data.split.recording_folds over the whole
    metadata (the folds the kit's `--fold` cross-validation uses when nothing is held out)."""
    fold_of = recording_folds(meta, cfg.folds, cfg.seed)
    return np.asarray([fold_of[f] for f in table.recording], dtype=np.int64)


# ------------------------------------------------------------------------------ one fold
def fit_predict(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, n_classes: int,
                cfg: FloorConfig) -> tuple[np.ndarray, dict]:
    """Standardise with the training rows' statistics, fit the logistic regression, and return
    probabilities [n_test, n_classes] over ALL classes (0 for a class the training side lacks)
    with facts about the fit (iterations, convergence)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    seen = np.unique(y_train)
    if len(seen) < 2:
        raise FloorError(f"a training side holds a single class ({seen.tolist()}): logistic regression needs two")
    scaler = StandardScaler().fit(X_train)
    model = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, solver="lbfgs")  # multinomial for >2 classes
    probs = np.zeros((len(X_test), n_classes), dtype=np.float64)
    # A few hundred rows x 2*n_mels: BLAS threads only contend (4x slower on a busy 2-core machine);
    # a competition's ~100k rows are another matter (~1 s per lbfgs iteration on one thread).
    threads = 1 if len(X_train) < FEW_ROWS else None  # None: as many as BLAS likes
    with threadpool_limits(threads), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(scaler.transform(X_train), y_train)
        probs[:, model.classes_] = model.predict_proba(scaler.transform(X_test))
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return probs, {"iterations": int(np.max(model.n_iter_)), "converged": converged,
                   "train_classes": int(len(model.classes_))}


def fold_auc(label_idx: np.ndarray, probs: np.ndarray) -> float:
    """Kaggle's macro ROC-AUC on one-hot primary labels; NaN where it is undefined (a fold whose
    windows are all of one class has no negative for that class)."""
    try:
        return window_roc_auc(label_idx, probs)
    except ValueError:
        return float("nan")


# ------------------------------------------------------------------------------ the run
def _metadata_and_cache(data_dir: Path, cache_dir: Path | None,
                        progress: bool) -> tuple[pd.DataFrame, list[str], Path]:
    """The metadata, its classes and the feature cache's folder (built when not given)."""
    meta = read_metadata(data_dir)
    require_two_classes(data_dir, meta)  # before preprocessing: one class has no floor to beat
    classes = class_list(meta)
    if cache_dir is None:
        cache_dir = ensure_cache(PreprocessConfig(data_dir=data_dir, features=FeatureConfig(), workers=0,
                                                  progress=progress))
    return meta, classes, cache_dir


def _windows_and_folds(cache: FeatureCache, meta: pd.DataFrame, classes: list[str], data_dir: Path,
                       cfg: FloorConfig, say: Callable[..., None]) -> tuple[WindowTable, np.ndarray, int]:
    """The window table, every window's fold and the number of usable recordings; FloorError when there
    are fewer of them than folds."""
    t_feat = time.perf_counter()
    table = window_table(cache, meta, classes, cfg.windows_per_recording)
    n_recordings = len(meta) - len(table.missing)
    if table.missing:
        say(f"floor: {len(table.missing)} recording(s) of the metadata are not in the cache (skipped or missing "
            f"at preprocessing), left out, e.g. {table.missing[:3]}")
    if n_recordings < cfg.folds:
        raise FloorError(f"{n_recordings} usable recording(s) in {data_dir}, fewer than the {cfg.folds} folds: "
                         "every fold needs at least one recording to test on (use --folds smaller)")
    fold = window_folds(table, meta, cfg)
    say(f"floor: {n_recordings} recordings, {len(table.X)} windows (first {cfg.windows_per_recording} of each), "
        f"{len(classes)} classes, {table.X.shape[1]} features per window "
        f"({time.perf_counter() - t_feat:.1f} s to read and summarise)")
    return table, fold, n_recordings


def _run_fold(table: WindowTable, test: np.ndarray, k: int, cfg: FloorConfig) -> tuple[dict, np.ndarray]:
    """Fit on the windows outside `test`, score the ones inside: the fold's row and its probabilities."""
    t0 = time.perf_counter()
    probs, fit = fit_predict(table.X[~test], table.label_idx[~test], table.X[test], len(table.classes), cfg)
    y = table.label_idx[test]
    row = {"fold": k, "train_windows": int((~test).sum()), "test_windows": int(test.sum()),
           "test_recordings": int(len(set(table.recording[test]))),
           "test_classes": int(len(np.unique(y))),
           "unseen_test_windows": int(np.sum(probs[np.arange(len(y)), y] == 0)),
           "accuracy": accuracy(y, probs), "roc_auc": fold_auc(y, probs),
           "seconds": time.perf_counter() - t0, **fit}
    return row, probs


def _cross_validate(table: WindowTable, fold: np.ndarray, cfg: FloorConfig,
                    say: Callable[..., None]) -> tuple[list[dict], np.ndarray]:
    """Every fold's row, and the out-of-fold probabilities of every window."""
    oof = np.zeros((len(table.X), len(table.classes)), dtype=np.float64)
    rows = []
    for k in range(cfg.folds):
        test = fold == k
        if not test.any():
            raise FloorError(f"fold {k} has no window to test on (its recordings are missing from the cache)")
        row, probs = _run_fold(table, test, k, cfg)
        oof[test] = probs
        rows.append(row)
        note = "" if row["converged"] else f"  NOT converged in {cfg.max_iter} iterations (raise --max-iter)"
        say(f"floor: fold {k + 1}/{cfg.folds}: {row['test_recordings']} recordings / {row['test_windows']} windows "
            f"held out, acc {row['accuracy']:.3f}, auc {row['roc_auc']:.3f}, {row['iterations']} iterations, "
            f"{row['seconds']:.1f} s{note}")
    return rows, oof


def _result(data_dir: Path, cache_dir: Path, cfg: FloorConfig, table: WindowTable, n_recordings: int,
            rows: list[dict], oof: np.ndarray, t_start: float) -> dict:
    acc = np.array([r["accuracy"] for r in rows])
    auc = np.array([r["roc_auc"] for r in rows])
    return {
        "dataset": Workspace.of(data_dir).name,
        "data_dir": str(data_dir.resolve()),
        "cache_dir": str(cache_dir),
        "config": asdict(cfg),
        "recordings": n_recordings,
        "windows": int(len(table.X)),
        "classes": len(table.classes),
        "features_per_window": int(table.X.shape[1]),
        "folds": rows,
        "accuracy": {"mean": float(acc.mean()), "std": _std(acc)},
        "roc_auc": {"mean": float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan"),
                    "std": _std(auc[np.isfinite(auc)]), "undefined_folds": int((~np.isfinite(auc)).sum())},
        # Every out-of-fold window scored at once. Not the headline: five models' probabilities are not on
        # one scale, and a class unseen in training scores 0, below every negative of the other folds.
        "pooled": {"accuracy": accuracy(table.label_idx, oof), "roc_auc": fold_auc(table.label_idx, oof)},
        "all_converged": all(r["converged"] for r in rows),
        "reference": REFERENCE.get(Workspace.of(data_dir).name),
        "seconds": time.perf_counter() - t_start,
    }


def run_floor(data_dir: Path, cfg: FloorConfig, cache_dir: Path | None = None, progress: bool = True) -> dict:
    """The floor on data_dir; returns the result dict that main() writes as JSON."""
    say = print if progress else (lambda *a, **k: None)
    t_start = time.perf_counter()
    data_dir = Path(data_dir)
    meta, classes, cache_dir = _metadata_and_cache(data_dir, cache_dir, progress)
    table, fold, n_recordings = _windows_and_folds(FeatureCache.open(cache_dir), meta, classes, data_dir, cfg, say)
    rows, oof = _cross_validate(table, fold, cfg, say)
    return _result(data_dir, cache_dir, cfg, table, n_recordings, rows, oof, t_start)


def _std(x: np.ndarray) -> float:
    """Standard deviation over folds, ddof=0 as `make cv` prints it (so the floor's ± and the
    models' ± in one table are the same statistic); NaN for no folds."""
    return float(np.std(x)) if len(x) else float("nan")


def _finite(obj):
    """NaN (an undefined fold AUC) -> None, so the JSON stays strict."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def format_table(result: dict) -> str:
    lines = [f"\nfloor on {result['dataset']}: {result['recordings']} recordings, {result['windows']} windows, "
             f"{result['classes']} classes, {result['config']['folds']}-fold CV grouped by recording",
             f"{'fold':>6s} {'train win':>9s} {'test win':>8s} {'test rec':>8s} {'accuracy':>8s} {'ROC-AUC':>8s}"]
    for r in result["folds"]:
        lines.append(f"{r['fold'] + 1:>6d} {r['train_windows']:>9d} {r['test_windows']:>8d} {r['test_recordings']:>8d} "
                     f"{r['accuracy']:>8.3f} {r['roc_auc']:>8.3f}")
    a, u = result["accuracy"], result["roc_auc"]
    lines.append(f"{'mean':>6s} {'':>9s} {'':>8s} {'':>8s} {a['mean']:>8.3f} {u['mean']:>8.3f}")
    lines.append(f"{'± std':>6s} {'':>9s} {'':>8s} {'':>8s} {a['std']:>8.3f} {u['std']:>8.3f}")
    ref = result.get("reference")
    if ref:
        lines.append(f"{'ref':>6s} {'':>9s} {'':>8s} {'':>8s} {ref['accuracy']:>8.3f} {ref['roc_auc']:>8.3f}"
                     f"   (reference figure; ours - ref: accuracy {a['mean'] - ref['accuracy']:+.3f}, "
                     f"ROC-AUC {u['mean'] - ref['roc_auc']:+.3f})")
    if u["undefined_folds"]:
        lines.append(f"note: ROC-AUC undefined in {u['undefined_folds']} fold(s) (one class only); left out of the mean")
    if not result["all_converged"]:
        lines.append("warning: some folds did not converge; raise --max-iter")
    lines.append(f"wall time {result['seconds']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="dataset folder in the Kaggle layout (its cache is built if missing)")
    d = FloorConfig()
    p.add_argument("--folds", type=int, default=d.folds, help="cross-validation folds, grouped by recording")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the folds (data.split.recording_folds)")
    p.add_argument("--windows-per-recording", type=int, default=d.windows_per_recording,
                   help="the first N 5-s windows of each recording")
    p.add_argument("--C", "-C", type=float, default=d.C, dest="C", help="inverse L2 strength of the logistic regression")
    p.add_argument("--max-iter", type=int, default=d.max_iter, help="lbfgs iterations per fold")
    p.add_argument("--out", type=Path, default=None, help="JSON result (default bench/out/floor-<dataset>.json)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        cfg = FloorConfig(folds=args.folds, seed=args.seed, windows_per_recording=args.windows_per_recording,
                          C=args.C, max_iter=args.max_iter)
    except ValueError as e:
        p.error(str(e))
    print("config:", json.dumps(asdict(cfg)))
    try:
        result = run_floor(Path(args.data), cfg, progress=not args.no_progress)
    except (FloorError, LayoutError, PreprocessError) as e:  # refusals say what to do; no stack trace
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(result))
    out = args.out or output_root() / "bench" / "out" / f"floor-{result['dataset']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite(result), indent=2) + "\n")
    print(f"result: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
