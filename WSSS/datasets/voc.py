"""PASCAL VOC 2012 (+ SBD's train_aug): the folder, its lists and classes, image labels from
the XML annotations, the masks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from xml.parsers import expat

import numpy as np
from PIL import Image

from bas.data import at
from bas.errors import DatasetError
from WSSS.datasets.samples import IGNORE, MaskSet, Sample, read_id_list, read_only

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
MASK_MODES = ("P", "L")  # palette PNGs (VOC) or grayscale index PNGs (SBD's SegmentationClassAug as DeepLab ships it)
VOC_LAYOUT = (
    "VOC2012/ with JPEGImages/<id>.jpg, Annotations/<id>.xml, SegmentationClass/<id>.png, "
    "ImageSets/Segmentation/<split>.txt (SBD: SegmentationClassAug/<id>.png)"
)


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
    return read_only(label)


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


def voc_images(root: str | Path, split: str | Path, classes: Sequence[str] | None = None) -> list[Sample]:
    """The images of ``split`` in list order, without labels (all zero): for prediction,
    where VOC's test set has no annotation to read."""
    root = voc_root(root)
    images, index = _folder(root, "JPEGImages"), voc_list(root, split)
    unlabelled = read_only(np.zeros(len(voc_classes(root) if classes is None else classes), np.float32))
    samples = []
    for lineno, image_id in read_id_list(index):
        if not (images / f"{image_id}.jpg").is_file():
            raise at(index, lineno, f"image {images / f'{image_id}.jpg'} missing")
        samples.append(Sample(image_id, images / f"{image_id}.jpg", unlabelled))
    return samples
