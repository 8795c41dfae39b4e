"""The Stanford Cars release: MATLAB struct arrays of boxes, classes and file names."""

from __future__ import annotations

from pathlib import Path

from bas.errors import DatasetError
from WSOL.datasets.matlab import mat_int, mat_path, mat_text, read_mat
from WSOL.datasets.samples import Sample, box_array, found, require_folders

CARS_LAYOUT = (
    "the Stanford Cars release: cars_train/, cars_test/, devkit/cars_train_annos.mat, devkit/cars_meta.mat, and "
    "cars_test_annos_withlabels.mat (the test labels, released apart; beside devkit/ or in it)"
)


def stanford_cars(root: Path, split: str) -> list[Sample]:
    """The 'train' or 'test' images of the Stanford Cars release, in annotation order.

    The annotations are struct arrays (``bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, fname``) in
    MATLAB's 1-based pixel coordinates, the max inclusive; boxes here are their pixel edges in
    0-based coordinates, (x1 - 1, y1 - 1, x2, y2), as the CUB boxes (x, y, x + w, y + h). Classes
    are 1-based (0-based here) and index devkit/cars_meta.mat's class names, which are checked
    where present.
    """
    if split not in ("train", "test"):
        raise DatasetError(f"Stanford Cars split {split!r}: expected 'train' or 'test'")
    root = Path(root)
    images = root / f"cars_{split}"
    require_folders(CARS_LAYOUT, root, images, root / "devkit")
    if split == "train":
        path = root / "devkit" / "cars_train_annos.mat"
    else:
        path = found(root / "cars_test_annos_withlabels.mat", root / "devkit" / "cars_test_annos_withlabels.mat")
    (annotations,) = read_mat(path, ("annotations",), CARS_LAYOUT)
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    missing = [field for field in fields if field not in (annotations.dtype.names or ())]
    if missing:
        hint = " (cars_test_annos.mat has none: the test labels are cars_test_annos_withlabels.mat)"
        raise DatasetError(
            f"{path}: annotations lack the field {', '.join(map(repr, missing))}{hint if 'class' in missing else ''}"
        )
    classes = cars_class_names(root)
    samples = []
    for entry, record in enumerate(annotations):
        name = mat_path(path, entry, record["fname"], "fname")
        x1, y1, x2, y2 = (mat_int(path, entry, record[field], field) for field in fields[:4])
        label = mat_int(path, entry, record["class"], "class")
        if classes is not None and label > len(classes):
            raise DatasetError(f"{path}: entry {entry + 1}: class {label}, but cars_meta.mat names {len(classes)}")
        if x2 < x1 or y2 < y1:
            raise DatasetError(f"{path}: entry {entry + 1}: box ({x1}, {y1}, {x2}, {y2}) has x2 < x1 or y2 < y1")
        box, origin = box_array([(x1 - 1, y1 - 1, x2, y2)]), f"{path}: entry {entry + 1}"
        samples.append(Sample(name, images / name, label - 1, box, None, box_origins=(origin,)))
    if not samples:
        raise DatasetError(f"{path}: lists no image")
    return samples


def cars_class_names(root: Path) -> list[str] | None:
    """devkit/cars_meta.mat's class names, or None where it is absent."""
    path = Path(root) / "devkit" / "cars_meta.mat"
    if not path.is_file():
        return None
    (names,) = read_mat(path, ("class_names",), CARS_LAYOUT)
    return [mat_text(path, entry, name, "class name") for entry, name in enumerate(names)]
