"""Writing audio safely."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_BLOCK_SAMPLES = 32_000 * 10


def write_ogg(path: str | Path, y: np.ndarray, sample_rate_hz: int) -> None:
    """Write mono float audio as OGG Vorbis, atomically (temp file, then rename).

    Written in blocks through soundfile.SoundFile: libsndfile segfaults when a long OGG Vorbis
    file is written in one soundfile.write call.
    """
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    y = np.clip(np.asarray(y, dtype=np.float32), -1.0, 1.0)
    with sf.SoundFile(str(tmp), "w", samplerate=sample_rate_hz, channels=1, format="OGG", subtype="VORBIS") as f:
        for start in range(0, len(y), _BLOCK_SAMPLES):
            f.write(y[start : start + _BLOCK_SAMPLES])
    os.replace(tmp, path)
