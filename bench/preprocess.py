"""`make bench-preprocess`: speed of decode + denoise + mel per core, for each denoise mode.

For each FeatureConfig.denoise mode (none, spectral, noisereduce), in a fresh child process per
mode (so that one mode's memory and caches do not pollute another's), with one BLAS/FFT thread:

  - seconds of audio processed per second of one core ("x real time"), decode + denoise + mel +
    scaling, the median over --repeats passes over the input set;
  - the per-stage split: decode (load_audio), denoise, mel (STFT + mel + scaling). The spectral
    gate runs inside the mel's STFT pass, so its denoise column is its features' time minus the
    plain features' time on the same audio in the same process; noisereduce's is the library call;
  - time relative to "none", and the child's peak RSS (high-water mark) with its working
    memory above the baseline after imports and warm-up;
  - a projection for the whole BirdCLEF 2024 train set on 16 cores (an estimate: see
    TRAIN_SET_* below; it assumes one process per core that scales perfectly);
  - one 4-minute soundscape (48 windows): seconds per soundscape per stage, against the target
    of <= 0.5 s (>= 480x real time per core).

Input: --data DIR in the Kaggle layout (default ../shared/realbirds when present): its
unlabeled soundscapes (2025: train_soundscapes/) plus an even sample of train_audio, --files in
all; the 4-minute soundscape is its unlabeled soundscapes end to end, re-encoded as OGG. Without
such data (or with --synthetic) a synthetic soundscape (noise + chirps, OGG) is both. Results also go to
bench/out/preprocess.json (under BIRDKIT_ROOT when set).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data.layout import UNLABELED_SOUNDSCAPE_DIRS, unlabeled_soundscapes
from data.paths import REPO, output_root

if TYPE_CHECKING:  # annotations only: the audio stack is imported where it is used, as before
    from data.features import FeatureConfig

MODES = ("none", "spectral", "noisereduce")
DEFAULT_DATA = REPO.parent / "shared" / "realbirds"
SOUNDSCAPE_S = 240.0  # Kaggle's test soundscapes: 4 minutes, 48 windows
TARGET_S_PER_SOUNDSCAPE = 0.5
# BirdCLEF 2024 train_audio, for the projection. The count is the competition's
# train_metadata.csv; the total duration is an ESTIMATE (not measured here), override it with
# --train-hours when you know better.
TRAIN_SET_RECORDINGS = 24_459
TRAIN_SET_HOURS_ESTIMATE = 270.0
PROJECTION_CORES = 16


# ------------------------------------------------------------------------------ inputs
def synthetic_soundscape(seconds: float, sample_rate_hz: int = 32_000, seed: int = 0) -> np.ndarray:
    """Coloured background noise with bird-like chirps (tone sweeps) every few seconds."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate_hz))
    white = rng.standard_normal(n).astype(np.float32)
    noise = np.cumsum(white) * 0.002  # brown-ish rumble...
    noise -= np.convolve(noise, np.ones(4000, np.float32) / 4000, mode="same")  # ...without drift
    y = 0.02 * white + 0.5 * noise.astype(np.float32)
    t = np.arange(int(0.4 * sample_rate_hz)) / sample_rate_hz
    for start_s in np.arange(0.5, max(seconds - 0.5, 0.5), 2.5):
        f0 = rng.uniform(1500, 7000)
        chirp = np.sin(2 * np.pi * (f0 * t + rng.uniform(-2000, 2000) * t**2)) * np.hanning(len(t))
        i = int((start_s + rng.uniform(0, 1.5)) * sample_rate_hz)
        seg = y[i : i + len(t)]
        seg += (rng.uniform(0.05, 0.3) * chirp[: len(seg)]).astype(np.float32)
    return (0.5 * y / max(float(np.abs(y).max()), 1e-6)).astype(np.float32)


def pick_files(data_dir: Path, n_files: int) -> list[Path]:
    """The unlabeled soundscapes, then train_audio evenly sampled, n_files in all."""
    scapes = unlabeled_soundscapes(data_dir)[:n_files]
    recordings = sorted((data_dir / "train_audio").glob("*/*.ogg"))
    k = max(0, n_files - len(scapes))
    if k and recordings:
        idx = np.unique(np.linspace(0, len(recordings) - 1, min(k, len(recordings))).round().astype(int))
        scapes += [recordings[i] for i in idx]
    return scapes


def build_soundscape(files: list[Path], seconds: float, out: Path, sample_rate_hz: int = 32_000) -> Path:
    """files end to end (repeated as needed), cut to `seconds`, written as OGG Vorbis."""
    from data.audio_io import write_ogg
    from data.features import load_audio

    need, parts, total = int(round(seconds * sample_rate_hz)), [], 0
    while total < need:
        for f in files:
            y = load_audio(f, sample_rate_hz)
            parts.append(y)
            total += len(y)
            if total >= need:
                break
    write_ogg(out, np.concatenate(parts)[:need], sample_rate_hz)
    return out


# ------------------------------------------------------------------------------ one mode, in a child
def _rss_status() -> dict[str, float]:
    """Current and peak resident memory in MiB (Linux /proc; peak from getrusage elsewhere)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    except OSError:
        pass
    if "VmHWM" not in out:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["VmHWM"] = peak / 1024 / (1024 if sys.platform == "darwin" else 1)
        out.setdefault("VmRSS", out["VmHWM"])
    return out


def _reset_peak_rss() -> bool:
    """Restart the high-water mark at the current RSS (Linux >= 4.0), so imports don't count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _time_one(path: str, mode: str, cfg: FeatureConfig, plain: FeatureConfig) -> tuple[float, float, float, float]:
    """(audio seconds, decode, denoise, mel) for one file: cfg denoises as `mode` says, plain does not."""
    from data.features import audio_to_features, denoise, load_audio

    sr = cfg.sample_rate_hz
    t0 = time.perf_counter()
    y = load_audio(path, sr)
    t1 = time.perf_counter()
    if mode == "noisereduce":
        clean = denoise(y, cfg)
        t2 = time.perf_counter()
        audio_to_features(clean, plain)
        t3 = time.perf_counter()
        return len(y) / sr, t1 - t0, t2 - t1, t3 - t2
    if mode == "spectral":  # the gate is fused into the mel pass: denoise = the extra time
        audio_to_features(y, cfg)
        t2 = time.perf_counter()
        audio_to_features(y, plain)
        t3 = time.perf_counter()
        return len(y) / sr, t1 - t0, (t2 - t1) - (t3 - t2), t3 - t2
    audio_to_features(y, plain)
    t2 = time.perf_counter()
    return len(y) / sr, t1 - t0, 0.0, t2 - t1


def measure_mode(mode: str, files: list[str], soundscape: str, repeats: int) -> dict:
    """Runs in a fresh process: time decode/denoise/mel of every file, `repeats` times."""
    from threadpoolctl import threadpool_limits

    from data.features import FeatureConfig

    threadpool_limits(1)
    cfg, plain = FeatureConfig(denoise=mode), FeatureConfig()

    def one(path: str) -> tuple[float, float, float, float]:
        return _time_one(path, mode, cfg, plain)

    one(soundscape)  # warm-up: imports, FFT plans, buffers
    baseline = _rss_status()["VmRSS"]
    peak_reset = _reset_peak_rss()
    passes, scape = [], []
    for _ in range(repeats):
        per_file = np.array([one(f) for f in files])  # [files, (audio, decode, denoise, mel)]
        passes.append(per_file.sum(axis=0))
        scape.append(one(soundscape))
    peak = _rss_status()["VmHWM"]
    return {"mode": mode, "passes": [list(map(float, p)) for p in passes],
            "soundscape": [list(map(float, s)) for s in scape],
            "rss_baseline_mib": baseline, "rss_peak_mib": peak, "peak_excludes_imports": peak_reset}


def _windows(seconds: float) -> int:
    from data.features import FeatureConfig, n_windows

    cfg = FeatureConfig()
    return n_windows(int(round(seconds * cfg.sample_rate_hz)), cfg)


def _in_child(mode: str, files: list[str], soundscape: str, repeats: int) -> dict:
    ctx = mp.get_context("spawn")  # a fresh interpreter: nothing inherited, honest peak memory
    pool = ctx.Pool(1)
    try:
        return pool.apply(measure_mode, (mode, files, soundscape, repeats))
    finally:
        pool.close()  # let the child exit normally (terminate() would leak joblib's semaphores)
        pool.join()


# ------------------------------------------------------------------------------ summary
def summarise(raw: dict, train_hours: float) -> dict:
    stages = ("decode", "denoise", "mel")
    passes = np.array(raw["passes"])  # [repeats, (audio, decode, denoise, mel)]
    audio_s = float(passes[0, 0])
    totals = passes[:, 1:].sum(axis=1)
    total = float(np.median(totals))
    rt = audio_s / total
    scape = np.array(raw["soundscape"])
    s_tot = scape[:, 1:].sum(axis=1)
    return {
        "mode": raw["mode"],
        "audio_s": audio_s,
        "x_real_time_per_core": rt,
        "x_real_time_per_repeat": [audio_s / t for t in totals],
        "seconds": {**{s: float(np.median(passes[:, 1 + i])) for i, s in enumerate(stages)}, "total": total},
        "rss_peak_mib": raw["rss_peak_mib"],
        "rss_working_mib": raw["rss_peak_mib"] - raw["rss_baseline_mib"] if raw["peak_excludes_imports"] else None,
        "train_set_projection_h": train_hours * 3600 / (rt * PROJECTION_CORES) / 3600,
        "soundscape": {
            "audio_s": float(scape[0, 0]),
            "seconds": {**{s: float(np.median(scape[:, 1 + i])) for i, s in enumerate(stages)},
                        "total": float(np.median(s_tot))},
        },
    }


def _none_total(rows: list[dict], key) -> float | None:
    """key(row) of the "none" mode, the baseline the "vs none" columns divide by (None: not timed)."""
    return next((key(r) for r in rows if r["mode"] == "none"), None)


def _input_set_table(report: dict) -> list[str]:
    rows = report["modes"]
    none_total = _none_total(rows, lambda r: r["seconds"]["total"])
    inp = report["input"]
    lines = [
        f"bench-preprocess: {inp['n_files']} file(s), {inp['audio_s']:.1f} s of audio ({inp['source']}); "
        f"median of {report['repeats']} repeat(s); one process per mode, 1 BLAS/FFT thread",
        "",
        f"{'mode':<12} {'x real time':>11} {'decode s':>9} {'denoise s':>9} {'mel s':>7} {'total s':>8} "
        f"{'vs none':>8} {'peak RSS':>9} {'working':>8} {'train set, 16 cores*':>21}",
    ]
    for r in rows:
        s = r["seconds"]
        ratio = f"{s['total'] / none_total:.2f}x" if none_total else "-"
        working = f"{r['rss_working_mib']:.0f} MiB" if r["rss_working_mib"] is not None else "-"
        lines.append(
            f"{r['mode']:<12} {r['x_real_time_per_core']:>10.0f}x {s['decode']:>9.3f} {s['denoise']:>9.3f} "
            f"{s['mel']:>7.3f} {s['total']:>8.3f} {ratio:>8} {r['rss_peak_mib']:>5.0f} MiB {working:>8} "
            f"{r['train_set_projection_h'] * 60:>15.1f} min")
    return lines


def _soundscape_table(report: dict) -> list[str]:
    rows = report["modes"]
    none_scape = _none_total(rows, lambda r: r["soundscape"]["seconds"]["total"])
    sc = rows[0]["soundscape"]["audio_s"]
    lines = [
        "",
        f"one {sc:g}-s soundscape ({report['soundscape_windows']} windows), seconds per soundscape; "
        f"target: <= {TARGET_S_PER_SOUNDSCAPE} s per {SOUNDSCAPE_S:g} s",
        f"{'mode':<12} {'decode':>8} {'denoise':>8} {'mel':>8} {'total':>8} {'vs none':>8} {'x real time':>11} "
        f"{'target':>7}",
    ]
    for r in rows:
        s = r["soundscape"]["seconds"]
        ratio = f"{s['total'] / none_scape:.2f}x" if none_scape else "-"
        lines.append(f"{r['mode']:<12} {s['decode']:>8.3f} {s['denoise']:>8.3f} {s['mel']:>8.3f} {s['total']:>8.3f} "
                     f"{ratio:>8} {sc / s['total']:>10.0f}x {'met' if r['soundscape']['meets_target'] else 'missed':>7}")
    return lines


def render(report: dict) -> str:
    lines = _input_set_table(report) + _soundscape_table(report) + [
        "",
        f"* estimate: {TRAIN_SET_RECORDINGS:,} recordings, ~{report['train_hours']:.0f} h of audio (assumed, "
        f"--train-hours), {PROJECTION_CORES} processes scaling perfectly at this machine's per-core speed.",
        "  spectral's denoise = its features' time minus the plain features' time (the gate shares the mel's STFT).",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ CLI
@dataclass(frozen=True)
class BenchInput:
    """What every mode times: the input set, the one-soundscape file, and a line naming their source."""
    files: list[Path]
    soundscape: Path
    source: str


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.preprocess", description=__doc__.split("\n")[0],
                                epilog="Writes bench/out/preprocess.json. See the module docstring for definitions.")
    p.add_argument("--data", type=Path, default=None,
                   help=f"dataset in the Kaggle layout (default: {DEFAULT_DATA} when present, else synthetic)")
    p.add_argument("--synthetic", action="store_true", help="use a synthetic soundscape even when data exists")
    p.add_argument("--files", type=int, default=24,
                   help="files in the input set: the unlabeled soundscapes, then a train_audio sample (default 24)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes; medians are reported (default 3)")
    p.add_argument("--soundscape-seconds", type=float, default=SOUNDSCAPE_S,
                   help="length of the one-soundscape row, and of the synthetic input (default 240)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated denoise modes (default: all)")
    p.add_argument("--train-hours", type=float, default=TRAIN_SET_HOURS_ESTIMATE,
                   help=f"train-set duration for the projection (default {TRAIN_SET_HOURS_ESTIMATE:.0f}, an estimate)")
    p.add_argument("--out", type=Path, default=None, help="JSON results (default: bench/out/preprocess.json)")
    return p


def _checked(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list[str], Path | None]:
    """The modes to time and the data folder (None: synthetic); p.error (exit 2) on a bad option."""
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = sorted(set(modes) - set(MODES))
    if bad or not modes:
        p.error(f"--modes: unknown {bad}; choose from {', '.join(MODES)}")
    if args.files < 1 or args.repeats < 1 or args.soundscape_seconds <= 0:
        p.error("--files, --repeats and --soundscape-seconds must be positive")
    data = args.data if args.data is not None else (DEFAULT_DATA if DEFAULT_DATA.is_dir() else None)
    if args.data is not None and not args.data.is_dir():
        p.error(f"--data {args.data}: no such folder")
    return modes, data


def _real_input(data: Path, files: list[Path], seconds: float, tmp: Path) -> BenchInput:
    """files from data; the soundscape row is its unlabeled soundscapes end to end (else the files)."""
    scapes = unlabeled_soundscapes(data) or files
    soundscape = build_soundscape(scapes, seconds, tmp / "soundscape.ogg")
    n_scapes = sum(1 for f in files if f.parent.name in UNLABELED_SOUNDSCAPE_DIRS)
    source = (f"{data}: {n_scapes} unlabeled soundscape(s) + {len(files) - n_scapes} train_audio "
              f"recording(s); soundscape row: its unlabeled soundscapes end to end")
    return BenchInput(files, soundscape, source)


def _synthetic_input(seconds: float, tmp: Path) -> BenchInput:
    """One synthetic soundscape, both the input set and the soundscape row."""
    from data.audio_io import write_ogg

    soundscape = tmp / "synthetic.ogg"
    write_ogg(soundscape, synthetic_soundscape(seconds), 32_000)
    return BenchInput([soundscape], soundscape, f"synthetic {seconds:g}-s soundscape (noise + chirps, OGG)")


def _bench_input(args: argparse.Namespace, data: Path | None, tmp: Path) -> BenchInput:
    files = [] if args.synthetic or data is None else pick_files(data, args.files)
    if files:
        return _real_input(data, files, args.soundscape_seconds, tmp)
    return _synthetic_input(args.soundscape_seconds, tmp)


def _measure_all(modes: list[str], inp: BenchInput, repeats: int) -> list[dict]:
    raws = []
    for mode in modes:
        print(f"bench-preprocess: measuring denoise={mode} ...", flush=True)
        raws.append(_in_child(mode, [str(f) for f in inp.files], str(inp.soundscape), repeats))
    return raws


def _compare_to_none(modes_out: list[dict]) -> None:
    """Adds each mode's time relative to "none" and whether its soundscape meets the target."""
    none = next((m for m in modes_out if m["mode"] == "none"), None)
    for m in modes_out:
        m["time_vs_none"] = m["seconds"]["total"] / none["seconds"]["total"] if none else None
        m["soundscape"]["meets_target"] = (
            m["soundscape"]["seconds"]["total"] * SOUNDSCAPE_S / m["soundscape"]["audio_s"] <= TARGET_S_PER_SOUNDSCAPE)


def build_report(raws: list[dict], args: argparse.Namespace, inp: BenchInput) -> dict:
    modes_out = [summarise(r, args.train_hours) for r in raws]
    _compare_to_none(modes_out)
    return {
        "input": {"source": inp.source, "n_files": len(inp.files), "audio_s": modes_out[0]["audio_s"]},
        "repeats": args.repeats,
        "train_hours": args.train_hours,
        "assumptions": {"train_set_recordings": TRAIN_SET_RECORDINGS, "train_set_hours": args.train_hours,
                        "train_set_hours_is_estimate": True, "cores": PROJECTION_CORES,
                        "threads_per_process": 1, "target_s_per_240s_soundscape": TARGET_S_PER_SOUNDSCAPE},
        "soundscape_windows": _windows(modes_out[0]["soundscape"]["audio_s"]),
        "modes": modes_out,
    }


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    modes, data = _checked(p, args)
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        inp = _bench_input(args, data, Path(tmp))
        raws = _measure_all(modes, inp, args.repeats)
    report = build_report(raws, args, inp)
    print()
    print(render(report))
    out = args.out or output_root() / "bench" / "out" / "preprocess.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
