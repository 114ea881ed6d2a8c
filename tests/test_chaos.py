"""Interruptions and concurrency: what a kill, a rerun or a second command at once leaves behind."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from data.preprocess import PreprocessConfig, preprocess

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def two_torch_threads():
    """torch on two threads for the test, whatever the machine's default, and back after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_preprocessing_in_the_training_process_gives_its_threads_back(tiny_dataset, tmp_path, monkeypatch,
                                                                      two_torch_threads):
    # `make train` preprocesses in its own process first (one worker, or one recording left);
    # the training that follows must not be held to the worker's single thread.
    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    data = shutil.copytree(tiny_dataset, tmp_path / "fresh")
    preprocess(PreprocessConfig(Path(data), workers=1, progress=False))
    assert torch.get_num_threads() == 2


def train_args(data: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--models", "simple_cnn", "--epochs", "1", "--no-pretrained", "--device", "cpu",
            "--windows-per-recording", "1", "--preprocess-workers", "1", *extra]


def test_two_trainings_started_in_the_same_second_train_into_two_run_folders(tiny_dataset, tmp_path, monkeypatch):
    # Run folders are named by the second a command started; a second command in that second
    # (another seed, a scheduler's array job) used to write into the first one's folder.
    import train.__main__ as train_cli

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path))
    monkeypatch.setattr(train_cli.time, "strftime", lambda fmt: "20260101-120000")
    for seed in ("0", "1"):
        assert train_cli.main(train_args(tiny_dataset, "--seed", seed)) == 0
    runs = sorted((tmp_path / "train" / "runs" / tiny_dataset.name).glob("simple_cnn-*"))
    assert [r.name for r in runs] == ["simple_cnn-20260101-120000", "simple_cnn-20260101-120000-2"]
    assert [json.loads((r / "config.json").read_text())["seed"] for r in runs] == [0, 1]
    assert [torch.load(r / "best.pt", weights_only=False)["config"]["seed"] for r in runs] == [0, 1]


def test_resuming_a_run_that_is_still_training_is_refused(tiny_dataset, tmp_path, monkeypatch, capsys):
    # `make train RESUME=1` takes the latest run without a summary; while its first command still
    # trains, the two would write the same checkpoints and temporary files.
    from train.__main__ import main as train_main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path))
    cmd = [sys.executable, "-m", "train", *train_args(tiny_dataset)]
    cmd[cmd.index("--epochs") + 1] = "30"
    live = subprocess.Popen(cmd, cwd=REPO, env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        last = wait_for(lambda: list((tmp_path / "train" / "runs" / tiny_dataset.name).glob("simple_cnn-*/last.pt")))
        rc = train_main(train_args(tiny_dataset, "--resume"))
        assert live.poll() is None, "the first command should still be training"
    finally:
        live.kill()
        live.wait()
    assert rc == 1
    assert f"another training process is writing {last[0].parent} right now" in capsys.readouterr().err


def wait_for(found, timeout_s: float = 120.0):
    """found()'s first truthy value, polling; fails the test after timeout_s."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"nothing after {timeout_s} s")


def finished_fake_run(runs_dir: Path, name: str, auc: float) -> None:
    """A run folder export ranks as finished (its weights are never read here)."""
    run = runs_dir / name
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": "finished", "val_roc_auc": auc, "val_accuracy": auc}))
    (run / "best.pt").write_bytes(b"")


def test_an_export_stopped_between_its_models_is_not_taken_as_finished_by_package(tmp_path, monkeypatch, capsys):
    # Ctrl-C (or a kill) after model.onnx was replaced but before model-2.onnx: `make package`
    # used to see model.onnx, skip the export and ship one model without judging an ensemble.
    import argparse

    import export.__main__ as export_cli
    from data.paths import Workspace
    from export import to_onnx
    from submission.package import export_first

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    ws = Workspace.of(tmp_path / "tiny")
    for name, auc in (("simple_cnn-1", 0.9), ("simple_cnn-2", 0.8)):
        finished_fake_run(ws.runs_dir, name, auc)
    ws.export_dir.mkdir(parents=True)
    for earlier in ("model.onnx", "model-2.onnx", "export.json"):  # a finished export of before
        (ws.export_dir / earlier).write_text("earlier")

    def export_run(run_dir, out_dir, *, filename, **kw):
        if filename != "model.onnx":
            raise KeyboardInterrupt
        (out_dir / filename).write_text("new")
    monkeypatch.setattr(to_onnx, "export_run", export_run)
    with pytest.raises(KeyboardInterrupt):
        to_onnx.export_best(ws.runs_dir, ws.export_dir, top=2)
    assert not (ws.export_dir / "export.json").exists()

    exports = []
    monkeypatch.setattr(export_cli, "main", lambda argv: exports.append(argv) or 0)
    args = argparse.Namespace(onnx=None, data=str(ws.data_dir), train_args="")
    assert export_first(args, ws, 3) == 0
    assert len(exports) == 1 and "did not finish (no export.json), exporting again" in capsys.readouterr().out


def test_a_merge_killed_while_it_deletes_a_merged_shard_is_finished_by_the_next_run(tiny_dataset, tmp_path,
                                                                                   monkeypatch):
    # A kill during the unlink of a big shard's features.f16 lands as that unlink returns: the
    # shard's windows are gone while its entries.csv and complete.json are still there.
    import data.preprocess as pre

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "sharded"))
    for i in range(2):
        preprocess(PreprocessConfig(tiny_dataset, workers=1, progress=False, shard=(i, 2)))
    real_rmtree = shutil.rmtree

    def killed_after_the_windows(path, *args, **kwargs):
        windows = sorted(Path(path).rglob("features.f16"))
        if not windows:
            return real_rmtree(path, *args, **kwargs)
        windows[0].unlink()
        raise KeyboardInterrupt
    monkeypatch.setattr(pre.shutil, "rmtree", killed_after_the_windows)
    with pytest.raises(KeyboardInterrupt):
        preprocess(PreprocessConfig(tiny_dataset, workers=1, progress=False))
    monkeypatch.setattr(pre.shutil, "rmtree", real_rmtree)
    merged = pre.FeatureCache.open(preprocess(PreprocessConfig(tiny_dataset, workers=1, progress=False)))
    assert sorted(merged.entries.index) == sorted(pre.read_metadata(tiny_dataset).filename)
    assert not any((merged.dir / "shards").iterdir())


def test_a_run_with_dataloader_workers_resumes_to_the_same_metrics_as_an_uninterrupted_one(tiny_dataset, tmp_path,
                                                                                           monkeypatch):
    # Persistent workers (--num-workers N, 4 by default on CUDA) drew their seed from torch's global
    # stream once per run, so a resumed run drew it again and its dropout went another way.
    import train.loop as loop
    from data.features import FeatureConfig
    from data.preprocess import ensure_cache
    from train.config import config_for

    cfg = config_for("simple_cnn", str(tiny_dataset), epochs=3, pretrained=False, device="cpu", num_workers=1,
                     max_windows_per_recording=1)
    cache = ensure_cache(PreprocessConfig(data_dir=tiny_dataset, features=FeatureConfig(), progress=False))
    loop.fit(cfg, cache, tmp_path / "whole")
    run_epoch = loop.run_epoch

    def killed_before_epoch_3(cfg, state, data, device, epoch, *args, **kwargs):
        if epoch == 3:
            raise KeyboardInterrupt
        run_epoch(cfg, state, data, device, epoch, *args, **kwargs)
    monkeypatch.setattr(loop, "run_epoch", killed_before_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        loop.fit(cfg, cache, tmp_path / "killed")
    monkeypatch.setattr(loop, "run_epoch", run_epoch)
    loop.fit(cfg, cache, tmp_path / "killed", resume=True)
    metrics = ["epoch", "train_loss", "val_loss", "val_accuracy", "val_roc_auc"]
    whole, resumed = (pd.read_csv(tmp_path / run / "metrics.csv")[metrics] for run in ("whole", "killed"))
    pd.testing.assert_frame_equal(resumed, whole)


class Batches(torch.utils.data.Dataset):
    """What a worker returns for a batch key: the window indices as a tensor."""

    def __getitem__(self, key):
        return torch.tensor(key[1])

    def __len__(self):
        return 64


def test_the_sigterm_a_scheduler_sends_a_loader_worker_leaves_it_running_to_the_last_batch(tmp_path):
    # Slurm and systemd send SIGTERM to every process of a job. A worker it killed made torch raise
    # "DataLoader worker ... is killed by signal: Terminated" in the training process, which won
    # over the interruption: exit 1 instead of 130 and the command that resumes. The training
    # process decides; its workers carry on until it shuts them down.
    from train.data import EpochSampler, loader

    batches = iter(loader(Batches(), EpochSampler(64, 4), num_workers=1, pin_memory=False))
    first = next(batches)
    worker = batches._workers[0]
    os.kill(worker.pid, signal.SIGTERM)
    time.sleep(0.5)
    assert worker.is_alive()
    assert sum(len(b) for b in [first, *batches]) == 64
