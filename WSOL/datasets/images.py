"""Samples as a torch dataset: each image read when its batch needs it, a box off its image warned of."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from bas.data import load_rgb
from WSOL.datasets.samples import Sample, shown_box

log = logging.getLogger(__name__)


class ImageDataset(torch.utils.data.Dataset):
    """Samples -> (transformed image, label, index); the index finds the sample's boxes and
    masks in the evaluation."""

    def __init__(self, samples: list[Sample], transform: Callable):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        sample = self.samples[index]
        image = load_rgb(sample.path)
        _warn_box_outside(sample, image.size)
        return self.transform(image), sample.label, index


_WARNED: set[Path] = set()  # images whose box off the image was told, in this process


def _warn_box_outside(sample: Sample, size: tuple[int, int]) -> None:
    """A box meets its image's size here, where the image is read (the CUB release gives no
    sizes). One pixel past the border is the release's x + width of a box that touches it; a
    box further out is most likely another image's, which the evaluation would clip to this
    one. Told once per image."""
    if sample.path in _WARNED:
        return
    width, height = size
    for box, origin in zip(sample.boxes, sample.box_origins):
        if box[2] > width + 1 or box[3] > height + 1:
            _WARNED.add(sample.path)
            log.warning(
                "%s: box (%s) lies outside the %dx%d image %s; the evaluation clips it to the image",
                origin, shown_box(box), width, height, sample.path,
            )  # fmt: skip
            return
