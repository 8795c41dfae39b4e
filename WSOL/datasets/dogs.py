"""The Stanford Dogs release: MATLAB lists of files and labels, PASCAL-style XML boxes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from bas.data import at
from bas.errors import DatasetError
from WSOL.datasets.matlab import mat_int, mat_path, mat_text, read_mat
from WSOL.datasets.samples import Sample, box_array, checked_box, float_at, found, require_folders

DOGS_LAYOUT = (
    "the Stanford Dogs release: Images/<wnid-breed>/<file>.jpg, Annotation/<wnid-breed>/<file> (XML boxes), "
    "train_list.mat and test_list.mat (beside Images/ or in lists/)"
)


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
    require_folders(DOGS_LAYOUT, root, root / "Images", root / "Annotation")
    path = found(root / f"{split}_list.mat", root / "lists" / f"{split}_list.mat")
    files, annotations, labels = read_mat(path, ("file_list", "annotation_list", "labels"), DOGS_LAYOUT)
    if not len(files) == len(annotations) == len(labels):
        raise DatasetError(
            f"{path}: {len(files)} files, {len(annotations)} annotations and {len(labels)} labels: expected one each"
        )
    samples, breeds, folders = [], {}, {}  # breed folder -> (label, first entry), label -> (folder, first entry)
    for entry, (name, annotation, label) in enumerate(zip(files, annotations, labels)):
        name = mat_path(path, entry, name, "file_list")
        annotation = mat_path(path, entry, annotation, "annotation_list")
        label = mat_int(path, entry, label, "label")
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
        samples.append(Sample(name, root / "Images" / name, label - 1, box_array(boxes), size, box_origins=origins))
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
                    boxes.append(checked_box(path, lineno, box, None))
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
    return float_at(path, closed[child], (child.text or "").strip(), key)


def dogs_class_names(root: Path) -> list[str] | None:
    """Breed names by label ("n02085620-Chihuahua" -> "Chihuahua") from the train list, or None
    where the list is absent."""
    path = found(Path(root) / "train_list.mat", Path(root) / "lists" / "train_list.mat")
    if not path.is_file():
        return None
    names = {}
    for entry, (name, label) in enumerate(zip(*read_mat(path, ("file_list", "labels"), DOGS_LAYOUT))):
        breed = mat_text(path, entry, name, "file_list").split("/", 1)[0]
        names[mat_int(path, entry, label, "label") - 1] = breed.split("-", 1)[-1]
    return [names.get(label, f"class {label}") for label in range(max(names) + 1)] if names else None
