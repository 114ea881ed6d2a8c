"""Checkpoint files written atomically, in a background thread.

On a GPU an epoch of a small dataset (realbirds: ~330 training windows on its split) takes a tenth of a second,
less than writing its checkpoint (last.pt: 50-300 MB) and plotting its curves. So the loop hands
each epoch's files to a BackgroundWriter and goes on training; torch.save releases the GIL while it
writes, so the training thread is not held up. What is handed over is a copy in host memory, taken
at the epoch's end: training may change the live tensors while the copy is written.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path
from typing import Callable

import torch


def host_copy(obj):
    """obj with every tensor copied to host memory, dicts, lists and tuples rebuilt around them:
    a snapshot that later in-place updates of the live tensors (optimizer steps) cannot reach."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, host_copy(v)) for k, v in obj.items())  # OrderedDict state_dicts stay ordered
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """A killed write leaves the previous file whole: `write` a file beside it, then rename it over."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def atomic_torch_save(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """One training process per run folder while it trains: a second one (a `--resume` of a run
    that is still training) would write the same last.pt, best.pt and metrics.csv, and their
    temporary files, under the first one's feet. The kernel drops the lock when a process dies,
    so a killed run can be resumed at once."""
    with open(run_dir / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another training process is writing {run_dir} right now; wait for it to finish "
                               "(or stop it) before resuming it") from None
        yield


def new_run_dir(parent: Path, name: str, tail: str = "") -> Path:
    """parent/<name><tail>, created here and now; <name>-2<tail>, -3 ... where another command
    took it first. Run folders are named by the second a command started: two commands started
    in the same second must not train into one folder."""
    parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 1000):
        path = parent / f"{name}{'' if k == 1 else f'-{k}'}{tail}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free run folder name for {name}{tail} in {parent}")


class BackgroundWriter:
    """Runs one write job at a time in a thread. submit() first waits for the job before it, so at
    most one snapshot waits in memory and the files land in the order they were submitted. A job's
    error is raised by the next submit() or wait()."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(job,), name="checkpoint-writer")
        self._thread.start()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as e:  # re-raised in the training thread, which can report it
            self._error = e

    def wait(self) -> None:
        """Block until the submitted files are on disk; raise the error of a job that failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"writing a checkpoint failed: {error} (is the disk full?)") from error
