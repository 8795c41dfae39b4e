"""wsolevaluation's metadata (CUB, ILSVRC, OpenImages): image_ids.txt, class_labels.txt, and the
optional image_sizes.txt and localization.txt (boxes, or OpenImages masks)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from bas.data import at, relative_path
from bas.errors import DatasetError
from WSOL.datasets.samples import (
    Sample,
    box_array,
    by_image,
    checked_box,
    every_image,
    float_at,
    int_at,
    one_each,
    read_list,
)

WSOL_LAYOUT = (
    "a wsolevaluation metadata/<DS>/<split>/ folder: image_ids.txt, class_labels.txt, "
    "optional image_sizes.txt and localization.txt"
)


def wsol_metadata(metadata_dir: Path, image_root: Path | None, mask_root: Path | None = None) -> list[Sample]:
    """One split of wsolevaluation's metadata (metadata/<DS>/<split>/), in image_ids.txt order.

    class_labels.txt must label every image (0-based). image_sizes.txt (empty for OpenImages)
    and localization.txt (absent from train splits) are optional, but once given they cover
    every image. localization.txt holds boxes, ``image_id,x0,y0,x1,y1``, or OpenImages masks,
    ``image_id,mask_path,ignore_path`` (the ignore path on an image's first line only); one line
    per box or mask. Image ids are relative to ``image_root``, masks to ``mask_root`` (default:
    ``image_root``). ``image_root`` None is for callers that read no pixel (scoring saved maps):
    image_sizes.txt must then give every image's size, and the paths are the ids themselves.
    """
    metadata_dir = Path(metadata_dir)
    image_root = Path(image_root) if image_root is not None else None
    mask_root = Path(mask_root) if mask_root is not None else image_root
    if not metadata_dir.is_dir():
        raise DatasetError(f"{metadata_dir}: no such folder; expected {WSOL_LAYOUT}")
    listed = _image_ids(metadata_dir / "image_ids.txt")
    if image_root is not None and not image_root.is_dir():
        example = next(iter(listed))
        raise DatasetError(f"{image_root}: no such folder; expected the root that ids like {example!r} are in")
    labels = _class_labels(metadata_dir, listed)
    sizes = _image_sizes(metadata_dir, listed)
    if image_root is None:
        for image_id, lineno in listed.items():
            if image_id not in sizes:
                problem = f"image {image_id!r} has no size in image_sizes.txt, and no image folder was given to read it"
                raise at(metadata_dir / "image_ids.txt", lineno, problem)
    found = _localization(metadata_dir, listed, sizes, mask_root)
    return [
        Sample(
            image_id,
            _under(image_root, image_id),
            labels[image_id],
            box_array(found.boxes[image_id]),
            sizes.get(image_id),
            tuple(found.masks[image_id]),
            found.ignores.get(image_id),
            tuple(found.origins[image_id]),
        )
        for image_id in listed
    ]


def _image_ids(index: Path) -> dict[str, int]:
    """image_ids.txt: {id: its line}, in the file's order."""
    listed = {}
    for lineno, (image_id,) in read_list(index, "<image_id>", WSOL_LAYOUT):
        if image_id in listed:
            raise at(index, lineno, f"image id {image_id!r} again (first on line {listed[image_id]})")
        listed[relative_path(image_id, index, lineno)] = lineno
    if not listed:
        raise DatasetError(f"{index}: lists no image")
    return listed


def _per_image(metadata_dir: Path, name: str, forms: str | tuple[str, ...], listed: dict) -> tuple[Path, dict]:
    """A list of the split, its rows grouped by the image ids of image_ids.txt."""
    path = metadata_dir / name
    return path, by_image(path, read_list(path, forms, WSOL_LAYOUT), listed, metadata_dir / "image_ids.txt")


def _class_labels(metadata_dir: Path, listed: dict) -> dict[str, int]:
    """class_labels.txt: {id: 0-based class}, one line per image."""
    labels_txt, grouped = _per_image(metadata_dir, "class_labels.txt", "image_id,class_index", listed)
    labels = {}
    for image_id, (lineno, (_, text)) in one_each(labels_txt, grouped, listed, metadata_dir / "image_ids.txt").items():
        labels[image_id] = int_at(labels_txt, lineno, text, "class index")
        if labels[image_id] < 0:
            raise at(labels_txt, lineno, f"class index {labels[image_id]} is negative")
    return labels


def _image_sizes(metadata_dir: Path, listed: dict) -> dict[str, tuple[int, int]]:
    """image_sizes.txt: {id: (width, height)}; none where the file is absent or empty."""
    sizes = {}
    if not (metadata_dir / "image_sizes.txt").exists():
        return sizes
    sizes_txt, grouped = _per_image(metadata_dir, "image_sizes.txt", "image_id,width,height", listed)
    rows = one_each(sizes_txt, grouped, listed, metadata_dir / "image_ids.txt") if grouped else {}
    for image_id, (lineno, (_, *fields)) in rows.items():
        width, height = (int_at(sizes_txt, lineno, text, "size") for text in fields)
        if width < 1 or height < 1:
            raise at(sizes_txt, lineno, f"size {width}x{height} is empty")
        sizes[image_id] = (width, height)
    return sizes


class Localization(NamedTuple):
    """localization.txt's content per image id."""

    boxes: dict[str, list[tuple[float, ...]]]
    origins: dict[str, list[str]]  # where each box is written
    masks: dict[str, list[Path]]
    ignores: dict[str, Path | None]  # the ignore mask named on the image's first line


def _localization(metadata_dir: Path, listed: dict, sizes: dict, mask_root: Path | None) -> Localization:
    """localization.txt: boxes (checked against the image sizes known) or OpenImages masks; every
    image has a line once the file is present, none where it is absent (train splits)."""
    found = Localization(defaultdict(list), defaultdict(list), defaultdict(list), {})
    if not (metadata_dir / "localization.txt").exists():
        return found
    forms = ("image_id,x0,y0,x1,y1", "image_id,mask_path,ignore_path")
    loc_txt, grouped = _per_image(metadata_dir, "localization.txt", forms, listed)
    every_image(loc_txt, grouped, listed, metadata_dir / "image_ids.txt")
    for image_id, rows in grouped.items():
        for lineno, (_, *fields) in rows:
            if len(fields) == 4:
                box = tuple(float_at(loc_txt, lineno, text, "box value") for text in fields)
                found.boxes[image_id].append(checked_box(loc_txt, lineno, box, sizes.get(image_id)))
                found.origins[image_id].append(f"{loc_txt}:{lineno}")
                continue
            mask, ignore = fields
            if not mask:
                raise at(loc_txt, lineno, "empty mask path")
            if ignore and image_id in found.ignores:
                raise at(loc_txt, lineno, "ignore mask on a later line: only the image's first line may name it")
            ignore_path = _under(mask_root, relative_path(ignore, loc_txt, lineno)) if ignore else None
            found.ignores.setdefault(image_id, ignore_path)
            found.masks[image_id].append(_under(mask_root, relative_path(mask, loc_txt, lineno)))
    return found


def _under(root: Path | None, name: str) -> Path:
    return Path(name) if root is None else root / name
