"""REPORT's probe sections quote the probe's JSON, and are left out when the probe was not run."""

from __future__ import annotations

import copy
import json

from ultraseg.pipeline.report import probes


def _probe(repo_root) -> dict:
    return json.loads((repo_root / "experiments" / "ensemble.json").read_text())


def test_the_ensemble_section_quotes_every_member_and_the_ensemble(repo_root):
    probe = _probe(repo_root)
    text = probes.ensemble_section(probe, {"train_minutes": 12.3})
    for seed in probe["seeds"]:
        s = probe["scores"][f"member_seed{seed}"]
        assert f"| seed {seed} | {s['threshold']:.2f} | {s['val_dice']:.4f} | {s['val_presence_auc']:.3f} |" in text
    ensemble = probe["scores"]["ensemble"]
    assert f"| **ensemble of {probe['members']}** | {ensemble['threshold']:.2f} | {ensemble['val_dice']:.4f} |" in text
    assert f"{probe['member_summary']['val_dice']['mean']:.4f} ± {probe['member_summary']['val_dice']['sd']:.4f}" in text
    assert "took 12.3 minutes" in text and probe["command"] in text


def test_the_verdict_follows_the_numbers(repo_root):
    probe = copy.deepcopy(_probe(repo_root))
    probe["member_summary"]["val_dice"]["ensemble_minus_mean"] = -0.0123
    assert "val Dice differs by -0.0123" in probes.ensemble_section(probe, {"train_minutes": 1.0})


def test_a_probe_not_run_leaves_no_section():
    assert probes.ensemble_section(None, {"train_minutes": 1.0}) == ""


def test_the_front_section_quotes_every_configuration_and_the_front(repo_root):
    front = json.loads((repo_root / "experiments" / "front.json").read_text())
    text = probes.front_section(front)
    for name, c in front["table"].items():
        assert f"| {name} | " in text and f"| {c['val_dice']:.4f} |" in text
    assert ", ".join(f"`{n}`" for n in front["front"]["over_seeds"]) in text
    assert probes.front_section(None) == ""


def test_the_epoch_profile_section_quotes_every_part_and_the_ratio(repo_root):
    profile = json.loads((repo_root / "experiments" / "epoch_profile.json").read_text())
    text = " ".join(probes.epoch_profile_section(profile).split())
    for name, m in profile["models"].items():
        for precision in ("fp32", "bf16"):
            if precision in m:
                e = m[precision]
                assert (f"| {name} | {precision} | {e['full_epoch_s']:.2f} | {e['data_s']:.2f} | {e['step_s']:.2f} | "
                        f"{e['validation_s']:.2f} |") in text
        if m["fp32_over_bf16"]:
            assert f"{name} ×{m['fp32_over_bf16']['full_epoch']:.2f} per epoch" in text
    fp32_only = copy.deepcopy(profile)
    for m in fp32_only["models"].values():
        m.pop("bf16", None)
        m["fp32_over_bf16"] = None
    text = probes.epoch_profile_section(fp32_only)
    assert "no native bf16, so only fp32 was timed" in text and "| bf16 |" not in text
    assert probes.epoch_profile_section(None) == ""
