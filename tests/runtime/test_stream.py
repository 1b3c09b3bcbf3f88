"""The stream smoothing: scripted decision sequences, and the mask following the smoothed decision."""

from __future__ import annotations

import numpy as np
import pytest

from ultraseg.params import StreamParams
from ultraseg.runtime import PostProcess, Segmenter
from ultraseg.runtime.segmenter import describe
from ultraseg.runtime.stream import PER_FRAME, Smoother

T, F = True, False


def decide(rule: StreamParams, presents, scores=None, operating_point: float = 0.5) -> list[bool]:
    smoother = Smoother(rule, operating_point)
    scores = scores if scores is not None else [float(p) for p in presents]
    return [smoother.update(p, s) for p, s in zip(presents, scores)]


def test_debounce_changes_only_after_enough_disagreeing_frames():
    frames = [F, T, F, T, T, T, F, F, T, F, F, F]
    assert decide(StreamParams("debounce", 3, 0.5), frames) == [F, F, F, F, F, T, T, T, T, T, T, F]
    assert decide(StreamParams("debounce", 1, 0.5), frames) == frames  # one frame is enough: no smoothing


def test_none_decides_each_frame_alone():
    frames = [T, F, T, F, F, T]
    assert decide(PER_FRAME, frames) == frames


def test_ema_averages_the_score_and_skips_nan():
    scores = [0.2, 0.9, 0.9, 0.1, float("nan"), 0.1]
    # averages 0.2, 0.55, 0.725, 0.4125, (unchanged), 0.25625 against 0.5
    assert decide(StreamParams("ema", 3, 0.5), [F] * 6, scores) == [F, T, T, F, F, F]


def test_ema_before_any_score_says_no_lesion():
    assert decide(StreamParams("ema", 3, 0.5), [T], [float("nan")]) == [F]


@pytest.mark.parametrize("bad", [{"frames": 0}, {"alpha": 0.0}, {"alpha": 1.5}, {"method": "median"}])
def test_bad_stream_params_name_the_key(bad):
    from ultraseg.params import ParamsError, from_dict, to_dict

    data = to_dict(StreamParams("debounce", 3, 0.5)) | bad
    with pytest.raises(ParamsError, match=f"{next(iter(bad))}"):
        from_dict(data, StreamParams).validate("deploy.stream")


def test_files_without_a_stream_rule_decide_each_frame_alone(zoo):
    assert Segmenter(zoo.models / "deploy" / "ultraseg.int8.onnx").stream_rule == PER_FRAME


def test_the_mask_follows_the_smoothed_decision(zoo):
    rule = PostProcess(threshold=0.5, gate=0.9)
    seg = Segmenter(zoo.models / "deploy" / "ultraseg.int8.onnx", postprocess=rule,
                    stream=StreamParams("debounce", 2, 0.5))
    prob = np.zeros((20, 30), np.float32)
    prob[5:10, 5:12] = 0.95
    sure = describe(rule.apply(prob), prob)
    weak = describe(rule.apply(prob * 0.8), prob * 0.8)  # 0.76 everywhere it was 0.95: gated off on its own
    assert sure.lesion_present and not weak.lesion_present

    smoother = seg.smoother()
    first, held = seg.smoothed(sure, smoother), seg.smoothed(weak, smoother)
    assert first is sure
    assert held.lesion_present and held.area_px == 35  # the rule's mask without its gate
    np.testing.assert_array_equal(held.mask, prob * 0.8 > 0.5)
    dropped = seg.smoothed(weak, smoother)
    assert not dropped.lesion_present and dropped is weak

    smoother = seg.smoother()
    seg.smoothed(weak, smoother)
    denied = seg.smoothed(sure, smoother)  # one confident frame after a lesion-free one is not yet a lesion
    assert not denied.lesion_present and denied.area_px == 0 and not denied.mask.any()
    assert denied.score == pytest.approx(0.95)


def test_stream_smooths_frames_of_a_file(zoo):
    seg = Segmenter(zoo.models / "deploy" / "ultraseg.int8.onnx", stream=StreamParams("debounce", 3, 0.5))
    frames = [np.full((40, 50), v, np.uint8) for v in (0, 255, 80, 80)] + [np.ones((1, 1), np.uint16)]
    results = list(seg.stream(frames))
    assert len(results) == 5
    # the first frame sets the decision, and two frames cannot change it
    assert len({r.lesion_present for r in results[:3]}) == 1
    assert all(r.mask.any() == (r.area_px > 0) for r in results)
