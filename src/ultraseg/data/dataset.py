"""The preprocess stage's arrays, loaded by split, and the training set: normalised once, augmented per sample."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ultraseg.data.augment import Augment, worker_seed
from ultraseg.errors import DataError
from ultraseg.io import split_ids
from ultraseg.runtime.preprocess import normalize


@dataclass(frozen=True)
class Preprocessed:
    """The preprocess stage's output, loaded: images (N, S, S) uint8, masks (N, S, S) uint8 in {0, 1}."""

    images: np.ndarray
    masks: np.ndarray
    index: list[dict]

    @classmethod
    def load(cls, folder: Path) -> Preprocessed:
        with open(folder / "index.csv", newline="") as fh:
            index = list(csv.DictReader(fh))
        return cls(np.load(folder / "images.npy"), np.load(folder / "masks.npy"), index)

    def rows(self, ids: list[str]) -> np.ndarray:
        position = {row["id"]: int(row["row"]) for row in self.index}
        missing = [i for i in ids if i not in position]
        if missing:
            raise DataError(f"{missing[0]!r} is in the split but not in the preprocessed set; run dvc repro")
        return np.array([position[i] for i in ids], dtype=np.int64)


def load_split(folder: Path, split_csv: Path, split: str, mode: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Normalised images (N, S, S) float32, masks (N, S, S) uint8 and ids of one split."""
    data = Preprocessed.load(folder)
    ids = split_ids(split_csv, split)
    rows = data.rows(ids)
    return normalize(data.images[rows], mode), data.masks[rows], ids


class SegmentationSet(Dataset):
    """(image, mask) tensors of shape (1, S, S); augmented with a generator fixed by (seed, epoch, index).

    With ``soft`` maps (N, S, S), e.g. a teacher's logits for the unaugmented images, each sample is
    (image, mask, soft), the soft map warped with the image's geometry (:class:`~ultraseg.data.augment.Augment`).
    With ``scores`` (N,), e.g. a teacher's presence logits, each sample ends with its score, shape (1,), which no
    augmentation changes.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, augment: Augment | None = None, seed: int = 0,
                 soft: np.ndarray | None = None, scores: np.ndarray | None = None):
        if soft is not None and soft.shape != images.shape:
            raise ValueError(f"soft maps {soft.shape} do not match the images {images.shape}")
        if scores is not None and scores.shape != images.shape[:1]:
            raise ValueError(f"scores {scores.shape} do not match the images {images.shape}")
        self.images, self.masks, self.augment, self.seed, self.soft = images, masks, augment, seed, soft
        self.scores = scores
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        arrays = (self.images[index], self.masks[index]) + (() if self.soft is None else (self.soft[index],))
        if self.augment is not None:
            arrays = self.augment(*arrays[:2], worker_seed(self.seed, self.epoch, index), *arrays[2:])
        maps = tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)[None]) for a in arrays)
        return maps if self.scores is None else (*maps, torch.tensor([self.scores[index]], dtype=torch.float32))
