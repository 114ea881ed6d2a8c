"""`make floor`: log-mel band statistics + logistic regression, cross-validated by recording."""
import json

import numpy as np
import pandas as pd
import pytest

from bench.floor import (FloorConfig, band_stats, fit_predict, main, run_floor, window_folds, window_table)
from data.layout import class_list, read_metadata
from data.preprocess import FeatureCache, PreprocessConfig, ensure_cache
from data.split import recording_folds


def _meta(sizes: dict[str, int]) -> pd.DataFrame:
    rows = [{"primary_label": c, "filename": f"{c}/XC{c}{i:03d}.ogg", "secondary_labels": []}
            for c, n in sizes.items() for i in range(n)]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ the folds
def test_recording_folds_put_every_recording_in_exactly_one_fold():
    meta = _meta({"a": 1, "b": 3, "c": 7, "d": 12, "e": 5})
    folds = recording_folds(meta, folds=5, seed=0)
    assert sorted(folds) == sorted(meta.filename)  # every recording, once (a dict cannot hold one twice)
    assert set(folds.values()) == set(range(5))
    assert all(isinstance(k, int) for k in folds.values())


def test_recording_folds_spread_every_class_so_its_fold_sizes_differ_by_at_most_one():
    meta = _meta({"a": 1, "b": 3, "c": 7, "d": 12, "e": 5})
    folds = recording_folds(meta, folds=5, seed=3)
    for label, files in meta.groupby("primary_label")["filename"]:
        counts = np.bincount([folds[f] for f in files], minlength=5)
        assert counts.max() - counts.min() <= 1, (label, counts)
    totals = np.bincount(list(folds.values()), minlength=5)
    assert totals.max() - totals.min() <= 1  # small classes start in different folds


def test_recording_folds_depend_on_the_seed_but_not_on_the_row_order():
    meta = _meta({"a": 6, "b": 9, "c": 4})
    same = recording_folds(meta.sample(frac=1.0, random_state=1), folds=3, seed=0)
    assert recording_folds(meta, folds=3, seed=0) == same
    assert recording_folds(meta, folds=3, seed=1) != same


def test_recording_folds_refuse_fewer_than_two_folds():
    with pytest.raises(ValueError, match="folds must be >= 2"):
        recording_folds(_meta({"a": 3}), folds=1, seed=0)


# ------------------------------------------------------------------------------ the features
def test_the_band_stats_of_a_window_are_each_bands_mean_then_std_over_time():
    rng = np.random.default_rng(0)
    windows = rng.random((3, 4, 10)).astype(np.float16)  # [windows, mel bands, frames], as the cache stores
    feats = band_stats(windows)
    assert feats.shape == (3, 8)
    w = windows[1].astype(np.float64)
    for band in range(4):
        assert feats[1, band] == pytest.approx(np.mean(w[band]), abs=1e-12)
        assert feats[1, 4 + band] == pytest.approx(np.std(w[band]), abs=1e-12)
    constant = np.full((1, 2, 5), 0.25, dtype=np.float16)
    assert band_stats(constant).tolist() == [[0.25, 0.25, 0.0, 0.0]]


def test_a_class_missing_from_the_training_side_gets_probability_zero():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 2], 20)  # classes 1 and 3 of 4 never appear in training
    X = rng.normal(size=(40, 6)) + 3.0 * y[:, None]
    probs, fit = fit_predict(X, y, X[:5], n_classes=4, cfg=FloorConfig())
    assert probs.shape == (5, 4)
    assert (probs[:, [1, 3]] == 0).all()
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert fit["converged"] and fit["train_classes"] == 2


# ------------------------------------------------------------------------------ the floor
@pytest.fixture(scope="module")
def tiny_cache(tiny_dataset):
    return ensure_cache(PreprocessConfig(data_dir=tiny_dataset, workers=0, progress=False))


def test_the_floor_never_splits_a_recording_and_spreads_every_class_over_every_fold(tiny_dataset, tiny_cache):
    meta = read_metadata(tiny_dataset)
    classes = class_list(meta)
    table = window_table(FeatureCache.open(tiny_cache), meta, classes, windows_per_recording=6)
    fold = window_folds(table, meta, FloorConfig())
    assert len(fold) == len(table.X) and not table.missing
    for rec in set(table.recording):
        assert len(set(fold[table.recording == rec])) == 1, rec
    for c in range(len(classes)):  # 6 recordings per class, 5 folds: every fold tests every class
        assert set(fold[table.label_idx == c]) == set(range(5)), classes[c]


def test_the_floor_takes_at_most_the_first_n_windows_of_each_recording(tiny_dataset, tiny_cache):
    meta = read_metadata(tiny_dataset)
    cache = FeatureCache.open(tiny_cache)
    table = window_table(cache, meta, class_list(meta), windows_per_recording=2)
    per_recording = pd.Series(table.recording).value_counts()
    assert per_recording.max() == 2 and len(per_recording) == len(meta)
    first = meta.filename[0]
    rows = list(cache.rows_of(first))[:2]
    assert np.array_equal(table.X[table.recording == first], band_stats(cache.windows[rows]))


def test_the_band_stats_are_read_a_chunk_at_a_time_with_the_same_values(tiny_dataset, tiny_cache, monkeypatch):
    import bench.floor as floor

    meta = read_metadata(tiny_dataset)
    cache = FeatureCache.open(tiny_cache)
    whole = window_table(cache, meta, class_list(meta), windows_per_recording=3)
    monkeypatch.setattr(floor, "STATS_CHUNK", 7)  # a competition's windows would not fit in memory at once
    chunked = window_table(cache, meta, class_list(meta), windows_per_recording=3)
    assert len(whole.X) > 7 and np.array_equal(chunked.X, whole.X)


def test_the_floor_beats_chance_clearly_on_the_tiny_synthetic_dataset(tiny_dataset, tiny_cache):
    result = run_floor(tiny_dataset, FloorConfig(), cache_dir=tiny_cache, progress=False)
    assert result["classes"] == 4 and result["recordings"] == 24 and len(result["folds"]) == 5
    assert result["accuracy"]["mean"] > 0.5  # chance is 0.25
    assert result["roc_auc"]["mean"] > 0.75  # chance is 0.5
    assert result["all_converged"]
    assert sum(f["test_windows"] for f in result["folds"]) == result["windows"]
    assert result["accuracy"]["std"] == pytest.approx(np.std([f["accuracy"] for f in result["folds"]]))


def test_the_cli_prints_the_config_and_a_fold_table_and_writes_json(tiny_dataset, tiny_cache, tmp_path, capsys):
    out = tmp_path / "floor.json"
    assert main(["--data", str(tiny_dataset), "--C", "0.5", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert 'config: {"folds": 5, "seed": 0, "windows_per_recording": 6, "C": 0.5' in text
    assert "mean" in text and "± std" in text and "ref " not in text  # no reference figure for tiny
    result = json.loads(out.read_text())
    assert result["config"]["C"] == 0.5 and [f["fold"] for f in result["folds"]] == [0, 1, 2, 3, 4]
    fold_rows = [line for line in text.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"], ["4"], ["5"])]
    assert len(fold_rows) == 5


def test_fewer_recordings_than_folds_is_a_clear_error(tiny_dataset, tiny_cache, capsys):
    assert main(["--data", str(tiny_dataset), "--folds", "30", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "24 usable recording(s)" in err and "fewer than the 30 folds" in err


def test_a_config_that_cannot_work_is_refused():
    with pytest.raises(ValueError, match="folds"):
        FloorConfig(folds=1)
    with pytest.raises(ValueError, match="C must be > 0"):
        FloorConfig(C=0.0)


def test_the_floor_on_real_recordings_lands_in_a_plausible_range(realbirds):
    result = run_floor(realbirds, FloorConfig(), progress=False)
    assert result["classes"] == 37 and result["recordings"] == 307
    assert 0.4 <= result["accuracy"]["mean"] <= 0.9  # 37 classes: chance is under 0.1
    assert 0.8 <= result["roc_auc"]["mean"] <= 1.0
    assert result["reference"] == {"accuracy": 0.625, "roc_auc": 0.924} and result["all_converged"]


def test_the_floor_standardises_with_the_training_rows_statistics_only():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    X = rng.normal(size=(60, 4)) + y[:, None]
    X_test = rng.normal(size=(7, 4)) * 5 + 10.0  # another scale and offset: must not move the training scale
    probs, _ = fit_predict(X, y, X_test, n_classes=3, cfg=FloorConfig())
    scaler = StandardScaler().fit(X)
    expected = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(X), y).predict_proba(scaler.transform(X_test))
    assert np.allclose(probs, expected, atol=1e-6)
