"""REPORT's deployment profiles: both profiles' figures quoted from the metrics files, the targets judged by them."""

from __future__ import annotations

import copy
import json

from ultraseg.pipeline.report import profiles


def _metrics(repo_root, edge_dice: float, edge_ms: float, accurate_ms: float):
    """The committed evaluate, robustness and benchmark metrics with an accurate profile made from the teacher's
    entries, the edge profile's Dice and both 640 x 480 times set."""
    scores, rob, bench = (json.loads((repo_root / "metrics" / f"{n}.json").read_text())
                          for n in ("evaluate", "robustness", "benchmark"))
    scores["variants"]["accurate"] = copy.deepcopy(scores["variants"]["teacher"])
    scores["variants"]["deployed"]["dice"] = edge_dice
    rob["models"]["accurate"] = copy.deepcopy(rob["models"]["teacher"])
    bench["end_to_end_accurate"] = copy.deepcopy(bench["end_to_end"])
    bench["end_to_end"]["frames"]["scanner_640x480"]["p50_ms"] = edge_ms
    bench["end_to_end_accurate"]["frames"]["scanner_640x480"]["p50_ms"] = accurate_ms
    return scores, rob, bench


def test_targets_follow_the_numbers(repo_root):
    scores, rob, bench = _metrics(repo_root, 0.0, 2.5, 16.0)
    teacher = scores["variants"]["teacher"]["dice"]
    scores["variants"]["deployed"]["dice"] = teacher - 0.009
    met = {what.split(" within")[0]: ok for what, ok, _ in profiles.targets(scores, rob, bench)}
    assert met["edge test Dice"] and met["deployed end to end on a 640 × 480 frame, one core,"]
    assert not met["accurate end to end on a 640 × 480 frame, one core,"]
    scores["variants"]["deployed"]["dice"] = teacher - 0.011
    assert not profiles.targets(scores, rob, bench)[0][1]
    drop = rob["models"]["teacher"]["by_severity"]["moderate"]["mean_drop"]
    rob["models"]["deployed"]["by_severity"]["moderate"]["mean_drop"] = drop + 0.009
    assert profiles.targets(scores, rob, bench)[1][1]
    rob["models"]["deployed"]["by_severity"]["moderate"]["mean_drop"] = drop + 0.011
    assert not profiles.targets(scores, rob, bench)[1][1]


def test_section_quotes_both_profiles(repo_root):
    scores, rob, bench = _metrics(repo_root, 0.7123, 2.5, 16.0)
    deploy = json.loads((repo_root / "metrics" / "deploy.json").read_text())
    text = profiles.profiles_section(scores, rob, bench, deploy)
    assert "| edge (`deployed`) | 0.7123 [" in text and "| 2.50 |" in text and "| 16.00 |" in text
    teacher = scores["variants"]["teacher"]
    assert f"| accurate | {teacher['dice']:.4f} [" in text
    assert "**met** (2.50 ms)" in text and "**not met** (16.00 ms)" in text


def test_a_run_without_the_accurate_profile_says_so(repo_root):
    scores, rob, bench = (json.loads((repo_root / "metrics" / f"{n}.json").read_text())
                          for n in ("evaluate", "robustness", "benchmark"))
    assert "not scored in this run" in profiles.profiles_section(scores, rob, bench, None)
