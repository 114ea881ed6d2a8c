"""Which ensemble ships: the best-first prefix of the candidates that scores best locally.

An ensemble earns its Kaggle minutes only where it scores better than fewer models, so
`make package` (with --ensemble auto, the default) runs the notebook's own inference code once
with every candidate on the labelled soundscapes of `make score`, keeping each member's raw
output, and scores each best-first prefix (model 1; models 1-2; 1-2-3; ...) combined as the
notebook would combine them. A prefix ships only where it beats every shorter one by
MIN_ENSEMBLE_GAIN. `make score` reports the same figures from the packaged notebook's own run.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from train.metrics import kaggle_score

# A longer ensemble must beat every shorter prefix by this much to be worth its minutes.
MIN_ENSEMBLE_GAIN = 0.002


def prefix_scores(solution: pd.DataFrame, raws: list[pd.DataFrame], combine: str) -> list[float]:
    """Kaggle's metric of the best-first prefixes 1, 1-2, 1-2-3, ... of the members' raw outputs
    (same row_ids and columns), combined by mean or min."""
    from submission.infer import combine_probs

    classes = raws[0].columns[1:]
    stack = np.stack([raw[classes].to_numpy(np.float32) for raw in raws])  # [models, rows, classes]
    scores = []
    for n in range(1, len(raws) + 1):
        out = raws[0].copy()
        out[classes] = combine_probs(stack[:n], combine)
        scores.append(kaggle_score(solution, out))
    return scores


def shortest_best(scores: list[float], min_gain: float = MIN_ENSEMBLE_GAIN) -> int:
    """How many members ship: each added member must raise the best score so far by min_gain."""
    keep, best = 1, scores[0]
    for n, s in enumerate(scores[1:], start=2):
        if s >= best + min_gain:
            keep, best = n, s
    return keep


def read_member_raws(raw_csv: Path, n_models: int) -> list[pd.DataFrame]:
    """The raw outputs an ensemble of n_models >= 2 wrote beside raw_csv (write_submission)."""
    from submission.infer import raw_member_csv

    return [pd.read_csv(raw_member_csv(raw_csv, k)) for k in range(n_models)]


def member_raw_outputs(onnx_paths: list[Path], combine: str, soundscapes: Path,
                       sample_submission: Path) -> list[pd.DataFrame]:
    """Each of >= 2 models' raw probabilities on the soundscapes, from one run of the notebook's
    inference code with all of them as one ensemble."""
    from submission.infer import Ensemble, KitModel, write_submission

    ensemble = Ensemble([KitModel.load(p) for p in onnx_paths], combine)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.csv"
        write_submission(ensemble, soundscapes, sample_submission, Path(tmp) / "submission.csv", raw_csv=raw)
        return read_member_raws(raw, len(onnx_paths))


@dataclass
class EnsembleVerdict:
    keep: int  # members that ship, best first
    scores: list[float]  # local score of each best-first prefix


def judge(onnx_paths: list[Path], combine: str, soundscapes: Path, solution: Path,
          sample_submission: Path) -> EnsembleVerdict:
    raws = member_raw_outputs(onnx_paths, combine, soundscapes, sample_submission)
    scores = prefix_scores(pd.read_csv(solution), raws, combine)
    return EnsembleVerdict(shortest_best(scores), scores)
