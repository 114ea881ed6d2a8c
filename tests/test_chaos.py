"""Interruptions and concurrency: what a kill, a rerun or a second command at once leaves behind."""
import shutil
from pathlib import Path

import pytest
import torch

from data.preprocess import PreprocessConfig, preprocess


@pytest.fixture
def two_torch_threads():
    """torch on two threads for the test, whatever the machine's default, and back after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_preprocessing_in_the_training_process_gives_its_threads_back(tiny_dataset, tmp_path, monkeypatch,
                                                                      two_torch_threads):
    # `make train` preprocesses in its own process first (one worker, or one recording left);
    # the training that follows must not be held to the worker's single thread.
    monkeypatch.setenv("BIRDKIT_ROOT", str(tmp_path / "root"))
    data = shutil.copytree(tiny_dataset, tmp_path / "fresh")
    preprocess(PreprocessConfig(Path(data), workers=1, progress=False))
    assert torch.get_num_threads() == 2
