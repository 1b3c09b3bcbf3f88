"""A simulated live scan from still images, and how steady a stream of decisions on it is.

A probe held over one spot still moves a little, the operator touches the gain, and every frame carries fresh
noise. A clip strings runs of such frames, each run from one scan, alternating between scans with and without a
lesion, so the truth changes only where a run ends. On it, :func:`stream_scores` counts how often a stream of
decisions flips and how many frames a true change takes to show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

RUNS = 20
"""Runs in a clip, half with a lesion."""
RUN_FRAMES = 12
"""Frames a probe rests on one scan."""
SHIFT = 0.02
"""Largest probe drift between frames, as a fraction of the frame's side."""
GAIN = 0.1
"""Largest gain change, as a fraction."""
NOISE = 4.0
"""Standard deviation of each frame's own noise, in grey levels."""


@dataclass(frozen=True)
class Clip:
    frames: list[np.ndarray]
    truth: np.ndarray
    """Whether each frame's scan shows a lesion (bool per frame)."""


def jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One frame of a probe resting on ``image`` (uint8, grey): a small drift, a gain change and fresh noise."""
    h, w = image.shape[:2]
    dx, dy = rng.uniform(-SHIFT, SHIFT, 2) * (w, h)
    moved = cv2.warpAffine(image.astype(np.float32), np.float32([[1, 0, dx], [0, 1, dy]]), (w, h),
                           borderMode=cv2.BORDER_REFLECT)
    frame = moved * rng.uniform(1 - GAIN, 1 + GAIN) + rng.normal(0.0, NOISE, moved.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def build(images: Sequence[np.ndarray], lesion: Sequence[bool], seed: int, runs: int = RUNS,
          run_frames: int = RUN_FRAMES) -> Clip:
    """A clip of ``runs`` runs of ``run_frames`` jittered frames, alternating normal and lesion scans drawn without
    replacement (cycling when a class has fewer scans than runs)."""
    rng = np.random.default_rng(seed)
    by_class = {flag: rng.permutation([k for k, f in enumerate(lesion) if bool(f) == flag]) for flag in (False, True)}
    if not all(len(v) for v in by_class.values()):
        raise ValueError("a clip needs scans with and without a lesion")
    frames: list[np.ndarray] = []
    truth: list[bool] = []
    for run in range(runs):
        flag = run % 2 == 1
        pick = by_class[flag][(run // 2) % len(by_class[flag])]
        frames += [jitter(images[pick], rng) for _ in range(run_frames)]
        truth += [flag] * run_frames
    return Clip(frames, np.array(truth))


def flips_per_100(decisions: Sequence[bool]) -> float:
    """Changes of decision per 100 frames."""
    d = np.asarray(decisions, bool)
    return 100.0 * np.count_nonzero(d[1:] != d[:-1]) / max(len(d) - 1, 1)


def change_lag(decisions: Sequence[bool], truth: Sequence[bool]) -> float:
    """Mean frames from each change of the truth until the decision first agrees with it (0 = at once); a change
    the decision never follows within its run counts the whole run."""
    d, t = np.asarray(decisions, bool), np.asarray(truth, bool)
    starts = [k for k in range(1, len(t)) if t[k] != t[k - 1]]
    ends = starts[1:] + [len(t)]
    lags = [next((j - k for j in range(k, end) if d[j] == t[k]), end - k) for k, end in zip(starts, ends)]
    return float(np.mean(lags)) if lags else 0.0


def stream_scores(decisions: Sequence[bool], truth: Sequence[bool]) -> dict[str, float]:
    """Flips per 100 frames, the mean lag of a true change, and the share of frames decided right."""
    return {"flips_per_100": round(flips_per_100(decisions), 2), "change_lag_frames": round(change_lag(decisions,
            truth), 2), "accuracy": round(float(np.mean(np.asarray(decisions, bool) == np.asarray(truth, bool))), 4)}
