"""FGVC-Aircraft 2013b, by variant: text lists of images, variants and boxes."""

from __future__ import annotations

from pathlib import Path

from bas.data import at, read_lines, relative_path
from bas.errors import DatasetError
from WSOL.datasets.samples import Sample, box_array, checked_box, float_at, read_list, require_folders

AIRCRAFT_LAYOUT = (
    "the fgvc-aircraft-2013b folder: data/images/<id>.jpg, data/images_variant_<split>.txt, data/images_box.txt, "
    "data/variants.txt"
)
AIRCRAFT_SPLITS = ("train", "val", "trainval", "test")


def fgvc_aircraft(root: Path, split: str) -> list[Sample]:
    """One split ('train', 'val', 'trainval' or 'test') of FGVC-Aircraft 2013b, by variant (100
    classes), in the order of ``images_variant_<split>.txt``.

    Labels are the variants' positions in variants.txt. images_box.txt gives one box per image as
    1-based pixel indices, the max inclusive (its README: the top-left pixel is (1, 1)); boxes here
    are their pixel edges in 0-based coordinates, (xmin - 1, ymin - 1, xmax, ymax). The images keep
    the 20-pixel copyright banner at their bottom, as the boxes' frame does.
    """
    if split not in AIRCRAFT_SPLITS:
        raise DatasetError(f"FGVC-Aircraft split {split!r}: expected one of {', '.join(AIRCRAFT_SPLITS)}")
    data = Path(root) / "data"
    require_folders(AIRCRAFT_LAYOUT, Path(root), data, data / "images")
    variants = {name: label for label, name in enumerate(aircraft_class_names(root, required=True))}
    index = data / f"images_variant_{split}.txt"
    listed = {}  # image id -> (line, label)
    for lineno, line in read_lines(index, AIRCRAFT_LAYOUT):
        id_text, _, variant = line.partition(" ")
        image_id = relative_path(id_text, index, lineno)
        if variant.strip() not in variants:
            raise at(index, lineno, f"variant {variant.strip()!r} is not in variants.txt")
        if image_id in listed:
            raise at(index, lineno, f"image {image_id!r} again (first on line {listed[image_id][0]})")
        listed[image_id] = (lineno, variants[variant.strip()])
    if not listed:
        raise DatasetError(f"{index}: lists no image")
    boxes_txt = data / "images_box.txt"
    boxes = {}  # image id -> (box, where it is written)
    for lineno, (image_id, *fields) in read_list(boxes_txt, "<image_id> <xmin> <ymin> <xmax> <ymax>", AIRCRAFT_LAYOUT):
        if image_id in boxes:
            raise at(boxes_txt, lineno, f"image {image_id!r} again")
        xmin, ymin, xmax, ymax = (float_at(boxes_txt, lineno, text, "box value") for text in fields)
        if min(xmin, ymin) < 1:
            raise at(boxes_txt, lineno, f"box ({' '.join(fields)}) starts before pixel 1 (coordinates are 1-based)")
        box = checked_box(boxes_txt, lineno, (xmin - 1, ymin - 1, xmax, ymax), None)
        boxes[image_id] = (box, f"{boxes_txt}:{lineno}")
    samples = []
    for image_id, (lineno, label) in listed.items():
        if image_id not in boxes:
            raise at(index, lineno, f"image {image_id!r} has no line in images_box.txt")
        name, (box, origin) = f"{image_id}.jpg", boxes[image_id]
        samples.append(Sample(name, data / "images" / name, label, box_array([box]), None, box_origins=(origin,)))
    return samples


def aircraft_class_names(root: Path, required: bool = False) -> list[str] | None:
    """The variants, one per line of data/variants.txt, in label order (None where the file is absent
    and not ``required``)."""
    path = Path(root) / "data" / "variants.txt"
    if not required and not path.is_file():
        return None
    names = {}
    for lineno, name in read_lines(path, AIRCRAFT_LAYOUT):
        if name in names:
            raise at(path, lineno, f"variant {name!r} again (first on line {names[name]})")
        names[name] = lineno
    return list(names)
