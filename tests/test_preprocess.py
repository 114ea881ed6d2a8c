"""The feature cache: complete, memory-mapped, resumable, and never fatal on a bad file."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.features import FeatureConfig, file_to_features
from data.layout import LayoutError, read_metadata
from data.preprocess import FeatureCache, PreprocessConfig, cache_dir_for, cache_is_current, ensure_cache, preprocess, read_entries

REPO = Path(__file__).resolve().parents[1]


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def cached_features(cache_dir: Path) -> dict[str, np.ndarray]:
    cache = FeatureCache.open(cache_dir)
    return {f: np.asarray(cache.windows[list(cache.rows_of(f))]) for f in cache.entries.index}


def test_the_cache_holds_every_window_of_every_recording_equal_to_the_features(tiny_dataset):
    cache_dir = preprocess(PreprocessConfig(tiny_dataset, workers=2, progress=False))
    cache = FeatureCache.open(cache_dir)
    meta = read_metadata(tiny_dataset)
    assert sorted(cache.entries.index) == sorted(meta.filename)
    assert cache.windows.shape == (int(cache.entries.n_windows.sum()), 128, 313)
    first = meta.filename[0]
    expected = file_to_features(tiny_dataset / "train_audio" / first, FeatureConfig())
    assert np.array_equal(np.asarray(cache.windows[list(cache.rows_of(first))], np.float32), expected)
    assert cache_is_current(cache_dir, tiny_dataset)


def test_a_second_run_skips_what_is_done(tiny_dataset, capsys):
    cfg = PreprocessConfig(tiny_dataset, workers=1, progress=False)
    cache_dir = preprocess(cfg)
    before = (cache_dir / "features.f16").read_bytes()
    capsys.readouterr()
    preprocess(cfg)
    out = capsys.readouterr().out
    n = len(read_metadata(tiny_dataset))
    assert f"{n} recordings, {n} already cached" in out
    assert (cache_dir / "features.f16").read_bytes() == before


def test_a_killed_run_resumes_to_the_same_cache_as_an_uninterrupted_one(tiny_dataset, tmp_path):
    data = copy_dataset(tiny_dataset, tmp_path / "killme")
    env = {**os.environ, "BIRDKIT_ROOT": str(tmp_path / "root")}
    cmd = [sys.executable, "-m", "data.preprocess", "--data", str(data), "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    entries = tmp_path / "root" / "data" / "cache" / "killme" / FeatureConfig().fingerprint() / "entries.csv"
    deadline = time.time() + 60
    while time.time() < deadline and (not entries.exists() or entries.read_text().count("\n") < 4):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = entries.read_text().count("\n") - 1
    assert 3 <= committed < len(read_metadata(data)), "the kill should land mid-run"
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resumed = cached_features(entries.parent)
    clean = cached_features(preprocess(PreprocessConfig(tiny_dataset, workers=1, progress=False)))
    assert resumed.keys() == clean.keys()
    assert all(np.array_equal(resumed[k], clean[k]) for k in clean)
    rows = read_entries(entries.parent)
    assert rows.filename.is_unique
    assert (entries.parent / "features.f16").stat().st_size == rows.n_windows.sum() * 128 * 313 * 2


def test_unreadable_and_missing_files_are_skipped_with_a_reason_not_fatal(tiny_dataset, tmp_path, capsys):
    data = copy_dataset(tiny_dataset, tmp_path / "broken")
    meta = read_metadata(data)
    corrupt, missing = meta.filename[0], meta.filename[1]
    (data / "train_audio" / corrupt).write_bytes(b"not audio at all")
    (data / "train_audio" / missing).unlink()
    cache_dir = preprocess(PreprocessConfig(data, workers=1, progress=False))
    out = capsys.readouterr().out
    entries = read_entries(cache_dir).set_index("filename")
    assert entries.loc[corrupt, "status"] == "skipped" and "unreadable audio" in entries.loc[corrupt, "detail"]
    assert entries.loc[missing, "status"] == "missing"
    assert (entries.status == "ok").sum() == len(meta) - 2
    assert "2 recording(s) skipped" in out and corrupt in out


def test_a_changed_metadata_makes_the_cache_stale_and_only_new_recordings_are_processed(tiny_dataset, tmp_path, capsys):
    data = copy_dataset(tiny_dataset, tmp_path / "growing")
    meta = pd.read_csv(data / "train_metadata.csv")
    meta.iloc[:-1].to_csv(data / "train_metadata.csv", index=False)
    cfg = PreprocessConfig(data, workers=1, progress=False)
    cache_dir = ensure_cache(cfg)
    meta.to_csv(data / "train_metadata.csv", index=False)  # one more recording
    assert not cache_is_current(cache_dir, data)
    capsys.readouterr()
    ensure_cache(cfg)
    out = capsys.readouterr().out
    assert "missing or stale" in out and f"{len(meta) - 1} already cached" in out
    assert cache_is_current(cache_dir, data)
    assert len(FeatureCache.open(cache_dir).entries) == len(meta)


def test_denoised_features_get_their_own_cache(tiny_dataset):
    plain = cache_dir_for(tiny_dataset, FeatureConfig())
    denoised = cache_dir_for(tiny_dataset, FeatureConfig(denoise=True))
    assert plain != denoised and plain.parent == denoised.parent


def test_shards_computed_apart_merge_into_the_same_cache_as_one_run(tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "sharded"))
    for i in range(3):  # three "machines"
        shard_dir = preprocess(PreprocessConfig(tiny_dataset, workers=1, progress=False, shard=(i, 3)))
        assert shard_dir.parent.name == "shards" and shard_dir.name == f"{i}-of-3"
    shard_sizes = [len(read_entries(d)) for d in sorted(shard_dir.parent.iterdir())]
    assert sum(shard_sizes) == len(read_metadata(tiny_dataset)) and min(shard_sizes) > 0
    capsys.readouterr()
    merged_dir = preprocess(PreprocessConfig(tiny_dataset, workers=1, progress=False))
    out = capsys.readouterr().out
    assert "merged" in out and "0 already cached" not in out
    assert not (merged_dir / "shards").exists() or not any((merged_dir / "shards").iterdir())
    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "whole"))
    whole = cached_features(preprocess(PreprocessConfig(tiny_dataset, workers=1, progress=False)))
    merged = cached_features(merged_dir)
    assert merged.keys() == whole.keys()
    assert all(np.array_equal(merged[k], whole[k]) for k in whole)


def test_a_malformed_shard_is_refused_with_the_expected_form():
    from data.preprocess import parse_shard

    assert parse_shard("1/4") == (1, 4)
    with pytest.raises(SystemExit, match="--shard takes i/n"):
        parse_shard("half")
    with pytest.raises(SystemExit, match="need 0 <= i < n"):
        parse_shard("4/4")


def test_a_torn_last_line_of_the_journal_is_dropped_and_the_next_recording_starts_a_line_of_its_own(tmp_path):
    from data.preprocess import CacheWriter

    cfg = FeatureConfig(n_mels=4, window_s=0.1)  # rows of [4, 7]

    def rows(n: int, value: float) -> np.ndarray:
        return np.full((n, *cfg.shape), value, np.float32)

    cache = tmp_path / "cache"
    writer = CacheWriter(cache, cfg)
    writer.add("a.ogg", "ok", rows(2, 0.25))
    writer.add("b.ogg", "ok", rows(1, 0.5))
    writer.close()
    with open(cache / "entries.csv", "a") as f:  # a run killed while it wrote c.ogg's line
        f.write("c.ogg,ok,3")
    with open(cache / "features.f16", "ab") as f:  # ... after c.ogg's rows
        f.write(np.zeros((1, *cfg.shape), np.float16).tobytes())

    writer = CacheWriter(cache, cfg)
    assert writer.done == {"a.ogg", "b.ogg"} and writer.n_rows == 3
    writer.add("c.ogg", "ok", rows(1, 0.75))
    writer.close()
    entries = read_entries(cache)
    assert entries.filename.tolist() == ["a.ogg", "b.ogg", "c.ogg"]
    assert entries.first_row.tolist() == [0, 2, 3] and entries.n_windows.tolist() == [2, 1, 1]
    read = FeatureCache.open(cache)
    assert np.asarray(read.windows[list(read.rows_of("c.ogg"))], np.float32).tolist() == rows(1, 0.75).tolist()
    assert (cache / "features.f16").stat().st_size == 4 * 4 * 7 * 2


def test_a_new_version_of_the_feature_code_gets_a_new_cache_fingerprint(monkeypatch):
    import data.features as features

    v1 = FeatureConfig().fingerprint()
    monkeypatch.setattr(features, "FEATURES_VERSION", features.FEATURES_VERSION + 1)
    assert FeatureConfig().fingerprint() != v1  # changed code, same fields: the old cache must not be reused
    monkeypatch.undo()
    assert FeatureConfig().fingerprint() == v1
    for change in ({"n_mels": 64}, {"fmin_hz": 50.0}, {"hop_length": 256}, {"top_db": 60.0}, {"min_tail_s": 2.0}):
        assert FeatureConfig(**change).fingerprint() != v1, change


def test_progress_false_draws_no_progress_bar(tiny_dataset, tmp_path, capsys):
    import shutil

    from data.preprocess import PreprocessConfig, preprocess

    data = tmp_path / "quiet"
    shutil.copytree(tiny_dataset, data)
    capsys.readouterr()
    preprocess(PreprocessConfig(data, workers=1, progress=False))
    captured = capsys.readouterr()
    assert "features:" not in captured.err and "rec/s" not in captured.err and "windows=" not in captured.err
    assert "recordings ->" in captured.out


# ---------------------------------------------------------------- a new user's mistakes, refused without a traceback


def tiny_layout(folder: Path, header: str = "primary_label,secondary_labels,filename",
                rows: tuple[str, ...] = ("falswe1,[],falswe1/XC1.ogg",)) -> Path:
    """The Kaggle layout with no audio in it: enough for every refusal that comes before decoding."""
    (folder / "train_audio").mkdir(parents=True)
    (folder / "train_metadata.csv").write_text("\n".join([header, *rows]) + "\n")
    species = sorted({r.split(",")[0] for r in rows if r.split(",")[0]}) or ["falswe1"]
    (folder / "sample_submission.csv").write_text(",".join(["row_id", *species]) + "\n")  # as Kaggle's agree
    return folder


def layout_fault(tmp_path: Path, fault: str) -> tuple[Path, str]:
    """A dataset folder with one layout fault, and the refusal it must get."""
    data = tmp_path / fault
    if fault == "no folder":
        return data, (f"DATA={data} does not exist: check the path, or download a competition into it with `make data "
                      f"DATA={data} COMPETITION=<slug>` (a folder named after the competition, e.g. data/birdclef-2024, "
                      "needs no COMPETITION), run `make sample` for the embedded sample, or point DATA= at a folder in "
                      "the Kaggle layout.")
    tiny_layout(data, header="species,secondary_labels,filename" if fault == "no primary_label" else
                "primary_label,secondary_labels,filename")
    if fault in ("no train_audio", "no sample_submission.csv"):
        missing = fault.removeprefix("no ")
        shutil.rmtree(data / missing) if missing == "train_audio" else (data / missing).unlink()
        return data, (f"DATA={data} is not in the Kaggle BirdCLEF layout: it lacks {missing}. Point DATA at the "
                      "folder that holds them, restore what is missing from the competition's zip (make data "
                      "DATA=... DATA_ARGS=--force downloads it again), or run `make sample` for the embedded sample.")
    if fault == "a file":
        return data / "train_metadata.csv", (f"DATA={data / 'train_metadata.csv'} is a file, not a folder: point "
                                             "DATA at the dataset folder that holds train_audio/, the metadata and "
                                             f"sample_submission.csv (DATA={data}?)")
    if fault == "its parent":
        return data.parent, (f"DATA={data.parent} is not in the Kaggle BirdCLEF layout: it lacks train_audio, "
                             "train_metadata.csv or train.csv, sample_submission.csv. "
                             f"{data} is a dataset: did you mean DATA={data}?")
    return data, (f"{data / 'train_metadata.csv'} lacks the column(s) ['primary_label']: the kit reads Kaggle's "
                  "comma-separated metadata, with primary_label (the species) and filename (under train_audio/); its "
                  "header reads ['species', 'secondary_labels', 'filename']")


LAYOUT_FAULTS = ["no folder", "no train_audio", "no sample_submission.csv", "no primary_label", "a file", "its parent"]


@pytest.mark.parametrize("fault", LAYOUT_FAULTS)
def test_preprocess_refuses_a_dataset_not_in_the_kaggle_layout_with_its_error_and_exit_code_1(fault, tmp_path, capsys):
    from data.preprocess import main as preprocess_main

    data, message = layout_fault(tmp_path, fault)
    assert preprocess_main(["--data", str(data), "--no-progress"]) == 1
    assert capsys.readouterr().err == f"error: {message}\n"


@pytest.mark.parametrize("fault", LAYOUT_FAULTS)
def test_bench_train_refuses_a_dataset_not_in_the_kaggle_layout_with_its_error_and_exit_code_1(fault, tmp_path,
                                                                                                monkeypatch, capsys):
    from bench.train import main as bench_train_main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    data, message = layout_fault(tmp_path, fault)
    assert bench_train_main(["--data", str(data), "--models", "simple_cnn", "--device", "cpu"]) == 1
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "root" / "bench" / "out" / "train_scratch").exists()  # nothing left behind


def test_a_metadata_with_a_header_and_no_rows_is_refused_by_preprocess_and_train(tmp_path, monkeypatch, capsys):
    from data.preprocess import main as preprocess_main
    from train.__main__ import main as train_main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    data = tiny_layout(tmp_path / "header_only", rows=())
    message = (f"error: {data / 'train_metadata.csv'} has no rows: it names no recording to train on. Restore the "
               "competition's file (`make data` downloads and checks it) or add one row per file under train_audio/\n")
    assert preprocess_main(["--data", str(data), "--no-progress"]) == 1
    assert capsys.readouterr().err == message
    assert train_main(["--data", str(data), "--models", "simple_cnn", "--device", "cpu"]) == 1
    assert capsys.readouterr().err == message
    assert not (tmp_path / "root").exists()  # refused before a cache or a run folder was made


def test_a_metadata_whose_filenames_miss_the_species_folder_is_told_where_the_files_are(tmp_path, monkeypatch, capsys):
    from data.preprocess import main as preprocess_main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    data = tiny_layout(tmp_path / "flat_names", rows=("falswe1,[],XC1.ogg", "sptril1,[],XC3.ogg"))
    (data / "train_audio" / "falswe1").mkdir()
    (data / "train_audio" / "falswe1" / "XC1.ogg").write_bytes(b"")  # where Kaggle puts it
    cache_dir = cache_dir_for(data, FeatureConfig())

    assert preprocess_main(["--data", str(data), "--workers", "1", "--no-progress"]) == 1

    assert capsys.readouterr().err == (
        f"error: none of the 2 files that {data}'s metadata names exists under {data / 'train_audio'} (the first: "
        "XC1.ogg (falswe1/XC1.ogg is there)): the filename column is relative to train_audio/, "
        f"<primary_label>/<file>.ogg in Kaggle's data. Fix the column or put the files there, then delete {cache_dir} "
        "and rerun\n")


def test_a_dataset_whose_every_recording_is_unreadable_is_refused_by_preprocess_train_and_floor(tmp_path, monkeypatch,
                                                                                                 capsys):
    from bench.floor import main as floor_main
    from data.preprocess import main as preprocess_main
    from train.__main__ import main as train_main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    data = tiny_layout(tmp_path / "all_bad", rows=("falswe1,[],falswe1/XC1.ogg", "falswe1,[],falswe1/XC2.ogg",
                                                   "sptril1,[],sptril1/XC3.ogg"))  # two species: a lone one is refused sooner
    (data / "train_audio" / "falswe1").mkdir()
    (data / "train_audio" / "falswe1" / "XC1.ogg").write_bytes(b"not audio at all")
    (data / "train_audio" / "falswe1" / "XC2.ogg").write_bytes(b"")  # XC3.ogg is missing
    cache_dir = cache_dir_for(data, FeatureConfig())
    message = (f"error: all 3 recordings of {data} are unreadable, 1 of them missing (reasons in "
               f"{cache_dir / 'entries.csv'}), so there is nothing to train on: check the files under "
               f"{data / 'train_audio'} (an interrupted copy or unzip? `make data` checks a download), then delete "
               f"{cache_dir} and rerun\n")
    assert preprocess_main(["--data", str(data), "--workers", "1", "--no-progress"]) == 1
    assert capsys.readouterr().err == message
    statuses = read_entries(cache_dir).set_index("filename").status.to_dict()
    assert statuses == {"falswe1/XC1.ogg": "skipped", "falswe1/XC2.ogg": "skipped", "sptril1/XC3.ogg": "missing"}
    assert not (cache_dir / "complete.json").exists()  # so every later stage asks again, and is refused again
    assert train_main(["--data", str(data), "--models", "simple_cnn", "--device", "cpu"]) == 1
    assert capsys.readouterr().err == message
    assert floor_main(["--data", str(data), "--no-progress"]) == 1
    assert capsys.readouterr().err == message


def test_an_empty_primary_label_is_refused_by_preprocess_and_train_naming_its_lines_and_files(tmp_path, monkeypatch,
                                                                                               capsys):
    from data.preprocess import main as preprocess_main
    from train.__main__ import main as train_main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    data = tiny_layout(tmp_path / "unlabelled", rows=("falswe1,[],falswe1/XC1.ogg", ",[],falswe1/XC2.ogg",
                                                      "sptril1,[],sptril1/XC3.ogg", " ,[],sptril1/XC4.ogg"))
    message = (f"error: {data / 'train_metadata.csv'} has an empty primary_label on line 3 (falswe1/XC2.ogg), line 5 "
               "(sptril1/XC4.ogg): every recording needs its species (the name of its train_audio/ folder): fill it "
               "in, or delete the row\n")
    assert preprocess_main(["--data", str(data), "--no-progress"]) == 1
    assert capsys.readouterr().err == message
    assert train_main(["--data", str(data), "--models", "simple_cnn", "--device", "cpu"]) == 1
    assert capsys.readouterr().err == message
    assert not (tmp_path / "root").exists()  # no class named '' was ever cached or trained


def test_secondary_labels_that_are_not_a_list_are_read_as_none_with_one_warning_naming_their_lines(tmp_path, capsys):
    data = tiny_layout(tmp_path / "odd_secondary", rows=(
        "falswe1,\"['risswe1'\",falswe1/XC1.ogg", "falswe1,\"['risswe1', 'sptril1']\",falswe1/XC2.ogg",
        "sptril1,risswe1,sptril1/XC3.ogg", "sptril1,\"['']\",sptril1/XC4.ogg", "sptril1,,sptril1/XC5.ogg"))
    meta = read_metadata(data)
    assert meta.secondary_labels.tolist() == [[], ["risswe1", "sptril1"], [], [], []]
    read_metadata(data)  # every stage reads the metadata again: the warning is not repeated
    assert capsys.readouterr().out == (
        f"warning: {data / 'train_metadata.csv'}: secondary_labels that are not a list like \"['a', 'b']\" are read "
        "as none, on line 2 (falswe1/XC1.ogg: \"['risswe1'\"), line 4 (sptril1/XC3.ogg: 'risswe1')\n")


def test_line_numbers_in_metadata_messages_count_blank_lines_as_an_editor_does(tmp_path):
    data = tiny_layout(tmp_path / "blank_lines", rows=("falswe1,[],falswe1/XC1.ogg", "", "   ",
                                                       ",[],falswe1/XC2.ogg", "", "sptril1,[],sptril1/XC3.ogg"))
    lines = (data / "train_metadata.csv").read_text().splitlines()
    assert lines[5 - 1] == ",[],falswe1/XC2.ogg"  # the row without a species is the file's fifth line
    with pytest.raises(LayoutError, match=r"empty primary_label on line 5 \(falswe1/XC2.ogg\):"):
        read_metadata(data)
    lines[5 - 1] = "falswe1,[],falswe1/XC2.ogg"
    (data / "train_metadata.csv").write_text("\n".join(lines) + "\n")
    meta = read_metadata(data)  # the blank lines are not rows
    assert meta.filename.tolist() == ["falswe1/XC1.ogg", "falswe1/XC2.ogg", "sptril1/XC3.ogg"]
    assert meta.index.tolist() == [0, 1, 2]


def test_a_metadata_without_a_secondary_labels_column_reads_as_no_secondary_labels(tmp_path):
    data = tiny_layout(tmp_path / "no_secondary", header="primary_label,filename",
                       rows=("falswe1,falswe1/XC1.ogg", "sptril1,sptril1/XC2.ogg"))
    meta = read_metadata(data)
    assert meta.primary_label.tolist() == ["falswe1", "sptril1"]
    assert meta.secondary_labels.tolist() == [[], []]


@pytest.mark.parametrize("suffix, fmt", [(".wav", "WAV"), (".flac", "FLAC")])
def test_a_non_ogg_file_that_decodes_shorter_than_its_header_says_is_noted_as_damaged(tmp_path, suffix, fmt):
    import soundfile as sf

    from data.preprocess import decode_note

    path = tmp_path / f"ten_seconds{suffix}"
    sf.write(path, np.zeros(10 * 32_000, np.float32), 32_000, format=fmt)
    assert decode_note(path, decoded_s=4.0) == "damaged: decoded 4.0 s of the 10.0 s the file holds"
    assert decode_note(path, decoded_s=10.0) == ""


@pytest.mark.parametrize("flag, zero", [("--workers", "all cores"), ("--max-windows", "all")])
def test_a_negative_count_of_workers_or_windows_is_refused_naming_what_zero_means(tmp_path, capsys, flag, zero):
    from data.preprocess import main as preprocess_main

    data = tiny_layout(tmp_path / "data")
    with pytest.raises(SystemExit, match=rf"^error: {flag} must be >= 0 \(0: {zero}\), got -2$"):
        preprocess_main(["--data", str(data), flag, "-2"])
