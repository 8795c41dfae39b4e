"""The CUB-200-2011 release: images.txt and its per-image lists, boxes as (x, y, width, height)."""

from __future__ import annotations

from pathlib import Path

from bas.data import at, relative_path
from bas.errors import DatasetError
from WSOL.datasets.samples import (
    Sample,
    box_array,
    by_image,
    checked_box,
    every_image,
    float_at,
    image_number,
    int_at,
    one_each,
    read_list,
)

CUB_LAYOUT = (
    "the CUB_200_2011 release folder: images.txt, image_class_labels.txt, train_test_split.txt, "
    "bounding_boxes.txt, optional classes.txt, images/<class_dir>/<file>.jpg, "
    "optional segmentations/<class_dir>/<file>.png"
)


def cub_release(root: Path, split: str) -> list[Sample]:
    """The 'train' or 'test' images of a CUB_200_2011 release folder, in images.txt order.

    Ids and class ids are 1-based in the release; labels here are 0-based. Boxes are
    (x, y, x + w, y + h), unclipped as in the original BAS lists: a few release boxes reach
    a pixel or more past the border, which the evaluation's clipping absorbs. The release gives
    no image sizes (size None). Masks come from segmentations/ when that folder is present.
    """
    if split not in ("train", "test"):
        raise DatasetError(f"CUB release split {split!r}: expected 'train' or 'test' (the release has no val split)")
    root = Path(root)
    for folder in (root, root / "images"):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such folder; expected {CUB_LAYOUT}")
    index = root / "images.txt"
    listed, names = {}, {}  # id -> line in images.txt, id -> relative path
    for lineno, (id_text, name) in read_list(index, "<image_id> <class_dir/file.jpg>", CUB_LAYOUT):
        image_id = image_number(index, lineno, id_text)
        if image_id in listed:
            raise at(index, lineno, f"image id {image_id} again (first on line {listed[image_id]})")
        listed[image_id], names[image_id] = lineno, relative_path(name, index, lineno)

    def per_image(name: str, form: str) -> tuple[Path, dict]:
        path = root / name
        return path, by_image(path, read_list(path, form, CUB_LAYOUT), listed, index, image_number)

    labels_txt, grouped = per_image("image_class_labels.txt", "<image_id> <class_id>")
    labels = one_each(labels_txt, grouped, listed, index)
    split_txt, grouped = per_image("train_test_split.txt", "<image_id> <is_training_image>")
    flags = one_each(split_txt, grouped, listed, index)
    boxes_txt, boxes = per_image("bounding_boxes.txt", "<image_id> <x> <y> <width> <height>")
    every_image(boxes_txt, boxes, listed, index)
    class_ids = _cub_class_ids(root / "classes.txt") if (root / "classes.txt").exists() else None
    masks = root / "segmentations"

    samples = []
    want = "1" if split == "train" else "0"
    for image_id, name in names.items():
        lineno, (_, class_text) = labels[image_id]
        class_id = int_at(labels_txt, lineno, class_text, "class id")
        if class_id < 1 or (class_ids is not None and class_id not in class_ids):
            raise at(labels_txt, lineno, f"unknown class id {class_id} (ids are 1-based, as in classes.txt)")
        lineno, (_, flag) = flags[image_id]
        if flag not in ("0", "1"):
            raise at(split_txt, lineno, f"is_training_image {flag!r}: expected 1 or 0")
        rows, origins = [], []
        for lineno, (_, *fields) in boxes[image_id]:
            x, y, w, h = (float_at(boxes_txt, lineno, text, "box value") for text in fields)
            rows.append(checked_box(boxes_txt, lineno, (x, y, x + w, y + h), None))
            origins.append(f"{boxes_txt}:{lineno}")
        if flag != want:
            continue
        mask_paths = ()
        if masks.is_dir():
            mask = masks / Path(name).with_suffix(".png")
            if not mask.is_file():
                raise at(index, listed[image_id], f"segmentation mask {mask} missing (segmentations/ is present)")
            mask_paths = (mask,)
        path = root / "images" / name
        samples.append(Sample(name, path, class_id - 1, box_array(rows), None, mask_paths, box_origins=tuple(origins)))
    if not samples:
        raise DatasetError(f"{split_txt}: no image is marked {want} ({split})")
    return samples


def _cub_class_ids(path: Path) -> set[int]:
    ids = set()
    for lineno, (id_text, _) in read_list(path, "<class_id> <name>", CUB_LAYOUT):
        class_id = int_at(path, lineno, id_text, "class id")
        if class_id in ids:
            raise at(path, lineno, f"class id {class_id} again")
        ids.add(class_id)
    return ids
