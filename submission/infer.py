"""Kaggle-side inference, imported by the notebook from the packaged dataset.

Everything is rebuilt from the ONNX file's metadata (classes, feature parameters, activation)
and the features come from data.features, the same file training used. Needs only numpy,
pandas, onnxruntime and the audio libraries of data.features; no torch.

    for each test soundscape (sorted):  decode -> features [48, n_mels, n_frames] -> onnxruntime
                                         -> probabilities [48, classes] -> rows of submission.csv
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data.features import FEATURES_VERSION, AudioError, FeatureConfig, audio_to_features, load_audio, row_end_seconds

MANIFEST_NAME = "birdkit.json"
EXPECTED_SOUNDSCAPE_S = 240.0  # Kaggle's hidden test soundscapes are 4 minutes long


@dataclass
class KitModel:
    """An exported model and everything its metadata says about it."""

    session: object  # onnxruntime.InferenceSession
    classes: list[str]
    features: FeatureConfig
    meta: dict[str, str]
    input_name: str
    batch_windows: int = 48

    @classmethod
    def load(cls, onnx_path: Path, threads: int | None = None) -> "KitModel":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        meta = dict(session.get_modelmeta().custom_metadata_map)
        check_metadata(meta, onnx_path)
        return cls(session, json.loads(meta["classes"]), FeatureConfig.from_dict(json.loads(meta["features"])),
                   meta, session.get_inputs()[0].name)

    def predict(self, feats: np.ndarray) -> np.ndarray:
        """[n, n_mels, n_frames] -> [n, classes] probabilities."""
        out = [self.session.run(None, {self.input_name: feats[i : i + self.batch_windows]})[0]
               for i in range(0, len(feats), self.batch_windows)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)


def check_metadata(meta: dict[str, str], onnx_path: Path) -> None:
    """Refuse a model this code cannot feed correctly, naming both versions."""
    for key in ("classes", "features", "features_version"):
        if key not in meta:
            raise ValueError(f"{onnx_path} has no '{key}' metadata: it was not exported by this kit (make export)")
    if meta["features_version"] != str(FEATURES_VERSION):
        raise ValueError(f"{onnx_path} was trained with features v{meta['features_version']}, this code computes "
                         f"features v{FEATURES_VERSION}: re-train and re-export, or package the matching code")


@dataclass
class Timing:
    """Seconds spent per stage over the whole run."""

    decode_s: float = 0.0
    features_s: float = 0.0
    model_s: float = 0.0
    soundscapes: int = 0
    windows: int = 0
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def soundscape_probabilities(model: KitModel, path: Path, timing: Timing) -> np.ndarray:
    """[n_windows, classes] for one soundscape. A file that cannot be decoded still gets the
    rows of a 4-minute soundscape, with zero probabilities, and is logged."""
    cfg = model.features
    t0 = time.perf_counter()
    try:
        y = load_audio(path, cfg.sample_rate_hz)
    except AudioError as e:
        timing.failures.append(f"{path.name}: {e}")
        print(f"warning: {e}; writing zero rows", file=sys.stderr)
        n = int(EXPECTED_SOUNDSCAPE_S // cfg.window_s)
        return np.zeros((n, len(model.classes)), np.float32)
    if not np.isfinite(y).all():
        timing.failures.append(f"{path.name}: NaN/inf samples set to 0")
        y = np.where(np.isfinite(y), y, 0.0).astype(np.float32)
    t1 = time.perf_counter()
    feats = audio_to_features(y, cfg)  # [n, M, T]
    t2 = time.perf_counter()
    probs = model.predict(feats)
    t3 = time.perf_counter()
    timing.decode_s += t1 - t0
    timing.features_s += t2 - t1
    timing.model_s += t3 - t2
    timing.windows += len(feats)
    return probs


def submission_rows(stem: str, probs: np.ndarray, model: KitModel, columns: list[str]) -> pd.DataFrame:
    """Rows `<stem>_<end second>` with one column per sample_submission class, in its order.
    A class the model does not know gets 0."""
    col_of = {c: j for j, c in enumerate(model.classes)}
    out = np.zeros((len(probs), len(columns)), np.float32)
    for k, c in enumerate(columns):
        if c in col_of:
            out[:, k] = probs[:, col_of[c]]
    df = pd.DataFrame(out, columns=columns)
    df.insert(0, "row_id", [f"{stem}_{end}" for end in row_end_seconds(len(probs), model.features)])
    return df


def list_soundscapes(test_dir: Path) -> list[Path]:
    if not test_dir.is_dir():
        return []
    return sorted(p for p in test_dir.iterdir() if p.is_file() and p.suffix.lower() in {".ogg", ".wav", ".flac", ".mp3"})


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


def write_submission(model: KitModel, test_dir: Path, sample_submission: Path, out_csv: Path,
                     post: PostProcess = PostProcess(), raw_csv: Path | None = None) -> Timing:
    """Stream submission.csv to disk, one soundscape at a time (bounded memory). An empty or
    missing test folder still gives a valid file: the header. raw_csv, when given, receives the
    probabilities before post-processing (to measure what it gains)."""
    columns = [c for c in pd.read_csv(sample_submission, nrows=0).columns if c != "row_id"]
    soundscapes = list_soundscapes(test_dir)
    timing = Timing()
    out = CsvStream(out_csv, columns)
    raw = CsvStream(raw_csv, columns) if raw_csv else None
    for i, path in enumerate(soundscapes, 1):
        probs = soundscape_probabilities(model, path, timing)
        out.write(submission_rows(path.stem, post(probs), model, columns))
        if raw:
            raw.write(submission_rows(path.stem, probs, model, columns))
        timing.soundscapes += 1
        if i % 50 == 0 or i == len(soundscapes):
            print(f"{i}/{len(soundscapes)} soundscapes", flush=True)
    out.close()
    if raw:
        raw.close()
    return timing


def find_competition(input_dir: Path, slug: str) -> Path:
    """The competition's folder (holding sample_submission.csv), by slug or by search."""
    direct = input_dir / slug
    if (direct / "sample_submission.csv").exists():
        return direct
    hits = sorted(input_dir.glob("*/sample_submission.csv")) + sorted(input_dir.glob("*/*/sample_submission.csv"))
    if not hits:
        raise FileNotFoundError(f"no sample_submission.csv under {input_dir}: add the competition data to the notebook")
    return hits[0].parent


def run_notebook(kit_dir: Path, input_dir: Path, working_dir: Path) -> Path:
    """What the notebook does: load the model, write submission.csv and timing.json."""
    t0 = time.perf_counter()
    manifest = json.loads((kit_dir / MANIFEST_NAME).read_text())
    competition = find_competition(input_dir, manifest["competition"])
    model = KitModel.load(kit_dir / manifest["model_file"])
    print(f"model {model.meta.get('model_name')} ({len(model.classes)} classes, val ROC-AUC "
          f"{model.meta.get('val_roc_auc')}), competition data {competition}")
    working_dir.mkdir(parents=True, exist_ok=True)
    out_csv = working_dir / "submission.csv"
    post = PostProcess(**manifest.get("postprocess", {}))
    # `make score` asks for the raw probabilities too, to report what post-processing gains.
    raw_csv = working_dir / "submission_raw.csv" if os.environ.get("BIRDKIT_KEEP_RAW") else None
    timing = write_submission(model, competition / "test_soundscapes", competition / "sample_submission.csv",
                              out_csv, post, raw_csv)
    report = {**timing.to_dict(), "total_s": time.perf_counter() - t0}
    (working_dir / "timing.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out_csv}: {timing.soundscapes} soundscapes, {timing.windows} windows in {report['total_s']:.1f} s")
    return out_csv
