"""Dataset lists -> samples, and the image transforms of the original BAS loaders.

Layouts read: the CUB-200-2011 release, wsolevaluation's metadata (CUB, ILSVRC, OpenImages),
class folders (ILSVRC train), and the official releases of Stanford Dogs, Stanford Cars and
FGVC-Aircraft (their MATLAB lists need scipy). Every list is checked while the sample list is
built, so bad input stops at once with ``path:line: problem`` (``path: entry N: problem`` in a
MATLAB file) instead of failing later inside a data-loader worker; every path a list gives stays
inside its folder (``bas.data.relative_path``), and so does every output named after an id. Only
an image that fails to decode is found at load time, where a box off its image is warned of.

Boxes are (x0, y0, x1, y1) in original image pixels, as the lists give them. The CUB release
gives (x, y, width, height); we take x1 = x + width, y1 = y + height: exactly the original BAS
list (test_bounding_box.txt). wsolevaluation's CUB localization.txt holds the same boxes clipped
to (width - 1, height - 1). Cars and Aircraft give 1-based pixel indices with the max inclusive;
they become the same kind of pixel-edge box, (xmin - 1, ymin - 1, xmax, ymax).
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from bas.data import IMAGENET_MEAN, IMAGENET_STD, at, leaves_folder, load_rgb, read_lines, relative_path
from bas.errors import DatasetError

log = logging.getLogger(__name__)

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
    box_origins: tuple[str, ...] = ()  # where each box is written ("list:line"), for the warning of one off its image


Rows = list[tuple[int, list[str]]]  # (line number, fields) per non-blank line


def _read_list(path: Path, forms: str | tuple[str, ...], layout: str) -> Rows:
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


def _int(path: Path, lineno: int, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise at(path, lineno, f"{what} {text!r} is not an integer") from None


def _float(path: Path, lineno: int, text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise at(path, lineno, f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise at(path, lineno, f"{what} {text!r} is not finite")
    return value


def _box(path: Path, lineno: int, box: tuple[float, ...], size: tuple[int, int] | None) -> tuple[float, ...]:
    """(x0, y0, x1, y1), checked: x1 >= x0, y1 >= y0, and inside the image (x1 <= width) where
    its size is known."""
    x0, y0, x1, y1 = box
    if x1 < x0 or y1 < y0:
        raise at(path, lineno, f"box ({_shown(box)}) has x1 < x0 or y1 < y0")
    if x0 < 0 or y0 < 0 or (size is not None and (x1 > size[0] or y1 > size[1])):
        inside = f" of {size[0]}x{size[1]}" if size is not None else ""
        raise at(path, lineno, f"box ({_shown(box)}) lies outside the image{inside}")
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
            raise at(path, lineno, f"unknown image id {first!r} (not in {index.name})")
        grouped[image_id].append(row)
    return grouped


def _one_each(path: Path, grouped: dict, listed: dict, index: Path) -> dict:
    """One row per image, for every image that ``index`` lists ({id: line number there})."""
    for image_id, rows in grouped.items():
        if len(rows) > 1:
            raise at(path, rows[1][0], f"image id {image_id!r} again (first on line {rows[0][0]})")
    _every_image(path, grouped, listed, index)
    return {image_id: rows[0] for image_id, rows in grouped.items()}


def _every_image(path: Path, grouped: dict, listed: dict, index: Path) -> None:
    for image_id, lineno in listed.items():
        if image_id not in grouped:
            raise at(index, lineno, f"image {image_id!r} has no line in {path.name}")


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
            raise at(index, lineno, f"image id {image_id} again (first on line {listed[image_id]})")
        listed[image_id], names[image_id] = lineno, relative_path(name, index, lineno)

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
            raise at(labels_txt, lineno, f"unknown class id {class_id} (ids are 1-based, as in classes.txt)")
        lineno, (_, flag) = flags[image_id]
        if flag not in ("0", "1"):
            raise at(split_txt, lineno, f"is_training_image {flag!r}: expected 1 or 0")
        rows, origins = [], []
        for lineno, (_, *fields) in boxes[image_id]:
            x, y, w, h = (_float(boxes_txt, lineno, text, "box value") for text in fields)
            rows.append(_box(boxes_txt, lineno, (x, y, x + w, y + h), None))
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
        samples.append(Sample(name, path, class_id - 1, _boxes(rows), None, mask_paths, box_origins=tuple(origins)))
    if not samples:
        raise DatasetError(f"{split_txt}: no image is marked {want} ({split})")
    return samples


def _cub_class_ids(path: Path) -> set[int]:
    ids = set()
    for lineno, (id_text, _) in _read_list(path, "<class_id> <name>", CUB_LAYOUT):
        class_id = _int(path, lineno, id_text, "class id")
        if class_id in ids:
            raise at(path, lineno, f"class id {class_id} again")
        ids.add(class_id)
    return ids


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
    index = metadata_dir / "image_ids.txt"
    listed = {}  # id -> line in image_ids.txt
    for lineno, (image_id,) in _read_list(index, "<image_id>", WSOL_LAYOUT):
        if image_id in listed:
            raise at(index, lineno, f"image id {image_id!r} again (first on line {listed[image_id]})")
        listed[relative_path(image_id, index, lineno)] = lineno
    if not listed:
        raise DatasetError(f"{index}: lists no image")
    if image_root is not None and not image_root.is_dir():
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
            raise at(labels_txt, lineno, f"class index {labels[image_id]} is negative")

    sizes = {}  # id -> (width, height)
    if (metadata_dir / "image_sizes.txt").exists():
        sizes_txt, grouped = per_image("image_sizes.txt", "image_id,width,height")
        rows = _one_each(sizes_txt, grouped, listed, index) if grouped else {}  # empty file: no sizes
        for image_id, (lineno, (_, *fields)) in rows.items():
            width, height = (_int(sizes_txt, lineno, text, "size") for text in fields)
            if width < 1 or height < 1:
                raise at(sizes_txt, lineno, f"size {width}x{height} is empty")
            sizes[image_id] = (width, height)
    if image_root is None:
        for image_id, lineno in listed.items():
            if image_id not in sizes:
                problem = f"image {image_id!r} has no size in image_sizes.txt, and no image folder was given to read it"
                raise at(index, lineno, problem)

    boxes, origins, masks, ignores = defaultdict(list), defaultdict(list), defaultdict(list), {}
    if (metadata_dir / "localization.txt").exists():
        loc_txt, grouped = per_image("localization.txt", ("image_id,x0,y0,x1,y1", "image_id,mask_path,ignore_path"))
        _every_image(loc_txt, grouped, listed, index)
        for image_id, rows in grouped.items():
            for lineno, (_, *fields) in rows:
                if len(fields) == 4:
                    box = tuple(_float(loc_txt, lineno, text, "box value") for text in fields)
                    boxes[image_id].append(_box(loc_txt, lineno, box, sizes.get(image_id)))
                    origins[image_id].append(f"{loc_txt}:{lineno}")
                    continue
                mask, ignore = fields
                if not mask:
                    raise at(loc_txt, lineno, "empty mask path")
                if ignore and image_id in ignores:
                    raise at(loc_txt, lineno, "ignore mask on a later line: only the image's first line may name it")
                ignore_path = _under(mask_root, relative_path(ignore, loc_txt, lineno)) if ignore else None
                ignores.setdefault(image_id, ignore_path)
                masks[image_id].append(_under(mask_root, relative_path(mask, loc_txt, lineno)))

    return [
        Sample(
            image_id,
            _under(image_root, image_id),
            labels[image_id],
            _boxes(boxes[image_id]),
            sizes.get(image_id),
            tuple(masks[image_id]),
            ignores.get(image_id),
            tuple(origins[image_id]),
        )
        for image_id in listed
    ]


def _under(root: Path | None, name: str) -> Path:
    return Path(name) if root is None else root / name


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


# ------------------------------------------------------- Stanford Dogs, Stanford Cars, FGVC-Aircraft
DOGS_LAYOUT = (
    "the Stanford Dogs release: Images/<wnid-breed>/<file>.jpg, Annotation/<wnid-breed>/<file> (XML boxes), "
    "train_list.mat and test_list.mat (beside Images/ or in lists/)"
)
CARS_LAYOUT = (
    "the Stanford Cars release: cars_train/, cars_test/, devkit/cars_train_annos.mat, devkit/cars_meta.mat, and "
    "cars_test_annos_withlabels.mat (the test labels, released apart; beside devkit/ or in it)"
)
AIRCRAFT_LAYOUT = (
    "the fgvc-aircraft-2013b folder: data/images/<id>.jpg, data/images_variant_<split>.txt, data/images_box.txt, "
    "data/variants.txt"
)
AIRCRAFT_SPLITS = ("train", "val", "trainval", "test")


def _folders(layout: str, *folders: Path) -> None:
    for folder in folders:
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such folder; expected {layout}")


def _read_mat(path: Path, names: tuple[str, ...], layout: str) -> list[np.ndarray]:
    """The named variables of a MATLAB (v5) file, each as a 1-D array (MATLAB's N x 1 and 1 x N
    shapes squeezed): cell arrays of strings become object arrays of str, struct arrays become
    structured arrays with one field per struct field."""
    if not path.is_file():
        raise DatasetError(f"{path}: file missing; expected {layout}")
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DatasetError(f"{path}: reading MATLAB files needs scipy (pip install scipy)") from None
    try:
        content = loadmat(path, squeeze_me=True)
    except Exception as error:  # scipy raises many kinds (MatReadError, ValueError, NotImplementedError for v7.3)
        raise DatasetError(f"{path}: not a MATLAB v5 file scipy can read ({error})") from None
    missing = [name for name in names if name not in content]
    if missing:
        raise DatasetError(f"{path}: no variable {', '.join(map(repr, missing))}; expected {layout}")
    return [np.atleast_1d(content[name]) for name in names]


def _mat_text(path: Path, entry: int, value, what: str) -> str:
    """One string of a cell array, checked; ``entry`` is 0-based, shown 1-based as MATLAB counts."""
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{path}: entry {entry + 1}: {what} {_mat_shown(value)} is not a name")
    return value


def _mat_path(path: Path, entry: int, value, what: str) -> str:
    """A relative path of a cell array, checked to stay inside the folder it names a file of."""
    name = _mat_text(path, entry, value, what)
    problem = leaves_folder(name)
    if problem is not None:
        raise DatasetError(f"{path}: entry {entry + 1}: {what} {name!r} {problem}")
    return name


def _mat_int(path: Path, entry: int, value, what: str, low: int = 1) -> int:
    """A whole number >= ``low`` (MATLAB stores labels as doubles or small integer types)."""
    number = float(value) if np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype, np.number) else math.nan
    if not number.is_integer() or number < low:
        raise DatasetError(f"{path}: entry {entry + 1}: {what} {_mat_shown(value)} is not an integer >= {low}")
    return int(number)


def _mat_shown(value) -> str:
    value = value.item() if isinstance(value, np.generic) else value
    return f"{value:g}" if isinstance(value, float) else repr(value)


def _found(path: Path, elsewhere: Path) -> Path:
    """``path``, or ``elsewhere`` where only that one exists (a release unpacked another way); a
    missing file is then reported at ``path``."""
    return elsewhere if elsewhere.is_file() and not path.is_file() else path


def stanford_dogs(root: Path, split: str) -> list[Sample]:
    """The 'train' or 'test' images of the Stanford Dogs release, in the order of its list.

    ``<split>_list.mat`` holds ``file_list`` (Images/ paths), ``annotation_list`` (Annotation/
    paths) and ``labels`` (1-based; 0-based here). Each annotation is a PASCAL-style XML file with
    one ``<bndbox>`` per dog: boxes are kept as written (xmin, ymin, xmax, ymax), as ILSVRC's,
    from which the set was drawn; the image size is the annotation's ``<size>``. Every file of a
    breed folder must carry the same label, so that the folder names name the classes.
    """
    if split not in ("train", "test"):
        raise DatasetError(f"Stanford Dogs split {split!r}: expected 'train' or 'test'")
    root = Path(root)
    _folders(DOGS_LAYOUT, root, root / "Images", root / "Annotation")
    path = _found(root / f"{split}_list.mat", root / "lists" / f"{split}_list.mat")
    files, annotations, labels = _read_mat(path, ("file_list", "annotation_list", "labels"), DOGS_LAYOUT)
    if not len(files) == len(annotations) == len(labels):
        raise DatasetError(
            f"{path}: {len(files)} files, {len(annotations)} annotations and {len(labels)} labels: expected one each"
        )
    samples, breeds, folders = [], {}, {}  # breed folder -> (label, first entry), label -> (folder, first entry)
    for entry, (name, annotation, label) in enumerate(zip(files, annotations, labels)):
        name = _mat_path(path, entry, name, "file_list")
        annotation = _mat_path(path, entry, annotation, "annotation_list")
        label = _mat_int(path, entry, label, "label")
        folder = name.split("/", 1)[0]
        seen, first = breeds.setdefault(folder, (label, entry))
        if seen != label:
            raise DatasetError(
                f"{path}: entry {entry + 1}: label {label} for {folder}/, which entry {first + 1} labels {seen}"
            )
        seen, first = folders.setdefault(label, (folder, entry))
        if seen != folder:
            raise DatasetError(
                f"{path}: entry {entry + 1}: label {label} for {folder}/, as entry {first + 1} for {seen}/"
            )
        boxes, origins, size = _voc_boxes(root / "Annotation" / annotation)
        samples.append(Sample(name, root / "Images" / name, label - 1, _boxes(boxes), size, box_origins=origins))
    if not samples:
        raise DatasetError(f"{path}: lists no image")
    return samples


def _voc_boxes(path: Path) -> tuple[list[tuple[float, ...]], tuple[str, ...], tuple[int, int] | None]:
    """The ``<bndbox>`` boxes with the place of each, and the ``<size>``, of a PASCAL-style XML
    annotation. The file is fed to the parser line by line, so that a problem is reported at its
    line: a bad value at the line that closes it, a missing one at the line that closes its box."""
    if not path.is_file():
        raise DatasetError(f"{path}: annotation missing; expected {DOGS_LAYOUT}")
    parser = ET.XMLPullParser(events=("end",))
    boxes, origins, size, closed = [], [], None, {}  # closed: element -> the line that closes it
    try:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(keepends=True), 1):
            parser.feed(line)
            for _, element in parser.read_events():
                closed[element] = lineno
                if element.tag == "bndbox":
                    box = tuple(_xml_number(path, closed, element, key) for key in ("xmin", "ymin", "xmax", "ymax"))
                    boxes.append(_box(path, lineno, box, None))
                    origins.append(f"{path}:{lineno}")
                elif element.tag == "size":
                    width, height = (_xml_number(path, closed, element, key) for key in ("width", "height"))
                    size = (int(width), int(height)) if width >= 1 and height >= 1 else None
        parser.close()
    except ET.ParseError as error:
        raise at(path, error.position[0], f"not valid XML ({error})") from None
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not a UTF-8 text file ({error})") from None
    if not boxes:
        raise DatasetError(f"{path}: no <bndbox> (expected one per object)")
    return boxes, tuple(origins), size


def _xml_number(path: Path, closed: dict, element: ET.Element, key: str) -> float:
    child = element.find(key)
    if child is None:
        raise at(path, closed[element], f"<{element.tag}> has no <{key}>")
    return _float(path, closed[child], (child.text or "").strip(), key)


def dogs_class_names(root: Path) -> list[str] | None:
    """Breed names by label ("n02085620-Chihuahua" -> "Chihuahua") from the train list, or None
    where the list is absent."""
    path = _found(Path(root) / "train_list.mat", Path(root) / "lists" / "train_list.mat")
    if not path.is_file():
        return None
    names = {}
    for entry, (name, label) in enumerate(zip(*_read_mat(path, ("file_list", "labels"), DOGS_LAYOUT))):
        breed = _mat_text(path, entry, name, "file_list").split("/", 1)[0]
        names[_mat_int(path, entry, label, "label") - 1] = breed.split("-", 1)[-1]
    return [names.get(label, f"class {label}") for label in range(max(names) + 1)] if names else None


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
    _folders(CARS_LAYOUT, root, images, root / "devkit")
    if split == "train":
        path = root / "devkit" / "cars_train_annos.mat"
    else:
        path = _found(root / "cars_test_annos_withlabels.mat", root / "devkit" / "cars_test_annos_withlabels.mat")
    (annotations,) = _read_mat(path, ("annotations",), CARS_LAYOUT)
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
        name = _mat_path(path, entry, record["fname"], "fname")
        x1, y1, x2, y2 = (_mat_int(path, entry, record[field], field) for field in fields[:4])
        label = _mat_int(path, entry, record["class"], "class")
        if classes is not None and label > len(classes):
            raise DatasetError(f"{path}: entry {entry + 1}: class {label}, but cars_meta.mat names {len(classes)}")
        if x2 < x1 or y2 < y1:
            raise DatasetError(f"{path}: entry {entry + 1}: box ({x1}, {y1}, {x2}, {y2}) has x2 < x1 or y2 < y1")
        box, origin = _boxes([(x1 - 1, y1 - 1, x2, y2)]), f"{path}: entry {entry + 1}"
        samples.append(Sample(name, images / name, label - 1, box, None, box_origins=(origin,)))
    if not samples:
        raise DatasetError(f"{path}: lists no image")
    return samples


def cars_class_names(root: Path) -> list[str] | None:
    """devkit/cars_meta.mat's class names, or None where it is absent."""
    path = Path(root) / "devkit" / "cars_meta.mat"
    if not path.is_file():
        return None
    (names,) = _read_mat(path, ("class_names",), CARS_LAYOUT)
    return [_mat_text(path, entry, name, "class name") for entry, name in enumerate(names)]


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
    _folders(AIRCRAFT_LAYOUT, Path(root), data, data / "images")
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
    for lineno, (image_id, *fields) in _read_list(boxes_txt, "<image_id> <xmin> <ymin> <xmax> <ymax>", AIRCRAFT_LAYOUT):
        if image_id in boxes:
            raise at(boxes_txt, lineno, f"image {image_id!r} again")
        xmin, ymin, xmax, ymax = (_float(boxes_txt, lineno, text, "box value") for text in fields)
        if min(xmin, ymin) < 1:
            raise at(boxes_txt, lineno, f"box ({' '.join(fields)}) starts before pixel 1 (coordinates are 1-based)")
        boxes[image_id] = (_box(boxes_txt, lineno, (xmin - 1, ymin - 1, xmax, ymax), None), f"{boxes_txt}:{lineno}")
    samples = []
    for image_id, (lineno, label) in listed.items():
        if image_id not in boxes:
            raise at(index, lineno, f"image {image_id!r} has no line in images_box.txt")
        name, (box, origin) = f"{image_id}.jpg", boxes[image_id]
        samples.append(Sample(name, data / "images" / name, label, _boxes([box]), None, box_origins=(origin,)))
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


def num_classes(samples: list[Sample]) -> int:
    """The classifier's width the labels need: the largest label + 1."""
    if not samples:
        raise DatasetError("no samples to count classes in")
    return max(sample.label for sample in samples) + 1


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
        image = load_rgb(sample.path)
        _warn_box_outside(sample, image.size)
        return self.transform(image), sample.label, index


_WARNED: set[Path] = set()  # images whose box off the image was told, in this process


def _warn_box_outside(sample: Sample, size: tuple[int, int]) -> None:
    """A box meets its image's size here, where the image is read (the CUB release gives no
    sizes). One pixel past the border is the release's x + width of a box that touches it; a
    box further out is most likely another image's, which the evaluation would clip to this
    one. Told once per image."""
    if sample.path in _WARNED:
        return
    width, height = size
    for box, origin in zip(sample.boxes, sample.box_origins):
        if box[2] > width + 1 or box[3] > height + 1:
            _WARNED.add(sample.path)
            log.warning(
                "%s: box (%s) lies outside the %dx%d image %s; the evaluation clips it to the image",
                origin, _shown(box), width, height, sample.path,
            )  # fmt: skip
            return


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
