"""Degenerate but legal datasets: each either goes through the chain doing the right thing or is
refused early, saying how to fix it; never a traceback after the work, never a silent wrong answer.

The datasets are hand-written in the Kaggle layout: each class a tone of its own, a few seconds per
recording, so that every stage runs in seconds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.audio_io import write_ogg
from data.paths import Workspace

SR = 32_000


def tone(seconds: float, freq_hz: float, seed: int = 0) -> np.ndarray:
    """A chirping tone over faint noise: enough for features, cheap to write."""
    t = np.arange(int(round(seconds * SR))) / SR
    noise = 0.02 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * np.sin(2 * np.pi * freq_hz * t) * (np.sin(2 * np.pi * 2 * t) > 0) + noise).astype(np.float32)


def kaggle_folder(root: Path, recordings: dict[str, list[float | None]]) -> Path:
    """A dataset in the Kaggle layout: {class: [seconds of each recording; None: not audio]}, a
    sample_submission with the classes sorted, an empty test_soundscapes/."""
    rows = []
    for k, (label, lengths) in enumerate(sorted(recordings.items())):
        for i, seconds in enumerate(lengths):
            filename = f"{label}/XC{k}{i:03d}.ogg"
            path = root / "train_audio" / filename
            if seconds is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"not audio" * 50)
            else:
                write_ogg(path, tone(seconds, 800 + 700 * k, seed=10 * k + i), SR)
            rows.append({"primary_label": label, "secondary_labels": "[]", "rating": 4.0, "filename": filename})
    pd.DataFrame(rows).to_csv(root / "train_metadata.csv", index=False)
    classes = sorted(recordings)
    sample = pd.DataFrame(np.full((48, len(classes)), 1 / len(classes)), columns=classes)
    sample.insert(0, "row_id", [f"soundscape_0_{5 * (i + 1)}" for i in range(48)])
    sample.to_csv(root / "sample_submission.csv", index=False)
    (root / "test_soundscapes").mkdir(parents=True, exist_ok=True)
    return root


# ------------------------------------------------------------------------------ labels that cannot be scored
@pytest.mark.parametrize("labels, why", [
    ({"aaa": [0, 1, 1, 0], "bbb": [1, 1, 1, 1]}, r"class\(es\) \['bbb'\] are positive in all 4 rows"),
    ({"aaa": [0, 0, 0, 0], "bbb": [0, 0, 0, 0]}, r"no class has a positive in its 4 row\(s\)"),
])
def test_labels_kaggles_metric_cannot_score_are_refused_before_the_notebook_runs(tmp_path, labels, why):
    from submission.score import ScoreError, labelled_set

    data = kaggle_folder(tmp_path / "birds", {"aaa": [6, 6], "bbb": [6, 6]})
    solution = pd.DataFrame({"row_id": [f"s_{5 * (i + 1)}" for i in range(4)], **labels})
    solution.to_csv(tmp_path / "birds_solution.csv", index=False)
    with pytest.raises(ScoreError, match=why + r".*Score on more or longer labelled test soundscapes"):
        labelled_set(Workspace.of(data))


# ------------------------------------------------------------------------------ one species
ONE_SPECIES = "train_metadata.csv names a single species ('solo1'): the kit trains a classifier of two or more"


def test_a_single_species_is_refused_by_train_before_preprocessing_saying_to_add_another(tmp_path, capsys):
    from train.__main__ import main as train_main

    data = kaggle_folder(tmp_path / "solo", {"solo1": [6, 6, 6, 6]})
    assert train_main(["--data", str(data), "--models", "simple_cnn", "--epochs", "1", "--no-pretrained",
                       "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert ONE_SPECIES in err and "Add the recordings of another species" in err
    assert not Workspace.of(data).cache_root.exists()  # nothing was preprocessed for a run that cannot train


def test_a_single_species_is_refused_by_the_floor_before_preprocessing(tmp_path, capsys):
    from bench.floor import main as floor_main

    data = kaggle_folder(tmp_path / "solo", {"solo1": [6, 6, 6, 6]})
    assert floor_main(["--data", str(data), "--folds", "2"]) == 1
    assert ONE_SPECIES in capsys.readouterr().err
    assert not Workspace.of(data).cache_root.exists()


# ------------------------------------------------------------------------------ duplicate metadata rows
def with_rows_appended(data: Path, rows: list[dict]) -> Path:
    meta = pd.read_csv(data / "train_metadata.csv")
    pd.concat([meta, pd.DataFrame(rows)]).to_csv(data / "train_metadata.csv", index=False)
    return data


def test_a_file_listed_twice_with_two_species_is_refused_naming_both_lines_not_a_class_dropped(tmp_path):
    from data.layout import LayoutError, read_metadata

    data = kaggle_folder(tmp_path / "twice", {"aaa": [6, 6], "bbb": [6, 6]})
    with_rows_appended(data, [{"primary_label": "ccc", "secondary_labels": "[]", "rating": 4.0,
                               "filename": "aaa/XC0000.ogg"}])  # ccc has no other row
    with pytest.raises(LayoutError, match=r"gives one file two primary labels, on line 2 \(aaa/XC0000.ogg: 'aaa'\), "
                                          r"line 6 \(aaa/XC0000.ogg: 'ccc'\): keep one row per file"):
        read_metadata(data)


def test_a_row_repeated_exactly_reads_as_one_recording(tmp_path):
    from data.layout import class_list, read_metadata

    data = kaggle_folder(tmp_path / "repeated", {"aaa": [6, 6], "bbb": [6, 6]})
    first = pd.read_csv(data / "train_metadata.csv").iloc[0].to_dict()
    meta = read_metadata(with_rows_appended(data, [first]))
    assert meta.filename.tolist() == ["aaa/XC0000.ogg", "aaa/XC0001.ogg", "bbb/XC1000.ogg", "bbb/XC1001.ogg"]
    assert class_list(meta) == ["aaa", "bbb"]


# ------------------------------------------------------------------------------ what is not a soundscape
def folder_as_a_mac_leaves_it(folder: Path) -> Path:
    """Two soundscapes, the `._` metadata file macOS writes beside a copied one, a note, a subfolder."""
    for stem in ("s1", "s2"):
        write_ogg(folder / f"{stem}.ogg", tone(6, 900), SR)
    (folder / "._s1.ogg").write_bytes(b"\x00\x05\x16\x07" + bytes(4000))  # AppleDouble header
    (folder / "notes.txt").write_text("recorded at dawn")
    write_ogg(folder / "sub" / "inner.ogg", tone(6, 900), SR)
    return folder


def test_only_the_visible_audio_files_of_test_soundscapes_get_rows(tmp_path):
    from submission.infer import list_soundscapes

    folder = folder_as_a_mac_leaves_it(tmp_path / "test_soundscapes")
    assert [p.name for p in list_soundscapes(folder)] == ["s1.ogg", "s2.ogg"]


def test_hidden_files_are_neither_backgrounds_for_the_holdout_nor_files_without_a_row(tmp_path):
    from data.layout import unlabeled_soundscapes, validate_layout

    data = kaggle_folder(tmp_path / "mac", {"aaa": [6, 6], "bbb": [6, 6]})
    folder_as_a_mac_leaves_it(data / "unlabeled_soundscapes")
    (data / "train_audio" / "aaa" / "._XC0000.ogg").write_bytes(b"\x00\x05\x16\x07" + bytes(4000))
    assert [p.name for p in unlabeled_soundscapes(data)] == ["s1.ogg", "s2.ogg", "inner.ogg"]
    assert validate_layout(data, progress=False).files_without_row == []


# ------------------------------------------------------------------------------ a species that does not decode
def test_a_species_whose_recordings_all_fail_to_decode_keeps_its_column_and_is_named_as_untrained(tmp_path, capsys):
    import json

    from train.__main__ import main as train_main

    data = kaggle_folder(tmp_path / "mute", {"aaa": [6, 6, 6], "bbb": [6, 6, 6], "ccc": [None, None, None]})
    assert train_main(["--data", str(data), "--models", "simple_cnn", "--epochs", "1", "--no-pretrained",
                       "--device", "cpu", "--holdout-fraction", "0", "--windows-per-recording", "1"]) == 0
    assert ("warning: 1 of 3 classes have no training window, so the model cannot learn them: ccc."
            in capsys.readouterr().out)
    run, = Workspace.of(data).runs_dir.glob("simple_cnn-*")
    assert json.loads((run / "split.json").read_text())["classes"] == ["aaa", "bbb", "ccc"]  # the column stays


def test_an_ensemble_judged_on_unscorable_labels_ships_the_best_model_alone_saying_why(tmp_path, monkeypatch, capsys):
    from submission.package import PackageConfig, judged_prefix
    from train.config import TrainConfig

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    data = kaggle_folder(tmp_path / "birds", {"aaa": [6, 6, 6, 6], "bbb": [6, 6, 6, 6]})
    pd.DataFrame({"row_id": ["s_5", "s_10"], "aaa": [0, 1], "bbb": [1, 1]}).to_csv(tmp_path / "birds_solution.csv",
                                                                                   index=False)
    members = []
    for name in ("simple_cnn", "resnet18"):  # runs that withheld recordings: the package rebuilds a hold-out
        run = Workspace.of(data).runs_dir / f"{name}-1"
        run.mkdir(parents=True)
        TrainConfig(model=name, data_dir=str(data), holdout_fraction=0.25).save(run / "config.json")
        members.append((tmp_path / f"{name}.onnx", {"run": run.name, "model_name": name}))
    cfg = PackageConfig(onnx_paths=[p for p, _ in members], out_dir=tmp_path / "dist", data_dir=data)
    assert judged_prefix(members, cfg) == members[:1]
    out = capsys.readouterr().out
    assert "package: shipping simple_cnn alone: an ensemble is judged by the local score: " in out
    assert "['bbb'] are positive in all 2 rows" in out
    assert not Workspace.of(data).holdout_dir.exists()  # DATA's own labels would be chosen over a rebuilt hold-out
