"""Where every stage keeps its outputs for one dataset (DATA=...). One convention, one place.

Outputs go under the repository by default; BIRDKIT_ROOT moves them all (the tests use it).
"""
from __future__ import annotations

import errno
import functools
import os
import shutil
import sys
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


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds path, or will hold it once created."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def unwritable_output(e: OSError) -> str | None:
    """The message for an output under output_root() the kit may not write (read-only disk, no
    permission), or None for any other OS error: an input it may not read, an output elsewhere
    (--out), a missing file keep their traceback (BIRDKIT_ROOT would not help them)."""
    if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or not e.filename:
        return None
    if not Path(os.fsdecode(e.filename)).resolve().is_relative_to(output_root()):
        return None
    return (f"cannot write {e.filename} ({e.strerror}): the kit writes its caches, runs and "
            f"packages under {output_root()}. Make that writable, or set BIRDKIT_ROOT to a writable folder "
            "(e.g. BIRDKIT_ROOT=/tmp/birdkit make ...)")


def refuse_unwritable(main):
    """Wrap a command's main(argv): an output it may not write ends it with unwritable_output's
    message and exit status 1, not a traceback."""
    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except OSError as e:
            message = unwritable_output(e)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr)
            return 1
    return wrapped


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as disk sizes are quoted)."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def venv_space_problem(venv: Path, needed: int) -> str | None:
    """The message for a venv that would not fit on its disk, or None when it fits."""
    available = free_bytes(venv)
    if available >= needed:
        return None
    return (
        f"not enough free disk space to build {venv}: need about {human_bytes(needed)} "
        f"(torch's CUDA build alone is 5.6 GB), have {human_bytes(available)} ({available} bytes).\n"
        "  Free some space (old clones' .venv folders are the usual culprits), "
        "or put the venv on a bigger disk: make VENV=/big/disk/birdkit-venv ..."
    )


if __name__ == "__main__":  # `python3 -m data.paths VENV BYTES`: the Makefile's check (VENV_NEEDS_BYTES)
    problem = venv_space_problem(Path(sys.argv[1]), int(sys.argv[2]))
    if problem:
        sys.exit(f"error: {problem}")
