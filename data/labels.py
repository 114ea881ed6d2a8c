"""Window labels for soundscapes, in Kaggle's solution format."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# A window counts as positive for a species when at least this much of one of its calls falls
# inside it (or the whole call, for calls shorter than this).
MIN_CALL_OVERLAP_S = 1.0


@dataclass(frozen=True)
class CallEvent:
    """One call (or phrase) of one species placed in a soundscape."""

    label: str
    start_s: float
    end_s: float


def window_labels(
    events: list[CallEvent],
    n_windows: int,
    classes: list[str],
    window_s: float = 5.0,
    min_overlap_s: float = MIN_CALL_OVERLAP_S,
) -> np.ndarray:
    """[n_windows, n_classes] 0/1: window i covers [i*window_s, (i+1)*window_s)."""
    col = {c: j for j, c in enumerate(classes)}
    y = np.zeros((n_windows, len(classes)), dtype=np.int8)
    for ev in events:
        need_s = min(min_overlap_s, ev.end_s - ev.start_s) - 1e-9
        first = max(0, int(ev.start_s // window_s))
        last = min(n_windows - 1, int(ev.end_s // window_s))
        for i in range(first, last + 1):
            overlap_s = min(ev.end_s, (i + 1) * window_s) - max(ev.start_s, i * window_s)
            if overlap_s >= need_s and overlap_s > 0:
                y[i, col[ev.label]] = 1
    return y


def solution_frame(soundscape_labels: dict[str, np.ndarray], classes: list[str], window_s: float = 5.0) -> pd.DataFrame:
    """Kaggle's solution format: row_id `<soundscape>_<end second>` plus one 0/1 column per
    class. soundscape_labels maps a soundscape stem to its [n_windows, n_classes] labels."""
    frames = []
    for stem in sorted(soundscape_labels):
        y = soundscape_labels[stem]
        ends = [int(round((i + 1) * window_s)) for i in range(len(y))]
        df = pd.DataFrame(y, columns=classes)
        df.insert(0, "row_id", [f"{stem}_{e}" for e in ends])
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["row_id", *classes])
    return pd.concat(frames, ignore_index=True)
