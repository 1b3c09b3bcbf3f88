"""metrics/headline.json: the numbers an experiment is judged by, taken from the stage files."""

from __future__ import annotations

from ultraseg.pipeline.report import headline


def test_headline_holds_a_dozen_numbers_from_the_stage_files() -> None:
    failures = {"missed": {"n": 7}}
    scores = {"variants": {"teacher": {"dice": 0.76, "failures": {"missed": {"n": 1}}},
                           "deployed": {"dice": 0.73, "normal_clean": 0.69, "failures": failures},
                           "pruned_int8": {"dice": 0.72}}}
    rob = {"models": {m: {"by_severity": {"moderate": {"mean_drop": d}}} for m, d in (("teacher", 0.09),
                                                                                      ("deployed", 0.08))}}
    bench = {"end_to_end": {"frames": {"scan": {"p50_ms": 1.5}}}, "variants": {"pruned_int8": {"file_mb": 0.4}}}
    head = headline.headline(scores, rob, bench, {"val_dice": 0.82})
    assert head == {"teacher_val": 0.82, "teacher": 0.76, "deployed": 0.73, "gap": 0.03, "normal_clean": 0.69,
                    "missed": 7, "teacher_missed": 1, "shift_drop": 0.08, "teacher_shift_drop": 0.09, "ms": 1.5,
                    "mb": 0.4}
    assert len(head) <= 12  # with Experiment, Created and one param, dvc exp show stays within 15 columns


def test_the_image_level_answer_joins_the_headline_when_scored() -> None:
    image = {"auc": 0.93, "auc_ci95": [0.88, 0.97], "threshold": 0.31, "sensitivity": 0.96,
             "sensitivity_ci95": [0.91, 0.98], "specificity": 0.81, "specificity_ci95": [0.62, 0.92]}
    scores = {"variants": {"teacher": {"dice": 0.76, "failures": {"missed": {"n": 1}}},
                           "deployed": {"dice": 0.73, "normal_clean": 0.69, "failures": {"missed": {"n": 7}},
                                        "image_level": image},
                           "pruned_int8": {"dice": 0.72}}}
    rob = {"models": {m: {"by_severity": {"moderate": {"mean_drop": 0.1}}} for m in ("teacher", "deployed")}}
    bench = {"end_to_end": {"frames": {"scan": {"p50_ms": 1.5}}}, "variants": {"pruned_int8": {"file_mb": 0.4}}}
    head = headline.headline(scores, rob, bench, {"val_dice": 0.82})
    assert (head["auc"], head["spec"]) == (0.93, 0.81) and "normal_clean" not in head and len(head) <= 12
    assert headline.image_level(scores) == {"deployed": {
        "point": 0.31, "auc": 0.93, "auc_low": 0.88, "auc_high": 0.97, "sens": 0.96, "sens_low": 0.91,
        "sens_high": 0.98, "spec": 0.81, "spec_low": 0.62, "spec_high": 0.92}}  # the teacher was scored without it
