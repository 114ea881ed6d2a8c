"""Shared fixtures: tiny generated datasets and a private output root for every test session.

BIRDKIT_ROOT sends every stage's outputs (cache, runs, export, dist, score) to a temporary
folder, so tests never touch the developer's own runs."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# ../shared/realbirds beside the checkout; BIRDKIT_REALBIRDS points elsewhere (e.g. from a clone in /tmp).
REALBIRDS = Path(os.environ.get("BIRDKIT_REALBIRDS", REPO.parent / "shared" / "realbirds"))


@pytest.fixture(scope="session", autouse=True)
def output_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("birdkit-root")
    os.environ["BIRDKIT_ROOT"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """4 synthetic species x 6 recordings, one 4-minute test soundscape with labels beside it."""
    from data.synth import generate

    out = tmp_path_factory.mktemp("datasets") / "tiny"
    return generate(out, seed=1, n_species=4, recordings_per_species=6, n_test_soundscapes=1, n_unlabeled=1,
                    unlabeled_s=20.0, progress=False)


@pytest.fixture
def realbirds() -> Path:
    if not (REALBIRDS / "train_metadata.csv").exists():
        pytest.skip(f"real-data test: {REALBIRDS} is absent (it exists on the kit's CI machines only)")
    return REALBIRDS


@pytest.fixture(scope="session")
def chain(tiny_dataset):
    """Run every stage once through its command-line entry point."""
    from export.__main__ import main as export_main
    from submission.package import main as package_main
    from submission.score import main as score_main
    from train.__main__ import main as train_main

    data = str(tiny_dataset)
    assert train_main(["--data", data, "--models", "simple_cnn", "resnet18", "--epochs", "2", "--no-pretrained",
                       "--device", "cpu", "--holdout-fraction", "0"]) == 0
    assert export_main(["--data", data]) == 0
    assert package_main(["--data", data, "--no-wheels"]) == 0  # bundling is tested in test_wheels
    assert score_main(["--data", data]) == 0
    from data.paths import Workspace

    return Workspace.of(tiny_dataset)
