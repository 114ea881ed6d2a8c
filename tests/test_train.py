"""Training: reproducible on CPU, resumable after a kill, refusing what it cannot do."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
METRICS = ["epoch", "train_loss", "val_loss", "val_accuracy", "val_roc_auc"]


def train_cmd(data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "train", "--data", str(data), "--models", "simple_cnn", "--epochs", "4",
            "--device", "cpu", "--windows-per-recording", "2", *extra]


def run_folder(root: Path, name: str) -> Path:
    runs = sorted((root / "train" / "runs" / name).glob("simple_cnn-*"))
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def uninterrupted(tiny_dataset, tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("clean")
    env = {**os.environ, "BIRDKIT_ROOT": str(root), "OMP_NUM_THREADS": "1"}
    subprocess.run(train_cmd(tiny_dataset), cwd=REPO, env=env, check=True, capture_output=True)
    return pd.read_csv(run_folder(root, tiny_dataset.name) / "metrics.csv")[METRICS]


def test_the_same_seed_and_data_give_the_same_validation_metrics_on_cpu(tiny_dataset, uninterrupted, tmp_path):
    env = {**os.environ, "BIRDKIT_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    subprocess.run(train_cmd(tiny_dataset), cwd=REPO, env=env, check=True, capture_output=True)
    run = run_folder(tmp_path, tiny_dataset.name)
    again = pd.read_csv(run / "metrics.csv")[METRICS]
    pd.testing.assert_frame_equal(again, uninterrupted)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["deterministic"] is True  # recorded with every run


def test_a_killed_training_resumes_to_the_same_metrics_as_an_uninterrupted_one(tiny_dataset, uninterrupted, tmp_path):
    env = {**os.environ, "BIRDKIT_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(train_cmd(tiny_dataset), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    runs = tmp_path / "train" / "runs" / tiny_dataset.name
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it once two epochs are on disk
        metrics = list(runs.glob("simple_cnn-*/metrics.csv"))
        if metrics and len(pd.read_csv(metrics[0])) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = run_folder(tmp_path, tiny_dataset.name)
    assert not (run / "summary.json").exists(), "the kill should land before the end"
    out = subprocess.run(train_cmd(tiny_dataset, "--resume"), cwd=REPO, env=env, check=True, capture_output=True,
                         text=True).stdout
    assert f"resuming {run.name}" in out
    resumed = pd.read_csv(run / "metrics.csv")[METRICS]
    pd.testing.assert_frame_equal(resumed, uninterrupted)
    assert (run / "summary.json").exists() and not (run / "last.pt").exists()


def test_an_unknown_model_is_refused_before_any_work(tiny_dataset, tmp_path):
    out = subprocess.run([sys.executable, "-m", "train", "--data", str(tiny_dataset), "--models", "vgg16"],
                         cwd=REPO, capture_output=True, text=True, env={**os.environ, "BIRDKIT_ROOT": str(tmp_path)})
    assert out.returncode != 0
    assert "invalid choice: 'vgg16'" in out.stderr and "simple_cnn" in out.stderr
    assert list(tmp_path.iterdir()) == []  # no cache, no run folder


@pytest.mark.parametrize("module, flag, value, message", [
    ("train", "--epochs", "0", "argument --epochs: must be >= 1, got 0"),
    ("train", "--batch-size", "0", "argument --batch-size: must be >= 1, got 0"),
    ("train", "--num-workers", "-1", "argument --num-workers: must be >= 0, got -1"),
    ("train", "--epochs", "ten", "argument --epochs: expected an integer, got 'ten'"),
    ("export", "--top", "0", "argument --top: must be >= 1, got 0"),
])
def test_counts_that_cannot_work_are_refused_by_the_command_line_naming_the_flag(module, flag, value, message, capsys):
    main = __import__(f"{module}.__main__", fromlist=["main"]).main
    with pytest.raises(SystemExit) as exit_:
        main(["--data", "anywhere", flag, value])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.rstrip().endswith(message)


def test_missing_imagenet_weights_stop_training_before_the_first_model_trains(tiny_dataset, tmp_path, monkeypatch,
                                                                              capsys):
    import urllib.error

    import torch
    import torchvision

    from train.__main__ import main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "out"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no weights cached

    def no_network(url, dst, *args, **kwargs):  # the network layer only
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    assert main(["--data", str(tiny_dataset), "--models", "simple_cnn", "efficientnet_b0", "--epochs", "1",
                 "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not load the ImageNet weights EfficientNet_B0_Weights.IMAGENET1K_V1")
    assert torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1.url in err
    assert "TRAIN_ARGS=--no-pretrained" in err
    assert not (tmp_path / "out").exists()  # simple_cnn did not train first, nothing was cached


def test_resuming_fetches_imagenet_weights_only_for_a_model_with_no_killed_run_to_continue(tmp_path, monkeypatch):
    import urllib.error

    import torch

    from data.features import FeatureConfig
    from train.__main__ import fetch_weights_first, parse_args, unfinished_run

    asked = []

    def no_network(url, *args, **kwargs):  # the network layer only
        asked.append(url)
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no weights cached
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    runs = tmp_path / "runs"
    killed = runs / "resnet18-20261207-070000"
    killed.mkdir(parents=True)
    (killed / "last.pt").write_bytes(b"")  # stopped before its summary: --resume continues it
    resumes = lambda m: unfinished_run(runs, m) is not None  # noqa: E731 (what train_models passes)

    fetch_weights_first(parse_args(["--data", "d", "--models", "resnet18", "--resume"]), FeatureConfig(), resumes)
    assert asked == []  # the resumed run loads its checkpoint, not ImageNet
    with pytest.raises(RuntimeError, match="could not load the ImageNet weights ResNet18_Weights"):
        fetch_weights_first(parse_args(["--data", "d", "--models", "resnet18"]), FeatureConfig(), resumes)
    assert len(asked) == 1  # without --resume a new run starts from ImageNet
    (killed / "summary.json").write_text("{}")  # finished: --resume has nothing to continue, a new run starts
    with pytest.raises(RuntimeError, match="could not load the ImageNet weights ResNet18_Weights"):
        fetch_weights_first(parse_args(["--data", "d", "--models", "resnet18", "--resume"]), FeatureConfig(), resumes)
    assert len(asked) == 2


def test_a_resumed_cross_validation_with_folds_still_to_start_fetches_the_weights_before_any_fold_trains(
        tiny_dataset, tmp_path, monkeypatch, capsys):
    import urllib.error

    import torch

    from train.__main__ import main

    def no_network(url, *args, **kwargs):  # the network layer only
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no weights cached
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    assert main(["--data", str(tiny_dataset), "--models", "resnet18", "--cv", "2", "--holdout-fraction", "0",
                 "--device", "cpu", "--resume"]) != 0
    assert "could not load the ImageNet weights ResNet18_Weights" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*-fold0"))  # no fold started


def test_resume_with_no_killed_run_says_it_starts_a_new_one(tiny_dataset, tmp_path, monkeypatch, capsys):
    from train.__main__ import main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path))
    assert main(["--data", str(tiny_dataset), "--models", "simple_cnn", "--epochs", "1", "--windows-per-recording", "1",
                 "--holdout-fraction", "0", "--device", "cpu", "--resume"]) == 0
    run = run_folder(tmp_path, tiny_dataset.name)
    assert f"train: no killed run of simple_cnn to resume, starting {run.name}" in capsys.readouterr().out


def test_an_output_folder_the_kit_may_not_write_is_named_with_how_to_move_the_outputs(tiny_dataset, tmp_path,
                                                                                     monkeypatch, capsys):
    import errno

    from train.__main__ import main

    root = tmp_path / "readonly"
    monkeypatch.setenv("BIRDKIT_ROOT", str(root))
    real_mkdir = os.mkdir

    def read_only_mount(path, *args, **kwargs):  # what a read-only disk answers (root ignores chmod)
        if str(path).startswith(str(root)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only_mount)
    assert main(["--data", str(tiny_dataset), "--models", "simple_cnn", "--epochs", "1", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {root}")
    assert err.rstrip().endswith(f"(Read-only file system): the kit writes its caches, runs and packages under {root}. "
                                 "Make that writable, or set BIRDKIT_ROOT to a writable folder "
                                 "(e.g. BIRDKIT_ROOT=/tmp/birdkit make ...)")


def test_validation_runs_outside_autocast_as_the_exported_model_does(monkeypatch):
    """On a GPU training runs under bf16 autocast; validation must not: bf16 logits tie scores and
    move the recorded metrics away from the fp32 ONNX model's (on CPU autocast_for does nothing,
    so the test makes entering it fail)."""
    import numpy as np
    import torch

    import train.loop as loop
    from train.config import TrainConfig

    def autocast_refused(*args, **kwargs):
        raise AssertionError("validation entered autocast")

    monkeypatch.setattr(loop, "autocast_for", autocast_refused)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3))
    loader = [(torch.rand(2, 2, 4), torch.tensor([0, 2]), torch.eye(3)[[0, 2]])]  # [B, M, T], [B], [B, C]
    loss, logits = loop.predict(model, loader, TrainConfig(model="simple_cnn", data_dir="."), torch.device("cpu"))
    assert logits.shape == (2, 3) and logits.dtype == np.float32 and np.isfinite(loss)


def test_best_pt_is_the_epoch_with_the_best_val_roc_auc_even_when_a_later_one_is_more_accurate(
        tiny_dataset, tmp_path, monkeypatch):
    import numpy as np
    import torch

    import train.loop as loop
    from data.features import FeatureConfig
    from data.layout import class_list, read_metadata
    from data.preprocess import PreprocessConfig, ensure_cache
    from train.config import config_for
    from train.metrics import accuracy, macro_roc_auc

    cfg = config_for("simple_cnn", str(tiny_dataset), epochs=2, pretrained=False, device="cpu",
                     max_windows_per_recording=1, holdout_fraction=0.0)
    cache = ensure_cache(PreprocessConfig(data_dir=tiny_dataset, features=FeatureConfig(), progress=False))
    n_classes = len(class_list(read_metadata(tiny_dataset)))
    scripted = {}

    def scripted_predict(model, val_loader, cfg, device):  # epoch 1: AUC 1, low accuracy; epoch 2: the reverse
        labels = torch.cat([lab for _, lab, _ in val_loader]).numpy()
        n, c = len(labels), n_classes
        if not scripted:
            logits = np.eye(c)[labels]
            logits[:, 0] += 2.0  # every window's top class is 0, yet each class ranks its own windows first
        else:
            logits = np.zeros((n, c))
            loud = np.where(np.arange(n) % 2 == 0, 0.2, 6.0)  # right top class, scores unranked across windows
            logits[np.arange(n), labels] = loud
            logits[np.arange(n), (labels + 1) % c] = loud - 0.1
        probs = loop.probabilities(cfg.output_activation(), torch.from_numpy(logits)).numpy()
        scripted[len(scripted) + 1] = (macro_roc_auc(np.eye(c)[labels], probs), accuracy(labels, probs))
        return 0.0, logits.astype(np.float32)

    monkeypatch.setattr(loop, "predict", scripted_predict)
    summary = loop.fit(cfg, cache, tmp_path / "run")
    (auc1, acc1), (auc2, acc2) = scripted[1], scripted[2]
    assert auc1 == 1.0 and auc2 < auc1 and acc2 == 1.0 and acc1 < acc2  # the script did what it says
    assert summary["best_epoch"] == 1 and summary["val_roc_auc"] == 1.0
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=False)["epoch"] == 1


def test_resume_continues_the_latest_of_several_killed_runs_of_a_model(tmp_path):
    from train.__main__ import unfinished_run

    for stamp in ("20260101-090000", "20260102-090000", "20260103-090000"):
        (tmp_path / f"simple_cnn-{stamp}").mkdir()
        (tmp_path / f"simple_cnn-{stamp}" / "last.pt").write_bytes(b"")
    (tmp_path / "simple_cnn-20260104-090000").mkdir()  # finished: nothing to resume
    (tmp_path / "simple_cnn-20260104-090000" / "summary.json").write_text("{}")
    assert unfinished_run(tmp_path, "simple_cnn") == tmp_path / "simple_cnn-20260103-090000"
    assert unfinished_run(tmp_path, "resnet18") is None


def test_a_cv_resume_takes_the_latest_run_of_the_fold_with_the_same_config(tmp_path):
    from train.__main__ import latest_fold_run
    from train.config import TrainConfig

    cfg = TrainConfig(model="simple_cnn", data_dir=str(tmp_path), folds=3, fold=1, epochs=2)
    older, newer = tmp_path / "simple_cnn-20260101-090000-fold1", tmp_path / "simple_cnn-20260102-090000-fold1"
    for run, marker in ((older, "summary.json"), (newer, "last.pt")):
        run.mkdir()
        cfg.save(run / "config.json")
        (run / marker).write_text("{}")
    assert latest_fold_run(tmp_path, cfg) == newer


def test_only_outputs_the_kit_may_not_write_become_the_output_folder_message(tmp_path, monkeypatch):
    import errno

    from data.paths import refuse_unwritable

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "out"))

    def failing(error):
        @refuse_unwritable
        def main(argv=None):
            raise error
        return main

    output = str(tmp_path / "out" / "train" / "runs")
    assert failing(PermissionError(errno.EACCES, "Permission denied", output))([]) == 1
    with pytest.raises(PermissionError):  # an input it may not read: BIRDKIT_ROOT would not help
        failing(PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "data" / "train.csv")))([])
    with pytest.raises(FileNotFoundError):  # a missing file is not a permission problem: its own traceback
        failing(FileNotFoundError(errno.ENOENT, "No such file or directory", output))([])


def test_more_folds_than_the_data_can_score_are_refused_before_the_first_fold_trains(tiny_dataset, tmp_path,
                                                                                  monkeypatch, capsys):
    import re

    from train.__main__ import main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path))
    assert main(["--data", str(tiny_dataset), "--models", "simple_cnn", "--cv", "50", "--holdout-fraction", "0",
                 "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    most = re.fullmatch(r"error: with 50 folds, fold \d+ would validate on [01] recording\(s\) of [01] class\(es\) "
                        r"\(\d+ recordings in all\): each fold needs recordings of two classes or more\. Use (\d+) "
                        r"folds, the most that work here \(make cv FOLDS=\1; --cv \1\)\n", err)
    assert most, err
    from data.layout import read_metadata
    from data.split import fold_problem

    meta, k = read_metadata(tiny_dataset), int(most.group(1))
    assert 2 <= k < 50 and fold_problem(meta, k, list(range(k)), 0) is None  # what it suggests works
    assert fold_problem(meta, k + 1, list(range(k + 1)), 0) is not None or k == 49
    assert list(tmp_path.iterdir()) == []  # nothing preprocessed, nothing trained


def test_folds_are_refused_saying_so_where_no_number_of_folds_can_be_scored():
    from data.split import fold_problem

    meta = pd.DataFrame({"primary_label": ["a"] * 6 + ["b"], "filename": [f"a/{i}.ogg" for i in range(6)] + ["b/0.ogg"]})
    assert fold_problem(meta, 5, list(range(5)), 0).endswith(
        "No number of folds works here: the data needs more recordings of more classes")


def test_each_epoch_shows_a_progress_bar_on_a_terminal_and_none_in_a_log(tiny_dataset, tmp_path):
    import fcntl
    import pty
    import re
    import struct
    import termios

    env = {**os.environ, "BIRDKIT_ROOT": str(tmp_path)}
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.run(train_cmd(tiny_dataset, "--epochs", "1"), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=slave, timeout=300)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal's writer is gone: all read
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.returncode == 0
    assert re.search(rb"epoch 1/1: +0%\|.*\| 0/\d+ \[00:00<\?, \?batch/s\]", seen), seen[-600:]  # drawn at the start
    logged = subprocess.run(train_cmd(tiny_dataset, "--epochs", "1"), cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert logged.returncode == 0 and "batch/s" not in logged.stderr + logged.stdout


@pytest.mark.parametrize("flags, says", [
    (["--lr", "-1"], "--lr must be > 0"),
    (["--weight-decay", "-0.1"], "--weight-decay must be >= 0"),
    (["--mixup-prob", "2"], "--mixup-prob is a share of batches in [0, 1]"),
    (["--power-mix-prob", "-1"], "--power-mix-prob is a share of batches in [0, 1]"),
    (["--warmup-epochs", "-1"], "--warmup-epochs must be >= 0"),
    (["--val-fraction", "1.5"], "--val-fraction must be in [0, 1)"),
    (["--holdout-fraction", "1"], "--holdout-fraction must be in [0, 1) (0: train on everything)"),
    (["--cv-folds", "1"], "--cv-folds needs --cv K"),
    (["--cv", "1"], "--cv needs at least 2 folds, got 1 (make cv: FOLDS=2 or more"),
])
def test_a_setting_no_run_can_use_is_refused_at_once_naming_its_flag(tiny_dataset, tmp_path, monkeypatch, capsys,
                                                                    flags, says):
    from train.__main__ import main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path))
    assert main(["--data", str(tiny_dataset), "--models", "simple_cnn", "--device", "cpu", *flags]) == 1
    assert says in capsys.readouterr().err
    assert not any(tmp_path.rglob("*")), "refused before any cache or run folder"


def test_asking_for_cuda_where_torch_sees_no_gpu_is_refused_before_preprocessing(tiny_dataset, tmp_path, monkeypatch,
                                                                                capsys):
    import torch

    from train.__main__ import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this machine's answer, on any machine
    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path))
    assert main(["--data", str(tiny_dataset), "--models", "simple_cnn", "--device", "cuda"]) == 1
    assert "--device cuda, but torch sees no CUDA GPU" in capsys.readouterr().err
    assert not any(tmp_path.rglob("*"))


def test_training_warns_at_once_where_the_metadata_has_a_species_sample_submission_lacks(tiny_dataset, tmp_path,
                                                                                        monkeypatch, capsys):
    import shutil

    from train.__main__ import main

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    header = (data / "sample_submission.csv").read_text().splitlines()[0].split(",")
    dropped = header.pop()
    (data / "sample_submission.csv").write_text(",".join(header) + "\n")
    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    assert main(["--data", str(data), "--models", "simple_cnn", "--device", "cpu", "--lr", "-1"]) == 1  # stops there
    err = capsys.readouterr().err
    assert err.startswith(f"warning: train_metadata.csv and sample_submission.csv of {data} name different species "
                          f"(only in the metadata: ['{dropped}'], only in sample_submission: [])")
