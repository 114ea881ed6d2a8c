"""`make score`: run the packaged notebook on labelled soundscapes and print Kaggle's metric.

The notebook runs in a fresh Jupyter kernel whose only code source is the packaged dataset,
against a folder arranged like /kaggle/input:

    submission/score/<dataset>/input/<competition>/test_soundscapes -> the labelled soundscapes
    submission/score/<dataset>/input/<competition>/sample_submission.csv
    submission/score/<dataset>/input/birdclef-kit-model -> submission/dist/dataset
    submission/score/<dataset>/working/submission.csv     written by the notebook

Labelled soundscapes: the dataset's own test_soundscapes with `<DATA>_solution.csv` beside the
dataset (the embedded sample), else `make holdout`'s data/holdout/<dataset>/.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from data.features import FeatureConfig, row_end_seconds
from data.layout import competition_of
from data.paths import Workspace, dist_dir, refuse_unwritable
from submission.ensemble import prefix_scores, read_member_raws
from submission.infer import PostProcess, expected_windows, list_soundscapes
from train.metrics import kaggle_score, unscorable_reason

KERNEL_NAME = "birdkit-python"


class ScoreError(RuntimeError):
    """Scoring impossible; the message says what to run first."""


class UnscorableLabels(ScoreError):
    """Labelled soundscapes exist, but Kaggle's metric cannot score their labels."""


@dataclass
class LabelledSet:
    soundscapes: Path
    solution: Path
    recordings: list[str]  # training recordings mixed into these soundscapes (empty for synthetic ones)


def labelled_set(ws: Workspace) -> LabelledSet:
    """The labelled soundscapes to score on, refused (ScoreError) when Kaggle's metric cannot score
    their labels: found here, before the notebook runs, not as a traceback after it."""
    if ws.solution_beside.exists():
        labelled = LabelledSet(ws.data_dir / "test_soundscapes", ws.solution_beside, [])
        refuse_unscorable(labelled.solution, "more or longer labelled test soundscapes")
        return labelled
    manifest = ws.holdout_dir / "holdout.json"
    if (ws.holdout_dir / "solution.csv").exists() and manifest.exists():
        recordings = json.loads(manifest.read_text())["recordings"]
        labelled = LabelledSet(ws.holdout_dir / "test_soundscapes", ws.holdout_dir / "solution.csv", recordings)
        refuse_unscorable(labelled.solution, f'more or longer soundscapes: `make holdout DATA={ws.data_dir} '
                                             f'HOLDOUT_ARGS="--soundscapes N --duration-s S"`')
        return labelled
    raise ScoreError(f"no labelled soundscapes for {ws.name}: run `make holdout DATA={ws.data_dir}` "
                     f"(or put Kaggle-format labels at {ws.solution_beside})")


def refuse_unscorable(solution: Path, remedy: str) -> None:
    """UnscorableLabels where Kaggle's metric has no score for the labels (train.metrics.unscorable_reason)."""
    why = unscorable_reason(pd.read_csv(solution))
    if why is not None:
        raise UnscorableLabels(f"{solution} cannot be scored by Kaggle's metric: {why}. Score on {remedy}")


def leaks(labelled: LabelledSet, models: list[dict], ws: Workspace, missing_ok: bool = False) -> list[tuple[dict, list[str]]]:
    """(model, recordings) for each model (ONNX metadata: run, model_name) whose run trained on a
    recording mixed into the soundscapes. A run without its split.json is a ScoreError, or
    skipped with `missing_ok`."""
    found = []
    for model in models if labelled.recordings else []:
        run, name = model.get("run"), model.get("model_name")
        split_path = ws.runs_dir / str(run) / "split.json"
        if not run or not split_path.exists():
            if missing_ok:
                continue
            raise ScoreError(f"cannot tell which recordings the packaged {name} trained on ({split_path} missing): "
                             f"package models trained on {ws.name} (`make train export package`)")
        split = json.loads(split_path.read_text())
        seen = set(labelled.recordings) & (set(split["train"]) | set(split["val"]))
        if seen:
            found.append((model, sorted(seen)))
    return found


def check_no_leak(labelled: LabelledSet, dist_dataset: Path, ws: Workspace) -> None:
    """No packaged model's run (every ensemble member's) may have trained on a recording mixed
    into the soundscapes."""
    manifest = json.loads((dist_dataset / "birdkit.json").read_text())
    for model, seen in leaks(labelled, manifest.get("models") or [manifest], ws)[:1]:
        raise ScoreError(f"the packaged model {model.get('model_name')} ({model.get('run')}) trained on {len(seen)} "
                         f"recording(s) of the held-out soundscapes (e.g. {seen[:3]}): its score would be inflated. "
                         "Train with the same --seed and --holdout-fraction as `make holdout`.")


def arrange_input(score_dir: Path, labelled: LabelledSet, sample_submission: Path, competition: str,
                  dist_dataset: Path) -> tuple[Path, Path]:
    """A /kaggle/input look-alike made of symlinks, and an empty working folder."""
    shutil.rmtree(score_dir, ignore_errors=True)
    comp = score_dir / "input" / competition
    comp.mkdir(parents=True)
    (comp / "test_soundscapes").symlink_to(labelled.soundscapes.resolve(), target_is_directory=True)
    (comp / "sample_submission.csv").symlink_to(sample_submission.resolve())
    (score_dir / "input" / dist_dataset_slug(dist_dataset)).symlink_to(dist_dataset.resolve(), target_is_directory=True)
    working = score_dir / "working"
    working.mkdir()
    return score_dir / "input", working


def dist_dataset_slug(dist_dataset: Path) -> str:
    meta = json.loads((dist_dataset / "dataset-metadata.json").read_text())
    return meta["id"].split("/")[-1]


def kernel_spec_dir(score_dir: Path) -> Path:
    """A kernelspec for this very interpreter, so no other Python on the machine is picked."""
    root = score_dir / "jupyter"
    spec = root / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "birdkit", "language": "python"}))
    return root


class EchoingClient(NotebookClient):
    """nbclient's NotebookClient that also prints the notebook's printed lines as they come (its
    progress: models, deadline, soundscapes done), so a long local run is not silent until the end."""

    def output(self, outs, msg, display_id, cell_index):
        if msg["msg_type"] == "stream":
            stream = sys.stderr if msg["content"].get("name") == "stderr" else sys.stdout
            print(msg["content"]["text"], end="", file=stream, flush=True)
        return super().output(outs, msg, display_id, cell_index)


def execute_notebook(notebook: Path, input_dir: Path, working: Path, score_dir: Path, timeout_s: int) -> float:
    """Run every cell in a fresh kernel; returns wall seconds. The kernel's cwd is the working
    folder and PYTHONPATH is cleared: the packaged dataset is its only code source."""
    from jupyter_client.manager import KernelManager

    nb = nbformat.read(notebook, as_version=4)
    env_updates = {"BIRDKIT_INPUT_DIR": str(input_dir.resolve()), "BIRDKIT_WORKING_DIR": str(working.resolve()),
                   "JUPYTER_PATH": str(kernel_spec_dir(score_dir).resolve()), "BIRDKIT_KEEP_RAW": "1"}
    saved = {k: os.environ.get(k) for k in (*env_updates, "PYTHONPATH")}  # restored after the run
    os.environ.update(env_updates)
    os.environ.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    try:
        # IPC sockets in the score folder: the kernel is local, nothing needs TCP.
        km = KernelManager(kernel_name=KERNEL_NAME, transport="ipc", ip=str((score_dir / "kernel").resolve()))
        client = EchoingClient(nb, km=km, timeout=timeout_s, kernel_name=KERNEL_NAME,
                               resources={"metadata": {"path": str(working.resolve())}})
        client.execute(cleanup_kc=True)  # shut the kernel down here: left alone it outlives the command
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        raise ScoreError(notebook_failure(nb, e, score_dir / "executed.ipynb", timeout_s)) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        nbformat.write(nb, score_dir / "executed.ipynb")
    return time.perf_counter() - t0


def notebook_failure(nb, error: Exception, executed: Path, timeout_s: int) -> str:
    """One paragraph on why the notebook stopped: which cell, the error's last line, where the whole
    output is (nbclient's own exception repeats the cell's source and a traceback screens long)."""
    failed = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
              and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    where = f"cell {failed[0] + 1} of {len(nb.cells)}" if failed else "a cell"
    if isinstance(error, CellTimeoutError):
        why = (f"ran past --timeout-s {timeout_s} s (SCORE_ARGS=\"--timeout-s N\" raises it; on Kaggle the "
               "notebook's deadline decides)")
    elif isinstance(error, DeadKernelError):
        why = "lost its kernel (out of memory? `make bench-infer` measures the notebook's peak)"
    else:
        outputs = nb.cells[failed[0]].outputs if failed else []
        err = next((o for o in outputs if o.get("output_type") == "error"), None)
        why = f"raised {err['ename']}: {err['evalue']}" if err else f"failed: {str(error).strip().splitlines()[-1]}"
    return f"the notebook stopped: {where} {why}. Its outputs are in {executed}"


def check_submission(sub: pd.DataFrame, sample_submission: Path, soundscapes: Path, features: FeatureConfig) -> None:
    """Exactly sample_submission's columns; each soundscape's rows, in sorted order."""
    columns = pd.read_csv(sample_submission, nrows=0).columns.tolist()
    if sub.columns.tolist() != columns:
        raise ScoreError("submission.csv columns differ from sample_submission.csv's")
    expected = [f"{path.stem}_{end}" for path in list_soundscapes(soundscapes)
                for end in row_end_seconds(expected_windows(path, features), features)]
    if sub.row_id.tolist() != expected:
        raise ScoreError(f"submission.csv row_ids differ from the expected {len(expected)} rows in sorted order")


# What `make score` tries on the raw probabilities, to show what post-processing would gain.
POSTPROCESS_VARIANTS = {
    "none": PostProcess(),
    "smooth 0.25/0.5/0.25": PostProcess(smooth_kernel=(0.25, 0.5, 0.25)),
    "blend 0.3 with mean": PostProcess(mean_blend=0.3),
    "both": PostProcess(smooth_kernel=(0.25, 0.5, 0.25), mean_blend=0.3),
}


def postprocess_variants(solution: pd.DataFrame, raw: pd.DataFrame) -> dict[str, float]:
    """Kaggle's metric for each post-processing variant, applied per soundscape to the raw output."""
    classes = [c for c in raw.columns if c != "row_id"]
    stems = raw.row_id.str.rsplit("_", n=1).str[0].to_numpy()
    probs = raw[classes].to_numpy(np.float32)
    # Each soundscape's rows are contiguous (the notebook writes them in order, check_submission):
    # slices, not a mask over every row per soundscape (quadratic: ~40 s for 700 soundscapes).
    ends = np.r_[np.flatnonzero(stems[1:] != stems[:-1]) + 1, len(stems)]
    starts = np.r_[0, ends[:-1]]
    scores = {}
    for name, post in POSTPROCESS_VARIANTS.items():
        out = raw.copy()
        if len(probs):
            out[classes] = np.concatenate([post(probs[s:e]) for s, e in zip(starts, ends)])
        scores[name] = kaggle_score(solution, out)
    return scores


def ensemble_variants(solution: pd.DataFrame, raw_csv: Path, manifest: dict) -> dict[str, float]:
    """Kaggle's metric for each packaged model alone and for the best-first ensembles of 2, 3, ...
    of them (mean and min), from the members' raw outputs of the same run. Empty for one model."""
    names = model_names(manifest)
    if len(names) < 2:
        return {}
    raws = read_member_raws(raw_csv, len(names))
    scores = {f"{k + 1}. {name} alone": kaggle_score(solution, raw) for k, (name, raw) in enumerate(zip(names, raws))}
    by_rule = {how: prefix_scores(solution, raws, how) for how in ("mean", "min")}
    for n in range(2, len(raws) + 1):
        for how in ("mean", "min"):
            scores[f"{how} of 1-{n}"] = by_rule[how][n - 1]
    return scores


def model_names(manifest: dict) -> list[str]:
    """The packaged models' names, best first (a manifest from before ensembles: its one model)."""
    return [m.get("model_name") or m["file"] for m in manifest.get("models", [])] or [manifest.get("model_name")]


def packaged_models(manifest: dict) -> str:
    """'simple_cnn', or 'simple_cnn + resnet18 (mean)' for an ensemble."""
    names = model_names(manifest)
    return names[0] if len(names) == 1 else f"{' + '.join(names)} ({manifest.get('combine', 'mean')})"


def score(ws: Workspace, competition: str, dist: Path, timeout_s: int = 3600) -> dict:
    """Execute the notebook packaged in `dist` on ws's labelled soundscapes; score its output."""
    dataset = dist / "dataset"
    notebooks = sorted((dist / "notebook").glob("*.ipynb"))
    if not notebooks or not (dataset / "birdkit.json").exists():
        raise ScoreError(f"{dist} holds no packaged notebook: run `make package` first")
    labelled = labelled_set(ws)
    check_no_leak(labelled, dataset, ws)
    sample_submission = ws.data_dir / "sample_submission.csv"
    input_dir, working = arrange_input(ws.score_dir, labelled, sample_submission, competition, dataset)
    wall_s = execute_notebook(notebooks[0], input_dir, working, ws.score_dir, timeout_s)
    sub = pd.read_csv(working / "submission.csv")
    manifest = json.loads((dataset / "birdkit.json").read_text())
    check_submission(sub, sample_submission, labelled.soundscapes, FeatureConfig.from_dict(manifest["features"]))
    solution = pd.read_csv(labelled.solution)
    timing = json.loads((working / "timing.json").read_text())
    n = max(timing["soundscapes"], 1)
    raw = pd.read_csv(working / "submission_raw.csv")
    result = {
        "score": kaggle_score(solution, sub), "postprocess": manifest.get("postprocess"),
        "postprocess_variants": postprocess_variants(solution, raw),
        "combine": manifest.get("combine", "mean"),
        "ensemble_variants": ensemble_variants(solution, working / "submission_raw.csv", manifest),
        "soundscapes": timing["soundscapes"], "rows": len(sub),
        "notebook_wall_s": wall_s, "seconds_per_soundscape": timing["total_s"] / n,
        "decode_s_per_soundscape": timing["decode_s"] / n, "features_s_per_soundscape": timing["features_s"] / n,
        "model_s_per_soundscape": timing["model_s"] / n, "model": packaged_models(manifest),
        "solution": str(labelled.solution), "failures": timing["failures"],
    }
    (ws.score_dir / "score.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


@refuse_unwritable
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m submission.score", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="dataset whose labelled soundscapes to score on")
    p.add_argument("--competition", help="the competition folder's name under the look-alike /kaggle/input "
                                          "(default: as `make package` chooses it)")
    p.add_argument("--dist", type=Path, help="the packaged submission to run (default: submission/dist)")
    p.add_argument("--timeout-s", type=int, default=3600, help="per-cell time limit")
    args = p.parse_args(argv)
    try:
        r = score(Workspace.of(args.data), args.competition or competition_of(args.data), args.dist or dist_dir(), args.timeout_s)
    except ScoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"score: {r['model']} on {r['soundscapes']} soundscapes ({r['rows']} rows, {r['solution']})")
    print(f"score: macro ROC-AUC (Kaggle's metric) = {r['score']:.4f}  (packaged post-processing: {r['postprocess']})")
    print("score: post-processing variants on the same raw output (set with PACKAGE_ARGS=\"--smooth-kernel ... "
          "--mean-blend ...\"): " + ", ".join(f"{k} {v:.4f}" for k, v in r["postprocess_variants"].items()))
    if r["ensemble_variants"]:
        print(f"score: ensemble variants on the members' raw outputs (packaged: {r['combine']} of all; choose with "
              "PACKAGE_ARGS=\"--ensemble N --combine mean|min\"): "
              + ", ".join(f"{k} {v:.4f}" for k, v in r["ensemble_variants"].items()))
    # The stages run side by side in several processes: their seconds add up across them, not to the pace.
    print(f"score: {r['seconds_per_soundscape']:.2f} s per soundscape (wall clock; work summed over the notebook's "
          f"processes: decode {r['decode_s_per_soundscape']:.2f}, features {r['features_s_per_soundscape']:.2f}, "
          f"model {r['model_s_per_soundscape']:.2f}); notebook wall time {r['notebook_wall_s']:.1f} s")
    if r["failures"]:
        print(f"score: {len(r['failures'])} file problem(s) logged by the notebook: {r['failures'][:3]}")
    score_dir = Workspace.of(args.data).score_dir
    print(f"score: details in {score_dir / 'score.json'}, the notebook's files in {score_dir / 'working'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
