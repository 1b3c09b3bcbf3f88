"""Steady answers in a live stream: the lesion decision smoothed over recent frames.

Each frame's own answer flips whenever its score lies near the operating point and the probe moves a little, so a
live overlay would blink. A :class:`Smoother` carries the decision from frame to frame, as the deployable file's
``stream`` metadata (``deploy.stream`` in params.yaml) says:

- ``none``: each frame decides alone;
- ``debounce``: the decision changes only once ``frames`` consecutive frames disagree with it, so no single frame
  flips it and a true change shows ``frames - 1`` frames late;
- ``ema``: an exponential average of the image-level score is compared with the file's operating point
  (:attr:`ultraseg.runtime.Segmenter.operating_point`: the presence threshold, or the gate of older files).

The mask follows the decision: a frame the smoother calls lesion-free shows no mask, and a frame it calls a lesion
shows what the rule draws without its image-level gate.
"""

from __future__ import annotations

from ultraseg.params import StreamParams

PER_FRAME = StreamParams(method="none", frames=1, alpha=1.0)
"""The rule of files written before the stream smoothing existed: every frame decides alone."""


class Smoother:
    """The smoothed decision of a stream, one :meth:`update` per frame."""

    def __init__(self, rule: StreamParams, operating_point: float) -> None:
        self.rule, self.operating_point = rule, operating_point
        self.present: bool | None = None
        self.disagreeing = 0
        self.average: float | None = None

    def update(self, present: bool, score: float) -> bool:
        """The decision after a frame whose own answer is ``present`` at image-level ``score``. A NaN score (a
        frame that could not be scored) leaves the average as it was."""
        if self.rule.method == "ema":
            return self._ema(score)
        if self.rule.method == "none" or self.present is None:
            self.present, self.disagreeing = present, 0
            return present
        self.disagreeing = self.disagreeing + 1 if present != self.present else 0
        if self.disagreeing >= self.rule.frames:
            self.present, self.disagreeing = present, 0
        return self.present

    def _ema(self, score: float) -> bool:
        if score == score:  # not NaN
            alpha = self.rule.alpha
            self.average = score if self.average is None else alpha * score + (1 - alpha) * self.average
        self.present = self.average is not None and self.average >= self.operating_point
        return self.present
