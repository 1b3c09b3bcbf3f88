"""The built set of frames that are not breast ultrasound: every kind, read or made offline, at one size."""

from __future__ import annotations

import numpy as np
import pytest

from ultraseg import ood_frames
from ultraseg.errors import DataError


def test_build_makes_every_kind_at_the_frame_size():
    frames = ood_frames.build(0)
    assert [k for k in ood_frames.KINDS if any(f.kind == k for f in frames)] == list(ood_frames.KINDS)
    assert sum(f.kind == "photo" for f in frames) == len(ood_frames.PHOTOS)
    for frame in frames:
        assert frame.image.shape[:2] == ood_frames.SIZE and frame.image.dtype == np.uint8, frame.name
        assert frame.image.ndim == 2 or frame.image.shape[2] == 3
    assert len({f.name for f in frames}) == len(frames)
    varied = [f for f in frames if f.kind != "blank"]
    assert all(f.image.min() < f.image.max() for f in varied)
    again = ood_frames.build(0)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, again))
    other = {f.name: f.image for f in ood_frames.build(1)}
    assert not np.array_equal(other["uniform 0"], {f.name: f.image for f in frames}["uniform 0"])


def test_a_missing_photo_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(ood_frames, "photo_dir", lambda: tmp_path)
    with pytest.raises(DataError, match=f"{tmp_path / 'camera.png'}: missing or unreadable"):
        ood_frames.photo("camera.png")


def test_flagged_shares_overall_and_per_kind():
    summary = ood_frames.flagged([True, False, True, True], ["photo", "photo", "noise", "text"])
    assert summary == {"frames": 4, "flagged": 0.75,
                       "by_kind": {"photo": {"frames": 2, "flagged": 0.5}, "noise": {"frames": 1, "flagged": 1.0},
                                   "text": {"frames": 1, "flagged": 1.0}}}
