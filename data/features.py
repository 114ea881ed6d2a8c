"""The one audio-to-features definition of the kit.

Preprocessing, training, export metadata and the Kaggle notebook all call this module; the
notebook imports this very file from the packaged dataset. Nothing else computes features.

    file --decode--> mono float32 @ sample_rate_hz
         --denoise (optional)--> same length
         --frame--> [n_windows, window_samples]       (window i ends at (i+1)*window_s: Kaggle row_ids)
         --mel, low band cut below fmin_hz--> [n_windows, n_mels, n_frames] power
         --log + per-window scaling to [0, 1], rounded to float16--> model input

The final float16 rounding is part of the definition: the training cache stores float16, so
rounding here makes the notebook's features bit-identical to what training read.

This file must import nothing heavier than numpy/scipy/librosa/soundfile (it runs on Kaggle).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

# Bump when the computation below changes in a way the config fields do not capture.
FEATURES_VERSION = 1

# Peak power below which a window is not amplified: digital silence and padding map to 0
# instead of being stretched to full scale by the per-window normalisation.
_REF_POWER_FLOOR = 1e-2
_AMIN = 1e-10


class AudioError(ValueError):
    """A file that cannot become features (unreadable, empty, no finite samples)."""


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate_hz: int = 32_000
    window_s: float = 5.0
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    fmin_hz: float = 100.0  # the band below is cut: wind, traffic and handling rumble
    fmax_hz: float = 16_000.0
    top_db: float = 80.0  # dynamic range kept below each window's peak
    denoise: bool = False  # noisereduce before the mel (a switch to measure, see README)
    min_tail_s: float = 1.0  # a last partial window counts when it holds this much audio

    def __post_init__(self):
        nyquist_hz = self.sample_rate_hz / 2
        if not 0 <= self.fmin_hz < self.fmax_hz <= nyquist_hz:
            raise ValueError(
                f"need 0 <= fmin_hz < fmax_hz <= sample_rate_hz/2, got fmin_hz={self.fmin_hz}, "
                f"fmax_hz={self.fmax_hz}, sample_rate_hz={self.sample_rate_hz}"
            )
        if self.window_s <= 0 or self.hop_length <= 0 or self.n_fft <= 0 or self.n_mels <= 0:
            raise ValueError(f"window_s, hop_length, n_fft and n_mels must be positive: {self}")

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate_hz))

    @property
    def n_frames(self) -> int:
        return 1 + self.window_samples // self.hop_length  # librosa's centred framing

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of one window's features: (n_mels, n_frames)."""
        return (self.n_mels, self.n_frames)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"unknown feature parameters {sorted(unknown)}: this code (features v{FEATURES_VERSION}) "
                "is older than the file that wrote them; re-export the model with this kit version"
            )
        return cls(**d)

    def fingerprint(self) -> str:
        """Short hash naming a feature cache: same fingerprint, same features."""
        blob = json.dumps({"version": FEATURES_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------- decode
def load_audio(path: str | Path, sample_rate_hz: int) -> np.ndarray:
    """Decode any readable audio file to mono float32 at sample_rate_hz.

    soundfile (libsndfile) reads OGG/FLAC/WAV/MP3 quickly; anything else falls back to
    librosa's audioread path. Stereo is averaged. Non-finite samples are kept: callers
    decide (preprocessing skips such files, the notebook zero-fills them).
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        y, sr = _read_soundfile(path)
    except Exception as sf_error:  # libsndfile cannot read it: try the slower generic decoder
        try:
            y, sr = _read_audioread(path)
        except Exception as ar_error:
            raise AudioError(f"{path}: unreadable audio ({sf_error}; {ar_error})") from ar_error
    if y.size == 0:
        raise AudioError(f"{path}: no samples")
    if sr != sample_rate_hz:
        y = _resample(y, sr, sample_rate_hz)
    return np.ascontiguousarray(y, dtype=np.float32)


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    y, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [n, channels]
    return y.mean(axis=1), int(sr)


def _read_audioread(path: Path) -> tuple[np.ndarray, int]:
    """Formats libsndfile lacks (m4a, aac...), through audioread/ffmpeg where installed."""
    import warnings

    import librosa

    with warnings.catch_warnings():  # librosa warns that it fell back, which is the point here
        warnings.simplefilter("ignore")
        y, sr = librosa.load(str(path), sr=None, mono=True)
    return y, int(sr)


def _resample(y: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    import librosa

    finite = np.isfinite(y)
    if not finite.all():  # soxr would smear one NaN over the whole file
        y = np.where(finite, y, 0.0)
    return librosa.resample(y, orig_sr=sr_from, target_sr=sr_to, res_type="soxr_hq")


# ---------------------------------------------------------------------------------- windows
def n_windows(n_samples: int, cfg: FeatureConfig) -> int:
    """Number of 5-s windows for a signal: full windows, plus a last partial one holding at
    least min_tail_s of audio, and never fewer than one (short clips are padded)."""
    full, tail = divmod(n_samples, cfg.window_samples)
    keep_tail = tail >= cfg.min_tail_s * cfg.sample_rate_hz
    return max(1, full + int(keep_tail))


def frame_windows(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """[n] -> [n_windows, window_samples]; window i covers [i*window_s, (i+1)*window_s),
    zero-padded at the end."""
    n = n_windows(len(y), cfg)
    w = cfg.window_samples
    out = np.zeros((n, w), dtype=np.float32)
    flat = out.reshape(-1)
    take = min(len(y), n * w)
    flat[:take] = y[:take]
    return out


def row_end_seconds(n: int, cfg: FeatureConfig) -> list[int]:
    """Kaggle row_id suffixes for n windows: 5, 10, ..., 240 for a 4-minute soundscape."""
    return [int(round((i + 1) * cfg.window_s)) for i in range(n)]


# ---------------------------------------------------------------------------------- denoise
def denoise(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """noisereduce's spectral gating (non-stationary, default settings), one whole clip at a
    time so the noise estimate sees all of it."""
    import noisereduce as nr

    if len(y) < cfg.n_fft:  # too short to estimate noise from
        return y
    return nr.reduce_noise(y=y, sr=cfg.sample_rate_hz, n_jobs=1).astype(np.float32)


# ---------------------------------------------------------------------------------- mel
_MEL_BASIS_CACHE: dict[tuple, np.ndarray] = {}


def mel_basis(cfg: FeatureConfig) -> np.ndarray:
    """[n_mels, 1 + n_fft//2] triangular filters from fmin_hz to fmax_hz (the low band is cut)."""
    key = (cfg.sample_rate_hz, cfg.n_fft, cfg.n_mels, cfg.fmin_hz, cfg.fmax_hz)
    if key not in _MEL_BASIS_CACHE:
        import librosa

        _MEL_BASIS_CACHE[key] = librosa.filters.mel(
            sr=cfg.sample_rate_hz, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin_hz, fmax=cfg.fmax_hz
        ).astype(np.float32)
    return _MEL_BASIS_CACHE[key]


def mel_power(windows: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """[n, window_samples] -> [n, n_mels, n_frames] mel power spectrogram."""
    import librosa

    spec = np.abs(
        librosa.stft(windows, n_fft=cfg.n_fft, hop_length=cfg.hop_length, window="hann", center=True)
    ) ** 2  # [n, 1 + n_fft//2, n_frames]
    return np.matmul(mel_basis(cfg), spec.astype(np.float32))


def normalise(mel: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Power -> dB relative to each window's peak, clipped at -top_db, scaled to [0, 1] and
    rounded to float16 precision (the cache's storage type)."""
    db = 10.0 * np.log10(np.maximum(mel, _AMIN))
    peak = np.maximum(mel.max(axis=(-2, -1), keepdims=True), _REF_POWER_FLOOR)
    db -= 10.0 * np.log10(peak)
    scaled = np.clip((db + cfg.top_db) / cfg.top_db, 0.0, 1.0)
    return scaled.astype(np.float16).astype(np.float32)


# ---------------------------------------------------------------------------------- all of it
def audio_to_features(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Mono float32 signal at cfg.sample_rate_hz -> [n_windows, n_mels, n_frames] in [0, 1]."""
    if cfg.denoise:
        y = denoise(y, cfg)
    return normalise(mel_power(frame_windows(y, cfg), cfg), cfg)


def file_to_features(path: str | Path, cfg: FeatureConfig) -> np.ndarray:
    """Decode + features. Raises AudioError for a file with no usable samples."""
    y = load_audio(path, cfg.sample_rate_hz)
    if not np.isfinite(y).all():
        raise AudioError(f"{path}: {int((~np.isfinite(y)).sum())} NaN/inf samples")
    return audio_to_features(y, cfg)

