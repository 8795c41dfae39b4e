"""The sample every parser returns, and the checks they share: list files split into fields,
numbers and boxes checked at their line, rows grouped by image id against the index list."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bas.data import at, read_lines
from bas.errors import DatasetError


@dataclass(frozen=True)
class Sample:
    """One image and its annotations as the lists give them; boxes stay in original pixels so that
    each protocol applies its own resize and crop."""

    image_id: str  # as written in the lists (relative path)
    path: Path  # the image file
    label: int  # 0-based class index
    boxes: np.ndarray  # k x 4 float32 (x0, y0, x1, y1) in original image pixels; (0, 4) if none; read-only
    size: tuple[int, int] | None  # (width, height) when the lists give it
    mask_paths: tuple[Path, ...] = ()  # GT masks: OpenImages instance masks, CUB segmentation
    ignore_path: Path | None = None  # OpenImages ignore mask
    box_origins: tuple[str, ...] = ()  # where each box is written ("list:line"), for the warning of one off its image


Rows = list[tuple[int, list[str]]]  # (line number, fields) per non-blank line


def read_list(path: Path, forms: str | tuple[str, ...], layout: str) -> Rows:
    """The non-blank lines of a list file, split into fields (by commas when the form has them,
    else by white space). With several forms, the first line picks one and all lines follow it."""
    forms = (forms,) if isinstance(forms, str) else forms
    sep = "," if "," in forms[0] else None
    counts = [len(form.split(sep)) for form in forms]
    count, rows = None, []
    for lineno, line in read_lines(path, layout):
        fields = line.split(sep)
        if count is None and len(fields) in counts:
            count = len(fields)
        if len(fields) != count:
            expected = [forms[counts.index(count)]] if count else forms
            raise at(path, lineno, f"expected {' or '.join(map(repr, expected))}, got {line.strip()!r}")
        rows.append((lineno, fields))
    return rows


def int_at(path: Path, lineno: int, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise at(path, lineno, f"{what} {text!r} is not an integer") from None


def float_at(path: Path, lineno: int, text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise at(path, lineno, f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise at(path, lineno, f"{what} {text!r} is not finite")
    return value


def checked_box(path: Path, lineno: int, box: tuple[float, ...], size: tuple[int, int] | None) -> tuple[float, ...]:
    """(x0, y0, x1, y1), checked: x1 >= x0, y1 >= y0, and inside the image (x1 <= width) where
    its size is known."""
    x0, y0, x1, y1 = box
    if x1 < x0 or y1 < y0:
        raise at(path, lineno, f"box ({shown_box(box)}) has x1 < x0 or y1 < y0")
    if x0 < 0 or y0 < 0 or (size is not None and (x1 > size[0] or y1 > size[1])):
        inside = f" of {size[0]}x{size[1]}" if size is not None else ""
        raise at(path, lineno, f"box ({shown_box(box)}) lies outside the image{inside}")
    return box


def shown_box(box: tuple[float, ...]) -> str:
    return ", ".join(f"{v:g}" for v in box)


def box_array(rows: list[tuple[float, ...]]) -> np.ndarray:
    boxes = np.asarray(rows, dtype=np.float32).reshape(-1, 4)  # k x 4
    boxes.setflags(write=False)  # shared by every epoch: nobody may scale it in place
    return boxes


def by_image(path: Path, rows: Rows, known: Collection[Hashable], index: Path, key: Callable | None = None) -> dict:
    """Rows grouped by their first field, an image id that ``index`` must list (parsed by ``key``
    where not a string): {id: [(line number, fields), ...]}."""
    grouped = defaultdict(list)
    for row in rows:
        lineno, (first, *_) = row
        image_id = first if key is None else key(path, lineno, first)
        if image_id not in known:
            raise at(path, lineno, f"unknown image id {first!r} (not in {index.name})")
        grouped[image_id].append(row)
    return grouped


def one_each(path: Path, grouped: dict, listed: dict, index: Path) -> dict:
    """One row per image, for every image that ``index`` lists ({id: line number there})."""
    for image_id, rows in grouped.items():
        if len(rows) > 1:
            raise at(path, rows[1][0], f"image id {image_id!r} again (first on line {rows[0][0]})")
    every_image(path, grouped, listed, index)
    return {image_id: rows[0] for image_id, rows in grouped.items()}


def every_image(path: Path, grouped: dict, listed: dict, index: Path) -> None:
    for image_id, lineno in listed.items():
        if image_id not in grouped:
            raise at(index, lineno, f"image {image_id!r} has no line in {path.name}")


def image_number(path: Path, lineno: int, text: str) -> int:
    return int_at(path, lineno, text, "image id")


NO_BOXES = box_array([])  # 0 x 4


def require_folders(layout: str, *folders: Path) -> None:
    for folder in folders:
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such folder; expected {layout}")


def found(path: Path, elsewhere: Path) -> Path:
    """``path``, or ``elsewhere`` where only that one exists (a release unpacked another way); a
    missing file is then reported at ``path``."""
    return elsewhere if elsewhere.is_file() and not path.is_file() else path


def num_classes(samples: list[Sample]) -> int:
    """The classifier's width the labels need: the largest label + 1."""
    if not samples:
        raise DatasetError("no samples to count classes in")
    return max(sample.label for sample in samples) + 1
