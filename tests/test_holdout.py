"""`make holdout`: the call detector, the held-out split training never sees, and the labelled
soundscapes (audio format, Kaggle's solution format, the labelling rule, determinism)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from data import holdout
from data.holdout import HoldoutConfig, SAMPLE_RATE_HZ, build_holdout, call_segments, detect_activity
from data.labels import CallEvent, window_labels
from data.layout import class_list, read_metadata
from data.paths import Workspace
from data.split import holdout_recordings

SR = SAMPLE_RATE_HZ


# ------------------------------------------------------------------------------ helpers
def _noisy_track(duration_s: float, seed: int = 0) -> np.ndarray:
    """Quiet pink noise plus a loud 40-Hz rumble: the detector must see through both."""
    rng = np.random.default_rng(seed)
    n = int(duration_s * SR)
    return holdout.pink_noise(n, rng, rms=0.01) + 0.05 * np.sin(2 * np.pi * 40 * np.arange(n) / SR).astype(np.float32)


def _add_tone(y: np.ndarray, start_s: float, end_s: float, freq_hz: float, amplitude: float = 0.03) -> None:
    t = np.arange(int(round((end_s - start_s) * SR))) / SR
    y[int(round(start_s * SR)):int(round(start_s * SR)) + len(t)] += amplitude * np.sin(2 * np.pi * freq_hz * t)


def _solution(out_dir) -> pd.DataFrame:
    return pd.read_csv(out_dir / "solution.csv")


def _manifest(out_dir) -> dict:
    return json.loads((out_dir / "holdout.json").read_text())


@pytest.fixture(scope="module")
def built(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("holdout-a") / "tiny"
    build_holdout(tiny_dataset, HoldoutConfig(seed=0), out, progress=False)
    return out


@pytest.fixture(scope="module")
def built_again(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("holdout-b") / "tiny"
    build_holdout(tiny_dataset, HoldoutConfig(seed=0), out, progress=False)
    return out


@pytest.fixture(scope="module")
def built_other_seed(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("holdout-c") / "tiny"
    build_holdout(tiny_dataset, HoldoutConfig(seed=1), out, progress=False)
    return out


# ------------------------------------------------------------------------------ the detector
def test_detector_finds_known_calls_within_a_tenth_of_a_second():
    y = _noisy_track(10.0)
    truth = [(1.0, 1.5, 3000), (3.0, 4.2, 6000), (6.0, 6.4, 450)]  # 450 Hz: a low call, near the rumble
    for start_s, end_s, freq_hz in truth:
        _add_tone(y, start_s, end_s, freq_hz)
    found = detect_activity(y, SR)
    assert len(found) == len(truth), found
    for (start_s, end_s), (true_start_s, true_end_s, _) in zip(found, truth):
        assert abs(start_s - true_start_s) < 0.1 and abs(end_s - true_end_s) < 0.1, found


def test_detector_merges_the_notes_of_a_phrase_and_drops_blips():
    y = _noisy_track(6.0, seed=1)
    for k in range(8):  # a trill: 8 notes of 50 ms, 100 ms apart, from 1.0 s to 1.75 s
        _add_tone(y, 1.0 + 0.1 * k, 1.05 + 0.1 * k, 4000)
    _add_tone(y, 4.0, 4.03, 4000)  # a 30-ms blip, shorter than min_segment_s
    found = detect_activity(y, SR)
    assert len(found) == 1, found
    assert abs(found[0][0] - 1.0) < 0.1 and abs(found[0][1] - 1.75) < 0.1, found


def test_steady_noise_has_no_calls_and_then_counts_as_one_call_throughout():
    y = _noisy_track(5.0, seed=2)
    assert detect_activity(y, SR) == []
    assert call_segments(y, SR) == [(0.0, 5.0)]


def test_a_placed_recording_sits_at_the_drawn_snr_over_the_local_background():
    rng = np.random.default_rng(3)
    background = holdout.pink_noise(20 * SR, rng, rms=0.02)
    track = background.copy()
    recording = _noisy_track(4.0, seed=4) * 0.01
    _add_tone(recording, 1.0, 2.5, 2500, amplitude=0.5)
    cfg = HoldoutConfig(snr_db=(6.0, 6.0))
    placed = holdout.place_recording(track, background, recording, "x/a.ogg", "x", cfg, rng)
    assert placed is not None and placed.snr_db == 6.0
    start = int(round(placed.start_s * SR))
    (ev,) = placed.events
    call = slice(int(round(ev.start_s * SR)), int(round(ev.end_s * SR)))
    local = holdout.band_power(background[start:start + len(recording)])
    mixed_call = holdout.band_power((track - background)[call])
    assert 10 * np.log10(mixed_call / local) == pytest.approx(6.0, abs=0.5)
    assert abs(ev.start_s - placed.start_s - 1.0) < 0.1 and abs(ev.end_s - placed.start_s - 2.5) < 0.1


def test_every_held_out_recording_is_used_once_by_default_and_reused_only_on_request():
    rng = np.random.default_rng(0)
    clip_s = list(rng.uniform(2, 30, size=40))
    cfg = HoldoutConfig()
    n = holdout.default_soundscape_count(clip_s, cfg)
    groups = holdout.assign_recordings(clip_s, n, cfg.clip_budget_s, rng)
    assert sorted(i for g in groups for i in g) == list(range(40))
    many = holdout.assign_recordings(clip_s, 3 * n, cfg.clip_budget_s, rng)
    assert all(len(set(g)) == len(g) and g for g in many)  # reused across soundscapes, never within one


# ------------------------------------------------------------------------------ the split
def test_held_out_recordings_are_the_split_and_training_never_sees_one(tiny_dataset, built):
    from data.preprocess import FeatureCache, PreprocessConfig, preprocess
    from train.config import TrainConfig
    from train.data import make_splits

    meta = read_metadata(tiny_dataset)
    manifest = _manifest(built)
    expected = holdout_recordings(meta, 0.15, 0)
    assert expected and manifest["held_out"] == expected
    assert manifest["recordings"] == expected  # all of them mixed in, and nothing else

    cfg = TrainConfig(model="simple_cnn", data_dir=str(tiny_dataset))
    assert (cfg.holdout_fraction, cfg.seed) == (manifest["fraction"], manifest["seed"])
    cache = FeatureCache.open(preprocess(PreprocessConfig(tiny_dataset, progress=False)))
    splits = make_splits(cache, meta, class_list(meta), cfg)
    trained_on = set(splits.train.recordings) | set(splits.val.recordings)
    assert trained_on and not trained_on & set(manifest["recordings"])
    assert splits.holdout == manifest["held_out"]


# ------------------------------------------------------------------------------ the outputs
def test_soundscapes_are_four_minutes_of_32_khz_mono_written_atomically(built):
    files = sorted((built / "test_soundscapes").glob("*.ogg"))
    assert files and all(f.stem.startswith("soundscape_") and len(f.stem) == len("soundscape_") + 6 for f in files)
    for f in files:
        info = sf.info(str(f))
        assert (info.samplerate, info.channels) == (32_000, 1)
        assert info.duration == pytest.approx(240.0, abs=0.01)
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_solution_has_48_rows_per_soundscape_and_the_class_list_as_columns(tiny_dataset, built):
    solution = _solution(built)
    stems = sorted(f.stem for f in (built / "test_soundscapes").glob("*.ogg"))
    assert solution.columns.tolist() == ["row_id", *class_list(read_metadata(tiny_dataset))]
    assert solution.row_id.tolist() == [f"{s}_{end}" for s in stems for end in range(5, 241, 5)]
    assert set(np.unique(solution.iloc[:, 1:].to_numpy())) <= {0, 1}


def test_labels_follow_the_one_rule_on_the_recorded_events(tiny_dataset, built):
    meta = read_metadata(tiny_dataset)
    classes = class_list(meta)
    primary = dict(zip(meta.filename, meta.primary_label))
    solution = _solution(built).set_index("row_id")
    events = _manifest(built)["events"]
    assert sum(len(v) for v in events.values()) >= 4
    for stem, evs in events.items():
        assert all(primary[e["source"]] == e["label"] and 0 <= e["start_s"] < e["end_s"] <= 240 for e in evs)
        expected = window_labels([CallEvent(e["label"], e["start_s"], e["end_s"]) for e in evs], 48, classes)
        got = solution.loc[[f"{stem}_{end}" for end in range(5, 241, 5)], classes].to_numpy()
        np.testing.assert_array_equal(got, expected)
    assert solution.to_numpy().sum() > 0


def test_a_call_shorter_than_a_second_labels_the_window_it_falls_in_and_a_long_one_each_second_it_fills():
    short = window_labels([CallEvent("a", 7.0, 7.4)], 48, ["a", "b"])
    assert short[1, 0] == 1 and short.sum() == 1
    straddling = window_labels([CallEvent("b", 4.5, 6.0)], 48, ["a", "b"])  # 0.5 s in window 0, 1.0 s in 1
    assert straddling[:3, 1].tolist() == [0, 1, 0] and straddling.sum() == 1


def test_a_class_with_exactly_the_minimum_recordings_gives_one_to_validation_and_to_the_hold_out():
    from data.split import validation_recordings

    meta = pd.DataFrame({"primary_label": ["a", "a", "b", "b", "b", "c"],
                         "filename": ["a/1.ogg", "a/2.ogg", "b/1.ogg", "b/2.ogg", "b/3.ogg", "c/1.ogg"]})
    assert sorted(f.split("/")[0] for f in validation_recordings(meta, 0.2, 0)) == ["a", "b"]  # >= 2 recordings
    assert [f.split("/")[0] for f in holdout_recordings(meta, 0.2, 0)] == ["b"]  # >= 3 recordings


def test_same_seed_gives_the_same_labels_and_another_seed_other_ones(built, built_again, built_other_seed):
    pd.testing.assert_frame_equal(_solution(built), _solution(built_again))
    assert _manifest(built)["events"] == _manifest(built_again)["events"]
    assert _manifest(built)["events"] != _manifest(built_other_seed)["events"]
    assert _manifest(built_other_seed)["seed"] == 1


def test_a_dataset_without_unlabeled_soundscapes_gets_pink_noise(tiny_dataset, tmp_path):
    data = tmp_path / "nounlabeled"
    shutil.copytree(tiny_dataset, data, ignore=shutil.ignore_patterns("unlabeled_soundscapes"))
    out = tmp_path / "out"
    manifest = build_holdout(data, HoldoutConfig(seed=0), out, progress=False)
    assert set(manifest["backgrounds"].values()) == {"pink noise"}
    assert len(_solution(out)) == 48 * len(manifest["events"])


def test_a_2025_hold_out_is_one_minute_long_over_its_train_soundscapes(tiny_dataset, tmp_path, monkeypatch):
    from data.layout import validate_layout

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    data = tmp_path / "birdclef-2025"  # 2025 keeps its unlabeled soundscapes in train_soundscapes/
    shutil.copytree(tiny_dataset, data)
    (data / "unlabeled_soundscapes").rename(data / "train_soundscapes")
    scapes = {p.name for p in (data / "train_soundscapes").glob("*.ogg")}
    assert holdout.main(["--data", str(data), "--quiet"]) == 0
    out = Workspace.of(data).holdout_dir
    manifest = json.loads((out / "holdout.json").read_text())
    assert manifest["duration_s"] == 60.0  # as Kaggle's 2025 test soundscapes
    assert len(_solution(out)) == 12 * len(manifest["events"])  # _5 ... _60
    assert set(manifest["backgrounds"].values()) <= scapes and scapes
    assert validate_layout(data, progress=False).unlabeled_soundscapes == len(scapes)


def test_a_rebuilt_hold_out_keeps_the_existing_ones_settings_or_takes_the_competitions_length(tmp_path,
                                                                                               monkeypatch):
    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    data = tmp_path / "birdclef-2025"
    fresh = HoldoutConfig.like_existing(data, seed=3, fraction=0.2)
    assert (fresh.seed, fresh.fraction, fresh.duration_s, fresh.n_soundscapes) == (3, 0.2, 60.0, None)
    assert HoldoutConfig.like_existing(tmp_path / "elsewhere", 3, 0.2, competition="birdclef-2025").duration_s == 60.0
    assert HoldoutConfig.like_existing(tmp_path / "elsewhere", 3, 0.2).duration_s == 240.0
    Workspace.of(data).holdout_dir.mkdir(parents=True)
    (Workspace.of(data).holdout_dir / "holdout.json").write_text(json.dumps(
        {"seed": 0, "fraction": 0.15, "duration_s": 120.0, "n_soundscapes": 2, "snr_db": [0.0, 5.0]}))
    kept = HoldoutConfig.like_existing(data, seed=3, fraction=0.2)
    assert (kept.seed, kept.fraction, kept.duration_s, kept.n_soundscapes, kept.snr_db) == (3, 0.2, 120.0, 2, (0.0, 5.0))


@pytest.mark.parametrize("duration_s", ["7", "0", "-5"])
def test_cli_rejects_a_length_that_is_not_a_positive_number_of_whole_windows(tiny_dataset, capsys, duration_s):
    assert holdout.main(["--data", str(tiny_dataset), "--duration-s", duration_s, "--quiet"]) == 2
    assert f"duration_s must be a positive multiple of 5.0 s, got {float(duration_s)}" in capsys.readouterr().err


# ------------------------------------------------------------------------------ real data
def test_real_recordings_make_scorable_soundscapes(realbirds, tmp_path, monkeypatch, capsys):
    from submission.score import labelled_set

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path))
    assert holdout.main(["--data", str(realbirds), "--quiet"]) == 0
    ws = Workspace.of(realbirds)
    labelled = labelled_set(ws)
    assert labelled.solution == ws.holdout_dir / "solution.csv"
    solution = pd.read_csv(labelled.solution)
    n_scapes = len(list(labelled.soundscapes.glob("*.ogg")))
    assert n_scapes >= 1 and len(solution) == 48 * n_scapes
    assert solution.groupby(solution.row_id.str.rsplit("_", n=1).str[0]).size().eq(48).all()
    assert (solution.iloc[:, 1:].sum() > 0).sum() >= 5  # several classes are scorable
    assert set(labelled.recordings) <= set(holdout_recordings(read_metadata(realbirds), 0.15, 0))
    assert "no held-out recording" in capsys.readouterr().out


def test_a_recording_is_levelled_against_the_background_not_against_calls_placed_before_it():
    sr = holdout.SAMPLE_RATE_HZ
    rng = np.random.default_rng(3)
    background = holdout.pink_noise(20 * sr, rng, rms=0.02)
    t = np.arange(20 * sr) / sr
    earlier = (0.2 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)  # a loud call placed before, everywhere
    track = background + earlier
    recording = rng.normal(0.0, 1e-4, 4 * sr).astype(np.float32)  # a quiet recording around its call
    tt = np.arange(int(1.5 * sr)) / sr
    recording[sr:sr + len(tt)] = 0.5 * np.sin(2 * np.pi * 2500 * tt)
    placed = holdout.place_recording(track, background, recording, "x/a.ogg", "x", HoldoutConfig(snr_db=(6.0, 6.0)),
                                     rng)
    assert placed is not None and placed.snr_db == 6.0
    (ev,) = placed.events
    call = slice(int(round(ev.start_s * sr)), int(round(ev.end_s * sr)))
    start = int(round(placed.start_s * sr))
    local = holdout.band_power(background[start:start + len(recording)])
    added = holdout.band_power((track - background - earlier)[call])
    assert 10 * np.log10(added / local) == pytest.approx(6.0, abs=0.5)
