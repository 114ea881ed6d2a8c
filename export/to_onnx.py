"""Best run -> ONNX, checked by onnx.checker and by onnxruntime against torch.

The exported graph takes features [batch, n_mels, n_frames] (float32, from data.features) and
returns class probabilities [batch, classes]. Its metadata carries everything the notebook needs
to rebuild the features and read the output: class list, feature parameters, model name,
activation, validation metrics and the version of the feature code it was trained with.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from data.features import FEATURES_VERSION
from data.layout import class_change, class_list, find_metadata, read_metadata
from data.preprocess import FeatureCache, cache_dir_for
from train.checkpoint import atomic_write
from train.config import TrainConfig
from train.models import build_model
from train.report import finished_runs

ONNX_FORMAT = "birdkit-1"
INPUT_NAME, OUTPUT_NAME = "features", "probabilities"
# Largest |onnxruntime - torch| probability accepted on the run's real windows (fp32 both sides:
# a correct graph stays near 1e-7; weights off by 0.05 already show above 1e-3)
PARITY_ATOL = 1e-4


class ExportError(RuntimeError):
    """Export refused: the message says why and what to do."""


class WithActivation(nn.Module):
    """The trained network plus its output activation (TrainConfig.output_activation): outputs probabilities."""

    def __init__(self, model: nn.Module, activation: str):
        super().__init__()
        self.model = model
        self.activation = activation

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # [B, M, T] -> [B, C]
        logits = self.model(feats)
        return torch.sigmoid(logits) if self.activation == "sigmoid" else torch.softmax(logits, dim=-1)


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: TrainConfig
    classes: list[str]
    checkpoint: dict
    net: WithActivation  # eval mode, CPU


def ranked_runs(runs_dir: Path) -> list[dict]:
    """Finished runs, best recorded val ROC-AUC first (then accuracy)."""
    runs = sorted(finished_runs(runs_dir), key=lambda r: (r["val_roc_auc"], r["val_accuracy"]), reverse=True)
    if not runs:
        raise ExportError(f"no finished training run in {runs_dir}: run `make train` first")
    return runs


def choose_best_run(runs_dir: Path) -> Path:
    """The finished run with the highest recorded val ROC-AUC (then accuracy)."""
    return Path(ranked_runs(runs_dir)[0]["dir"])


def require_trained_run(run_dir: Path) -> None:
    """Refuse a folder that is not a training run with a best checkpoint, before anything is
    touched: a mistyped --run would otherwise cost the previous export."""
    missing = [f for f in ("config.json", "best.pt") if not (Path(run_dir) / f).is_file()]
    if missing:
        what = "does not exist" if not Path(run_dir).is_dir() else f"holds no {' or '.join(missing)}"
        raise ExportError(f"{run_dir} {what}, so it is not a trained run. Give --run a run folder with "
                          "best.pt and config.json (`make report` lists the finished ones), or leave out "
                          "--run to export the best run by val ROC-AUC.")


def load_run(run_dir: Path, activation: str | None = None) -> LoadedRun:
    """Rebuild the model from the run's config.json and load its best checkpoint. activation
    (sigmoid | softmax) replaces the run's own output activation when given."""
    require_trained_run(run_dir)
    cfg = TrainConfig.load(run_dir / "config.json")
    ckpt = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)
    classes = ckpt["classes"]
    # Both through TrainConfig: a run saved before a config field existed compares with its default.
    if TrainConfig.from_dict(ckpt["config"]).to_dict() != cfg.to_dict():
        raise ExportError(f"{run_dir}: config.json differs from the config stored in best.pt; "
                          "the run folder was edited or mixed up. Retrain or restore config.json.")
    check_classes_still_match(run_dir, Path(cfg.data_dir), classes)
    model = build_model(cfg.model, len(classes), pretrained=False, input_hw=cfg.input_hw)
    model.load_state_dict(ckpt["model_state"])
    net = WithActivation(model, activation or cfg.output_activation()).eval()
    return LoadedRun(run_dir, cfg, classes, ckpt, net)


def check_classes_still_match(run_dir: Path, data_dir: Path, classes: list[str]) -> None:
    """Refuse a run whose classes are no longer the data's: its outputs would be mislabelled."""
    if find_metadata(data_dir) is None:  # the data is elsewhere now: nothing to compare
        return
    now = class_list(read_metadata(data_dir))
    if now != classes:
        raise ExportError(
            f"{run_dir.name} was trained on {len(classes)} classes, but {data_dir} now has {len(now)} "
            f"({class_change(classes, now)}): the data changed after training. Retrain on it (`make train`), "
            "or restore the data the run was trained on."
        )


def check_windows(run: LoadedRun, n: int = 16) -> np.ndarray:
    """Real feature windows for the parity check: validation windows from the run's cache."""
    cfg = run.cfg
    cache_dir = cache_dir_for(Path(cfg.data_dir), cfg.features)
    rebuild = f"make preprocess DATA={cfg.data_dir}" + (
        f" DENOISE={cfg.features.denoise}" if cfg.features.denoise != "none" else "")
    if not (cache_dir / "complete.json").exists():  # deleted to save space, or never finished here
        raise ExportError(f"the feature cache {run.run_dir.name} trained on is not here ({cache_dir}); the parity "
                          f"check runs on its validation windows: rebuild it with `{rebuild}`, then rerun")
    cache = FeatureCache.open(cache_dir)
    val = json.loads((run.run_dir / "split.json").read_text())["val"]
    rows = [r for f in val if f in cache.entries.index for r in cache.rows_of(f)][:n]
    if not rows:
        raise ExportError(f"no cached validation windows for {run.run_dir}: rerun `{rebuild}`")
    return np.asarray(cache.windows[rows], dtype=np.float32)  # [n, M, T]


def metadata(run: LoadedRun) -> dict[str, str]:
    cfg, metrics = run.cfg, run.checkpoint["metrics"]
    return {
        "birdkit_format": ONNX_FORMAT,
        "model_name": cfg.model,
        "classes": json.dumps(run.classes),
        "features": json.dumps(cfg.features.to_dict(), sort_keys=True),
        "features_version": str(FEATURES_VERSION),
        "activation": run.net.activation,
        "val_activation": run.cfg.output_activation(),  # what val_accuracy / val_roc_auc were measured with
        "input_name": INPUT_NAME,
        "val_accuracy": f"{metrics['val_accuracy']:.6f}",
        "val_roc_auc": f"{metrics['val_roc_auc']:.6f}",
        "best_epoch": str(run.checkpoint["epoch"]),
        "run": run.run_dir.name,
        "dataset": Path(cfg.data_dir).name,
    }


def export_graph(net: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """torch.export-based ONNX export with a dynamic batch axis."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        net, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), verbose=False,
    )
    program.save(str(path))


def write_metadata(path: Path, props: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def ort_max_abs_diff(path: Path, net: nn.Module, windows: np.ndarray) -> float:
    """Largest |onnxruntime - torch| over the windows, also checking the file and the dynamic
    batch axis (one run with all windows, one with a single window)."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = net(torch.from_numpy(windows)).numpy()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: windows})[0]
    single = session.run([OUTPUT_NAME], {INPUT_NAME: windows[:1]})[0]
    if got.shape != expected.shape:
        raise ExportError(f"onnxruntime output shape {got.shape} differs from torch {expected.shape}")
    return float(max(np.abs(got - expected).max(), np.abs(single - expected[:1]).max()))


def ort_ms_per_window(path: Path, windows: np.ndarray, threads: int = 2, repeats: int = 3) -> float:
    """Median onnxruntime CPU time per window at the given thread count."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    session.run(None, {INPUT_NAME: windows})  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {INPUT_NAME: windows})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000 / len(windows))


def export_run(run_dir: Path, out_dir: Path, *, atol: float = PARITY_ATOL, opset: int = 18,
               filename: str = "model.onnx", activation: str | None = None) -> dict:
    """Export run_dir's best checkpoint to out_dir/filename; refuse if onnxruntime and torch
    disagree by more than atol. Returns the export report."""
    run = load_run(run_dir, activation)
    windows = check_windows(run)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{filename}.tmp"
    export_graph(run.net, torch.from_numpy(windows[:2]), tmp, opset)
    props = metadata(run)
    write_metadata(tmp, props)
    diff = ort_max_abs_diff(tmp, run.net, windows)
    if not diff <= atol:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"onnxruntime differs from torch by {diff:.2e} (> {atol:.0e}) on {len(windows)} real "
                          f"windows of {run_dir.name}: refusing to export. Try another --opset.")
    final = out_dir / filename
    os.replace(tmp, final)
    return {
        "onnx": str(final), "run_dir": str(run_dir), "model": run.cfg.model,
        "val_roc_auc": run.checkpoint["metrics"]["val_roc_auc"],
        "val_accuracy": run.checkpoint["metrics"]["val_accuracy"],
        "max_abs_diff_vs_torch": diff, "checked_windows": int(len(windows)), "opset": opset,
        "onnx_cpu_ms_per_window_2_threads": ort_ms_per_window(final, windows),
        "size_mb": final.stat().st_size / 1e6, "metadata": props,
    }


EXPORT_REPORT = "export.json"


def remove_candidates(out_dir: Path) -> None:
    """Drop an earlier export's ensemble candidates (model-2.onnx, ...): packaging takes every one it
    finds. export.json goes first: it marks a finished export (write_report), and a killed one
    that has already replaced some of the models must not look finished to `make package`."""
    (out_dir / EXPORT_REPORT).unlink(missing_ok=True)
    for stale in out_dir.glob("model-*.onnx"):
        stale.unlink()


def write_report(out_dir: Path, report: dict) -> None:
    """export.json, written last and atomically: the mark of an export whose every model is in place."""
    atomic_write(out_dir / EXPORT_REPORT, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))


def export_finished(out_dir: Path) -> bool:
    """Whether out_dir holds a whole export (write_report came last), not one stopped part way."""
    return (out_dir / EXPORT_REPORT).exists()


def export_best(runs_dir: Path, out_dir: Path, *, top: int = 1, atol: float = PARITY_ATOL, opset: int = 18,
                activation: str | None = None) -> dict:
    """The best run -> out_dir/model.onnx; with top > 1 the next best -> model-2.onnx, ... too
    (candidates for an ensemble). Writes export.json: the best model's report, the others under
    'ensemble'."""
    runs = ranked_runs(runs_dir)
    remove_candidates(out_dir)
    reports = [export_run(Path(r["dir"]), out_dir, atol=atol, opset=opset, activation=activation,
                          filename="model.onnx" if k == 0 else f"model-{k + 1}.onnx")
               for k, r in enumerate(runs[:top])]
    report = {**reports[0], "ensemble": reports[1:]}
    write_report(out_dir, report)
    return report
