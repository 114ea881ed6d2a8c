"""Where every stage keeps its outputs for one dataset (DATA=...). One convention, one place.

Outputs go under the repository by default; BIRDKIT_ROOT moves them all (the tests use it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def output_root() -> Path:
    return Path(os.environ.get("BIRDKIT_ROOT", REPO)).resolve()


def dist_dir() -> Path:
    """The packaged submission (notebook + dataset folder)."""
    return output_root() / "submission" / "dist"


@dataclass(frozen=True)
class Workspace:
    """Output folders for the dataset at data_dir, named after its folder name."""

    data_dir: Path
    root: Path = field(default_factory=output_root)

    @classmethod
    def of(cls, data_dir: str | Path) -> "Workspace":
        return cls(Path(data_dir).expanduser().resolve())

    @property
    def name(self) -> str:
        return self.data_dir.name

    @property
    def cache_root(self) -> Path:  # one sub-folder per feature fingerprint
        return self.root / "data" / "cache" / self.name

    @property
    def holdout_dir(self) -> Path:
        return self.root / "data" / "holdout" / self.name

    @property
    def runs_dir(self) -> Path:
        return self.root / "train" / "runs" / self.name

    @property
    def export_dir(self) -> Path:
        return self.root / "export" / "out" / self.name

    @property
    def score_dir(self) -> Path:
        return self.root / "submission" / "score" / self.name

    @property
    def solution_beside(self) -> Path:
        """Labels of the dataset's own test_soundscapes, kept beside the dataset (the sample)."""
        return self.data_dir.parent / f"{self.name}_solution.csv"
