"""The one audio-to-features definition of the kit.

Preprocessing, training, export metadata and the Kaggle notebook all call this module; the
notebook imports this very file from the packaged dataset. Nothing else computes features.

    file --decode--> mono float32 @ sample_rate_hz
         --denoise="noisereduce": the noisereduce library on the waveform--> same length
         --frame--> [n_windows, window_samples]       (window i ends at (i+1)*window_s: Kaggle row_ids)
         --STFT power (Hann, centred, zero-padded per window) [n_windows, n_frames, 1 + n_fft//2]
         --denoise="spectral": noisereduce's non-stationary gate, applied to this same STFT--> same shape
         --mel, low band cut below fmin_hz--> [n_windows, n_mels, n_frames] power
         --log + per-window scaling to [0, 1], rounded to float16--> model input

FeatureConfig.denoise picks the noise reduction: "none"; "spectral", a re-implementation of
noisereduce's non-stationary spectral gate (same defaults) as a soft mask on the STFT the mel
uses, ~20x cheaper than the library (~0.1 s vs 2-3.5 s per 4-minute soundscape on one core)
because it skips noisereduce's own STFT -> ISTFT round trip, and close to it (mean |difference|
of the [0, 1] features 0.010 per file, against 0.11 for "none"; tests/test_denoise.py); or
"noisereduce", the library itself (the reference). Legacy configs said denoise=True/False:
True means "noisereduce", False "none".

The final float16 rounding is part of the definition: the training cache stores float16, so
rounding here makes the notebook's features bit-identical to what training read.

This file must import nothing heavier than numpy/scipy/librosa/soundfile/noisereduce (it runs
on Kaggle): no torch.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

# Bump when the computation below changes in a way the config fields do not capture.
FEATURES_VERSION = 1

DENOISE_MODES = ("none", "spectral", "noisereduce")

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
    denoise: str = "none"  # "none" | "spectral" (fast gate on the mel's STFT) | "noisereduce" (the library)
    min_tail_s: float = 1.0  # a last partial window counts when it holds this much audio

    def __post_init__(self):
        if isinstance(self.denoise, (bool, np.bool_)):  # legacy configs and CLI flags: True/False
            object.__setattr__(self, "denoise", "noisereduce" if self.denoise else "none")
        if self.denoise not in DENOISE_MODES:
            raise ValueError(f"denoise must be one of {', '.join(DENOISE_MODES)} (or a legacy bool), "
                             f"got {self.denoise!r}")
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
    librosa's audioread path. Stereo is averaged. Non-finite samples are kept when the file is
    at sample_rate_hz and zero-filled by resampling otherwise: callers decide (preprocessing
    reads through load_finite_audio and skips such files, the notebook zero-fills them).
    """
    y, sr = decode(path)
    return at_rate(y, sr, sample_rate_hz)


def load_finite_audio(path: str | Path, sample_rate_hz: int) -> np.ndarray:
    """load_audio, refusing a file with NaN/inf samples (AudioError naming how many of the
    file's own samples, counted before resampling, which would zero-fill them unseen)."""
    y, sr = decode(path)
    finite = np.isfinite(y)
    if not finite.all():
        raise AudioError(f"{path}: {int((~finite).sum())} NaN/inf samples (of {y.size})")
    return at_rate(y, sr, sample_rate_hz)


AUDIO_SUFFIXES = {".ogg", ".wav", ".flac", ".mp3"}


def is_audio_file(path: Path) -> bool:
    """Whether the kit reads path as audio: training recordings, backgrounds and test soundscapes
    alike. Hidden files are not: macOS leaves a `._<name>.ogg` of metadata beside each file it copies."""
    return path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith(".") and path.is_file()


def audio_seconds(path: str | Path) -> float | None:
    """Duration from the file header, without decoding; None when unreadable."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
        return info.frames / info.samplerate
    except Exception:
        return None


def decode(path: str | Path) -> tuple[np.ndarray, int]:
    """(mono float32 samples, their sample rate) as stored; AudioError when there are none."""
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
            raise AudioError(f"{path}: unreadable audio (soundfile: {_why(sf_error)}; "
                             f"audioread: {_why(ar_error)})") from ar_error
    if y.size == 0:
        raise AudioError(f"{path}: no samples")
    return y, sr


def _why(e: Exception) -> str:
    return str(e).strip() or type(e).__name__  # audioread's NoBackendError has no message


def at_rate(y: np.ndarray, sr: int, sample_rate_hz: int) -> np.ndarray:
    """Mono samples at rate sr -> float32 at sample_rate_hz."""
    if sr != sample_rate_hz:
        y = _resample(y, sr, sample_rate_hz)
    return np.ascontiguousarray(y, dtype=np.float32)


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    y, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [n, channels], decoded as float32
    if y.shape[1] == 1:  # mono: a view, no copy (y.mean(axis=1) alone cost ~10% of decoding)
        return y[:, 0], int(sr)
    if y.shape[1] == 2:  # the same values as mean(axis=1), several times faster
        return (y[:, 0] + y[:, 1]) * np.float32(0.5), int(sr)
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


# ---------------------------------------------------------------------------------- STFT
# The STFT is librosa.stft(window, n_fft, hop_length, window="hann", center=True) with zero
# padding, computed one 5-s window at a time (that window's frames stay in the CPU cache while
# they are windowed, transformed, squared and pooled) in float32 with preallocated buffers.
class _Plan:
    """Buffers, Hann window and block-sparse mel filterbank for one config; reused across calls."""

    def __init__(self, cfg: FeatureConfig, window_samples: int):
        import scipy.signal

        self.n_fft, self.hop = cfg.n_fft, cfg.hop_length
        self.pad = cfg.n_fft // 2
        self.n_bins = 1 + cfg.n_fft // 2
        self.n_frames = 1 + (window_samples + 2 * self.pad - self.n_fft) // self.hop
        self.hann = scipy.signal.get_window("hann", self.n_fft, fftbins=True).astype(np.float32)
        self.padded = np.zeros(window_samples + 2 * self.pad, np.float32)  # edges stay zero
        self.framed = np.empty((self.n_frames, self.n_fft), np.float32)
        self.power = np.empty((self.n_frames, self.n_bins), np.float32)
        # Each filter is non-zero on a few neighbouring bins: groups of 8 filters times their
        # bin range do ~7% of the dense matmul's work, with the same sums.
        basis = mel_basis(cfg)
        self.mel_blocks = []
        for r0 in range(0, basis.shape[0], 8):
            cols = np.nonzero(basis[r0 : r0 + 8].any(axis=0))[0]
            lo, hi = (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 0)
            self.mel_blocks.append((r0, min(r0 + 8, basis.shape[0]), lo, hi,
                                    np.ascontiguousarray(basis[r0 : r0 + 8, lo:hi])))

    def magnitude(self, window: np.ndarray, out: np.ndarray) -> np.ndarray:
        """|STFT| of one window -> out [n_frames, n_bins] float32."""
        import scipy.fft

        self.padded[self.pad : self.pad + len(window)] = window
        frames = np.lib.stride_tricks.as_strided(
            self.padded, (self.n_frames, self.n_fft), (self.hop * 4, 4), writeable=False)
        np.multiply(frames, self.hann, out=self.framed)
        spec = scipy.fft.rfft(self.framed, axis=-1, overwrite_x=True)  # complex64
        return np.abs(spec, out=out)

    def mel(self, power: np.ndarray, out: np.ndarray) -> np.ndarray:
        """[n_frames, n_bins] power -> out [n_mels, n_frames]."""
        for r0, r1, lo, hi, block in self.mel_blocks:
            if hi > lo:
                np.matmul(block, power[:, lo:hi].T, out=out[r0:r1])
            else:
                out[r0:r1] = 0.0
        return out


_PLANS = threading.local()  # the buffers are scratch space: one set per thread


def _plan(cfg: FeatureConfig, window_samples: int) -> _Plan:
    key = (cfg.sample_rate_hz, cfg.n_fft, cfg.hop_length, cfg.n_mels, cfg.fmin_hz, cfg.fmax_hz, window_samples)
    if getattr(_PLANS, "key", None) != key:  # one config at a time in practice: keep only the last
        _PLANS.plan, _PLANS.key = _Plan(cfg, window_samples), key
    return _PLANS.plan


def stft_power(windows: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """[n, window_samples] -> [n, n_frames, 1 + n_fft//2] float32 power |STFT|^2 (time-major)."""
    windows = np.asarray(windows, np.float32)
    plan = _plan(cfg, windows.shape[-1])
    out = np.empty((len(windows), plan.n_frames, plan.n_bins), np.float32)
    for i, w in enumerate(windows):
        np.square(plan.magnitude(w, out[i]), out=out[i])
    return out


# ---------------------------------------------------------------------------------- denoise
def denoise(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """denoise="noisereduce": the library's spectral gating (non-stationary, default settings)
    on the waveform, one whole clip at a time so the noise estimate sees all of it."""
    import noisereduce as nr

    if len(y) < cfg.n_fft:  # too short to estimate noise from
        return y
    return nr.reduce_noise(y=y, sr=cfg.sample_rate_hz, n_jobs=1).astype(np.float32)


# denoise="spectral" mirrors noisereduce 3.0.3's non-stationary gate (spectralgate/nonstationary.py)
# with reduce_noise's defaults, in physical units so that they carry over to this STFT:
_GATE_TIME_CONSTANT_S = 2.0  # time_constant_s: the running noise floor per frequency
_GATE_THRESH_N_MULT = 2.0  # thresh_n_mult_nonstationary: |X| > (1 + 2) * floor passes...
_GATE_SIGMOID_SLOPE = 10.0  # sigmoid_slope_nonstationary: ...through a sigmoid this steep
# the sigmoid rewritten as K / (K + exp(k |X|)), k = -slope / floor: K is this constant
_GATE_BIG_K = np.float32(np.exp(-_GATE_SIGMOID_SLOPE * (1.0 + _GATE_THRESH_N_MULT)))
_GATE_PROP_DECREASE = 1.0  # prop_decrease
_GATE_FREQ_SMOOTH_HZ = 500.0  # freq_mask_smooth_hz
_GATE_TIME_SMOOTH_MS = 50.0  # time_mask_smooth_ms
# Two approximations keep it cheap, both far finer than what they approximate: the floor is
# estimated on blocks of 8 frames (128 ms, vs the 2-s time constant) and the mask is smoothed
# on groups of 4 bins (62.5 Hz, vs +-250 Hz of smoothing).
_GATE_FLOOR_BLOCK_FRAMES = 8
_GATE_MASK_GROUP_BINS = 4
_GATE_KEEP_WINDOWS = 64  # longer clips compute the STFT twice instead of holding all of it


def _triangle_counts(cfg: FeatureConfig) -> tuple[int, int, int]:
    """noisereduce's mask-smoothing half-widths, in groups of bins and in frames, and the group size."""
    bin_pair_hz = cfg.sample_rate_hz / (cfg.n_fft / 2)  # noisereduce's unit (two bins)
    n_grad_freq = int(_GATE_FREQ_SMOOTH_HZ / bin_pair_hz)  # in bins: 16 at n_fft 2048 (+-250 Hz)
    n_grad_time = int(_GATE_TIME_SMOOTH_MS / (cfg.hop_length / cfg.sample_rate_hz * 1000))  # 3 at hop 512
    group = max(1, min(_GATE_MASK_GROUP_BINS, n_grad_freq // 4))
    return int(round(n_grad_freq / group)), max(0, n_grad_time), group


def _box_sum(x: np.ndarray, width: int, axis: int) -> np.ndarray:
    """Sums of `width` consecutive elements along axis ("valid": length shrinks by width - 1),
    by doubling: log2(width) + popcount(width) vectorised adds."""
    def cut(a, start, stop):
        index = [slice(None)] * a.ndim
        index[axis] = slice(start, stop)
        return a[tuple(index)]

    n_out = x.shape[axis] - width + 1
    out, offset, sums, span = None, 0, x, 1  # sums[j] = x[j] + ... + x[j + span - 1]
    while True:
        if width & 1:
            piece = cut(sums, offset, offset + n_out)
            out = piece.copy() if out is None else np.add(out, piece, out=out)
            offset += span
        width >>= 1
        if not width:
            return out
        sums = cut(sums, 0, -span) + cut(sums, span, None)
        span *= 2


def _triangle_smooth(x: np.ndarray, half: int, axis: int, halo: bool = False) -> np.ndarray:
    """noisereduce's mask smoothing along axis: triangular weights 1, 2, ..., half+1, ..., 1
    (normalised), as two box sums of width half+1. With halo the array already holds `half`
    real neighbours at each end; otherwise it is zero-padded, like fftconvolve(mode="same")."""
    if half < 1:
        return x
    if not halo:
        pad = [(0, 0)] * x.ndim
        pad[axis] = (half, half)
        x = np.pad(x, pad)
    out = _box_sum(_box_sum(x, half + 1, axis), half + 1, axis)
    out *= np.float32(1.0 / (half + 1) ** 2)
    return out


def _running_floor(block_means: np.ndarray, frames_per_block: float, cfg: FeatureConfig) -> np.ndarray:
    """noisereduce's get_time_smoothed_representation along axis 0 (time), in place: filtfilt of
    the one-pole low-pass y[t] = b x[t] + (1 - b) y[t-1] with time constant time_constant_s.

    noisereduce filters a clip in zero-padded chunks of 600000 samples (30000 zeros before, and
    after the clip the rest of its last chunk plus 30000), so both passes start from silence
    here too: forwards from 0, backwards from 0 after a long silence (seconds, several time
    constants) through which the forward output decays, summed in closed form."""
    t_frames = _GATE_TIME_CONSTANT_S * cfg.sample_rate_hz / cfg.hop_length / frames_per_block
    b = (np.sqrt(1 + 4 * t_frames**2) - 1) / (2 * t_frames**2)
    a = 1.0 - b
    y = block_means
    y *= np.float32(b)
    for t in range(1, len(y)):  # forwards, from silence
        y[t] += np.float32(a) * y[t - 1]
    # backwards: the state entering the last block is sum_j b * (y_end a^(j+1)) * a^j over the
    # silence after it, = y_end * a / (2 - b)
    y[-1] *= np.float32(b + a * a / (2.0 - b))
    y[:-1] *= np.float32(b)
    for t in range(len(y) - 2, -1, -1):
        y[t] += np.float32(a) * y[t + 1]
    return y


class _Gate:
    """The spectral gate of one clip, window by window: |X| -> the soft mask's pieces -> gated mel.

    Pass 1 (here): |X| of every window and its means over blocks of 8 frames; between the passes,
    the noise floor (a zero-phase running mean, 2 s) of those blocks per bin across the whole clip,
    kept as the sigmoid's per-block coefficients k = -slope / floor.
    Pass 2 (mask, apply): mask = sigmoid(slope * (|X| / floor - 1 - thresh)), pooled to groups of
    4 bins, smoothed with noisereduce's triangles (+-250 Hz, then +-3 frames across window edges).
    """

    def __init__(self, windows: np.ndarray, cfg: FeatureConfig):
        self.windows = windows  # [n, window_samples] float32, n >= 1
        self.plan = plan = _plan(cfg, windows.shape[-1])
        n, nf, nb = len(windows), plan.n_frames, plan.n_bins
        self.half_f, self.half_t, self.group = _triangle_counts(cfg)
        self.n_groups = nb // self.group
        self.grouped = self.n_groups * self.group  # bins past it (the Nyquist bin) take the last group's mask
        self.n_full, self.rest = divmod(nf, _GATE_FLOOR_BLOCK_FRAMES)
        self.n_blocks = self.n_full + (self.rest > 0)
        self.keep = n <= _GATE_KEEP_WINDOWS  # long clips compute |X| again in pass 2
        self.mags = np.empty((n if self.keep else 2, nf, nb), np.float32)
        self.z = np.empty((nf, nb), np.float32)  # the sigmoid's scratch
        self.k = self._coefficients(self._block_means(), cfg)  # [n, n_blocks, n_bins]

    def _block_means(self) -> np.ndarray:
        """Pass 1: [n, n_blocks, n_bins] means of |X| over blocks of frames (the last one shorter)."""
        block, n_full, nb = _GATE_FLOOR_BLOCK_FRAMES, self.n_full, self.plan.n_bins
        means = np.empty((len(self.windows), self.n_blocks, nb), np.float32)
        for i, w in enumerate(self.windows):
            mag = self.plan.magnitude(w, self.mags[i if self.keep else 0])
            np.sum(mag[: n_full * block].reshape(n_full, block, nb), axis=1, out=means[i, :n_full])
            means[i, :n_full] *= np.float32(1.0 / block)
            if self.rest:
                np.mean(mag[n_full * block :], axis=0, out=means[i, n_full])
        return means

    def _coefficients(self, means: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
        """The running floor per block and bin, as k = -slope / floor (in place of the means).

        mask = 1 / (1 + exp(slope * (1 + thresh) - slope * |X| / floor)) = K / (K + exp(k |X|))
        """
        n, n_blocks, nb = means.shape
        floor = _running_floor(means.reshape(n * n_blocks, nb), self.plan.n_frames / n_blocks, cfg)
        k = np.divide(np.float32(-_GATE_SIGMOID_SLOPE), np.maximum(floor, np.float32(1e-12)), out=floor)
        return k.reshape(n, n_blocks, nb)

    def magnitude(self, i: int) -> np.ndarray:
        """|X| of window i [n_frames, n_bins]: kept from pass 1, or computed again into one of two buffers."""
        return self.mags[i] if self.keep else self.plan.magnitude(self.windows[i], self.mags[i % 2])

    def mask(self, mag: np.ndarray, i: int) -> np.ndarray:
        """Window i's mask [n_frames, n_groups], pooled to groups of bins and smoothed along frequency."""
        z, k, nb, group = self.z, self.k[i], self.plan.n_bins, self.group
        full = self.n_full * _GATE_FLOOR_BLOCK_FRAMES
        np.multiply(mag[:full].reshape(self.n_full, _GATE_FLOOR_BLOCK_FRAMES, nb), k[: self.n_full, None, :],
                    out=z[:full].reshape(self.n_full, _GATE_FLOOR_BLOCK_FRAMES, nb))
        if self.rest:
            np.multiply(mag[full:], k[self.n_full], out=z[full:])
        np.exp(z, out=z)
        np.add(z, _GATE_BIG_K, out=z)
        np.divide(_GATE_BIG_K, z, out=z)
        pooled = z[:, 0 : self.grouped : group].copy()
        for r in range(1, group):
            pooled += z[:, r : self.grouped : group]
        pooled *= np.float32(1.0 / group)
        return _triangle_smooth(pooled, self.half_f, axis=1)

    def apply(self, mag: np.ndarray, before: np.ndarray, mask: np.ndarray, after: np.ndarray,
              out: np.ndarray) -> None:
        """Smooth mask along time with its neighbours' edge frames, gate the power (mag, in place), mel -> out."""
        nf, half_t, group, grouped = self.plan.n_frames, self.half_t, self.group, self.grouped
        m = _triangle_smooth(np.concatenate([before[nf - half_t :], mask, after[:half_t]]), half_t, 0, halo=True)
        if _GATE_PROP_DECREASE != 1.0:
            m = m * np.float32(_GATE_PROP_DECREASE) + np.float32(1.0 - _GATE_PROP_DECREASE)
        np.square(m, out=m)  # the mask multiplies the magnitude
        power = np.square(mag, out=mag)
        for r in range(group):
            power[:, r:grouped:group] *= m
        power[:, grouped:] *= m[:, -1:]
        self.plan.mel(power, out)


def _gated_mel_power(windows: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """denoise="spectral": [n, window_samples] -> [n, n_mels, n_frames] mel power of the STFT
    after noisereduce's non-stationary soft mask (on the magnitude, so power * mask^2); see _Gate.
    A window's mask is smoothed across its edges, so window i is finished once window i + 1's
    mask exists (one window of lag)."""
    windows = np.asarray(windows, np.float32)
    nf = _plan(cfg, windows.shape[-1]).n_frames
    out = np.empty((len(windows), cfg.n_mels, nf), np.float32)
    if len(windows) == 0:
        return out
    gate = _Gate(windows, cfg)
    zero_halo = np.zeros((nf, gate.n_groups), np.float32)  # beyond the clip: mask 0 (zero padding)
    prev_mask = prev_prev_mask = zero_halo
    prev_mag = None
    for i in range(len(windows)):
        mag = gate.magnitude(i)
        mask = gate.mask(mag, i)
        if i > 0:
            gate.apply(prev_mag, prev_prev_mask, prev_mask, mask, out[i - 1])
        prev_prev_mask, prev_mask, prev_mag = prev_mask, mask, mag
    gate.apply(prev_mag, prev_prev_mask, prev_mask, zero_halo, out[-1])
    return out


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


def mel_power(windows: np.ndarray, cfg: FeatureConfig, power: np.ndarray | None = None) -> np.ndarray:
    """[n, window_samples] -> [n, n_mels, n_frames] mel power spectrogram (no denoising).

    power: the windows' STFT power [n, n_frames, 1 + n_fft//2] (stft_power) when already computed.
    """
    windows = np.asarray(windows, np.float32)
    plan = _plan(cfg, windows.shape[-1])
    out = np.empty((len(windows), cfg.n_mels, plan.n_frames), np.float32)
    for i in range(len(windows)):
        if power is None:
            p = np.square(plan.magnitude(windows[i], plan.power), out=plan.power)
        else:
            p = np.asarray(power[i], np.float32)
        plan.mel(p, out[i])
    return out


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
    if cfg.denoise == "noisereduce":
        y = denoise(y, cfg)
    windows = frame_windows(y, cfg)
    if cfg.denoise == "spectral":
        return normalise(_gated_mel_power(windows, cfg), cfg)
    return normalise(mel_power(windows, cfg), cfg)


def file_to_features(path: str | Path, cfg: FeatureConfig) -> np.ndarray:
    """Decode + features. Raises AudioError for a file with no usable samples or with NaN/inf ones."""
    return audio_to_features(load_finite_audio(path, cfg.sample_rate_hz), cfg)
