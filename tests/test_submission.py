"""The notebook's output format, post-processing, and the export's refusal to ship a mismatch."""
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import psutil
import pytest
import torch

from data.paths import REPO, dist_dir
from export.to_onnx import PARITY_ATOL, ExportError, choose_best_run, export_run, load_run, ort_max_abs_diff
from submission.infer import Ensemble, KitModel, PostProcess, submission_rows, write_submission


@pytest.fixture(scope="module")
def kit_model(chain) -> Ensemble:
    return Ensemble([KitModel.load(dist_dir() / "dataset" / "model.onnx", threads=1)])


def test_row_ids_end_at_5_to_240_seconds_and_columns_follow_sample_submission(kit_model):
    probs = np.tile(np.arange(len(kit_model.classes), dtype=np.float32), (48, 1))  # column j holds j
    columns = list(reversed(kit_model.classes)) + ["notamodelclass"]
    rows = submission_rows("soundscape_123", probs, kit_model.classes, columns, kit_model.features)
    assert rows.columns.tolist() == ["row_id", *columns]
    assert rows.row_id.tolist() == [f"soundscape_123_{end}" for end in range(5, 241, 5)]
    for c in kit_model.classes:  # each value lands under its own class's name
        assert (rows[c] == kit_model.classes.index(c)).all()
    assert (rows["notamodelclass"] == 0).all()


@pytest.mark.parametrize("test_dir", ["empty", "missing"])
def test_an_empty_or_missing_test_folder_still_gives_a_valid_submission(kit_model, tiny_dataset, tmp_path, test_dir):
    folder = tmp_path / "test_soundscapes"
    if test_dir == "empty":
        folder.mkdir()
    out = tmp_path / "submission.csv"
    timing = write_submission(kit_model, folder, tiny_dataset / "sample_submission.csv", out)
    sub = pd.read_csv(out)
    assert sub.columns.tolist() == pd.read_csv(tiny_dataset / "sample_submission.csv").columns.tolist()
    assert len(sub) == 0 and timing.soundscapes == 0


def test_smoothing_averages_neighbouring_windows_and_blending_pulls_towards_the_mean():
    probs = np.array([[0.0], [1.0], [0.0], [0.0]], np.float32)
    smoothed = PostProcess(smooth_kernel=(0.25, 0.5, 0.25))(probs)
    assert smoothed[:, 0].tolist() == pytest.approx([0.25, 0.5, 0.25, 0.0])
    ends = PostProcess(smooth_kernel=(0.25, 0.5, 0.25))(np.array([[1.0], [0.0], [0.0], [1.0]], np.float32))
    assert ends[:, 0].tolist() == pytest.approx([0.75, 0.25, 0.25, 0.75])  # edges repeat the end window, not 0
    blended = PostProcess(mean_blend=0.5)(probs)
    assert blended[:, 0].tolist() == pytest.approx([0.125, 0.625, 0.125, 0.125])
    assert np.array_equal(PostProcess()(probs), probs)


def test_export_refuses_when_onnxruntime_and_torch_disagree(chain, tmp_path):
    run_dir = choose_best_run(chain.runs_dir)
    with pytest.raises(ExportError, match=r"onnxruntime differs from torch by .* refusing to export"):
        export_run(run_dir, tmp_path / "out", atol=0.0)
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_make_export_refuses_by_default_a_model_onnxruntime_runs_5e4_away_from_torch(chain, tmp_path, monkeypatch,
                                                                                       capsys):
    import shutil

    import export.to_onnx as to_onnx
    from data.paths import Workspace
    from export.__main__ import main as export_main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))  # a copy of the chain's runs: its export stays
    ws = Workspace.of(chain.data_dir)
    shutil.copytree(chain.runs_dir, ws.runs_dir)
    shutil.copytree(chain.cache_root, ws.cache_root)  # the parity check runs on the run's cached windows
    monkeypatch.setattr(to_onnx, "ort_max_abs_diff", lambda *args, **kwargs: 5e-4)
    assert export_main(["--data", str(ws.data_dir), "--top", "1"]) == 1
    assert "onnxruntime differs from torch by 5.00e-04 (> 1e-04)" in capsys.readouterr().err
    assert not (ws.export_dir / "model.onnx").exists()


def test_make_export_of_a_named_run_exports_that_run_alone_and_drops_the_earlier_candidates(chain, tmp_path,
                                                                                            monkeypatch, capsys):
    import shutil

    import onnx

    from data.paths import Workspace
    from export.__main__ import main as export_main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))  # a copy of the chain's runs: its export stays
    ws = Workspace.of(chain.data_dir)
    shutil.copytree(chain.runs_dir, ws.runs_dir)
    shutil.copytree(chain.cache_root, ws.cache_root)
    assert export_main(["--data", str(ws.data_dir), "--top", "2"]) == 0
    assert (ws.export_dir / "model-2.onnx").exists()
    resnet, = ws.runs_dir.glob("resnet18-*")
    before = sorted(p.name for p in ws.export_dir.iterdir())
    for wrong in (resnet.parent / "resnet18-typo", ws.runs_dir):  # a mistyped name; the runs folder itself
        capsys.readouterr()
        assert export_main(["--data", str(ws.data_dir), "--run", str(wrong)]) == 1
        err = capsys.readouterr().err
        assert f"{wrong} " in err and "not a trained run" in err and "leave out --run" in err
        assert sorted(p.name for p in ws.export_dir.iterdir()) == before  # the earlier export is untouched
    assert export_main(["--data", str(ws.data_dir), "--run", str(resnet)]) == 0
    assert sorted(p.name for p in ws.export_dir.glob("*.onnx")) == ["model.onnx"]  # no stale ensemble member
    props = {p.key: p.value for p in onnx.load(ws.export_dir / "model.onnx").metadata_props}
    assert (props["model_name"], props["run"]) == ("resnet18", resnet.name)
    assert json.loads((ws.export_dir / "export.json").read_text())["ensemble"] == []


def test_export_of_runs_whose_feature_cache_was_deleted_says_how_to_rebuild_it(chain, tmp_path, monkeypatch, capsys):
    import shutil

    from data.features import FeatureConfig
    from data.paths import Workspace
    from data.preprocess import cache_dir_for
    from export.__main__ import main as export_main

    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    ws = Workspace.of(chain.data_dir)
    shutil.copytree(chain.runs_dir, ws.runs_dir)  # the runs without the cache they validated on
    assert export_main(["--data", str(ws.data_dir), "--top", "1"]) == 1
    best = json.loads((choose_best_run(ws.runs_dir) / "config.json").read_text())
    assert capsys.readouterr().err == (
        f"error: the feature cache {choose_best_run(ws.runs_dir).name} trained on is not here "
        f"({cache_dir_for(chain.data_dir, FeatureConfig())}); the parity check runs on its validation windows: "
        f"rebuild it with `make preprocess DATA={best['data_dir']}`, then rerun\n")
    assert not (ws.export_dir / "model.onnx").exists()


def test_the_parity_check_sees_a_model_that_is_not_the_exported_one(chain):
    run = load_run(choose_best_run(chain.runs_dir))
    windows = np.random.default_rng(0).random((4, 128, 313), dtype=np.float32)
    assert ort_max_abs_diff(chain.export_dir / "model.onnx", run.net, windows) <= PARITY_ATOL
    with torch.no_grad():
        for p in run.net.parameters():
            p.add_(0.05)
    assert ort_max_abs_diff(chain.export_dir / "model.onnx", run.net, windows) > 1e-3


def test_the_manifest_records_model_code_checksums_and_post_processing(chain):
    manifest = json.loads((dist_dir() / "dataset" / "birdkit.json").read_text())
    assert manifest["competition"] == "birdclef-2024"
    assert set(manifest["code"]) == {"data/__init__.py", "data/features.py", "submission/__init__.py",
                                     "submission/infer.py", "submission/kaggle_setup.py"}
    for rel, digest in manifest["code"].items():  # the packaged copy is the kit's own file, byte for byte
        packaged = (dist_dir() / "dataset" / "code" / rel).read_bytes()
        assert digest == hashlib.sha256(packaged).hexdigest() == hashlib.sha256((REPO / rel).read_bytes()).hexdigest()
    assert manifest["postprocess"] == {"smooth_kernel": [1.0], "mean_blend": 0.0}


def test_score_reports_what_each_post_processing_variant_gives(chain):
    result = json.loads((chain.score_dir / "score.json").read_text())
    variants = result["postprocess_variants"]
    assert set(variants) == {"none", "smooth 0.25/0.5/0.25", "blend 0.3 with mean", "both"}
    assert variants["none"] == pytest.approx(result["score"])  # the package ships no post-processing


def test_post_processing_variants_smooth_and_blend_each_soundscape_on_its_own():
    from submission.score import POSTPROCESS_VARIANTS, postprocess_variants
    from train.metrics import kaggle_score

    rng = np.random.default_rng(0)
    row_id = [f"{stem}_{end}" for stem in ("a", "b", "c") for end in (5, 10, 15, 20)]
    raw = pd.DataFrame(rng.random((12, 3)), columns=["x", "y", "z"]).assign(row_id=row_id)[["row_id", "x", "y", "z"]]
    solution = raw.assign(x=[1, 0, 0, 1] * 3, y=[0, 1, 1, 0] * 3, z=[0, 0, 1, 1] * 3)
    scores = postprocess_variants(solution, raw)
    for name, post in POSTPROCESS_VARIANTS.items():
        by_hand = raw.copy()
        for k in range(3):  # one soundscape's four rows at a time: nothing leaks between soundscapes
            by_hand.iloc[4 * k:4 * k + 4, 1:] = post(raw.iloc[4 * k:4 * k + 4, 1:].to_numpy(np.float32))
        assert scores[name] == pytest.approx(kaggle_score(solution, by_hand))
    assert scores["smooth 0.25/0.5/0.25"] != pytest.approx(scores["none"])  # the variants differ


@pytest.fixture(scope="module")
def two_exports(chain, tmp_path_factory):
    """The chain's two runs exported best first, as `make export EXPORT_ARGS=--top 2` does."""
    from export.to_onnx import export_best

    out = tmp_path_factory.mktemp("top2")
    report = export_best(chain.runs_dir, out, top=2)
    assert len(report["ensemble"]) == 1
    return [out / "model.onnx", out / "model-2.onnx"]


def test_an_ensemble_is_packaged_when_its_projected_time_fits_the_budget(two_exports, tmp_path, capsys):
    from submission.package import PackageConfig, package

    package(PackageConfig(two_exports, tmp_path / "dist", budget_min=1e6, bundle_wheels=False))
    manifest = json.loads((tmp_path / "dist" / "dataset" / "birdkit.json").read_text())
    assert manifest["model_files"] == ["model.onnx", "model-2.onnx"]
    assert (tmp_path / "dist" / "dataset" / "model-2.onnx").exists()
    assert "ensemble projected" in capsys.readouterr().out


def test_ensemble_members_over_the_budget_are_left_out_but_the_best_model_stays(two_exports, tmp_path, capsys):
    from submission.package import PackageConfig, package

    package(PackageConfig(two_exports, tmp_path / "dist", budget_min=0.0, bundle_wheels=False))
    manifest = json.loads((tmp_path / "dist" / "dataset" / "birdkit.json").read_text())
    assert manifest["model_files"] == ["model.onnx"]
    assert "over budget, left out" in capsys.readouterr().out


def test_score_reports_each_ensemble_member_alone_and_combined_from_one_notebook_run(chain, two_exports, tmp_path):
    from data.paths import Workspace
    from submission.package import PackageConfig, package
    from submission.score import score

    ws = Workspace(chain.data_dir, root=tmp_path / "out")
    results = {}
    for name, models in [("pair", two_exports), ("best", two_exports[:1])]:
        package(PackageConfig(models, tmp_path / name, budget_min=1e6, bundle_wheels=False))
        results[name] = score(ws, "birdclef-2024", tmp_path / name)
    names = [m["model_name"] for m in json.loads((tmp_path / "pair" / "dataset" / "birdkit.json").read_text())["models"]]
    variants = results["pair"]["ensemble_variants"]
    assert list(variants) == [f"1. {names[0]} alone", f"2. {names[1]} alone", "mean of 1-2", "min of 1-2"]
    assert variants["mean of 1-2"] == pytest.approx(results["pair"]["score"], abs=1e-4)  # what was packaged: the mean
    assert variants[f"1. {names[0]} alone"] == pytest.approx(results["best"]["score"], abs=1e-4)
    assert results["best"]["ensemble_variants"] == {}
    kernels = [p for p in psutil.Process().children(recursive=True) if "ipykernel" in " ".join(p.cmdline())]
    assert kernels == []  # each notebook's kernel was shut down with its run, not left to notice its parent gone


def test_the_local_score_of_each_best_first_ensemble_is_kaggles_metric_of_its_combined_output():
    from submission.ensemble import prefix_scores

    solution = pd.DataFrame({"row_id": ["s_5", "s_10", "s_15", "s_20"], "a": [1, 0, 1, 0], "b": [0, 1, 1, 0]})
    knows_a = pd.DataFrame({"row_id": solution.row_id, "a": [0.9, 0.1, 0.8, 0.2], "b": [0.4, 0.3, 0.2, 0.1]})
    knows_b = pd.DataFrame({"row_id": solution.row_id, "a": [0.05, 0.6, 0.5, 0.5], "b": [0.1, 0.9, 0.8, 0.2]})
    # knows_a alone: a 1.0; b's positives (0.3, 0.2) each beat one negative (0.1) of two (0.4, 0.1): 0.5
    # mean: a 0.475, 0.35, 0.65, 0.35 -> 1.0; b 0.25, 0.6, 0.5, 0.15 -> 1.0
    assert prefix_scores(solution, [knows_a, knows_b], "mean") == pytest.approx([0.75, 1.0])
    # min: a 0.05, 0.1, 0.5, 0.2 -> positive 0.05 beats no negative, 0.5 beats both: 0.5; b 0.1, 0.3, 0.2, 0.1 -> 1.0
    assert prefix_scores(solution, [knows_a, knows_b], "min") == pytest.approx([0.75, 0.75])


@pytest.mark.parametrize("scores, keep", [([0.72, 0.77, 0.78], 3), ([0.72, 0.721, 0.78], 3), ([0.72, 0.77, 0.771], 2),
                                          ([0.75, 0.74, 0.70], 1), ([0.70, 0.70], 1)])
def test_a_model_joins_the_ensemble_only_where_it_adds_to_the_best_shorter_score(scores, keep):
    from submission.ensemble import shortest_best

    assert shortest_best(scores, min_gain=0.002) == keep


def test_packaging_ships_the_best_first_ensemble_the_local_score_chose(chain, two_exports, tmp_path, capsys):
    from submission.ensemble import judge, shortest_best
    from submission.package import PackageConfig, package

    package(PackageConfig(two_exports, tmp_path / "dist", data_dir=chain.data_dir, judge_ensemble=True,
                          budget_min=1e6, bundle_wheels=False))
    printed = capsys.readouterr().out
    manifest = json.loads((tmp_path / "dist" / "dataset" / "birdkit.json").read_text())
    verdict = judge(two_exports, "mean", chain.data_dir / "test_soundscapes", chain.data_dir.parent / "tiny_solution.csv",
                    chain.data_dir / "sample_submission.csv")
    assert len(verdict.scores) == 2 and len(manifest["model_files"]) == shortest_best(verdict.scores)
    assert f"{verdict.scores[0]:.4f}" in printed and f"{verdict.scores[1]:.4f}" in printed


def test_packaging_with_nothing_to_judge_an_ensemble_by_ships_the_best_model_alone(two_exports, tmp_path, capsys):
    from submission.package import PackageConfig, package

    package(PackageConfig(two_exports, tmp_path / "dist", judge_ensemble=True, budget_min=1e6, bundle_wheels=False))
    manifest = json.loads((tmp_path / "dist" / "dataset" / "birdkit.json").read_text())
    assert manifest["model_files"] == ["model.onnx"]
    assert "alone: an ensemble needs --data" in capsys.readouterr().out


def runs_that_withheld(chain, two_exports, data: Path, fraction: float = 0.15, seed: int = 0):
    """The chain's runs copied beside `data`, as if `make train` had withheld (fraction, seed)'s recordings."""
    import shutil

    from data.layout import read_metadata
    from data.paths import Workspace
    from data.split import holdout_recordings
    from submission.package import read_onnx_metadata

    ws = Workspace.of(data)
    held = set(holdout_recordings(read_metadata(data), fraction, seed))
    members = [(path, read_onnx_metadata(path)) for path in two_exports]
    for _, meta in members:
        run = ws.runs_dir / meta["run"]
        shutil.copytree(chain.runs_dir / meta["run"], run)
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**config, "holdout_fraction": fraction, "seed": seed}))
        split = json.loads((run / "split.json").read_text())
        split = {**split, "train": [r for r in split["train"] if r not in held],
                 "val": [r for r in split["val"] if r not in held], "holdout": sorted(held)}
        (run / "split.json").write_text(json.dumps(split))
    return ws, members, sorted(held)


def test_packaging_builds_the_hold_out_from_what_the_runs_withheld_when_there_is_nothing_else_to_judge_by(
        two_exports, chain, tmp_path, capsys):
    import shutil

    from submission.package import PackageConfig, package, read_onnx_metadata, withheld_split

    data = tmp_path / "unlabelled"
    shutil.copytree(chain.data_dir, data)  # no solution beside the copy: no labelled soundscapes
    assert withheld_split([(p, read_onnx_metadata(p)) for p in two_exports], data) is None  # no runs there yet
    ws, members, held = runs_that_withheld(chain, two_exports, data)
    assert withheld_split(members, data) == (0.15, 0)

    package(PackageConfig(two_exports, tmp_path / "dist", data_dir=data, judge_ensemble=True, budget_min=1e6,
                          bundle_wheels=False))
    printed = capsys.readouterr().out
    assert "no labelled soundscapes for unlabelled: building them from the recordings the runs withheld" in printed
    mixed = json.loads((ws.holdout_dir / "holdout.json").read_text())["recordings"]
    assert mixed and set(mixed) <= set(held)
    assert f"local score of the best-first ensembles (mean): {members[0][1]['model_name']} " in printed

    second = ws.runs_dir / members[1][1]["run"] / "config.json"
    second.write_text(json.dumps({**json.loads(second.read_text()), "seed": 1}))
    assert withheld_split(members, data) is None  # runs that withheld different recordings: nothing shared


def test_an_ensemble_is_not_judged_on_soundscapes_a_member_trained_on_but_on_ones_built_from_what_it_withheld(
        two_exports, chain, tmp_path, capsys):
    import shutil

    from data.holdout import HoldoutConfig, build_holdout
    from submission.package import PackageConfig, package

    data = tmp_path / "birds"
    shutil.copytree(chain.data_dir, data)
    ws, members, held = runs_that_withheld(chain, two_exports, data)
    build_holdout(data, HoldoutConfig(seed=1, fraction=0.15, n_soundscapes=2), progress=False)  # the runs trained on it
    trained_on = json.loads((ws.holdout_dir / "holdout.json").read_text())["recordings"]
    assert set(trained_on) - set(held), "seed 1 should mix in recordings seed 0 trained on"

    package(PackageConfig(two_exports, tmp_path / "dist", data_dir=data, judge_ensemble=True, budget_min=1e6,
                          bundle_wheels=False))
    printed = capsys.readouterr().out
    assert (f"package: {members[0][1]['model_name']} ({members[0][1]['run']}) trained on ") in printed
    assert ("recording(s) of the labelled soundscapes of birds, which would favour it: building them from the "
            "recordings the runs withheld (`make holdout`, fraction 0.15, seed 0)") in printed
    rebuilt = json.loads((ws.holdout_dir / "holdout.json").read_text())
    assert rebuilt["recordings"] and set(rebuilt["recordings"]) <= set(held)  # `make score` scores on what none saw
    assert rebuilt["n_soundscapes"] == 2 and len(rebuilt["backgrounds"]) == 2  # the replaced one's HOLDOUT_ARGS kept
    assert f"local score of the best-first ensembles (mean): {members[0][1]['model_name']} " in printed


def test_scoring_refuses_an_ensemble_whose_any_member_trained_on_a_held_out_recording(tmp_path):
    from data.paths import Workspace
    from submission.score import LabelledSet, ScoreError, check_no_leak

    ws = Workspace(tmp_path / "birds", root=tmp_path / "out")
    for run, train in [("clean-run", ["a/1.ogg"]), ("leaky-run", ["a/1.ogg", "b/7.ogg"])]:
        (ws.runs_dir / run).mkdir(parents=True)
        (ws.runs_dir / run / "split.json").write_text(json.dumps({"train": train, "val": []}))
    clean, leaky = {"model_name": "simple_cnn", "run": "clean-run"}, {"model_name": "resnet18", "run": "leaky-run"}
    labelled = LabelledSet(tmp_path, tmp_path / "solution.csv", recordings=["b/7.ogg"])
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    manifest = dataset / "birdkit.json"
    manifest.write_text(json.dumps({"run": "clean-run", "models": [clean, leaky]}))  # the best member is clean
    with pytest.raises(ScoreError, match=r"packaged model resnet18 \(leaky-run\) trained on 1 recording"):
        check_no_leak(labelled, dataset, ws)
    manifest.write_text(json.dumps({"run": "clean-run", "models": [clean]}))
    check_no_leak(labelled, dataset, ws)  # the clean member alone passes
    (ws.runs_dir / "val-run").mkdir()
    (ws.runs_dir / "val-run" / "split.json").write_text(json.dumps({"train": ["a/1.ogg"], "val": ["b/7.ogg"]}))
    manifest.write_text(json.dumps({"run": "val-run", "models": [{"model_name": "efficientnet_b0", "run": "val-run"}]}))
    with pytest.raises(ScoreError, match=r"efficientnet_b0 \(val-run\) trained on 1 recording"):
        check_no_leak(labelled, dataset, ws)  # validated on it: its best epoch was chosen on that recording


def test_a_model_whose_classes_differ_from_sample_submission_is_refused_naming_both(two_exports, tmp_path):
    from submission.package import PackageConfig, PackageError, package

    columns = ["aaa1", "bbb2"]
    with pytest.raises(PackageError, match=r"model.onnx has \d+ classes but sample_submission.csv has 2 columns"):
        package(PackageConfig(two_exports[:1], tmp_path / "dist", sample_columns=columns, bundle_wheels=False))
    assert not (tmp_path / "dist").exists()


def test_a_class_mismatch_is_packaged_with_a_warning_when_allowed(two_exports, tmp_path, capsys):
    from submission.package import PackageConfig, package, read_onnx_metadata

    classes = json.loads(read_onnx_metadata(two_exports[0])["classes"])
    columns = [*classes[1:], "newbrd1"]  # sample_submission lost one of the model's classes and gained one
    package(PackageConfig(two_exports[:1], tmp_path / "dist", sample_columns=columns, allow_class_mismatch=True,
                          bundle_wheels=False))
    assert (f"warning: model.onnx has {len(classes)} classes but sample_submission.csv has {len(columns)} columns: "
            f"only in the model ['{classes[0]}'], only in sample_submission ['newbrd1']; columns the model lacks get 0"
            in capsys.readouterr().out)
    assert (tmp_path / "dist" / "dataset" / "model.onnx").exists()


def test_packaging_refuses_a_missing_model_or_one_without_the_kits_metadata(tmp_path):
    import onnx

    from submission.package import PackageConfig, PackageError, package

    with pytest.raises(PackageError, match=r"model.onnx not found: run `make export` first"):
        package(PackageConfig([tmp_path / "model.onnx"], tmp_path / "dist", bundle_wheels=False))
    bare = tmp_path / "bare.onnx"  # an ONNX file from elsewhere: no classes, no features
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                                            [x], [y])), bare)
    with pytest.raises(PackageError, match=r"bare.onnx lacks the kit's metadata \(classes, features\): export it "
                                           r"with `make export`"):
        package(PackageConfig([bare], tmp_path / "dist", bundle_wheels=False))
    assert not (tmp_path / "dist").exists()


def test_a_model_from_other_feature_code_is_refused_at_packaging_not_on_kaggle(two_exports, tmp_path):
    import onnx

    from submission.package import PackageConfig, PackageError, package

    model = onnx.load(str(two_exports[0]))
    for prop in model.metadata_props:
        if prop.key == "features_version":
            prop.value = "0"
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    with pytest.raises(PackageError, match="trained with features v0 but the code to package computes features v1"):
        package(PackageConfig([old], tmp_path / "dist", bundle_wheels=False))


@pytest.mark.parametrize("max_drop, shipped", [(1.0, "int8"), (-1.0, "float")])
def test_int8_is_shipped_only_when_the_local_score_allows_it(chain, tiny_dataset, tmp_path, monkeypatch, capsys,
                                                            max_drop, shipped):
    import onnx

    import submission.quantize as quantize
    from submission.package import PackageConfig, package

    monkeypatch.setattr(quantize, "MAX_SCORE_DROP", max_drop)
    package(PackageConfig([chain.export_dir / "model.onnx"], tmp_path / "dist", data_dir=tiny_dataset, int8=True,
                          bundle_wheels=False))
    out = capsys.readouterr().out
    assert "int8: local score" in out and "vs float" in out
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "dist" / "dataset" / "model.onnx")).metadata_props}
    assert ("quantization" in props) == (shipped == "int8")
    assert len(json.loads(props["classes"])) == json.loads((tmp_path / "dist" / "dataset" / "birdkit.json").read_text())["classes"]


@pytest.mark.parametrize("layout", ["{slug}", "competitions/{slug}"])
def test_the_notebook_reads_its_own_competition_among_several_in_either_kaggle_mount_layout(tmp_path, layout, capsys):
    from submission.infer import find_competition

    for slug in ("birdclef-2023", "birdclef-2024"):  # sorted, 2023 comes first
        folder = tmp_path / layout.format(slug=slug)
        folder.mkdir(parents=True)
        (folder / "sample_submission.csv").write_text("row_id,a\n")
    assert find_competition(tmp_path, "birdclef-2024") == tmp_path / layout.format(slug="birdclef-2024")
    assert find_competition(tmp_path, "birdclef-2025") == tmp_path / layout.format(slug="birdclef-2023")
    assert "warning: birdclef-2025 is not attached; of 2 competitions found" in capsys.readouterr().err


def kit_interface_onnx(path: Path, n_mels: int, n_frames: int, n_classes: int) -> Path:
    """A graph of the kit's interface: features [batch, n_mels, n_frames] -> probabilities [batch, classes]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.linspace(-1, 1, n_mels * n_classes, dtype=np.float32).reshape(n_mels, n_classes),
                                     "weight")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["features"], ["bands"], axes=[2], keepdims=0),
         helper.make_node("MatMul", ["bands", "weight"], ["logits"]),
         helper.make_node("Sigmoid", ["logits"], ["probabilities"])],
        "tiny", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_mels, n_frames])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n_classes])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_the_notebook_rebuilds_the_training_features_and_classes_from_the_onnx_metadata(tmp_path):
    from data.features import FeatureConfig
    from export.to_onnx import metadata, write_metadata
    from submission.infer import KitModel
    from train.config import config_for

    features = FeatureConfig(n_mels=64, fmin_hz=150.0, denoise="spectral")
    cfg = config_for("simple_cnn", str(tmp_path / "birds"), features=features)
    classes = ["amerob", "barswa", "comkin"]
    run = SimpleNamespace(cfg=cfg, classes=classes, run_dir=tmp_path / "simple_cnn-1", net=SimpleNamespace(activation="sigmoid"),
                          checkpoint={"epoch": 3, "metrics": {"val_accuracy": 0.5, "val_roc_auc": 0.75}})
    path = kit_interface_onnx(tmp_path / "model.onnx", features.n_mels, features.n_frames, len(classes))
    write_metadata(path, metadata(run))
    model = KitModel.load(path, threads=1, measure=False)
    assert model.features == features and model.classes == classes and model.name == "simple_cnn"
    assert model.predict(np.zeros((3, *features.shape), np.float32)).shape == (3, 3)


@pytest.mark.parametrize("float_score, int8_score, ships", [(0.80, 0.79, False), (0.80, 0.797, True),
                                                            (0.80, 0.81, True), (0.80, 0.7951, True), (0.80, 0.7949, False)])
def test_int8_ships_only_where_it_loses_at_most_0_005_of_the_float_models_local_score(float_score, int8_score, ships):
    from submission.quantize import MAX_SCORE_DROP, int8_is_good_enough

    assert MAX_SCORE_DROP == 0.005
    assert int8_is_good_enough(float_score, int8_score) is ships


@pytest.fixture
def scored_folder(tmp_path):
    """A dataset of two 10-s test soundscapes with two classes."""
    from data.audio_io import write_ogg

    data = tmp_path / "birds"
    (data / "test_soundscapes").mkdir(parents=True)
    for stem in ("s1", "s2"):
        write_ogg(data / "test_soundscapes" / f"{stem}.ogg", np.zeros(10 * 32_000, np.float32), 32_000)
    (data / "sample_submission.csv").write_text("row_id,a,b\n")
    return data


def test_score_json_reports_each_stages_seconds_per_soundscape_from_the_notebooks_timing(chain):
    result = json.loads((chain.score_dir / "score.json").read_text())
    timing = json.loads((chain.score_dir / "working" / "timing.json").read_text())  # the notebook's own file
    n = timing["soundscapes"]
    assert n == result["soundscapes"] == len(list((chain.data_dir / "test_soundscapes").glob("*.ogg"))) > 0
    for stage in ("decode", "features", "model"):
        assert timing[f"{stage}_s"] > 0
        assert result[f"{stage}_s_per_soundscape"] == pytest.approx(timing[f"{stage}_s"] / n)
    assert result["seconds_per_soundscape"] == pytest.approx(timing["total_s"] / n)
    assert result["notebook_wall_s"] > timing["total_s"]  # the kernel's start and the set-up cells come on top


def test_the_notebook_applies_the_packaged_post_processing_to_the_packaged_combination_of_members(
        chain, two_exports, tmp_path):
    from data.paths import Workspace
    from submission.ensemble import read_member_raws
    from submission.package import main as package_main
    from submission.score import score

    assert package_main(["--data", str(chain.data_dir), "--onnx", *map(str, two_exports), "--out", str(tmp_path / "dist"),
                         "--ensemble", "2", "--budget-min", "1e6", "--combine", "min", "--smooth-kernel", "0.25", "0.5",
                         "0.25", "--mean-blend", "0.2", "--no-wheels"]) == 0
    ws = Workspace(chain.data_dir, root=tmp_path / "out")
    result = score(ws, "birdclef-2024", tmp_path / "dist")
    assert result["combine"] == "min"
    assert result["postprocess"] == {"smooth_kernel": [0.25, 0.5, 0.25], "mean_blend": 0.2}
    working = ws.score_dir / "working"
    members = read_member_raws(working / "submission_raw.csv", 2)
    raw, sub = pd.read_csv(working / "submission_raw.csv"), pd.read_csv(working / "submission.csv")
    classes = raw.columns[1:]
    assert np.allclose(raw[classes], np.minimum(members[0][classes], members[1][classes]), atol=1e-6)
    post = PostProcess(smooth_kernel=(0.25, 0.5, 0.25), mean_blend=0.2)
    stems = raw.row_id.str.rsplit("_", n=1).str[0]
    for stem in stems.unique():  # each soundscape post-processed on its own
        rows = (stems == stem).to_numpy()
        expected = post(raw.loc[rows, classes].to_numpy(np.float32))
        assert np.allclose(sub.loc[rows, classes].to_numpy(), expected, atol=1e-6)
    assert not np.allclose(sub[classes], raw[classes], atol=1e-3)  # the post-processing changed something


def test_the_notebooks_lines_show_as_they_come_and_a_failure_stops_the_score_naming_the_cell_and_the_error(
        tmp_path, capsys):
    import nbformat

    from submission.score import ScoreError, execute_notebook

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('models: 1 loaded')"),
                                         nbformat.v4.new_code_cell("raise ValueError('no soundscapes mounted')")])
    nbformat.write(nb, tmp_path / "kit.ipynb")
    (tmp_path / "working").mkdir()
    with pytest.raises(ScoreError) as raised:
        execute_notebook(tmp_path / "kit.ipynb", tmp_path, tmp_path / "working", tmp_path, timeout_s=60)
    assert capsys.readouterr().out == "models: 1 loaded\n"  # the notebook's lines reach the terminal as they come
    assert str(raised.value) == (f"the notebook stopped: cell 2 of 2 raised ValueError: no soundscapes mounted. "
                                 f"Its outputs are in {tmp_path / 'executed.ipynb'}")
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    assert executed.cells[1].outputs[0]["ename"] == "ValueError"


def test_score_refuses_without_a_packaged_notebook_or_labelled_soundscapes_saying_what_to_run(scored_folder, tmp_path):
    from data.paths import Workspace
    from submission.score import ScoreError, labelled_set, score

    data = scored_folder
    ws = Workspace(data, root=tmp_path / "out")
    with pytest.raises(ScoreError) as no_dist:
        score(ws, "birdclef-2024", tmp_path / "empty_dist")
    assert str(no_dist.value) == f"{tmp_path / 'empty_dist'} holds no packaged notebook: run `make package` first"
    (tmp_path / "birds_solution.csv").unlink(missing_ok=True)  # no labels beside it, no hold-out
    with pytest.raises(ScoreError) as no_labels:
        labelled_set(ws)
    assert str(no_labels.value) == (f"no labelled soundscapes for birds: run `make holdout DATA={data}` (or put "
                                    f"Kaggle-format labels at {tmp_path / 'birds_solution.csv'})")


def test_score_refuses_a_hold_out_it_cannot_check_for_leaks_naming_the_missing_split(tmp_path):
    from data.paths import Workspace
    from submission.score import LabelledSet, ScoreError, check_no_leak

    ws = Workspace(tmp_path / "birds", root=tmp_path / "out")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "birdkit.json").write_text(json.dumps({"model_name": "resnet18", "run": "gone-run"}))
    labelled = LabelledSet(tmp_path, tmp_path / "solution.csv", recordings=["b/7.ogg"])
    with pytest.raises(ScoreError) as raised:
        check_no_leak(labelled, dataset, ws)
    assert str(raised.value) == (f"cannot tell which recordings the packaged resnet18 trained on "
                                 f"({ws.runs_dir / 'gone-run' / 'split.json'} missing): package models trained on "
                                 "birds (`make train export package`)")


def test_a_submission_whose_rows_are_not_each_soundscapes_windows_in_order_is_refused(scored_folder):
    from data.features import FeatureConfig
    from submission.score import ScoreError, check_submission

    data = scored_folder
    with pytest.raises(ScoreError, match=r"row_ids differ from the expected 4 rows in sorted order"):
        check_submission(pd.DataFrame({"row_id": ["s1_10", "s1_5", "s2_5", "s2_10"], "a": 0.5, "b": 0.5}),
                         data / "sample_submission.csv", data / "test_soundscapes", FeatureConfig())


def test_a_submission_whose_class_columns_are_in_another_order_than_sample_submissions_is_refused(scored_folder):
    import pandas as pd

    from data.features import FeatureConfig
    from submission.score import ScoreError, check_submission

    data = scored_folder
    rows = ["s1_5", "s1_10", "s2_5", "s2_10"]
    check_submission(pd.DataFrame({"row_id": rows, "a": 0.5, "b": 0.5}), data / "sample_submission.csv",
                     data / "test_soundscapes", FeatureConfig())
    with pytest.raises(ScoreError, match="columns differ from sample_submission.csv's"):
        check_submission(pd.DataFrame({"row_id": rows, "b": 0.5, "a": 0.5}), data / "sample_submission.csv",
                         data / "test_soundscapes", FeatureConfig())


def tiny_kit_model(tmp_path: Path, n_classes: int = 3):
    from data.features import FEATURES_VERSION, FeatureConfig
    from export.to_onnx import write_metadata
    from submission.infer import KitModel

    features = FeatureConfig(n_mels=8, window_s=0.5)
    path = kit_interface_onnx(tmp_path / "model.onnx", features.n_mels, features.n_frames, n_classes)
    write_metadata(path, {"features": json.dumps(features.to_dict()), "features_version": str(FEATURES_VERSION),
                          "classes": json.dumps([f"c{k}" for k in range(n_classes)])})
    return KitModel.load(path, threads=1, measure=False)


@pytest.mark.parametrize("n_windows", [1, 8, 9, 17])
def test_the_model_scores_every_window_whatever_the_batch_boundaries(tmp_path, n_windows):
    model = tiny_kit_model(tmp_path)
    feats = np.random.default_rng(0).random((n_windows, *model.features.shape), dtype=np.float32)
    probs = model.predict(feats)
    assert model.batch_windows == 8 and probs.shape == (n_windows, 3)
    one_by_one = np.concatenate([model.predict(feats[i:i + 1]) for i in range(n_windows)])
    np.testing.assert_allclose(probs, one_by_one, rtol=1e-5, atol=1e-6)


def test_a_model_with_as_many_classes_as_sample_submission_but_other_ones_is_refused_naming_them(tmp_path):
    from submission.package import PackageConfig, PackageError, package
    from tests.test_wheels import tiny_onnx

    model = tiny_onnx(tmp_path / "model.onnx")  # classes asbfly, barswa
    with pytest.raises(PackageError) as e:
        package(PackageConfig([model], tmp_path / "dist", sample_columns=["asbfly", "comkin"], bundle_wheels=False))
    assert ("model.onnx has 2 classes but sample_submission.csv has 2 columns: only in the model ['barswa'], "
            "only in sample_submission ['comkin']") in str(e.value)
    assert not (tmp_path / "dist").exists()
    package(PackageConfig([model], tmp_path / "dist", sample_columns=["barswa", "asbfly"], bundle_wheels=False))


def test_a_class_mismatch_that_the_training_data_itself_has_is_blamed_on_that_data(tmp_path):
    from submission.package import PackageConfig, PackageError, package
    from tests.test_wheels import tiny_onnx

    model = tiny_onnx(tmp_path / "model.onnx")  # classes asbfly, barswa: its data's metadata species
    data = tmp_path / "data"
    (data / "train_audio").mkdir(parents=True)
    (data / "train_metadata.csv").write_text("primary_label,secondary_labels,filename\n"
                                             "asbfly,[],asbfly/XC1.ogg\nbarswa,[],barswa/XC2.ogg\n")
    (data / "sample_submission.csv").write_text("row_id,asbfly,comkin\n")
    with pytest.raises(PackageError) as e:
        package(PackageConfig([model], tmp_path / "dist", sample_columns=["asbfly", "comkin"], data_dir=data,
                              bundle_wheels=False))
    assert ("The model learnt its data's own species: that data's metadata and sample_submission.csv disagree; "
            "make them agree and retrain, or pass --allow-class-mismatch") in str(e.value)


def test_the_onnx_metadata_carries_the_runs_own_figures_under_their_own_names(tmp_path):
    from types import SimpleNamespace

    from data.features import FEATURES_VERSION, FeatureConfig
    from export.to_onnx import metadata
    from train.config import config_for

    features = FeatureConfig(denoise="spectral")
    cfg = config_for("resnet18", str(tmp_path / "birds"), features=features, pretrained=False, loss="ce")
    run = SimpleNamespace(cfg=cfg, classes=["amerob", "barswa"], run_dir=tmp_path / "resnet18-20260101-090000",
                          net=SimpleNamespace(activation="sigmoid"),
                          checkpoint={"epoch": 7, "metrics": {"val_accuracy": 0.625, "val_roc_auc": 0.8125}})
    assert metadata(run) == {
        "birdkit_format": "birdkit-1", "model_name": "resnet18", "classes": '["amerob", "barswa"]',
        "features": json.dumps(features.to_dict(), sort_keys=True), "features_version": str(FEATURES_VERSION),
        "activation": "sigmoid", "val_activation": "softmax", "input_name": "features",
        "val_accuracy": "0.625000", "val_roc_auc": "0.812500", "best_epoch": "7",
        "run": "resnet18-20260101-090000", "dataset": "birds"}
