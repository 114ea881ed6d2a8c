"""Behaviour the rest of the suite left unexercised (found with coverage.py): the softmax loss in a
real run, config refusals, the preprocess lock and a stale shard, the notebook's fallbacks,
`make score` / `make upload` / `make package` refusals and the cross-validation resume."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from data.features import FEATURES_VERSION, FeatureConfig


@pytest.fixture(scope="module")
def gapbirds(tiny_dataset, tmp_path_factory) -> Path:
    """A copy of the tiny dataset under its own name: its caches, runs and exports are this module's alone."""
    return Path(shutil.copytree(tiny_dataset, tmp_path_factory.mktemp("gaps") / "gapbirds"))


def kit_onnx(path: Path, classes: list[str], features: FeatureConfig = FeatureConfig()) -> Path:
    """An identity graph carrying the kit's metadata: all that packaging reads of a model."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
    for key, value in {"classes": json.dumps(classes), "model_name": path.stem, "val_roc_auc": "0.5",
                       "features": json.dumps(features.to_dict()), "features_version": str(FEATURES_VERSION)}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


# ------------------------------------------------------------------------------------ training
def test_a_run_with_the_softmax_loss_sgd_and_time_shift_trains_and_reports_probabilities_that_sum_to_one(
        tiny_dataset, tmp_path):
    from data.preprocess import PreprocessConfig, ensure_cache
    from train.config import config_for
    from train.loop import fit

    cfg = config_for("simple_cnn", str(tiny_dataset), epochs=2, pretrained=False, device="cpu", loss="ce",
                     optimizer="sgd", lr=1e-2, time_shift=0.25, max_windows_per_recording=1, holdout_fraction=0.0)
    assert cfg.output_activation() == "softmax"
    cache = ensure_cache(PreprocessConfig(data_dir=tiny_dataset, features=FeatureConfig(), progress=False, workers=1))
    summary = fit(cfg, cache, tmp_path / "run")

    assert summary["status"] == "finished" and summary["epochs"] == 2
    assert 0.0 <= summary["val_roc_auc"] <= 1.0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["loss"], saved["optimizer"], saved["time_shift"]) == ("ce", "sgd", 0.25)
    probs = np.load(tmp_path / "run" / "val_predictions.npz")["probs"]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)  # softmax over the classes, not sigmoids
    # val_loss is the cross-entropy of the last epoch's logits against the primary labels
    import pandas as pd
    import torch
    import torch.nn.functional as F

    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    last = np.load(tmp_path / "run" / "val_last.npz")
    expected = F.cross_entropy(torch.from_numpy(last["logits"]), torch.from_numpy(last["label_idx"]).long()).item()
    assert len(metrics) == 2 and np.isfinite(metrics.train_loss).all()
    assert metrics.val_loss.iloc[-1] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("loss, expected_sums", [("ce", {1.0}), ("bce", {1.0, 2.0})])
def test_power_mixing_keeps_softmax_targets_a_distribution_and_sigmoid_targets_a_union(loss, expected_sums):
    import torch

    from train.config import TrainConfig
    from train.loop import augment

    cfg = TrainConfig(model="simple_cnn", data_dir="x", loss=loss, power_mix_prob=1.0, mixup_prob=0.0)
    x = torch.rand(16, *cfg.features.shape)
    y = torch.eye(4)[torch.arange(16) % 4]  # one-hot primary labels, four classes
    _, mixed = augment(cfg, x, y, torch.Generator().manual_seed(0))
    sums = set(mixed.sum(dim=1).tolist())
    assert sums == expected_sums  # ce: a mixed pair is 0.5 / 0.5, not 1 / 1 (cross-entropy would count it twice)
    assert ((mixed > 0).sum(dim=1) == 2).any()  # both windows' species are targets either way


@pytest.mark.parametrize("overrides, message", [
    (dict(loss="focal"), "loss must be 'ce' or 'bce', got 'focal'"),
    (dict(optimizer="lion"), "optimizer must be adam, adamw or sgd, got 'lion'"),
    (dict(lr_schedule="step"), "lr_schedule must be one of constant, cosine, onecycle, got 'step'"),
    (dict(ema_decay=1.0), "ema_decay must be in [0, 1) (0: off; 0.999 is typical), got 1.0"),
    (dict(folds=5, fold=5), "fold must be in [0, 5), got 5"),
    (dict(balance_power=-0.5), "balance_power must be >= 0 (0: off, 0.5: half way, 1: classes equal), got -0.5"),
    (dict(schedule="quick"), "unknown schedule 'quick'; choose one of full, demo"),
    (dict(recipe="mine"), "unknown recipe 'mine'; choose one of auto, seed, scratch"),
])
def test_a_config_that_cannot_train_is_refused_naming_the_setting_and_what_it_takes(overrides, message):
    from train.config import config_for

    with pytest.raises(ValueError) as e:
        config_for("simple_cnn", "data/x", **overrides)
    assert str(e.value) == message


def test_train_refuses_an_ema_decay_of_one_with_an_error_line_before_any_run_folder_or_cache(gapbirds, capsys):
    from data.paths import Workspace
    from train.__main__ import main as train_main

    ws = Workspace.of(gapbirds)
    before = (ws.runs_dir.exists(), ws.cache_root.exists())
    assert train_main(["--data", str(gapbirds), "--models", "simple_cnn", "--ema-decay", "1", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "error: ema_decay must be in [0, 1) (0: off; 0.999 is typical), got 1.0" in err
    assert "Traceback" not in err
    assert (ws.runs_dir.exists(), ws.cache_root.exists()) == before  # no run folder, no cache


def test_a_cv_resume_skips_a_fold_folder_killed_before_its_first_epoch_and_one_trained_otherwise(tmp_path):
    from train.__main__ import latest_fold_run
    from train.config import TrainConfig

    cfg = TrainConfig(model="simple_cnn", data_dir=str(tmp_path), folds=3, fold=0, epochs=2)
    resumable = tmp_path / "simple_cnn-20260101-090000-fold0"
    other_lr = tmp_path / "simple_cnn-20260102-090000-fold0"
    no_checkpoint = tmp_path / "simple_cnn-20260103-090000-fold0"  # killed while loading data: config.json only
    for run in (resumable, other_lr, no_checkpoint):
        run.mkdir()
    cfg.save(resumable / "config.json")
    (resumable / "last.pt").write_bytes(b"")
    TrainConfig(model="simple_cnn", data_dir=str(tmp_path), folds=3, fold=0, epochs=2, lr=0.1).save(
        other_lr / "config.json")
    (other_lr / "last.pt").write_bytes(b"")
    cfg.save(no_checkpoint / "config.json")

    assert latest_fold_run(tmp_path, cfg) == resumable


# ------------------------------------------------------------------------------------ preprocessing
def test_a_second_preprocess_of_a_cache_being_written_is_refused_saying_to_wait(gapbirds, capsys):
    from data.preprocess import _exclusive_lock, cache_dir_for, main as preprocess_main

    cache_dir = cache_dir_for(gapbirds, FeatureConfig())
    cache_dir.mkdir(parents=True, exist_ok=True)
    held = _exclusive_lock(cache_dir / ".lock")  # the first preprocess, still writing
    try:
        assert preprocess_main(["--data", str(gapbirds), "--no-progress", "--workers", "1"]) == 1
    finally:
        held.close()
    err = capsys.readouterr().err
    assert f"error: another preprocess is writing {cache_dir} right now; wait for it to finish" in err
    assert not (cache_dir / "entries.csv").exists()  # nothing written under the first one's feet


def test_an_unfinished_shard_is_named_with_its_rerun_command_and_the_plain_run_caches_everything_itself(
        gapbirds, capsys):
    import pandas as pd

    from data.preprocess import cache_dir_for, main as preprocess_main

    cache_dir = cache_dir_for(gapbirds, FeatureConfig())
    killed = cache_dir / "shards" / "1-of-3"
    killed.mkdir(parents=True)
    (killed / "entries.csv").write_text("filename,status,first_row,n_windows,detail\n")  # no complete.json

    assert preprocess_main(["--data", str(gapbirds), "--no-progress", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "preprocess: 1-of-3 is not finished; rerun `--shard 1/3`" in out
    n_recordings = len(pd.read_csv(gapbirds / "train_metadata.csv"))
    complete = json.loads((cache_dir / "complete.json").read_text())
    assert complete["ok"] == complete["recordings"] == n_recordings
    assert killed.is_dir()  # left for its rerun, not merged


def test_a_cache_folder_holding_other_features_is_refused_saying_to_delete_it(gapbirds, capsys):
    from data.preprocess import cache_dir_for, main as preprocess_main

    cache_dir = cache_dir_for(gapbirds, FeatureConfig(denoise="spectral"))
    cache_dir.mkdir(parents=True)
    (cache_dir / "features.json").write_text(json.dumps({"version": FEATURES_VERSION - 1}))

    assert preprocess_main(["--data", str(gapbirds), "--no-progress", "--workers", "1", "--denoise", "spectral"]) == 1
    err = capsys.readouterr().err
    assert f"error: {cache_dir / 'features.json'} describes other features than this run" in err
    assert "Delete the folder to rebuild it." in err
    assert not (cache_dir / "entries.csv").exists()


# ------------------------------------------------------------------------------------ the notebook
def test_the_notebook_without_the_competition_attached_says_to_add_it(tmp_path):
    from submission.infer import find_competition

    (tmp_path / "birdclef-kit-model").mkdir()  # the kit's dataset alone
    (tmp_path / "birdclef-kit-model" / "birdkit.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as e:
        find_competition(tmp_path, "birdclef-2024")
    assert str(e.value) == f"no sample_submission.csv under {tmp_path}: add the competition data to the notebook"


def test_environment_variables_override_the_manifests_deadline_and_workers(monkeypatch):
    from submission.infer import RunSettings, run_settings

    manifest = {"runtime": {"deadline_s": 6600.0}}
    for name in ("BIRDKIT_DEADLINE_S", "BIRDKIT_FEATURE_WORKERS", "BIRDKIT_SOUNDSCAPE_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    assert run_settings(manifest) == RunSettings(deadline_s=6600.0)

    monkeypatch.setenv("BIRDKIT_DEADLINE_S", "90")
    monkeypatch.setenv("BIRDKIT_FEATURE_WORKERS", "0")
    monkeypatch.setenv("BIRDKIT_SOUNDSCAPE_WORKERS", "3")
    s = run_settings(manifest)
    assert (s.deadline_s, s.feature_workers, s.soundscape_workers) == (90.0, 0, 3)
    assert s.parallel_soundscapes(slowest_ms_per_window=500.0) == 3  # the override wins over the speed rule


@pytest.mark.parametrize("meta, message", [
    ({"features": "{}", "features_version": "1"}, "has no 'classes' metadata: it was not exported by this kit"),
    ({"classes": "[]", "features": "{}", "features_version": "0"},
     f"was trained with features v0, this code computes features v{FEATURES_VERSION}: re-train and re-export"),
])
def test_the_notebook_refuses_a_model_it_cannot_feed_saying_why(meta, message, tmp_path):
    from submission.infer import check_metadata

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_metadata(meta, tmp_path / "model.onnx")


def test_an_ensemble_needs_a_model_and_a_known_way_to_combine(tmp_path):
    from submission.infer import Ensemble

    with pytest.raises(ValueError, match="an ensemble needs at least one model"):
        Ensemble([])

    class Member:  # what the ensemble checks of a model
        classes, features, name = ["a", "b"], FeatureConfig(), "m"

    with pytest.raises(ValueError, match="combine must be 'mean' or 'min', got 'max'"):
        Ensemble([Member()], "max")


# ------------------------------------------------------------------------------------ score, package, upload
def test_score_explains_a_notebook_that_timed_out_or_lost_its_kernel(tmp_path):
    import nbformat
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    from submission.score import notebook_failure

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("intro"), nbformat.v4.new_code_cell("run()")]
    executed = tmp_path / "executed.ipynb"
    timed_out = notebook_failure(nb, CellTimeoutError("slow"), executed, 600)
    assert timed_out == (f"the notebook stopped: a cell ran past --timeout-s 600 s (SCORE_ARGS=\"--timeout-s N\" "
                         f"raises it; on Kaggle the notebook's deadline decides). Its outputs are in {executed}")
    nb.cells[1].outputs = [nbformat.v4.new_output("error", ename="MemoryError", evalue="", traceback=[])]
    dead = notebook_failure(nb, DeadKernelError("Kernel died"), executed, 600)
    assert dead.startswith("the notebook stopped: cell 2 of 2 lost its kernel (out of memory? `make bench-infer`")


def test_score_without_a_packaged_notebook_says_to_run_make_package(gapbirds, tmp_path, capsys):
    from submission.score import main as score_main

    assert score_main(["--data", str(gapbirds), "--dist", str(tmp_path / "dist")]) == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'dist'} holds no packaged notebook: run `make package` first" in err


@pytest.mark.parametrize("value", ["0", "-2", "three"])
def test_package_refuses_an_ensemble_size_that_is_neither_auto_nor_a_count(value, capsys):
    from submission.package import parse_args

    with pytest.raises(SystemExit) as e:
        parse_args(["--data", "x", "--ensemble", value])
    assert e.value.code == 2
    assert f"--ensemble takes auto or a number of models >= 1, got {value!r}" in capsys.readouterr().err


def test_a_candidate_with_other_classes_is_left_out_of_the_ensemble_saying_so(tmp_path, capsys):
    from submission.package import PackageConfig, choose_members

    best = kit_onnx(tmp_path / "model.onnx", ["a", "b"])
    other = kit_onnx(tmp_path / "model-2.onnx", ["a", "c"])
    members = choose_members(PackageConfig([best, other], tmp_path / "dist"))
    assert [path for path, _ in members] == [best]
    assert "package: model-2.onnx left out of the ensemble: other classes or features than model.onnx" in \
        capsys.readouterr().out


def test_package_with_nothing_exported_trains_first_and_stops_with_training_s_error(gapbirds, tmp_path, capsys):
    from data.paths import Workspace
    from submission.package import main as package_main

    rc = package_main(["--data", str(gapbirds), "--no-wheels", "--out", str(tmp_path / "dist"),
                       "--train-args=--models simple_cnn --device cpu --ema-decay 2"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "package: no exported model for gapbirds yet, exporting first" in captured.out
    assert "error: ema_decay must be in [0, 1)" in captured.err
    assert "error: training failed (above), so there is nothing to export" in captured.err
    assert not (tmp_path / "dist").exists() and not Workspace.of(gapbirds).export_dir.exists()


def write_dist(root: Path, dataset_id: str = "tester/birdclef-kit-model", mounts: list[str] | None = None) -> Path:
    (root / "dataset").mkdir(parents=True)
    (root / "notebook").mkdir()
    (root / "dataset" / "dataset-metadata.json").write_text(json.dumps({"id": dataset_id}))
    (root / "dataset" / "birdkit.json").write_text(json.dumps({"model_name": "simple_cnn"}))
    kernel = {"id": "tester/birdclef-kit-submission", "dataset_sources": [dataset_id] if mounts is None else mounts}
    (root / "notebook" / "kernel-metadata.json").write_text(json.dumps(kernel))
    return root


@pytest.mark.parametrize("case, message", [
    ("torn json", "dataset-metadata.json is not valid JSON"),
    ("id without user", "dataset-metadata.json in {dist} has no id of the form <user>/<slug>: run `make package` again"),
    ("other dataset mounted", "the notebook in {dist}/notebook does not mount the dataset tester/birdclef-kit-model "
                              "packaged beside it: re-run `make package`"),
])
def test_upload_refuses_a_damaged_package_before_asking_for_credentials(case, message, tmp_path, monkeypatch, capsys):
    from submission.upload import main as upload_main

    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-config"))
    dist = tmp_path / "dist"
    if case == "torn json":
        write_dist(dist)
        (dist / "dataset" / "dataset-metadata.json").write_text('{"id": "tester/birdclef-kit')
    elif case == "id without user":
        write_dist(dist, dataset_id="birdclef-kit-model")
    else:
        write_dist(dist, mounts=["tester/an-older-dataset"])

    assert upload_main(["--dist", str(dist)]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and message.format(dist=dist) in err
    assert "credentials" not in err.lower() and "Traceback" not in err
