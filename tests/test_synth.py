"""The synthetic dataset: Kaggle's layout, consistent labels, determinism, and cheap reruns."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from data import synth
from data.layout import METADATA_COLUMNS, parse_list, validate_layout

SMALL = dict(n_species=4, recordings_per_species=3, n_test_soundscapes=1, n_unlabeled=1,
             soundscape_s=240.0, unlabeled_s=20.0, progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synth.generate(tmp_path_factory.mktemp("a") / "sample", seed=0, **SMALL)


@pytest.fixture(scope="module")
def same_seed(tmp_path_factory):
    return synth.generate(tmp_path_factory.mktemp("b") / "sample", seed=0, **SMALL)


@pytest.fixture(scope="module")
def other_seed(tmp_path_factory):
    return synth.generate(tmp_path_factory.mktemp("c") / "sample", seed=1, **SMALL)


def _meta(data_dir) -> pd.DataFrame:
    return pd.read_csv(data_dir / "train_metadata.csv", keep_default_na=False)


def _classes(data_dir) -> list[str]:
    return pd.read_csv(data_dir / "sample_submission.csv", nrows=0).columns[1:].tolist()


def _solution(data_dir) -> pd.DataFrame:
    return pd.read_csv(synth.solution_path(data_dir))


def _decoded(data_dir) -> dict[str, np.ndarray]:
    return {p.relative_to(data_dir).as_posix(): sf.read(p, dtype="float32")[0]
            for p in sorted(data_dir.rglob("*.ogg"))}


def test_generated_dataset_has_kaggle_layout(dataset):
    names = {p.name for p in dataset.iterdir()}
    assert {"train_audio", "train_metadata.csv", "eBird_Taxonomy_v2021.csv", "sample_submission.csv",
            "unlabeled_soundscapes", "test_soundscapes"} <= names
    assert len(list((dataset / "test_soundscapes").glob("soundscape_*.ogg"))) == 1
    assert len(list((dataset / "unlabeled_soundscapes").glob("soundscape_*.ogg"))) == 1
    assert all(re.fullmatch(r"soundscape_\d{6}\.ogg", p.name) for p in dataset.rglob("soundscape_*"))


def test_metadata_header_is_exactly_kaggles(dataset):
    header = (dataset / "train_metadata.csv").read_text().splitlines()[0]
    assert header == ",".join(METADATA_COLUMNS)
    assert header == ("primary_label,secondary_labels,type,latitude,longitude,scientific_name,"
                      "common_name,author,license,rating,url,filename")


def test_metadata_rows_describe_their_recordings(dataset):
    meta = _meta(dataset)
    classes = _classes(dataset)
    assert len(meta) == 4 * 3
    assert sorted(meta["primary_label"].unique()) == classes
    assert all(re.fullmatch(r"[a-z]{6,7}\d?", c) for c in classes)
    assert (meta["filename"] == meta["primary_label"] + "/" + meta["filename"].str.split("/").str[1]).all()
    assert meta["filename"].str.fullmatch(r"[a-z]{6,7}\d?/XC\d+\.ogg").all()
    assert meta["filename"].is_unique
    assert meta["rating"].between(0, 5).all()
    assert meta["latitude"].between(-90, 90).all() and meta["longitude"].between(-180, 180).all()
    assert set(meta["author"]) == {"synthetic"} and set(meta["license"]) == {"CC0"}


def test_secondary_labels_and_type_are_python_lists_of_known_names(dataset):
    meta = _meta(dataset)
    classes = set(_classes(dataset))
    for primary, secondary, types in zip(meta["primary_label"], meta["secondary_labels"], meta["type"]):
        assert secondary.startswith("[") and types.startswith("[")
        assert set(parse_list(secondary)) <= classes - {primary}
        assert parse_list(types) and set(parse_list(types)) <= {"call", "song", "drumming"}
    assert any(parse_list(s) for s in meta["secondary_labels"]), "some recording holds a second species"


def test_taxonomy_lists_every_class_once(dataset):
    taxonomy = pd.read_csv(dataset / "eBird_Taxonomy_v2021.csv", keep_default_na=False)
    assert taxonomy.columns.tolist() == synth.TAXONOMY_COLUMNS
    assert sorted(taxonomy["SPECIES_CODE"]) == _classes(dataset)


def test_sample_submission_is_one_fake_soundscape_at_uniform_scores(dataset):
    sub = pd.read_csv(dataset / "sample_submission.csv")
    assert sub["row_id"].tolist() == [f"soundscape_000000_{5 * i}" for i in range(1, 49)]
    assert _classes(dataset) == sorted(_classes(dataset))
    np.testing.assert_allclose(sub.iloc[:, 1:].to_numpy(), 1 / 4)


def test_every_metadata_row_has_a_readable_file_and_vice_versa(dataset):
    report = validate_layout(dataset, progress=False)
    assert report.rows_without_file == []
    assert report.files_without_row == []
    assert report.unreadable == []
    assert report.recordings == 12 and report.species == 4
    assert report.test_soundscapes == 1 and report.unlabeled_soundscapes == 1


def test_audio_is_32_khz_mono_ogg_and_some_recordings_are_shorter_than_a_window(dataset):
    durations_s = []
    for path in sorted(dataset.rglob("*.ogg")):
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.format, info.subtype) == (32_000, 1, "OGG", "VORBIS")
        if "train_audio" in path.parts:
            durations_s.append(info.frames / info.samplerate)
    assert min(durations_s) < 5.0 < max(durations_s)
    assert all(1.0 < d <= 25.0 for d in durations_s)


def test_audio_stays_within_full_scale_and_is_not_silent(dataset):
    for name, y in _decoded(dataset).items():
        assert np.isfinite(y).all(), name
        assert 0.1 < np.abs(y).max() <= 1.0, name


def test_test_soundscape_lasts_exactly_240_s_and_its_solution_has_48_windows(dataset):
    (scape,) = sorted((dataset / "test_soundscapes").glob("*.ogg"))
    info = sf.info(str(scape))
    assert info.frames == 240 * 32_000
    solution = _solution(dataset)
    assert solution["row_id"].tolist() == [f"{scape.stem}_{5 * i}" for i in range(1, 49)]
    assert solution.columns.tolist() == pd.read_csv(dataset / "sample_submission.csv", nrows=0).columns.tolist()
    assert set(np.unique(solution.iloc[:, 1:].to_numpy())) <= {0, 1}


def test_solution_is_written_beside_the_dataset_not_inside_it(dataset):
    assert synth.solution_path(dataset) == dataset.parent / "sample_solution.csv"
    assert synth.solution_path(dataset).is_file()
    assert not list(dataset.rglob("*solution*"))


def test_every_class_is_heard_in_the_test_soundscapes_and_some_windows_overlap(dataset):
    labels = _solution(dataset).iloc[:, 1:]
    assert (labels.sum(axis=0) > 0).all(), labels.sum(axis=0).to_dict()
    assert (labels.sum(axis=1) >= 2).sum() > 0
    assert (labels.sum(axis=1) == 0).sum() > 0, "some windows hold no bird"


def test_same_seed_gives_identical_tables_and_decoded_audio(dataset, same_seed):
    for name in ("train_metadata.csv", "eBird_Taxonomy_v2021.csv", "sample_submission.csv"):
        assert (dataset / name).read_bytes() == (same_seed / name).read_bytes(), name
    assert synth.solution_path(dataset).read_bytes() == synth.solution_path(same_seed).read_bytes()
    a, b = _decoded(dataset), _decoded(same_seed)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_another_seed_gives_different_audio(dataset, other_seed):
    assert _classes(dataset) == _classes(other_seed)
    a = sf.read(next((dataset / "test_soundscapes").glob("*.ogg")))[0]
    b = sf.read(next((other_seed / "test_soundscapes").glob("*.ogg")))[0]
    assert len(a) == len(b) and not np.allclose(a, b)
    assert _meta(dataset)["filename"].tolist() != _meta(other_seed)["filename"].tolist()


def test_rerunning_with_the_same_parameters_is_a_no_op(dataset, capsys):
    marker = dataset / "synth.json"
    before = {p: p.stat().st_mtime_ns for p in [marker, *dataset.rglob("*.ogg"), synth.solution_path(dataset)]}
    assert synth.generate(dataset, seed=0, **SMALL) == dataset
    assert "up to date" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert json.loads(marker.read_text())["params"]["seed"] == 0


def test_changed_parameters_regenerate_in_place(tmp_path):
    out = tmp_path / "tiny"
    small = dict(SMALL, n_species=2, recordings_per_species=1, n_test_soundscapes=1, n_unlabeled=0, soundscape_s=10.0)
    synth.generate(out, seed=0, **small)
    (out / "stale.txt").write_text("from an older copy")
    synth.generate(out, seed=0, **dict(small, n_species=3))
    assert not (out / "stale.txt").exists()
    assert len(_classes(out)) == 3 and len(_meta(out)) == 3
    assert _solution(out).shape == (2, 4)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp folder is left"


def test_a_folder_it_did_not_write_is_never_replaced(tmp_path):
    foreign = tmp_path / "birdclef-2024"
    foreign.mkdir()
    (foreign / "train_metadata.csv").write_text("real data")
    with pytest.raises(ValueError, match="not a synthetic dataset"):
        synth.generate(foreign, **dict(SMALL, n_species=1, recordings_per_species=1, n_test_soundscapes=0, n_unlabeled=0))
    assert (foreign / "train_metadata.csv").read_text() == "real data"


def test_invalid_parameters_are_refused(tmp_path):
    with pytest.raises(ValueError, match="multiple of 5"):
        synth.generate(tmp_path / "x", soundscape_s=242.0, progress=False)
    with pytest.raises(ValueError, match="n_species"):
        synth.generate(tmp_path / "x", n_species=0, progress=False)
    assert not (tmp_path / "x").exists()


def test_species_models_pair_up_by_band_and_by_shape():
    catalogue = {sp.code: sp for sp in synth.species_list(12)}
    rising, falling, alpine = catalogue["risswe1"], catalogue["falswe1"], catalogue["alpswe1"]
    assert (rising.low_hz, rising.high_hz) == (falling.low_hz, falling.high_hz) and rising.shape != falling.shape
    assert falling.shape == alpine.shape and falling.high_hz < alpine.low_hz
    variants = synth.species_list(synth.MAX_SPECIES)
    assert len({sp.code for sp in variants}) == synth.MAX_SPECIES
    assert all(100 < sp.low_hz < sp.high_hz < 15_000 for sp in variants)


def test_the_command_line_writes_what_its_flags_ask_for_and_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "mini"
    assert synth.main(["--out", str(out), "--seed", "3", "--species", "2", "--recordings", "2", "--test-soundscapes",
                       "1", "--unlabeled", "0", "--soundscape-s", "10", "--quiet"]) == 0
    meta = pd.read_csv(out / "train_metadata.csv")
    assert meta.primary_label.nunique() == 2 and len(meta) == 4
    sounds = sorted((out / "test_soundscapes").glob("*.ogg"))
    assert len(sounds) == 1
    assert pd.read_csv(tmp_path / "mini_solution.csv").row_id.tolist() == [f"{sounds[0].stem}_5", f"{sounds[0].stem}_10"]
    assert list((out / "unlabeled_soundscapes").glob("*.ogg")) == []
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own data")
    assert synth.main(["--out", str(mine), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"error: {mine} exists and is not a synthetic dataset (no synth.json): "
                                       "refusing to replace it; choose another --out\n")
    assert (mine / "notes.txt").read_text() == "my own data"


def test_each_call_event_of_a_synthetic_soundscape_covers_the_sound_of_its_phrase(monkeypatch):
    from data import synth

    monkeypatch.setattr(synth, "_background", lambda n, rng: np.zeros(n, np.float32))  # the calls alone
    monkeypatch.setattr(synth, "_level_drift", lambda n, rng, **kw: np.ones(n, np.float32))
    sr = synth.SAMPLE_RATE_HZ
    y, events = synth._soundscape_audio(60.0, synth.species_list(2), np.random.default_rng(0))

    labelled = np.zeros(len(y), bool)
    for e in events:
        start, end = int(round(e.start_s * sr)), int(round(e.end_s * sr))
        assert np.abs(y[start:end]).max() > 0.01, e  # something sounds inside every event
        labelled[start:end] = True
    assert len(events) >= 4 and np.abs(y[~labelled]).max() == 0  # and nothing outside them
