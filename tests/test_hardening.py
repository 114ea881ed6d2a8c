"""Hardening: bad data, a full disk, a changed config and leaked secrets, each provoked for real.

Every case ends in a clear error or a recorded skip, never a crash deep in a stack trace, never a
half-written artefact, never a silent wrong answer. The data faults are injected together into one
copy of tiny_dataset that goes through the real `python -m data.preprocess` and `python -m train`
entry points once (module fixture `faulty`); each test then checks its own case.

Covered elsewhere, not repeated here:
  unknown model name          tests/test_models.py::test_an_unknown_model_name_is_refused_with_the_choices,
                              tests/test_train.py::test_an_unknown_model_is_refused_before_any_work
  input size a model refuses  tests/test_models.py::test_an_input_size_too_small_for_inception_is_refused_naming_both_sizes
  killed preprocess           tests/test_preprocess.py::test_a_killed_run_resumes_to_the_same_cache_as_an_uninterrupted_one
  killed training             tests/test_train.py::test_a_killed_training_resumes_to_the_same_metrics_as_an_uninterrupted_one
  interrupted `make data`     tests/test_download.py::test_a_dropped_download_resumes_on_rerun_and_equals_an_uninterrupted_one,
                              ::test_an_interrupted_unzip_is_wiped_and_redone,
                              ::test_a_rerun_after_an_interrupted_unzip_reuses_the_downloaded_zip
  same seed, same metrics     tests/test_train.py::test_the_same_seed_and_data_give_the_same_validation_metrics_on_cpu
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from data.audio_io import write_ogg
from data.features import FeatureConfig, audio_to_features, file_to_features, load_audio
from data.layout import read_metadata, validate_layout
from data.preprocess import FeatureCache, cache_dir_for, read_entries

REPO = Path(__file__).resolve().parents[1]
CFG = FeatureConfig()
SR = CFG.sample_rate_hz
ROW_BYTES = 128 * 313 * 2  # one float16 [n_mels, n_frames] window
TRAIN_ARGS = ["--models", "simple_cnn", "--epochs", "1", "--windows-per-recording", "1", "--device", "cpu",
              "--no-pretrained", "--holdout-fraction", "0"]
# Mean |difference| of the [0, 1] features accepted for a lossy re-encoding. For scale, on these
# recordings: the OGG original re-encoded as OGG differs by ~0.011, as MP3 by ~0.011, and another
# recording of the same species by ~0.12.
LOSSY_TOLERANCE = 0.025
LOSSLESS_16BIT_TOLERANCE = 1e-4  # 16-bit quantisation: ~1e-5
NON_ASCII = "synwar1/XC12345_Müller_éàü_鳥.ogg"
NON_ASCII_2 = "synwar1/XC67890_Øre_ñ_🐦.ogg"
RATES = [8_000, 16_000, 44_100, 48_000, 96_000]


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def low_bands(source_rate: int) -> np.ndarray:
    """Mel bands wholly below 90 % of a source rate's Nyquist frequency (what it can hold)."""
    edges = librosa.mel_frequencies(CFG.n_mels + 2, fmin=CFG.fmin_hz, fmax=CFG.fmax_hz)
    return edges[2:] < 0.9 * source_rate / 2


@dataclass
class Faulty:
    data: Path  # the faulted copy
    orig: Path  # tiny_dataset, untouched: the reference files
    cache: Path
    entries: pd.DataFrame  # entries.csv, indexed by filename
    faults: dict[str, str]  # case -> filename in the copy's metadata
    source: dict[str, str]  # case -> the tiny_dataset recording it was made from
    preprocess_out: str
    train_out: str
    run_dir: Path


@pytest.fixture(scope="module")
def faulty(tiny_dataset, tmp_path_factory) -> Faulty:
    """Every data fault in one copy of tiny_dataset, through the real preprocess and train."""
    from data.preprocess import main as preprocess_main
    from train.__main__ import main as train_main

    tmp = tmp_path_factory.mktemp("hardening")
    data = Path(shutil.copytree(tiny_dataset, tmp / "faulty"))
    audio = data / "train_audio"
    meta = pd.read_csv(data / "train_metadata.csv", keep_default_na=False)
    by_class = {c: sorted(g.filename, key=lambda f: -sf.info(str(audio / f)).frames)  # longest first
                for c, g in meta.groupby("primary_label")}
    faults, source = {}, {}
    rng = np.random.default_rng(0)

    def take(case: str, cls: str) -> str:
        faults[case] = source[case] = by_class[cls].pop(0)
        return faults[case]

    def rename(case: str, suffix: str) -> Path:
        """Point the case's metadata row at the same name with another suffix; remove the OGG."""
        old = faults[case]
        (audio / old).unlink()
        faults[case] = str(Path(old).with_suffix(suffix))
        meta.loc[meta.filename == old, "filename"] = faults[case]
        return audio / faults[case]

    def samples(case: str) -> np.ndarray:
        return load_audio(tiny_dataset / "train_audio" / source[case], SR)

    # falswe1: files that cannot be decoded at all
    f = audio / take("corrupt", "falswe1")
    broken = bytearray(f.read_bytes())
    broken[40:4000] = rng.integers(0, 256, 3960, dtype=np.uint8).tobytes()  # Vorbis setup headers garbled
    f.write_bytes(bytes(broken))
    (audio / take("empty", "falswe1")).write_bytes(b"")
    write_ogg(audio / take("no_samples", "falswe1"), np.zeros(0, np.float32), SR)  # headers, no audio
    # sptril1: cut, damaged, too short, absent, not finite
    f = audio / take("truncated", "sptril1")
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    f = audio / take("damaged", "sptril1")
    broken = bytearray(f.read_bytes())
    broken[5000:60000] = rng.integers(0, 256, 55000, dtype=np.uint8).tobytes()  # pages that fail their CRC
    f.write_bytes(bytes(broken))
    write_ogg(audio / take("short", "sptril1"), samples("short")[: SR // 2], SR)  # 0.5 s
    (audio / take("missing", "sptril1")).unlink()
    for case, rate, bad in (("nan_32k", SR, [5, 100, 2000]), ("nan_44k", 44_100, [7, 70, 700, 7000])):
        take(case, "sptril1")
        y = samples(case)
        y = librosa.resample(y, orig_sr=SR, target_sr=rate, res_type="soxr_hq") if rate != SR else y.copy()
        y[bad] = np.nan
        y[bad[0] + 1] = np.inf
        sf.write(rename(case, ".wav"), y, rate, subtype="FLOAT")
    # risswe1: other containers and stereo, from the decoded original
    for case in ("wav", "mp3", "flac", "stereo"):
        take(case, "risswe1")
    sf.write(rename("wav", ".wav"), samples("wav"), SR, subtype="PCM_16")
    sf.write(rename("mp3", ".mp3"), samples("mp3"), SR, format="MP3", subtype="MPEG_LAYER_III")
    sf.write(rename("flac", ".flac"), samples("flac"), SR, subtype="PCM_16")
    y, other = samples("stereo"), np.resize(samples("truncated"), len(samples("stereo")))  # a sptril1 trill
    side = 3 * other * np.sqrt(np.mean(y**2) / np.mean(other**2))  # antiphase: the mix is y, a channel is not
    sf.write(rename("stereo", ".wav"), np.stack([y + side, y - side], axis=1), SR, subtype="FLOAT")
    # lotril1 (calls at 2.2-2.6 kHz, below every rate's Nyquist): other sample rates, still .ogg
    for rate in RATES:
        f = audio / take(f"rate_{rate}", "lotril1")
        write_ogg(f, librosa.resample(samples(f"rate_{rate}"), orig_sr=SR, target_sr=rate, res_type="soxr_hq"), rate)
    # a new class with non-ASCII file names, copies of two falswe1 recordings
    rows = []
    for case, name in (("non_ascii", NON_ASCII), ("non_ascii_2", NON_ASCII_2)):
        src = by_class["falswe1"].pop(0)
        (audio / name).parent.mkdir(exist_ok=True)
        shutil.copy(audio / src, audio / name)
        faults[case], source[case] = name, src
        rows.append({**meta[meta.filename == src].iloc[0].to_dict(), "primary_label": "synwar1", "filename": name})
    meta = pd.concat([meta, pd.DataFrame(rows)], ignore_index=True)
    # files no row names: one in a known class folder, one in a folder of a class the metadata lacks
    shutil.copy(audio / by_class["falswe1"][0], audio / "falswe1" / "XC000001.ogg")
    (audio / "newbrd1").mkdir()
    shutil.copy(audio / by_class["falswe1"][0], audio / "newbrd1" / "XC000002.ogg")
    # secondary labels naming classes that do not exist (and one that does)
    faults["secondary_1"], faults["secondary_2"] = by_class["risswe1"][0], by_class["lotril1"][0]
    meta.loc[meta.filename == faults["secondary_1"], "secondary_labels"] = "['zzunk1']"
    meta.loc[meta.filename == faults["secondary_2"], "secondary_labels"] = "['zzunk1', 'yyunk2', 'falswe1']"
    meta.to_csv(data / "train_metadata.csv", index=False)

    root = tmp / "root"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIRDKIT_ROOT", str(root))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            assert preprocess_main(["--data", str(data), "--workers", "2", "--no-progress"]) == 0
        preprocess_out = out.getvalue()
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            assert train_main(["--data", str(data), *TRAIN_ARGS]) == 0
        cache = cache_dir_for(data, CFG)
        [run_dir] = sorted((root / "train" / "runs" / "faulty").glob("simple_cnn-*"))
        yield Faulty(data, tiny_dataset, cache, read_entries(cache).set_index("filename"), faults, source,
                     preprocess_out, out.getvalue(), run_dir)


def entry(faulty: Faulty, case: str) -> pd.Series:
    return faulty.entries.loc[faulty.faults[case]]


def cached(faulty: Faulty, case: str) -> np.ndarray:
    cache = FeatureCache.open(faulty.cache)
    return np.asarray(cache.windows[list(cache.rows_of(faulty.faults[case]))], np.float32)


def original_features(faulty: Faulty, case: str) -> np.ndarray:
    return file_to_features(faulty.orig / "train_audio" / faulty.source[case], CFG)


def split(faulty: Faulty) -> dict:
    return json.loads((faulty.run_dir / "split.json").read_text())


def path_of(faulty: Faulty, case: str) -> Path:
    return faulty.data / "train_audio" / faulty.faults[case]


# ---------------------------------------------------------------- files that cannot be decoded


def test_a_corrupt_ogg_is_skipped_with_the_decoders_reason(faulty):
    e = entry(faulty, "corrupt")
    assert e.status == "skipped" and e.n_windows == 0
    assert e.detail.startswith(f"{path_of(faulty, 'corrupt')}: unreadable audio (soundfile: Error opening ")
    assert "; audioread: " in e.detail and not e.detail.endswith("; )")  # both decoders tried, both named
    assert f"  skipped  {faulty.faults['corrupt']}: {e.detail}\n" in faulty.preprocess_out


@pytest.mark.parametrize("case, reason", [("empty", "empty file (0 bytes)"), ("no_samples", "no samples")])
def test_an_empty_ogg_is_skipped_with_its_reason(faulty, case, reason):
    e = entry(faulty, case)
    assert (e.status, e.n_windows, e.detail) == ("skipped", 0, f"{path_of(faulty, case)}: {reason}")


def test_a_truncated_ogg_keeps_what_decodes_and_records_the_cut(faulty):
    """Decision: a file cut short (interrupted download or copy) keeps the audio before the cut,
    which decodes exactly as in the whole file; entries.csv and preprocessing's summary say so."""
    e = entry(faulty, "truncated")
    kept = load_audio(path_of(faulty, "truncated"), SR)
    whole = original_features(faulty, "truncated")
    feats = cached(faulty, "truncated")
    assert e.status == "ok"
    assert e.detail == f"truncated Ogg stream (no end-of-stream page): kept the {len(kept) / SR:.1f} s that decode"
    assert 2 <= len(feats) < len(whole)
    full = len(kept) // CFG.window_samples  # windows wholly before the cut: bit-identical
    assert full >= 2 and np.array_equal(feats[:full], whole[:full])
    assert "preprocess: 2 recording(s) cached in part:\n" in faulty.preprocess_out
    assert f"  ok       {faulty.faults['truncated']}: {e.detail}\n" in faulty.preprocess_out
    assert faulty.faults["truncated"] in split(faulty)["train"] + split(faulty)["val"]


def test_an_ogg_with_damaged_pages_keeps_what_decodes_and_records_how_much(faulty):
    """Pages failing their checksum are dropped by the decoder, silently: the last page's
    granule position says how long the file is."""
    e = entry(faulty, "damaged")
    decoded_s = len(load_audio(path_of(faulty, "damaged"), SR)) / SR
    whole_s = sf.info(str(faulty.orig / "train_audio" / faulty.source["damaged"])).duration
    assert whole_s - decoded_s > 1
    assert e.status == "ok"
    assert e.detail == f"damaged: decoded {decoded_s:.1f} s of the {whole_s:.1f} s the file holds"


def test_nothing_is_noted_for_files_that_decode_whole(faulty):
    ok = faulty.entries[faulty.entries.status == "ok"]
    assert sorted(ok.index[ok.detail != ""]) == sorted([faulty.faults["truncated"], faulty.faults["damaged"]])


# ---------------------------------------------------------------- other formats, channels and rates


@pytest.mark.parametrize("case, tolerance", [("wav", LOSSLESS_16BIT_TOLERANCE), ("flac", LOSSLESS_16BIT_TOLERANCE),
                                             ("mp3", LOSSY_TOLERANCE)])
def test_wav_flac_and_mp3_give_the_features_of_the_ogg_original(faulty, case, tolerance):
    assert faulty.faults[case].endswith("." + case)
    e = entry(faulty, case)
    assert (e.status, e.detail) == ("ok", "")
    assert mean_abs_diff(cached(faulty, case), original_features(faulty, case)) <= tolerance


def test_stereo_is_mixed_to_mono(faulty):
    left = sf.read(str(path_of(faulty, "stereo")), dtype="float32")[0][:, 0]
    assert entry(faulty, "stereo").status == "ok"
    assert mean_abs_diff(cached(faulty, "stereo"), original_features(faulty, "stereo")) <= LOSSLESS_16BIT_TOLERANCE
    assert mean_abs_diff(audio_to_features(left, CFG), original_features(faulty, "stereo")) > 2 * LOSSY_TOLERANCE


@pytest.mark.parametrize("rate", RATES)
def test_other_sample_rates_are_resampled_to_32_khz_keeping_the_duration(faulty, rate):
    case = f"rate_{rate}"
    assert sf.info(str(path_of(faulty, case))).samplerate == rate
    original = load_audio(faulty.orig / "train_audio" / faulty.source[case], SR)
    assert abs(len(load_audio(path_of(faulty, case), SR)) - len(original)) <= 1
    e = entry(faulty, case)
    assert (e.status, e.detail) == ("ok", "")
    feats, reference = cached(faulty, case), original_features(faulty, case)
    assert feats.shape == reference.shape
    bands = low_bands(rate)  # a source at 8 or 16 kHz holds nothing above 4 or 8 kHz
    assert mean_abs_diff(feats[:, bands], reference[:, bands]) <= LOSSY_TOLERANCE


# ---------------------------------------------------------------- odd samples and lengths


@pytest.mark.parametrize("case, rate, n_bad", [("nan_32k", 32_000, 4), ("nan_44k", 44_100, 5)])
def test_nan_and_inf_samples_skip_the_file_naming_the_count(faulty, case, rate, n_bad):
    """Counted in the file's own samples, also when it must be resampled (which would zero them)."""
    n = sf.info(str(path_of(faulty, case))).frames
    assert sf.info(str(path_of(faulty, case))).samplerate == rate
    e = entry(faulty, case)
    assert (e.status, e.detail) == ("skipped", f"{path_of(faulty, case)}: {n_bad} NaN/inf samples (of {n})")
    assert faulty.faults[case] in split(faulty)["skipped"]


def test_a_clip_shorter_than_a_window_gives_one_zero_padded_window(faulty):
    feats = cached(faulty, "short")
    y = load_audio(path_of(faulty, "short"), SR)
    assert len(y) == SR // 2 and entry(faulty, "short").status == "ok"
    assert feats.shape == (1, 128, 313)
    assert np.array_equal(feats, audio_to_features(y, CFG))
    silent_from = (len(y) + CFG.n_fft // 2) // CFG.hop_length + 1  # first frame wholly in the padding
    assert feats[0, :, silent_from:].max() == 0 and feats[0, :, : silent_from - 3].max() > 0.5
    assert faulty.faults["short"] in split(faulty)["train"] + split(faulty)["val"]


# ---------------------------------------------------------------- metadata and files that disagree


def test_a_metadata_row_without_a_file_is_recorded_missing_and_training_runs(faulty):
    e = entry(faulty, "missing")
    assert (e.status, e.detail) == ("missing", f"{path_of(faulty, 'missing')} not found")
    assert faulty.faults["missing"] in split(faulty)["skipped"]
    assert validate_layout(faulty.data, progress=False).rows_without_file == [faulty.faults["missing"]]


def test_files_without_a_row_are_ignored_by_training_and_reported_by_validate_layout(faulty):
    unlisted = ["falswe1/XC000001.ogg", "newbrd1/XC000002.ogg"]
    assert not set(unlisted) & set(faulty.entries.index)
    assert "newbrd1" not in split(faulty)["classes"]
    report = validate_layout(faulty.data, progress=False)
    assert report.files_without_row == unlisted
    assert report.folders_without_rows == ["newbrd1"]
    text = report.format()
    assert "files without row  2: falswe1/XC000001.ogg, newbrd1/XC000002.ogg\n" in text
    assert text.endswith("\nfolders not in metadata 1: newbrd1 (their files are ignored: no row gives their labels)")


def test_validate_layout_lists_empty_and_undecodable_recordings_as_unreadable(tiny_dataset, tmp_path):
    data = tmp_path / "unreadable"
    shutil.copytree(tiny_dataset, data)
    empty, junk = read_metadata(data).filename.tolist()[:2]
    sf.write(data / "train_audio" / empty, np.zeros(0, np.float32), SR, format="OGG")  # 0 frames
    (data / "train_audio" / junk).write_bytes(b"not audio at all")
    report = validate_layout(data, progress=False)
    assert report.unreadable == sorted([empty, junk])
    assert "unreadable files   2: " in report.format()


def test_secondary_labels_naming_unknown_classes_are_ignored_and_reported_once(faulty):
    from train.config import config_for
    from train.data import make_splits

    warning = ("warning: secondary labels outside the 5 classes are ignored: yyunk2 (1 recording), "
               "zzunk1 (2 recordings)\n")
    assert faulty.train_out.count("secondary labels outside") == 1 and warning in faulty.train_out
    assert (faulty.run_dir / "summary.json").exists()
    cfg = config_for("simple_cnn", str(faulty.data), holdout_fraction=0.0, max_windows_per_recording=1)
    meta = read_metadata(faulty.data)
    classes = split(faulty)["classes"]
    with contextlib.redirect_stdout(io.StringIO()):
        splits = make_splits(FeatureCache.open(faulty.cache), meta, classes, cfg)
    targets = {}
    for ws in (splits.train, splits.val):
        for name, target in zip(ws.filenames, ws.targets):
            targets[name] = {classes[j] for j in np.flatnonzero(target)}
            row = meta[meta.filename == name].iloc[0]
            assert targets[name] == {row.primary_label} | (set(row.secondary_labels) & set(classes)), name
    assert targets[faulty.faults["secondary_1"]] == {"risswe1"}
    assert targets[faulty.faults["secondary_2"]] == {"lotril1", "falswe1"}


def test_non_ascii_file_names_are_cached_trained_on_and_round_trip_through_entries_csv(faulty, monkeypatch, capsys):
    from data.preprocess import PreprocessConfig, preprocess

    names = [faulty.faults["non_ascii"], faulty.faults["non_ascii_2"]]
    assert NON_ASCII in names
    raw = (faulty.cache / "entries.csv").read_bytes().decode("utf-8")
    for case, name in zip(("non_ascii", "non_ascii_2"), names):
        assert f"\n{name},ok," in raw
        assert np.array_equal(cached(faulty, case), original_features(faulty, case))
    assert set(names) <= set(split(faulty)["train"] + split(faulty)["val"])
    assert "synwar1" in split(faulty)["classes"]
    monkeypatch.setenv("BIRDKIT_ROOT", str(faulty.cache.parents[3]))
    preprocess(PreprocessConfig(faulty.data, workers=1, progress=False))  # the journal, read back
    n = len(read_metadata(faulty.data))
    assert f"preprocess: {n} recordings, {n} already cached" in capsys.readouterr().out


def test_training_runs_on_every_recording_that_decodes(faulty):
    s = split(faulty)
    ok = sorted(faulty.entries.index[faulty.entries.status == "ok"])
    assert sorted(s["train"] + s["val"]) == ok
    assert sorted(s["skipped"]) == sorted(faulty.entries.index[faulty.entries.status != "ok"])
    assert s["classes"] == ["falswe1", "lotril1", "risswe1", "sptril1", "synwar1"]
    summary = json.loads((faulty.run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["classes"] == 5
    assert "preprocess: 6 recording(s) skipped:\n" in faulty.preprocess_out
    assert (f"data: 6 recording(s) of the metadata have no features (unreadable or missing; reasons in "
            f"{faulty.cache / 'entries.csv'})\n") in faulty.train_out


# ---------------------------------------------------------------- disk space


def fake_free_space(monkeypatch, free: int) -> None:
    """Only the free-space reading is faked; the estimate reads the real headers."""
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=free))


def test_preprocessing_refuses_a_cache_that_would_not_fit_naming_bytes_needed_and_free(tiny_dataset, tmp_path,
                                                                                       monkeypatch, capsys):
    from data.preprocess import main as preprocess_main
    from train.__main__ import main as train_main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    cache_dir = cache_dir_for(tiny_dataset, CFG)
    args = ["--data", str(tiny_dataset), "--workers", "2", "--no-progress"]
    n = len(read_metadata(tiny_dataset))
    windows = sum(len(file_to_features(tiny_dataset / "train_audio" / f, CFG)) for f in read_metadata(tiny_dataset).filename)
    needed = windows * ROW_BYTES

    message = (
        f"error: not enough free disk space for the feature cache {cache_dir}: need {needed / 1e6:.1f} MB "
        f"({needed} bytes) for {windows} windows of {n} recordings, have 1.0 KB (1000 bytes).\n"
        "  Free some space, or set BIRDKIT_ROOT to a disk with more room (training reads the cache of every "
        "window).\n"
    )
    fake_free_space(monkeypatch, 1000)
    assert preprocess_main(args) == 1
    assert capsys.readouterr().err == message
    assert train_main(["--data", str(tiny_dataset), *TRAIN_ARGS]) == 1  # `make train` preprocesses first
    assert capsys.readouterr().err == message
    assert not (tmp_path / "root").exists()  # refused before writing anything

    assert preprocess_main([*args, "--max-windows", "1"]) == 1  # the cap is counted
    assert f"need {n * ROW_BYTES / 1e6:.1f} MB ({n * ROW_BYTES} bytes) for {n} windows" in capsys.readouterr().err

    fake_free_space(monkeypatch, needed)  # exactly enough: the estimate is the cache's real size
    assert preprocess_main(args) == 0
    assert (cache_dir / "features.f16").stat().st_size == needed
    fake_free_space(monkeypatch, 0)  # nothing left to add: no check, no refusal
    assert preprocess_main(args) == 0


# ---------------------------------------------------------------- a class list that changed


class Killed(Exception):
    pass


def killed(*args, **kwargs):
    raise Killed("stopped before the summary")


def relabel(data: Path, old: str, new: str, count: int | None = None) -> None:
    meta = pd.read_csv(data / "train_metadata.csv", keep_default_na=False)
    rows = meta.index[meta.primary_label == old][:count]
    meta.loc[rows, "primary_label"] = new
    meta.to_csv(data / "train_metadata.csv", index=False)
    # A new release changes both files: its sample_submission has a column per species of the metadata.
    (data / "sample_submission.csv").write_text(",".join(["row_id", *sorted(meta.primary_label.unique())]) + "\n")


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resuming_a_run_on_a_changed_class_list_is_refused_before_touching_the_run(tiny_dataset, tmp_path,
                                                                                   monkeypatch, capsys):
    import train.loop
    from train.__main__ import main as train_main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    data = Path(shutil.copytree(tiny_dataset, tmp_path / "changing"))
    with monkeypatch.context() as mp:  # stopped after its last epoch was saved, before the summary
        mp.setattr(train.loop, "_finish", killed)
        with pytest.raises(Killed):
            train_main(["--data", str(data), *TRAIN_ARGS])
    [run] = (tmp_path / "root" / "train" / "runs" / "changing").glob("simple_cnn-*")
    assert (run / "last.pt").exists() and not (run / "summary.json").exists()
    before = folder_bytes(run)
    relabel(data, "falswe1", "newcls1", count=2)
    capsys.readouterr()

    assert train_main(["--data", str(data), *TRAIN_ARGS, "--resume"]) == 1

    assert capsys.readouterr().err == (f"error: cannot resume {run.name}: it trained on 4 classes, the data now "
                                       "has 5 (added: newcls1); start a new run\n")
    assert folder_bytes(run) == before


def test_exporting_a_run_whose_data_changed_classes_is_refused_naming_both(tiny_dataset, tmp_path, monkeypatch,
                                                                           capsys):
    from export.__main__ import main as export_main
    from train.__main__ import main as train_main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    data = Path(shutil.copytree(tiny_dataset, tmp_path / "changed"))
    assert train_main(["--data", str(data), *TRAIN_ARGS]) == 0
    [run] = (tmp_path / "root" / "train" / "runs" / "changed").glob("simple_cnn-*")
    relabel(data, "sptril1", "risswe1")  # one class fewer
    capsys.readouterr()

    assert export_main(["--data", str(data)]) == 1

    assert capsys.readouterr().err == (
        f"error: {run.name} was trained on 4 classes, but {data} now has 3 (removed: sptril1): the data changed "
        "after training. Retrain on it (`make train`), or restore the data the run was trained on.\n"
    )
    export_dir = tmp_path / "root" / "export" / "out" / "changed"
    assert not export_dir.exists() or not any(export_dir.iterdir())


# ---------------------------------------------------------------- secrets


def test_the_kaggle_key_appears_in_no_output_file_and_no_stage_output(tiny_dataset, tmp_path, monkeypatch, capfd):
    """Credentials live in both places the kit reads them; every stage from preprocess to score runs."""
    from data.preprocess import main as preprocess_main
    from export.__main__ import main as export_main
    from submission.package import main as package_main
    from submission.score import main as score_main
    from train.__main__ import main as train_main

    key, user = f"hk{secrets.token_hex(16)}", "hardening-user"  # made here: in no file before this test
    forms = [key, base64.b64encode(f"{user}:{key}".encode()).decode()]  # as is, and as HTTP basic auth
    config = tmp_path / "kaggle-config"
    config.mkdir()
    (config / "kaggle.json").write_text(json.dumps({"username": user, "key": key}))
    (config / "kaggle.json").chmod(0o600)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config))
    monkeypatch.setenv("KAGGLE_USERNAME", user)
    monkeypatch.setenv("KAGGLE_KEY", key)
    root = tmp_path / "root"
    monkeypatch.setenv("BIRDKIT_ROOT", str(root))
    started = time.time()
    data = ["--data", str(tiny_dataset)]

    assert preprocess_main([*data, "--workers", "2", "--no-progress"]) == 0
    assert train_main([*data, *TRAIN_ARGS]) == 0
    assert export_main(data) == 0
    assert package_main([*data, "--no-wheels"]) == 0
    assert score_main(data) == 0
    captured = capfd.readouterr()

    for secret in forms:
        assert secret not in captured.out and secret not in captured.err
    outputs = [root / p for p in ("data/cache", "train/runs", "export/out", "submission/dist", "submission/score")]
    assert all(p.is_dir() for p in outputs)
    files = [p for folder in [root, tiny_dataset.parent] for p in folder.rglob("*") if p.is_file()]
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    files += [REPO / f for f in listed if f and (REPO / f).is_file()]
    for folder in ("data/cache", "train/runs", "export/out", "submission/dist", "submission/score"):
        files += [p for p in (REPO / folder).rglob("*") if p.is_file() and p.stat().st_mtime >= started]
    assert len(files) > 100
    for path in files:
        blob = path.read_bytes()
        for secret in forms:
            assert secret.encode() not in blob, path
    # the stages did see the credentials: the package names the user (and only the user)
    assert user in (root / "submission" / "dist" / "dataset" / "dataset-metadata.json").read_text()


def test_building_the_venv_on_a_disk_too_small_is_refused_before_creating_it(tmp_path):
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "venv", f"VENV={venv}", "VENV_NEEDS_BYTES=1000000000000000", "ORT=onnxruntime"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert f"error: not enough free disk space to build {venv}: need about 1000000.0 GB" in result.stderr
    assert "make VENV=/big/disk/birdkit-venv" in result.stderr
    assert not venv.exists()


def test_export_with_nothing_trained_trains_what_it_is_told_and_stops_where_training_fails(tiny_dataset, tmp_path,
                                                                                            monkeypatch, capsys):
    import shlex

    from data.paths import Workspace
    from export.__main__ import main as export_main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    ws = Workspace.of(tiny_dataset)
    assert export_main(["--data", str(tiny_dataset), "--train-args", "--models simple_cnn --cv 1"]) == 1
    assert capsys.readouterr().err.endswith(
        "error: --cv needs at least 2 folds, got 1 (make cv: FOLDS=2 or more, 5 by default; one train/validation "
        "split is make train)\n"
        "error: training failed (above), so there is nothing to export: fix that, then rerun\n")
    assert not ws.export_dir.exists()

    assert export_main(["--data", str(tiny_dataset), "--train-args", shlex.join(TRAIN_ARGS)]) == 0
    assert [run.name.split("-")[0] for run in ws.runs_dir.iterdir()] == ["simple_cnn"]  # what it was told, only
    assert (ws.export_dir / "model.onnx").exists()


def test_a_mistyped_data_folder_is_named_with_how_to_fill_it_not_downloaded_into(tmp_path, capsys):
    from train.__main__ import main as train_main

    typo = tmp_path / "birdclf-2024"
    assert train_main(["--data", str(typo), *TRAIN_ARGS[:2]]) == 1
    assert capsys.readouterr().err == (
        f"error: DATA={typo} does not exist: check the path, or download a competition into it with `make data "
        f"DATA={typo} COMPETITION=<slug>` (a folder named after the competition, e.g. data/birdclef-2024, needs no "
        "COMPETITION), run `make sample` for the embedded sample, or point DATA= at a folder in the Kaggle layout.\n")
    assert not typo.exists()
