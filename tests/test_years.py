"""BirdCLEF's sister years: 2025's layout runs the whole chain; 2021-2022's is refused, saying why.

2025 renamed train_metadata.csv to train.csv and eBird_Taxonomy_v2021.csv to taxonomy.csv, writes
"['']" for a recording without secondary labels, names some species by number (iNaturalist ids),
its ~700 test soundscapes last one minute, and Kaggle stops its notebooks at 90 minutes.
2021-2022 scored a long table (row_id,target)."""
from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.layout import LayoutError, class_list, read_metadata, require_layout

REPO = Path(__file__).resolve().parents[1]
NUMBERED = "1139490"  # a 2025 class named by its iNaturalist taxon id


def as_birdclef_2025(src: Path, dst: Path, renamed: str) -> Path:
    """Copy a generated 2024-layout dataset into 2025's layout; `renamed` becomes NUMBERED."""
    shutil.copytree(src, dst)
    shutil.copy(src.with_name(src.name + "_solution.csv"), dst.with_name(dst.name + "_solution.csv"))
    (dst / "train_audio" / renamed).rename(dst / "train_audio" / NUMBERED)
    meta = pd.read_csv(dst / "train_metadata.csv", keep_default_na=False)
    meta["primary_label"] = meta["primary_label"].replace(renamed, NUMBERED)
    meta["filename"] = meta["filename"].str.replace(f"{renamed}/", f"{NUMBERED}/", regex=False)
    meta["secondary_labels"] = [str([NUMBERED if s == renamed else s for s in ast.literal_eval(v)] or [""])
                                for v in meta["secondary_labels"]]
    meta.to_csv(dst / "train.csv", index=False)
    (dst / "train_metadata.csv").unlink()
    (dst / "eBird_Taxonomy_v2021.csv").rename(dst / "taxonomy.csv")
    for table in (dst / "sample_submission.csv", dst.with_name(dst.name + "_solution.csv")):
        frame = pd.read_csv(table).rename(columns={renamed: NUMBERED})
        classes = sorted(c for c in frame.columns if c != "row_id")  # 2025's order: numbers first
        frame[["row_id", *classes]].to_csv(table, index=False)
    return dst


@pytest.fixture(scope="module")
def birdclef_2025(tmp_path_factory) -> Path:
    """3 synthetic species x 5 recordings in 2025's layout, one 1-minute labelled test soundscape."""
    from data.synth import generate

    root = tmp_path_factory.mktemp("years")
    src = generate(root / "src", seed=3, n_species=3, recordings_per_species=5, n_test_soundscapes=1,
                   n_unlabeled=0, soundscape_s=60.0, progress=False)
    renamed = sorted(pd.read_csv(src / "train_metadata.csv")["primary_label"].unique())[-1]
    return as_birdclef_2025(src, root / "birdclef-2025", renamed)


def test_2025s_train_csv_is_read_with_its_numbered_class_and_no_empty_secondary_labels(birdclef_2025):
    meta = read_metadata(birdclef_2025)
    assert not (birdclef_2025 / "train_metadata.csv").exists()
    assert class_list(meta)[0] == NUMBERED and len(class_list(meta)) == 3
    assert (meta["primary_label"] == NUMBERED).sum() == 5
    raw = pd.read_csv(birdclef_2025 / "train.csv", keep_default_na=False)["secondary_labels"]
    assert (raw == "['']").any()  # 2025's way of saying "none" is present and parses to nothing
    assert all("" not in labels for labels in meta["secondary_labels"])


def make_dry_run(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("COMPETITION", "DATA")}  # the user's shell: not here
    return subprocess.run(["make", "-n", *args, "VENV=.venv"], cwd=REPO, capture_output=True, text=True,
                          check=True, env=env).stdout


def test_make_brings_in_nothing_for_a_2025_folder_that_is_already_there(birdclef_2025):
    dry = make_dry_run("train", f"DATA={birdclef_2025}")
    assert "-m train --data" in dry and "data.download" not in dry and "data.synth" not in dry


def test_make_downloads_only_into_a_folder_named_after_a_competition_or_where_the_user_names_it(tmp_path):
    typo = tmp_path / "birdclf-2024"  # not there: a typo the training stage reports, not a download target
    assert "data.download" not in make_dry_run("train", f"DATA={typo}")
    assert "data.download --competition birdclef-2099 --out data/birdclef-2099" in make_dry_run(
        "train", "DATA=data/birdclef-2099")  # the folder names the competition, as `make data` names folders
    assert f"data.download --competition birdclef-2025 --out {typo}" in make_dry_run(
        "train", f"DATA={typo}", "COMPETITION=birdclef-2025")


def test_make_export_and_package_train_what_make_train_would_when_nothing_is_trained_yet():
    settings = ["MODELS=simple_cnn", "SEED=3", "DENOISE=spectral", "TRAIN_ARGS=--epochs 7"]
    trains = "--models simple_cnn --seed 3 --denoise spectral --epochs 7"
    assert f"-m train --data elsewhere {trains}" in make_dry_run("train", "DATA=elsewhere", *settings)
    for target, module in (("export", "-m export"), ("package", "-m submission.package")):
        line = [line for line in make_dry_run(target, "DATA=elsewhere", *settings).splitlines() if module in line][0]
        assert f"--train-args='{trains}'" in line
    line = [line for line in make_dry_run("export", "DATA=elsewhere", "TRAIN_ARGS=--note 'a b'").splitlines()
            if "-m export" in line][0]
    train_args = next(w.split("=", 1)[1] for w in shlex.split(line) if w.startswith("--train-args="))  # the shell's word
    assert shlex.split(train_args)[-2:] == ["--note", "a b"]  # TRAIN_ARGS's own quotes survive the trip


def test_make_passes_a_competition_the_user_names_to_package_holdout_and_score_and_otherwise_none():
    named = make_dry_run("package", "holdout", "score", "COMPETITION=birdclef-2025", "DATA=elsewhere").splitlines()
    unnamed = make_dry_run("package", "holdout", "score", "DATA=elsewhere").splitlines()
    for module in ("submission.package", "data.holdout", "submission.score"):
        assert [line for line in named if module in line][0].split()[-1] == "birdclef-2025"
        assert "--competition" not in [line for line in unnamed if module in line][0]


def test_a_2025_dataset_trains_exports_packages_and_scores_through_the_chain(birdclef_2025, capsys):
    from data.paths import Workspace
    from export.__main__ import main as export_main
    from submission.package import main as package_main
    from submission.score import main as score_main
    from train.__main__ import main as train_main

    data = str(birdclef_2025)
    assert train_main(["--data", data, "--models", "simple_cnn", "--epochs", "2", "--device", "cpu",
                       "--holdout-fraction", "0"]) == 0
    assert export_main(["--data", data]) == 0
    dist = birdclef_2025.parent / "dist"  # its own: the session's chain keeps the shared one
    assert package_main(["--data", data, "--no-wheels", "--out", str(dist)]) == 0
    assert score_main(["--data", data, "--dist", str(dist)]) == 0
    assert "secondary labels outside" not in capsys.readouterr().out  # "['']" is no label at all

    kernel = json.loads((dist / "notebook" / "kernel-metadata.json").read_text())
    assert kernel["competition_sources"] == ["birdclef-2025"]  # named after the data folder, as `make data` names it
    manifest = json.loads((dist / "dataset" / "birdkit.json").read_text())
    assert manifest["runtime"]["deadline_s"] == 80 * 60  # 2025's Kaggle limit is 90 minutes, not 120
    ws = Workspace.of(birdclef_2025)
    assert (ws.score_dir / "input" / "birdclef-2025" / "sample_submission.csv").exists()
    sub = pd.read_csv(ws.score_dir / "working" / "submission.csv")
    assert sub.columns.tolist() == pd.read_csv(birdclef_2025 / "sample_submission.csv", nrows=0).columns.tolist()
    assert sub.columns[1] == NUMBERED
    stem = next((birdclef_2025 / "test_soundscapes").glob("*.ogg")).stem
    assert sub["row_id"].tolist() == [f"{stem}_{t}" for t in range(5, 65, 5)]  # one minute: _5 ... _60
    result = json.loads((ws.score_dir / "score.json").read_text())
    assert result["rows"] == 12 and 0.0 <= result["score"] <= 1.0


def test_a_2022_long_format_sample_submission_is_refused_naming_the_supported_years(tmp_path):
    (tmp_path / "train_audio").mkdir()
    (tmp_path / "train_metadata.csv").write_text("primary_label,secondary_labels,filename\n")
    (tmp_path / "sample_submission.csv").write_text("row_id,target\nsoundscape_1001_akiapo_5,False\n")
    with pytest.raises(LayoutError, match=r"long format of BirdCLEF 2021-2022 \(row_id,target\).*"
                                          r"format of BirdCLEF 2023-2025"):
        require_layout(tmp_path)


def test_a_2021_folder_says_its_layout_is_2021s(tmp_path):
    (tmp_path / "train_short_audio").mkdir()
    (tmp_path / "train_metadata.csv").write_text("primary_label,secondary_labels,filename\n")
    (tmp_path / "sample_submission.csv").write_text("row_id,site,audio_id,seconds,birds\n")
    with pytest.raises(LayoutError, match=r"lacks train_audio \(BirdCLEF 2021 layout: the kit reads 2023-2025.s\)\. Download a 2023-2025 competition"):
        require_layout(tmp_path)


def test_a_corrupt_soundscape_owes_the_rows_of_the_one_minute_files_beside_it(tmp_path):
    from data.audio_io import write_ogg
    from data.features import FeatureConfig
    from submission.infer import expected_windows

    one_minute, alone = tmp_path / "2025", tmp_path / "alone"
    one_minute.mkdir(), alone.mkdir()
    for stem in ("a", "b"):
        write_ogg(one_minute / f"{stem}.ogg", np.zeros(60 * 32_000, np.float32), 32_000)
    for folder in (one_minute, alone):
        (folder / "c_corrupt.ogg").write_bytes(b"OggS" + bytes(500))
    cfg = FeatureConfig()
    assert expected_windows(one_minute / "a.ogg", cfg) == 12
    assert expected_windows(one_minute / "c_corrupt.ogg", cfg) == 12  # 2025: 1-minute soundscapes, _5 ... _60
    assert expected_windows(alone / "c_corrupt.ogg", cfg) == 48  # nothing beside it: 2024's 4 minutes


def test_the_kaggle_projection_follows_the_competitions_hidden_test_set():
    from submission.budget import Costs, kaggle_test_set

    costs = Costs(decode_s=1.0, features_s=2.0, model_s=3.0)  # CPU seconds per 4-minute soundscape
    assert costs.projected_min(kaggle_test_set("birdclef-2024")) == pytest.approx(1100 * 6.0 / 4 / 60)  # 27.5 min
    assert costs.projected_min(kaggle_test_set("birdclef-2025")) == pytest.approx(700 * 6.0 / 4 / 4 / 60)  # 4.4 min
    assert costs.projected_min(kaggle_test_set("birdclef-2023")) == pytest.approx(200 * 6.0 * 2.5 / 4 / 60)  # 10-min files
    assert kaggle_test_set("birdclef-2023").deadline_min == kaggle_test_set("birdclef-2024").deadline_min == 110


def test_a_competition_the_kit_does_not_know_gets_the_shortest_known_limit(tmp_path):
    from submission.budget import kaggle_test_set
    from submission.package import PackageConfig, deadline_min

    unknown = kaggle_test_set("birdclef-2031")
    assert (unknown.soundscapes, unknown.soundscape_s, unknown.limit_min) == (1100, 240.0, 90.0)  # most audio, 90 min
    assert deadline_min(PackageConfig(onnx_paths=[], out_dir=tmp_path, competition="birdclef-2031")) == 80
    assert deadline_min(PackageConfig(onnx_paths=[], out_dir=tmp_path, competition="birdclef-2031",
                                      deadline_min=100)) == 100


def test_packaging_for_a_competition_the_kit_does_not_know_says_which_limit_it_assumed(chain, tiny_dataset,
                                                                                       tmp_path, capsys):
    from submission.package import main as package_main

    assert package_main(["--data", str(tiny_dataset), "--no-wheels", "--ensemble", "1", "--competition",
                         "birdclef-2031", "--out", str(tmp_path / "dist")]) == 0
    assert ("warning: the kit does not know birdclef-2031's Kaggle limit; the notebook's guard assumes the shortest "
            "known (90 minutes: deadline 80)") in capsys.readouterr().err
    manifest = json.loads((tmp_path / "dist" / "dataset" / "birdkit.json").read_text())
    assert manifest["runtime"]["deadline_s"] == 80 * 60


def test_make_generates_the_sample_where_it_is_missing_rather_than_downloading_it(tmp_path):
    sample = tmp_path / "sample"
    dry = make_dry_run("train", f"DATA={sample}", f"SAMPLE={sample}")
    assert f"-m data.synth --out {sample}" in dry and "data.download" not in dry
    assert dry.index("data.synth") < dry.index(f"-m train --data {sample}")


@pytest.mark.parametrize("setting, message", [
    ("DENOISE=spectal", "DENOISE=spectal: use none, spectral or noisereduce (1, yes or true: noisereduce)"),
    ("DENOISE=Spectral", "DENOISE=Spectral: use none, spectral or noisereduce"),
    ("GPUS=two", "GPUS=two: give the number of GPUs to train on, e.g. GPUS=2 (1: a single process)"),
])
def test_make_refuses_a_setting_it_would_otherwise_drop_before_running_anything(setting, message):
    out = subprocess.run(["make", "--no-print-directory", "-n", "train", setting, "VENV=.venv"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""  # no command would have run
    assert message in out.stderr


@pytest.mark.parametrize("setting, flag", [("DENOISE=1", "--denoise noisereduce"), ("DENOISE=spectral", "--denoise spectral"),
                                           ("DENOISE=none", None), ("GPUS=2", "--nproc_per_node=2")])
def test_make_accepts_each_documented_denoise_and_gpus_setting(setting, flag):
    line = next(line for line in make_dry_run("train", "DATA=elsewhere", setting).splitlines() if "--data elsewhere" in line)
    assert (flag in line) if flag else ("--denoise" not in line)


@pytest.mark.parametrize("slug, says", [
    ("birdcelf-2024", "--competition birdcelf-2024 is not a BirdCLEF slug (birdclef-YYYY: birdclef-2023, "
                      "birdclef-2024, birdclef-2025): the notebook would attach a competition Kaggle does not have"),
    ("birdclef-2021", "the kit does not support birdclef-2021: BirdCLEF 2021-2022 scored a long table"),
])
def test_packaging_for_a_mistyped_or_long_table_competition_is_refused_before_anything_is_exported(
        tiny_dataset, tmp_path, monkeypatch, capsys, slug, says):
    from submission.package import main as package_main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    assert package_main(["--data", str(tiny_dataset), "--no-wheels", "--competition", slug,
                         "--out", str(tmp_path / "dist")]) == 1
    assert capsys.readouterr().err.startswith(f"error: {says}")
    assert not (tmp_path / "root").exists() and not (tmp_path / "dist").exists()  # nothing trained or written
