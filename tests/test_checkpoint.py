"""Checkpoints are written in a background thread from a snapshot, in order, and say when they fail."""
import threading

import pandas as pd
import pytest
import torch

from train.checkpoint import BackgroundWriter, atomic_torch_save, host_copy


def test_a_snapshot_keeps_its_values_when_training_changes_the_live_tensors():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    snap = host_copy({"model": model.state_dict(), "optimizer": opt.state_dict(), "history": [{"epoch": 1}]})
    before = model.weight.detach().clone()
    opt.step()  # in place, on the live parameters and moments
    assert not torch.equal(model.weight, before)
    assert torch.equal(snap["model"]["weight"], before)
    assert snap["optimizer"]["state"][0]["exp_avg"].data_ptr() != opt.state[model.weight]["exp_avg"].data_ptr()
    assert type(snap["model"]) is type(model.state_dict())  # an OrderedDict stays one


def test_the_writer_lands_files_in_the_order_they_were_submitted_one_job_at_a_time(tmp_path):
    writer, order, running = BackgroundWriter(), [], []
    gate = threading.Event()

    def job(name):
        def write():
            running.append(name)
            assert len(running) == 1, "two jobs at once"
            if name == "first":
                gate.wait(5)  # the second submit must wait for this one
            atomic_torch_save({"name": name}, tmp_path / f"{name}.pt")
            order.append(name)
            running.remove(name)
        return write

    writer.submit(job("first"))
    threading.Timer(0.1, gate.set).start()
    writer.submit(job("second"))
    writer.wait()
    assert order == ["first", "second"]
    assert torch.load(tmp_path / "second.pt")["name"] == "second"
    assert not list(tmp_path.glob(".*.tmp"))  # written beside, then renamed over


def test_a_failed_write_is_raised_in_the_training_thread_with_what_to_check(tmp_path):
    writer = BackgroundWriter()
    writer.submit(lambda: atomic_torch_save({"x": 1}, tmp_path / "no such folder" / "last.pt"))
    with pytest.raises(RuntimeError, match=r"writing a checkpoint failed: .* \(is the disk full\?\)"):
        writer.wait()
    writer.wait()  # reported once


def test_a_run_redraws_its_curves_on_the_first_and_last_epochs_and_otherwise_at_most_every_30_s(
        tiny_dataset, tmp_path, monkeypatch):
    import train.loop as loop
    from data.features import FeatureConfig
    from data.preprocess import PreprocessConfig, ensure_cache
    from train.config import config_for

    drawn, histories = [], []  # each drawing's epoch count, and the full-precision history it drew
    real_plot = loop.plot_curves
    monkeypatch.setattr(loop, "plot_curves", lambda df, path, title: (
        drawn.append(len(df)), histories.append(df.copy()), real_plot(df, path, title)))
    cfg = config_for("simple_cnn", str(tiny_dataset), epochs=4, pretrained=False, device="cpu",
                     max_windows_per_recording=1)
    cache = ensure_cache(PreprocessConfig(data_dir=tiny_dataset, features=FeatureConfig(), progress=False))
    loop.fit(cfg, cache, tmp_path / "run")
    assert loop.CURVES_EVERY_S == 30.0 and drawn == [1, 4]  # the tiny run's epochs take well under 30 s
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert len(metrics) == 4 and (metrics.epoch_s >= metrics.train_s).all() and (metrics.train_s > 0).all()
    assert (tmp_path / "run" / "curves.png").exists() and not (tmp_path / "run" / "last.pt").exists()
    # best.pt, written in the background, holds the epoch that ranked first by (ROC-AUC, accuracy).
    # Ranked on the full-precision history the last drawing got: metrics.csv's 6 decimals can hide a lead.
    history = histories[-1]
    assert history[["val_roc_auc", "val_accuracy"]].to_numpy() == pytest.approx(
        metrics[["val_roc_auc", "val_accuracy"]].to_numpy(), abs=1e-6)
    best_epoch = torch.load(tmp_path / "run" / "best.pt", weights_only=False)["epoch"]
    first = max(history.itertuples(), key=lambda r: (r.val_roc_auc, r.val_accuracy, -r.epoch))
    assert best_epoch == first.epoch


def test_best_pt_takes_the_ema_weights_from_the_epochs_snapshot_when_an_ema_is_on(tiny_dataset, tmp_path):
    import train.loop as loop
    from data.features import FeatureConfig
    from data.preprocess import PreprocessConfig, ensure_cache
    from train.config import config_for

    cfg = config_for("simple_cnn", str(tiny_dataset), epochs=1, pretrained=False, device="cpu",
                     max_windows_per_recording=1, ema_decay=0.9)
    cache = ensure_cache(PreprocessConfig(data_dir=tiny_dataset, features=FeatureConfig(), progress=False))
    data = loop.prepare(cfg, cache, tmp_path, torch.device("cpu"))
    state = loop.new_state(cfg, data, torch.device("cpu"), loop.dist.Dist(), pretrained=False)
    loop.train_epoch(state.model, data.train_loader, cfg, state.optimizer, torch.device("cpu"), state.scaler,
                     state.aug_gen, ema=state.ema)
    weights = state.evaluated_weights(state.snapshot(data.classes))
    ema, raw = state.ema.module.state_dict(), state.model.state_dict()
    assert all(torch.equal(weights[k], ema[k]) for k in ema)
    assert not all(torch.equal(weights[k], raw[k]) for k in raw)  # the average, not the last step's weights
    state.ema = None
    weights = state.evaluated_weights(state.snapshot(data.classes))
    assert all(torch.equal(weights[k], raw[k]) for k in raw)


def test_a_checkpoint_snapshot_keeps_lists_as_they_were_when_the_epoch_ended():
    history = [{"epoch": 1, "val_roc_auc": 0.5}]
    streams = [{"torch_rng": torch.tensor([1.0, 2.0])}]
    snap = host_copy({"history": history, "random_streams": streams, "pair": (torch.tensor([3.0]), 4)})
    history.append({"epoch": 2, "val_roc_auc": 0.6})  # the next epoch goes on while last.pt is written
    streams[0]["torch_rng"].add_(10)
    assert snap["history"] == [{"epoch": 1, "val_roc_auc": 0.5}]
    assert snap["random_streams"][0]["torch_rng"].tolist() == [1.0, 2.0]
    assert isinstance(snap["pair"], tuple) and snap["pair"][0].tolist() == [3.0]
