"""REPORT's image-level section: the table quotes the metrics file, and met / not met follows the numbers."""

from __future__ import annotations

from ultraseg.pipeline.report import image_level


def _image(auc, sensitivity, specificity, score="presence"):
    return {"score": score, "auc": auc, "auc_ci95": [auc - 0.05, min(auc + 0.02, 1.0)], "threshold": 0.42,
            "sensitivity": sensitivity, "sensitivity_ci95": [sensitivity - 0.1, 1.0], "specificity": specificity,
            "specificity_ci95": [specificity - 0.2, 1.0], "ece": 0.061, "n_lesion": 130, "n_normal": 26}


def _scores(teacher, deployed):
    return {"variants": {"teacher": {"normal_clean": 0.5, "image_level": teacher},
                         "student": {"normal_clean": 0.6},  # scored before the image-level answer was: left out
                         "deployed": {"normal_clean": 0.9, "image_level": deployed}}}


def _rob():
    by_severity = {"moderate": {"lowest_auc": 0.88, "lowest_sensitivity": 0.9, "lowest_specificity": 0.7}}
    return {"models": {m: {"clean": {"auc": 0.95}, "by_severity": by_severity} for m in ("teacher", "deployed")}}


def test_targets_follow_the_numbers():
    assert image_level.targets_met(_image(0.98, 0.96, 0.9)) == {"auc": True, "point": True}
    assert image_level.targets_met(_image(0.96, 0.96, 0.9)) == {"auc": False, "point": True}
    # the specificity target counts only where the sensitivity target is held too
    assert image_level.targets_met(_image(0.98, 0.93, 0.99)) == {"auc": True, "point": False}
    assert image_level.targets_met(_image(float("nan"), 0.96, float("nan"))) == {"auc": False, "point": False}


def test_section_quotes_every_scored_variant_and_the_verdicts():
    text = image_level.image_level_section(_scores(_image(0.91, 0.96, 0.4, "max_probability"),
                                                   _image(0.98, 0.96, 0.9)), _rob())
    assert "| teacher | max pixel probability | 0.910 [0.860, 0.930] | 0.960 [0.860, 1.000] | 0.400 [0.200, 1.000] " \
           "| 0.420 | 0.061 | 0.500 |" in text
    assert "| deployed | presence | 0.980 [0.930, 1.000] |" in text and "| student |" not in text
    assert "- teacher: AUC ≥ 0.97: **not met** (0.910); specificity ≥ 0.85 at sensitivity ≥ 0.95: **not met**" in text
    assert "- deployed: AUC ≥ 0.97: **met** (0.980); specificity ≥ 0.85 at sensitivity ≥ 0.95: **met**" in text
    assert "130 lesion and\n26 normal scans" in text and "plots/evaluate/roc.png" in text
    assert "| deployed | moderate | 0.880 | 0.900 | 0.700 |" in text


def test_a_file_without_the_image_level_answer_says_so():
    text = image_level.image_level_section({"variants": {"teacher": {"normal_clean": 0.5}}},
                                           {"models": {"teacher": {"clean": {}, "by_severity": {"mild": {}}}}})
    assert "rerun `dvc repro evaluate`" in text and "| teacher |" not in text
    assert image_level.shifts_table({"models": {"teacher": {"clean": {}, "by_severity": {"mild": {}}}}}) == ""
