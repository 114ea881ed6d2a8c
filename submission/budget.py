"""What a packaged notebook will cost on Kaggle, measured here.

Kaggle scores the notebook on a CPU machine: 4 cores, about 1,100 hidden 4-minute soundscapes
(52,800 windows), 120 minutes (BirdCLEF 2024; 2023: about 200 ten-minute soundscapes, 24,000
windows, 120 minutes; 2025: about 700 one-minute soundscapes, 8,400 windows, 90 minutes). The
projection assumes Kaggle's cores are as fast as this machine's and that decoding, features and
the model overlap on all cores (the notebook's feature workers run beside the model), so the CPU
seconds per soundscape divide by the cores.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.features import FeatureConfig, audio_to_features, load_audio
from data.layout import TEST_SOUNDSCAPE_S
from submission.infer import DEADLINE_MARGIN_MIN, EXPECTED_SOUNDSCAPE_S, KAGGLE_LIMIT_MIN

KAGGLE_SOUNDSCAPES = 1100
KAGGLE_CORES = 4
WINDOWS_PER_SOUNDSCAPE = 48
MEASURED_SOUNDSCAPE_S = EXPECTED_SOUNDSCAPE_S  # costs are measured on one 4-minute soundscape (48 windows)


@dataclass(frozen=True)
class KaggleTestSet:
    """A competition's hidden test set and the minutes Kaggle gives the notebook for it."""

    soundscapes: int
    soundscape_s: float
    limit_min: float

    @property
    def deadline_min(self) -> float:
        """The notebook's guard finishes this long after its start: the limit less a margin."""
        return self.limit_min - DEADLINE_MARGIN_MIN


DEFAULT_TEST_SET = KaggleTestSet(KAGGLE_SOUNDSCAPES, MEASURED_SOUNDSCAPE_S, KAGGLE_LIMIT_MIN)  # 2024
# From each year's data page ("approximately 200 recordings ... 10 minutes long" in 2023).
KAGGLE_TEST_SETS = {"birdclef-2023": KaggleTestSet(200, TEST_SOUNDSCAPE_S["birdclef-2023"], KAGGLE_LIMIT_MIN),
                    "birdclef-2024": DEFAULT_TEST_SET,
                    "birdclef-2025": KaggleTestSet(700, TEST_SOUNDSCAPE_S["birdclef-2025"], 90.0)}
# A competition the kit does not know (a new year): the most audio and the shortest limit known,
# so neither the ensemble's projection nor the notebook's guard is too hopeful.
UNKNOWN_TEST_SET = KaggleTestSet(round(max(t.soundscapes * t.soundscape_s for t in KAGGLE_TEST_SETS.values())
                                       / MEASURED_SOUNDSCAPE_S), MEASURED_SOUNDSCAPE_S,
                                 min(t.limit_min for t in KAGGLE_TEST_SETS.values()))


def kaggle_test_set(competition: str) -> KaggleTestSet:
    return KAGGLE_TEST_SETS.get(competition, UNKNOWN_TEST_SET)


@dataclass
class Costs:
    """CPU seconds per 4-minute soundscape, one core (one thread) each."""

    decode_s: float
    features_s: float
    model_s: float

    @property
    def total_s(self) -> float:
        return self.decode_s + self.features_s + self.model_s

    def projected_min(self, test_set: KaggleTestSet = DEFAULT_TEST_SET, cores: int = KAGGLE_CORES) -> float:
        """Kaggle minutes for test_set: costs scale with the audio's length."""
        scale = test_set.soundscape_s / MEASURED_SOUNDSCAPE_S
        return test_set.soundscapes * self.total_s * scale / cores / 60


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def model_seconds_per_soundscape(onnx_path: Path, threads: int = 1, repeats: int = 3) -> float:
    """Median onnxruntime time for 48 windows (one soundscape), at the given threads."""
    from submission.infer import KitModel

    model = KitModel.load(onnx_path, threads=threads)
    feats = np.random.default_rng(0).random((WINDOWS_PER_SOUNDSCAPE, *model.features.shape), dtype=np.float32)
    model.predict(feats)  # warm-up
    return _median_time(lambda: model.predict(feats), repeats)


def feature_seconds_per_soundscape(path: Path, cfg: FeatureConfig, repeats: int = 3) -> tuple[float, float]:
    """(decode, features) median seconds for one soundscape file, this process's threads.
    One untimed pass first: the first call pays one-off imports, FFT plans and the mel basis
    (seconds), which a notebook pays once, not per soundscape."""
    y = load_audio(path, cfg.sample_rate_hz)
    audio_to_features(y, cfg)
    decode_s = _median_time(lambda: load_audio(path, cfg.sample_rate_hz), repeats)
    features_s = _median_time(lambda: audio_to_features(y, cfg), repeats)
    return decode_s, features_s


def single_core():
    """A context limiting BLAS/FFT pools to one thread, for per-core costs."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)
