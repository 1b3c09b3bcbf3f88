"""Figures are written whole or not at all, and freed once saved."""

from __future__ import annotations

import pytest

from ultraseg import figures


def test_save_writes_a_png_and_frees_the_figure(tmp_path) -> None:
    plt = figures.pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    figures.save(fig, tmp_path / "out" / "line.png")
    assert (tmp_path / "out" / "line.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["line.png"]
    assert not plt.fignum_exists(fig.number)


def test_failed_save_leaves_no_file(tmp_path) -> None:
    plt = figures.pyplot()
    fig = plt.figure()

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    fig.savefig = disk_full
    with pytest.raises(OSError, match="disk full"):
        figures.save(fig, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
    assert not plt.fignum_exists(fig.number)
