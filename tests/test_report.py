"""`make report`: every finished run in one table, with onnxruntime's CPU time per window."""
import json
import math
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from train import report
from train.report import ONNX_CPU_FILE, format_table, main


@pytest.fixture(scope="module")
def runs(chain, tmp_path_factory):
    """A copy of the chain's runs under a private BIRDKIT_ROOT (the report writes into run folders)."""
    root = tmp_path_factory.mktemp("report-root")
    copy = root / chain.runs_dir.relative_to(chain.root)
    shutil.copytree(chain.runs_dir, copy)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIRDKIT_ROOT", str(root))
        yield copy


def run_report(chain, capsys, *flags: str) -> str:
    assert main(["--data", str(chain.data_dir), *flags]) == 0
    return capsys.readouterr().out


def table_rows(out: str) -> dict[str, list[str]]:
    """run name -> its table cells."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("run ")) + 2
    rows = [line.split() for line in lines[start:] if line and not line.startswith("ONNX CPU")]
    return {cells[0]: cells for cells in rows}


def run_dirs(runs):
    return sorted(d for d in runs.iterdir() if (d / "best.pt").exists())


@pytest.fixture(scope="module")
def measured(chain, runs):
    """The first report on the copied runs: it measures every run."""
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["--data", str(chain.data_dir)]) == 0
    return buf.getvalue()


def test_the_report_lists_both_runs_with_a_positive_onnx_cpu_time_per_window(runs, measured):
    rows = table_rows(measured)
    assert sorted(cells[1] for cells in rows.values()) == ["resnet18", "simple_cnn"]
    for d in run_dirs(runs):
        shown = float(rows[d.name][-1])
        record = json.loads((d / ONNX_CPU_FILE).read_text())
        assert math.isfinite(record["ms_per_window"]) and record["ms_per_window"] > 0
        assert shown == pytest.approx(record["ms_per_window"], abs=0.005)
        assert record["threads"] == report.cpu_threads() and record["onnxruntime"] == ort.__version__
        assert record["batch"] == 16 and record["repeats"] == 5
        assert record["graph_optimization"] == "ORT_ENABLE_ALL"
    assert measured.count("measuring ONNX CPU time") == 2


def test_a_second_report_reuses_onnx_cpu_json_without_exporting_again(chain, runs, measured, capsys, monkeypatch):
    before = {d: (d / ONNX_CPU_FILE).stat().st_mtime_ns for d in run_dirs(runs)}

    def no_export(*args, **kwargs):
        raise AssertionError("the report exported a run whose timing was cached")

    monkeypatch.setattr("export.to_onnx.export_graph", no_export)
    out = run_report(chain, capsys)
    assert "measuring" not in out
    assert {d: (d / ONNX_CPU_FILE).stat().st_mtime_ns for d in before} == before
    rows = table_rows(out)
    for d in before:
        assert float(rows[d.name][-1]) == pytest.approx(json.loads((d / ONNX_CPU_FILE).read_text())["ms_per_window"],
                                                        abs=0.005)


def test_remeasure_times_every_run_again(chain, runs, measured, capsys):
    before = {d: (d / ONNX_CPU_FILE).stat().st_mtime_ns for d in run_dirs(runs)}
    out = run_report(chain, capsys, "--remeasure")
    assert out.count("measuring ONNX CPU time") == 2
    assert all((d / ONNX_CPU_FILE).stat().st_mtime_ns > t for d, t in before.items())
    assert all(float(cells[-1]) > 0 for cells in table_rows(out).values())


def test_a_timing_from_another_machine_is_measured_again(chain, runs, measured, capsys):
    d = run_dirs(runs)[0]
    record = json.loads((d / ONNX_CPU_FILE).read_text())
    (d / ONNX_CPU_FILE).write_text(json.dumps({**record, "threads": record["threads"] + 1}))
    out = run_report(chain, capsys)
    assert out.count("measuring ONNX CPU time") == 1 and d.name in out.splitlines()[0]
    assert json.loads((d / ONNX_CPU_FILE).read_text())["threads"] == report.cpu_threads()


def test_no_onnx_shows_a_dash_and_measures_nothing(chain, runs, measured, capsys, monkeypatch):
    monkeypatch.setattr(report, "measure_onnx_cpu", lambda run_dir: pytest.fail("--no-onnx measured"))
    out = run_report(chain, capsys, "--no-onnx")
    rows = table_rows(out)
    assert len(rows) == 2 and all(cells[-1] == "-" for cells in rows.values())
    assert "ONNX CPU ms/window:" not in out  # no timing note without timings


def test_format_table_shows_a_dash_for_summaries_without_a_timing(runs):
    summaries = report.finished_runs(runs)
    text = format_table(summaries[:1] + [{**summaries[1], "onnx_cpu_ms_per_window": 1.234}])
    rows = table_rows(text)
    assert rows[summaries[0]["run"]][-1] == "-" and rows[summaries[1]["run"]][-1] == "1.23"
    assert "ONNX CPU ms/window" in text.splitlines()[0]


def test_the_confusion_plot_names_every_one_of_birdclef_2024s_182_classes_and_thins_out_only_beyond():
    from train.plots import tick_labels

    assert tick_labels(24, 9.0) == (1, 7.0)  # few classes: every name at 7 pt
    step, fontsize = tick_labels(182, 27.0)  # 2024's classes on the plot's largest figure
    assert step == 1 and 4.0 <= fontsize < 7.0
    assert tick_labels(1000, 27.0) == (4, 4.0)  # too many to name them all legibly: every 4th at 4 pt


def test_the_report_lists_the_runs_best_val_roc_auc_first():
    def run(name, auc):
        return {"run": name, "model": "simple_cnn", "epochs": 2, "val_accuracy": 0.5, "val_roc_auc": auc,
                "train_samples_per_s": 100.0}

    text = format_table([run("middling", 0.8), run("best", 0.9), run("worst", 0.6)])
    assert [line.split()[0] for line in text.splitlines()[2:]] == ["best", "middling", "worst"]


def test_the_loss_curves_plot_the_validation_loss_as_val_loss_and_the_training_loss_as_train_loss(monkeypatch, tmp_path):
    import pandas as pd

    from train import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    metrics = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.9, 0.7, 0.5], "val_loss": [1.2, 1.1, 1.3],
                            "val_accuracy": [0.2, 0.4, 0.5], "val_roc_auc": [0.6, 0.7, 0.8]})
    plots.plot_curves(metrics, tmp_path / "curves.png", "simple_cnn on birds")
    ax_loss, ax_metric = figures[0].axes
    drawn = {line.get_label(): list(line.get_ydata()) for ax in (ax_loss, ax_metric) for line in ax.get_lines()}
    assert drawn == {"train loss": [0.9, 0.7, 0.5], "val loss": [1.2, 1.1, 1.3], "val accuracy": [0.2, 0.4, 0.5],
                     "val macro ROC-AUC": [0.6, 0.7, 0.8]}


def test_the_top_confusions_are_the_most_frequent_mistakes_first():
    from train.plots import confusion, top_confusions

    true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([1, 1, 0, 0, 1, 0, 0, 0, 1])
    m = confusion(true, pred, 3)
    assert top_confusions(m, ["a", "b", "c"], k=2) == [("c", "a", 3), ("a", "b", 2)]


def test_a_report_with_no_runs_tells_a_mistyped_data_folder_from_one_not_trained_yet(tmp_path, monkeypatch, capsys):
    from train.report import main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "out"))
    (tmp_path / "birds").mkdir()
    assert main(["--data", str(tmp_path / "birds")]) == 1
    assert capsys.readouterr().err == (f"no finished runs for {tmp_path / 'birds'} yet: run "
                                       f"`make train DATA={tmp_path / 'birds'}`\n")
    assert main(["--data", str(tmp_path / "brids")]) == 1
    assert capsys.readouterr().err == (f"no finished runs for {tmp_path / 'brids'}, and {tmp_path / 'brids'} does not "
                                       "exist: check DATA=\n")
