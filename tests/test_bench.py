"""`make bench-preprocess`: the CLI runs end to end on a tiny synthetic input."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.preprocess", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_the_help_names_the_options():
    out = run_bench("--help")
    assert out.returncode == 0, out.stderr
    for flag in ("--data", "--files", "--repeats", "--synthetic", "--soundscape-seconds", "--modes"):
        assert flag in out.stdout


def test_the_bench_prints_a_table_of_every_mode_and_writes_json(tmp_path):
    out_json = tmp_path / "preprocess.json"
    out = run_bench("--synthetic", "--files", "1", "--repeats", "1", "--soundscape-seconds", "6",
                    "--out", str(out_json))
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    header = next(line for line in text.splitlines() if line.startswith("mode") and "x real time" in line)
    for column in ("decode s", "denoise s", "mel s", "total s", "vs none", "peak RSS", "train set, 16 cores"):
        assert column in header
    for mode in ("none", "spectral", "noisereduce"):
        rows = [line for line in text.splitlines() if line.startswith(mode + " ")]
        assert len(rows) == 2, text  # the input-set row and the one-soundscape row
        speed = float(re.search(r"(\d+)x", rows[0]).group(1))
        assert speed > 0
        numbers = [float(x) for x in re.findall(r"\d+\.\d+", rows[0])]
        assert numbers and all(x >= 0 for x in numbers) and numbers[-1] > 0  # the projection, in minutes
    assert re.search(r"one 6-s soundscape \(2 windows\)", text) and "estimate" in text

    report = json.loads(out_json.read_text())
    assert [m["mode"] for m in report["modes"]] == ["none", "spectral", "noisereduce"]
    for m in report["modes"]:
        assert m["x_real_time_per_core"] > 0 and m["seconds"]["total"] > 0 and m["seconds"]["decode"] > 0
        assert m["seconds"]["mel"] > 0 and m["rss_peak_mib"] > 0 and m["train_set_projection_h"] > 0
        assert m["soundscape"]["seconds"]["total"] > 0
    nr = report["modes"][2]
    assert nr["seconds"]["denoise"] > 0 and nr["time_vs_none"] > 1
    assert report["assumptions"]["train_set_hours_is_estimate"] is True


def test_an_unknown_mode_is_refused():
    out = run_bench("--modes", "none,fast", "--synthetic")
    assert out.returncode != 0 and "fast" in out.stderr


def test_bench_infer_times_each_stage_of_the_exported_model_and_its_memory_on_kaggles_cores(chain, capsys,
                                                                                            monkeypatch):
    import bench.infer as bench_infer
    from bench.infer import main
    from data.paths import output_root

    runs, real_pipeline = [], bench_infer.pipeline

    def recorded_pipeline(onnx_paths, test_dir, combine="mean", **settings):  # the real one, its calls kept
        runs.append((settings, real_pipeline(onnx_paths, test_dir, combine, **settings)))
        return runs[-1][1]

    monkeypatch.setattr(bench_infer, "pipeline", recorded_pipeline)
    assert main(["--data", str(chain.data_dir), "--soundscapes", "1"]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("model "))
    for column in ("decode", "features", "model 1t", "model all*", "pipeline", "overhead", "start-up s", "peak GB",
                   "at 4 cores***", "Kaggle min**"):
        assert column in header
    rows = json.loads((output_root() / "bench" / "out" / "infer.json").read_text())["models"]
    row = rows[0]  # the exported model
    for key in ("decode_s", "features_s", "model_1thread_s", "model_all_cores_s", "pipeline_s", "projected_min"):
        assert row[key] > 0, key
    assert row["overhead"] == row["pipeline_s"] / row["model_all_cores_s"]
    assert 0.05 < row["peak_gb"] < 4 and 0.05 < row["kaggle_peak_gb"] < 4
    assert len(runs) == 2 * len(rows)  # per row: the notebook's defaults, then Kaggle's process count
    (here, here_run), (kaggle, kaggle_run) = runs[:2]
    assert here == {} and kaggle == {"feature_workers": bench_infer.KAGGLE_CORES // 2,
                                     "soundscape_workers": bench_infer.KAGGLE_CORES if here_run["soundscape_workers"] else 0}
    assert (row["peak_gb"], row["kaggle_peak_gb"]) == (here_run["peak_bytes"] / 1e9, kaggle_run["peak_bytes"] / 1e9)
    assert f"{row['kaggle_peak_gb']:13.2f} {row['projected_min']:12.1f}" in text
    # what the chain's package shipped (the exported model alone, or an ensemble the local score chose)
    # is the one row marked as shipping, with its verdict
    manifest = json.loads((output_root() / "submission" / "dist" / "dataset" / "birdkit.json").read_text())
    shipped = [m["model_name"] for m in manifest["models"]]
    assert [r["ships"] for r in rows] == ([True] if len(shipped) == 1 else [False, True])
    assert rows[-1]["model"] == (row["model"] if len(shipped) == 1 else
                                 f"package: {' + '.join(shipped)} ({manifest['combine']})")
    assert f"what `make package` ships (the default submission): {rows[-1]['model']}: " in text


def test_the_targets_a_row_misses_are_named_with_their_values():
    from bench.infer import targets_cell, targets_missed, verdict

    row = {"model": "m", "projected_min": 19.2, "overhead": 1.13, "kaggle_peak_gb": 2.97}
    assert targets_missed(row) == [] and targets_cell(row) == "met"
    assert verdict(row).endswith("m: all three targets met")
    slow = {**row, "overhead": 2.54, "projected_min": 31.0, "kaggle_peak_gb": 4.5}
    assert targets_missed(slow) == ["Kaggle min 31.00 > 30", "overhead 2.54 > 1.3", "peak GB at 4 cores 4.50 > 4"]
    assert "misses Kaggle min 31.00 > 30, overhead 2.54 > 1.3" in verdict(slow)
    assert targets_cell({**row, "overhead": 2.54}) == "missed: overhead 2.54 > 1.3"


def test_an_ensemble_the_package_ships_is_timed_in_its_own_row_marked_as_shipping(chain, tmp_path, monkeypatch):
    import bench.infer
    from bench.infer import Benched, with_package
    from submission.package import sha256

    exported = Benched("simple_cnn", [chain.export_dir / "model.onnx"])
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    monkeypatch.setattr(bench.infer, "dist_dir", lambda: tmp_path)

    def packaged(*models: dict, data: str = chain.name) -> None:
        (dataset / "birdkit.json").write_text(json.dumps({"dataset": data, "combine": "mean", "models": list(models)}))

    alone = {"file": "model.onnx", "model_name": "simple_cnn", "sha256": sha256(exported.onnx_paths[0])}
    packaged(alone)
    assert [(b.name, b.ships) for b in with_package(exported, chain)] == [("simple_cnn", True)]  # its own row
    packaged(alone, {**alone, "file": "model-2.onnx", "sha256": "other"})
    rows = with_package(exported, chain)
    assert [(b.name, b.ships) for b in rows] == [("simple_cnn", False), ("package: simple_cnn + simple_cnn (mean)", True)]
    assert rows[1].onnx_paths == [dataset / "model.onnx", dataset / "model-2.onnx"]
    packaged(alone, data="another")
    assert [b.ships for b in with_package(exported, chain)] == [False]  # packaged for other data: nothing known


def test_a_smaller_bench_after_a_larger_one_times_only_its_own_soundscapes(tmp_path):
    from bench.infer import write_soundscapes

    folder = tmp_path / "infer_soundscapes"
    first = write_soundscapes(folder, 3, seconds=5.0)
    mtime = first[0].stat().st_mtime_ns
    again = write_soundscapes(folder, 2, seconds=5.0)
    assert sorted(folder.glob("*.ogg")) == again == first[:2]  # the pipeline reads the whole folder
    assert again[0].stat().st_mtime_ns == mtime  # kept, not rewritten


def test_the_pipeline_levers_time_an_ensemble_in_each_way_the_notebook_can_use_the_cores(chain, tmp_path):
    from bench.infer import Benched, format_levers, pipeline_levers, write_soundscapes
    from data.paths import dist_dir

    # Two waves past the workers' first soundscapes: a pool hands results back in order, so with a
    # single interval a busy machine can see the last two land together (a pace of 0).
    scapes = write_soundscapes(tmp_path / "scapes", 6, seconds=30.0)
    model = dist_dir() / "dataset" / "model.onnx"
    rows = pipeline_levers(Benched("pair", [model, model]), scapes)
    pool = f"{os.cpu_count()} whole-soundscape workers"
    beside = f"{max(1, os.cpu_count() // 2)} feature worker(s) beside the model"
    assert [r["lever"] for r in rows] == [f"pipeline: {beside}, not serial", f"pipeline: {pool} (1 thread), not serial",
                                          f"pipeline: {pool}, not {beside}"]
    assert all(r["model"] == "pair" and r["seconds"] > 0 and r["baseline"] > 0 for r in rows)
    assert rows[2]["seconds"] == rows[1]["seconds"] and rows[2]["baseline"] == rows[0]["seconds"]
    assert f"{rows[0]['baseline'] / rows[0]['seconds']:7.2f}x" in format_levers(rows)


def test_the_pipelines_pace_leaves_out_the_workers_start_up_and_reports_it_apart():
    from bench.infer import steady_pace_s

    # two workers: 3 s to load their models, then 2 s per soundscape each (one per second together)
    done = [5.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    pace, startup = steady_pace_s(done, warm=2)
    assert pace == pytest.approx(1.0) and startup == pytest.approx(3.0)
    assert steady_pace_s([4.0], warm=2) == (4.0, 0.0)  # one soundscape: nothing to leave out


def test_bench_train_times_the_real_loop_across_epochs_against_the_ceiling(tiny_dataset, capsys):
    from bench.train import main
    from data.paths import output_root

    assert main(["--data", str(tiny_dataset), "--models", "simple_cnn", "--device", "cpu", "--steps", "12",
                 "--warmup", "1", "--num-workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "bench-train on CPU" in text and "ceiling samples/s" in text
    (row,) = json.loads((output_root() / "bench" / "out" / "train.json").read_text())["rows"]
    assert row["model"] == "simple_cnn" and row["workers"] == 1 and row["steps"] == 12
    assert row["real_samples_per_s"] > 0 and row["ceiling_samples_per_s"] > 0
    assert row["ratio"] == row["real_samples_per_s"] / row["ceiling_samples_per_s"]
    assert f"{row['ratio']:6.2f}" in text
    assert row["epoch_train_s"] > 0 and row["epoch_outside_s"] > 0  # validation at least, on the real split
    assert "epoch s: training" in text and f"{row['epoch_outside_s']:8.2f}" in text
    assert "train_loss 0.0000" not in text  # the bookkeeping's epochs trained nothing: no epoch lines
    assert not (output_root() / "bench" / "out" / "train_scratch").exists()  # its checkpoints are gone


NO_AUDIO_PYTHON = '''"""python without the audio libraries, as on the lent GPU machines: their imports fail."""
import os
import runpy
import sys

sys.path[0] = os.getcwd()  # as `python -m` has it
for name in ("librosa", "soundfile", "noisereduce", "kaggle"):
    sys.modules[name] = None  # `import name` now raises ImportError
flag, target, *rest = sys.argv[1:]
sys.argv = [target, *rest]
runpy.run_module(target, run_name="__main__", alter_sys=True) if flag == "-m" else exec(target)
'''


def test_the_gpu_check_trains_from_a_staged_cache_where_no_audio_library_exists(tiny_dataset, tmp_path, monkeypatch):
    from data.features import FeatureConfig
    from data.paths import output_root
    from data.preprocess import PreprocessConfig, ensure_cache

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))  # its runs stay out of the shared chain's folder
    ensure_cache(PreprocessConfig(data_dir=tiny_dataset, features=FeatureConfig(), progress=False))
    script = str(REPO / "bench" / "gpu_check.sh")
    staged = subprocess.run(["bash", script, "stage", str(tiny_dataset)], capture_output=True, text=True, check=True)
    assert "carry data/gpu/" in staged.stdout
    data = output_root() / "data" / "gpu" / tiny_dataset.name
    assert {p.name for p in data.iterdir()} == {p.name for p in tiny_dataset.glob("*.csv")} | {"train_audio"}
    assert not any((data / "train_audio").iterdir())  # the CSVs travel, the audio does not

    out, _, stdout = run_gpu_check_with(NO_AUDIO_PYTHON, tiny_dataset, tmp_path,
                                        CV_RUNS="simple_cnn:auto simple_cnn:auto:--ema-decay=0.9,--random-crop")
    # what the device tool brings back: at most 8 plain files of 16 MiB, flat, with plain names
    returned = sorted(out.iterdir())
    assert {p.name for p in returned} == {"steps.txt", "gpu.txt", "bench_train.json", "bench_train_no_workers.json",
                                          "report.txt", "gpu_check.tar.gz", "gpu_check_media.tar.gz"}, stdout[-3000:]
    assert all(p.is_file() and p.stat().st_size < 16 * 2**20 and re.fullmatch(r"[A-Za-z0-9._-]+", p.name)
               for p in returned)
    assert "simple_cnn" in (out / "report.txt").read_text()

    unpacked = subprocess.run(["bash", script, "unpack", str(out)], capture_output=True, text=True, check=True)
    assert "== report: exit 0 after" in unpacked.stdout
    work = output_root() / "bench" / "out" / "gpu_check"
    steps = (work / "steps.txt").read_text()
    for name in ("bench_train", "bench_train_no_workers", "train", "cv_simple_cnn_auto",
                 "cv_simple_cnn_auto_ema-decay_0.9_random-crop", "report"):
        assert f"== {name}: exit 0 after" in steps, stdout[-3000:]
        assert (work / f"{name}.log").exists()
    assert "PyTorch version" in (work / "gpu.txt").read_text()
    assert json.loads((work / "bench_train_no_workers.json").read_text())["rows"][0]["workers"] == 0
    configs = [json.loads(c.read_text()) for c in sorted(work.rglob("config.json"))]
    assert len(configs) == 11  # one single-split run and twice five folds, copied without their checkpoints
    assert all(c["device"] == "cpu" for c in configs)
    levered = [c for c in configs if c["ema_decay"] == 0.9]  # the second cross-validation's flags reached it
    assert len(levered) == 5 and all(c["random_crop"] and c["folds"] == 5 for c in levered)
    assert len(list(work.rglob("*.png"))) >= 11 and not list(work.rglob("*.pt"))
    assert len(list(work.rglob("val_last.npz"))) == 11  # the logits, to score other activations afterwards


# As NO_AUDIO_PYTHON, but DataLoader workers die (a small /dev/shm, say) in bench-train's default run
WORKERS_FAIL_PYTHON = NO_AUDIO_PYTHON.replace('flag, target, *rest = sys.argv[1:]\n', '''flag, target, *rest = sys.argv[1:]
if target == "bench.train" and "--num-workers" not in rest:
    sys.exit("RuntimeError: DataLoader worker (pid 4242) is killed by signal: Bus error.")
''')


# As NO_AUDIO_PYTHON, but bench-train's default run outlasts its cap (BENCH_S) with healthy workers
SLOW_BENCH_PYTHON = WORKERS_FAIL_PYTHON.replace('    sys.exit("RuntimeError: DataLoader worker (pid 4242) is killed '
                                                'by signal: Bus error.")', '    import time; time.sleep(60)')


def run_gpu_check_with(python_source: str, tiny_dataset, tmp_path, **env_vars) -> tuple[Path, list[str], str]:
    """bench/gpu_check.sh run on the staged tiny cache with this stand-in python: (OUT, the steps in
    the order they ended, the script's stdout)."""
    from data.features import FeatureConfig
    from data.paths import output_root
    from data.preprocess import PreprocessConfig, ensure_cache

    ensure_cache(PreprocessConfig(data_dir=tiny_dataset, features=FeatureConfig(), progress=False))
    script = str(REPO / "bench" / "gpu_check.sh")
    subprocess.run(["bash", script, "stage", str(tiny_dataset)], capture_output=True, text=True, check=True)
    data = output_root() / "data" / "gpu" / tiny_dataset.name
    (tmp_path / "python.py").write_text(python_source)
    env = {**os.environ, "PYTHON": f"{sys.executable} {tmp_path / 'python.py'}", "DEVICE": "cpu", "STEPS": "2",
           "WARMUP": "1", "MODELS": "simple_cnn", "CV_RUNS": "", "TRAIN_ARGS": "--epochs 1", **env_vars}
    out = tmp_path / "out"
    run = subprocess.run(["bash", script, "run", str(data), str(out), "600"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:]
    steps = (out / "steps.txt").read_text()
    return out, [line.split(":")[0].split(" (")[0] for line in steps.splitlines() if " exit " in line], run.stdout


def test_where_the_workers_fail_the_gpu_check_benches_and_trains_without_them_and_ships_no_stale_table(
        tiny_dataset, tmp_path, monkeypatch):
    from data.paths import output_root

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    stale = output_root() / "bench" / "out" / "train.json"  # an earlier check's table, on a warm machine
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"rows": [{"model": "stale", "workers": 4}]}))
    assert WORKERS_FAIL_PYTHON != NO_AUDIO_PYTHON
    out, order, stdout = run_gpu_check_with(WORKERS_FAIL_PYTHON, tiny_dataset, tmp_path)
    steps = (out / "steps.txt").read_text()
    assert order == ["== bench_train", "== bench_train_no_workers", "== train", "== report"], stdout[-3000:]
    assert "== bench_train: exit 1 after" in steps and "== bench_train_no_workers: exit 0 after" in steps
    assert "training goes without them (--num-workers 0)" in steps
    assert not (out / "bench_train.json").exists()  # the failed step ships no table, not the stale one
    assert json.loads((out / "bench_train_no_workers.json").read_text())["rows"][0]["workers"] == 0
    (config,) = [json.loads(c.read_text()) for c in (output_root() / "train" / "runs").rglob("config.json")]
    assert config["num_workers"] == 0
    assert "simple_cnn" in (out / "report.txt").read_text()


def test_a_bench_step_that_only_runs_out_of_time_keeps_the_workers_for_training(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    assert SLOW_BENCH_PYTHON != WORKERS_FAIL_PYTHON
    out, order, stdout = run_gpu_check_with(SLOW_BENCH_PYTHON, tiny_dataset, tmp_path, BENCH_S="20")
    assert order == ["== bench_train", "== train", "== bench_train_no_workers", "== report"], stdout[-3000:]
    steps = (out / "steps.txt").read_text()
    assert "== bench_train: exit 124 after" in steps and "training goes without them" not in steps
    from data.paths import output_root

    (config,) = [json.loads(c.read_text()) for c in (output_root() / "train" / "runs").rglob("config.json")]
    assert config["num_workers"] == -1  # the default: 4 workers on CUDA


def test_the_preprocess_bench_totals_every_stage_of_a_pass_decode_included():
    from bench.preprocess import PROJECTION_CORES, summarise

    raw = {"mode": "none", "passes": [[60.0, 1.0, 0.0, 2.0], [60.0, 1.0, 0.0, 3.0], [60.0, 2.0, 0.0, 2.0]],
           "soundscape": [[240.0, 4.0, 0.0, 8.0]], "rss_peak_mib": 300.0, "rss_baseline_mib": 200.0,
           "peak_excludes_imports": True}
    s = summarise(raw, train_hours=16.0)
    assert s["seconds"] == {"decode": 1.0, "denoise": 0.0, "mel": 2.0, "total": 4.0}  # the median pass: 1 + 0 + 3
    assert s["x_real_time_per_core"] == pytest.approx(15.0)
    assert s["x_real_time_per_repeat"] == pytest.approx([20.0, 15.0, 15.0])
    assert s["train_set_projection_h"] == pytest.approx(16.0 / (15.0 * PROJECTION_CORES))
    assert s["soundscape"]["seconds"]["total"] == 12.0 and s["rss_working_mib"] == 100.0
