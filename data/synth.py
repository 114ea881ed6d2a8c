"""A deterministic synthetic bird-sound dataset in the Kaggle BirdCLEF 2024 layout.

    python -m data.synth --out data/sample --seed 0

writes `out/` (train_audio, train_metadata.csv, eBird_Taxonomy_v2021.csv, sample_submission.csv,
unlabeled_soundscapes, test_soundscapes) and, BESIDE it, `out_solution.csv`: the test
soundscapes' labels in Kaggle's solution format (never inside the dataset, as on Kaggle).

The species
-----------
Each species is a parametric call model: a note SHAPE drawn in a FREQUENCY BAND, repeated with
a RHYTHM (note length, gap between notes, notes per phrase). The catalogue is built in pairs so
that neither the band nor the shape alone tells species apart:

    code     shape                         band (kHz)   rhythm
    risswe1  upward sweep                  2.0-4.0      2-4 notes of 0.30 s, 0.12 s apart
    falswe1  downward sweep                2.0-4.0      same rhythm and band as risswe1
    sptril1  trill (short falling notes)   5.0-5.6      20-40 notes of 30 ms, ~15 notes/s
    lotril1  trill (short falling notes)   2.2-2.6      same shape and rhythm, lower band
    rincoo1  harmonic stack (coo)          0.45-0.55 f0 2-3 notes of 0.5 s, harmonics to 5 f0
    chewar1  chevron (up then down)        6.0-8.0      3-6 notes of 0.20 s
    buzgna1  buzz (70 Hz AM tone)          6.8-7.2      1-2 notes of 0.8 s, band of chewar1
    syncro1  noise burst (caw)             0.9-2.2      2-4 bursts of 0.35 s
    sinwar1  sinusoidal-FM warble          2.5-3.5      1-2 notes of 1.2 s, 9 Hz FM
    feebee1  two-note "fee-bee"            3.4-4.2      fee (high) then bee (low), 1-2 times
    drumwo1  click train (drumming)        1.0-6.0      12-30 clicks of 4 ms, 18 clicks/s
    alpswe1  downward sweep                6.5-8.5      falswe1's shape in chewar1's band

More species than the catalogue (up to MAX_SPECIES) are variants of it with the band scaled
(code digit 2, 3, 4: e.g. risswe2 sweeps 1.4-2.8 kHz).

Per recording the pitch (+-8 %), note length and timing (+-15 %), and phrase amplitude vary;
several phrases are separated by gaps; background noise (pink-to-brown, with faint random tones
and sometimes a faint unlisted call of another species) is mixed at an SNR of 0-25 dB; some
recordings hold a quieter call of another species (6-15 dB down), listed in secondary_labels.
Soundscapes hold 3-6 species calling in bouts at random times, overlapping, each call at its own
SNR (-5 to 20 dB) over a background whose level drifts (+-6 dB). Every phrase placed in a
soundscape is a labels.CallEvent, and the solution comes from labels.window_labels, the kit's
one labelling rule.

Determinism: every file gets its own generator seeded by (seed, kind, index), so the same seed
and parameters give byte-identical CSVs and identical decoded audio (the OGG bytes themselves
differ: the Ogg stream serial number is random), and adding a soundscape changes no recording.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from data.audio_io import write_ogg
from data.labels import CallEvent, solution_frame, window_labels
from data.layout import METADATA_COLUMNS

# Bump when the generated data changes for the same parameters: an older folder is regenerated.
SYNTH_VERSION = 1

SAMPLE_RATE_HZ = 32_000  # Kaggle's BirdCLEF audio rate
WINDOW_S = 5.0  # Kaggle scores 5-s windows
SAMPLE_SUBMISSION_S = 240.0  # Kaggle's sample_submission covers one 4-minute soundscape
TAXONOMY_COLUMNS = [
    "TAXON_ORDER", "CATEGORY", "SPECIES_CODE", "PRIMARY_COM_NAME", "SCI_NAME", "ORDER1", "FAMILY",
    "SPECIES_GROUP", "REPORT_AS",
]

# Streams of the per-file generators: [seed, stream, ...] seeds one file.
_RECORDING, _UNLABELED, _TEST, _IDS = 1, 2, 3, 4
_KIND = {_RECORDING: "recording", _UNLABELED: "unlabeled", _TEST: "test"}


@dataclass(frozen=True)
class Species:
    """One call model: `shape` notes within [low_hz, high_hz], `notes` per phrase."""

    code: str
    common_name: str
    scientific_name: str
    shape: str
    low_hz: float
    high_hz: float
    note_s: float
    gap_s: float
    notes: tuple[int, int]  # inclusive range of notes per phrase
    call_types: tuple[str, ...]


CATALOGUE = [
    Species("risswe1", "Rising Sweeper", "Synthornis ascendens", "up", 2000, 4000, 0.30, 0.12, (2, 4), ("call",)),
    Species("falswe1", "Falling Sweeper", "Synthornis descendens", "down", 2000, 4000, 0.30, 0.12, (2, 4), ("call",)),
    Species("sptril1", "Spotted Triller", "Trillula maculata", "trill", 5000, 5600, 0.03, 0.035, (20, 40), ("song",)),
    Species("lotril1", "Low Triller", "Trillula gravis", "trill", 2200, 2600, 0.03, 0.035, (20, 40), ("song",)),
    Species("rincoo1", "Ring Cooer", "Columbina synthetica", "coo", 450, 550, 0.50, 0.25, (2, 3), ("call", "song")),
    Species("chewar1", "Chevron Warbler", "Phylloscopus chevron", "chevron", 6000, 8000, 0.20, 0.10, (3, 6), ("call",)),
    Species("buzgna1", "Buzzy Gnatcatcher", "Polioptila bombyx", "buzz", 6800, 7200, 0.80, 0.30, (1, 2), ("call",)),
    Species("syncro1", "Synthetic Crow", "Corvus artificialis", "caw", 900, 2200, 0.35, 0.25, (2, 4), ("call",)),
    Species("sinwar1", "Sine Warbler", "Sylvia sinusoidalis", "warble", 2500, 3500, 1.20, 0.30, (1, 2), ("song",)),
    Species("feebee1", "Fee-bee Chickadee", "Poecile duotonus", "feebee", 3400, 4200, 0.35, 0.08, (2, 4), ("song",)),
    Species("drumwo1", "Drumming Woodpecker", "Dendrocopos tympanum", "drum", 1000, 6000, 0.004, 0.052, (12, 30), ("drumming",)),
    Species("alpswe1", "Alpine Sweeper", "Synthornis alpina", "down", 6500, 8500, 0.30, 0.12, (2, 4), ("call",)),
]
# Band scale and names of the variants beyond the catalogue (code digit 1, 2, 3, 4).
_VARIANTS = [(1.0, "", ""), (0.7, "Lesser ", " minor"), (1.4, "Greater ", " major"), (0.55, "Dusky ", " obscura")]
MAX_SPECIES = len(CATALOGUE) * len(_VARIANTS)

# Harmonic amplitudes of tonal notes: birds' whistles are nearly pure, a coo is rich.
_HARMONICS = {"coo": (1.0, 0.6, 0.4, 0.25, 0.15)}
_DEFAULT_HARMONICS = (1.0, 0.12)


def species_list(n_species: int) -> list[Species]:
    """The first n_species models, sorted by code (the class order)."""
    if not 1 <= n_species <= MAX_SPECIES:
        raise ValueError(f"n_species must be in 1..{MAX_SPECIES}, got {n_species}")
    chosen = []
    for k in range(n_species):
        base = CATALOGUE[k % len(CATALOGUE)]
        scale, name_prefix, subspecies = _VARIANTS[k // len(CATALOGUE)]
        chosen.append(replace(
            base,
            code=f"{base.code[:-1]}{k // len(CATALOGUE) + 1}",
            common_name=name_prefix + base.common_name,
            scientific_name=base.scientific_name + subspecies,
            low_hz=base.low_hz * scale,
            high_hz=base.high_hz * scale,
        ))
    return sorted(chosen, key=lambda s: s.code)


# ---------------------------------------------------------------------------------------------
# Sound: notes, phrases, noise


def _envelope(n_samples: int, ramp_s: float = 0.01) -> np.ndarray:
    """Raised-cosine attack and release, so that notes do not click at their edges."""
    ramp = max(1, min(int(ramp_s * SAMPLE_RATE_HZ), n_samples // 4))
    env = np.ones(n_samples)
    edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    env[:ramp] = edge
    env[n_samples - ramp:] = np.minimum(env[n_samples - ramp:], edge[::-1])
    return env


def _fast_fft_len(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: an FFT of a length with a large prime factor is many
    times slower (a 17.3-s recording is 553,600 samples = 2^7 5^2 173)."""
    best = 1 << max(0, (n - 1).bit_length())
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35 << max(0, (-(-n // power35) - 1).bit_length())  # times a power of 2
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best


def _shaped_noise(n_samples: int, gain_of_hz, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with the amplitude spectrum gain_of_hz(freq_hz), unit RMS, float32.

    Drawn directly in the frequency domain (white Gaussian noise has i.i.d. complex Gaussian
    bins), which skips a forward FFT, at a fast FFT length, then cropped."""
    n_fft = _fast_fft_len(n_samples)
    n_bins = n_fft // 2 + 1
    spectrum = np.empty(n_bins, dtype=np.complex64)
    spectrum.real = rng.standard_normal(n_bins, dtype=np.float32)
    spectrum.imag = rng.standard_normal(n_bins, dtype=np.float32)
    spectrum *= gain_of_hz(np.fft.rfftfreq(n_fft, 1 / SAMPLE_RATE_HZ).astype(np.float32))
    y = np.fft.irfft(spectrum, n_fft)[:n_samples]
    return y / (np.sqrt(np.mean(np.square(y, dtype=np.float64))) + 1e-12).astype(np.float32)


def _band_noise(n_samples: int, low_hz: float, high_hz: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with nothing outside [low_hz, high_hz], unit RMS."""
    return _shaped_noise(n_samples, lambda f_hz: ((f_hz >= low_hz) & (f_hz <= high_hz)).astype(np.float32), rng)


def _tone(freq_hz: np.ndarray, harmonics: tuple[float, ...]) -> np.ndarray:
    """A tone following the instantaneous frequency contour freq_hz, with harmonics that stay
    below 15 kHz (above that they would alias or fall outside the features' band)."""
    phase = 2 * np.pi * np.cumsum(freq_hz) / SAMPLE_RATE_HZ
    y = np.zeros_like(freq_hz)
    for h, amp in enumerate(harmonics, start=1):
        if h * freq_hz.max() < 15_000:
            y += amp * np.sin(h * phase)
    return y


def _note(sp: Species, index: int, duration_s: float, pitch: float, rng: np.random.Generator) -> np.ndarray:
    """One note of species sp: its shape drawn in its band (scaled by pitch)."""
    n = max(8, int(duration_s * SAMPLE_RATE_HZ))
    u = np.arange(n) / n  # position within the note, 0..1
    lo_hz, hi_hz = sp.low_hz * pitch, sp.high_hz * pitch
    if sp.shape in ("caw", "drum"):
        y = _band_noise(n, lo_hz, hi_hz, rng)
        # A drum click decays fast; a caw is rough: 25-40 Hz amplitude flutter.
        if sp.shape == "drum":
            return y * np.exp(-u * 5)
        return y * _envelope(n, 0.03) * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(25, 40) * u * duration_s))
    if sp.shape == "up":
        freq_hz = lo_hz * (hi_hz / lo_hz) ** u  # log-frequency glide, as birds sweep
    elif sp.shape in ("down", "trill"):
        freq_hz = hi_hz * (lo_hz / hi_hz) ** u
    elif sp.shape in ("chevron", "coo"):
        freq_hz = lo_hz + (hi_hz - lo_hz) * np.sin(np.pi * u)
    elif sp.shape == "buzz":
        freq_hz = lo_hz + (hi_hz - lo_hz) * u
    elif sp.shape == "warble":
        mid_hz, dev_hz = (lo_hz + hi_hz) / 2, (hi_hz - lo_hz) / 2
        freq_hz = mid_hz + dev_hz * np.sin(2 * np.pi * 9.0 * u * duration_s + rng.uniform(0, 2 * np.pi))
    elif sp.shape == "feebee":
        # "fee" is the high note, "bee" the low one; each droops slightly.
        start_hz = hi_hz if index % 2 == 0 else lo_hz
        freq_hz = start_hz * (1 - 0.03 * u)
    else:
        raise ValueError(f"unknown shape {sp.shape!r}")
    y = _tone(freq_hz, _HARMONICS.get(sp.shape, _DEFAULT_HARMONICS))
    if sp.shape == "buzz":
        y *= (0.5 + 0.5 * np.sin(2 * np.pi * 70.0 * u * duration_s)) ** 2
    return y * _envelope(n, min(0.01, duration_s / 4))


def phrase(sp: Species, rng: np.random.Generator, pitch: float = 1.0, tempo: float = 1.0) -> np.ndarray:
    """One phrase: notes of sp with jittered length and timing, peak 1.

    pitch scales the band, tempo the note lengths and gaps (a bird's individual voice)."""
    n_notes = int(rng.integers(sp.notes[0], sp.notes[1] + 1))
    if sp.shape == "feebee":
        n_notes += n_notes % 2  # fee-bee comes in pairs
    pieces, starts, cursor = [], [], 0
    for i in range(n_notes):
        note_s = sp.note_s * tempo * rng.uniform(0.9, 1.1)
        pieces.append(_note(sp, i, note_s, pitch * rng.uniform(0.99, 1.01), rng))
        starts.append(cursor)
        gap_s = sp.gap_s * tempo * rng.uniform(0.75, 1.25)
        cursor += len(pieces[-1]) + int(gap_s * SAMPLE_RATE_HZ)
    y = np.zeros(starts[-1] + len(pieces[-1]))
    for start, piece in zip(starts, pieces):
        y[start:start + len(piece)] += piece
    return y / (np.abs(y).max() + 1e-12)


def _active_rms(y: np.ndarray) -> float:
    """RMS over the samples that sound: the gaps inside a trill are no part of its loudness."""
    active = np.abs(y) > 1e-3 * (np.abs(y).max() + 1e-12)
    return float(np.sqrt(np.mean(y[active] ** 2))) if active.any() else 0.0


def _coloured_noise(n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Pink-to-brown noise (power ~ 1/f^alpha, alpha 0.7-1.7) above 50 Hz, unit RMS."""
    alpha = np.float32(rng.uniform(0.7, 1.7))
    return _shaped_noise(n_samples, lambda f_hz: np.where(f_hz >= 50, np.maximum(f_hz, 50) ** (-alpha / 2), 0), rng)


def _level_drift(n_samples: int, rng: np.random.Generator, step_s: float = 20.0, spread_db: float = 6.0) -> np.ndarray:
    """A slowly varying gain (+-spread_db, new level every ~step_s), linearly interpolated
    at 10-ms steps (float32, held within a step: far finer than any change it makes)."""
    hold = SAMPLE_RATE_HZ // 100
    n_steps = n_samples // hold + 1
    n_points = max(2, int(n_samples / SAMPLE_RATE_HZ / step_s) + 2)
    points_db = rng.uniform(-spread_db, spread_db, n_points)
    gain = 10 ** (np.interp(np.arange(n_steps), np.linspace(0, n_steps, n_points), points_db) / 20)
    return np.repeat(gain.astype(np.float32), hold)[:n_samples]


def _distractor_tones(n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Faint steady tones (insects, machinery): not birds, so never labelled. Unit-ish level."""
    y = np.zeros(n_samples)
    for _ in range(rng.poisson(n_samples / SAMPLE_RATE_HZ / 10) + 1):
        n = min(n_samples, int(rng.uniform(0.3, 3.0) * SAMPLE_RATE_HZ))
        start = int(rng.integers(0, n_samples - n + 1))
        freq_hz = rng.uniform(800, 10_000) * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * np.arange(n) / SAMPLE_RATE_HZ))
        y[start:start + n] += _tone(freq_hz, (1.0,)) * _envelope(n, 0.05) * 10 ** (rng.uniform(-12, -3) / 20)
    return y


def _background(n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS coloured noise plus faint tones."""
    noise = _coloured_noise(n_samples, rng)
    noise += _distractor_tones(n_samples, rng)
    return noise


def _add(track: np.ndarray, y: np.ndarray, start: int) -> int:
    """Mix y into track at sample start, cropped at the end; returns the samples mixed."""
    n = max(0, min(len(y), len(track) - start))
    track[start:start + n] += y[:n]
    return n


def _normalise(y: np.ndarray, peak: float) -> np.ndarray:
    """Scale to the given peak, so that a file stays within [-1, 1] whatever the SNRs."""
    return (y * (peak / (np.abs(y).max() + 1e-12))).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Files: training recordings and soundscapes


@dataclass
class Recording:
    """One training recording: what goes into train_metadata.csv besides the names."""

    species: Species
    xc_id: int
    duration_s: float
    snr_db: float
    secondary: list[str]
    latitude: float
    longitude: float
    rating: float

    @property
    def filename(self) -> str:
        return f"{self.species.code}/XC{self.xc_id}.ogg"


def _recording_duration_s(index: int, rng: np.random.Generator) -> float:
    """Every fourth recording (index 1, 5, ...) is shorter than a window, as on xeno-canto."""
    return float(rng.uniform(2.0, 4.5) if index % 4 == 1 else rng.uniform(6.0, 25.0))


def _plan_recording(sp: Species, index: int, xc_id: int, others: list[Species], rng: np.random.Generator) -> tuple[Recording, Species | None]:
    """Draw a recording's metadata; the other species it holds quietly, if any."""
    duration_s = _recording_duration_s(index, rng)
    snr_db = float(rng.uniform(0, 25))
    # About a third hold a second species: every fourth (index 2, 6, ...) and some others.
    has_secondary = bool(others) and (index % 4 == 2 or rng.random() < 0.15)
    secondary = others[int(rng.integers(len(others)))] if has_secondary else None
    # Ratings follow the SNR loosely, in Kaggle's half steps; 0 means "not rated".
    rating = float(np.clip(np.round((1 + 4 * snr_db / 25 + rng.normal(0, 0.5)) * 2) / 2, 0, 5))
    lat, lon = _home(sp)
    rec = Recording(
        species=sp, xc_id=xc_id, duration_s=duration_s, snr_db=snr_db,
        secondary=[secondary.code] if secondary else [],
        latitude=round(lat + float(rng.normal(0, 1.5)), 4), longitude=round(lon + float(rng.normal(0, 1.5)), 4),
        rating=rating,
    )
    return rec, secondary


def _home(sp: Species) -> tuple[float, float]:
    """A fixed range centre per species within the Western Ghats (BirdCLEF 2024's region)."""
    h = int(hashlib.sha256(sp.code.encode()).hexdigest()[:8], 16)
    return 8.0 + (h % 1200) / 100, 73.0 + (h // 1200 % 500) / 100


def _recording_audio(rec: Recording, secondary: Species | None, others: list[Species], rng: np.random.Generator) -> np.ndarray:
    """Phrases of the species with gaps, a quieter secondary species, background at rec.snr_db."""
    n = int(rec.duration_s * SAMPLE_RATE_HZ)
    calls = np.zeros(n)
    pitch, tempo = rng.uniform(0.92, 1.08), rng.uniform(0.85, 1.15)  # this bird's voice
    cursor = int(rng.uniform(0, 0.5) * SAMPLE_RATE_HZ)
    while cursor < n:
        y = phrase(rec.species, rng, pitch * rng.uniform(0.98, 1.02), tempo) * rng.uniform(0.6, 1.0)
        cursor += _add(calls, y, cursor) + int(rng.uniform(0.5, 3.0) * SAMPLE_RATE_HZ)
    call_rms = _active_rms(calls)
    noise = _background(n, rng) * np.float32(call_rms / 10 ** (rec.snr_db / 20))
    if secondary is not None:  # 6-15 dB below the primary
        _mix_call(noise, secondary, rng, call_rms / 10 ** (rng.uniform(6, 15) / 20))
    if others and rng.random() < 0.2:  # a faint unlisted bird far away, as in real recordings
        faint = others[int(rng.integers(len(others)))]
        _mix_call(noise, faint, rng, call_rms / 10 ** ((rec.snr_db + rng.uniform(0, 6)) / 20))
    return _normalise(calls + noise, rng.uniform(0.3, 0.9))


def _mix_call(track: np.ndarray, sp: Species, rng: np.random.Generator, rms: float) -> None:
    """One phrase of sp at a random place in track, at the given active RMS."""
    y = phrase(sp, rng, rng.uniform(0.92, 1.08))
    start = int(rng.integers(0, max(1, len(track) - len(y) // 2)))
    _add(track, y * rms / (_active_rms(y) + 1e-12), start)


def _soundscape_audio(duration_s: float, species: list[Species], rng: np.random.Generator) -> tuple[np.ndarray, list[CallEvent]]:
    """Drifting background plus bouts of phrases of each species; every phrase is an event."""
    n = int(round(duration_s * SAMPLE_RATE_HZ))
    drift = _level_drift(n, rng, step_s=20.0, spread_db=6.0)  # wind, rain, a passing stream
    mix, events = _background(n, rng) * drift, []
    for sp in species:
        pitch, tempo = rng.uniform(0.92, 1.08), rng.uniform(0.85, 1.15)
        for _ in range(int(rng.integers(2, 5))):  # bouts: birds call in runs, then fall silent
            # A bout starts early enough for its first phrase to be heard whole.
            cursor = int(rng.uniform(0, max(duration_s - 10.0, duration_s / 2)) * SAMPLE_RATE_HZ)
            for _ in range(int(rng.integers(3, 8))):
                if cursor >= n:
                    break
                y = phrase(sp, rng, pitch * rng.uniform(0.98, 1.02), tempo)
                # Each call's SNR is against the background where it sounds: -5 dB (broadband)
                # still shows a tonal call in its band, faintly; 20 dB is a bird close by.
                gain = drift[cursor] * 10 ** (rng.uniform(-5, 20) / 20) / (_active_rms(y) + 1e-12)
                n_mixed = _add(mix, y * gain, cursor)
                events.append(CallEvent(sp.code, cursor / SAMPLE_RATE_HZ, (cursor + n_mixed) / SAMPLE_RATE_HZ))
                cursor += n_mixed + int(rng.uniform(1.0, 6.0) * SAMPLE_RATE_HZ)
    return _normalise(mix, 0.8), events


def _soundscape_species(species: list[Species], order: np.ndarray, n_soundscapes: int, index: int,
                        rng: np.random.Generator) -> list[Species]:
    """3-6 species, always including this soundscape's share (every n-th) of `order`, one
    shuffle of all species shared by the soundscapes, so that together they hear every class."""
    must = [species[i] for i in order[index::max(1, n_soundscapes)]]
    rest = [s for s in species if s not in must]
    n_extra = max(0, min(len(species), int(rng.integers(3, 7))) - len(must))
    extra = [rest[i] for i in rng.permutation(len(rest))[:n_extra]]
    return sorted(must + extra, key=lambda s: s.code)


# ---------------------------------------------------------------------------------------------
# Tables


def _metadata_frame(recordings: list[Recording]) -> pd.DataFrame:
    rows = [{
        "primary_label": r.species.code,
        "secondary_labels": str(r.secondary),
        "type": str(list(r.species.call_types)),
        "latitude": r.latitude,
        "longitude": r.longitude,
        "scientific_name": r.species.scientific_name,
        "common_name": r.species.common_name,
        "author": "synthetic",
        "license": "CC0",
        "rating": r.rating,
        "url": f"https://example.org/xc/{r.xc_id}",
        "filename": r.filename,
    } for r in sorted(recordings, key=lambda r: r.filename)]
    return pd.DataFrame(rows, columns=METADATA_COLUMNS)


def _taxonomy_frame(species: list[Species]) -> pd.DataFrame:
    rows = [{
        "TAXON_ORDER": 1000 + 10 * i,
        "CATEGORY": "species",
        "SPECIES_CODE": sp.code,
        "PRIMARY_COM_NAME": sp.common_name,
        "SCI_NAME": sp.scientific_name,
        "ORDER1": "Passeriformes",
        "FAMILY": "Synthidae (Synthetic Birds)",
        "SPECIES_GROUP": "Synthetic Birds",
        "REPORT_AS": "",
    } for i, sp in enumerate(species)]
    return pd.DataFrame(rows, columns=TAXONOMY_COLUMNS)


def _sample_submission(classes: list[str]) -> pd.DataFrame:
    """As Kaggle ships it: one fake 4-minute soundscape, every class at 1/n_classes."""
    n_windows = int(SAMPLE_SUBMISSION_S / WINDOW_S)
    frame = pd.DataFrame(np.full((n_windows, len(classes)), 1 / len(classes)), columns=classes)
    frame.insert(0, "row_id", [f"soundscape_000000_{int((i + 1) * WINDOW_S)}" for i in range(n_windows)])
    return frame


# ---------------------------------------------------------------------------------------------
# The dataset


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def solution_path(out_dir: Path) -> Path:
    """Where the test soundscapes' labels go: beside the dataset (data/sample -> data/sample_solution.csv)."""
    return out_dir.parent / f"{out_dir.name}_solution.csv"


def _is_up_to_date(out_dir: Path, params: dict) -> bool:
    """A complete dataset from the same parameters: synth.json matches (it is written last, and
    the folder is renamed into place whole) and the solution beside it is the one generated."""
    try:
        info = json.loads((out_dir / "synth.json").read_text())
        return (info["params"] == params
                and len(list(out_dir.rglob("*.ogg"))) == info["n_audio_files"]
                and _sha256(solution_path(out_dir)) == info["solution_sha256"])
    except (OSError, ValueError, KeyError):
        return False


def _refuse_foreign_folder(out_dir: Path) -> None:
    """Never replace a folder this generator did not write (say, the real competition data)."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "synth.json").is_file():
        raise ValueError(f"{out_dir} exists and is not a synthetic dataset (no synth.json): "
                         "refusing to replace it; choose another --out")


def _draw_ids(rng: np.random.Generator, n_recordings: int, n_soundscapes: int) -> tuple[list[int], list[int]]:
    """Unique XC ids (6 digits) and unique soundscape ids (6 digits, never 0: sample_submission's)."""
    xc = rng.choice(np.arange(100_000, 1_000_000), size=n_recordings, replace=False)
    scapes = rng.choice(np.arange(1, 1_000_000), size=n_soundscapes, replace=False)
    return [int(i) for i in xc], [int(i) for i in scapes]


def _run_jobs(jobs: list, progress: bool) -> list:
    """Synthesis and OGG encoding release the GIL: threads use every core."""
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [f.result() for f in tqdm(futures, desc="synthesising", unit="file", disable=not progress)]


def _check_params(n_species, recordings_per_species, n_test_soundscapes, n_unlabeled, soundscape_s, unlabeled_s) -> None:
    species_list(n_species)  # range check
    if recordings_per_species < 1 or n_test_soundscapes < 0 or n_unlabeled < 0:
        raise ValueError("need recordings_per_species >= 1, n_test_soundscapes >= 0, n_unlabeled >= 0")
    n_windows = soundscape_s / WINDOW_S
    if soundscape_s <= 0 or abs(n_windows - round(n_windows)) > 1e-9:
        raise ValueError(f"soundscape_s must be a positive multiple of {WINDOW_S} s, got {soundscape_s}")
    if unlabeled_s <= 0:
        raise ValueError(f"unlabeled_s must be positive, got {unlabeled_s}")


@dataclass(frozen=True)
class SynthParams:
    """generate()'s parameters; as_json() is what synth.json records and _is_up_to_date compares."""

    seed: int
    n_species: int
    recordings_per_species: int
    n_test_soundscapes: int
    n_unlabeled: int
    soundscape_s: float
    unlabeled_s: float

    def as_json(self) -> dict:
        return {
            "version": SYNTH_VERSION, "seed": self.seed, "n_species": self.n_species,
            "recordings_per_species": self.recordings_per_species, "n_test_soundscapes": self.n_test_soundscapes,
            "n_unlabeled": self.n_unlabeled, "soundscape_s": float(self.soundscape_s),
            "unlabeled_s": float(self.unlabeled_s),
        }


def _fresh_tmp(out_dir: Path) -> Path:
    """An empty staging folder beside out_dir, renamed into place whole once complete."""
    tmp = out_dir.parent / f".{out_dir.name}.synth-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("train_audio", "unlabeled_soundscapes", "test_soundscapes"):
        (tmp / sub).mkdir(parents=True)
    return tmp


def _synthesise(tmp: Path, species: list[Species], p: SynthParams, progress: bool) -> list:
    """Every audio file written under tmp; one ("recording" | "test" | "unlabeled", payload) per file."""
    xc_ids, scape_ids = _draw_ids(np.random.default_rng([p.seed, _IDS]), len(species) * p.recordings_per_species,
                                  p.n_test_soundscapes + p.n_unlabeled)
    test_stems = [f"soundscape_{i:06d}" for i in scape_ids[:p.n_test_soundscapes]]
    unlabeled_stems = [f"soundscape_{i:06d}" for i in scape_ids[p.n_test_soundscapes:]]
    # The long soundscapes first, so that the cores finish together.
    jobs = _soundscape_jobs(tmp / "test_soundscapes", test_stems, species, p.soundscape_s, p.seed, _TEST)
    jobs += _soundscape_jobs(tmp / "unlabeled_soundscapes", unlabeled_stems, species, p.unlabeled_s, p.seed,
                             _UNLABELED)
    jobs += _recording_jobs(tmp, species, p.recordings_per_species, xc_ids, p.seed)
    return _run_jobs(jobs, progress)


def _test_labels(results: list, classes: list[str], soundscape_s: float) -> dict:
    """{stem: [windows, classes] labels} of every test soundscape, from its call events."""
    n_windows = int(round(soundscape_s / WINDOW_S))
    test_labels = {}
    for kind, payload in results:
        if kind == "test":
            stem, events = payload
            test_labels[stem] = window_labels(events, n_windows, classes, WINDOW_S)
    return test_labels


def _write_tables(tmp: Path, out_dir: Path, species: list[Species], recordings: list[Recording], results: list,
                  p: SynthParams) -> Path:
    """The CSVs and synth.json into tmp, the solution beside out_dir; returns the solution's temporary path."""
    classes = [sp.code for sp in species]
    _metadata_frame(recordings).to_csv(tmp / "train_metadata.csv", index=False)
    _taxonomy_frame(species).to_csv(tmp / "eBird_Taxonomy_v2021.csv", index=False)
    _sample_submission(classes).to_csv(tmp / "sample_submission.csv", index=False)
    solution_tmp = out_dir.parent / f".{out_dir.name}_solution.tmp.csv"  # *.csv: ignored by git like the rest
    solution_frame(_test_labels(results, classes, p.soundscape_s), classes, WINDOW_S).to_csv(solution_tmp, index=False)
    info = {"generator": "data.synth", "params": p.as_json(), "classes": classes, "n_audio_files": len(results),
            "solution": solution_path(out_dir).name, "solution_sha256": _sha256(solution_tmp)}
    (tmp / "synth.json").write_text(json.dumps(info, indent=2) + "\n")
    return solution_tmp


def _build(out_dir: Path, p: SynthParams, progress: bool) -> None:
    """Synthesise the dataset in a staging folder, then move it and its solution into place."""
    started = time.perf_counter()
    tmp = _fresh_tmp(out_dir)
    species = species_list(p.n_species)
    results = _synthesise(tmp, species, p, progress)
    recordings = [payload for kind, payload in results if kind == "recording"]
    solution_tmp = _write_tables(tmp, out_dir, species, recordings, results, p)
    _replace_dir(tmp, out_dir)
    os.replace(solution_tmp, solution_path(out_dir))
    total_s = sum(r.duration_s for r in recordings)
    print(f"wrote {out_dir}: {len(species)} species, {len(recordings)} recordings ({total_s / 60:.1f} min), "
          f"{p.n_test_soundscapes} test + {p.n_unlabeled} unlabeled soundscapes, labels in "
          f"{solution_path(out_dir)} ({time.perf_counter() - started:.1f} s)")


def generate(
    out_dir: Path,
    *,
    seed: int = 0,
    n_species: int = 10,
    recordings_per_species: int = 12,
    n_test_soundscapes: int = 3,
    n_unlabeled: int = 2,
    soundscape_s: float = 240.0,
    unlabeled_s: float = 60.0,
    progress: bool = True,
) -> Path:
    """Write the dataset to out_dir and its test labels beside it; a no-op when out_dir already
    holds the dataset of these parameters. Returns out_dir."""
    out_dir = Path(out_dir)
    _check_params(n_species, recordings_per_species, n_test_soundscapes, n_unlabeled, soundscape_s, unlabeled_s)
    p = SynthParams(seed, n_species, recordings_per_species, n_test_soundscapes, n_unlabeled, soundscape_s,
                    unlabeled_s)
    if _is_up_to_date(out_dir, p.as_json()):
        print(f"{out_dir} is up to date (synthetic, seed {seed})")
        return out_dir
    _refuse_foreign_folder(out_dir)
    _build(out_dir, p, progress)
    return out_dir


def _recording_jobs(root: Path, species: list[Species], per_species: int, xc_ids: list[int], seed: int) -> list:
    """One job per training recording: plan, synthesise, write; returns ("recording", Recording)."""
    def job(sp: Species, index: int, xc_id: int, file_seed: list[int]):
        rng = np.random.default_rng(file_seed)
        others = [s for s in species if s is not sp]
        rec, secondary = _plan_recording(sp, index, xc_id, others, rng)
        write_ogg(root / "train_audio" / rec.filename, _recording_audio(rec, secondary, others, rng), SAMPLE_RATE_HZ)
        return "recording", rec

    jobs = []
    for k, sp in enumerate(species):
        for index in range(per_species):
            file_seed = [seed, _RECORDING, k, index]
            xc_id = xc_ids[k * per_species + index]
            jobs.append(lambda sp=sp, index=index, xc_id=xc_id, file_seed=file_seed: job(sp, index, xc_id, file_seed))
    return jobs


def _soundscape_jobs(folder: Path, stems: list[str], species: list[Species], duration_s: float, seed: int, stream: int) -> list:
    """One job per soundscape; returns ("test" or "unlabeled", (stem, events))."""
    order = np.random.default_rng([seed, stream]).permutation(len(species))

    def job(index: int, stem: str):
        rng = np.random.default_rng([seed, stream, index])
        present = _soundscape_species(species, order, len(stems), index, rng)
        y, events = _soundscape_audio(duration_s, present, rng)
        write_ogg(folder / f"{stem}.ogg", y, SAMPLE_RATE_HZ)
        return _KIND[stream], (stem, events)

    return [lambda index=index, stem=stem: job(index, stem) for index, stem in enumerate(stems)]


def _replace_dir(new: Path, target: Path) -> None:
    """Put new in target's place: the old copy is moved aside first, then removed."""
    old = target.parent / f".{target.name}.synth-old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data.synth",
        description="Generate a deterministic synthetic BirdCLEF dataset (Kaggle 2024 layout) and its "
                    "test soundscapes' labels beside it (<out>_solution.csv). A no-op when <out> is up to date.",
    )
    p.add_argument("--out", type=Path, required=True, help="dataset folder to (re)write, e.g. data/sample")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--species", type=int, default=10, help=f"number of species, 1..{MAX_SPECIES} (default 10)")
    p.add_argument("--recordings", type=int, default=12, help="training recordings per species (default 12)")
    p.add_argument("--test-soundscapes", type=int, default=3, help="labelled test soundscapes (default 3)")
    p.add_argument("--unlabeled", type=int, default=2, help="unlabeled soundscapes (default 2)")
    p.add_argument("--soundscape-s", type=float, default=240.0, help="test soundscape length, a multiple of 5 s (default 240)")
    p.add_argument("--unlabeled-s", type=float, default=60.0, help="unlabeled soundscape length in s (default 60)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        generate(args.out, seed=args.seed, n_species=args.species, recordings_per_species=args.recordings,
                 n_test_soundscapes=args.test_soundscapes, n_unlabeled=args.unlabeled,
                 soundscape_s=args.soundscape_s, unlabeled_s=args.unlabeled_s, progress=not args.quiet)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
