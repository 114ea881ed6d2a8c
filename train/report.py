"""`make report`: one table comparing every finished run on a dataset."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data.paths import Workspace


def finished_runs(runs_dir: Path) -> list[dict]:
    """summary.json of every finished run under runs_dir, with its folder under 'dir'."""
    out = []
    for path in sorted(runs_dir.glob("*/summary.json")):
        summary = json.loads(path.read_text())
        if summary.get("status") == "finished" and (path.parent / "best.pt").exists():
            out.append({**summary, "dir": str(path.parent)})
    return out


def format_table(runs: list[dict]) -> str:
    header = f"{'run':32s} {'model':13s} {'epochs':>6s} {'val acc':>8s} {'val AUC':>8s} {'train/s':>8s}"
    lines = [header, "-" * len(header)]
    for r in sorted(runs, key=lambda r: -r["val_roc_auc"]):
        lines.append(f"{r['run']:32s} {r['model']:13s} {r['epochs']:6d} {r['val_accuracy']:8.4f} "
                     f"{r['val_roc_auc']:8.4f} {r['train_samples_per_s']:8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.report", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder (its runs are compared)")
    args = parser.parse_args(argv)
    runs = finished_runs(Workspace.of(args.data).runs_dir)
    if not runs:
        print(f"no finished runs for {args.data} yet: run `make train DATA={args.data}`")
        return 1
    print(format_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
