"""The pipeline's sections of REPORT.md quote the stage outputs and say only what the params and metrics say."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import shipped_params, train_val_split
from ultraseg.pipeline.report import sections


def test_test_and_speed_sections_quote_the_stage_outputs(zoo) -> None:
    from ultraseg.pipeline import benchmark, evaluate
    from ultraseg.variants import by_name

    quick = {"threads": [1], "warmup": 1, "runs": 2, "batch": 2, "batch_runs": 1, "retries": 0}
    params = shipped_params({"preprocess": {"size": zoo.size}, "evaluate": {"bootstrap": 20}, "benchmark": quick})
    variants = (by_name("teacher"), by_name("pruned_int8"))
    scores, _, _, _ = evaluate.run(params, zoo.models, zoo.data, zoo.raw, zoo.split, variants)
    bench = benchmark.run(params, zoo.models, variants)
    text = sections.evaluate_section(scores) + sections.benchmark_section(bench, scores)
    for name, m in scores["variants"].items():
        low, high = m["dice_ci95"]
        assert f"| {name} | {m['dice']:.4f} [{low:.3f}, {high:.3f}] |" in text
    int8 = bench["variants"]["pruned_int8"]["threads_1"]
    assert f"{int8['p50_ms']:.2f} / {int8['p95_ms']:.2f}" in text
    speedup = bench["speedups"]["vs_teacher_threads_1"]["pruned_int8"]
    assert f"`pruned_int8` is {speedup}× faster than the teacher in PyTorch eager" in text
    deployed = dict(scores["variants"]["pruned_int8"], dice=0.6543)
    published = sections.published_section({"variants": {**scores["variants"], "deployed": deployed}})
    assert f"{scores['variants']['teacher']['dice']:.4f}" in published
    assert "deployed file's 0.6543" in " ".join(published.split())


def test_deployable_section_quotes_deploy_evaluate_and_benchmark(zoo, tmp_path) -> None:
    from ultraseg.pipeline import benchmark, deploy, evaluate
    from ultraseg.variants import by_name

    params = shipped_params({"preprocess": {"size": zoo.size}, "evaluate": {"bootstrap": 20},
                                   "deploy": {"threshold_step": 0.25, "gates": [0.0], "min_areas": [0.0, 0.01]},
                                   "benchmark": {"threads": [1], "warmup": 1, "runs": 3, "retries": 0}})
    models = tmp_path / "models"
    models.mkdir()
    (models / "pruned.int8.onnx").write_bytes((zoo.models / "pruned.int8.onnx").read_bytes())
    chosen = deploy.run(params, models / "pruned.int8.onnx", zoo.raw, train_val_split(zoo, tmp_path / "split.csv"),
                        models / "deploy" / "ultraseg.int8.onnx")
    scores, _, _, _ = evaluate.run(params, zoo.models, zoo.data, zoo.raw, zoo.split, [by_name("pruned_int8")],
                                   deployable=models / "deploy" / "ultraseg.int8.onnx")
    bench = {"end_to_end": benchmark.measure_end_to_end(models / "deploy" / "ultraseg.int8.onnx",
                                                          {"scan": np.zeros((40, 50), np.uint8)}, params.benchmark),
             "seed_unet": {"model": benchmark.SEED_UNET, "input": [1, 1, 256, 256], "p50_ms": 100.0},
             "speedup_end_to_end_vs_seed_unet": 55.5}
    text = sections.deployable_section(chosen, scores, bench)
    assert f"| test, deployed file through the runtime | {chosen['postprocess']['threshold']} | " \
           f"{scores['variants']['deployed']['dice']:.4f} | " in text
    assert f"{bench['end_to_end']['frames']['scan']['p50_ms']:.3f} |" in text and "**55.5×**" in text
    front = chosen["val_operating_points"]
    assert text.count(" | deployed |") == 1 and len(front) >= 1
    assert f"| {front[0]['normal_clean']:.2f} | {front[0]['dice']:.4f} | " in text


@pytest.mark.parametrize(("kept", "label", "dice"), [("distilled", "student (distilled)", "0.7100"),
                                                    ("baseline", "student (no distillation)", "0.7300")])
def test_optimisation_table_names_the_student_pruning_started_from(kept, label, dice) -> None:
    model = {"params": 1000, "gmacs": 0.1, "bytes": 4000}
    export = {"teacher": model, "student": model, "pruned": model}
    distill = {"kept": kept, "student": {"val_dice": 0.71}, "baseline": {"val_dice": 0.73}, "kd_gain_val_dice": -0.02}
    prune = {"macs_ratio": 0.2, "params_ratio": 0.2, "teacher_to_pruned_macs": 20.0, "teacher_to_pruned_params": 20.0,
             "val_dice_before": 0.73, "val_dice_pruned_no_finetune": 0.3, "val_dice_after": 0.72,
             "finetune_epochs_total": 12}
    p50 = {"teacher_onnx_fp32": 20.0, "teacher_eager": 40.0, "fp32": 2.0, "int8": 3.0}
    quant = {"latency_p50_ms_1thread": p50, "val_dice_fp32": 0.72, "val_dice_int8": 0.71, "int8_bytes": 2000,
             "input_size": 128, "speedup_int8_vs_fp32": 0.67, "speedup_int8_vs_teacher_onnx": 6.67,
             "speedup_int8_vs_teacher_eager": 13.3, "float_ops": {"Conv": 3}}
    text = sections.optimisation_section({"val_dice": 0.8}, distill, prune, export, quant, shipped_params())
    assert f"| {label} | 1,000 | 0.1 | 0.00 | {dice} | – |" in text
    started = "distilled student" if kept == "distilled" else "student trained without it"
    assert f"pruning starts from the {started}" in text


def test_failure_and_paired_sections_quote_evaluate(zoo) -> None:
    from ultraseg.pipeline import evaluate
    from ultraseg.variants import VARIANTS

    params = shipped_params({"preprocess": {"size": zoo.size}, "evaluate": {"bootstrap": 20}})
    scores, _, _, _ = evaluate.run(params, zoo.models, zoo.data, zoo.raw, zoo.split, VARIANTS)
    text = sections.failures_section(scores) + sections.paired_section(scores)
    for name, m in scores["variants"].items():
        missed = m["failures"]["missed"]
        assert f"| {name} | {missed['n']} ({missed['rate']:.0%}; " in text
        assert f"{m['hd95_nan']} left out)" in text
    for name, step in scores["paired"].items():
        assert f"| `{name}` | {step['step']} | {step['mean_diff']:+.4f} | [{step['ci95'][0]:+.4f}, " in text


def test_design_section_follows_the_params() -> None:
    params = shipped_params({"train": {"augment": {"scale": 0.3, "sector_p": 0.2}, "lr": 0.002}})
    text = " ".join(sections.design_section(params).split())
    assert "zoom 0.70–1.30" in text and "fan-shaped field of view on 20%" in text and "lr 0.002" in text
    assert "(width stretch and burned-in marks off in this run)" in text and "width stretch ±" not in text
    marks = shipped_params({"train": {"augment": {"annotations_p": 0.3}}})
    text = " ".join(sections.design_section(marks).split())
    assert "calipers and text on 30%" in text and "(width stretch off in this run)" in text
    norms = shipped_params({"train": {"model": {"norm": "instance"}}, "distill": {"student": {"norm": "group"}}})
    text = " ".join(sections.design_section(norms).split())
    assert "Teacher normalisation: instance**, each image's own statistics, channel by channel" in text
    assert "The student keeps group normalisation." in text
    off = shipped_params({"train": {"augment": {"enabled": False}}})
    assert "none (`train.augment.enabled: false`)" in " ".join(sections.design_section(off).split())
    assert "`empty` term" not in text and "empty ×" not in text
    empty = shipped_params({"train": {"loss": {"empty": 0.5, "empty_fraction": 0.02}}})
    text = " ".join(sections.design_section(empty).split())
    assert "Loss: bce ×1, dice ×1, empty ×0.5.**" in text
    assert "cross-entropy on the highest 2% of each normal scan's logits" in text


def test_by_source_table_only_with_several_sources() -> None:
    def scored(dice: float, n_lesion: int, clean: float) -> dict:
        return {"dice": dice, "dice_ci95": [dice - 0.1, dice + 0.1], "n_lesion": n_lesion, "n_normal": 2,
                "normal_clean": clean}

    one = {"variants": {"teacher": scored(0.7, 5, 0.5)}}
    assert sections.by_source_table(one) == ""
    both = {"variants": {"teacher": {**scored(0.7, 5, 0.5), "by_source": {"busi": scored(0.75, 4, 0.5),
                                                                         "siteB": scored(float("nan"), 0, 1.0)}}}}
    table = sections.by_source_table(both)
    assert "busi: 4 lesion + 2 normal, siteB: 0 lesion + 2 normal" in table
    assert "| teacher | 0.7500 [0.650, 0.850]; clean 0.50 | –; clean 1.00 |" in table


def _optimisation_inputs(**prune_extra) -> tuple[dict, ...]:
    model = {"params": 1000, "gmacs": 0.1, "bytes": 4000}
    export = {"teacher": model, "student": model, "pruned": model}
    distill = {"kept": "distilled", "student": {"val_dice": 0.71}}
    prune = {"macs_ratio": 0.2, "params_ratio": 0.2, "teacher_to_pruned_macs": 20.0, "teacher_to_pruned_params": 20.0,
             "val_dice_before": 0.73, "val_dice_pruned_no_finetune": 0.3, "val_dice_after": 0.72,
             "finetune_epochs_total": 12, **prune_extra}
    p50 = {"teacher_onnx_fp32": 20.0, "teacher_eager": 40.0, "fp32": 2.0, "int8": 3.0}
    quant = {"latency_p50_ms_1thread": p50, "val_dice_fp32": 0.72, "val_dice_int8": 0.71, "int8_bytes": 2000,
             "input_size": 128, "float_ops": {}, "narrow_convs_float": 0}
    return distill, prune, export, quant


@pytest.mark.parametrize(("norm", "calibration", "remeasured"), [("batch", 8, True), ("batch", 0, False),
                                                                ("instance", 8, False)])
def test_pruning_says_norm_statistics_were_re_measured_only_when_they_were(norm, calibration, remeasured) -> None:
    params = shipped_params({"distill": {"student": {"norm": norm}}, "prune": {"calibration_batches": calibration}})
    distill, prune, export, quant = _optimisation_inputs()
    text = " ".join(sections.optimisation_section({"val_dice": 0.8}, distill, prune, export, quant, params).split())
    assert ("pruned in one step (BN re-measured, no fine-tuning)" in text) == remeasured
    assert ("pruned in one step (no fine-tuning)" in text) == (not remeasured)
    split = {"images_in_duplicate_groups": 1, "images": 2, "duplicate_groups": 1, "cross_class_groups": 0}
    scored = {"normal_clean": 0.5}
    scores = {"variants": {"teacher": scored, sections.DEPLOYED: scored, sections.INT8_VARIANT: scored}}
    quant["float_ops"] = {}
    text = " ".join(sections.challenges_section(split, distill, prune, quant, scores, params).split())
    assert ("with the BatchNorm statistics re-measured and no fine-tuning" in text) == remeasured
    assert "fine-tuning with the distillation loss in steps" in text


def test_optimisation_names_narrow_convolutions_and_the_precision_of_distillation_and_fine_tuning() -> None:
    params = shipped_params({"quantize": {"min_channels": 24}})
    distill, prune, export, quant = _optimisation_inputs(precision="bf16")
    text = " ".join(sections.optimisation_section({"val_dice": 0.8}, distill, prune, export, quant, params).split())
    assert "The student was distilled in" not in text
    distill["precision"] = "fp32"
    text = " ".join(sections.optimisation_section({"val_dice": 0.8}, distill, prune, export, quant, params).split())
    assert "The student was distilled in fp32." in text
    assert "after 12 epochs of fine-tuning in bf16." in text
    assert "After pruning no convolution has fewer than the 24 output channels int8 needs" in text
    quant["narrow_convs_float"] = 3
    text = " ".join(sections.optimisation_section({"val_dice": 0.8}, distill, prune, export, quant, params).split())
    assert "After pruning 3 convolutions have fewer than 24 output channels (`quantize.min_channels`) and stay " \
           "float." in text


def test_design_section_describes_the_student_its_params_build() -> None:
    shipped = shipped_params({"distill": {"student": {"widths": [32, 64, 96], "block": "double",
                                                            "up": "nearest", "stem_stride": 4}}})
    text = " ".join(sections.design_section(shipped).split())
    assert "a `unet` with widths [32, 64, 96] working at 1/4 of the input resolution (a patchify stem and a " \
           "pixel-shuffle head), plain convolutions, nearest up-sampling." in text
    assert "So the student has no layer at full resolution." in text
    other = shipped_params({"distill": {"student": {"name": "attention_unet", "widths": [8, 16], "block":
                                                          "separable", "up": "bilinear", "stem_stride": 1}},
                                  "quantize": {"min_channels": 32}})
    text = " ".join(sections.design_section(other).split())
    assert "a `attention_unet` with widths [8, 16] working at the input resolution, depthwise-separable " \
           "convolutions, bilinear up-sampling." in text
    assert "plain convolutions" not in text and "nearest up-sampling" not in text and "patchify" not in text
    assert "at least 32 output channels (`quantize.min_channels`)" in text
    assert "So the student keeps its outer level at full resolution, its depthwise convolutions gain nothing from " \
           "int8 and its bilinear `Resize` up-sampling stays float." in text
    residual = shipped_params({"distill": {"student": {"name": "res_unet", "block": None, "up": "transpose",
                                                             "attention": True, "stem_stride": 2}}})
    text = " ".join(sections.design_section(residual).split())
    assert "the `res_unet` variant's own blocks, transposed-convolution up-sampling, attention gates." in text
    assert "So the student has no layer at full resolution and its `ConvTranspose` up-sampling stays float." in text


def test_training_line_names_the_precision_the_run_used() -> None:
    train = {"model": "unet", "params": 1000, "gmacs": 0.1, "epochs_run": 3, "best_epoch": 2, "train_minutes": 1.5,
             "device": "cpu", "val_dice": 0.8, "val_iou": 0.7, "val_normal_clean": 0.5}
    params = shipped_params()
    assert "1.5 min on cpu." in " ".join(sections.train_section(train, params).split())
    text = " ".join(sections.train_section({**train, "precision": "bf16", "cpu_features": ["avx512_bf16"]},
                                           params).split())
    assert "1.5 min on cpu in bf16." in text


def test_an_ensemble_teacher_is_named_with_each_members_val_figures() -> None:
    members = [{"seed": 42, "best_epoch": 26, "val_dice": 0.80, "val_iou": 0.70, "val_presence_auc": 0.95},
               {"seed": 43, "best_epoch": 24, "val_dice": 0.78, "val_iou": 0.68, "val_presence_auc": 0.93}]
    train = {"model": "unet", "params": 2000, "gmacs": 0.2, "epochs_run": [28, 28], "best_epoch": [26, 24],
             "train_minutes": 3.0, "device": "cpu", "val_dice": 0.8123, "val_iou": 0.71, "val_normal_clean": 0.5,
             "val_presence_auc": 0.961}
    params = shipped_params()
    assert "ensemble" not in sections.train_section(train, params)
    text = " ".join(sections.train_section({**train, "members": members}, params).split())
    assert "an ensemble of 2 networks (`train.members`)" in text
    assert "Its val Dice is +0.0223 against its members' mean; val presence AUC 0.961." in text
    assert "| 42 | 26 | 0.8000 | 0.7000 | 0.950 |" in text and "| 43 | 24 | 0.7800 | 0.6800 | 0.930 |" in text


def test_training_steps_give_the_bf16_ratio_per_network_or_why_there_is_none() -> None:
    assert sections.training_steps_note({}) == ""
    steps = {"cpu_features": ["avx2", "avx512_bf16", "amx_bf16"], "bf16_supported": True,
             "teacher": {"fp32_ms": 120.0, "bf16_ms": 80.0, "speedup": 1.5},
             "student": {"fp32_ms": 30.0, "bf16_ms": 40.0, "speedup": 0.75}}
    text = sections.training_steps_note({"training_steps": steps})
    assert "| teacher | 120.0 | 80.0 | 1.50 |" in text and "| student | 30.0 | 40.0 | 0.75 |" in text
    assert "CPU features seen: avx2, avx512_bf16, amx_bf16" in text
    none = {"cpu_features": ["avx2", "fma"], "bf16_supported": False,
            "teacher": {"fp32_ms": 120.0, "bf16_ms": None, "speedup": None},
            "student": {"fp32_ms": 30.0, "bf16_ms": None, "speedup": None}}
    text = " ".join(sections.training_steps_note({"training_steps": none}).split())
    assert "bf16 is not supported on this CPU" in text and "(CPU features seen: avx2, fma)" in text
    assert "in fp32 takes teacher 120.0 ms; student 30.0 ms" in text and "| teacher |" not in text


@pytest.mark.parametrize(("peak", "verdict"), [(93.4, "met"), (150.0, "met"), (453.9, "not met")])
def test_memory_is_compared_with_the_goal_when_the_benchmark_sets_one(peak, verdict) -> None:
    bench = {"end_to_end": {"peak_rss_mb": peak}, "settings": {"memory_goal_mb": 150}}
    text = " ".join(sections.memory_note(bench).split())
    assert text.endswith(f"peaked at {peak} MB, goal ≤ 150 MB (`benchmark.memory_goal_mb`): {verdict}")
    assert "holding only the runtime and the deployable file" in text
    old = " ".join(sections.memory_note({"end_to_end": {"peak_rss_mb": peak}, "settings": {}}).split())
    assert old == f"the process holding the runtime alone peaked at {peak} MB"


def test_stream_note_quotes_both_decisions_and_says_nothing_without_the_key():
    scores = {"flips_per_100": 12.5, "change_lag_frames": 0.4, "accuracy": 0.91}
    smooth = {"flips_per_100": 3.4, "change_lag_frames": 2.1, "accuracy": 0.88}
    entry = {"stream": {"method": "debounce", "frames": 3, "alpha": 0.5}, "per_frame": scores, "smoothed": smooth}
    stream = {"split": "test", "frames": 240, "runs": 20, "run_frames": 12, "deployed": entry}
    text = sections.stream_note(stream)
    assert "| deployed | per frame | 12.5 | 0.40 | 0.910 |" in text
    assert "| deployed | smoothed | 3.4 | 2.10 | 0.880 |" in text
    assert "after 3 disagreeing frames" in text and "20 runs of 12 frames" in text
    assert sections.stream_note(None) == ""


def test_ood_note_quotes_the_built_set_the_scans_and_the_shifts():
    rob = {"models": {"deployed": {"by_severity": {"moderate": {"most_flagged": 0.125}}}},
           "ood": {"checked": True, "threshold": 41.5,
                   "built": {"frames": 40, "flagged": 0.95, "by_kind": {"photo": {"frames": 24, "flagged": 0.9167},
                                                                        "blank": {"frames": 3, "flagged": 1.0}}},
                   "scans": {"split": "test", "images": 160, "flagged": 0.0125}}}
    text = " ".join(sections.ood_note(rob).split())
    assert "flags 95% of 40 built frames" in text and "photo 92% of 24, blank 100% of 3" in text
    assert "1.2% of the 160 test scans" in text and "threshold 41.5" in text and "at most 12% of the shifted" in text
    assert sections.ood_note({"ood": {"checked": False}}) == "" and sections.ood_note({}) == ""
