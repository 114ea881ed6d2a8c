"""Training levers: schedule, EMA, class-balanced sampling, random crops, folds, resume with all
of them on, and multi-process training through torchrun."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from data.features import FeatureConfig
from train.data import CachedWindows, EpochSampler, balance_weights
from train.optim import EMA, lr_factor

REPO = Path(__file__).resolve().parents[1]
METRICS = ["epoch", "train_loss", "val_loss", "val_accuracy", "val_roc_auc", "lr"]
LEVERS = ["--random-crop", "--balance-power", "0.5", "--lr-schedule", "cosine", "--warmup-epochs", "1",
          "--ema-decay", "0.99", "--mixup-prob", "0.5", "--spec-mask"]


def test_the_warm_up_rises_linearly_and_the_cosine_ends_at_one_percent():
    factors = [lr_factor(s, total_steps=100, warmup_steps=10, schedule="cosine") for s in range(100)]
    assert factors[:3] == pytest.approx([0.1, 0.2, 0.3])
    assert factors[9] == 1.0 and factors[10] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # falls monotonically after the warm-up
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.01)
    assert lr_factor(50, 100, 0, "constant") == 1.0


def config_lrs(warmup_epochs: float, schedule: str = "onecycle") -> list[float]:
    """The learning rate of each of 100 steps (10 epochs of 10) of a schedule built from the config."""
    from train.config import config_for
    from train.optim import make_optimizer, make_scheduler

    cfg = config_for("simple_cnn", "x", epochs=10, lr=1e-3, optimizer="adamw", lr_schedule=schedule,
                     warmup_epochs=warmup_epochs, pretrained=False)
    opt = make_optimizer(cfg, torch.nn.Linear(2, 2).parameters())
    sched = make_scheduler(cfg, opt, steps_per_epoch=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_one_cycle_rises_from_a_25th_to_the_learning_rate_at_30_percent_then_falls_near_zero():
    lrs = config_lrs(warmup_epochs=0)
    assert lrs[0] == pytest.approx(1e-3 / 25)
    assert int(np.argmax(lrs)) == 29 and max(lrs) == pytest.approx(1e-3, rel=1e-3)
    assert lrs[-1] < 1e-5
    assert all(a >= b for a, b in zip(lrs[30:], lrs[31:]))


def test_one_cycle_uses_the_warm_up_epochs_as_its_rising_phase():
    lrs = config_lrs(warmup_epochs=2)
    assert int(np.argmax(lrs)) == 19


def test_the_ema_moves_each_weight_a_ramped_share_towards_the_model():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.999)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # first update: decay min(0.999, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.module.weight, d * start + (1 - d) * (start + 1.0))
    assert not ema.module.weight.requires_grad


def test_the_ema_decay_never_exceeds_the_one_chosen():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    start = model.weight.detach().clone()
    ema = EMA(model, decay=0.1)  # the first update's ramp, 2/11, is above 0.1: the cap decides
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, start + 0.9)  # 0.1 * start + 0.9 * (start + 1)


def test_the_ema_averages_batch_norm_running_statistics_too():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        model[1].running_mean.fill_(1.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)  # decay 2/11: the exported EMA model normalises with averaged statistics
    assert torch.allclose(ema.module[1].running_mean, torch.full((4,), 9 / 11))
    assert int(ema.module[1].num_batches_tracked) == 7


def test_a_cosine_schedule_built_from_the_config_warms_up_over_its_warm_up_epochs():
    lrs = config_lrs(warmup_epochs=1, schedule="cosine")
    assert lrs[0] == pytest.approx(1e-4) and lrs[4] == pytest.approx(5e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[-1] < 2e-5  # then down to about 1% of the peak


def test_ema_state_round_trips_with_its_update_count():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, 0.9)
    for _ in range(3):
        ema.update(model)
    other = EMA(torch.nn.Linear(2, 2), 0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 3 and torch.equal(other.module.weight, ema.module.weight)


def test_balanced_weights_give_every_class_the_same_total_weight():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    w = balance_weights(labels, power=1.0)
    totals = [w[labels == c].sum() for c in range(3)]
    assert totals == pytest.approx([1 / 3] * 3)
    assert balance_weights(labels, 0.0) is None
    half = balance_weights(labels, 0.5)
    assert half[labels == 2].sum() > half[labels == 2].size / 100  # the rare class is drawn more than its share


def test_a_balanced_sampler_draws_a_rare_class_about_as_often_as_a_common_one():
    labels = np.array([0] * 900 + [1] * 100)
    sampler = EpochSampler(1000, 50, weights=balance_weights(labels, 1.0), seed=0)
    drawn = labels[sampler.indices()]
    assert 0.4 < drawn.mean() < 0.6  # about half the draws come from the 10% class


def test_the_epoch_order_depends_on_seed_and_epoch_only():
    a, b = EpochSampler(40, 8, seed=3), EpochSampler(40, 8, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) and len(list(a)) == len(a) == 5
    assert {epoch for epoch, _ in a} == {2}  # each batch key carries its epoch to the workers
    b.set_epoch(3)
    assert [batch for _, batch in a] != [batch for _, batch in b]
    assert sorted(a.indices()) == list(range(40))  # a plain epoch is a permutation


def test_processes_share_every_epoch_without_overlap():
    shards = [EpochSampler(42, 4, seed=1, rank=r, world=3) for r in range(3)]
    parts = [s.indices() for s in shards]
    assert {len(p) for p in parts} == {14} and len({len(s) for s in shards}) == 1
    assert sorted(np.concatenate(parts)) == list(range(42))


def test_a_last_batch_of_one_window_joins_the_batch_before_it_on_every_process():
    one = EpochSampler(65, 32, seed=0)  # 32 + 33: batch norm cannot train on a batch of one
    assert [len(b) for _, b in one] == [32, 33] and len(one) == 2
    assert sorted(i for _, b in one for i in b) == list(range(65))
    for rank in range(2):  # 129 windows on 2 processes: 65 each, the same split on each
        shard = EpochSampler(129, 32, seed=0, rank=rank, world=2)
        assert [len(b) for _, b in shard] == [32, 33] and len(shard) == 2
    assert [len(b) for _, b in EpochSampler(66, 32, seed=0)] == [32, 32, 2]  # two is enough: unchanged
    assert [len(b) for _, b in EpochSampler(1, 32, seed=0)] == [1]


@pytest.fixture(scope="module")
def tiny_cache(tiny_dataset):
    from data.features import FeatureConfig
    from data.preprocess import FeatureCache, PreprocessConfig, ensure_cache

    return FeatureCache.open(ensure_cache(PreprocessConfig(data_dir=tiny_dataset, features=FeatureConfig(),
                                                           progress=False)))


def tiny_splits(tiny_dataset, tiny_cache, **overrides):
    from data.layout import class_list, read_metadata
    from train.config import config_for
    from train.data import make_splits

    meta = read_metadata(tiny_dataset)
    cfg = config_for("simple_cnn", str(tiny_dataset), holdout_fraction=0.0, **overrides)
    return make_splits(tiny_cache, meta, class_list(meta), cfg), meta


def test_random_crops_take_other_windows_of_the_same_recording_each_epoch(tiny_dataset, tiny_cache):
    splits, _ = tiny_splits(tiny_dataset, tiny_cache, max_windows_per_recording=1)
    ws = splits.train
    long = np.flatnonzero(ws.span_len >= 3)
    assert len(long), "the tiny dataset should have recordings of 3+ windows"
    ds = CachedWindows(tiny_cache, ws, random_crop=True, seed=0)
    seen = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        rows = ds.rows_for(long)
        assert np.all((rows >= ws.span_first[long]) & (rows < ws.span_first[long] + ws.span_len[long]))
        seen |= set(rows.tolist())
    assert len(seen) > len(long)  # beyond the first window of each recording
    x, labels, targets = ds[long[:2]]
    assert x.dtype == torch.float16 and x.shape == (2, *tiny_cache.features.shape)
    assert torch.equal(x[0], torch.from_numpy(np.array(tiny_cache.windows[ds.rows_for(long[:1])[0]])))
    plain = CachedWindows(tiny_cache, ws)
    assert np.array_equal(plain.rows_for(np.arange(len(ws))), ws.rows)


def test_persistent_workers_crop_each_epoch_as_the_main_process_would(tiny_dataset, tiny_cache):
    from train.data import loader

    splits, _ = tiny_splits(tiny_dataset, tiny_cache, max_windows_per_recording=1)
    ds = CachedWindows(tiny_cache, splits.train, random_crop=True, seed=0)
    sampler = EpochSampler(len(splits.train), 4, seed=0)
    batches = loader(ds, sampler, num_workers=1, pin_memory=False)
    assert batches.persistent_workers
    for epoch in range(3):  # the worker starts once and only the key tells it the epoch
        sampler.set_epoch(epoch)
        for (_, idx), (x, _, _) in zip(sampler, batches):
            rows = ds.rows_for(np.asarray(idx), epoch)
            assert torch.equal(x, torch.from_numpy(np.array(tiny_cache.windows[rows])))


def test_the_slots_of_one_recording_never_repeat_a_window_within_an_epoch(tiny_dataset, tiny_cache):
    splits, _ = tiny_splits(tiny_dataset, tiny_cache, max_windows_per_recording=3)
    ds = CachedWindows(tiny_cache, splits.train, random_crop=True, seed=5)
    ds.set_epoch(1)
    rows = ds.rows_for(np.arange(len(splits.train)))
    for name in set(splits.train.filenames):
        mine = rows[splits.train.filenames == name]
        assert len(set(mine.tolist())) == len(mine)


def test_a_batch_crops_each_window_as_it_would_alone_and_a_new_dataset_replays_the_epoch(tiny_dataset, tiny_cache):
    splits, _ = tiny_splits(tiny_dataset, tiny_cache, max_windows_per_recording=3)
    ds = CachedWindows(tiny_cache, splits.train, random_crop=True, seed=5)
    idx = np.arange(len(splits.train))[::-1]
    together = ds.rows_for(idx, epoch=2)
    alone = np.concatenate([ds.rows_for(idx[i:i + 1], epoch=2) for i in range(len(idx))])
    assert np.array_equal(together, alone)
    fresh = CachedWindows(tiny_cache, splits.train, random_crop=True, seed=5)  # a resumed run's loader
    assert np.array_equal(fresh.rows_for(idx, epoch=2), together)
    assert not np.array_equal(fresh.rows_for(idx, epoch=3), together)


def test_cross_validation_folds_validate_each_recording_exactly_once(tiny_dataset, tiny_cache):
    seen = []
    for k in range(3):
        splits, meta = tiny_splits(tiny_dataset, tiny_cache, folds=3, fold=k)
        assert not set(splits.train.recordings) & set(splits.val.recordings)
        seen += splits.val.recordings
    assert sorted(seen) == sorted(meta.filename)


def test_cv_folds_runs_only_the_named_folds_and_says_so(tiny_dataset, tmp_path, monkeypatch, capsys):
    from data.paths import Workspace
    from train.__main__ import main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path))  # its own runs folder: the chain's stays as it is

    assert main(["--data", str(tiny_dataset), "--models", "simple_cnn", "--epochs", "1", "--cv", "3",
                 "--cv-folds", "1", "1", "--holdout-fraction", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "3-fold cross-validation grouped by recording (mean ± std over folds, folds 1 only)" in out
    runs = sorted(p.name for p in (Workspace.of(tiny_dataset).runs_dir / "cv").iterdir() if p.name.startswith("simple_cnn"))
    assert len(runs) == 1 and runs[0].endswith("-fold1")  # a fold named twice still runs once
    assert main(["--data", str(tiny_dataset), "--models", "simple_cnn", "--cv", "3", "--cv-folds", "3"]) == 1
    assert "--cv-folds must be between 0 and 2, got [3]" in capsys.readouterr().err


def test_a_folds_curves_are_titled_with_its_fold_and_seed_and_a_single_runs_without():
    from train.config import TrainConfig
    from train.loop import run_title

    assert run_title(TrainConfig(model="resnet18", data_dir="/x/realbirds", folds=5, fold=3, seed=1)) == \
        "resnet18 on realbirds, fold 3 of 5, seed 1"
    assert run_title(TrainConfig(model="resnet18", data_dir="/x/realbirds")) == "resnet18 on realbirds"


def test_ctrl_c_names_the_models_left_to_train_so_a_finished_one_is_not_trained_again(tiny_dataset, tmp_path,
                                                                                      monkeypatch, capsys):
    import train.loop as loop
    from train.__main__ import main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path))
    real_run_epoch = loop.run_epoch

    def ctrl_c_in_resnet18(cfg, state, data, device, epoch, run_dir, d=loop.dist.Dist()):
        if cfg.model == "resnet18":
            raise KeyboardInterrupt
        real_run_epoch(cfg, state, data, device, epoch, run_dir, d)

    monkeypatch.setattr(loop, "run_epoch", ctrl_c_in_resnet18)
    assert main(["--data", str(tiny_dataset), "--models", "simple_cnn", "resnet18", "efficientnet_b0", "--epochs", "1",
                 "--windows-per-recording", "1", "--no-pretrained", "--holdout-fraction", "0", "--device", "cpu"]) == 130
    assert capsys.readouterr().err.endswith(
        'interrupted: `make train RESUME=1 MODELS="resnet18 efficientnet_b0"` (python -m train ... --models resnet18 '
        "efficientnet_b0 --resume) with the same settings continues resnet18 from its last finished epoch (from the "
        "start if none finished) and trains the rest\n")


def test_a_kill_signal_ends_training_like_ctrl_c_saying_how_to_continue(tiny_dataset, tmp_path, monkeypatch, capsys):
    import signal

    import train.loop as loop
    from data.paths import Workspace
    from train.__main__ import main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path))
    real_run_epoch = loop.run_epoch

    def killed_in_epoch_2(cfg, state, data, device, epoch, run_dir, d=loop.dist.Dist()):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler or `kill` sends
        real_run_epoch(cfg, state, data, device, epoch, run_dir, d)

    monkeypatch.setattr(loop, "run_epoch", killed_in_epoch_2)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["--data", str(tiny_dataset), "--models", "simple_cnn", "--epochs", "3", "--windows-per-recording", "1",
                 "--holdout-fraction", "0", "--device", "cpu"]) == 130
    assert capsys.readouterr().err.endswith(
        'interrupted: `make train RESUME=1 MODELS="simple_cnn"` (python -m train ... --models simple_cnn --resume) '
        "with the same settings continues simple_cnn from its last finished epoch (from the start if none finished)\n")
    run, = Workspace.of(tiny_dataset).runs_dir.glob("simple_cnn-*")
    assert len(pd.read_csv(run / "metrics.csv")) == 1 and (run / "last.pt").exists()  # epoch 1 kept for RESUME=1
    assert signal.getsignal(signal.SIGTERM) is before  # the handler lives only as long as the command


def test_cross_validating_two_models_also_scores_the_mean_of_their_probabilities_on_each_fold(
        tiny_dataset, tmp_path, monkeypatch, capsys):
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from data.paths import Workspace
    from train.__main__ import main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path))
    assert main(["--data", str(tiny_dataset), "--models", "simple_cnn", "resnet18", "--no-pretrained", "--epochs", "1",
                 "--cv", "2", "--holdout-fraction", "0", "--windows-per-recording", "1", "--device", "cpu"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("mean of 2"))
    printed = [float(v) for v in line.split()[3:] if v != "±"][::2]  # the four means: best acc, best AUC, last acc, last AUC

    cv_dir = Workspace.of(tiny_dataset).runs_dir / "cv"
    expected = {"acc": [], "auc": []}
    for k in range(2):  # by hand: each run's last-epoch sigmoid, averaged, scored by sklearn
        last = [np.load(next(cv_dir.glob(f"{m}-*-fold{k}")) / "val_last.npz") for m in ("simple_cnn", "resnet18")]
        probs = np.mean([1 / (1 + np.exp(-z["logits"].astype(np.float64))) for z in last], axis=0)
        labels = last[0]["label_idx"]
        expected["acc"].append(np.mean(probs.argmax(1) == labels))
        onehot = np.eye(probs.shape[1])[labels]
        scored = onehot.sum(0) > 0  # Kaggle's metric: the classes with a positive
        expected["auc"].append(roc_auc_score(onehot[:, scored], probs[:, scored], average="macro"))
    assert printed[2] == pytest.approx(np.mean(expected["acc"]), abs=5e-4)
    assert printed[3] == pytest.approx(np.mean(expected["auc"]), abs=5e-4)
    assert all(0 <= v <= 1 for v in printed)


def test_runs_that_validated_on_other_windows_are_not_averaged_and_the_line_says_why(tmp_path):
    import numpy as np

    from train.__main__ import cv_ensemble_line

    for name, files in (("a-fold0", ["x.ogg", "y.ogg"]), ("b-fold0", ["x.ogg", "z.ogg"])):
        (tmp_path / name).mkdir()
        np.savez(tmp_path / name / "val_predictions.npz", probs=np.full((2, 3), 1 / 3, np.float32),
                 logits=np.zeros((2, 3), np.float32), label_idx=np.array([0, 1]), filenames=np.array(files))
        np.savez(tmp_path / name / "val_last.npz", logits=np.zeros((2, 3), np.float32), label_idx=np.array([0, 1]))
    line = cv_ensemble_line(tmp_path, {"a": [{"run": "a-fold0"}], "b": [{"run": "b-fold0"}]})
    assert line.startswith("mean of 2") and "not scored: b-fold0 validated on other windows or classes than a-fold0" in line


def test_a_killed_cross_validation_reuses_its_finished_folds_and_continues_the_killed_one(
        tiny_dataset, tmp_path, monkeypatch, capsys):
    import train.loop as loop
    from data.paths import Workspace
    from train.__main__ import main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path))
    args = ["--data", str(tiny_dataset), "--models", "simple_cnn", "--epochs", "2", "--cv", "3",
            "--cv-folds", "0", "1", "--holdout-fraction", "0", "--device", "cpu"]
    real_run_epoch = loop.run_epoch

    def killed_in_fold1_epoch2(cfg, state, data, device, epoch, run_dir, d=loop.dist.Dist()):
        if cfg.fold == 1 and epoch == 2:
            raise KeyboardInterrupt
        real_run_epoch(cfg, state, data, device, epoch, run_dir, d)

    monkeypatch.setattr(loop, "run_epoch", killed_in_fold1_epoch2)
    assert main(args) == 130  # Ctrl-C: no traceback, the way on
    assert capsys.readouterr().err.endswith(
        "interrupted: `make cv RESUME=1` (python -m train ... --resume) with the same settings reuses the finished "
        "folds and continues the killed one from its last finished epoch\n")
    monkeypatch.setattr(loop, "run_epoch", real_run_epoch)
    cv_dir = Workspace.of(tiny_dataset).runs_dir / "cv"
    fold0, fold1 = sorted(cv_dir.glob("simple_cnn-*"))
    fold0_summary = (fold0 / "summary.json").read_text()
    capsys.readouterr()

    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"fold 0: finished in {fold0.name} with the same config, reused" in out
    assert f"=== simple_cnn -> {fold1} (resuming)" in out and "resumed after epoch 1" in out
    assert sorted(cv_dir.glob("simple_cnn-*")) == [fold0, fold1]  # no new folder for either fold
    assert (fold0 / "summary.json").read_text() == fold0_summary
    assert len(pd.read_csv(fold1 / "metrics.csv")) == 2

    assert main([*args, "--resume", "--epochs", "1", "--cv-folds", "0"]) == 0  # other settings: a new run
    assert "no killed run with this config to resume" in capsys.readouterr().out
    assert len(list(cv_dir.glob("simple_cnn-*-fold0"))) == 2


def test_a_run_with_every_lever_on_resumes_exactly_after_a_kill(tiny_dataset, tmp_path, monkeypatch):
    import train.loop as loop
    from data.features import FeatureConfig
    from data.preprocess import PreprocessConfig, ensure_cache
    from train.config import config_for

    cfg = config_for("simple_cnn", str(tiny_dataset), epochs=3, pretrained=False, device="cpu",
                     max_windows_per_recording=2, random_crop=True, balance_power=0.5, lr_schedule="cosine",
                     warmup_epochs=1.0, ema_decay=0.99, mixup_prob=0.5, spec_mask=True)
    cache = ensure_cache(PreprocessConfig(data_dir=tiny_dataset, features=FeatureConfig(), progress=False))
    loop.fit(cfg, cache, tmp_path / "whole")
    whole = pd.read_csv(tmp_path / "whole" / "metrics.csv")[METRICS]

    real_run_epoch = loop.run_epoch

    def killed_after_two(cfg, state, data, device, epoch, run_dir, d=loop.dist.Dist()):
        if epoch == 3:
            raise KeyboardInterrupt
        real_run_epoch(cfg, state, data, device, epoch, run_dir, d)

    monkeypatch.setattr(loop, "run_epoch", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        loop.fit(cfg, cache, tmp_path / "killed")
    monkeypatch.setattr(loop, "run_epoch", real_run_epoch)
    loop.fit(cfg, cache, tmp_path / "killed", resume=True)
    resumed = pd.read_csv(tmp_path / "killed" / "metrics.csv")[METRICS]
    pd.testing.assert_frame_equal(resumed, whole)
    assert whole.lr.iloc[-1] < whole.lr.iloc[0] or whole.lr.iloc[0] < cfg.lr  # the schedule moved the lr


def test_torchrun_trains_one_run_with_two_processes_on_cpu(tiny_dataset, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "BIRDKIT_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "train", "--data", str(tiny_dataset),
         "--models", "simple_cnn", "--epochs", "2", "--device", "cpu", "--windows-per-recording", "2",
         "--holdout-fraction", "0", *LEVERS],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((tmp_path / "train" / "runs" / tiny_dataset.name).glob("simple_cnn-*"))
    assert len(runs) == 1, runs  # both processes wrote into one run folder (rank 0 only)
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["epochs"] == 2
    assert 0.0 <= summary["val_roc_auc"] <= 1.0
    assert out.stdout.count("epoch   1/2") == 1  # only rank 0 prints
    assert "distributed: 2 processes" in out.stdout
    assert out.stderr.count("warning: no CUDA GPU here, so GPUS=2 trains 2 CPU processes (gloo)") == 1


def _copy_run(chain, tmp_path) -> Path:
    import shutil

    run = sorted(chain.runs_dir.glob("simple_cnn-*"))[0]
    return Path(shutil.copytree(run, tmp_path / run.name))


KILLED_AND_RESUMED = """
import sys
from pathlib import Path

import train.loop as loop
from data.features import FeatureConfig
from data.preprocess import PreprocessConfig, ensure_cache
from train import dist
from train.config import config_for


class Killed(Exception):
    pass


def killed_after_one(cfg, state, data, device, epoch, run_dir, d):
    if epoch == 2:
        raise Killed
    real_run_epoch(cfg, state, data, device, epoch, run_dir, d)


real_run_epoch = loop.run_epoch
if __name__ == "__main__":  # preprocessing's worker processes import this file
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    d = dist.init("cpu")
    cfg = config_for("simple_cnn", str(data), epochs=3, pretrained=False, device="cpu", max_windows_per_recording=2,
                     batch_size=8, mixup_prob=0.5, spec_mask=True, time_shift=0.3, num_workers=0)
    cache = ensure_cache(PreprocessConfig(data_dir=data, features=FeatureConfig(), progress=False)) if d.main else None
    cache = dist.broadcast(d, cache)
    loop.fit(cfg, cache, out / "whole", d=d)
    loop.run_epoch = killed_after_one
    try:
        loop.fit(cfg, cache, out / "killed", d=d)
    except Killed:
        pass
    dist.barrier(d)  # as a restart would: rank 0's last write lands before any process looks for it
    loop.run_epoch = real_run_epoch
    loop.fit(cfg, cache, out / "killed", resume=True, d=d)
    dist.finish(d)
"""


def test_two_processes_resume_each_with_its_own_augmentations_to_the_same_metrics(tiny_dataset, tmp_path):
    """Each process draws its own masks and mixup pairs; a resumed run must give each its own random
    streams back, not rank 0's to both (the metrics would part from the uninterrupted run's)."""
    script = tmp_path / "killed_and_resumed.py"
    script.write_text(KILLED_AND_RESUMED)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "BIRDKIT_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(script), str(tiny_dataset),
                          str(tmp_path / "runs")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    whole = pd.read_csv(tmp_path / "runs" / "whole" / "metrics.csv")[METRICS]
    resumed = pd.read_csv(tmp_path / "runs" / "killed" / "metrics.csv")[METRICS]
    assert len(whole) == 3
    pd.testing.assert_frame_equal(resumed, whole)


def test_a_resume_point_keeps_every_processs_random_streams(tiny_dataset, tmp_path):
    import train.loop as loop
    from data.features import FeatureConfig
    from data.preprocess import PreprocessConfig, ensure_cache
    from train import dist
    from train.config import config_for

    cfg = config_for("simple_cnn", str(tiny_dataset), epochs=1, pretrained=False, device="cpu",
                     max_windows_per_recording=2)
    cache = ensure_cache(PreprocessConfig(data_dir=tiny_dataset, features=FeatureConfig(), progress=False))
    data = loop.prepare(cfg, cache, tmp_path, torch.device("cpu"))
    states = [loop.new_state(cfg, data, torch.device("cpu"), dist.Dist(), pretrained=False) for _ in (0, 1)]
    for rank, state in enumerate(states):
        state.aug_gen.manual_seed(cfg.seed + 1 + 1000 * rank)  # as each process of two seeds its own
    snapshot = states[0].snapshot(data.classes, [s.random_streams() for s in states])
    assert len(snapshot["random_streams"]) == 2
    fresh = loop.new_state(cfg, data, torch.device("cpu"), dist.Dist(), pretrained=False)
    fresh.aug_gen.manual_seed(12345)
    fresh.load(tmp_path / "last.pt", data.classes, snapshot, dist.Dist(1, 2))
    assert torch.equal(fresh.aug_gen.get_state(), states[1].aug_gen.get_state())  # rank 1 gets rank 1's back
    assert not torch.equal(fresh.aug_gen.get_state(), states[0].aug_gen.get_state())
    fresh.load(tmp_path / "last.pt", data.classes, snapshot, dist.Dist(0, 3))  # another number of processes
    assert not torch.equal(fresh.aug_gen.get_state(), states[0].aug_gen.get_state())


def test_other_processes_wait_for_rank_0s_cache_by_watching_it_not_in_a_barrier(tiny_dataset, tmp_path,
                                                                                 monkeypatch):
    """NCCL gives up on a barrier after 10 minutes; a competition's first preprocessing takes longer."""
    import shutil
    import threading

    import train.__main__ as cli
    from data.preprocess import PreprocessConfig, ensure_cache
    from train import dist

    data = Path(shutil.copytree(tiny_dataset, tmp_path / "fresh"))  # no cache yet
    args = cli.parse_args(["--data", str(data), "--models", "simple_cnn", "--device", "cpu"])
    cfg = cli.model_config(args, "simple_cnn", FeatureConfig())
    barriers = []
    monkeypatch.setattr(cli.dist, "barrier", lambda d: barriers.append(d.rank))
    monkeypatch.setattr(cli, "CACHE_POLL_S", 0.05)
    got = []
    rank_1 = threading.Thread(target=lambda: got.append(cli.cache_for(args, cfg, dist.Dist(rank=1, world=2))))
    rank_1.start()
    rank_1.join(timeout=1.0)
    assert rank_1.is_alive() and barriers == []  # still watching, not yet in the barrier
    built = ensure_cache(PreprocessConfig(data_dir=data, features=cfg.features, progress=False))  # rank 0's work
    rank_1.join(timeout=30)
    assert got == [built] and barriers == [1]


def test_a_run_saved_before_the_levers_existed_still_exports(chain, tmp_path):
    from export.to_onnx import export_run

    run = _copy_run(chain, tmp_path)
    new_fields = ["random_crop", "balance_power", "lr_schedule", "warmup_epochs", "ema_decay", "channels_last",
                  "folds", "fold"]
    ckpt = torch.load(run / "best.pt", weights_only=False)
    for f in new_fields:
        ckpt["config"].pop(f)
    torch.save(ckpt, run / "best.pt")
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k not in new_fields}))
    export_run(run, tmp_path / "out")
    assert (tmp_path / "out" / "model.onnx").stat().st_size > 0


def test_an_edited_config_json_is_refused_at_export(chain, tmp_path):
    from export.to_onnx import ExportError, export_run

    run = _copy_run(chain, tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "lr": cfg["lr"] * 10}))
    with pytest.raises(ExportError, match="config.json differs from the config stored in best.pt"):
        export_run(run, tmp_path / "out")


def test_torchvision_models_without_imagenet_weights_get_the_from_scratch_recipe():
    from train.config import MODEL_DEFAULTS, SCRATCH_DEFAULTS, config_for

    scratch = config_for("resnet18", "data", pretrained=False)
    assert (scratch.optimizer, scratch.lr, scratch.lr_schedule, scratch.epochs) == ("adamw", 1e-3, "cosine", 60)
    assert scratch.mixup_prob == 0.5 and scratch.spec_mask and scratch.warmup_epochs == 2.0
    assert scratch.power_mix_prob == 0.0  # measured better without it on realbirds' folds
    assert scratch.input_hw == (128, 313)  # the spectrogram as it is, not stretched to 224x224

    fine_tune = config_for("resnet18", "data")  # ImageNet weights: the seed's fine-tuning settings
    assert (fine_tune.optimizer, fine_tune.lr, fine_tune.epochs) == ("adam", MODEL_DEFAULTS["resnet18"]["lr"], 20)
    assert fine_tune.input_hw is None and fine_tune.mixup_prob == 0.0 and fine_tune.power_mix_prob == 0.5
    assert config_for("efficientnet_b0", "data", pretrained=False).input_hw == (128, 313)  # measured better too
    inception = config_for("inception_v3", "data", pretrained=False)  # measured better too, at its own 299x299
    assert (inception.optimizer, inception.lr_schedule, inception.epochs, inception.input_hw) == (
        "adamw", "cosine", 40, None)
    assert set(SCRATCH_DEFAULTS) == {"resnet18", "efficientnet_b0", "inception_v3"}  # simple_cnn keeps its own


def test_a_recipe_can_be_forced_for_any_model_from_the_command_line(tiny_dataset):
    from data.features import FeatureConfig
    from train.__main__ import model_config, parse_args
    from train.config import MODEL_DEFAULTS

    args = parse_args(["--data", str(tiny_dataset), "--no-pretrained", "--recipe", "scratch", "--epochs", "7"])
    eff = model_config(args, "efficientnet_b0", FeatureConfig())
    assert (eff.optimizer, eff.lr_schedule, eff.mixup_prob, eff.spec_mask, eff.input_hw) == (
        "adamw", "cosine", 0.5, True, (128, 313))
    assert eff.epochs == 7  # the command line still wins
    forced = model_config(parse_args(["--data", str(tiny_dataset), "--recipe", "scratch"]), "resnet18", FeatureConfig())
    assert (forced.optimizer, forced.epochs) == ("adamw", 60)  # resnet18's own from-scratch schedule
    inception = model_config(args, "inception_v3", FeatureConfig())
    assert (inception.optimizer, inception.lr_schedule, inception.spec_mask) == ("adamw", "cosine", True)
    assert inception.input_hw is None  # 299x299: the unstretched 128 mel bins cannot feed its auxiliary head
    seed = model_config(parse_args(["--data", str(tiny_dataset), "--no-pretrained", "--recipe", "seed"]),
                        "resnet18", FeatureConfig())
    assert (seed.optimizer, seed.lr, seed.input_hw) == ("adam", MODEL_DEFAULTS["resnet18"]["lr"], None)


@pytest.mark.parametrize("recipe", ["auto", "seed", "scratch"])
@pytest.mark.parametrize("model", ["simple_cnn", "resnet18", "inception_v3", "efficientnet_b0"])
def test_every_recipe_gives_every_model_an_input_it_can_take(model, recipe):
    from train.config import config_for
    from train.models import DEFAULT_INPUT_HW, MIN_INPUT_HW

    cfg = config_for(model, "data", recipe=recipe, pretrained=False)  # as bench/gpu_check.sh's cv runs build them
    height, width = cfg.input_hw or DEFAULT_INPUT_HW[model]
    assert height >= MIN_INPUT_HW[model][0] and width >= MIN_INPUT_HW[model][1]


def test_an_input_too_small_for_the_model_fails_when_the_config_is_built():
    from train.config import config_for

    with pytest.raises(ValueError, match=r"inception_v3 needs an input of at least 299x299 px, got 128x313"):
        config_for("inception_v3", "data", input_hw="native")


def test_command_line_settings_and_the_demo_schedule_win_over_the_from_scratch_recipe():
    from data.features import FeatureConfig
    from train.config import config_for

    cfg = config_for("resnet18", "data", pretrained=False, lr=5e-4, mixup_prob=0.0,
                     features=FeatureConfig(n_mels=64))
    assert (cfg.lr, cfg.mixup_prob, cfg.optimizer) == (5e-4, 0.0, "adamw")
    assert cfg.input_hw == (64, 313)  # "native" follows the features

    demo = config_for("resnet18", "data", "demo")
    assert (demo.epochs, demo.lr, demo.optimizer, demo.input_hw) == (5, 1e-3, "adam", None)


def test_input_hw_on_the_command_line_takes_pixels_or_native(tiny_dataset):
    import argparse

    from data.features import FeatureConfig
    from train.__main__ import model_config, parse_args, parse_hw

    assert parse_hw("160x320") == (160, 320) and parse_hw("native") == "native"
    with pytest.raises(argparse.ArgumentTypeError, match="expected HxW in px .* got '160'"):
        parse_hw("160")
    args = parse_args(["--data", str(tiny_dataset), "--input-hw", "native", "--no-pretrained"])
    assert model_config(args, "efficientnet_b0", FeatureConfig()).input_hw == (128, 313)
    args = parse_args(["--data", str(tiny_dataset), "--input-hw", "96x200"])
    assert model_config(args, "simple_cnn", FeatureConfig()).input_hw == (96, 200)


def test_power_mixing_is_switched_from_the_command_line(tiny_dataset):
    from data.features import FeatureConfig
    from train.__main__ import model_config, parse_args

    default = parse_args(["--data", str(tiny_dataset)])
    assert model_config(default, "simple_cnn", FeatureConfig()).power_mix_prob == 0.5
    off = parse_args(["--data", str(tiny_dataset), "--power-mix-prob", "0"])
    assert model_config(off, "simple_cnn", FeatureConfig()).power_mix_prob == 0.0


def test_the_time_shift_is_switched_from_the_command_line(tiny_dataset):
    from data.features import FeatureConfig
    from train.__main__ import model_config, parse_args

    default = parse_args(["--data", str(tiny_dataset)])
    assert model_config(default, "simple_cnn", FeatureConfig()).time_shift == 0.0
    on = parse_args(["--data", str(tiny_dataset), "--time-shift", "0.5"])
    assert model_config(on, "simple_cnn", FeatureConfig()).time_shift == 0.5


def test_the_output_activation_follows_the_loss_unless_chosen():
    from train.config import config_for
    from train.loop import probabilities

    assert config_for("simple_cnn", "x").output_activation() == "sigmoid"  # bce
    assert config_for("simple_cnn", "x", loss="ce").output_activation() == "softmax"
    assert config_for("simple_cnn", "x", activation="softmax").output_activation() == "softmax"
    with pytest.raises(ValueError, match="activation must be one of auto, sigmoid, softmax"):
        config_for("simple_cnn", "x", activation="relu")
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    assert probabilities("softmax", logits).sum().item() == pytest.approx(1.0)
    assert probabilities("sigmoid", logits)[0, 0].item() == pytest.approx(1 / (1 + math.exp(-2)))


def test_the_activation_is_switched_from_the_command_line(tiny_dataset):
    from data.features import FeatureConfig
    from train.__main__ import model_config, parse_args

    on = parse_args(["--data", str(tiny_dataset), "--activation", "softmax"])
    assert model_config(on, "simple_cnn", FeatureConfig()).activation == "softmax"


def test_export_can_ship_another_activation_and_records_which_the_metrics_used(chain, tmp_path):
    import onnx
    import onnxruntime as ort

    from export.to_onnx import check_windows, export_run, load_run

    run = _copy_run(chain, tmp_path)
    report = export_run(run, tmp_path / "out", activation="softmax")
    meta = {p.key: p.value for p in onnx.load(report["onnx"]).metadata_props}
    assert (meta["activation"], meta["val_activation"]) == ("softmax", "sigmoid")
    windows = check_windows(load_run(run))
    out = ort.InferenceSession(report["onnx"]).run(None, {meta["input_name"]: windows})[0]
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-5)  # each window's classes share one unit


LOSS_OF_TWO_PROCESSES = """
import sys

import torch

import train.loop as loop
from train import dist
from train.config import TrainConfig

d = dist.init("cpu")
# rank 0 sees one window of loss 1.0, rank 1 three windows of loss 3.0
n = 1 if d.rank == 0 else 3
loader = [(torch.zeros(n, 4, 4), torch.zeros(n, dtype=torch.long), torch.zeros(n, 2))]
loop.train_step = lambda model, x, y, cfg, optimizer, scaler, device: torch.tensor(1.0 + 2.0 * d.rank)
loop.augment = lambda cfg, x, y, gen: (x, y)
result = loop.train_epoch(torch.nn.Linear(1, 1), loader, TrainConfig(model="simple_cnn", data_dir="."), None, torch.device("cpu"), None,
                          torch.Generator(), world=d.world)
print(f"rank {d.rank}: train_loss {result.train_loss:.4f}", file=sys.stderr)
dist.finish(d)
"""


def test_the_logged_training_loss_is_the_mean_over_every_processs_windows(tmp_path):
    script = tmp_path / "loss_of_two.py"
    script.write_text(LOSS_OF_TWO_PROCESSES)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(script)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # (1 x 1.0 + 3 x 3.0) / 4 windows = 2.5 on both ranks; not rank 0's own 1.0
    assert "rank 0: train_loss 2.5000" in out.stderr and "rank 1: train_loss 2.5000" in out.stderr


def test_processes_take_equal_shares_when_the_windows_do_not_divide_by_the_number_of_processes():
    from train.data import EpochSampler

    shards = [EpochSampler(10, 2, seed=0, rank=r, world=3) for r in range(3)]
    parts = [s.indices() for s in shards]
    assert [len(p) for p in parts] == [4, 4, 4]  # 10 windows padded to 12: every process takes as many steps
    assert [len(list(s)) for s in shards] == [len(s) for s in shards] == [2, 2, 2]
    assert set(np.concatenate(parts).tolist()) == set(range(10))
