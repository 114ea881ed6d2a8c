"""Denoise modes of the one feature definition: "none", "spectral" (the fast gate on the mel's
STFT) and "noisereduce" (the library, the reference), and the fast plain STFT/mel path.

How close is close enough (measured on all 311 files of realbirds when the gate was written):
the [0, 1] features of "spectral" and "noisereduce" differ by 0.010 on average per file
(median; 95th percentile 0.038, worst 0.071; 0.017 weighted by duration), while "none" differs
from "noisereduce" by 0.111 (median; 0.26 weighted by duration); their Pearson correlation is
0.989 (median, worst 0.894), "none"'s with "noisereduce" 0.796; and the mean feature level,
what is left above the gated noise floor, is within 0.89x..1.35x of noisereduce's on every
file (median 1.08x), while "none"'s is 3.6x..10x higher on the four soundscapes. The thresholds below leave room
around those numbers; what remains differs mostly because noisereduce gates a 1024-point STFT
and resynthesises audio that the 2048-point mel STFT then reads again.
"""
import glob

import numpy as np
import pytest
import scipy.signal

import data.features as F
from data.features import FeatureConfig, audio_to_features, frame_windows, load_audio, mel_power, normalise, stft_power

CFG = FeatureConfig()
SR = CFG.sample_rate_hz


def tone(freq_hz: float, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def noisy_call(seconds: float = 10.0, seed: int = 0) -> np.ndarray:
    """White noise with a 3 kHz call in second 3-4: window 0 holds the call, window 1 only noise."""
    y = 0.05 * np.random.default_rng(seed).standard_normal(int(seconds * SR)).astype(np.float32)
    y[3 * SR : 4 * SR] += tone(3000, 1.0)
    return y


def librosa_mel_features(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """The plain path as the kit first defined it: librosa.stft on all windows, |.|^2, mel."""
    import librosa

    spec = np.abs(librosa.stft(frame_windows(y, cfg), n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                               window="hann", center=True)) ** 2
    return normalise(np.matmul(F.mel_basis(cfg), spec.astype(np.float32)), cfg)


def noisereduce_gate_reference(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """noisereduce's non-stationary gate built from noisereduce's own functions, at full
    resolution, on the mel's STFT: the algorithm "spectral" mirrors, without its shortcuts."""
    from noisereduce.spectralgate.base import _smoothing_filter
    from noisereduce.spectralgate.nonstationary import get_time_smoothed_representation
    from noisereduce.spectralgate.utils import sigmoid

    windows = frame_windows(y, cfg)
    power = stft_power(windows, cfg)  # [n, frames, bins]
    n, nf, nb = power.shape
    mag = np.sqrt(power.reshape(n * nf, nb).T.astype(np.float64))  # [bins, time], noisereduce's layout
    # noisereduce gates zero-padded chunks: silence before the clip and after it
    silence = np.zeros((nb, 20 * 125))
    padded = np.concatenate([silence[:, :1], mag, silence], axis=1)
    floor = get_time_smoothed_representation(padded, cfg.sample_rate_hz, cfg.hop_length, time_constant_s=2.0)
    floor = floor[:, 1 : 1 + n * nf]
    mask = sigmoid((mag - floor) / floor, -2.0, 10.0)
    n_grad_freq = int(500 / (cfg.sample_rate_hz / (cfg.n_fft / 2)))
    n_grad_time = int(50 / (cfg.hop_length / cfg.sample_rate_hz * 1000))
    mask = scipy.signal.fftconvolve(mask, _smoothing_filter(n_grad_freq, n_grad_time), mode="same")
    gated = power * (mask.T.reshape(n, nf, nb) ** 2).astype(np.float32)
    return normalise(mel_power(windows, cfg, power=gated), cfg)


# ------------------------------------------------------------------------------ config
def test_legacy_boolean_configs_map_to_modes():
    assert FeatureConfig(denoise=True).denoise == "noisereduce"
    assert FeatureConfig(denoise=False).denoise == "none"
    assert FeatureConfig(denoise=np.bool_(True)).denoise == "noisereduce"
    assert FeatureConfig().denoise == "none"
    legacy = {**FeatureConfig().to_dict(), "denoise": True}  # an old cache header or export metadata
    assert FeatureConfig.from_dict(legacy) == FeatureConfig(denoise="noisereduce")
    assert FeatureConfig.from_dict({**legacy, "denoise": False}) == FeatureConfig()
    assert FeatureConfig.from_dict(FeatureConfig(denoise="spectral").to_dict()).denoise == "spectral"


def test_an_unknown_mode_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="none, spectral, noisereduce.*'fast'"):
        FeatureConfig(denoise="fast")


def test_every_mode_has_its_own_fingerprint():
    prints = {m: FeatureConfig(denoise=m).fingerprint() for m in F.DENOISE_MODES}
    assert len(set(prints.values())) == 3
    assert FeatureConfig(denoise=True).fingerprint() == prints["noisereduce"]
    assert FeatureConfig(denoise=False).fingerprint() == prints["none"]


# ------------------------------------------------------------------------------ synthetic (always run)
def test_the_plain_path_equals_librosas_stft_mel_after_float16_rounding():
    rng = np.random.default_rng(1)
    y = 0.1 * rng.standard_normal(12 * SR).astype(np.float32) + tone(2500, 12.0, 0.2)
    fast = audio_to_features(y, CFG)
    assert fast.shape == (3, *CFG.shape)
    assert np.abs(fast - librosa_mel_features(y, CFG)).max() <= 1e-3  # at most a float16 step


def test_mel_power_accepts_a_precomputed_power_spectrum():
    windows = frame_windows(noisy_call(), CFG)
    power = stft_power(windows, CFG)
    assert power.shape == (2, CFG.n_frames, 1 + CFG.n_fft // 2) and power.dtype == np.float32
    assert np.allclose(mel_power(windows, CFG, power=power), mel_power(windows, CFG), rtol=1e-5, atol=1e-6)


def test_the_gate_lowers_a_noise_only_window_and_keeps_the_call():
    y = noisy_call()
    plain = audio_to_features(y, CFG)
    gated = audio_to_features(y, FeatureConfig(denoise="spectral"))
    library = audio_to_features(y, FeatureConfig(denoise="noisereduce"))
    assert gated.shape == plain.shape
    # each window is scaled to its own peak, so gated noise still spans the range, but lower
    assert gated[1].mean() < plain[1].mean() - 0.2  # the noise-only window got quieter
    call = slice(int(3.1 * SR / CFG.hop_length), int(3.9 * SR / CFG.hop_length))
    band = int(np.argmax(plain[0, :, call].mean(axis=1)))  # the call's mel band
    # the call survives near full level (a steady 1-s tone raises its own running floor, so
    # both gates dent it a little: here 0.86 against noisereduce's 0.97, i.e. ~9 dB)...
    assert gated[0, band, call].mean() > 0.8 and library[0, band, call].mean() > 0.8
    assert gated[0].mean() < plain[0].mean() - 0.3  # ...while the noise around it goes
    for w in range(2):  # as noisereduce does
        assert abs(gated[w].mean() - library[w].mean()) < 0.1


def test_digital_silence_stays_zero_through_the_gate():
    assert audio_to_features(np.zeros(7 * SR, np.float32), FeatureConfig(denoise="spectral")).max() == 0.0


def test_long_clips_recompute_the_stft_instead_of_keeping_it_with_the_same_result(monkeypatch):
    y = np.tile(noisy_call(), 2)
    kept = audio_to_features(y, FeatureConfig(denoise="spectral"))
    monkeypatch.setattr(F, "_GATE_KEEP_WINDOWS", 1)
    assert np.array_equal(audio_to_features(y, FeatureConfig(denoise="spectral")), kept)


def test_without_its_two_shortcuts_the_gate_is_noisereduces_algorithm(monkeypatch):
    y = noisy_call(seed=3)
    y[7 * SR : 7 * SR + SR // 2] += tone(6000, 0.5, 0.3)
    reference = noisereduce_gate_reference(y, CFG)
    fast = audio_to_features(y, FeatureConfig(denoise="spectral"))
    assert np.abs(fast - reference).mean() < 0.01  # the shortcuts (8-frame floor, 4-bin mask) cost little
    monkeypatch.setattr(F, "_GATE_FLOOR_BLOCK_FRAMES", 1)
    monkeypatch.setattr(F, "_GATE_MASK_GROUP_BINS", 1)
    exact = audio_to_features(y, FeatureConfig(denoise="spectral"))
    assert np.abs(exact - reference).max() <= 1e-3  # float32 vs float64: a float16 step at most


# ------------------------------------------------------------------------------ real audio
def real_sample(root) -> list[str]:
    """The unlabeled soundscapes and every 20th training recording: ~20 files, ~5 minutes of audio."""
    scapes = sorted(glob.glob(str(root / "unlabeled_soundscapes" / "*.ogg")))
    recordings = sorted(glob.glob(str(root / "train_audio" / "*" / "*.ogg")))
    return scapes + recordings[::20]


def test_the_gate_is_close_to_noisereduce_on_real_recordings(realbirds):
    rows = []
    for path in real_sample(realbirds):
        y = load_audio(path, SR)
        none, spectral, reference = (audio_to_features(y, FeatureConfig(denoise=m))
                                     for m in ("none", "spectral", "noisereduce"))
        rows.append({
            "path": path, "seconds": len(y) / SR, "soundscape": "unlabeled_soundscapes" in path,
            "spectral_vs_nr": np.abs(spectral - reference).mean(), "none_vs_nr": np.abs(none - reference).mean(),
            "corr": np.corrcoef(spectral.ravel(), reference.ravel())[0, 1],
            "level_none": none.mean(), "level_spectral": spectral.mean(), "level_nr": reference.mean(),
        })
    seconds = np.array([r["seconds"] for r in rows])

    def weighted(key):
        return float(np.sum([r[key] for r in rows] * seconds) / seconds.sum())

    # close to noisereduce: small differences, strong correlation, file by file and overall
    for r in rows:
        assert r["spectral_vs_nr"] < 0.1 and r["corr"] > 0.85, r
    assert np.median([r["spectral_vs_nr"] for r in rows]) < 0.025
    assert weighted("spectral_vs_nr") < 0.03
    assert weighted("spectral_vs_nr") < 0.2 * weighted("none_vs_nr")  # none is far from both
    # both lower the noise floor alike: the level left after gating matches, and is far below none's
    for r in rows:
        assert 0.75 < r["level_spectral"] / r["level_nr"] < 1.5, r
    for r in (r for r in rows if r["soundscape"]):
        assert r["level_spectral"] < 0.5 * r["level_none"] and r["level_nr"] < 0.5 * r["level_none"], r
        assert r["none_vs_nr"] > 0.2, r  # on soundscapes "none" is clearly different from both


def test_the_plain_path_equals_librosas_on_real_soundscapes(realbirds):
    for path in sorted(glob.glob(str(realbirds / "unlabeled_soundscapes" / "*.ogg"))):
        y = load_audio(path, SR)
        assert np.abs(audio_to_features(y, CFG) - librosa_mel_features(y, CFG)).max() <= 1e-3, path
