"""The one audio-to-features definition: decode, windows, low-band cut, denoise, scaling."""
import numpy as np
import pytest
import soundfile as sf

from data.features import (
    AudioError, FeatureConfig, audio_to_features, file_to_features, frame_windows, load_audio, mel_power,
    n_windows, normalise, row_end_seconds,
)

CFG = FeatureConfig()
SR = CFG.sample_rate_hz


def tone(freq_hz: float, seconds: float, amplitude: float = 0.5, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def test_a_four_minute_soundscape_gives_kaggles_48_windows_ending_at_5_to_240_s():
    n = n_windows(240 * SR, CFG)
    assert n == 48
    assert row_end_seconds(n, CFG) == list(range(5, 241, 5))


@pytest.mark.parametrize("seconds, expected", [(3.0, 1), (5.0, 1), (5.5, 1), (7.0, 2), (240.01, 48), (0.1, 1)])
def test_a_last_partial_window_counts_only_with_at_least_a_second_of_audio(seconds, expected):
    assert n_windows(int(seconds * SR), CFG) == expected


def test_windows_keep_samples_in_place_and_pad_the_last_with_zeros():
    y = np.arange(int(7 * SR), dtype=np.float32)
    w = frame_windows(y, CFG)
    assert w.shape == (2, 5 * SR)
    assert w[0, 0] == 0 and w[0, -1] == 5 * SR - 1 and w[1, 0] == 5 * SR
    assert w[1, 2 * SR - 1] == 7 * SR - 1 and not w[1, 2 * SR :].any()


def test_features_have_the_configured_shape_and_lie_in_zero_one_at_float16_precision():
    feats = audio_to_features(tone(2000, 12.0), CFG)
    assert feats.shape == (3, 128, 313) == (3, *CFG.shape)
    assert feats.dtype == np.float32
    assert feats.min() >= 0.0 and feats.max() == 1.0
    assert np.array_equal(feats, feats.astype(np.float16).astype(np.float32))


def test_the_band_below_fmin_is_cut():
    low = mel_power(frame_windows(tone(50, 5.0), CFG), CFG).sum()
    high = mel_power(frame_windows(tone(1000, 5.0), CFG), CFG).sum()
    assert 10 * np.log10(low / high) < -30  # a 50 Hz hum barely reaches the mel bands


def test_power_40_db_below_the_windows_peak_maps_to_one_half_and_80_db_below_to_zero():
    mel = np.full((1, 2, 3), 1e-12, np.float32)  # [window, mel, frame] power
    mel[0, 0, 0], mel[0, 0, 1], mel[0, 1, 0] = 2.0, 2e-4, 2e-8  # the peak, -40 dB, -80 dB
    scaled = normalise(mel, CFG)
    assert (scaled[0, 0, 0], scaled[0, 0, 1], scaled[0, 1, 0], scaled[0, 1, 2]) == (1.0, 0.5, 0.0, 0.0)


def test_digital_silence_and_padding_map_to_zero_not_to_full_scale():
    feats = audio_to_features(np.zeros(3 * SR, np.float32), CFG)
    assert feats.max() == 0.0


def test_a_louder_copy_of_a_window_gives_the_same_features():
    y = tone(3000, 5.0) + 0.01 * np.random.default_rng(0).standard_normal(5 * SR).astype(np.float32)
    assert np.abs(audio_to_features(y, CFG) - audio_to_features(0.25 * y, CFG)).max() < 2e-3


def test_the_denoise_switch_lowers_the_noise_floor_around_a_call():
    rng = np.random.default_rng(0)
    y = 0.05 * rng.standard_normal(10 * SR).astype(np.float32)
    y[3 * SR : 4 * SR] += tone(3000, 1.0)
    plain = audio_to_features(y, CFG)
    clean = audio_to_features(y, FeatureConfig(denoise=True))
    assert clean.shape == plain.shape
    assert clean[1].mean() < plain[1].mean() - 0.05  # the noise-only second window got quieter


def test_feature_parameters_change_the_cache_fingerprint():
    assert FeatureConfig().fingerprint() == FeatureConfig().fingerprint()
    assert FeatureConfig(denoise=True).fingerprint() != FeatureConfig().fingerprint()


def test_an_impossible_band_is_refused_naming_the_values():
    with pytest.raises(ValueError, match="fmin_hz=9000, fmax_hz=8000"):
        FeatureConfig(fmin_hz=9000, fmax_hz=8000)


def test_stereo_44k1_wav_is_decoded_to_32k_mono(tmp_path):
    left, right = tone(1000, 2.0, sr=44_100), tone(1000, 2.0, sr=44_100)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 44_100)
    y = load_audio(path, SR)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == pytest.approx(2 * SR, abs=2)


def test_an_empty_or_corrupt_file_raises_an_audio_error_naming_it(tmp_path):
    empty = tmp_path / "empty.ogg"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.ogg"
    junk.write_bytes(b"OggS" + bytes(300))
    with pytest.raises(AudioError, match="empty.ogg: empty file"):
        load_audio(empty, SR)
    with pytest.raises(AudioError, match="junk.ogg: unreadable audio"):
        load_audio(junk, SR)


def test_nan_samples_make_a_training_file_unusable(tmp_path):
    y = tone(1000, 6.0)
    y[100:200] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, y, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="100 NaN/inf samples"):
        file_to_features(path, CFG)
