"""What every dataset parser stands on: list files read line by line, errors that name the
list's file and line, images read as RGB, and the check that keeps a list's paths inside the
folder they are relative to.

A list's ids become paths twice: the files read (``<root>/<id>``) and the files written
after them (``<maps>/<id>.npy``, ``<seeds>/<id>.npz``). Each parser checks an id once, where
it reads it, so that no reader or writer downstream has to.
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from bas.errors import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def at(path: Path, lineno: int, problem: str) -> DatasetError:
    """The error of one line of a list: ``path:line: problem``."""
    return DatasetError(f"{path}:{lineno}: {problem}")


def read_lines(path: Path, layout: str) -> list[tuple[int, str]]:
    """(line number, stripped line) for every non-blank line of a UTF-8 text file."""
    if not path.is_file():
        raise DatasetError(f"{path}: list file missing; expected {layout}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not a UTF-8 text file ({error})") from None
    return [(lineno, line.strip()) for lineno, line in enumerate(text.splitlines(), 1) if line.strip()]


def leaves_folder(name: str) -> str | None:
    """Why the relative path ``name`` would not stay inside the folder it is joined to, or
    None where it stays. Checked on the text alone, so that no file is touched: with no root,
    no drive, no backslash (Windows' separator) and no ``..``, a path cannot climb out."""
    if "\0" in name:
        return "holds a NUL byte"
    if "\\" in name:
        return "holds a backslash (lists separate folders with /)"
    if re.match(r"[A-Za-z]:", name):
        return "starts with a drive (C:)"
    if name.startswith("/"):
        return "is absolute"
    if ".." in name.split("/"):
        return "goes up a folder with '..'"
    return None


def relative_path(name: str, list_path: Path, lineno: int) -> str:
    """``name``, a path that line ``lineno`` of ``list_path`` gives relative to a dataset
    folder, once checked to stay inside it."""
    problem = leaves_folder(name)
    if problem is not None:
        raise at(list_path, lineno, f"path {name!r} {problem}; a list's paths stay inside the dataset's folder")
    return name


def load_rgb(path: Path) -> Image.Image:
    """The image in RGB, read by PIL as the original does; a file that fails names itself."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        raise DatasetError(f"{path}: cannot read the image ({error})") from error
