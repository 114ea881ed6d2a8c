"""`make bench-infer`: the packaged notebook's own inference code, timed on synthetic soundscapes.

For the exported model of DATA and, when `make package` shipped something else for DATA (an
ensemble of its models), for that as the notebook runs it (or --onnx files, or every finished run
with --all-runs). What the package ships is marked, with the targets it meets or misses:

  - per-core costs of one 4-minute soundscape: decode, features, model (one thread each);
  - the model alone on all cores (the faster of intra-op threads and one soundscape per core,
    both measured), and the whole notebook pipeline (submission.infer's
    write_submission: feature worker processes beside the model, results streamed to disk) on
    all cores, seconds per soundscape, and their ratio: the pipeline's overhead;
  - the pipeline's peak memory (this process tree's summed PSS, sampled), which must not grow
    with the number of soundscapes;
  - the projected minutes for Kaggle's ~1,100 soundscapes on 4 cores (submission/budget.py:
    per-core costs summed, divided by 4; Kaggle's cores assumed as fast as this machine's).

Results also go to bench/out/infer.json (under BIRDKIT_ROOT when set).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from data.paths import Workspace, dist_dir, output_root
from submission.budget import (
    KAGGLE_CORES, KAGGLE_SOUNDSCAPES, MEASURED_SOUNDSCAPE_S, Costs, feature_seconds_per_soundscape,
    model_seconds_per_soundscape, single_core,
)

TARGET_MIN, TARGET_OVERHEAD, TARGET_PEAK_GB = 30.0, 1.3, 4.0


def write_soundscapes(folder: Path, n: int, seconds: float = MEASURED_SOUNDSCAPE_S) -> list[Path]:
    """n synthetic 4-minute soundscapes (noise + chirps), OGG like Kaggle's."""
    from bench.preprocess import synthetic_soundscape
    from data.audio_io import write_ogg

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"soundscape_{i:06d}.ogg" for i in range(n)]
    for stale in set(folder.glob("*.ogg")) - set(paths):  # the pipeline reads the whole folder: exactly n
        stale.unlink()
    for i, path in enumerate(paths):
        if not path.exists():
            write_ogg(path, synthetic_soundscape(seconds, seed=i), 32_000)
    return paths


def sample_submission(folder: Path, classes: list[str]) -> Path:
    path = folder / "sample_submission.csv"
    path.write_text(",".join(["row_id", *classes]) + "\n")
    return path


class PeakMemory:
    """Highest memory of this process and its children together: their summed PSS, which counts
    each shared page once (summed RSS would count the pages a forked feature worker shares with
    the notebook's process, models included, once per process). Sampled every second: reading
    PSS costs ~15 ms per process, which at 20 samples a second took most of a core from the
    pipeline it measures; the models' memory stays allocated between soundscapes, so the peak
    is still seen."""

    interval_s = 1.0

    def __init__(self):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_full_info().pss for p in procs))
            except Exception:  # a worker exiting between listing and reading
                pass
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _pipeline_child(onnx_paths: list[str], combine: str, test_dir: str, out_dir: str, queue, settings: dict) -> None:
    """The notebook's write_submission in a fresh process: wall seconds and peak memory."""
    from submission.infer import Ensemble, KitModel, RunSettings, write_submission

    settings = RunSettings(**settings)
    workers, threads = settings.resolved()
    # As the notebook loads them (each model warmed up and timed); the one-off imports and FFT
    # plans of the first features fall in the start-up, as in the notebook, not in the pace.
    ensemble = Ensemble([KitModel.load(Path(p), threads) for p in onnx_paths], combine)
    sub = sample_submission(Path(out_dir), ensemble.classes)
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        timing = write_submission(ensemble, Path(test_dir), sub, Path(out_dir) / "submission.csv", settings=settings)
        wall = time.perf_counter() - t0
    queue.put({"wall_s": wall, "soundscapes": timing.soundscapes, "done_s": timing.done_s, "peak_bytes": mem.peak,
               "feature_workers": workers, "model_threads": threads,
               "soundscape_workers": settings.parallel_soundscapes(ensemble.slowest_ms_per_window)})


def pipeline(onnx_paths: list[Path], test_dir: Path, combine: str = "mean", **settings) -> dict:
    """The notebook's pipeline for these models (an ensemble when several) with
    RunSettings(**settings) (the notebook's defaults when empty)."""
    ctx = mp.get_context("spawn")  # a clean process: its memory is the pipeline's alone
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as out:
        p = ctx.Process(target=_pipeline_child,
                        args=([str(x) for x in onnx_paths], combine, str(test_dir), out, queue, settings))
        p.start()
        result = queue.get()
        p.join()
    return result


def steady_pace_s(done_s: list[float], warm: int) -> tuple[float, float]:
    """(seconds per soundscape once every worker is running, one-off start-up seconds).

    The pace is taken after the first `warm` soundscapes (each worker's first: it loads its
    models and pays their first run), as the model-alone times are taken after a warm-up; the
    start-up is what the run cost beyond that pace, paid once, not per soundscape (~1,100 on
    Kaggle)."""
    n = len(done_s)
    warm = min(max(warm, 1), n - 1) if n > 1 else 0
    pace = (done_s[-1] - done_s[warm - 1]) / (n - warm) if warm else done_s[-1]
    return pace, max(0.0, done_s[-1] - n * pace)


@dataclass
class Benched:
    """What one row times: a model, or an ensemble the notebook runs as one (models summed)."""

    name: str
    onnx_paths: list[Path]
    combine: str = "mean"
    ships: bool = False  # what `make package` put in the notebook's dataset: the default submission


def _model_only_child(onnx_paths: list[str], barrier, queue, soundscapes: int) -> None:
    """One core's share of `model_per_core_s`: one-thread models on ready features, timed
    from a start shared with the other cores."""
    from submission.budget import WINDOWS_PER_SOUNDSCAPE
    from submission.infer import Ensemble, KitModel

    ensemble = Ensemble([KitModel.load(Path(p), threads=1, measure=False) for p in onnx_paths])
    feats = np.random.default_rng(0).random((WINDOWS_PER_SOUNDSCAPE, *ensemble.features.shape), dtype=np.float32)
    ensemble.predict(feats)  # warm-up
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(soundscapes):
        ensemble.predict(feats)
    queue.put(time.perf_counter() - t0)


def model_per_core_s(onnx_paths: list[Path], cores: int, soundscapes: int = 2) -> float:
    """Seconds per soundscape for the model(s) alone, one process per core running at once, as
    the whole-soundscape pool runs them: the cores' real scaling (shared caches and memory
    bandwidth), not a one-thread time divided by the cores."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(cores), ctx.Queue()
    procs = [ctx.Process(target=_model_only_child, args=([str(p) for p in onnx_paths], barrier, queue, soundscapes))
             for _ in range(cores)]
    for proc in procs:
        proc.start()
    walls = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()
    return max(walls) / (cores * soundscapes)


def bench_model(bench: Benched, scapes: list[Path]) -> dict:
    from submission.infer import KitModel

    cfg = KitModel.load(bench.onnx_paths[0], threads=1).features
    cores = os.cpu_count() or 1
    with single_core():
        decode_s, features_s = feature_seconds_per_soundscape(scapes[0], cfg)
        model_1t = sum(model_seconds_per_soundscape(p, threads=1) for p in bench.onnx_paths)
    costs = Costs(decode_s, features_s, model_1t)
    model_threads = sum(model_seconds_per_soundscape(p, threads=cores) for p in bench.onnx_paths)
    # The model alone on all cores, at its best: intra-op threads, or one soundscape per core
    # (both measured: the pipeline runs one or the other).
    model_all = min(model_threads, model_per_core_s(bench.onnx_paths, cores))
    pipe = pipeline(bench.onnx_paths, scapes[0].parent, bench.combine)
    pipe_s, startup_s = steady_pace_s(pipe["done_s"], pipe["soundscape_workers"] or 1)
    # Memory grows with the processes, not the cores' speed: run the pipeline with the processes
    # Kaggle's cores would start (a model copy per core in the pool; half the cores as feature workers).
    kaggle = pipeline(bench.onnx_paths, scapes[0].parent, bench.combine, feature_workers=KAGGLE_CORES // 2,
                      soundscape_workers=KAGGLE_CORES if pipe["soundscape_workers"] else 0)
    return {
        "model": bench.name, "ships": bench.ships, "onnx": [str(p) for p in bench.onnx_paths], "decode_s": decode_s,
        "features_s": features_s,
        "model_1thread_s": model_1t, "model_threads_s": model_threads, "model_all_cores_s": model_all,
        "pipeline_s": pipe_s, "startup_s": startup_s, "overhead": pipe_s / model_all, "peak_gb": pipe["peak_bytes"] / 1e9,
        "kaggle_peak_gb": kaggle["peak_bytes"] / 1e9,
        "projected_min": costs.projected_min(), "cores_here": cores,
        "feature_workers": pipe["feature_workers"], "model_threads": pipe["model_threads"],
        "soundscape_workers": pipe["soundscape_workers"],
    }


# ------------------------------------------------------------------------------ levers
def _session(path: Path, threads: int, level: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _time_session(session, feats: np.ndarray, repeats: int = 3) -> float:
    name = session.get_inputs()[0].name
    session.run(None, {name: feats})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {name: feats})
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def levers(name: str, onnx_path: Path, scapes: list[Path]) -> list[dict]:
    """Each lever's effect on one soundscape's model time (or on the pipeline), measured here."""
    from submission.infer import KitModel, soundscape_features

    cfg = KitModel.load(onnx_path, threads=1).features
    feats = soundscape_features(scapes[0], cfg).feats  # [48, M, T]
    cores = os.cpu_count() or 1
    rows = []
    base = _time_session(_session(onnx_path, cores, "ORT_ENABLE_ALL"), feats)
    rows.append({"lever": "graph optimisation: basic instead of all", "seconds": _time_session(
        _session(onnx_path, cores, "ORT_ENABLE_BASIC"), feats), "baseline": base})
    rows.append({"lever": f"model threads: 1 instead of {cores}", "seconds": _time_session(
        _session(onnx_path, 1, "ORT_ENABLE_ALL"), feats), "baseline": base})
    from submission.quantize import quantize_int8

    with tempfile.TemporaryDirectory() as tmp:
        q = quantize_int8(onnx_path, feats, Path(tmp) / "int8.onnx")
        q_session = _session(q, cores, "ORT_ENABLE_ALL")
        diff = float(np.abs(q_session.run(None, {"features": feats})[0]
                            - _session(onnx_path, cores, "ORT_ENABLE_ALL").run(None, {"features": feats})[0]).max())
        rows.append({"lever": f"int8 static quantisation (max |diff| {diff:.3f})",
                     "seconds": _time_session(q_session, feats), "baseline": base})
    for r in rows:
        r["model"] = name
    return rows + pipeline_levers(Benched(name, [onnx_path]), scapes)


def pipeline_levers(bench: Benched, scapes: list[Path]) -> list[dict]:
    """The notebook's two ways to use the cores, each against the serial pipeline and the pool
    against the feature workers, seconds per soundscape at the steady pace (steady_pace_s)."""
    cores = os.cpu_count() or 1

    def per(**settings) -> tuple[float, dict]:
        r = pipeline(bench.onnx_paths, scapes[0].parent, bench.combine, **settings)
        return steady_pace_s(r["done_s"], r["soundscape_workers"] or 1)[0], r

    serial, _ = per(feature_workers=0, soundscape_workers=0)
    beside, b = per(feature_workers=-1, soundscape_workers=0)
    pool, p = per(soundscape_workers=cores)
    feature_workers = f"{b['feature_workers']} feature worker(s) beside the model"
    return [{"model": bench.name, **row} for row in (
        {"lever": f"pipeline: {feature_workers}, not serial", "seconds": beside, "baseline": serial},
        {"lever": f"pipeline: {p['soundscape_workers']} whole-soundscape workers (1 thread), not serial",
         "seconds": pool, "baseline": serial},
        {"lever": f"pipeline: {p['soundscape_workers']} whole-soundscape workers, not {feature_workers}",
         "seconds": pool, "baseline": beside},
    )]


def format_levers(rows: list[dict]) -> str:
    w = max([24, *(len(r["model"]) for r in rows)])
    lines = [f"{'model':{w}s} {'lever':72s} {'before s':>8s} {'after s':>8s} {'speed-up':>8s}"]
    for r in rows:
        lines.append(f"{r['model']:{w}s} {r['lever']:72s} {r['baseline']:8.3f} {r['seconds']:8.3f} "
                     f"{r['baseline'] / r['seconds']:7.2f}x")
    return "\n".join(lines)


def models_to_bench(args) -> list[Benched]:
    if args.onnx:
        return [Benched(Path(p).stem, [Path(p)]) for p in args.onnx]
    ws = Workspace.of(args.data)
    if not args.all_runs:
        path = ws.export_dir / "model.onnx"
        if not path.exists():
            raise SystemExit(f"error: {path} not found: run `make export DATA={args.data}` or pass --onnx")
        meta = json.loads((ws.export_dir / "export.json").read_text())
        return with_package(Benched(meta["model"], [path]), ws)
    from export.to_onnx import export_run
    from train.report import finished_runs

    out = []
    for run in finished_runs(ws.runs_dir):
        target = Path(tempfile.mkdtemp()) / run["run"]
        export_run(Path(run["dir"]), target)
        out.append(Benched(run["run"], [target / "model.onnx"]))
    return out


def with_package(exported: Benched, ws: Workspace) -> list[Benched]:
    """The exported model's row, and what `make package` shipped for this dataset (what the
    notebook will run) marked as shipping: the export's row when it shipped that model alone,
    else a row of its own. Unmarked when DATA has not been packaged."""
    from submission.infer import MANIFEST_NAME
    from submission.package import sha256
    from submission.score import packaged_models

    dataset = dist_dir() / "dataset"
    manifest_path = dataset / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    models = manifest.get("models", [])
    if manifest.get("dataset") != ws.name or not models:
        return [exported]
    if len(models) == 1 and models[0].get("sha256") == sha256(exported.onnx_paths[0]):
        return [replace(exported, ships=True)]
    return [exported, Benched(f"package: {packaged_models(manifest)}", [dataset / m["file"] for m in models],
                              manifest.get("combine", "mean"), ships=True)]


def targets_missed(row: dict) -> list[str]:
    """The issue's three targets this row misses, as 'overhead 2.54 > 1.3'; empty when all are met."""
    checks = (("Kaggle min", row["projected_min"], TARGET_MIN), ("overhead", row["overhead"], TARGET_OVERHEAD),
              (f"peak GB at {KAGGLE_CORES} cores", row["kaggle_peak_gb"], TARGET_PEAK_GB))
    return [f"{name} {value:.2f} > {limit:g}" for name, value, limit in checks if value > limit]


def targets_cell(row: dict) -> str:
    missed = targets_missed(row)
    return "missed: " + ", ".join(missed) if missed else "met"


def verdict(row: dict) -> str:
    missed = targets_missed(row)
    return (f"what `make package` ships (the default submission): {row['model']}: "
            + ("misses " + ", ".join(missed) if missed else "all three targets met"))


def format_table(rows: list[dict], n: int) -> str:
    cores = rows[0]["cores_here"] if rows else os.cpu_count()
    w = max([28, *(len(r["model"]) for r in rows)])
    lines = [
        f"bench-infer: {n} synthetic 4-minute soundscapes; this machine has {cores} cores; "
        f"seconds per soundscape (medians)",
        f"{'model':{w}s} {'decode':>7s} {'features':>8s} {'model 1t':>8s} {'model all*':>10s} {'pipeline':>8s} "
        f"{'overhead':>8s} {'start-up s':>10s} {'peak GB':>7s} {f'at {KAGGLE_CORES} cores***':>13s} "
        f"{'Kaggle min**':>12s}  targets",
    ]
    for r in rows:
        lines.append(
            f"{r['model']:{w}s} {r['decode_s']:7.3f} {r['features_s']:8.3f} {r['model_1thread_s']:8.3f} "
            f"{r['model_all_cores_s']:10.3f} {r['pipeline_s']:8.3f} {r['overhead']:8.2f} {r['startup_s']:10.1f} "
            f"{r['peak_gb']:7.2f} {r['kaggle_peak_gb']:13.2f} {r['projected_min']:12.1f}  "
            + targets_cell(r) + ("  <- ships" if r.get("ships") else ""))
    lines.append("* model all: the model alone on every core, the faster of intra-op threads and one soundscape per "
                 "core in parallel (both measured on ready features, after a warm-up). pipeline: seconds per "
                 "soundscape once every worker has written its first; start-up: the one-off seconds beyond that pace "
                 "(workers loading their models, the first features' imports and FFT plans).")
    lines.append(f"** projected for {KAGGLE_SOUNDSCAPES} soundscapes on {KAGGLE_CORES} cores: per-core decode + "
                 f"features + model, divided by {KAGGLE_CORES}. Targets: <= {TARGET_MIN:.0f} min, overhead "
                 f"(pipeline / model on all cores) <= {TARGET_OVERHEAD}, peak <= {TARGET_PEAK_GB:.0f} GB.")
    lines.append(f"*** peak memory with the processes the notebook starts on Kaggle's {KAGGLE_CORES} cores "
                 "(one model copy per core in the whole-soundscape pool).")
    lines += [verdict(r) for r in rows if r.get("ships")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.infer", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/sample", help="dataset whose exported model (or runs) to time")
    p.add_argument("--onnx", nargs="+", help="time these ONNX files instead")
    p.add_argument("--all-runs", action="store_true", help="export and time every finished run of --data")
    p.add_argument("--soundscapes", type=int, default=4, help="synthetic 4-minute soundscapes for the pipeline")
    p.add_argument("--levers", action="store_true",
                   help="also measure each speed lever: graph optimisation, threads, int8, feature workers")
    args = p.parse_args(argv)
    out_dir = output_root() / "bench" / "out"
    scapes = write_soundscapes(out_dir / "infer_soundscapes", args.soundscapes)
    models = models_to_bench(args)
    rows = [bench_model(bench, scapes) for bench in models]
    print(format_table(rows, len(scapes)))
    lever_rows = ([r for bench in models for r in (levers(bench.name, bench.onnx_paths[0], scapes)
                                                   if len(bench.onnx_paths) == 1 else pipeline_levers(bench, scapes))]
                  if args.levers else [])
    if lever_rows:
        print("\nlevers (seconds per soundscape; model time unless the lever is the pipeline's):")
        print(format_levers(lever_rows))
    (out_dir / "infer.json").write_text(json.dumps({"models": rows, "levers": lever_rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
