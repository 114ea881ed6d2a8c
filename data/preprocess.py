"""`make preprocess`: every training recording -> cached 5-s feature windows.

The cache, one folder per dataset and feature fingerprint (data/cache/<name>/<fingerprint>/):

    features.json   FeatureConfig, window shape and dtype
    features.f16    raw float16 rows of [n_mels, n_frames], memory-mappable
    entries.csv     the index: one line per recording (filename,status,first_row,n_windows,detail)
    complete.json   written when every recording of train_metadata.csv has an entry

entries.csv is the commit log. A recording's feature rows are written first and its line is
appended after, so a killed run leaves at worst rows past the last committed line; the next run
truncates them and carries on. Workers decode and compute; only the parent process writes.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data.features import DENOISE_MODES, FEATURES_VERSION, AudioError, FeatureConfig, file_to_features
from data.layout import read_metadata
from data.paths import Workspace

ENTRY_FIELDS = ["filename", "status", "first_row", "n_windows", "detail"]
STORE_DTYPE = np.float16


@dataclass(frozen=True)
class PreprocessConfig:
    data_dir: Path
    features: FeatureConfig = FeatureConfig()
    workers: int = 0  # 0: all cores
    max_windows_per_recording: int = 0  # 0: every window of every recording
    progress: bool = True
    shard: tuple[int, int] | None = None  # (i, n): this machine's share of a split run

    def resolved_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


def cache_dir_for(data_dir: Path, features: FeatureConfig, max_windows_per_recording: int = 0) -> Path:
    suffix = f"-max{max_windows_per_recording}" if max_windows_per_recording else ""
    return Workspace.of(data_dir).cache_root / f"{features.fingerprint()}{suffix}"


def metadata_digest(data_dir: Path) -> str:
    return hashlib.sha256((data_dir / "train_metadata.csv").read_bytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------ the journal
class CacheWriter:
    """Appends recordings to the cache; the only writer of a cache folder."""

    def __init__(self, cache_dir: Path, features: FeatureConfig):
        self.dir = cache_dir
        self.features = features
        self.row_bytes = int(np.prod(features.shape)) * np.dtype(STORE_DTYPE).itemsize
        cache_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _exclusive_lock(cache_dir / ".lock")
        self._write_header()
        self.done, self.n_rows = self._recover()
        self._data = open(self.dir / "features.f16", "r+b" if (self.dir / "features.f16").exists() else "w+b")
        self._data.truncate(self.n_rows * self.row_bytes)  # drop rows of an uncommitted recording
        self._data.seek(self.n_rows * self.row_bytes)
        self._entries = open(self.dir / "entries.csv", "a", newline="")

    def _write_header(self) -> None:
        header = {"version": FEATURES_VERSION, "features": self.features.to_dict(),
                  "window_shape": list(self.features.shape), "dtype": np.dtype(STORE_DTYPE).name}
        path = self.dir / "features.json"
        if path.exists():
            old = json.loads(path.read_text())
            if old != header:
                raise RuntimeError(f"{path} describes other features than this run: {old} vs {header}. "
                                   "Delete the folder to rebuild it.")
            return
        _atomic_write_text(path, json.dumps(header, indent=2))

    def _recover(self) -> tuple[set[str], int]:
        """Committed recordings and rows, ignoring a torn last line."""
        path = self.dir / "entries.csv"
        if not path.exists():
            path.write_text(",".join(ENTRY_FIELDS) + "\n")
            return set(), 0
        text = path.read_text()
        if not text.endswith("\n"):  # killed mid-line: that recording is not committed
            text = text[: text.rfind("\n") + 1]
            _atomic_write_text(path, text)
        entries = read_entries(self.dir)
        ok = entries[entries.status == "ok"]
        n_rows = int((ok.first_row + ok.n_windows).max()) if len(ok) else 0
        return set(entries.filename), n_rows

    def add(self, filename: str, status: str, feats: np.ndarray | None, detail: str = "") -> None:
        first_row, n = self.n_rows, 0
        if feats is not None:
            n = len(feats)
            self._data.write(np.ascontiguousarray(feats, dtype=STORE_DTYPE).tobytes())
            self._data.flush()
            self.n_rows += n
        row = [filename, status, first_row, n, detail.replace("\n", " ")[:300]]
        csv.writer(self._entries).writerow(row)
        self._entries.flush()  # the commit point
        self.done.add(filename)

    def close(self) -> None:
        for f in (self._data, self._entries):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        self._lock.close()  # releases the lock


def _exclusive_lock(path: Path):
    """One writer per cache: a second preprocess of the same cache fails at once."""
    import fcntl

    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RuntimeError(f"another preprocess is writing {path.parent} right now; wait for it to finish") from None
    return f


def read_entries(cache_dir: Path) -> pd.DataFrame:
    return pd.read_csv(cache_dir / "entries.csv", keep_default_na=False,
                       dtype={"filename": str, "status": str, "first_row": np.int64, "n_windows": np.int64, "detail": str})


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ the workers
def _worker_init() -> None:
    # One BLAS/FFT thread per process: the pool already uses every core.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _featurise(job: tuple[str, str, FeatureConfig, int]) -> tuple[str, str, np.ndarray | None, str]:
    filename, path, features, max_windows = job
    try:
        feats = file_to_features(path, features)
    except AudioError as e:
        return filename, "skipped", None, str(e)
    except Exception as e:  # a decoder crash on one file must not stop the whole run
        return filename, "skipped", None, f"{type(e).__name__}: {e}"
    if max_windows:
        feats = feats[:max_windows]
    return filename, "ok", feats.astype(STORE_DTYPE), ""


# ------------------------------------------------------------------------------ the run
def preprocess(cfg: PreprocessConfig) -> Path:
    """Fill the cache for cfg.data_dir; returns its folder. A second run only checks.

    With cfg.shard = (i, n) only every n-th recording (from the i-th) is processed, into
    <cache>/shards/<i>-of-<n>/; copy those folders from other machines into the same place and
    a plain run merges them before processing whatever is left."""
    data_dir = Path(cfg.data_dir)
    meta = read_metadata(data_dir)
    main_dir = cache_dir_for(data_dir, cfg.features, cfg.max_windows_per_recording)
    cache_dir = main_dir if cfg.shard is None else main_dir / "shards" / f"{cfg.shard[0]}-of-{cfg.shard[1]}"
    writer = CacheWriter(cache_dir, cfg.features)
    try:
        if cfg.shard is None:
            merge_shards(writer, main_dir)
        todo = _shard_of(list(meta.filename), cfg.shard)
        pending = [f for f in todo if f not in writer.done]
        print(f"preprocess: {len(todo)} recordings, {len(todo) - len(pending)} already cached in {cache_dir}")
        seconds, windows_done = _process(writer, data_dir, pending, cfg)
    finally:
        writer.close()
    _finish(cache_dir, data_dir, meta[meta.filename.isin(set(todo))], seconds, windows_done, cfg.shard)
    return cache_dir


def _shard_of(filenames: list[str], shard: tuple[int, int] | None) -> list[str]:
    """Every n-th recording of the sorted metadata, from the i-th: stable across machines."""
    if shard is None:
        return filenames
    i, n = shard
    return [f for k, f in enumerate(sorted(filenames)) if k % n == i]


def merge_shards(writer: CacheWriter, main_dir: Path) -> None:
    """Append the recordings of finished shard folders the main cache lacks, then drop them."""
    import shutil

    for shard_dir in sorted((main_dir / "shards").glob("*-of-*")):
        if not (shard_dir / "complete.json").exists():
            print(f"preprocess: {shard_dir.name} is not finished; rerun `--shard {shard_dir.name.replace('-of-', '/')}`")
            continue
        shard = FeatureCache.open(shard_dir)
        entries = read_entries(shard_dir)
        added = 0
        for e in entries.itertuples():
            if e.filename in writer.done:
                continue
            feats = np.asarray(shard.windows[list(shard.rows_of(e.filename))]) if e.status == "ok" else None
            writer.add(e.filename, e.status, feats, e.detail)
            added += 1
        print(f"preprocess: merged {added} recordings from shard {shard_dir.name}")
        del shard
        shutil.rmtree(shard_dir)


def _process(writer: CacheWriter, data_dir: Path, pending: list[str], cfg: PreprocessConfig) -> tuple[float, int]:
    """Compute the pending recordings on all cores; the parent commits each result."""
    from tqdm import tqdm

    audio_root = data_dir / "train_audio"
    jobs = []
    for filename in pending:
        path = audio_root / filename
        if path.is_file():
            jobs.append((filename, str(path), cfg.features, cfg.max_windows_per_recording))
        else:
            writer.add(filename, "missing", None, f"{path} not found")
    t0 = time.perf_counter()
    windows_done = 0
    with tqdm(total=len(jobs), unit="rec", desc="features", mininterval=1.0,
              disable=not cfg.progress or not jobs) as bar:
        for filename, status, feats, detail in _run_jobs(jobs, cfg.resolved_workers()):
            writer.add(filename, status, feats, detail)
            windows_done += 0 if feats is None else len(feats)
            bar.update(1)
            bar.set_postfix(windows=windows_done, refresh=False)
    return time.perf_counter() - t0, windows_done


def _run_jobs(jobs: list, workers: int):
    if workers <= 1 or len(jobs) <= 1:
        _worker_init()
        yield from map(_featurise, jobs)
        return
    # forkserver: children start clean even when the parent already holds torch's threads.
    ctx = mp.get_context("forkserver")
    with ctx.Pool(workers, initializer=_worker_init) as pool:
        yield from pool.imap_unordered(_featurise, jobs, chunksize=1)


def _finish(cache_dir: Path, data_dir: Path, meta: pd.DataFrame, seconds: float, windows_done: int,
            shard: tuple[int, int] | None = None) -> None:
    entries = read_entries(cache_dir)
    entries = entries[entries.filename.isin(set(meta.filename))]
    ok = entries[entries.status == "ok"]
    bad = entries[entries.status != "ok"]
    summary = {
        "metadata_digest": metadata_digest(data_dir),
        "shard": list(shard) if shard else None,
        "recordings": int(len(entries)),
        "ok": int(len(ok)),
        "skipped": int(len(bad)),
        "windows": int(ok.n_windows.sum()),
    }
    _atomic_write_text(cache_dir / "complete.json", json.dumps(summary, indent=2))
    rate = f", {windows_done / seconds:.1f} windows/s" if seconds > 0 and windows_done else ""
    print(f"preprocess: {summary['ok']} recordings -> {summary['windows']} windows cached{rate}")
    if len(bad):
        print(f"preprocess: {len(bad)} recording(s) skipped:")
        for r in bad.head(20).itertuples():
            print(f"  {r.status:8s} {r.filename}: {r.detail}")
        if len(bad) > 20:
            print(f"  ... and {len(bad) - 20} more in {cache_dir / 'entries.csv'}")


def cache_is_current(cache_dir: Path, data_dir: Path) -> bool:
    """True when the cache covers exactly the recordings of the current train_metadata.csv."""
    marker = cache_dir / "complete.json"
    if not marker.exists():
        return False
    return json.loads(marker.read_text()).get("metadata_digest") == metadata_digest(data_dir)


def ensure_cache(cfg: PreprocessConfig) -> Path:
    """The cache for cfg, built or completed first when it is missing or stale."""
    cache_dir = cache_dir_for(Path(cfg.data_dir), cfg.features, cfg.max_windows_per_recording)
    if cache_is_current(cache_dir, Path(cfg.data_dir)):
        return cache_dir
    print(f"feature cache missing or stale for {cfg.data_dir}: preprocessing first")
    return preprocess(cfg)


# ------------------------------------------------------------------------------ the reader
@dataclass
class FeatureCache:
    """Read side: the committed windows, memory-mapped; no per-window file opens."""

    dir: Path
    features: FeatureConfig
    entries: pd.DataFrame  # status == ok only, indexed by filename
    windows: np.ndarray  # memmap [n_rows, n_mels, n_frames] float16

    @classmethod
    def open(cls, cache_dir: Path) -> "FeatureCache":
        header = json.loads((cache_dir / "features.json").read_text())
        features = FeatureConfig.from_dict(header["features"])
        entries = read_entries(cache_dir)
        entries = entries[entries.status == "ok"].set_index("filename")
        n_rows = int((entries.first_row + entries.n_windows).max()) if len(entries) else 0
        shape = (n_rows, *features.shape)
        windows = (np.memmap(cache_dir / "features.f16", dtype=STORE_DTYPE, mode="r", shape=shape)
                   if n_rows else np.zeros(shape, STORE_DTYPE))
        return cls(cache_dir, features, entries, windows)

    def rows_of(self, filename: str) -> range:
        e = self.entries.loc[filename]
        return range(int(e.first_row), int(e.first_row + e.n_windows))


# ------------------------------------------------------------------------------ CLI
def feature_args(parser: argparse.ArgumentParser) -> None:
    """Feature flags shared by every stage that may have to build the cache."""
    parser.add_argument("--denoise", nargs="?", const="noisereduce", default="none", choices=DENOISE_MODES,
                        help="noise reduction before the mel: none | spectral (fast gate) | noisereduce "
                             "(the library; a bare --denoise)")
    parser.add_argument("--workers", type=int, default=0, help="processes (0: all cores)")
    parser.add_argument("--max-windows", type=int, default=0,
                        help="cache at most this many windows per recording (0: all)")


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    return PreprocessConfig(
        data_dir=Path(args.data), features=FeatureConfig(denoise=args.denoise), workers=args.workers,
        max_windows_per_recording=args.max_windows, progress=not getattr(args, "no_progress", False),
        shard=parse_shard(getattr(args, "shard", None)),
    )


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/n' -> (i, n) with 0 <= i < n."""
    if not text:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise SystemExit(f"error: --shard takes i/n, e.g. 0/4 for the first of four machines; got {text!r}") from None
    if not 0 <= i < n:
        raise SystemExit(f"error: --shard {text}: need 0 <= i < n")
    return i, n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.preprocess", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder in the Kaggle layout")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--shard", metavar="I/N", help="process only share I of N (machines 0/N ... N-1/N); "
                        "a plain run on the machine holding all shard folders merges them")
    feature_args(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    print("config:", json.dumps({**cfg.__dict__, "data_dir": str(cfg.data_dir), "features": cfg.features.to_dict()}))
    preprocess(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
