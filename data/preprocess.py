"""`make preprocess`: every training recording -> cached 5-s feature windows.

The cache, one folder per dataset and feature fingerprint (data/cache/<name>/<fingerprint>/):

    features.json   FeatureConfig, window shape and dtype
    features.f16    raw float16 rows of [n_mels, n_frames], memory-mappable
    entries.csv     the index: one line per recording (filename,status,first_row,n_windows,detail)
    complete.json   written when every recording of train_metadata.csv has an entry (and one at least
                    decoded: a run where none did is refused, NoReadableAudioError)

A recording that cannot become features is committed as skipped (or missing) with the reason in
`detail`; one kept in part (a truncated Ogg file, pages dropped for a bad checksum) is ok with a
note there. Before anything is written, the cache's size is estimated from the files' headers and
a run that would not fit on its disk is refused (DiskSpaceError).

entries.csv is the commit log. A recording's feature rows are written first and its line is
appended after, so a killed run leaves at worst rows past the last committed line; the next run
truncates them and carries on. Workers decode and compute; only the parent process writes.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data.features import (DENOISE_MODES, FEATURES_VERSION, AudioError, FeatureConfig, audio_seconds,
                           audio_to_features, load_finite_audio, n_windows)
from data.layout import LayoutError, metadata_path, read_metadata
from data.paths import Workspace, free_bytes, human_bytes, refuse_unwritable

ENTRY_FIELDS = ["filename", "status", "first_row", "n_windows", "detail"]
STORE_DTYPE = np.float16


class PreprocessError(RuntimeError):
    """A refusal that says what to do: the command-line entry points print it, not a traceback."""


class DiskSpaceError(PreprocessError):
    """The cache would not fit on its disk: refused before anything is written."""


class NoReadableAudioError(PreprocessError):
    """Not one recording decoded: there is nothing to train on, and the cause is the data, not a file."""


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
    return hashlib.sha256(metadata_path(data_dir).read_bytes()).hexdigest()[:16]


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
        self._entries = open(self.dir / "entries.csv", "a", newline="", encoding="utf-8")

    def _write_header(self) -> None:
        header = {"version": FEATURES_VERSION, "features": self.features.to_dict(),
                  "window_shape": list(self.features.shape), "dtype": np.dtype(STORE_DTYPE).name}
        path = self.dir / "features.json"
        if path.exists():
            old = json.loads(path.read_text())
            if old != header:
                raise PreprocessError(f"{path} describes other features than this run: {old} vs {header}. "
                                   "Delete the folder to rebuild it.")
            return
        _atomic_write_text(path, json.dumps(header, indent=2))

    def _recover(self) -> tuple[set[str], int]:
        """Committed recordings and rows, ignoring a torn last line."""
        path = self.dir / "entries.csv"
        if not path.exists():
            path.write_text(",".join(ENTRY_FIELDS) + "\n", encoding="utf-8")
            return set(), 0
        text = path.read_text(encoding="utf-8")
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
        raise PreprocessError(f"another preprocess is writing {path.parent} right now; wait for it to finish") from None
    return f


def read_entries(cache_dir: Path) -> pd.DataFrame:
    return pd.read_csv(cache_dir / "entries.csv", keep_default_na=False, encoding="utf-8",
                       dtype={"filename": str, "status": str, "first_row": np.int64, "n_windows": np.int64, "detail": str})


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ the workers
def _worker_init() -> None:
    # One BLAS/FFT thread per process: the pool already uses every core.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _featurise(job: tuple[str, str, FeatureConfig, int]) -> tuple[str, str, np.ndarray | None, str]:
    """data.features.file_to_features, plus a note when the file decodes shorter than it should."""
    filename, path, features, max_windows = job
    try:
        y = load_finite_audio(path, features.sample_rate_hz)
        feats = audio_to_features(y, features)
    except AudioError as e:
        return filename, "skipped", None, str(e)
    except Exception as e:  # a decoder crash on one file must not stop the whole run
        return filename, "skipped", None, f"{type(e).__name__}: {e}"
    try:
        note = decode_note(Path(path), len(y) / features.sample_rate_hz)
    except Exception:  # the note is a courtesy: never the reason to lose a recording
        note = ""
    if max_windows:
        feats = feats[:max_windows]
    return filename, "ok", feats.astype(STORE_DTYPE), note


def decode_note(path: Path, decoded_s: float) -> str:
    """'' for a file that decoded whole; else what was kept of a truncated or damaged one."""
    ogg = ogg_ending(path)
    if ogg is not None:
        cut_short, end_s = ogg
        if cut_short:
            return f"truncated Ogg stream (no end-of-stream page): kept the {decoded_s:.1f} s that decode"
    else:
        end_s = audio_seconds(path)
    if end_s and end_s - decoded_s > max(0.5, 0.02 * end_s):
        return f"damaged: decoded {decoded_s:.1f} s of the {end_s:.1f} s the file holds"
    return ""


def ogg_ending(path: Path) -> tuple[bool, float | None] | None:
    """For an Ogg file: (cut short, seconds at its last page). Cut short: the last page is cut
    off or lacks the end-of-stream flag, as an interrupted download or copy leaves it. The
    seconds come from the last page's granule position and the Vorbis (or Opus) rate; None when
    unknown. libsndfile decodes such files without complaint, up to the cut or around pages
    that fail their checksum. None for a file that is not Ogg."""
    with open(path, "rb") as f:
        head = f.read(4096)
        if not head.startswith(b"OggS"):
            return None
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - 65_536))  # an Ogg page is at most 65,307 bytes
        tail = f.read()
    rate = None
    body = head[27 + head[26]:] if len(head) > 27 else b""
    if body.startswith(b"\x01vorbis") and len(body) >= 16:
        rate = int.from_bytes(body[12:16], "little")
    elif body.startswith(b"OpusHead"):
        rate = 48_000  # Opus granule positions count 48 kHz samples
    i = tail.rfind(b"OggS\x00")
    while i >= 0:  # the last page is the one that ends exactly at the end of the file
        n_segments = tail[i + 26] if i + 27 <= len(tail) else None
        if n_segments is not None and i + 27 + n_segments <= len(tail):
            end = i + 27 + n_segments + sum(tail[i + 27 : i + 27 + n_segments])
            if end == len(tail):
                granule = int.from_bytes(tail[i + 6 : i + 14], "little", signed=True)
                seconds = granule / rate if rate and granule > 0 else None
                return (not tail[i + 5] & 0x04), seconds
        i = tail.rfind(b"OggS\x00", 0, i)
    return True, None  # the file ends inside a page


# ------------------------------------------------------------------------------ disk space
def estimate_cache_bytes(data_dir: Path, filenames: list[str], features: FeatureConfig,
                         max_windows: int = 0) -> tuple[int, int]:
    """(bytes, windows) the cache will add for these recordings, from their headers' durations
    (no decoding): 5-s windows as data.features.n_windows counts them, capped at max_windows,
    each a float16 [n_mels, n_frames] row. A file whose header cannot be read counts one window."""
    audio_root = Path(data_dir) / "train_audio"

    def windows_of(filename: str) -> int:
        path = audio_root / filename
        if not path.is_file():
            return 0
        try:
            import soundfile as sf

            info = sf.info(str(path))
            if info.frames <= 0:
                return 0
            n = n_windows(math.ceil(info.frames * features.sample_rate_hz / info.samplerate), features)
        except Exception:
            n = 1
        return min(n, max_windows) if max_windows else n

    with ThreadPoolExecutor(8) as pool:  # header reads wait on the disk, not the CPU
        windows = sum(pool.map(windows_of, filenames))
    row_bytes = int(np.prod(features.shape)) * np.dtype(STORE_DTYPE).itemsize
    return windows * row_bytes, windows


def check_disk_space(cache_dir: Path, data_dir: Path, pending: list[str], cfg: "PreprocessConfig") -> None:
    """Refuse, before writing anything, a run whose cache would not fit on its disk."""
    if not pending:
        return
    needed, windows = estimate_cache_bytes(data_dir, pending, cfg.features, cfg.max_windows_per_recording)
    available = free_bytes(cache_dir)
    if needed > available:
        raise DiskSpaceError(
            f"not enough free disk space for the feature cache {cache_dir}: need {human_bytes(needed)} ({needed} bytes) "
            f"for {windows} windows of {len(pending)} recordings, have {human_bytes(available)} ({available} bytes).\n"
            "  Free some space, or set BIRDKIT_ROOT to a disk with more room (training reads the cache of every window)."
        )


def _committed(cache_dir: Path) -> set[str]:
    """Recordings already in a cache folder's journal (read only; empty when unreadable)."""
    try:
        return set(read_entries(cache_dir).filename) if (cache_dir / "entries.csv").exists() else set()
    except Exception:  # a torn last line: count everything as still to do
        return set()


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
    todo = _shard_of(list(meta.filename), cfg.shard)
    done = _committed(cache_dir)
    check_disk_space(cache_dir, data_dir, [f for f in todo if f not in done], cfg)
    writer = CacheWriter(cache_dir, cfg.features)
    try:
        if cfg.shard is None:
            merge_shards(writer, main_dir)
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


MERGED_SHARDS = ".merged"  # under <cache>/shards/: merged shard folders on their way out


def merge_shards(writer: CacheWriter, main_dir: Path) -> None:
    """Append the recordings of finished shard folders the main cache lacks, then drop them."""
    shutil.rmtree(main_dir / "shards" / MERGED_SHARDS, ignore_errors=True)  # a drop a kill cut short
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
        _drop_merged(shard_dir)


def _drop_merged(shard_dir: Path) -> None:
    """Move the shard out of the way in one rename, then delete it. Deleted in place, a kill
    between its features.f16 and its complete.json (a big file's unlink is the slow step) left
    a shard that still said complete without its windows, and every later run failed on it."""
    trash = shard_dir.parent / MERGED_SHARDS
    trash.mkdir(exist_ok=True)
    shard_dir.rename(trash / shard_dir.name)
    shutil.rmtree(trash)


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
        from threadpoolctl import threadpool_limits

        # In this very process: one thread while it featurises (as a pool worker would), and the
        # caller's threads back after it. `make train` goes on to train in this process; left at
        # one thread it trained slower, and not bit for bit as a run that found the cache built.
        with threadpool_limits(1):
            yield from map(_featurise, jobs)
        return
    # forkserver: children start clean even when the parent already holds torch's threads.
    ctx = mp.get_context("forkserver")
    with ctx.Pool(workers, initializer=_worker_init) as pool:
        yield from pool.imap_unordered(_featurise, jobs, chunksize=1)


def _finish(cache_dir: Path, data_dir: Path, meta: pd.DataFrame, seconds: float, windows_done: int,
            shard: tuple[int, int] | None = None) -> None:
    """Report the run; mark the cache complete unless not one recording of a whole run decoded."""
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
    _print_summary(cache_dir, summary, ok, bad, seconds, windows_done)
    if shard is None and len(bad) and not len(ok):  # a shard may be unlucky; the merged whole may not
        raise NoReadableAudioError(nothing_readable(data_dir, cache_dir, bad))
    _atomic_write_text(cache_dir / "complete.json", json.dumps(summary, indent=2))


def _print_summary(cache_dir: Path, summary: dict, ok: pd.DataFrame, bad: pd.DataFrame, seconds: float,
                   windows_done: int) -> None:
    rate = f", {windows_done / seconds:.1f} windows/s" if seconds > 0 and windows_done else ""
    print(f"preprocess: {summary['ok']} recordings -> {summary['windows']} windows cached{rate}")
    noted = ok[ok.detail != ""]
    for rows, what in ((bad, "skipped"), (noted, "cached in part")):
        if len(rows):
            print(f"preprocess: {len(rows)} recording(s) {what}:")
            for r in rows.head(20).itertuples():
                print(f"  {r.status:8s} {r.filename}: {r.detail}")
            if len(rows) > 20:
                print(f"  ... and {len(rows) - 20} more in {cache_dir / 'entries.csv'}")


def nothing_readable(data_dir: Path, cache_dir: Path, bad: pd.DataFrame) -> str:
    """The refusal when every recording failed. Their failures are committed to the journal, so
    a rerun would not retry them: the fixed files need a fresh cache."""
    missing = int((bad.status == "missing").sum())
    if missing == len(bad):
        return none_found(data_dir, cache_dir, list(bad.filename))
    of_them = f", {missing} of them missing" if missing else ""
    return (f"all {len(bad)} recordings of {data_dir} are unreadable{of_them} (reasons in {cache_dir / 'entries.csv'}), "
            f"so there is nothing to train on: check the files under {data_dir / 'train_audio'} (an interrupted copy "
            f"or unzip? `make data` checks a download), then delete {cache_dir} and rerun")


def none_found(data_dir: Path, cache_dir: Path, filenames: list[str]) -> str:
    """Not one named file exists: most likely the filename column is not relative to
    train_audio/, the way Kaggle writes it (<primary_label>/<file>.ogg)."""
    audio = data_dir / "train_audio"
    first = filenames[0]
    found = next((p for p in audio.rglob(Path(first).name) if p.is_file()), None) if audio.is_dir() else None
    where = f" ({found.relative_to(audio)} is there)" if found else ""
    return (f"none of the {len(filenames)} files that {data_dir}'s metadata names exists under {audio} (the first: "
            f"{first}{where}): the filename column is relative to train_audio/, <primary_label>/<file>.ogg in "
            f"Kaggle's data. Fix the column or put the files there, then delete {cache_dir} and rerun")


def cache_is_current(cache_dir: Path, data_dir: Path) -> bool:
    """True when the cache covers exactly the recordings of the current metadata (train_metadata.csv or train.csv)."""
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
    for flag, value, zero in (("--workers", args.workers, "all cores"), ("--max-windows", args.max_windows, "all")):
        if value < 0:
            raise SystemExit(f"error: {flag} must be >= 0 (0: {zero}), got {value}")
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


@refuse_unwritable
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
    try:
        preprocess(cfg)
    except (LayoutError, PreprocessError) as e:  # refusals say what to do; no stack trace
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
