"""int8 models for Kaggle's CPU, shipped only when they score as well as the float ones.

Static quantisation (QDQ, int8 weights per channel, uint8 activations) is calibrated on cached
training windows, then both models run the notebook's own inference code on the labelled
soundscapes of `make score`; the int8 model replaces the float one only when Kaggle's metric drops
by at most MAX_SCORE_DROP.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data.features import FeatureConfig
from data.preprocess import FeatureCache, cache_dir_for
from train.metrics import kaggle_score

MAX_SCORE_DROP = 0.005
CALIBRATION_WINDOWS = 64


def quantize_int8(onnx_path: Path, windows: np.ndarray, out: Path) -> Path:
    """Static int8 (QDQ) quantisation of onnx_path, calibrated on windows [n, n_mels, n_frames]."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Windows(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"features": windows[i : i + 8]} for i in range(0, len(windows), 8)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(onnx_path), str(out), Windows(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return out


def calibration_windows(data_dir: Path, features: FeatureConfig, n: int = CALIBRATION_WINDOWS) -> np.ndarray:
    """n training windows spread evenly over the feature cache."""
    cache = FeatureCache.open(cache_dir_for(data_dir, features))
    rows = np.linspace(0, len(cache.windows) - 1, min(n, len(cache.windows))).astype(int)
    return np.asarray(cache.windows[rows], dtype=np.float32)


def local_score(onnx_path: Path, soundscapes: Path, solution: Path, sample_submission: Path) -> float:
    """Kaggle's metric for one model through the notebook's own inference code."""
    from submission.infer import Ensemble, KitModel, RunSettings, write_submission

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "submission.csv"
        write_submission(Ensemble([KitModel.load(onnx_path)]), soundscapes, sample_submission, out,
                         settings=RunSettings(feature_workers=0, soundscape_workers=0))
        return kaggle_score(pd.read_csv(solution), pd.read_csv(out))


@dataclass
class Int8Verdict:
    ship: Path  # the model to package: the int8 one or the original
    float_score: float
    int8_score: float

    @property
    def drop(self) -> float:
        return self.float_score - self.int8_score


def int8_is_good_enough(float_score: float, int8_score: float) -> bool:
    """The int8 model ships where it loses at most MAX_SCORE_DROP of the float model's local score."""
    return float_score - int8_score <= MAX_SCORE_DROP


def try_int8(onnx_path: Path, data_dir: Path, soundscapes: Path, solution: Path, out_dir: Path) -> Int8Verdict:
    """Quantise, score both, keep the int8 model only when the score drops by <= MAX_SCORE_DROP."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    features = FeatureConfig.from_dict(json.loads(meta["features"]))
    int8_path = quantize_int8(onnx_path, calibration_windows(data_dir, features),
                              out_dir / f"{onnx_path.stem}.int8.onnx")
    model = onnx.load(str(int8_path))  # keep the kit's metadata (classes, features, ...) on the int8 file
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {**meta, "quantization": "int8 static QDQ"})
    onnx.save(model, str(int8_path))
    sample = data_dir / "sample_submission.csv"
    float_score = local_score(onnx_path, soundscapes, solution, sample)
    int8_score = local_score(int8_path, soundscapes, solution, sample)
    ship = int8_path if int8_is_good_enough(float_score, int8_score) else onnx_path
    return Int8Verdict(ship, float_score, int8_score)
