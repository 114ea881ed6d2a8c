"""`make report`: one table comparing every finished run on a dataset.

The last column is onnxruntime's CPU time per 5-s window: best.pt exported to ONNX in a temporary
folder, then a batch of 16 random windows of the run's feature shape timed on all cores (1 warm-up,
median of 5). It is measured once per run and machine, and kept in the run folder as onnx_cpu.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
from pathlib import Path

from data.paths import Workspace

ONNX_CPU_FILE = "onnx_cpu.json"
ONNX_BATCH, ONNX_REPEATS = 16, 5


def finished_runs(runs_dir: Path) -> list[dict]:
    """summary.json of every finished run under runs_dir, with its folder under 'dir'."""
    out = []
    for path in sorted(runs_dir.glob("*/summary.json")):
        summary = json.loads(path.read_text())
        if summary.get("status") == "finished" and (path.parent / "best.pt").exists():
            out.append({**summary, "dir": str(path.parent)})
    return out


def cpu_threads() -> int:
    """Cores this process may run on (all of them, unless pinned)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, where platform.processor() is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def this_machine() -> dict:
    """What an onnx_cpu.json must match to be reused: same CPU, thread count and onnxruntime."""
    import onnxruntime as ort

    return {"threads": cpu_threads(), "cpu": cpu_name(), "onnxruntime": ort.__version__}


def measure_onnx_cpu(run_dir: Path) -> dict:
    """Export run_dir's best.pt to ONNX in a temporary folder and time onnxruntime on the CPU."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from export.to_onnx import export_graph, load_run, ort_ms_per_window

    run = load_run(run_dir)
    windows = np.random.default_rng(0).standard_normal((ONNX_BATCH, *run.cfg.features.shape), dtype=np.float32)
    machine = this_machine()
    with tempfile.TemporaryDirectory(prefix="birdkit-report-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_graph(run.net, torch.from_numpy(windows[:2]), path, opset=18)
        ms = ort_ms_per_window(path, windows, threads=machine["threads"], repeats=ONNX_REPEATS)
    return {"ms_per_window": ms, **machine, "batch": ONNX_BATCH, "repeats": ONNX_REPEATS,
            "graph_optimization": ort.SessionOptions().graph_optimization_level.name}  # the default: ALL


def cached_onnx_cpu(run_dir: Path) -> dict | None:
    """The run's onnx_cpu.json if it was measured on this machine, else None."""
    path = run_dir / ONNX_CPU_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if all(record.get(k) == v for k, v in this_machine().items()) else None


def onnx_cpu_ms(run: dict, remeasure: bool = False) -> float | None:
    """ms per window for one run: from onnx_cpu.json, or measured now and written there.
    None when the run cannot be exported (the reason is printed)."""
    from export.to_onnx import ExportError

    run_dir = Path(run["dir"])
    record = None if remeasure else cached_onnx_cpu(run_dir)
    if record is None:
        print(f"report: measuring ONNX CPU time of {run['run']} (export + {ONNX_REPEATS + 1} batches of "
              f"{ONNX_BATCH}; ~20 s for inception_v3 on 2 cores)...", flush=True)
        try:
            record = measure_onnx_cpu(run_dir)
        except ExportError as err:
            print(f"report: {run['run']}: no ONNX timing: {err}")
            return None
        (run_dir / ONNX_CPU_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record["ms_per_window"]


def format_ms(ms: float | None) -> str:
    return f"{ms:9.2f}" if ms is not None and math.isfinite(ms) else f"{'-':>9s}"


def format_table(runs: list[dict]) -> str:
    """Runs best val ROC-AUC first; 'onnx_cpu_ms_per_window' where a run has it, else '-'."""
    header = (f"{'run':32s} {'model':13s} {'epochs':>6s} {'val acc':>8s} {'val AUC':>8s} {'train/s':>8s} "
              f"{'ONNX CPU ms/window':>18s}")
    lines = [header, "-" * len(header)]
    for r in sorted(runs, key=lambda r: -r["val_roc_auc"]):
        lines.append(f"{r['run']:32s} {r['model']:13s} {r['epochs']:6d} {r['val_accuracy']:8.4f} "
                     f"{r['val_roc_auc']:8.4f} {r['train_samples_per_s']:8.1f} "
                     f"{format_ms(r.get('onnx_cpu_ms_per_window')):>18s}")
    return "\n".join(lines)


def timing_note() -> str:
    m = this_machine()
    return (f"ONNX CPU ms/window: onnxruntime {m['onnxruntime']}, batch of {ONNX_BATCH} random windows, "
            f"{m['threads']} threads, median of {ONNX_REPEATS} on {m['cpu']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.report", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder (its runs are compared)")
    onnx = parser.add_mutually_exclusive_group()
    onnx.add_argument("--no-onnx", action="store_true", help="skip the ONNX CPU timing (column shows '-')")
    onnx.add_argument("--remeasure", action="store_true", help=f"time ONNX again, ignoring {ONNX_CPU_FILE}")
    args = parser.parse_args(argv)
    runs = finished_runs(Workspace.of(args.data).runs_dir)
    if not runs:
        if not Path(args.data).exists():  # a typo in DATA= reads as "nothing trained" otherwise
            print(f"no finished runs for {args.data}, and {args.data} does not exist: check DATA=", file=sys.stderr)
        else:
            print(f"no finished runs for {args.data} yet: run `make train DATA={args.data}`", file=sys.stderr)
        return 1
    if not args.no_onnx:
        runs = [{**r, "onnx_cpu_ms_per_window": onnx_cpu_ms(r, args.remeasure)} for r in runs]
    print(format_table(runs))
    if any(r.get("onnx_cpu_ms_per_window") is not None for r in runs):
        print(timing_note())
    return 0


if __name__ == "__main__":
    sys.exit(main())
