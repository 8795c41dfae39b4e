"""Label PNGs, the per-image files of the IR labels, the pseudo masks and the segmentation
net's predictions: H x W class indices (0 background, c + 1 for class c, 255 unsure),
grayscale as IRN writes them, or with VOC's palette for viewing. PIL reads both as the same
indices; IRN's own readers (imageio) only the grayscale ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from bas.errors import DatasetError
from bas.outputs import replace_atomic
from WSSS import datasets

PALETTES = ("gray", "voc")


def save_label_png(labels: np.ndarray, path: Path, palette: str = "gray") -> None:
    """H x W uint8 class indices as a PNG, grayscale or with VOC's palette (``palette``),
    written then renamed. PIL reads both back as the same indices."""
    image = Image.fromarray(labels, mode="L" if palette == "gray" else "P")
    if palette == "voc":
        image.putpalette(datasets.voc_palette())

    def write(fd: int) -> None:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")

    replace_atomic(write, path)


def read_labels(path: Path, num_classes: int) -> np.ndarray:
    """H x W uint8 labels of a PNG (0..num_classes, 255), checked."""
    if not path.is_file():
        raise DatasetError(
            f"{path}: no labels for this id; make them first (stage make_sem_seg_labels) or point --sem_seg_out_dir "
            "at a folder of label PNGs"
        )
    return datasets.read_mask(path, num_classes)
