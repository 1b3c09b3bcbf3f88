"""Frames that are not breast ultrasound, built from what the project ships or makes: the test set of the
out-of-distribution check (:mod:`ultraseg.runtime.ood`), scored by the robustness stage.

Kinds: ``photo`` (the natural and scientific photographs bundled inside scikit-image's wheel, read from its data
folder, so nothing is downloaded), ``blank`` (one level throughout), ``gradient``, ``noise`` (uniform, Gaussian,
salt-and-pepper) and ``text`` (screens of rendered text, as a report or a menu would show). Every frame is
``SIZE`` pixels, 8-bit grey or RGB, as a frame grabber would deliver it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ultraseg.errors import DataError

SIZE = (480, 640)
"""(height, width) of every built frame."""
PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "chessboard_GRAY.png",
          "clock_motion.png", "coffee.png", "coins.png", "color.png", "grass.png", "gravel.png",
          "horse.png", "hubble_deep_field.jpg", "ihc.png", "logo.png", "microaneurysms.png", "moon.png",
          "motorcycle_left.png", "page.png", "phantom.png", "retina.jpg", "rocket.jpg", "text.png")
"""scikit-image's bundled images (every one in the wheel's data folder; the others it would download)."""
KINDS = ("photo", "blank", "gradient", "noise", "text")
LINES = ("PATIENT ID 000000  EXAM 2026-01-01", "Report: no findings. Follow-up in 12 months.",
         "Settings > Display > Brightness", "Press OK to continue", "abcdefghijklmnopqrstuvwxyz 0123456789")


@dataclass(frozen=True)
class OddFrame:
    kind: str
    name: str
    image: np.ndarray


def photo_dir() -> Path:
    import skimage.data  # only the folder: its loaders would download the images the wheel lacks

    return Path(skimage.data.__file__).parent


def photo(name: str) -> np.ndarray:
    """One bundled image, resized to :data:`SIZE`, grey or RGB."""
    path = photo_dir() / name
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{path}: missing or unreadable (scikit-image's bundled data)")
    if image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB)
    return cv2.resize(image, SIZE[::-1], interpolation=cv2.INTER_AREA)


def gradients() -> dict[str, np.ndarray]:
    h, w = SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    radius = np.hypot(yy - h / 2, xx - w / 2)
    ramps = {"horizontal": xx / (w - 1), "vertical": yy / (h - 1), "diagonal": (xx / (w - 1) + yy / (h - 1)) / 2,
             "radial": radius / radius.max()}
    return {name: np.rint(255 * ramp).astype(np.uint8) for name, ramp in ramps.items()}


def noise(rng: np.random.Generator) -> dict[str, np.ndarray]:
    pepper = rng.random(SIZE)
    return {"uniform": rng.integers(0, 256, SIZE, dtype=np.uint8),
            "gaussian": np.clip(rng.normal(128, 40, SIZE), 0, 255).astype(np.uint8),
            "salt_and_pepper": np.where(pepper < 0.05, 0, np.where(pepper > 0.95, 255, 128)).astype(np.uint8)}


def text_screen(background: int, foreground: int) -> np.ndarray:
    screen = np.full(SIZE, background, np.uint8)
    for k, line in enumerate(LINES * 3):
        cv2.putText(screen, line, (20, 40 + 28 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.7, foreground, 2, cv2.LINE_AA)
    return screen


def build(seed: int) -> list[OddFrame]:
    """The whole set, in :data:`KINDS` order; ``seed`` draws the noise."""
    rng = np.random.default_rng(seed)
    frames = [OddFrame("photo", name.rsplit(".", 1)[0], photo(name)) for name in PHOTOS]
    frames += [OddFrame("blank", f"level {v}", np.full(SIZE, v, np.uint8)) for v in (0, 128, 255)]
    frames += [OddFrame("gradient", name, image) for name, image in gradients().items()]
    for draw in range(2):
        frames += [OddFrame("noise", f"{name} {draw}", image) for name, image in noise(rng).items()]
    frames += [OddFrame("text", name, text_screen(bg, fg))
               for name, bg, fg in (("dark", 0, 255), ("light", 255, 0), ("grey", 90, 200))]
    return frames


def flagged(results: list[bool], kinds: list[str]) -> dict:
    """Share of frames flagged out of distribution (``results``: whether each was), overall and per kind."""
    flags = np.asarray(results, bool)
    kinds_arr = np.asarray(kinds)
    by_kind = {k: {"frames": int((kinds_arr == k).sum()), "flagged": round(float(flags[kinds_arr == k].mean()), 4)}
               for k in KINDS if (kinds_arr == k).any()}
    return {"frames": len(flags), "flagged": round(float(flags.mean()), 4) if len(flags) else 0.0,
            "by_kind": by_kind}
