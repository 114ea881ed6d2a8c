"""The notebook under Kaggle's limits: bad test files still get their rows, the guard keeps the
deadline, ensembles combine models."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from data.audio_io import write_ogg
from data.paths import dist_dir
from export.to_onnx import export_run
from submission.infer import (
    Ensemble, KitModel, RunSettings, levels_for, raw_member_csv, soundscape_features, write_submission,
)
from train.report import finished_runs

SR = 32_000


@pytest.fixture(scope="module")
def model(chain) -> KitModel:
    return KitModel.load(dist_dir() / "dataset" / "model.onnx", threads=1)


def chirps(seconds: float, sr: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * (2000 + 500 * np.sin(2 * np.pi * 0.5 * t)) * t) * (np.sin(2 * np.pi * 0.2 * t) > 0)
    y = (y + 0.01 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)
    return np.stack([y] * channels, axis=1) if channels > 1 else y


@pytest.fixture(scope="module")
def bad_test_folder(tmp_path_factory):
    """One soundscape of each kind a hidden test set could throw at us."""
    d = tmp_path_factory.mktemp("bad") / "test_soundscapes"
    d.mkdir()
    write_ogg(d / "a_good.ogg", chirps(240), SR)
    (d / "b_corrupt.ogg").write_bytes(b"OggS" + bytes(5000))
    (d / "c_empty.ogg").write_bytes(b"")
    write_ogg(d / "d_short.ogg", chirps(60), SR)
    sf.write(d / "e_stereo_44k.wav", chirps(240, 44_100, channels=2), 44_100, subtype="PCM_16")
    nan = chirps(240, 44_100)  # NaNs at another rate: resampling must not hide them
    nan[::7] = np.nan
    sf.write(d / "f_nan.wav", nan, 44_100, subtype="FLOAT")
    return d


# The notebook's two pipelines: feature workers beside the model here, and whole soundscapes in workers.
PIPELINES = {"feature workers": RunSettings(feature_workers=2, soundscape_workers=0),
             "soundscape workers": RunSettings(soundscape_workers=2)}


@pytest.fixture(scope="module", params=list(PIPELINES))
def bad_run(request, model, bad_test_folder, tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad-out") / "submission.csv"
    timing = write_submission(Ensemble([model]), bad_test_folder, tiny_dataset / "sample_submission.csv", out,
                              settings=PIPELINES[request.param])
    return pd.read_csv(out), timing


def rows_of(sub: pd.DataFrame, stem: str) -> pd.DataFrame:
    return sub[sub.row_id.str.rsplit("_", n=1).str[0] == stem]


@pytest.mark.parametrize("stem, n_rows", [("a_good", 48), ("b_corrupt", 48), ("c_empty", 48), ("d_short", 12),
                                          ("e_stereo_44k", 48), ("f_nan", 48)])
def test_every_test_file_gets_its_rows_whatever_its_state(bad_run, stem, n_rows):
    sub, _ = bad_run
    rows = rows_of(sub, stem)
    assert rows.row_id.tolist() == [f"{stem}_{end}" for end in range(5, 5 * n_rows + 1, 5)]
    assert np.isfinite(rows.drop(columns="row_id").to_numpy()).all()


def test_bad_files_are_logged_and_the_run_carries_on(bad_run):
    sub, timing = bad_run
    logged = " ".join(timing.failures)
    assert "b_corrupt.ogg" in logged and "c_empty.ogg" in logged
    assert f"f_nan.wav: {len(range(0, 240 * 44_100, 7))} NaN/inf samples set to 0" in logged
    assert timing.soundscapes == 6
    assert rows_of(sub, "b_corrupt").drop(columns="row_id").to_numpy().max() == 0.0


def test_the_timing_records_when_each_soundscape_was_written_in_order(bad_run):
    _, timing = bad_run
    assert len(timing.done_s) == timing.soundscapes == 6
    assert all(0 < a <= b for a, b in zip(timing.done_s, timing.done_s[1:]))


def test_a_stereo_44k_file_gives_the_features_of_its_mono_mix_at_32k(model, tmp_path):
    import librosa

    y = chirps(30, 44_100)
    side = 3 * np.random.default_rng(1).standard_normal(len(y)).astype(np.float32) * y.std()
    sf.write(tmp_path / "stereo.wav", np.stack([y + side, y - side], axis=1), 44_100, subtype="FLOAT")  # mix = y
    sf.write(tmp_path / "mono.wav", librosa.resample(y, orig_sr=44_100, target_sr=SR, res_type="soxr_hq"), SR,
             subtype="FLOAT")
    sf.write(tmp_path / "left.wav", y + side, 44_100, subtype="FLOAT")  # what taking one channel would give
    stereo, mono, left = (soundscape_features(tmp_path / f"{name}.wav", model.features).feats
                          for name in ("stereo", "mono", "left"))
    assert stereo.shape == mono.shape == (6, *model.features.shape)
    assert np.abs(stereo - mono).max() < 1e-3  # the same up to float16 rounding of the cache format
    assert np.abs(left - mono).mean() > 0.1


def test_a_ten_minute_2023_soundscape_gets_120_rows_up_to_600_s(model, tiny_dataset, tmp_path):
    test_dir = tmp_path / "test_soundscapes"
    test_dir.mkdir()
    write_ogg(test_dir / "soundscape_29201.ogg", chirps(600), SR)  # BirdCLEF 2023's public test file is 10 minutes
    out = tmp_path / "submission.csv"
    write_submission(Ensemble([model]), test_dir, tiny_dataset / "sample_submission.csv", out,
                     settings=RunSettings(feature_workers=0, soundscape_workers=0))
    sub = pd.read_csv(out)
    assert sub["row_id"].tolist() == [f"soundscape_29201_{t}" for t in range(5, 605, 5)]
    assert sub.drop(columns="row_id").to_numpy().std(axis=0).max() > 0  # real predictions, not a constant fill


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_worker_processes_write_the_same_submission_as_one_process(model, bad_test_folder, tiny_dataset, tmp_path,
                                                                    pipeline):
    a, b = tmp_path / "serial.csv", tmp_path / "parallel.csv"
    for out, settings in ((a, RunSettings(feature_workers=0, soundscape_workers=0)), (b, PIPELINES[pipeline])):
        write_submission(Ensemble([model]), bad_test_folder, tiny_dataset / "sample_submission.csv", out,
                         settings=settings)
    pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b), atol=1e-6)


def test_the_guard_steps_down_in_soundscape_workers_too(model, bad_test_folder, tiny_dataset, tmp_path):
    out = tmp_path / "submission.csv"
    timing = write_submission(Ensemble([model]), bad_test_folder, tiny_dataset / "sample_submission.csv", out,
                              settings=RunSettings(deadline_s=0.05, soundscape_workers=2))
    assert len(pd.read_csv(out)) == 48 * 5 + 12
    assert timing.switches and "no model: empty rows" in timing.levels


def test_the_guard_steps_down_to_empty_rows_rather_than_miss_a_tiny_deadline(model, bad_test_folder, tiny_dataset,
                                                                             tmp_path):
    out = tmp_path / "submission.csv"
    timing = write_submission(Ensemble([model]), bad_test_folder, tiny_dataset / "sample_submission.csv", out,
                              settings=RunSettings(deadline_s=0.05, feature_workers=0, soundscape_workers=0))
    sub = pd.read_csv(out)
    assert len(sub) == 48 * 5 + 12  # every soundscape still has its rows
    assert timing.switches and "no model: empty rows" in timing.levels
    assert timing.levels.get("full", 0) >= 1


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_the_guard_stays_at_full_when_the_run_fits_its_deadline(model, tiny_dataset, tmp_path, pipeline):
    """The first soundscape also pays the workers' start-up; taken as the pace it projected a run
    that fits in 40% of its deadline past it, and every later soundscape got empty rows."""
    from dataclasses import replace

    test_dir = tmp_path / "test_soundscapes"
    test_dir.mkdir()
    write_ogg(test_dir / "s00.ogg", chirps(60), SR)
    for i in range(1, 10):
        (test_dir / f"s{i:02d}.ogg").write_bytes((test_dir / "s00.ogg").read_bytes())
    sub, out = tiny_dataset / "sample_submission.csv", tmp_path / "submission.csv"
    unhurried = write_submission(Ensemble([model]), test_dir, sub, out,
                                 settings=replace(PIPELINES[pipeline], deadline_s=3600))
    needed_s = unhurried.done_s[-1]
    timing = write_submission(Ensemble([model]), test_dir, sub, out,
                              settings=replace(PIPELINES[pipeline], deadline_s=needed_s / 0.4))
    assert timing.switches == [] and timing.levels == {"full": 10}
    assert pd.read_csv(out).drop(columns="row_id").to_numpy().max() > 0  # real predictions to the last row


def test_the_deadline_counts_from_the_notebooks_first_cell_not_from_the_first_soundscape(chain, tiny_dataset,
                                                                                          tmp_path, monkeypatch):
    import json
    import time

    from submission.infer import run_notebook

    competition = tmp_path / "input" / "birdclef-2024"
    (competition / "test_soundscapes").mkdir(parents=True)
    (competition / "sample_submission.csv").write_bytes((tiny_dataset / "sample_submission.csv").read_bytes())
    for i in range(3):
        write_ogg(competition / "test_soundscapes" / f"s{i}.ogg", chirps(20), SR)
    kit_dir = dist_dir() / "dataset"
    deadline_s = json.loads((kit_dir / "birdkit.json").read_text())["runtime"]["deadline_s"]
    monkeypatch.setenv("BIRDKIT_SOUNDSCAPE_WORKERS", "0")  # one soundscape at a time: each sees the guard's level
    monkeypatch.setenv("BIRDKIT_FEATURE_WORKERS", "0")
    # set-up (wheels, models) has already taken all of Kaggle's time: the guard must know
    run_notebook(kit_dir, tmp_path / "input", tmp_path / "working", started_at=time.time() - deadline_s)
    timing = json.loads((tmp_path / "working" / "timing.json").read_text())
    assert timing["switches"] and timing["levels"].get("no model: empty rows", 0) >= 1
    assert len(pd.read_csv(tmp_path / "working" / "submission.csv")) == 3 * 4  # every soundscape still has its rows


def test_the_guard_has_cheaper_levels_for_ensembles_and_denoised_features(model):
    from dataclasses import replace

    denoised = replace(model, features=replace(model.features, denoise="spectral"), name="slow")
    names = [lvl.name for lvl in levels_for(Ensemble([denoised, replace(denoised, name="fast", ms_per_window=0.0)]))]
    assert names == ["full", "fastest model only (fast)", "fast without denoise", "no model: empty rows"]


@pytest.fixture(scope="module")
def other(chain, model, tmp_path_factory) -> KitModel:
    """The chain's other run, exported: a second ensemble member."""
    other_run = next(Path(r["dir"]) for r in finished_runs(chain.runs_dir) if Path(r["dir"]).name != model.meta["run"])
    out = tmp_path_factory.mktemp("other")
    export_run(other_run, out)
    return KitModel.load(out / "model.onnx", threads=1)


def test_an_ensemble_averages_or_takes_the_minimum_of_its_models(model, other):
    feats = np.random.default_rng(0).random((5, *model.features.shape), dtype=np.float32)
    a, b = model.predict(feats), other.predict(feats)
    assert np.allclose(Ensemble([model, other]).predict(feats), (a + b) / 2, atol=1e-6)
    assert np.allclose(Ensemble([model, other], combine="min").predict(feats), np.minimum(a, b))


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_an_ensembles_raw_output_keeps_each_members_own_probabilities(model, other, bad_test_folder, tiny_dataset,
                                                                      tmp_path, pipeline):
    sample = tiny_dataset / "sample_submission.csv"
    raw = tmp_path / "raw.csv"
    write_submission(Ensemble([model, other]), bad_test_folder, sample, tmp_path / "sub.csv", raw_csv=raw,
                     settings=PIPELINES[pipeline])
    members = []
    for k, m in enumerate([model, other]):
        write_submission(Ensemble([m]), bad_test_folder, sample, tmp_path / f"alone-{k}.csv",
                         settings=PIPELINES[pipeline])
        alone, kept = pd.read_csv(tmp_path / f"alone-{k}.csv"), pd.read_csv(raw_member_csv(raw, k))
        assert kept.row_id.tolist() == alone.row_id.tolist()
        assert np.allclose(kept.iloc[:, 1:], alone.iloc[:, 1:], atol=1e-6)  # what the member gives alone
        members.append(kept.iloc[:, 1:].to_numpy())
    assert np.abs(members[0] - members[1]).max() > 1e-3  # two different models
    combined = pd.read_csv(raw).iloc[:, 1:].to_numpy()
    assert np.allclose(combined, (members[0] + members[1]) / 2, atol=1e-5)
    assert len(combined) == 48 * 5 + 12  # the bad files got their (zero) rows from both members too


def test_models_that_disagree_on_classes_cannot_form_an_ensemble(model):
    from dataclasses import replace

    with pytest.raises(ValueError, match="differ in classes or features"):
        Ensemble([model, replace(model, classes=list(reversed(model.classes)), name="flipped")])


def test_by_default_only_fast_models_run_in_whole_soundscape_workers():
    import os

    from submission.infer import POOL_MAX_MS_PER_WINDOW

    auto = RunSettings()
    assert auto.parallel_soundscapes(slowest_ms_per_window=1.3) == os.cpu_count()  # simple_cnn-like: one per core
    # inception-like: features beside it
    assert auto.parallel_soundscapes(slowest_ms_per_window=POOL_MAX_MS_PER_WINDOW + 15) == 0
    assert RunSettings(soundscape_workers=3).parallel_soundscapes(slowest_ms_per_window=100.0) == 3


def test_an_ensemble_of_fast_models_runs_in_whole_soundscape_workers_though_their_sum_is_slow(model):
    from dataclasses import replace

    from submission.infer import POOL_MAX_MS_PER_WINDOW

    fast = [replace(model, name=f"m{i}", ms_per_window=0.8 * POOL_MAX_MS_PER_WINDOW) for i in range(3)]
    ensemble = Ensemble(fast)
    assert ensemble.ms_per_window > POOL_MAX_MS_PER_WINDOW
    assert ensemble.slowest_ms_per_window == pytest.approx(0.8 * POOL_MAX_MS_PER_WINDOW)
    slow = Ensemble([*fast, replace(model, name="slow", ms_per_window=2 * POOL_MAX_MS_PER_WINDOW)])
    assert RunSettings().parallel_soundscapes(ensemble.slowest_ms_per_window) > 0
    assert RunSettings().parallel_soundscapes(slow.slowest_ms_per_window) == 0


def test_the_guard_paces_the_last_window_of_soundscapes_and_steps_down_once_the_projection_passes_the_deadline(
        monkeypatch):
    import submission.infer as infer
    from submission.infer import Guard, Level

    clock = iter([10.0, 20.0, 30.0])
    monkeypatch.setattr(infer.time, "perf_counter", lambda: next(clock))
    guard = Guard(deadline_s=100.0, n_total=10, levels=[Level("full", None, None), Level("cheap", None, None)],
                  window=2, t0=0.0)
    guard.record(1)  # at 10 s
    guard.record(2)  # at 20 s: no window finished yet, 20 s < 95 s
    assert guard.level == 0 and guard.pace_s() is None
    guard.record(3)  # at 30 s: 10 s per soundscape, 30 + 7 * 10 = 100 s > 95% of 100 s
    assert guard.level == 1
    assert guard.switches == ["after 3 soundscapes, 30 s: projected 1.7 min > deadline 1.7 min -> cheap"]


def test_the_notebook_finds_the_kit_in_kaggles_newer_datasets_owner_slug_mount(tmp_path, monkeypatch):
    from submission import notebook

    kit = tmp_path / "input" / "datasets" / "tester" / "birdclef-kit-model"  # /kaggle/input/datasets/<owner>/<slug>
    kit.mkdir(parents=True)
    (kit / "birdkit.json").write_text("{}")
    monkeypatch.setenv("BIRDKIT_INPUT_DIR", str(tmp_path / "input"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    cell: dict = {}
    exec(notebook.LOCATE, cell)
    assert cell["kit_dir"] == kit
    assert sys.path[0] == str(kit / "code")
