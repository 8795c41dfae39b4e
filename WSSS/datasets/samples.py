"""The sample every VOC or COCO reader returns, id lists (ours, the original's, DeepLab's),
and the ground-truth masks of a list, read on demand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bas.data import at, read_lines, relative_path
from bas.errors import DatasetError

IGNORE = 255  # the void label of VOC masks
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DEEPLAB_IMAGES = "/JPEGImages/"  # how DeepLab's lists start an image's path (relative to VOC2012/)


@dataclass(frozen=True)
class Sample:
    """One image and its image-level label; masks are read apart (``voc_masks``,
    ``CocoInstances.masks``) since training and seed making never need them."""

    image_id: str  # VOC '2007_000032', COCO 'COCO_train2014_000000000009'
    path: Path  # the image file
    label: np.ndarray  # C float32 multi-hot; read-only


def read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)  # shared by every epoch and worker
    return array


def read_id_list(path: str | Path) -> list[tuple[int, str]]:
    """(line number, image id) for each non-blank line. An id is the line's first field, so the
    original's ``*_cls.txt`` (``id c1 c2 ...``, labels ignored: ours come from the annotations)
    and DeepLab's ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` lists work as well."""
    path = Path(path)
    ids, seen = [], {}
    for lineno, line in read_lines(path, "one image id a line"):
        image_id = _listed_id(path, lineno, line.split()[0])
        if image_id in seen:
            raise at(path, lineno, f"image id {image_id!r} again (first on line {seen[image_id]})")
        seen[image_id] = lineno
        ids.append((lineno, image_id))
    if not ids:
        raise DatasetError(f"{path}: lists no image")
    return ids


def _listed_id(path: Path, lineno: int, first: str) -> str:
    """The id a list's first field names: the id, its file name (``<id>.jpg``) or DeepLab's
    ``/JPEGImages/<id>.jpg``. Any other folder is refused, since the image is read from
    JPEGImages/ whatever the list says; and the id, a file name of every stage's output, is
    checked to name no folder."""
    name = relative_path(first.removeprefix(DEEPLAB_IMAGES), path, lineno)
    if "/" in name:
        raise at(path, lineno, f"{first!r} is not an image id, <id>.jpg or {DEEPLAB_IMAGES}<id>.jpg")
    return Path(name).stem if name.lower().endswith(IMAGE_SUFFIXES) else name


class MaskSet(torch.utils.data.Dataset):
    """The ground-truth masks of a list, read on demand: ``masks[i]`` -> (image id, H x W uint8);
    ``masks.mask(image_id)`` -> H x W uint8. A data loader can read them in parallel."""

    def __init__(self, ids: list[str], read: Callable[[int], np.ndarray]):
        self.ids = ids
        self._read = read
        self._index = {image_id: i for i, image_id in enumerate(ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[str, np.ndarray]:
        return self.ids[index], self._read(index)

    def mask(self, image_id: str) -> np.ndarray:
        if image_id not in self._index:
            raise KeyError(f"image {image_id!r} is not in this mask list")
        return self._read(self._index[image_id])
