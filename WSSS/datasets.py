"""PASCAL VOC 2012 and MS COCO 2014 for multi-label training, seed making and mask evaluation.

Layouts read (never hard-coded paths; ``root`` is always an argument):

- VOC: ``VOC2012/`` (or the ``VOCdevkit/`` above it) with ``JPEGImages/<id>.jpg``,
  ``Annotations/<id>.xml``, ``SegmentationClass/<id>.png`` (palette PNGs: value = class index
  + 1, 0 background, 255 void), SBD's ``SegmentationClassAug/<id>.png`` (same values, palette
  or grayscale) for ``train_aug``, and lists ``ImageSets/Segmentation/<split>.txt``. A split is
  a list name (``train``, ``val``, ``trainval``, ``test``, ``train_aug``; looked up in
  ``ImageSets/Segmentation`` then ``ImageSets/SegmentationAug``) or a path to a list file (the
  original's ``voc12/train_aug.txt``). An optional ``classes.txt`` beside ``JPEGImages`` names
  the classes in index order (the synthetic set has one); without it, the 20 VOC classes.
- COCO 2014: ``train2014/``, ``val2014/``, ``annotations/instances_{train,val}2014.json``.

Image labels (multi-hot, float32) come from the annotations, never from the original's
``cls_labels.npy``:

- VOC: every ``<object>`` of the XML counts, ``difficult`` and ``truncated`` ones included.
  That is what the original's ``make_cls_labels.py`` did to write ``cls_labels.npy`` (it takes
  every ``<name>`` of a known class), so our labels are that file's. The original's
  ``*_cls.txt`` lists are another source: they agree with ``cls_labels.npy`` on the VOC
  ``train`` and ``val`` ids but one each, and leave out classes on 816 SBD-only ``train_aug``
  ids (they look like the classes present in the masks, not in the XMLs).
- COCO: class index = rank of the category id (ids sorted ascending: person 0 .. toothbrush 79,
  the original's order); every annotation of an image counts, crowd ones included.

Masks are H x W uint8 index arrays: 0 background, c + 1 for class c, 255 ignored. COCO masks
are drawn from the instances file through pycocotools: instances are painted in the file's
order (a later one covers an earlier one where they overlap, as COCO's own semantic
converters do); crowd regions (``iscrowd`` 1, a group of objects COCO does not outline one by
one) are 255 by default where no single instance covers them, since their outlines are too
rough to score against; ``crowd="class"`` paints them with their class instead.

Every list and annotation is checked when the sample list is built, so bad input stops at once
with ``path:line: problem`` (a JSON entry is named by its id); only an image that fails to
decode, or a mask with values out of range, is found when it is read. An id names a file, never
a folder: every stage names its outputs ``<folder>/<id>.<ext>``, which thus stay in ``<folder>``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from xml.parsers import expat

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from bas.data import IMAGENET_MEAN, IMAGENET_STD, at, leaves_folder, load_rgb, read_lines, relative_path
from bas.errors import DatasetError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
IGNORE = 255  # the void label of VOC masks
MASK_MODES = ("P", "L")  # palette PNGs (VOC) or grayscale index PNGs (SBD's SegmentationClassAug as DeepLab ships it)
SCALES = (1.0, 0.5, 1.5, 2.0)  # the original's seed scales

VOC_LAYOUT = (
    "VOC2012/ with JPEGImages/<id>.jpg, Annotations/<id>.xml, SegmentationClass/<id>.png, "
    "ImageSets/Segmentation/<split>.txt (SBD: SegmentationClassAug/<id>.png)"
)
COCO_LAYOUT = "a COCO 2014 root with train2014/, val2014/, annotations/instances_{train,val}2014.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DEEPLAB_IMAGES = "/JPEGImages/"  # how DeepLab's lists start an image's path (relative to VOC2012/)


def voc_palette() -> list[int]:
    """VOC's 256-colour palette, flat (r, g, b, r, g, b, ...): the bits of the index spread over
    the high bits of the three channels, so that class 1 is dark red and 255 is near white."""
    palette = []
    for index in range(256):
        r = g = b = 0
        for shift in range(8):
            r |= ((index >> (3 * shift)) & 1) << (7 - shift)
            g |= ((index >> (3 * shift + 1)) & 1) << (7 - shift)
            b |= ((index >> (3 * shift + 2)) & 1) << (7 - shift)
        palette += [r, g, b]
    return palette


@dataclass(frozen=True)
class Sample:
    """One image and its image-level label; masks are read apart (``voc_masks``,
    ``CocoInstances.masks``) since training and seed making never need them."""

    image_id: str  # VOC '2007_000032', COCO 'COCO_train2014_000000000009'
    path: Path  # the image file
    label: np.ndarray  # C float32 multi-hot; read-only


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)  # shared by every epoch and worker
    return array


# ---------------------------------------------------------------------------------- lists
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


def voc_root(root: str | Path) -> Path:
    """The folder that holds JPEGImages/: ``root`` itself or its VOC2012/ (a VOCdevkit)."""
    root = Path(root)
    if not (root / "JPEGImages").is_dir() and (root / "VOC2012" / "JPEGImages").is_dir():
        root = root / "VOC2012"
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder; expected {VOC_LAYOUT}")
    return root


def voc_list(root: Path, split: str | Path) -> Path:
    """The list file of ``split``: a path as given, or a name looked up under ImageSets."""
    if Path(split).suffix or len(Path(split).parts) > 1:
        return Path(split)
    for folder in ("Segmentation", "SegmentationAug"):
        path = root / "ImageSets" / folder / f"{split}.txt"
        if path.is_file():
            return path
    missing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    raise DatasetError(f"{missing}: list file missing; expected {VOC_LAYOUT}")


def voc_classes(root: str | Path) -> tuple[str, ...]:
    """The class names in index order: ``classes.txt`` beside JPEGImages/ when present (one name a
    line), else the 20 VOC classes."""
    path = voc_root(root) / "classes.txt"
    if not path.exists():
        return VOC_CLASSES
    names = [name for _, name in read_id_list(path)]
    if len(names) >= IGNORE:
        raise DatasetError(f"{path}: {len(names)} classes; masks hold at most {IGNORE - 1} (255 is void)")
    return tuple(names)


def _folder(root: Path, name: str) -> Path:
    folder = root / name
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder; expected {VOC_LAYOUT}")
    return folder


# ----------------------------------------------------------------------------- VOC labels
def voc_objects(path: str | Path) -> list[tuple[str, int]]:
    """(class name, line of the name) of each ``<object>`` of a VOC annotation file, in file order.

    Only an object's own ``<name>`` counts (not those of its ``<part>``s, the person layout's
    head / hand / foot); surrounding white space is dropped."""
    path = Path(path)
    stack, objects, text = [], [], []
    parser = expat.ParserCreate()

    def start(tag: str, _attributes: dict) -> None:
        if not stack and tag != "annotation":
            raise at(path, parser.CurrentLineNumber, f"root element <{tag}>; expected a VOC <annotation>")
        stack.append(tag)
        if stack == ["annotation", "object"]:
            objects.append([None, parser.CurrentLineNumber])
        elif stack == ["annotation", "object", "name"]:
            objects[-1][1] = parser.CurrentLineNumber
        text.clear()

    def end(tag: str) -> None:
        if stack == ["annotation", "object", "name"]:
            objects[-1][0] = "".join(text).strip()
        stack.pop()

    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = text.append
    try:
        parser.Parse(path.read_bytes(), True)
    except expat.ExpatError as error:
        raise at(path, error.lineno, f"not valid XML ({expat.ErrorString(error.code)})") from None
    except OSError as error:
        raise DatasetError(f"{path}: cannot read the annotation ({error})") from None
    if not objects:
        raise DatasetError(f"{path}: no <object> in the annotation; every image needs at least one labelled object")
    for name, lineno in objects:
        if not name:
            raise at(path, lineno, "<object> without a <name>")
    return [(name, lineno) for name, lineno in objects]


def voc_label(path: str | Path, classes: Sequence[str] = VOC_CLASSES) -> np.ndarray:
    """C float32 multi-hot of a VOC annotation file: 1 for each class that names an object
    (difficult and truncated objects included, as the original's labels)."""
    index = {name: c for c, name in enumerate(classes)}
    label = np.zeros(len(classes), np.float32)
    for name, lineno in voc_objects(path):
        if name not in index:
            shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
            raise at(Path(path), lineno, f"unknown class {name!r} (expected one of {len(classes)}: {shown})")
        label[index[name]] = 1
    return _read_only(label)


def voc_samples(root: str | Path, split: str | Path, classes: Sequence[str] | None = None) -> list[Sample]:
    """The images of ``split`` in list order, labelled from Annotations/<id>.xml; ``classes``
    defaults to ``voc_classes(root)``."""
    root = voc_root(root)
    images, annotations = _folder(root, "JPEGImages"), _folder(root, "Annotations")
    classes = voc_classes(root) if classes is None else tuple(classes)
    index = voc_list(root, split)
    samples = []
    for lineno, image_id in read_id_list(index):
        image, xml = images / f"{image_id}.jpg", annotations / f"{image_id}.xml"
        if not image.is_file():
            raise at(index, lineno, f"image {image} missing")
        if not xml.is_file():
            raise at(index, lineno, f"annotation {xml} missing")
        samples.append(Sample(image_id, image, voc_label(xml, classes)))
    return samples


# ---------------------------------------------------------------------------------- masks
def read_mask(path: str | Path, num_classes: int) -> np.ndarray:
    """H x W uint8 index mask of a palette or grayscale PNG, checked: values 0..num_classes or 255."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.mode not in MASK_MODES:
                raise DatasetError(
                    f"{path}: a {image.mode} image; expected a palette or grayscale PNG of class indices"
                )
            mask = np.array(image)
    except OSError as error:
        raise DatasetError(f"{path}: cannot read the mask ({error})") from error
    counts = np.bincount(mask.ravel(), minlength=256)
    counts[IGNORE] = 0
    bad = np.flatnonzero(counts[num_classes + 1 :]) + num_classes + 1
    if len(bad):
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        raise DatasetError(f"{path}: label values {shown} out of range (expected 0..{num_classes} and {IGNORE})")
    return mask


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


class _VocMaskReader:
    """Picklable reader for MaskSet (loader workers)."""

    def __init__(self, paths: list[Path], num_classes: int):
        self.paths, self.num_classes = paths, num_classes

    def __call__(self, index: int) -> np.ndarray:
        return read_mask(self.paths[index], self.num_classes)


def voc_masks(
    root: str | Path, split: str | Path, mask_dir: str | None = None, classes: Sequence[str] | None = None
) -> MaskSet:
    """The masks of ``split`` for evaluation (no image or annotation needed), from ``mask_dir``
    (default: SegmentationClassAug for a list named train_aug, else SegmentationClass)."""
    root = voc_root(root)
    index = voc_list(root, split)
    folder = _folder(root, mask_dir or ("SegmentationClassAug" if index.stem == "train_aug" else "SegmentationClass"))
    num_classes = len(voc_classes(root) if classes is None else classes)
    ids, paths = [], []
    for lineno, image_id in read_id_list(index):
        path = folder / f"{image_id}.png"
        if not path.is_file():
            raise at(index, lineno, f"mask {path} missing")
        ids.append(image_id)
        paths.append(path)
    return MaskSet(ids, _VocMaskReader(paths, num_classes))


# ----------------------------------------------------------------------------------- COCO
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
            samples.append(Sample(name, image.path, _read_only(label)))
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


# ------------------------------------------------------------------------------- training
def to_tensor(image: Image.Image) -> torch.Tensor:
    """3 x H x W float32, ImageNet-normalized, computed in float64 and rounded once, as the
    original's numpy normalization (so the inputs equal the original's bit for bit)."""
    array = torch.from_numpy(np.asarray(image, dtype=np.float64)).permute(2, 0, 1)  # 3 x H x W
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)[:, None, None]
    return ((array / 255 - mean) / std).float()


def rescale(image: Image.Image, scale: float) -> Image.Image:
    """PIL bicubic to (round(H * s), round(W * s)), numpy's round half to even, as the original
    (PIL returns an unchanged copy where the size stays)."""
    width, height = image.size
    return image.resize((int(np.round(width * scale)), int(np.round(height * scale))), Image.BICUBIC)


class TrainTransform:
    """PIL image -> 3 x crop x crop normalized tensor, the original's steps in its order:
    resize (random long side in ``resize_long`` = (min, max), inclusive; or both sides to
    ``resize_square``), normalize, random horizontal flip, random crop. A side shorter than the
    crop is placed at a random offset in a zero container (zero after normalization: the mean
    colour). Random draws come from torch's generator, so ``bas.sampling.SeededItems`` makes each
    sample's augmentation depend on (seed, epoch, index) only.
    """

    def __init__(
        self,
        crop: int,
        resize_long: tuple[int, int] | None = None,
        resize_square: int | None = None,
        flip: bool = True,
    ):
        if resize_long is not None and resize_square is not None:
            raise ValueError("resize_long and resize_square exclude each other")
        self.crop, self.resize_long, self.resize_square, self.flip = crop, resize_long, resize_square, flip

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.resize_long is not None:
            low, high = self.resize_long
            target = int(torch.randint(low, high + 1, ()))
            image = rescale(image, target / max(image.size))
        elif self.resize_square is not None:
            image = image.resize((self.resize_square, self.resize_square), Image.BICUBIC)
        tensor = to_tensor(image)  # 3 x H x W
        if self.flip and bool(torch.randint(2, ())):
            tensor = tensor.flip(-1)
        return self._random_crop(tensor)

    def _random_crop(self, tensor: torch.Tensor) -> torch.Tensor:
        crop = self.crop
        out = tensor.new_zeros(3, crop, crop)
        (top, into_top), (left, into_left) = (self._offsets(size, crop) for size in tensor.shape[1:])
        height, width = min(crop, tensor.shape[1]), min(crop, tensor.shape[2])
        out[:, into_top : into_top + height, into_left : into_left + width] = tensor[
            :, top : top + height, left : left + width
        ]
        return out  # 3 x crop x crop

    @staticmethod
    def _offsets(size: int, crop: int) -> tuple[int, int]:
        """(offset in the image, offset in the container) along one side."""
        spare = size - crop
        if spare > 0:
            return int(torch.randint(spare + 1, ())), 0
        return 0, int(torch.randint(-spare + 1, ()))


def bas_train_transform() -> TrainTransform:
    """The original BAS net's training input (train_bas.py): both sides to 512, bicubic (the
    aspect ratio is not kept), flip, random crop 448."""
    return TrainTransform(crop=448, resize_square=512)


def cam_train_transform() -> TrainTransform:
    """IRN's CAM net's training input (step/train_cam): long side random in 320..640, flip,
    random crop 512 (zero-padded where the image is smaller)."""
    return TrainTransform(crop=512, resize_long=(320, 640))


class ClassificationSet(torch.utils.data.Dataset):
    """Samples -> (3 x crop x crop image, C float32 multi-hot label, index) for training."""

    def __init__(self, samples: list[Sample], transform: Callable[[Image.Image], torch.Tensor]):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        sample = self.samples[index]
        return self.transform(load_rgb(sample.path)), torch.tensor(sample.label), index


# ------------------------------------------------------------------------------ inference
class MultiScaleItem(NamedTuple):
    """One image for seed making. A data loader keeps the named tuple (and pins its tensors)
    but hands ``size`` back as a list [H, W]."""

    image_id: str
    size: tuple[int, int]  # (H, W) of the original image
    label: torch.Tensor  # C float32 multi-hot
    images: list[torch.Tensor]  # per scale: 2 x 3 x round(H*s) x round(W*s), the image and its mirror image


class MultiScaleSet(torch.utils.data.Dataset):
    """Samples -> ``MultiScaleItem``, each scale with its horizontally flipped twin stacked so
    that one forward pass serves both. Scales differ in size and VOC images differ in size, so
    images do not batch: load with ``DataLoader(dataset, batch_size=None)`` (items as they
    are). Unlike the original, a single scale still comes as a list of one."""

    def __init__(self, samples: list[Sample], scales: Sequence[float] = SCALES):
        self.samples, self.scales = samples, tuple(scales)
        self.ids = [sample.image_id for sample in samples]  # item i's id without loading its image

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> MultiScaleItem:
        sample = self.samples[index]
        image = load_rgb(sample.path)
        images = []
        for scale in self.scales:
            tensor = to_tensor(rescale(image, scale))  # 3 x h x w
            images.append(torch.stack([tensor, tensor.flip(-1)]))  # 2 x 3 x h x w
        return MultiScaleItem(sample.image_id, (image.height, image.width), torch.tensor(sample.label), images)


# --------------------------------------------------------------------- the pipeline's data
COCO_SPLITS = ("train", "val")


class PipelineData:
    """What the pipeline's stages read, from a VOC2012 folder (lists: names under ImageSets or
    list files) or a COCO 2014 root (lists: a split, train or val, meaning all its annotated
    images, or a file of image names of one split, COCO_train2014_... or COCO_val2014_...)."""

    def __init__(self, voc12_root: str | Path | None = None, coco_root: str | Path | None = None):
        self.voc12_root, self.coco_root = voc12_root, coco_root
        self._instances: dict[str, CocoInstances] = {}

    def _coco(self, split: str) -> CocoInstances:
        if split not in self._instances:  # an instances file is read once: train2014's takes a while
            self._instances[split] = CocoInstances(self.coco_root, split)
        return self._instances[split]

    def _coco_list(self, name: str | Path) -> tuple[CocoInstances, Path | None]:
        if str(name) in COCO_SPLITS:
            return self._coco(str(name)), None
        names = [image_name for _, image_name in read_id_list(name)]
        return self._coco("val" if names and "val2014" in names[0] else "train"), Path(name)

    @property
    def classes(self) -> tuple[str, ...]:
        if self.coco_root is None:
            return voc_classes(self.voc12_root)
        return (next(iter(self._instances.values()), None) or self._coco("val")).classes

    def samples(self, name: str | Path) -> list[Sample]:
        """The images of a list with their labels."""
        if self.coco_root is None:
            return voc_samples(self.voc12_root, name)
        instances, list_file = self._coco_list(name)
        return instances.samples(list_file)

    def images(self, name: str | Path) -> list[Sample]:
        """The images of a list, for prediction: on VOC without reading annotations (its test
        set has none)."""
        return self.samples(name) if self.coco_root is not None else voc_images(self.voc12_root, name)

    def masks(self, name: str | Path) -> MaskSet:
        if self.coco_root is None:
            return voc_masks(self.voc12_root, name)
        instances, list_file = self._coco_list(name)
        return instances.masks(list_file)


def pipeline_data(args) -> PipelineData:
    """The data of a run_sample.py run (``args.voc12_root`` or ``args.coco_root``), one per
    process and roots, so that a COCO instances file is read once for all stages."""
    return _pipeline_data(str(args.voc12_root), str(getattr(args, "coco_root", None) or ""))


@functools.cache
def _pipeline_data(voc12_root: str, coco_root: str) -> PipelineData:
    return PipelineData(voc12_root, coco_root or None)


# ------------------------------------------------------------- IRN's displacement mean
class TopLeftSet(torch.utils.data.Dataset):
    """Samples -> (3 x crop x crop image at the top left of a zero canvas, cut where larger,
    C multi-hot label, index): IRN's input for measuring the displacement's mean."""

    def __init__(self, samples: list[Sample], crop: int):
        self.samples, self.crop = samples, crop

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        sample = self.samples[index]
        tensor = to_tensor(load_rgb(sample.path))[:, : self.crop, : self.crop]  # 3 x h x w
        canvas = tensor.new_zeros(3, self.crop, self.crop)
        canvas[:, : tensor.shape[1], : tensor.shape[2]] = tensor
        return canvas, torch.tensor(sample.label), index


# ------------------------------- label maps: IRN's IR labels, the segmentation net's masks
def voc_images(root: str | Path, split: str | Path, classes: Sequence[str] | None = None) -> list[Sample]:
    """The images of ``split`` in list order, without labels (all zero): for prediction,
    where VOC's test set has no annotation to read."""
    root = voc_root(root)
    images, index = _folder(root, "JPEGImages"), voc_list(root, split)
    unlabelled = _read_only(np.zeros(len(voc_classes(root) if classes is None else classes), np.float32))
    samples = []
    for lineno, image_id in read_id_list(index):
        if not (images / f"{image_id}.jpg").is_file():
            raise at(index, lineno, f"image {images / f'{image_id}.jpg'} missing")
        samples.append(Sample(image_id, images / f"{image_id}.jpg", unlabelled))
    return samples


class LabelledCrop:
    """(PIL image, H x W uint8 labels) -> (3 x crop x crop image, uint8 labels crop x crop, or
    round(crop / label_stride) a side): the training input of the nets that learn from label
    maps (IRN from IR labels, label_stride 4; the segmentation net from pseudo masks), in
    IRN's order of steps: both rescaled by a factor drawn uniformly in ``scale_range`` (the
    image bicubic, the labels nearest, to round(side x factor)), the image normalized, both
    flipped or not, both cropped at one random place (where smaller, padded: the image with
    0, the mean colour, the labels with 255, unsure / ignored), then the labels reduced to
    ``label_stride`` (nearest). Random draws come from torch's generator
    (``bas.sampling.SeededItems``)."""

    def __init__(self, crop: int, scale_range: tuple[float, float], flip: bool = True, label_stride: int = 1):
        self.crop, self.scale_range, self.flip, self.label_stride = crop, scale_range, flip, label_stride

    def __call__(self, image: Image.Image, labels: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.scale_range
        image = rescale(image, low + float(torch.rand(())) * (high - low))
        labels = labels.resize(image.size, Image.NEAREST)  # the image's size: round(side x scale)
        tensor, mask = to_tensor(image), torch.from_numpy(np.array(labels))  # 3 x H x W, H x W
        if self.flip and bool(torch.randint(2, ())):
            tensor, mask = tensor.flip(-1), mask.flip(-1)
        (top, into_top), (left, into_left) = (TrainTransform._offsets(size, self.crop) for size in mask.shape)
        height, width = min(self.crop, mask.shape[0]), min(self.crop, mask.shape[1])
        image_crop = tensor.new_zeros(3, self.crop, self.crop)
        label_crop = torch.full((self.crop, self.crop), IGNORE, dtype=torch.uint8)
        inside = (slice(into_top, into_top + height), slice(into_left, into_left + width))
        image_crop[(slice(None), *inside)] = tensor[:, top : top + height, left : left + width]
        label_crop[inside] = mask[top : top + height, left : left + width]
        if self.label_stride > 1:
            reduced = round(self.crop / self.label_stride)
            label_crop = torch.from_numpy(
                np.array(Image.fromarray(label_crop.numpy()).resize((reduced, reduced), Image.NEAREST))
            )
        return image_crop, label_crop


class LabelledSet(torch.utils.data.Dataset):
    """Samples and their label maps -> (3 x crop x crop image, int64 labels as ``transform``
    gives them, index): IRN's IR labels, the segmentation net's pseudo masks. ``label_dir``
    holds ``<id>.png`` of every sample (index PNGs at the image's size: 0 background, c + 1
    class c, 255 unsure), checked here, so that a missing one stops before any training;
    ``made_by`` names what makes them, for that error."""

    def __init__(
        self, samples: list[Sample], label_dir: str | Path, num_classes: int, transform: LabelledCrop, made_by: str
    ):
        self.samples, self.num_classes, self.transform = samples, num_classes, transform
        self.labels = [Path(label_dir) / f"{sample.image_id}.png" for sample in samples]
        missing = [path for path in self.labels if not path.is_file()]
        if missing:
            others = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DatasetError(f"{missing[0]}: no labels for this id{others}; {made_by}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, path = load_rgb(self.samples[index].path), self.labels[index]
        labels = read_mask(path, self.num_classes)
        if labels.shape != (image.height, image.width):
            raise DatasetError(
                f"{path}: {labels.shape[1]} x {labels.shape[0]} labels for the {image.width} x {image.height} "
                f"image {self.samples[index].path}"
            )
        image, labels = self.transform(image, Image.fromarray(labels))
        return image, labels.long(), index
