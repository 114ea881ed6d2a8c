"""Kaggle-side inference, imported by the notebook from the packaged dataset.

Everything is rebuilt from the ONNX files' metadata (classes, feature parameters, activation)
and the features come from data.features, the same file training used. Needs only numpy,
pandas, onnxruntime and the audio libraries of data.features; no torch.

    worker processes:  decode -> features [n_windows, n_mels, n_frames]      (one soundscape each,
                                                                               a few ahead)
    this process:      onnxruntime (one model or an ensemble) -> probabilities [n_windows, classes]
                       -> post-processing -> rows of submission.csv, streamed to disk

Decoding and features overlap with the model. Alternatively (RunSettings.soundscape_workers,
SoundscapePool) each worker process runs the whole chain on whole soundscapes with its own
one-thread copy of the model, and this process only writes rows. A guard watches the pace against the deadline
and steps down to cheaper paths (fewer models, no denoise, finally empty rows) rather than let
Kaggle kill the run. A file that cannot be read still gets its rows.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from data.features import (
    FEATURES_VERSION, AudioError, FeatureConfig, at_rate, audio_seconds, audio_to_features, decode, is_audio_file,
    n_windows, row_end_seconds,
)

MANIFEST_NAME = "birdkit.json"
# Kaggle's hidden test soundscapes share one length: 4 minutes in BirdCLEF 2024, 1 minute in 2025.
EXPECTED_SOUNDSCAPE_S = 240.0  # a file whose header is unreadable, with no readable file beside it
LENGTH_SAMPLE_FILES = 25  # readable headers beside it that give the usual length instead
# Kaggle stops CPU notebooks at 120 minutes (BirdCLEF 2023-2024); the guard finishes 10 minutes
# before. `make package` writes the competition's own deadline into the manifest (budget.py).
KAGGLE_LIMIT_MIN = 120.0
DEADLINE_MARGIN_MIN = 10.0
DEFAULT_DEADLINE_MIN = KAGGLE_LIMIT_MIN - DEADLINE_MARGIN_MIN
POOL_MAX_MS_PER_WINDOW = 50.0  # auto: whole-soundscape workers only for models at most this slow (all cores;
# resnet18 ~21 ms on 2 cores, inception_v3 ~170 ms)
# Windows per onnxruntime call. onnxruntime keeps each model's largest activations in its arena,
# so memory grows with the batch (efficientnet_b0: 1.4 GB at 48 windows, 0.4 GB at 16; the
# three-model ensemble 0.81 GB at 16, 0.51 GB at 8 per process) while the speed did not change
# measurably between 8 and 48 (README, the notebook against Kaggle's limits).
BATCH_WINDOWS = 8


# ------------------------------------------------------------------------------------ models
@dataclass
class KitModel:
    """An exported model and everything its metadata says about it."""

    session: object  # onnxruntime.InferenceSession
    classes: list[str]
    features: FeatureConfig
    meta: dict[str, str]
    input_name: str
    name: str = "model"
    batch_windows: int = BATCH_WINDOWS
    ms_per_window: float = 0.0  # measured at load time, this machine, these threads
    path: Path | None = None  # where it was loaded from (soundscape workers load their own copy)

    @classmethod
    def load(cls, onnx_path: Path, threads: int | None = None, measure: bool = True) -> "KitModel":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle model threads must not spin: the feature workers need those cores between batches.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        meta = dict(session.get_modelmeta().custom_metadata_map)
        check_metadata(meta, onnx_path)
        model = cls(session, json.loads(meta["classes"]), FeatureConfig.from_dict(json.loads(meta["features"])),
                    meta, session.get_inputs()[0].name, name=meta.get("model_name", onnx_path.stem),
                    path=Path(onnx_path))
        if measure:
            model.ms_per_window = model.measure_ms_per_window()
        return model

    def predict(self, feats: np.ndarray) -> np.ndarray:
        """[n, n_mels, n_frames] -> [n, classes] probabilities."""
        out = [self.session.run(None, {self.input_name: feats[i : i + self.batch_windows]})[0]
               for i in range(0, len(feats), self.batch_windows)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def measure_ms_per_window(self, n: int = 8) -> float:
        """The guard's cost estimate: one warm-up, then one timed batch of silence."""
        feats = np.zeros((n, *self.features.shape), np.float32)
        self.predict(feats[:1])
        t0 = time.perf_counter()
        self.predict(feats)
        return (time.perf_counter() - t0) * 1000 / n


def check_metadata(meta: dict[str, str], onnx_path: Path) -> None:
    """Refuse a model this code cannot feed correctly, naming both versions."""
    for key in ("classes", "features", "features_version"):
        if key not in meta:
            raise ValueError(f"{onnx_path} has no '{key}' metadata: it was not exported by this kit (make export)")
    if meta["features_version"] != str(FEATURES_VERSION):
        raise ValueError(f"{onnx_path} was trained with features v{meta['features_version']}, this code computes "
                         f"features v{FEATURES_VERSION}: re-train and re-export, or package the matching code")


@dataclass
class Ensemble:
    """Models sharing classes and features; their probabilities combined by mean or min."""

    models: list[KitModel]
    combine: str = "mean"

    def __post_init__(self):
        if not self.models:
            raise ValueError("an ensemble needs at least one model")
        first = self.models[0]
        for m in self.models[1:]:
            if m.classes != first.classes or m.features != first.features:
                raise ValueError(f"models {first.name} and {m.name} differ in classes or features; "
                                 "an ensemble needs the same of both")
        if self.combine not in ("mean", "min"):
            raise ValueError(f"combine must be 'mean' or 'min', got {self.combine!r}")

    @property
    def classes(self) -> list[str]:
        return self.models[0].classes

    @property
    def features(self) -> FeatureConfig:
        return self.models[0].features

    @property
    def ms_per_window(self) -> float:
        return sum(m.ms_per_window for m in self.models)

    @property
    def slowest_ms_per_window(self) -> float:
        """The costliest member's: what decides whether a model copy per core pays (RunSettings)."""
        return max(m.ms_per_window for m in self.models)

    def predict(self, feats: np.ndarray) -> np.ndarray:
        return combine_probs(self.member_probs(feats), self.combine)

    def member_probs(self, feats: np.ndarray) -> np.ndarray:
        """[n, n_mels, n_frames] -> [models, n, classes]: each member's own probabilities."""
        return np.stack([m.predict(feats) for m in self.models])


def combine_probs(stack: np.ndarray, how: str) -> np.ndarray:
    """[models, n, classes] -> [n, classes] by the ensemble's rule (mean or min)."""
    return stack.mean(axis=0) if how == "mean" else stack.min(axis=0)


# ------------------------------------------------------------------------------------ features
@dataclass
class SoundscapeFeatures:
    """One soundscape's features (None when unreadable) and what it cost."""

    path: Path
    feats: np.ndarray | None  # [n_windows, n_mels, n_frames]
    n_windows: int
    decode_s: float = 0.0
    features_s: float = 0.0
    problem: str = ""


@functools.lru_cache(maxsize=8)
def usual_soundscape_s(folder: str) -> float:
    """The median length of the first readable soundscapes in folder (Kaggle's all share one,
    whatever the year), else EXPECTED_SOUNDSCAPE_S. Cached: read once per process and folder."""
    lengths = []
    for p in list_soundscapes(Path(folder)):
        seconds = audio_seconds(p)
        if seconds:
            lengths.append(seconds)
        if len(lengths) >= LENGTH_SAMPLE_FILES:
            break
    return float(np.median(lengths)) if lengths else EXPECTED_SOUNDSCAPE_S


def expected_windows(path: Path, cfg: FeatureConfig) -> int:
    """Rows a soundscape gets: from its length when the header is readable, else from the usual
    length of the soundscapes beside it (a corrupt 1-minute file of 2025 still owes 12 rows)."""
    seconds = audio_seconds(path)
    if seconds is None:
        seconds = usual_soundscape_s(str(path.parent))
    return n_windows(int(round(seconds * cfg.sample_rate_hz)), cfg)


def soundscape_features(path: Path, cfg: FeatureConfig, skip: bool = False) -> SoundscapeFeatures:
    """Decode + features, never raising: a bad file comes back with feats None and a reason;
    NaN/inf samples are set to 0 (and reported). skip: only count the rows (the guard's last
    resort)."""
    if skip:
        return SoundscapeFeatures(path, None, expected_windows(path, cfg))
    t0 = time.perf_counter()
    try:
        y, sr = decode(path)
    except Exception as e:  # corrupt, empty, unknown format: the rows are still owed
        reason = str(e) if isinstance(e, AudioError) else f"{type(e).__name__}: {e}"
        return SoundscapeFeatures(path, None, expected_windows(path, cfg), problem=reason)
    problem = ""
    finite = np.isfinite(y)
    if not finite.all():  # counted at the file's own rate: resampling would hide them
        problem = f"{path.name}: {int((~finite).sum())} NaN/inf samples set to 0"
        y = np.where(finite, y, 0.0)
    y = at_rate(y, sr, cfg.sample_rate_hz)
    t1 = time.perf_counter()
    feats = audio_to_features(y, cfg)
    return SoundscapeFeatures(path, feats, len(feats), t1 - t0, time.perf_counter() - t1, problem)


def _limit_threads() -> None:
    """Feature workers use one BLAS/FFT thread each: the pool already uses the cores."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # not on every image; numpy then picks its own default
        pass


class FeatureStream:
    """Features of the soundscapes, in order, computed `workers` at a time ahead of the model.

    Only `ahead` soundscapes are ever in flight, so memory does not grow with the test set.
    The config of each soundscape is read when it is submitted, so a guard's switch (say, no
    denoise) applies to the soundscapes submitted after it."""

    def __init__(self, paths: list[Path], job_for_next, workers: int):
        """job_for_next() -> (FeatureConfig, skip) for the next soundscape submitted."""
        self.paths, self.job_for_next, self.workers = paths, job_for_next, workers
        self.pool = None
        if workers > 0 and len(paths) > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # fork: the workers inherit the notebook's sys.path (the kit's code folder).
            self.pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_limit_threads)

    def __iter__(self):
        if self.pool is None:
            for path in self.paths:
                yield soundscape_features(path, *self.job_for_next())
            return
        pending: deque = deque()
        todo = iter(self.paths)
        try:
            for path in todo:
                pending.append(self.pool.submit(soundscape_features, path, *self.job_for_next()))
                if len(pending) >= 2 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            self.pool.shutdown(cancel_futures=True)


_WORKER_MODELS: list = []  # a soundscape worker's own sessions (one thread each)


def _init_soundscape_worker(onnx_paths: list[str]) -> None:
    _limit_threads()
    _WORKER_MODELS[:] = [KitModel.load(Path(p), threads=1, measure=False) for p in onnx_paths]


def _score_soundscape(path: Path, cfg: FeatureConfig, model_idx: list[int] | None, combine: str, n_classes: int):
    """In a worker: decode -> features -> model(s) for one soundscape. Returns the features'
    record (without the features: only probabilities travel back), each model's probabilities
    [models, n_windows, classes] and model seconds."""
    sf_ = soundscape_features(path, cfg, skip=model_idx is None)
    if sf_.feats is None or model_idx is None:  # no features or no model: zeros, one slice per model of the level
        zeros = np.zeros((len(model_idx or [0]), sf_.n_windows, n_classes), np.float32)
        return replace(sf_, feats=None), zeros, 0.0, 0
    t0 = time.perf_counter()
    stack = Ensemble([_WORKER_MODELS[i] for i in model_idx], combine).member_probs(sf_.feats)
    return replace(sf_, feats=None), stack, time.perf_counter() - t0, len(sf_.feats)


class SoundscapePool:
    """Whole soundscapes in `workers` processes, each with its own one-thread copy of the models:
    decode, features and model of one soundscape never wait on each other, and no core idles
    between a model's batches (on CPU, independent soundscapes scale better than intra-op
    threads; measured in README). Results come back in order, at most 2 x workers in flight, so
    memory stays flat. The guard's level is read when a soundscape is submitted."""

    def __init__(self, paths: list[Path], ensemble: Ensemble, guard: "Guard", workers: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        self.paths, self.ensemble, self.guard, self.workers = paths, ensemble, guard, workers
        onnx_paths = [str(m.path) for m in ensemble.models]
        # fork: the workers inherit the notebook's sys.path (the kit's code folder).
        self.pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"),
                                        initializer=_init_soundscape_worker, initargs=(onnx_paths,))

    def _submit(self, path: Path):
        level = self.guard.current
        idx = None if level.predictor is None else [self.ensemble.models.index(m) for m in level.predictor.models]
        combine = level.predictor.combine if level.predictor is not None else "mean"
        future = self.pool.submit(_score_soundscape, path, level.features or self.ensemble.features, idx, combine,
                                  len(self.ensemble.classes))
        return future, level

    def results(self, timing: "Timing"):
        """(path, level, each model's probabilities [models, n_windows, classes]) per soundscape, in order."""
        pending: deque = deque()
        try:
            for path in self.paths:
                pending.append(self._submit(path))
                if len(pending) >= 2 * self.workers:
                    yield self._take(*pending.popleft(), timing)
            while pending:
                yield self._take(*pending.popleft(), timing)
        finally:
            self.pool.shutdown(cancel_futures=True)

    @staticmethod
    def _take(future, level: "Level", timing: "Timing"):
        sf_, stack, model_s, windows = future.result()
        _account(sf_, timing)
        timing.model_s += model_s
        timing.windows += windows
        return sf_.path, level, stack


# ------------------------------------------------------------------------------------ guard
@dataclass
class Level:
    """One way to run: which models, which features. Cheaper levels come later."""

    name: str
    predictor: Ensemble | None  # None: no model, empty rows
    features: FeatureConfig | None

    def combine(self, stack: np.ndarray) -> np.ndarray:
        """[models of this level, n, classes] -> [n, classes]; a level with no model gives its zeros."""
        return combine_probs(stack, self.predictor.combine if self.predictor else "mean")

    def member(self, model: KitModel, stack: np.ndarray) -> np.ndarray:
        """One model's probabilities [n, classes] at this level; a model this level left out
        gets what the submission got (the level's combined probabilities)."""
        models = self.predictor.models if self.predictor else []
        return stack[models.index(model)] if model in models else self.combine(stack)


def levels_for(ensemble: Ensemble) -> list[Level]:
    """full ensemble -> fastest single model -> same without denoise -> empty rows."""
    levels = [Level("full", ensemble, ensemble.features)]
    fastest = min(ensemble.models, key=lambda m: m.ms_per_window)
    if len(ensemble.models) > 1:
        levels.append(Level(f"fastest model only ({fastest.name})", Ensemble([fastest]), fastest.features))
    if fastest.features.denoise != "none":
        levels.append(Level(f"{fastest.name} without denoise", Ensemble([fastest]),
                            replace(fastest.features, denoise="none")))
    levels.append(Level("no model: empty rows", None, None))
    return levels


@dataclass
class Guard:
    """Keeps the run inside its deadline by stepping down levels when the pace says it must.

    The pace is measured between finished soundscapes over the last `window` of them, never from
    the start: the first soundscape also pays the workers' start-up and first model runs, and
    worker processes finish in waves (window: a whole number of waves). Until a window has
    finished at the current level the guard steps down only when the deadline has already
    passed its margin."""

    deadline_s: float
    n_total: int
    levels: list[Level]
    margin: float = 0.95  # aim to finish by 95% of the deadline
    window: int = 4  # soundscapes the pace is averaged over (write_submission: 2 x workers in a pool)
    level: int = 0
    t0: float = field(default_factory=time.perf_counter)
    switches: list[str] = field(default_factory=list)
    finished_at: deque = field(init=False)  # perf_counter() of the last window + 1 soundscapes done at this level

    def __post_init__(self):
        self.finished_at = deque(maxlen=self.window + 1)

    @property
    def current(self) -> Level:
        return self.levels[self.level]

    def job(self, default: FeatureConfig) -> tuple[FeatureConfig, bool]:
        """Features to compute for the next soundscape at this level (skip: no model to feed)."""
        level = self.current
        return (level.features or default, level.predictor is None)

    def pace_s(self) -> float | None:
        """Seconds per soundscape over the last window at this level; None until a window has finished."""
        if len(self.finished_at) <= self.window:
            return None
        return (self.finished_at[-1] - self.finished_at[0]) / self.window

    def record(self, done: int) -> None:
        """After each soundscape: step down when the projected end passes the deadline."""
        now = time.perf_counter()
        self.finished_at.append(now)
        elapsed, remaining, pace = now - self.t0, self.n_total - done, self.pace_s()
        projected = elapsed + remaining * pace if pace is not None else elapsed
        if remaining and projected > self.margin * self.deadline_s and self.level < len(self.levels) - 1:
            self.level += 1
            self.finished_at.clear()  # the new level's pace is its own
            note = (f"after {done} soundscapes, {elapsed:.0f} s: projected {projected / 60:.1f} min > deadline "
                    f"{self.deadline_s / 60:.1f} min -> {self.current.name}")
            self.switches.append(note)
            print(f"guard: {note}", flush=True)


# ------------------------------------------------------------------------------------ output
@dataclass(frozen=True)
class PostProcess:
    """Per-soundscape post-processing of window probabilities (set by `make package`).

    smooth_kernel: weights over neighbouring windows (birds call in bouts);
    mean_blend: share of each class's soundscape mean mixed into every window."""

    smooth_kernel: tuple[float, ...] = (1.0,)
    mean_blend: float = 0.0

    def __call__(self, probs: np.ndarray) -> np.ndarray:  # [n, C] -> [n, C]
        if len(probs) == 0:
            return probs
        k = np.asarray(self.smooth_kernel, np.float64)
        if len(k) > 1:
            pad = len(k) // 2
            padded = np.pad(probs, ((pad, len(k) - 1 - pad), (0, 0)), mode="edge")
            probs = sum(w * padded[i : i + len(probs)] for i, w in enumerate(k / k.sum()))
        if self.mean_blend:
            probs = (1 - self.mean_blend) * probs + self.mean_blend * probs.mean(axis=0, keepdims=True)
        return probs.astype(np.float32)


class CsvStream:
    """submission.csv written one soundscape at a time, renamed into place when complete."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp")
        self.f = open(self.tmp, "w", newline="")
        pd.DataFrame(columns=["row_id", *columns]).to_csv(self.f, index=False)

    def write(self, rows: pd.DataFrame) -> None:
        rows.to_csv(self.f, index=False, header=False, float_format="%.6g")

    def close(self) -> None:
        self.f.close()
        os.replace(self.tmp, self.path)


def submission_rows(stem: str, probs: np.ndarray, classes: list[str], columns: list[str],
                    cfg: FeatureConfig) -> pd.DataFrame:
    """Rows `<stem>_<end second>` with one column per sample_submission class, in its order.
    A class the model does not know gets 0."""
    col_of = {c: j for j, c in enumerate(classes)}
    out = np.zeros((len(probs), len(columns)), np.float32)
    for k, c in enumerate(columns):
        if c in col_of:
            out[:, k] = probs[:, col_of[c]]
    df = pd.DataFrame(out, columns=columns)
    df.insert(0, "row_id", [f"{stem}_{end}" for end in row_end_seconds(len(probs), cfg)])
    return df


def list_soundscapes(test_dir: Path) -> list[Path]:
    """The audio files of test_dir (not its subfolders), sorted: data.features.is_audio_file decides."""
    if not test_dir.is_dir():
        return []
    return sorted(p for p in test_dir.iterdir() if is_audio_file(p))


@dataclass
class Timing:
    """Seconds spent per stage over the whole run, and what went wrong where."""

    decode_s: float = 0.0
    features_s: float = 0.0
    model_s: float = 0.0
    soundscapes: int = 0
    windows: int = 0
    failures: list[str] = field(default_factory=list)
    levels: dict[str, int] = field(default_factory=dict)  # soundscapes per guard level
    switches: list[str] = field(default_factory=list)
    done_s: list[float] = field(default_factory=list)  # seconds from the start when each soundscape's rows were written

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ------------------------------------------------------------------------------------ the run
@dataclass
class RunSettings:
    """How the notebook runs; from the manifest, overridable by environment variables."""

    deadline_s: float = DEFAULT_DEADLINE_MIN * 60
    feature_workers: int = -1  # -1: half the cores
    model_threads: int = 0  # 0: all cores
    # Whole soundscapes in this many processes (SoundscapePool); 0: feature workers beside the model
    # in this process; -1 (auto): one per core when every model is at most POOL_MAX_MS_PER_WINDOW, else 0.
    # The pool is faster for small models (simple_cnn 1.29x, resnet18 1.19x over serial on 2 cores),
    # and for an ensemble of them (small convolutions scale worse over intra-op threads than over
    # processes), but holds a copy of the models per core: for inception_v3 it gained nothing and
    # took its peak memory from 2.6 to 4.1 GB (bench-infer, README).
    soundscape_workers: int = -1

    def parallel_soundscapes(self, slowest_ms_per_window: float = 0.0) -> int:
        """Processes of the SoundscapePool when the costliest model takes this long per window;
        0: features in workers, the model(s) here."""
        if self.soundscape_workers >= 0:
            return self.soundscape_workers
        return (os.cpu_count() or 1) if slowest_ms_per_window <= POOL_MAX_MS_PER_WINDOW else 0

    def resolved(self) -> tuple[int, int]:
        """(feature worker processes, model threads). The model keeps every core: its threads
        do not spin, so the workers fill the gaps between its batches (measured in README:
        on 2 cores, resnet18 ran 1.6x slower with one thread beside one worker than with two)."""
        cores = os.cpu_count() or 1
        workers = max(0, cores // 2) if self.feature_workers < 0 else self.feature_workers
        return workers, self.model_threads or cores


def write_submission(ensemble: Ensemble, test_dir: Path, sample_submission: Path, out_csv: Path,
                     post: PostProcess = PostProcess(), raw_csv: Path | None = None,
                     settings: RunSettings = RunSettings()) -> Timing:
    """Stream submission.csv to disk, one soundscape at a time (bounded memory). An empty or
    missing test folder still gives a valid file: the header. raw_csv, when given, receives the
    probabilities before post-processing (to measure what it gains) and, for an ensemble, each
    member's own in raw_member_csv(raw_csv, k) (to measure what ensembling gains)."""
    columns = [c for c in pd.read_csv(sample_submission, nrows=0).columns if c != "row_id"]
    paths = list_soundscapes(test_dir)
    timing = Timing()
    n_pool = settings.parallel_soundscapes(ensemble.slowest_ms_per_window) if len(paths) > 1 else 0
    # A pool finishes soundscapes in waves of n_pool: the guard's pace spans two whole waves.
    guard = Guard(settings.deadline_s, len(paths), levels_for(ensemble), window=2 * n_pool if n_pool else 4)
    scored = _scored(paths, ensemble, guard, timing, settings, n_pool)

    def rows(stem: str, probs: np.ndarray) -> pd.DataFrame:
        return submission_rows(stem, probs, ensemble.classes, columns, ensemble.features)

    out = CsvStream(out_csv, columns)
    raw = CsvStream(raw_csv, columns) if raw_csv else None
    members = ([CsvStream(raw_member_csv(raw_csv, k), columns) for k in range(len(ensemble.models))]
               if raw_csv and len(ensemble.models) > 1 else [])
    for i, (path, level, stack) in enumerate(scored, 1):
        probs = level.combine(stack)
        out.write(rows(path.stem, post(probs)))
        if raw:
            raw.write(rows(path.stem, probs))
        for model, stream in zip(ensemble.models, members):
            stream.write(rows(path.stem, level.member(model, stack)))
        timing.soundscapes += 1
        timing.done_s.append(round(time.perf_counter() - guard.t0, 3))
        timing.levels[level.name] = timing.levels.get(level.name, 0) + 1
        guard.record(i)
        if i % 50 == 0 or i == len(paths):
            print(f"{i}/{len(paths)} soundscapes", flush=True)
    for stream in [out, *([raw] if raw else []), *members]:
        stream.close()
    timing.switches = guard.switches
    return timing


def raw_member_csv(raw_csv: Path, k: int) -> Path:
    """Where ensemble member k's raw probabilities go beside raw_csv (k = the manifest's model_files index)."""
    return raw_csv.with_name(f"{raw_csv.stem}_model-{k + 1}{raw_csv.suffix}")


def _scored(paths: list[Path], ensemble: Ensemble, guard: Guard, timing: Timing, settings: RunSettings,
            n_pool: int):
    """(path, level, each model's probabilities [models, n, classes]) per soundscape, in order:
    from a SoundscapePool of n_pool processes, or (n_pool 0) from feature workers feeding the
    model in this process."""
    if n_pool > 0:
        yield from SoundscapePool(paths, ensemble, guard, n_pool).results(timing)
        return
    workers, _ = settings.resolved()
    for sf_ in FeatureStream(paths, lambda: guard.job(ensemble.features), workers):
        level = guard.current
        yield sf_.path, level, _predict(level, sf_, len(ensemble.classes), timing)


def _account(sf_: SoundscapeFeatures, timing: Timing) -> None:
    """Log a bad file (the run carries on) and add its decode and feature seconds."""
    if sf_.problem:
        timing.failures.append(sf_.problem if sf_.path.name in sf_.problem else f"{sf_.path.name}: {sf_.problem}")
        print(f"warning: {timing.failures[-1]}", file=sys.stderr, flush=True)
    timing.decode_s += sf_.decode_s
    timing.features_s += sf_.features_s


def _predict(level: Level, sf_: SoundscapeFeatures, n_classes: int, timing: Timing) -> np.ndarray:
    """[models, n_windows, classes] for one soundscape at the guard's current level."""
    _account(sf_, timing)
    if sf_.feats is None or level.predictor is None:  # zeros, one slice per model of the level
        return np.zeros((len(level.predictor.models) if level.predictor else 1, sf_.n_windows, n_classes), np.float32)
    t0 = time.perf_counter()
    stack = level.predictor.member_probs(sf_.feats)
    timing.model_s += time.perf_counter() - t0
    timing.windows += len(sf_.feats)
    return stack


def find_competition(input_dir: Path, slug: str) -> Path:
    """The competition's folder (holding sample_submission.csv): /kaggle/input/<slug>, or
    /kaggle/input/competitions/<slug> (Kaggle's newer mount layout), else the one found by search,
    a folder named slug first (several competitions may be attached)."""
    for direct in (input_dir / slug, input_dir / "competitions" / slug):
        if (direct / "sample_submission.csv").exists():
            return direct
    hits = sorted(input_dir.glob("*/sample_submission.csv")) + sorted(input_dir.glob("*/*/sample_submission.csv"))
    if not hits:
        raise FileNotFoundError(f"no sample_submission.csv under {input_dir}: add the competition data to the notebook")
    named = [h.parent for h in hits if h.parent.name == slug]
    if not named and len(hits) > 1:
        print(f"warning: {slug} is not attached; of {len(hits)} competitions found, using {hits[0].parent}",
              file=sys.stderr, flush=True)
    return (named or [hits[0].parent])[0]


def run_settings(manifest: dict) -> RunSettings:
    """The manifest's settings; BIRDKIT_DEADLINE_S / BIRDKIT_FEATURE_WORKERS override them."""
    s = RunSettings(**manifest.get("runtime", {}))
    if os.environ.get("BIRDKIT_DEADLINE_S"):
        s = replace(s, deadline_s=float(os.environ["BIRDKIT_DEADLINE_S"]))
    if os.environ.get("BIRDKIT_FEATURE_WORKERS"):
        s = replace(s, feature_workers=int(os.environ["BIRDKIT_FEATURE_WORKERS"]))
    if os.environ.get("BIRDKIT_SOUNDSCAPE_WORKERS"):
        s = replace(s, soundscape_workers=int(os.environ["BIRDKIT_SOUNDSCAPE_WORKERS"]))
    return s


def load_ensemble(kit_dir: Path, manifest: dict, threads: int) -> Ensemble:
    files = manifest.get("model_files") or [manifest["model_file"]]
    return Ensemble([KitModel.load(kit_dir / f, threads) for f in files], manifest.get("combine", "mean"))


def run_notebook(kit_dir: Path, input_dir: Path, working_dir: Path, started_at: float | None = None) -> Path:
    """What the notebook does: load the model(s), write submission.csv and timing.json.
    started_at: the notebook's time.time() at its first cell; the deadline counts from there
    (installing wheels and loading models are part of Kaggle's limit too)."""
    t0 = time.perf_counter()
    manifest = json.loads((kit_dir / MANIFEST_NAME).read_text())
    competition = find_competition(input_dir, manifest["competition"])
    settings = run_settings(manifest)
    workers, threads = settings.resolved()
    ensemble = load_ensemble(kit_dir, manifest, threads)
    names = ", ".join(f"{m.name} ({m.ms_per_window:.1f} ms/window)" for m in ensemble.models)
    pool = settings.parallel_soundscapes(ensemble.slowest_ms_per_window)
    how = (f"{pool} soundscape workers (decode, features, model; 1 thread each)" if pool
           else f"{workers} feature workers, {threads} model threads")
    print(f"models: {names}; {len(ensemble.classes)} classes; {how}; deadline {settings.deadline_s / 60:.0f} min; "
          f"competition data {competition}")
    if started_at is not None:
        spent_s = max(0.0, time.time() - started_at)
        settings = replace(settings, deadline_s=settings.deadline_s - spent_s)
        print(f"deadline: {settings.deadline_s / 60:.1f} min left for the soundscapes ({spent_s:.0f} s of set-up spent)")
    working_dir.mkdir(parents=True, exist_ok=True)
    out_csv = working_dir / "submission.csv"
    post = PostProcess(**manifest.get("postprocess", {}))
    # `make score` asks for the raw probabilities too, to report what post-processing gains.
    raw_csv = working_dir / "submission_raw.csv" if os.environ.get("BIRDKIT_KEEP_RAW") else None
    timing = write_submission(ensemble, competition / "test_soundscapes", competition / "sample_submission.csv",
                              out_csv, post, raw_csv, settings)
    report = {**timing.to_dict(), "total_s": time.perf_counter() - t0, "feature_workers": workers,
              "model_threads": threads, "soundscape_workers": pool}
    (working_dir / "timing.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out_csv}: {timing.soundscapes} soundscapes, {timing.windows} windows in {report['total_s']:.1f} s")
    return out_csv
