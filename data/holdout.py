"""`make holdout`: labelled soundscapes built from recordings that training never sees, as long as
the competition's hidden test ones (4 minutes; 2025: 1; 2023: 10).

    python -m data.holdout --data DIR [--seed 0] [--fraction 0.15] [--soundscapes N] [--duration-s S]

Kaggle ships no labelled soundscapes, so this makes some. The method:

1. The recordings: exactly `data.split.holdout_recordings(meta, fraction, seed)`, the function
   training calls to remove them (train.data.make_splits), with training's defaults
   (fraction 0.15, seed 0). Rare classes (fewer than 3 recordings) keep all their recordings
   for training, so they have none here and cannot be scored.
2. Where the calls are: `detect_activity`, an energy detector. STFT power (512-sample Hann
   frames, 10-ms hop) in the band 150 Hz-12 kHz, smoothed over 50 ms and 3 bins, is divided
   bin by bin by that bin's noise floor (its 20th percentile over the recording): this
   "whitening" makes steady coloured noise (wind rumble, hiss, steady insect tones) flat, so
   a low-pitched call (owl, dove, cuckoo) counts as much as a high one. A frame's activity is
   its loudest bin re its floor (the maximum, not the sum: a narrow whistle is not diluted by
   the bins it does not touch); frames more than `margin_db` (8 dB) above the recording's
   own activity floor (again its 20th percentile) are active. Active runs closer than 0.3 s
   are merged (the notes of one phrase) and runs shorter than 0.1 s dropped. A recording
   where nothing stands out (a call all the way through: the floor is the call) counts as
   one call from start to end. Checked by eye on the spectrograms of realbirds' held-out
   recordings: segments cover the calls, with reverberation tails of up to ~0.3 s.
3. Mixing: each recording's active segments (a long recording: a `max_clip_s` excerpt that
   starts at a random call) are cut out with 50-ms padding and 20-ms fades, so the
   recording's own noise between calls does not come along, and placed at a random time in a
   soundscape, its gap structure kept. One SNR per placed recording, drawn uniformly from
   `snr_db`: the band power of its calls over the band power of the background under them.
   The background is one of the dataset's unlabeled soundscapes (2025: train_soundscapes),
   looped with crossfades from a random offset to fill the length (pink noise when the dataset
   has none). Recordings are
   spread over the soundscapes so each holds about `fill` (half) of its length in clips:
   several species, overlapping. By default there are just enough soundscapes to use every
   held-out recording once.
4. Labels: every placed segment is a labels.CallEvent of the recording's primary label, and
   the solution comes from labels.window_labels, the kit's one labelling rule.

Outputs (written to a temporary sibling folder, then renamed into place):
    data/holdout/<dataset>/test_soundscapes/soundscape_<6 digits>.ogg   32 kHz mono
    data/holdout/<dataset>/solution.csv     Kaggle's solution format, class_list columns
    data/holdout/<dataset>/holdout.json     recordings mixed in, parameters, every event

Limits, which make the score a proxy, not Kaggle's:
- Labels are the detector's: faint call parts below the threshold go unlabelled, and other
  birds audible in a recording's active parts are labelled with its primary label (secondary
  labels are not labelled: where they call is unknown).
- The unlabeled soundscapes are real recordings: birds calling in them, held-out species
  included, are not labelled.
- Clips come from focal recordings (close, clean calls), levelled by an SNR, not by distance.

Determinism: the split, the plan and each soundscape draw from generators seeded by `seed`,
so the same data and parameters give the same solution.csv and holdout.json (the OGG bytes
differ: Ogg stream serial numbers are random).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data.audio_io import write_ogg
from data.features import AudioError, FeatureConfig, audio_seconds, load_audio
from data.labels import CallEvent, solution_frame, window_labels
from data.layout import class_list, competition_soundscape_s, read_metadata, unlabeled_soundscapes
from data.paths import Workspace, refuse_unwritable
from data.split import holdout_recordings

SAMPLE_RATE_HZ = FeatureConfig().sample_rate_hz
WINDOW_S = FeatureConfig().window_s

# Streams of the seeded generators: [seed, stream, ...].
_PLAN, _SOUNDSCAPE = 1, 2


# ------------------------------------------------------------------------------ the detector
@dataclass(frozen=True)
class DetectorConfig:
    band_low_hz: float = 150.0  # above handling noise and most rumble, below owls and doves
    band_high_hz: float = 12_000.0
    n_fft: int = 512  # 16 ms at 32 kHz: fine in time; coarse bins favour narrow-band calls
    hop_s: float = 0.01
    floor_percentile: float = 20.0  # the noise floor: most recordings are silent >20% of the time
    margin_db: float = 8.0  # above the floor: tails and distant birds mostly stay out
    smooth_s: float = 0.05
    merge_gap_s: float = 0.3  # notes of one phrase, syllables of a trill
    min_segment_s: float = 0.1
    floor_rel_db: float = -50.0  # floor of the noise floor, re the mean power: digital silence


def _band_power_frames(y: np.ndarray, sample_rate_hz: int, cfg: DetectorConfig) -> np.ndarray:
    """[n_frames, n_band_bins] STFT power; frame i is centred at i * hop. Chunked: a 10-min
    recording never holds more than a few MB of frames at once."""
    hop = max(1, int(round(cfg.hop_s * sample_rate_hz)))
    freqs_hz = np.fft.rfftfreq(cfg.n_fft, 1 / sample_rate_hz)
    band = (freqs_hz >= cfg.band_low_hz) & (freqs_hz <= cfg.band_high_hz)
    padded = np.pad(np.asarray(y, np.float32), cfg.n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, cfg.n_fft)[::hop]
    window = np.hanning(cfg.n_fft).astype(np.float32)
    n_frames = 1 + len(y) // hop
    out = np.empty((n_frames, int(band.sum())), np.float32)
    for start in range(0, n_frames, 4096):
        chunk = np.fft.rfft(frames[start:start + 4096] * window, axis=1)[:, band]
        out[start:start + len(chunk)] = chunk.real ** 2 + chunk.imag ** 2
    return out


def activity_db(y: np.ndarray, sample_rate_hz: int, cfg: DetectorConfig = DetectorConfig()) -> np.ndarray:
    """[n_frames] the loudest band bin relative to its own noise floor, in dB.

    The power is smoothed over smooth_s and 3 bins (so that the noise barely fluctuates) and
    divided bin by bin by the bin's floor percentile (whitening: steady coloured noise becomes
    flat). The maximum over bins, rather than the sum, keeps a narrow-band whistle from being
    diluted by the hundreds of bins it does not touch."""
    from scipy.ndimage import uniform_filter

    power = _band_power_frames(y, sample_rate_hz, cfg)
    k = max(1, int(round(cfg.smooth_s / cfg.hop_s)))
    power = uniform_filter(power, size=(k, 3), mode="nearest")
    floor_abs = float(power.mean()) * 10 ** (cfg.floor_rel_db / 10) + 1e-30
    floor = np.maximum(np.percentile(power, cfg.floor_percentile, axis=0), floor_abs)
    return 10 * np.log10((power / floor).max(axis=1))


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of the True runs of a boolean array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _merge_close(starts_s: np.ndarray, ends_s: np.ndarray, gap_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Join segments whose gap is shorter than gap_s (vectorised: a new group starts at each
    gap >= gap_s)."""
    if len(starts_s) == 0:
        return starts_s, ends_s
    new_group = np.concatenate([[True], starts_s[1:] - ends_s[:-1] >= gap_s])
    return starts_s[new_group], np.maximum.reduceat(ends_s, np.flatnonzero(new_group))


def detect_activity(y: np.ndarray, sample_rate_hz: int = SAMPLE_RATE_HZ,
                    cfg: DetectorConfig = DetectorConfig()) -> list[tuple[float, float]]:
    """[(start_s, end_s)] of the calls in y, sorted; [] when nothing stands out of the floor."""
    duration_s = len(y) / sample_rate_hz
    if len(y) < cfg.n_fft:
        return []
    act_db = activity_db(y, sample_rate_hz, cfg)
    active = act_db > np.percentile(act_db, cfg.floor_percentile) + cfg.margin_db
    first, last = _runs(active)
    # Frame i stands for [i - 1/2, i + 1/2) hops.
    starts_s = np.clip((first - 0.5) * cfg.hop_s, 0, duration_s)
    ends_s = np.clip((last - 0.5) * cfg.hop_s, 0, duration_s)
    starts_s, ends_s = _merge_close(starts_s, ends_s, cfg.merge_gap_s)
    keep = ends_s - starts_s >= cfg.min_segment_s
    return [(float(s), float(e)) for s, e in zip(starts_s[keep], ends_s[keep])]


def call_segments(y: np.ndarray, sample_rate_hz: int = SAMPLE_RATE_HZ,
                  cfg: DetectorConfig = DetectorConfig()) -> list[tuple[float, float]]:
    """detect_activity, or the whole recording when nothing stands out: a recording is
    labelled with its species, so the species is in it somewhere."""
    return detect_activity(y, sample_rate_hz, cfg) or [(0.0, len(y) / sample_rate_hz)]


# ------------------------------------------------------------------------------ signals
def band_power(y: np.ndarray, sample_rate_hz: int = SAMPLE_RATE_HZ, low_hz: float = 150.0,
               high_hz: float = 12_000.0) -> float:
    """Mean power of y within [low_hz, high_hz] (Parseval on one FFT): the SNR's band, so that
    rumble in a recording or a background does not count as call or noise."""
    if len(y) == 0:
        return 0.0
    spectrum = np.fft.rfft(np.asarray(y, np.float64))
    freqs_hz = np.fft.rfftfreq(len(y), 1 / sample_rate_hz)
    band = (freqs_hz >= low_hz) & (freqs_hz <= high_hz)
    return float(2 * np.sum(np.abs(spectrum[band]) ** 2) / len(y) ** 2)


def pink_noise(n_samples: int, rng: np.random.Generator, rms: float = 0.01) -> np.ndarray:
    """Noise with power ~ 1/f above 50 Hz, at the given RMS (-40 dBFS: a quiet site)."""
    n_bins = n_samples // 2 + 1
    spectrum = (rng.standard_normal(n_bins) + 1j * rng.standard_normal(n_bins)).astype(np.complex64)
    freqs_hz = np.fft.rfftfreq(n_samples, 1 / SAMPLE_RATE_HZ)
    spectrum *= np.where(freqs_hz >= 50, 1 / np.sqrt(np.maximum(freqs_hz, 50)), 0).astype(np.float32)
    y = np.fft.irfft(spectrum, n_samples).astype(np.float32)
    return y * np.float32(rms / (np.sqrt(np.mean(y.astype(np.float64) ** 2)) + 1e-20))


def loop_to_length(y: np.ndarray, n_samples: int, offset: int, fade_samples: int) -> np.ndarray:
    """y repeated from sample `offset` on to n_samples, each repeat joined with an
    equal-power crossfade (the loop point does not click, the level does not dip)."""
    fade = int(min(fade_samples, len(y) // 4))
    step = len(y) - fade
    n_copies = math.ceil((offset + n_samples) / step) + 1
    if len(y) >= offset + n_samples:
        return np.asarray(y[offset:offset + n_samples], np.float32)
    gain = np.ones(len(y), np.float32)
    if fade:
        ramp = np.sin(0.5 * np.pi * (np.arange(fade) + 0.5) / fade).astype(np.float32)
        gain[:fade], gain[-fade:] = ramp, ramp[::-1]
    out = np.zeros(step * n_copies + fade, np.float32)
    for k in range(n_copies):
        out[k * step:k * step + len(y)] += y * gain
    if fade:  # the first copy has nothing to cross-fade from: no fade-in at the very start
        out[:fade] = y[:fade]
    return out[offset:offset + n_samples]


def segment_mask(n_samples: int, segments: list[tuple[float, float]], pad_s: float = 0.05,
                 fade_s: float = 0.02) -> np.ndarray:
    """1 over the (padded) segments, 0 elsewhere, with linear fades: cuts the calls out of
    their recording without clicks."""
    mask = np.zeros(n_samples, np.float32)
    fade = max(1, int(fade_s * SAMPLE_RATE_HZ))
    ramp = (np.arange(1, fade + 1) / (fade + 1)).astype(np.float32)
    for start_s, end_s in segments:
        a = max(0, int((start_s - pad_s) * SAMPLE_RATE_HZ))
        b = min(n_samples, int(math.ceil((end_s + pad_s) * SAMPLE_RATE_HZ)))
        piece = np.ones(b - a, np.float32)
        n = min(fade, (b - a) // 2)
        if n:
            piece[:n] = ramp[:n]
            piece[-n:] = ramp[:n][::-1]
        mask[a:b] = np.maximum(mask[a:b], piece)
    return mask


# ------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class HoldoutConfig:
    seed: int = 0
    fraction: float = 0.15  # train.config.TrainConfig.holdout_fraction
    n_soundscapes: int | None = None  # None: enough to use every held-out recording once
    duration_s: float = 240.0  # 2024's; `make holdout` and like_existing take the competition's
    snr_db: tuple[float, float] = (-5.0, 15.0)
    max_clip_s: float = 30.0  # longer recordings contribute an excerpt
    fill: float = 0.5  # clip seconds per soundscape second

    @classmethod
    def like_existing(cls, data_dir: Path, seed: int, fraction: float,
                      competition: str | None = None) -> "HoldoutConfig":
        """seed and fraction with the other settings of data_dir's current hold-out (HOLDOUT_ARGS:
        soundscapes, duration, SNR...), so a rebuild changes only which recordings it mixes; with
        none yet, `make holdout`'s defaults (the length of the competition's test soundscapes:
        `competition`, else the one data_dir's name says)."""
        path = Workspace.of(data_dir).holdout_dir / "holdout.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        kept = {k: old[k] for k in ("n_soundscapes", "duration_s", "max_clip_s", "fill") if k in old}
        kept.setdefault("duration_s", competition_soundscape_s(data_dir, competition))
        if "snr_db" in old:
            kept["snr_db"] = tuple(old["snr_db"])
        return cls(seed=seed, fraction=fraction, **kept)

    def __post_init__(self):
        n_windows = self.duration_s / WINDOW_S
        if self.duration_s <= 0 or abs(n_windows - round(n_windows)) > 1e-9:
            raise ValueError(f"duration_s must be a positive multiple of {WINDOW_S} s, got {self.duration_s}")
        if self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"snr_db range is empty: {self.snr_db}")
        if self.n_soundscapes is not None and self.n_soundscapes < 1:
            raise ValueError(f"n_soundscapes must be >= 1, got {self.n_soundscapes}")
        if self.fill <= 0 or self.max_clip_s <= 0:
            raise ValueError("fill and max_clip_s must be positive")

    @property
    def clip_budget_s(self) -> float:
        return self.fill * self.duration_s

    @property
    def clip_limit_s(self) -> float:
        return min(self.max_clip_s, self.duration_s)


def default_soundscape_count(clip_s: list[float], cfg: HoldoutConfig) -> int:
    """Just enough soundscapes to use every recording once at the fill density, at least 1."""
    return max(1, math.ceil(sum(clip_s) / cfg.clip_budget_s - 1e-9))


def assign_recordings(clip_s: list[float], n_soundscapes: int, budget_s: float,
                      rng: np.random.Generator) -> list[list[int]]:
    """Recording indices per soundscape: in a seeded random order, each to the least-filled
    soundscape not holding it yet, until every soundscape holds budget_s. One pass over the
    recordings when they fit, more passes (re-using them) when more soundscapes were asked."""
    fill_s = np.zeros(n_soundscapes)
    chosen: list[list[int]] = [[] for _ in range(n_soundscapes)]
    passes = max(1, int(n_soundscapes * budget_s / max(sum(clip_s), 1e-9)))
    for _ in range(passes):
        for i in rng.permutation(len(clip_s)):
            free = np.array([i not in c for c in chosen])
            if fill_s.min() >= budget_s or not free.any():
                return chosen
            k = int(np.argmin(np.where(free, fill_s, np.inf)))
            chosen[k].append(int(i))
            fill_s[k] += clip_s[i]
    return chosen


def soundscape_stems(n: int, rng: np.random.Generator) -> list[str]:
    """Unique soundscape_<6 digits> names, never 000000 (sample_submission's)."""
    ids = rng.choice(np.arange(1, 1_000_000), size=n, replace=False)
    return [f"soundscape_{int(i):06d}" for i in ids]


# ------------------------------------------------------------------------------ one soundscape
@dataclass
class Placement:
    source: str
    label: str
    start_s: float  # where the clip starts in the soundscape
    excerpt_start_s: float  # where the clip starts in its recording
    clip_s: float
    snr_db: float
    events: list[CallEvent] = field(default_factory=list)


def background_track(files: list[Path], n_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """An unlabeled soundscape looped from a random offset, or pink noise when there is none
    (or none is readable and audible). Returns the track and where it came from."""
    for k in rng.permutation(len(files)):
        try:
            y = load_audio(files[k], SAMPLE_RATE_HZ)
        except AudioError:
            continue
        y = np.nan_to_num(y)
        if len(y) >= SAMPLE_RATE_HZ and float(np.mean(np.square(y, dtype=np.float64))) > 1e-12:
            offset = int(rng.integers(0, len(y)))
            return loop_to_length(y, n_samples, offset, fade_samples=SAMPLE_RATE_HZ // 2), files[k].name
    return pink_noise(n_samples, rng), "pink noise"


def excerpt(segments: list[tuple[float, float]], duration_s: float, limit_s: float,
            rng: np.random.Generator) -> tuple[float, float]:
    """(start_s, end_s) of the part of a recording to use: all of it when short enough, else
    limit_s seconds from the start of a random call (the excerpt begins with a call)."""
    if duration_s <= limit_s:
        return 0.0, duration_s
    start_s = min(segments[int(rng.integers(len(segments)))][0], duration_s - limit_s)
    return start_s, start_s + limit_s


def _clip_segments(segments, start_s: float, end_s: float, min_s: float) -> list[tuple[float, float]]:
    """The segments within [start_s, end_s), relative to start_s; tiny cut-off ends dropped."""
    out = [(max(a, start_s) - start_s, min(b, end_s) - start_s) for a, b in segments]
    return [(a, b) for a, b in out if b - a >= min_s]


def _calls_power(clip: np.ndarray, segments: list[tuple[float, float]]) -> float:
    """Band power over the calls only: the gaps between them are no part of their loudness."""
    if not segments:
        return 0.0
    return band_power(np.concatenate([clip[int(a * SAMPLE_RATE_HZ):int(b * SAMPLE_RATE_HZ)] for a, b in segments]))


def place_recording(track: np.ndarray, background: np.ndarray, y: np.ndarray, source: str, label: str,
                    cfg: HoldoutConfig, rng: np.random.Generator) -> Placement | None:
    """Mix one recording's calls into track; None when it has no audible call."""
    y = np.nan_to_num(y)
    duration_s = len(y) / SAMPLE_RATE_HZ
    segments = call_segments(y)
    ex_start_s, ex_end_s = excerpt(segments, duration_s, cfg.clip_limit_s, rng)
    clip = y[int(ex_start_s * SAMPLE_RATE_HZ):int(ex_end_s * SAMPLE_RATE_HZ)]
    clip_segments = _clip_segments(segments, ex_start_s, ex_end_s, DetectorConfig().min_segment_s)
    call_power = _calls_power(clip, clip_segments)
    if call_power <= 1e-12:
        return None
    start = int(rng.integers(0, len(track) - len(clip) + 1))
    local_power = max(band_power(background[start:start + len(clip)]), 1e-12)
    snr_db = float(rng.uniform(*cfg.snr_db))
    gain = math.sqrt(local_power * 10 ** (snr_db / 10) / call_power)
    track[start:start + len(clip)] += clip * segment_mask(len(clip), clip_segments) * np.float32(gain)
    start_s = start / SAMPLE_RATE_HZ
    # Rounded to the millisecond here, so that holdout.json reproduces the labels exactly.
    events = [CallEvent(label, round(start_s + a, 3), round(start_s + b, 3)) for a, b in clip_segments]
    return Placement(source, label, round(start_s, 3), round(ex_start_s, 3), round(len(clip) / SAMPLE_RATE_HZ, 3),
                     round(snr_db, 2), events)


def build_soundscape(index: int, recordings: list[tuple[str, str]], audio_root: Path, background_files: list[Path],
                     cfg: HoldoutConfig) -> tuple[np.ndarray, str, list[Placement]]:
    """One soundscape: (audio, background name, placements). recordings: (filename, label)."""
    rng = np.random.default_rng([cfg.seed, _SOUNDSCAPE, index])
    n_samples = int(round(cfg.duration_s * SAMPLE_RATE_HZ))
    background, background_name = background_track(background_files, n_samples, rng)
    track = background.copy()
    placements = []
    for filename, label in recordings:
        try:
            y = load_audio(audio_root / filename, SAMPLE_RATE_HZ)
        except AudioError as e:
            print(f"holdout: skipping {filename}: {e}", file=sys.stderr)
            continue
        placed = place_recording(track, background, y, filename, label, cfg, rng)
        if placed is not None:
            placements.append(placed)
    peak = float(np.abs(track).max())
    if peak > 0.95:  # one gain for everything: the SNRs stay as drawn
        track *= np.float32(0.95 / peak)
    return track, background_name, placements


# ------------------------------------------------------------------------------ the whole set
def _replace_dir(new: Path, target: Path) -> None:
    """Put new in target's place: the old copy is moved aside first, then removed."""
    old = target.parent / f".{target.name}.holdout-old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _plan(meta: pd.DataFrame, held: list[str], audio_root: Path, cfg: HoldoutConfig):
    """([(filename, label)] per soundscape, soundscape stems): the held-out recordings that
    can be read, spread over the soundscapes by their length (from the file headers)."""
    labels = meta.set_index("filename").primary_label
    clip_s, usable = [], []
    for filename in held:
        seconds = audio_seconds(audio_root / filename)
        if seconds:
            usable.append(filename)
            clip_s.append(min(seconds, cfg.clip_limit_s))
        else:
            print(f"holdout: skipping {filename}: missing or unreadable", file=sys.stderr)
    if not usable:
        raise ValueError("no readable held-out recording: classes need >= 3 recordings to hold one out "
                         f"(fraction {cfg.fraction})")
    rng = np.random.default_rng([cfg.seed, _PLAN])
    n = cfg.n_soundscapes or default_soundscape_count(clip_s, cfg)
    groups = assign_recordings(clip_s, n, cfg.clip_budget_s, rng)
    stems = soundscape_stems(n, rng)
    per_scape = [[(usable[i], str(labels[usable[i]])) for i in g] for g in groups]
    return per_scape, stems


def build_holdout(data_dir: Path, cfg: HoldoutConfig = HoldoutConfig(), out_dir: Path | None = None,
                  progress: bool = True) -> dict:
    """Write the held-out soundscapes, solution.csv and holdout.json to out_dir (default: the
    dataset's Workspace.holdout_dir), replacing what was there. Returns the manifest."""
    from tqdm import tqdm

    data_dir = Path(data_dir).expanduser().resolve()
    out_dir = Path(out_dir) if out_dir else Workspace.of(data_dir).holdout_dir
    meta = read_metadata(data_dir)
    classes = class_list(meta)
    held = holdout_recordings(meta, cfg.fraction, cfg.seed)
    audio_root = data_dir / "train_audio"
    per_scape, stems = _plan(meta, held, audio_root, cfg)
    background_files = unlabeled_soundscapes(data_dir)

    tmp = out_dir.parent / f".{out_dir.name}.holdout-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "test_soundscapes").mkdir(parents=True)
    n_windows = int(round(cfg.duration_s / WINDOW_S))
    labels, scapes = {}, {}
    for k in tqdm(range(len(stems)), desc="holdout soundscapes", unit="file", disable=not progress):
        track, background_name, placements = build_soundscape(k, per_scape[k], audio_root, background_files, cfg)
        write_ogg(tmp / "test_soundscapes" / f"{stems[k]}.ogg", track, SAMPLE_RATE_HZ)
        events = [ev for p in placements for ev in p.events]
        labels[stems[k]] = window_labels(events, n_windows, classes, WINDOW_S)
        scapes[stems[k]] = (background_name, placements)
    solution_frame(labels, classes, WINDOW_S).to_csv(tmp / "solution.csv", index=False)
    held_classes = set(meta.primary_label[meta.filename.isin(held)])
    manifest = _manifest(data_dir, cfg, held, [c for c in classes if c not in held_classes], scapes)
    (tmp / "holdout.json").write_text(json.dumps(manifest, indent=2) + "\n")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _replace_dir(tmp, out_dir)
    return manifest


def _manifest(data_dir: Path, cfg: HoldoutConfig, held: list[str], unscored: list[str], scapes: dict) -> dict:
    used = sorted({p.source for _, placements in scapes.values() for p in placements})
    return {
        "recordings": used,  # mixed into the soundscapes: submission.score checks none was trained on
        "held_out": held,  # data.split.holdout_recordings(meta, fraction, seed)
        "classes_without_holdout": unscored,  # rare classes: all their recordings train, none is scored
        "seed": cfg.seed, "fraction": cfg.fraction, "n_soundscapes": cfg.n_soundscapes, "snr_db": list(cfg.snr_db),
        "duration_s": cfg.duration_s,
        "max_clip_s": cfg.max_clip_s, "fill": cfg.fill, "data_dir": str(data_dir),
        "detector": asdict(DetectorConfig()),
        "backgrounds": {stem: bg for stem, (bg, _) in sorted(scapes.items())},
        "placements": {stem: [{k: v for k, v in asdict(p).items() if k != "events"} for p in placements]
                       for stem, (_, placements) in sorted(scapes.items())},
        "events": {stem: [{"label": ev.label, "start_s": ev.start_s, "end_s": ev.end_s, "source": p.source}
                          for p in placements for ev in p.events]
                   for stem, (_, placements) in sorted(scapes.items())},
    }


def format_report(manifest: dict, solution: pd.DataFrame, classes: list[str], seconds: float, out_dir: Path) -> str:
    unscored = manifest["classes_without_holdout"]
    positives = solution[classes].sum()
    scored = ", ".join(f"{c} {int(positives[c])}" for c in classes if c not in unscored)
    backgrounds = sorted(set(manifest["backgrounds"].values()))
    lines = [
        f"holdout: {len(manifest['recordings'])} of {len(manifest['held_out'])} held-out recordings mixed into "
        f"{len(manifest['events'])} soundscape(s) of {manifest['duration_s']:.0f} s in {out_dir} ({seconds:.1f} s)",
        f"  backgrounds: {', '.join(backgrounds)}",
        f"  positive windows per class: {scored}",
        f"  {len(unscored)} class(es) with no held-out recording (too few recordings; not scorable): "
        + (", ".join(unscored) if unscored else "none"),
    ]
    if "pink noise" in backgrounds:
        lines.insert(2, "  (no usable unlabeled soundscapes in unlabeled_soundscapes/ or 2025's train_soundscapes/: "
                        "backgrounds are generated pink noise)")
    return "\n".join(lines)


@refuse_unwritable
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data.holdout",
        description="Build labelled soundscapes, as long as the competition's test ones, from the "
                    "recordings training holds out (data.split.holdout_recordings): calls found by an "
                    "energy detector, mixed over unlabeled soundscape backgrounds, labelled in Kaggle's "
                    "solution format.",
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder in the Kaggle layout")
    p.add_argument("--seed", type=int, default=0, help="split and mixing seed; train with the same one (default 0)")
    p.add_argument("--fraction", type=float, default=0.15,
                   help="share of each class's recordings held out; train's --holdout-fraction (default 0.15)")
    p.add_argument("--soundscapes", type=int, default=None,
                   help="number of soundscapes (default: enough to use every held-out recording once)")
    p.add_argument("--duration-s", type=float, default=None,
                   help="soundscape length, a multiple of 5 s (default: the competition's test soundscapes: "
                        "60 for birdclef-2025, 600 for birdclef-2023, else 240)")
    p.add_argument("--competition", help="the Kaggle competition whose test soundscapes to imitate (default: the "
                                         "--data folder's name where it is one, e.g. data/birdclef-2025)")
    p.add_argument("--snr-db-min", type=float, default=-5.0, help="lowest call SNR in dB (default -5)")
    p.add_argument("--snr-db-max", type=float, default=15.0, help="highest call SNR in dB (default 15)")
    p.add_argument("--max-clip-s", type=float, default=30.0, help="longest excerpt of one recording (default 30)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    started = time.perf_counter()
    try:
        if args.duration_s is None:
            args.duration_s = competition_soundscape_s(args.data, args.competition)
        cfg = HoldoutConfig(seed=args.seed, fraction=args.fraction, n_soundscapes=args.soundscapes,
                            duration_s=args.duration_s, snr_db=(args.snr_db_min, args.snr_db_max),
                            max_clip_s=args.max_clip_s)
        print("config:", json.dumps(asdict(cfg)))
        out_dir = Workspace.of(args.data).holdout_dir
        manifest = build_holdout(args.data, cfg, out_dir, progress=not args.quiet)
    except ValueError as e:  # LayoutError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    solution = pd.read_csv(out_dir / "solution.csv")
    classes = [c for c in solution.columns if c != "row_id"]
    print(format_report(manifest, solution, classes, time.perf_counter() - started, out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
