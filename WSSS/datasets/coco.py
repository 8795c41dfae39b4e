"""MS COCO 2014 from its instances file: the classes in category-id order, image labels, and masks
drawn with pycocotools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pycocotools import mask as coco_mask

from bas.data import at, leaves_folder
from bas.errors import DatasetError
from WSSS.datasets.samples import IGNORE, MaskSet, Sample, read_id_list, read_only

COCO_LAYOUT = "a COCO 2014 root with train2014/, val2014/, annotations/instances_{train,val}2014.json"


class _CocoImage(NamedTuple):
    path: Path
    height: int
    width: int
    annotations: list  # [(annotation id, class index, iscrowd, segmentation), ...]


class CocoInstances:
    """One COCO 2014 split (``train`` or ``val``) read from its instances file, once: the
    80 classes in category-id order, per-image labels, and masks drawn with pycocotools."""

    def __init__(self, root: str | Path, split: str = "train", year: int = 2014):
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: no such folder; expected {COCO_LAYOUT}")
        self.json = root / "annotations" / f"instances_{split}{year}.json"
        images = root / f"{split}{year}"
        if not images.is_dir():
            raise DatasetError(f"{images}: no such folder; expected {COCO_LAYOUT}")
        content = self._load()
        categories = sorted(self._entries(content, "categories", ("id", "name")), key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in categories]
        self.classes = tuple(c["name"] for c in categories)
        class_of = {category_id: c for c, category_id in enumerate(self.category_ids)}
        self.images: dict[str, _CocoImage] = {}
        by_id = {}
        for entry in self._entries(content, "images", ("id", "file_name", "height", "width")):
            problem = leaves_folder(entry["file_name"]) if isinstance(entry["file_name"], str) else "is not a string"
            if problem is not None:
                raise DatasetError(f"{self.json}: image {entry['id']}: file name {entry['file_name']!r} {problem}")
            name = Path(entry["file_name"]).stem
            if name in self.images:
                raise DatasetError(f"{self.json}: image {entry['id']}: file name {entry['file_name']!r} again")
            by_id[entry["id"]] = self.images[name] = _CocoImage(
                images / entry["file_name"], int(entry["height"]), int(entry["width"]), []
            )
        for entry in self._entries(content, "annotations", ("id", "image_id", "category_id", "segmentation")):
            where = f"{self.json}: annotation {entry['id']}"
            if entry["image_id"] not in by_id:
                raise DatasetError(f"{where}: unknown image id {entry['image_id']}")
            if entry["category_id"] not in class_of:
                raise DatasetError(f"{where}: unknown category id {entry['category_id']}")
            image = by_id[entry["image_id"]]
            crowd = bool(entry.get("iscrowd", 0))
            _check_segmentation(where, entry["segmentation"], image.height, image.width)
            image.annotations.append((entry["id"], class_of[entry["category_id"]], crowd, entry["segmentation"]))

    def _load(self) -> dict:
        try:
            with self.json.open(encoding="utf-8") as f:
                content = json.load(f)
        except FileNotFoundError:
            raise DatasetError(f"{self.json}: instances file missing; expected {COCO_LAYOUT}") from None
        except json.JSONDecodeError as error:
            raise at(self.json, error.lineno, f"not valid JSON ({error.msg})") from None
        except (OSError, UnicodeDecodeError) as error:
            raise DatasetError(f"{self.json}: cannot read the instances file ({error})") from None
        if not isinstance(content, dict):
            raise DatasetError(f"{self.json}: not a COCO instances file (no top-level object)")
        return content

    def _entries(self, content: dict, key: str, fields: tuple[str, ...]) -> list[dict]:
        entries = content.get(key)
        if not isinstance(entries, list):
            raise DatasetError(f"{self.json}: no {key!r} list; not a COCO instances file")
        for position, entry in enumerate(entries):
            missing = [field for field in fields if not isinstance(entry, dict) or field not in entry]
            if missing:
                raise DatasetError(f"{self.json}: {key} entry {position} lacks {', '.join(missing)}")
        return entries

    def _listed(self, list_file: str | Path | None) -> list[tuple[str, _CocoImage]]:
        """The images of ``list_file`` (names as the original's lists: file names without
        suffix) in its order; by default every image with an annotation, by name, as the
        original's lists (COCO has images without any)."""
        if list_file is None:
            names = sorted(name for name, image in self.images.items() if image.annotations)
            if not names:
                raise DatasetError(f"{self.json}: no image has an annotation")
            return [(name, self.images[name]) for name in names]
        listed = []
        for lineno, name in read_id_list(list_file):
            if name not in self.images:
                raise at(Path(list_file), lineno, f"image {name!r} is not in {self.json.name}")
            if not self.images[name].annotations:
                raise at(Path(list_file), lineno, f"image {name!r} has no annotation in {self.json.name}")
            listed.append((name, self.images[name]))
        return listed

    def samples(self, list_file: str | Path | None = None) -> list[Sample]:
        """The images of ``list_file`` (default: all annotated ones), each image file checked."""
        samples = []
        for name, image in self._listed(list_file):
            if not image.path.is_file():
                raise DatasetError(f"{image.path}: image missing (listed in {self.json.name})")
            label = np.zeros(len(self.classes), np.float32)
            label[[c for _, c, _, _ in image.annotations]] = 1
            samples.append(Sample(name, image.path, read_only(label)))
        return samples

    def masks(self, list_file: str | Path | None = None, crowd: str = "ignore") -> MaskSet:
        """The semantic masks of ``list_file`` (default: all annotated images); ``crowd`` is
        "ignore" (crowd regions 255 where no instance covers them) or "class"."""
        if crowd not in ("ignore", "class"):
            raise ValueError(f"crowd {crowd!r}: expected 'ignore' or 'class'")
        listed = self._listed(list_file)
        return MaskSet([name for name, _ in listed], _CocoMaskReader([image for _, image in listed], crowd))


def _check_segmentation(where: str, segmentation, height: int, width: int) -> None:
    """Polygons (lists of x, y, ... with 3 points or more) or an RLE of the image's size."""
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                raise DatasetError(f"{where}: a polygon needs x, y pairs of 3 points or more")
        return
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise DatasetError(f"{where}: segmentation is neither polygons nor an RLE with counts and size")
    if list(segmentation["size"]) != [height, width]:
        raise DatasetError(f"{where}: RLE size {segmentation['size']} is not the image's [{height}, {width}]")


def _rle(segmentation, height: int, width: int) -> dict:
    """A compressed RLE of polygons (merged), an uncompressed RLE (counts as a list) or a
    compressed one (as given), as pycocotools' own annToRLE reads them."""
    if isinstance(segmentation, list):
        return coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return coco_mask.frPyObjects(segmentation, height, width)
    return segmentation


class _CocoMaskReader:
    """Picklable reader for MaskSet (loader workers): H x W uint8 from the annotations."""

    def __init__(self, images: list[_CocoImage], crowd: str):
        self.images, self.crowd = images, crowd

    def __call__(self, index: int) -> np.ndarray:
        image = self.images[index]
        mask = np.zeros((image.height, image.width), np.uint8)
        crowds = []
        for _, c, crowd, segmentation in image.annotations:
            inside = coco_mask.decode(_rle(segmentation, image.height, image.width)).astype(bool)
            if crowd and self.crowd == "ignore":
                crowds.append(inside)
            else:
                mask[inside] = c + 1
        for inside in crowds:
            mask[inside & (mask == 0)] = IGNORE
        return mask
