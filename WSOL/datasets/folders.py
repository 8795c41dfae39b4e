"""Images in class folders (ILSVRC train), found as torchvision's ImageFolder finds them."""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from bas.errors import DatasetError
from WSOL.datasets.samples import NO_BOXES, Sample

FOLDERS_LAYOUT = "class folders <root>/<class>/<image>.JPEG (as torchvision's ImageFolder)"


def class_folders(root: Path) -> list[Sample]:
    """Images in class folders (ILSVRC train): classes are the sorted folder names and files are
    found as torchvision's ImageFolder finds them, so the labels match the original's."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder; expected {FOLDERS_LAYOUT}")
    try:
        _, class_to_idx = find_classes(root)
        found = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as error:
        raise DatasetError(f"{root}: {error}; expected {FOLDERS_LAYOUT}") from None
    return [Sample(Path(p).relative_to(root).as_posix(), Path(p), label, NO_BOXES, None) for p, label in found]
