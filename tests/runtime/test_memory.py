"""The runtime keeps freed frame buffers for the next frame: glibc's thresholds raised once, the user's own left."""

from __future__ import annotations

import ctypes
import sys

import pytest

from ultraseg.runtime import memory


class FakeLibc:
    """A C library whose mallopt records its calls and accepts them, as ctypes's function objects do."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

        def mallopt(param: int, value: int) -> int:
            self.calls.append((param, value))
            return 1

        self.mallopt = mallopt


@pytest.fixture
def libc(monkeypatch) -> FakeLibc:
    fake = FakeLibc()
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: fake)
    monkeypatch.setattr(memory.sys, "platform", "linux")
    for name in memory.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    return fake


def test_both_thresholds_are_raised(libc):
    assert memory.retain_freed_memory() is True
    assert libc.calls == [(memory.M_MMAP_THRESHOLD, memory.MMAP_THRESHOLD),
                          (memory.M_TRIM_THRESHOLD, memory.TRIM_THRESHOLD)]


@pytest.mark.parametrize("name", memory.USER_SETTINGS)
def test_a_threshold_the_user_set_is_left_alone(libc, monkeypatch, name):
    monkeypatch.setenv(name, "131072")
    assert memory.retain_freed_memory() is False and libc.calls == []


def test_nothing_happens_outside_linux_or_without_mallopt(libc, monkeypatch):
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.retain_freed_memory() is False and libc.calls == []
    monkeypatch.setattr(memory.sys, "platform", "linux")
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: object())  # a C library without mallopt (musl)
    assert memory.retain_freed_memory() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_accepts_the_values():
    try:
        ctypes.CDLL(None).mallopt
    except AttributeError:
        pytest.skip("a C library without mallopt")
    assert memory.retain_freed_memory() is True


def test_every_segmenter_asks_for_it(monkeypatch, zoo):
    from ultraseg.runtime import segmenter

    asked = []
    monkeypatch.setattr(segmenter, "retain_freed_memory", lambda: asked.append(True))
    segmenter.Segmenter(zoo.models / "deploy" / "ultraseg.int8.onnx")
    assert asked == [True]
