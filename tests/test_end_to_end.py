"""The real chain on a tiny generated dataset:
generate -> preprocess -> train -> export -> package -> execute the notebook -> score."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from data.layout import read_metadata
from data.paths import dist_dir
from data.preprocess import FeatureCache
from export.to_onnx import PARITY_ATOL
from train.metrics import kaggle_score


def test_each_run_folder_records_config_metrics_curves_and_best_checkpoint(chain):
    runs = sorted(p for p in chain.runs_dir.iterdir() if p.is_dir())
    assert {r.name.split("-")[0] for r in runs} == {"simple_cnn", "resnet18"}
    for run in runs:
        assert {"config.json", "metrics.csv", "curves.png", "best.pt", "confusion.png", "summary.json",
                "split.json"} <= {p.name for p in run.iterdir()}
        metrics = pd.read_csv(run / "metrics.csv")
        assert metrics.columns.tolist()[:5] == ["epoch", "train_loss", "val_loss", "val_accuracy", "val_roc_auc"]
        assert metrics.epoch.tolist() == [1, 2]
        assert json.loads((run / "config.json").read_text())["model"] == run.name.split("-")[0]


def test_the_last_epochs_logits_are_kept_and_reproduce_its_recorded_metrics(chain):
    import torch

    from train.loop import probabilities
    from train.metrics import accuracy, macro_roc_auc

    for run in (p for p in chain.runs_dir.iterdir() if p.is_dir()):
        last = np.load(run / "val_last.npz")
        row = pd.read_csv(run / "metrics.csv").iloc[-1]
        assert int(last["epoch"]) == row.epoch
        probs = probabilities("sigmoid", torch.from_numpy(last["logits"])).numpy()  # the chain trains with bce
        y = np.eye(probs.shape[1], dtype=np.int8)[last["label_idx"]]
        assert accuracy(last["label_idx"], probs) == pytest.approx(row.val_accuracy, abs=1e-6)
        assert macro_roc_auc(y, probs) == pytest.approx(row.val_roc_auc, abs=1e-6)


def test_validation_recordings_never_appear_in_training(chain):
    for split in chain.runs_dir.glob("*/split.json"):
        s = json.loads(split.read_text())
        assert s["val"] and s["train"] and not set(s["val"]) & set(s["train"])


def test_export_picks_the_run_with_the_best_recorded_val_roc_auc(chain):
    summaries = [json.loads(p.read_text()) for p in chain.runs_dir.glob("*/summary.json")]
    best = max(summaries, key=lambda s: (s["val_roc_auc"], s["val_accuracy"]))
    report = json.loads((chain.export_dir / "export.json").read_text())
    assert Path(report["run_dir"]).name == best["run"]
    assert report["max_abs_diff_vs_torch"] <= PARITY_ATOL


def test_the_onnx_file_carries_classes_features_model_and_metrics(chain, tiny_dataset):
    model = onnx.load(str(chain.export_dir / "model.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["classes"]) == sorted(read_metadata(tiny_dataset).primary_label.unique())
    assert json.loads(meta["features"])["sample_rate_hz"] == 32000
    assert meta["model_name"] in {"simple_cnn", "resnet18"}
    assert 0 <= float(meta["val_roc_auc"]) <= 1
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # a dynamic batch axis


def test_the_package_holds_notebook_metadata_model_and_the_training_feature_code(chain):
    dist = dist_dir()
    kernel = json.loads((dist / "notebook" / "kernel-metadata.json").read_text())
    assert kernel["competition_sources"] == ["birdclef-2024"]
    assert kernel["enable_gpu"] == "false" and kernel["enable_internet"] == "false"
    assert (dist / "notebook" / kernel["code_file"]).exists()
    assert kernel["dataset_sources"] == [json.loads((dist / "dataset" / "dataset-metadata.json").read_text())["id"]]
    repo = Path(__file__).resolve().parents[1]
    packaged = dist / "dataset" / "code" / "data" / "features.py"
    assert packaged.read_bytes() == (repo / "data" / "features.py").read_bytes()


def test_the_notebook_writes_sample_submissions_columns_and_48_rows_per_soundscape(chain, tiny_dataset):
    sub = pd.read_csv(chain.score_dir / "working" / "submission.csv")
    sample = pd.read_csv(tiny_dataset / "sample_submission.csv")
    assert sub.columns.tolist() == sample.columns.tolist()
    stems = sorted(p.stem for p in (tiny_dataset / "test_soundscapes").glob("*.ogg"))
    assert sub.row_id.tolist() == [f"{s}_{end}" for s in stems for end in range(5, 241, 5)]
    probs = sub.drop(columns="row_id").to_numpy()
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()


def test_the_printed_score_is_kaggles_metric_on_the_notebooks_output(chain, tiny_dataset):
    result = json.loads((chain.score_dir / "score.json").read_text())
    sub = pd.read_csv(chain.score_dir / "working" / "submission.csv")
    solution = pd.read_csv(chain.solution_beside)
    assert result["score"] == pytest.approx(kaggle_score(solution, sub))
    assert result["soundscapes"] == 1 and result["rows"] == 48
    assert result["seconds_per_soundscape"] > 0


def test_the_notebooks_features_equal_the_training_features(chain, tiny_dataset, tmp_path):
    """Features computed the notebook's way, in a fresh interpreter that sees only the packaged
    dataset: its config read from the shipped model's ONNX metadata by the notebook's own loader,
    each file decoded and featurised by the notebook's own soundscape_features. They must equal
    the rows training read from the cache."""
    dataset = dist_dir() / "dataset"
    code_dir = dataset / "code"
    meta = read_metadata(tiny_dataset)
    files = [str(tiny_dataset / "train_audio" / f) for f in meta.filename[:3]]
    script = (
        "import sys, json, numpy as np\n"
        "from pathlib import Path\n"
        f"sys.path.insert(0, {str(code_dir)!r})\n"
        "import data.features, submission.infer as I\n"
        f"assert I.__file__.startswith({str(code_dir)!r}) and data.features.__file__.startswith({str(code_dir)!r})\n"
        f"manifest = json.load(open({str(dataset / 'birdkit.json')!r}))\n"
        f"cfg = I.KitModel.load(Path({str(dataset)!r}) / manifest['model_file'], measure=False).features\n"
        f"out = [I.soundscape_features(Path(p), cfg) for p in {files!r}]\n"
        "assert all(o.feats is not None and not o.problem for o in out), [o.problem for o in out]\n"
        f"np.savez({str(tmp_path / 'nb.npz')!r}, *[o.feats for o in out])\n"
    )
    subprocess.run([sys.executable, "-I", "-c", script], check=True, cwd=tmp_path)
    notebook = np.load(tmp_path / "nb.npz")
    cache = FeatureCache.open(next(chain.cache_root.iterdir()))
    for i, f in enumerate(meta.filename[:3]):
        training = np.asarray(cache.windows[list(cache.rows_of(f))], np.float32)
        assert len(training) >= 1
        assert notebook[f"arr_{i}"].shape == training.shape
        assert np.abs(notebook[f"arr_{i}"] - training).max() <= 1e-5
