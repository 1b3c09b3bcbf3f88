"""The simulated live scan and the steadiness of a stream of decisions."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import speckle_image
from ultraseg import clips

T, F = True, False


@pytest.fixture(scope="module")
def scans():
    rng = np.random.default_rng(1)
    return [speckle_image(rng, 40, 50) for _ in range(5)], [F, T, T, F, T]


def test_clip_alternates_runs_of_jittered_frames(scans):
    images, lesion = scans
    clip = clips.build(images, lesion, seed=0, runs=6, run_frames=4)
    assert len(clip.frames) == 24 and clip.truth.tolist() == ([F] * 4 + [T] * 4) * 3
    assert all(f.shape == (40, 50) and f.dtype == np.uint8 for f in clip.frames)
    assert not np.array_equal(clip.frames[0], clip.frames[1])  # every frame is its own draw
    sources = [min(range(5), key=lambda k: np.abs(images[k].astype(float) - f).mean()) for f in clip.frames]
    assert all(lesion[s] == t for s, t in zip(sources, clip.truth))  # each frame comes from a scan of its class
    again = clips.build(images, lesion, seed=0, runs=6, run_frames=4)
    assert all(np.array_equal(a, b) for a, b in zip(clip.frames, again.frames))


def test_clip_needs_both_classes(scans):
    images, _ = scans
    with pytest.raises(ValueError, match="with and without"):
        clips.build(images, [F] * 5, seed=0)


def test_flips_and_lag_and_accuracy():
    assert clips.flips_per_100([F, F, T, T, F]) == 50.0
    assert clips.flips_per_100([T]) == 0.0
    truth = [F, F, T, T, T, F, F]
    decisions = [F, F, F, T, T, T, F]
    assert clips.change_lag(decisions, truth) == 1.0
    assert clips.change_lag([F, F, F], [F, T, T]) == 2.0  # never followed: the whole run
    scores = clips.stream_scores(decisions, truth)
    assert scores == {"flips_per_100": pytest.approx(100 * 2 / 6, abs=0.01), "change_lag_frames": 1.0,
                      "accuracy": pytest.approx(5 / 7, abs=1e-4)}
