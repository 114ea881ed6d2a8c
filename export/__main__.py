"""`make export`: the best run on DATA (by recorded val ROC-AUC) -> ONNX, checked against torch.

With no finished run for DATA yet, it trains first: `python -m train --data DATA` with
--train-args (make passes MODELS, SEED, DENOISE and TRAIN_ARGS), and stops where training fails."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from data.paths import Workspace, refuse_unwritable
from export.to_onnx import (PARITY_ATOL, ExportError, export_best, export_run, remove_candidates, require_trained_run,
                            write_report)
from train.config import at_least
from train.report import finished_runs


def train_first(data: str, train_args: str) -> int:
    """`python -m train` on data with the user's flags; its exit status."""
    from train.__main__ import main as train_main

    flags = ["--data", str(data), *shlex.split(train_args)]
    print(f"export: no finished run for {Workspace.of(data).name} yet, training first: python -m train {shlex.join(flags)}")
    return train_main(flags)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="dataset folder whose runs to choose from")
    p.add_argument("--run", type=Path, help="export this run folder instead of the best one")
    p.add_argument("--atol", type=float, default=PARITY_ATOL,
                   help=f"largest |onnxruntime - torch| accepted (default {PARITY_ATOL:g})")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--top", type=at_least(1), default=3,
                   help="export the N best runs: the best as model.onnx, the next as model-2.onnx ... (ensemble "
                        "candidates; `make package` ships them only where the local score says they help)")
    p.add_argument("--activation", choices=["sigmoid", "softmax"],
                   help="ship this output activation instead of the run's own (its recorded val metrics "
                        "stay the run's); measure the change with `make score`")
    p.add_argument("--train-args", default="",
                   help="flags of `python -m train` for when there is no finished run to export yet, as one "
                        "string: --train-args='--models simple_cnn --epochs 30' (make passes MODELS, SEED, DENOISE "
                        "and TRAIN_ARGS)")
    return p


def _train_if_needed(args: argparse.Namespace, ws: Workspace) -> int | None:
    """Trains when there is nothing to export yet; the exit status to stop with, None to go on."""
    if args.run is not None or finished_runs(ws.runs_dir):
        return None
    rc = train_first(args.data, args.train_args)
    if rc == 130:  # Ctrl-C: training said how to continue
        return rc
    if rc != 0:
        print("error: training failed (above), so there is nothing to export: fix that, then rerun", file=sys.stderr)
        return 1
    return None


def _export(args: argparse.Namespace, ws: Workspace) -> dict:
    """--run's run alone, else the --top best runs; the export report (ExportError when it cannot)."""
    if args.run:
        require_trained_run(args.run)  # a mistyped --run must not cost the previous export
        remove_candidates(ws.export_dir)  # this run alone is the export now
        report = export_run(args.run, ws.export_dir, atol=args.atol, opset=args.opset,
                            activation=args.activation)
        write_report(ws.export_dir, {**report, "ensemble": []})
        return report
    return export_best(ws.runs_dir, ws.export_dir, top=args.top, atol=args.atol, opset=args.opset,
                       activation=args.activation)


def _say_exported(report: dict) -> None:
    for extra in report.get("ensemble", []):
        print(f"export: ensemble candidate {extra['model']} (val ROC-AUC {extra['val_roc_auc']:.4f}) -> {extra['onnx']}")
    print(f"export: {report['model']} (val ROC-AUC {report['val_roc_auc']:.4f}, accuracy "
          f"{report['val_accuracy']:.4f}) -> {report['onnx']}")
    print(f"export: onnxruntime vs torch max |diff| {report['max_abs_diff_vs_torch']:.2e} on "
          f"{report['checked_windows']} real windows; {report['onnx_cpu_ms_per_window_2_threads']:.1f} ms/window "
          f"on 2 CPU threads; {report['size_mb']:.1f} MB")


@refuse_unwritable
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ws = Workspace.of(args.data)
    rc = _train_if_needed(args, ws)
    if rc is not None:
        return rc
    try:
        report = _export(args, ws)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    _say_exported(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
