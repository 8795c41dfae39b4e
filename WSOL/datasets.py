"""Dataset lists -> samples, and the image transforms of the original BAS loaders.

Three layouts are read: the CUB-200-2011 release, wsolevaluation's metadata (CUB, ILSVRC,
OpenImages) and class folders (ILSVRC train). Every list is checked while the sample list is
built, so bad input stops at once with ``path:line: problem`` instead of failing later inside a
data-loader worker. Only an image that fails to decode is found at load time.

Boxes are (x0, y0, x1, y1) in original image pixels, as the lists give them. The CUB release
gives (x, y, width, height); we take x1 = x + width, y1 = y + height: exactly the original BAS
list (test_bounding_box.txt). wsolevaluation's CUB localization.txt holds the same boxes clipped
to (width - 1, height - 1).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from bas.errors import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CUB_LAYOUT = (
    "the CUB_200_2011 release folder: images.txt, image_class_labels.txt, train_test_split.txt, "
    "bounding_boxes.txt, optional classes.txt, images/<class_dir>/<file>.jpg, "
    "optional segmentations/<class_dir>/<file>.png"
)
WSOL_LAYOUT = (
    "a wsolevaluation metadata/<DS>/<split>/ folder: image_ids.txt, class_labels.txt, "
    "optional image_sizes.txt and localization.txt"
)
FOLDERS_LAYOUT = "class folders <root>/<class>/<image>.JPEG (as torchvision's ImageFolder)"


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


Rows = list[tuple[int, list[str]]]  # (line number, fields) per non-blank line


def _at(path: Path, lineno: int, problem: str) -> DatasetError:
    return DatasetError(f"{path}:{lineno}: {problem}")


def _read_list(path: Path, forms: str | tuple[str, ...], layout: str) -> Rows:
    """The non-blank lines of a list file, split into fields (by commas when the form has them,
    else by white space). With several forms, the first line picks one and all lines follow it."""
    forms = (forms,) if isinstance(forms, str) else forms
    if not path.is_file():
        raise DatasetError(f"{path}: list file missing; expected {layout}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not a UTF-8 text file ({error})") from None
    sep = "," if "," in forms[0] else None
    counts = [len(form.split(sep)) for form in forms]
    count, rows = None, []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.strip().split(sep)
        if fields == [] or fields == [""]:
            continue
        if count is None and len(fields) in counts:
            count = len(fields)
        if len(fields) != count:
            expected = [forms[counts.index(count)]] if count else forms
            raise _at(path, lineno, f"expected {' or '.join(map(repr, expected))}, got {line.strip()!r}")
        rows.append((lineno, fields))
    return rows


def _int(path: Path, lineno: int, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _at(path, lineno, f"{what} {text!r} is not an integer") from None


def _float(path: Path, lineno: int, text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _at(path, lineno, f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise _at(path, lineno, f"{what} {text!r} is not finite")
    return value


def _box(path: Path, lineno: int, box: tuple[float, ...], size: tuple[int, int] | None) -> tuple[float, ...]:
    """(x0, y0, x1, y1), checked: x1 >= x0, y1 >= y0, and inside the image (x1 <= width) where
    its size is known."""
    x0, y0, x1, y1 = box
    if x1 < x0 or y1 < y0:
        raise _at(path, lineno, f"box ({_shown(box)}) has x1 < x0 or y1 < y0")
    if x0 < 0 or y0 < 0 or (size is not None and (x1 > size[0] or y1 > size[1])):
        inside = f" of {size[0]}x{size[1]}" if size is not None else ""
        raise _at(path, lineno, f"box ({_shown(box)}) lies outside the image{inside}")
    return box


def _shown(box: tuple[float, ...]) -> str:
    return ", ".join(f"{v:g}" for v in box)


def _boxes(rows: list[tuple[float, ...]]) -> np.ndarray:
    boxes = np.asarray(rows, dtype=np.float32).reshape(-1, 4)  # k x 4
    boxes.setflags(write=False)  # shared by every epoch: nobody may scale it in place
    return boxes


def _by_image(path: Path, rows: Rows, known: Collection[Hashable], index: Path, key: Callable | None = None) -> dict:
    """Rows grouped by their first field, an image id that ``index`` must list (parsed by ``key``
    where not a string): {id: [(line number, fields), ...]}."""
    grouped = defaultdict(list)
    for row in rows:
        lineno, (first, *_) = row
        image_id = first if key is None else key(path, lineno, first)
        if image_id not in known:
            raise _at(path, lineno, f"unknown image id {first!r} (not in {index.name})")
        grouped[image_id].append(row)
    return grouped


def _one_each(path: Path, grouped: dict, listed: dict, index: Path) -> dict:
    """One row per image, for every image that ``index`` lists ({id: line number there})."""
    for image_id, rows in grouped.items():
        if len(rows) > 1:
            raise _at(path, rows[1][0], f"image id {image_id!r} again (first on line {rows[0][0]})")
    _every_image(path, grouped, listed, index)
    return {image_id: rows[0] for image_id, rows in grouped.items()}


def _every_image(path: Path, grouped: dict, listed: dict, index: Path) -> None:
    for image_id, lineno in listed.items():
        if image_id not in grouped:
            raise _at(index, lineno, f"image {image_id!r} has no line in {path.name}")


def _image_number(path: Path, lineno: int, text: str) -> int:
    return _int(path, lineno, text, "image id")


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
    for lineno, (id_text, name) in _read_list(index, "<image_id> <class_dir/file.jpg>", CUB_LAYOUT):
        image_id = _image_number(index, lineno, id_text)
        if image_id in listed:
            raise _at(index, lineno, f"image id {image_id} again (first on line {listed[image_id]})")
        listed[image_id], names[image_id] = lineno, name

    def per_image(name: str, form: str) -> tuple[Path, dict]:
        path = root / name
        return path, _by_image(path, _read_list(path, form, CUB_LAYOUT), listed, index, _image_number)

    labels_txt, grouped = per_image("image_class_labels.txt", "<image_id> <class_id>")
    labels = _one_each(labels_txt, grouped, listed, index)
    split_txt, grouped = per_image("train_test_split.txt", "<image_id> <is_training_image>")
    flags = _one_each(split_txt, grouped, listed, index)
    boxes_txt, boxes = per_image("bounding_boxes.txt", "<image_id> <x> <y> <width> <height>")
    _every_image(boxes_txt, boxes, listed, index)
    class_ids = _cub_class_ids(root / "classes.txt") if (root / "classes.txt").exists() else None
    masks = root / "segmentations"

    samples = []
    want = "1" if split == "train" else "0"
    for image_id, name in names.items():
        lineno, (_, class_text) = labels[image_id]
        class_id = _int(labels_txt, lineno, class_text, "class id")
        if class_id < 1 or (class_ids is not None and class_id not in class_ids):
            raise _at(labels_txt, lineno, f"unknown class id {class_id} (ids are 1-based, as in classes.txt)")
        lineno, (_, flag) = flags[image_id]
        if flag not in ("0", "1"):
            raise _at(split_txt, lineno, f"is_training_image {flag!r}: expected 1 or 0")
        rows = []
        for lineno, (_, *fields) in boxes[image_id]:
            x, y, w, h = (_float(boxes_txt, lineno, text, "box value") for text in fields)
            rows.append(_box(boxes_txt, lineno, (x, y, x + w, y + h), None))
        if flag != want:
            continue
        mask_paths = ()
        if masks.is_dir():
            mask = masks / Path(name).with_suffix(".png")
            if not mask.is_file():
                raise _at(index, listed[image_id], f"segmentation mask {mask} missing (segmentations/ is present)")
            mask_paths = (mask,)
        samples.append(Sample(name, root / "images" / name, class_id - 1, _boxes(rows), None, mask_paths))
    if not samples:
        raise DatasetError(f"{split_txt}: no image is marked {want} ({split})")
    return samples


def _cub_class_ids(path: Path) -> set[int]:
    ids = set()
    for lineno, (id_text, _) in _read_list(path, "<class_id> <name>", CUB_LAYOUT):
        class_id = _int(path, lineno, id_text, "class id")
        if class_id in ids:
            raise _at(path, lineno, f"class id {class_id} again")
        ids.add(class_id)
    return ids


def wsol_metadata(metadata_dir: Path, image_root: Path, mask_root: Path | None = None) -> list[Sample]:
    """One split of wsolevaluation's metadata (metadata/<DS>/<split>/), in image_ids.txt order.

    class_labels.txt must label every image (0-based). image_sizes.txt (empty for OpenImages)
    and localization.txt (absent from train splits) are optional, but once given they cover
    every image. localization.txt holds boxes, ``image_id,x0,y0,x1,y1``, or OpenImages masks,
    ``image_id,mask_path,ignore_path`` (the ignore path on an image's first line only); one line
    per box or mask. Image ids are relative to ``image_root``, masks to ``mask_root`` (default:
    ``image_root``).
    """
    metadata_dir, image_root = Path(metadata_dir), Path(image_root)
    mask_root = image_root if mask_root is None else Path(mask_root)
    if not metadata_dir.is_dir():
        raise DatasetError(f"{metadata_dir}: no such folder; expected {WSOL_LAYOUT}")
    index = metadata_dir / "image_ids.txt"
    listed = {}  # id -> line in image_ids.txt
    for lineno, (image_id,) in _read_list(index, "<image_id>", WSOL_LAYOUT):
        if image_id in listed:
            raise _at(index, lineno, f"image id {image_id!r} again (first on line {listed[image_id]})")
        listed[image_id] = lineno
    if not listed:
        raise DatasetError(f"{index}: lists no image")
    if not image_root.is_dir():
        example = next(iter(listed))
        raise DatasetError(f"{image_root}: no such folder; expected the root that ids like {example!r} are in")

    def per_image(name: str, forms: str | tuple[str, ...]) -> tuple[Path, dict]:
        path = metadata_dir / name
        return path, _by_image(path, _read_list(path, forms, WSOL_LAYOUT), listed, index)

    labels_txt, grouped = per_image("class_labels.txt", "image_id,class_index")
    labels = {}
    for image_id, (lineno, (_, text)) in _one_each(labels_txt, grouped, listed, index).items():
        labels[image_id] = _int(labels_txt, lineno, text, "class index")
        if labels[image_id] < 0:
            raise _at(labels_txt, lineno, f"class index {labels[image_id]} is negative")

    sizes = {}  # id -> (width, height)
    if (metadata_dir / "image_sizes.txt").exists():
        sizes_txt, grouped = per_image("image_sizes.txt", "image_id,width,height")
        rows = _one_each(sizes_txt, grouped, listed, index) if grouped else {}  # empty file: no sizes
        for image_id, (lineno, (_, *fields)) in rows.items():
            width, height = (_int(sizes_txt, lineno, text, "size") for text in fields)
            if width < 1 or height < 1:
                raise _at(sizes_txt, lineno, f"size {width}x{height} is empty")
            sizes[image_id] = (width, height)

    boxes, masks, ignores = defaultdict(list), defaultdict(list), {}
    if (metadata_dir / "localization.txt").exists():
        loc_txt, grouped = per_image("localization.txt", ("image_id,x0,y0,x1,y1", "image_id,mask_path,ignore_path"))
        _every_image(loc_txt, grouped, listed, index)
        for image_id, rows in grouped.items():
            for lineno, (_, *fields) in rows:
                if len(fields) == 4:
                    box = tuple(_float(loc_txt, lineno, text, "box value") for text in fields)
                    boxes[image_id].append(_box(loc_txt, lineno, box, sizes.get(image_id)))
                    continue
                mask, ignore = fields
                if not mask:
                    raise _at(loc_txt, lineno, "empty mask path")
                if ignore and image_id in ignores:
                    raise _at(loc_txt, lineno, "ignore mask on a later line: only the image's first line may name it")
                ignores.setdefault(image_id, mask_root / ignore if ignore else None)
                masks[image_id].append(mask_root / mask)

    return [
        Sample(
            image_id,
            image_root / image_id,
            labels[image_id],
            _boxes(boxes[image_id]),
            sizes.get(image_id),
            tuple(masks[image_id]),
            ignores.get(image_id),
        )
        for image_id in listed
    ]


_NO_BOXES = _boxes([])  # 0 x 4


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
    return [Sample(Path(p).relative_to(root).as_posix(), Path(p), label, _NO_BOXES, None) for p, label in found]


def num_classes(samples: list[Sample]) -> int:
    """The classifier's width the labels need: the largest label + 1."""
    if not samples:
        raise DatasetError("no samples to count classes in")
    return max(sample.label for sample in samples) + 1


def load_rgb(path: Path) -> Image.Image:
    """The image in RGB, read by PIL as the original does; a file that fails names itself."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        raise DatasetError(f"{path}: cannot read the image ({error})") from error


class ImageDataset(torch.utils.data.Dataset):
    """Samples -> (transformed image, label, index); the index finds the sample's boxes and
    masks in the evaluation."""

    def __init__(self, samples: list[Sample], transform: Callable):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        sample = self.samples[index]
        return self.transform(load_rgb(sample.path)), sample.label, index


def _tensor_steps() -> list:
    return [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def _squash(resize: int) -> T.Resize:
    """Both sides to ``resize`` (aspect ratio not kept), bilinear, as the original loaders."""
    return T.Resize((resize, resize), interpolation=T.InterpolationMode.BILINEAR)


def train_transform(resize: int = 256, crop: int = 224) -> T.Compose:
    """Original order: squash to resize x resize, random crop, random horizontal flip."""
    return T.Compose([_squash(resize), T.RandomCrop(crop), T.RandomHorizontalFlip(), *_tensor_steps()])


def test_transform(resize: int = 256, crop: int = 224) -> T.Compose:
    """Squash to resize x resize, center crop -> 3 x crop x crop. OpenImages test: resize = crop
    (a plain resize to 224, as the original)."""
    return T.Compose([_squash(resize), T.CenterCrop(crop), *_tensor_steps()])


class _EachCrop:
    """Tensor + normalization for each crop, stacked (a class, not a lambda, so that
    data-loader workers can pickle it)."""

    def __init__(self):
        self.to_tensor = T.Compose(_tensor_steps())

    def __call__(self, crops: tuple[Image.Image, ...]) -> torch.Tensor:
        return torch.stack([self.to_tensor(crop) for crop in crops])  # n x 3 x crop x crop


def ten_crop_transform(resize: int = 256, crop: int = 224) -> T.Compose:
    """Squash to resize x resize, then torchvision's TenCrop (four corners and the center, and
    their mirror images) -> 10 x 3 x crop x crop, as the original's ten-crop test."""
    return T.Compose([_squash(resize), T.TenCrop(crop), _EachCrop()])
