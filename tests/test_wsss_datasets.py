"""WSSS data: VOC XML labels, the original's label fixtures, real VOC masks, COCO labels and masks
from a hand-made instances file, the training and multi-scale sets, every bad input (named by
file and line), and the synthetic VOC-layout set."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from torch.utils.data import DataLoader

from bas.errors import ArgumentError, DatasetError, OutputError
from bas.outputs import MARKER
from bas.sampling import SeededItems
from WSSS import datasets, run_sample
from WSSS.datasets import CocoInstances, MultiScaleSet, Sample
from WSSS.models import build_model
from WSSS.seeds import read_seed
from WSSS.synthetic import CLASS_COLOURS, CLASS_NAMES, DISTRACTOR_COLOURS, ensure_synthetic_voc, make_synthetic_voc

ORIGINAL = Path("data/bas-extension/WSSS")
REAL_MASKS = Path("data/voc2012/SegmentationClass")


def at(path_name: str, lineno: int) -> str:
    """The start of an error message: ``<file>:<line>:``."""
    return re.escape(f"{path_name}:{lineno}:")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def image_file(path: Path, width: int = 20, height: int = 16, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    return path


# --- VOC annotation files ----------------------------------------------------------------------

# The VOC2012 annotation of 2007_000032, in the devkit's own format (tags sorted, a nested
# <annotation> under <source>): two aeroplanes and two people.
XML_2007_000032 = """<annotation>
\t<filename>2007_000032.jpg</filename>
\t<folder>VOC2012</folder>
\t<object>
\t\t<name>aeroplane</name>
\t\t<bndbox>
\t\t\t<xmax>375</xmax>
\t\t\t<xmin>104</xmin>
\t\t\t<ymax>183</ymax>
\t\t\t<ymin>78</ymin>
\t\t</bndbox>
\t\t<difficult>0</difficult>
\t\t<occluded>0</occluded>
\t\t<pose>Frontal</pose>
\t\t<truncated>0</truncated>
\t</object>
\t<object>
\t\t<name>aeroplane</name>
\t\t<bndbox>
\t\t\t<xmax>197</xmax>
\t\t\t<xmin>133</xmin>
\t\t\t<ymax>123</ymax>
\t\t\t<ymin>88</ymin>
\t\t</bndbox>
\t\t<difficult>0</difficult>
\t\t<occluded>0</occluded>
\t\t<pose>Left</pose>
\t\t<truncated>0</truncated>
\t</object>
\t<object>
\t\t<name>person</name>
\t\t<bndbox>
\t\t\t<xmax>213</xmax>
\t\t\t<xmin>195</xmin>
\t\t\t<ymax>229</ymax>
\t\t\t<ymin>180</ymin>
\t\t</bndbox>
\t\t<difficult>0</difficult>
\t\t<occluded>0</occluded>
\t\t<pose>Rear</pose>
\t\t<truncated>0</truncated>
\t</object>
\t<object>
\t\t<name>person</name>
\t\t<bndbox>
\t\t\t<xmax>44</xmax>
\t\t\t<xmin>26</xmin>
\t\t\t<ymax>238</ymax>
\t\t\t<ymin>189</ymin>
\t\t</bndbox>
\t\t<difficult>0</difficult>
\t\t<occluded>0</occluded>
\t\t<pose>Rear</pose>
\t\t<truncated>0</truncated>
\t</object>
\t<segmented>1</segmented>
\t<size>
\t\t<depth>3</depth>
\t\t<height>281</height>
\t\t<width>500</width>
\t</size>
\t<source>
\t\t<annotation>PASCAL VOC2007</annotation>
\t\t<database>The VOC2007 Database</database>
\t\t<image>flickr</image>
\t</source>
</annotation>
"""


def voc_xml(*objects: str, extra: str = "") -> str:
    """A VOC 2008+ style annotation (person-layout parts, actions) with one <object> per entry
    of ``objects``: a class name, or a class name + ':difficult' / ':truncated'."""
    body = []
    for entry in objects:
        name, _, flag = entry.partition(":")
        parts = "\t\t<part>\n\t\t\t<name>head</name>\n\t\t</part>\n\t\t<part>\n\t\t\t<name>hand</name>\n\t\t</part>\n"
        body.append(
            "\t<object>\n"
            f"\t\t<name>{name}</name>\n"
            "\t\t<pose>Unspecified</pose>\n"
            f"\t\t<truncated>{int(flag == 'truncated')}</truncated>\n"
            f"\t\t<difficult>{int(flag == 'difficult')}</difficult>\n"
            "\t\t<bndbox>\n\t\t\t<xmin>1</xmin>\n\t\t\t<ymin>1</ymin>\n\t\t\t<xmax>9</xmax>\n\t\t\t<ymax>9</ymax>\n"
            "\t\t</bndbox>\n" + (parts if name == "person" else "") + "\t</object>\n"
        )
    return (
        "<annotation>\n\t<folder>VOC2012</folder>\n\t<filename>x.jpg</filename>\n"
        "\t<source>\n\t\t<database>The VOC2008 Database</database>\n\t</source>\n"
        "\t<size>\n\t\t<width>20</width>\n\t\t<height>16</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        "\t<segmented>0</segmented>\n" + "".join(body) + extra + "</annotation>\n"
    )


def multi_hot(*indices: int, classes: int = 20) -> np.ndarray:
    label = np.zeros(classes, np.float32)
    label[list(indices)] = 1
    return label


def test_xml_multi_object_with_duplicates(tmp_path):
    path = write(tmp_path / "2007_000032.xml", XML_2007_000032)
    assert datasets.voc_objects(path) == [("aeroplane", 5), ("aeroplane", 18), ("person", 31), ("person", 44)]
    label = datasets.voc_label(path)
    assert label.dtype == np.float32 and label.shape == (20,)
    np.testing.assert_array_equal(label, multi_hot(0, 14))
    assert not label.flags.writeable


def test_xml_counts_difficult_and_truncated_objects_not_parts(tmp_path):
    """Parts (head, hand) are not objects; difficult and truncated objects count, as the
    original's cls_labels.npy."""
    path = write(tmp_path / "a.xml", voc_xml("person", "chair:difficult", "tvmonitor:truncated", "person"))
    np.testing.assert_array_equal(datasets.voc_label(path), multi_hot(8, 14, 19))
    spaced = write(tmp_path / "b.xml", voc_xml("person").replace("<name>person</name>", "<name>\n person </name>"))
    np.testing.assert_array_equal(datasets.voc_label(spaced), multi_hot(14))


def test_xml_reproduces_the_original_label_of_2007_000032(shared_dir, tmp_path):
    labels = np.load(shared_dir / ORIGINAL / "voc12/cls_labels.npy", allow_pickle=True).item()
    path = write(tmp_path / "2007_000032.xml", XML_2007_000032)
    np.testing.assert_array_equal(datasets.voc_label(path), labels[2007000032])


@pytest.mark.parametrize(
    "text,line,message",
    [
        (voc_xml(), None, "no <object> in the annotation"),
        (voc_xml("dog").replace("<name>dog</name>", ""), 13, "<object> without a <name>"),
        (voc_xml("dog", "dragon"), 26, "unknown class 'dragon'"),
        (voc_xml("dog").replace("</size>", "</sise>"), 11, "not valid XML"),
        ("<annotations>\n</annotations>\n", 1, "root element <annotations>"),
    ],
)
def test_xml_errors_name_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path / "bad.xml", text)
    where = at("bad.xml", line) if line else re.escape("bad.xml: ")
    with pytest.raises(DatasetError, match=where + ".*" + re.escape(message)):
        datasets.voc_label(path)


# --- the original's label fixtures --------------------------------------------------------------


def read_cls_txt(path: Path) -> dict[str, set[int]]:
    """The original's ``name c1 c2 ...`` lists: {name: class indices}."""
    rows = (line.split() for line in path.read_text().splitlines() if line.strip())
    return {fields[0]: {int(c) for c in fields[1:]} for fields in rows}


def npy_key(name: str) -> int:
    """cls_labels.npy's keys: the id without '_' as an integer (2007_000032 -> 2007000032)."""
    return int(name.replace("_", ""))


def test_fixture_npy_covers_train_aug_and_val(shared_dir):
    labels = np.load(shared_dir / ORIGINAL / "voc12/cls_labels.npy", allow_pickle=True).item()
    lists = {name: [i for _, i in datasets.read_id_list(shared_dir / ORIGINAL / f"voc12/{name}.txt")] for name in
             ("train", "train_aug", "val")}  # fmt: skip
    assert [len(lists[name]) for name in ("train", "train_aug", "val")] == [1464, 10582, 1449]
    assert set(lists["train"]) <= set(lists["train_aug"])
    assert set(labels) == {npy_key(name) for name in lists["train_aug"] + lists["val"]}
    assert all(v.dtype == np.float32 and v.shape == (20,) and v.sum() >= 1 for v in labels.values())


def test_fixtures_agree_where_the_original_lists_say(shared_dir):
    """cls_labels.npy (from the XMLs, our source) and *_cls.txt (the classes present in the
    masks) agree on VOC train and val but two ids; on SBD-only train_aug ids the lists leave
    classes out, never add one."""
    labels = np.load(shared_dir / ORIGINAL / "voc12/cls_labels.npy", allow_pickle=True).item()
    train = {i for _, i in datasets.read_id_list(shared_dir / ORIGINAL / "voc12/train.txt")}
    differ = {}
    for split in ("train", "val"):
        listed = read_cls_txt(shared_dir / ORIGINAL / f"data/voc12/{split}_cls.txt")
        assert [i for _, i in datasets.read_id_list(shared_dir / ORIGINAL / f"data/voc12/{split}_cls.txt")] == list(
            listed
        )
        for name, classes in listed.items():
            ours = set(np.flatnonzero(labels[npy_key(name)]).tolist())
            if ours != classes:
                differ[name] = (ours, classes)
    assert len(differ) == 818
    assert differ["2011_001621"] == ({8, 14, 19}, {8, 14})  # train: a tvmonitor absent from the mask
    assert differ["2008_005245"] == ({6, 13}, {6, 13, 14})  # val: a person in the mask, not in the XML
    assert {name for name in differ if name in train or name == "2008_005245"} == {"2011_001621", "2008_005245"}
    assert all(listed <= ours for name, (ours, listed) in differ.items() if name != "2008_005245")


# --- masks ---------------------------------------------------------------------------------------


def real_mask_root(shared_dir: Path, tmp_path: Path, grayscale: bool = False) -> tuple[Path, list[str]]:
    """A VOC2012 folder with the 30 real val masks (copied, or converted to grayscale PNGs as
    SBD's SegmentationClassAug) and a val list of their ids; no image, no annotation."""
    names = sorted(path.stem for path in (shared_dir / REAL_MASKS).glob("*.png"))
    folder = tmp_path / "VOC2012" / ("SegmentationClassAug" if grayscale else "SegmentationClass")
    folder.mkdir(parents=True)
    for name in names:
        source = shared_dir / REAL_MASKS / f"{name}.png"
        if grayscale:
            Image.fromarray(np.array(Image.open(source))).save(folder / f"{name}.png")
        else:
            shutil.copy(source, folder)
    split = "train_aug" if grayscale else "val"
    write(tmp_path / "VOC2012/ImageSets/Segmentation" / f"{split}.txt", "".join(f"{n}\n" for n in names))
    return tmp_path / "VOC2012", names


def test_real_masks_read_with_void_and_classes_in_range(shared_dir, tmp_path):
    root, names = real_mask_root(shared_dir, tmp_path)
    labels = np.load(shared_dir / ORIGINAL / "voc12/cls_labels.npy", allow_pickle=True).item()
    masks = datasets.voc_masks(root, "val")
    assert len(masks) == 30 and masks.ids == names
    for index, name in enumerate(names):
        image_id, mask = masks[index]
        assert image_id == name and mask.dtype == np.uint8 and mask.ndim == 2
        values = set(np.unique(mask).tolist())
        assert values <= set(range(21)) | {255} and 255 in values and 0 in values
        assert values - {0, 255} == {c + 1 for c in np.flatnonzero(labels[npy_key(name)])}
    real = np.array(Image.open(shared_dir / REAL_MASKS / f"{names[3]}.png"))
    np.testing.assert_array_equal(masks.mask(names[3]), real)
    assert masks.mask("2007_000033").shape == (366, 500)


def test_real_masks_as_grayscale_pngs_for_train_aug(shared_dir, tmp_path):
    """A list named train_aug reads SegmentationClassAug; its PNGs may be grayscale."""
    root, names = real_mask_root(shared_dir, tmp_path, grayscale=True)
    masks = datasets.voc_masks(root, "train_aug")
    for name in names[:5]:
        np.testing.assert_array_equal(masks.mask(name), np.array(Image.open(shared_dir / REAL_MASKS / f"{name}.png")))


def test_voc_palette_is_the_masks_palette(shared_dir):
    palette = datasets.voc_palette()
    assert palette[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] and palette[-3:] == [224, 224, 192]
    real = Image.open(next((shared_dir / REAL_MASKS).glob("*.png"))).getpalette()
    assert palette == real


def mask_root(tmp_path: Path, masks: dict[str, np.ndarray | bytes], mode: str = "P") -> Path:
    root = tmp_path / "VOC2012"
    (root / "SegmentationClass").mkdir(parents=True)
    for name, mask in masks.items():
        path = root / "SegmentationClass" / f"{name}.png"
        if isinstance(mask, bytes):
            path.write_bytes(mask)
        elif mode == "RGB":
            Image.fromarray(np.repeat(mask[..., None], 3, -1)).save(path)
        else:
            image = Image.fromarray(mask)
            image.putpalette(datasets.voc_palette())
            image.save(path)
    write(root / "ImageSets/Segmentation/val.txt", "".join(f"{name}\n" for name in masks))
    return root


def test_mask_values_out_of_range(tmp_path):
    good, bad = np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint8)
    good[0, 0], good[1, 1] = 20, 255
    bad[0, 0], bad[1, 1], bad[2, 2] = 21, 254, 255
    masks = datasets.voc_masks(mask_root(tmp_path, {"a": good, "b": bad}), "val")
    np.testing.assert_array_equal(masks[0][1], good)
    message = "b.png: label values 21, 254 out of range (expected 0..20 and 255)"
    with pytest.raises(DatasetError, match=re.escape(message)):
        masks[1]


def test_mask_not_an_index_png_or_not_decodable(tmp_path):
    root = mask_root(tmp_path, {"rgb": np.zeros((4, 5), np.uint8)}, mode="RGB")
    with pytest.raises(DatasetError, match=re.escape("rgb.png: a RGB image; expected a palette or grayscale PNG")):
        datasets.voc_masks(root, "val")[0]
    root = mask_root(tmp_path / "b", {"broken": b"not a png"})
    with pytest.raises(DatasetError, match=re.escape("broken.png: cannot read the mask")):
        datasets.voc_masks(root, "val").mask("broken")


def test_mask_missing_names_list_line(tmp_path):
    root = mask_root(tmp_path, {"a": np.zeros((2, 2), np.uint8)})
    write(root / "ImageSets/Segmentation/val.txt", "a\n\nb\n")
    with pytest.raises(DatasetError, match=at("val.txt", 3) + " mask .*b.png missing"):
        datasets.voc_masks(root, "val")
    with pytest.raises(DatasetError, match=re.escape("SegmentationClassAug: no such folder")):
        datasets.voc_masks(root, "val", mask_dir="SegmentationClassAug")


# --- VOC samples -------------------------------------------------------------------------------------


@pytest.fixture
def voc(tmp_path) -> Path:
    """A VOCdevkit/VOC2012 with three images: 2007_000032 (the real XML), a and b."""
    root = tmp_path / "VOCdevkit/VOC2012"
    for seed, name in enumerate(("2007_000032", "a", "b")):
        image_file(root / "JPEGImages" / f"{name}.jpg", seed=seed)
    write(root / "Annotations/2007_000032.xml", XML_2007_000032)
    write(root / "Annotations/a.xml", voc_xml("dog", "cat:difficult"))
    write(root / "Annotations/b.xml", voc_xml("tvmonitor"))
    write(root / "ImageSets/Segmentation/train.txt", "2007_000032\r\n\r\na\r\n")
    write(root / "ImageSets/Segmentation/val.txt", "b\n")
    return root


def test_voc_samples_in_list_order_with_labels(voc):
    train = datasets.voc_samples(voc, "train")
    assert [s.image_id for s in train] == ["2007_000032", "a"]
    assert train[1].path == voc / "JPEGImages/a.jpg"
    np.testing.assert_array_equal(np.stack([s.label for s in train]), np.stack([multi_hot(0, 14), multi_hot(7, 11)]))
    # the VOCdevkit above VOC2012 works too, and a list given by path
    assert datasets.voc_samples(voc.parent, "val")[0].label.tolist() == multi_hot(19).tolist()
    assert [s.image_id for s in datasets.voc_samples(voc, voc / "ImageSets/Segmentation/val.txt")] == ["b"]


def test_voc_lists_in_the_originals_forms(voc, tmp_path):
    """The original's *_cls.txt (labels ignored) and DeepLab's path pairs name the same images."""
    cls_txt = write(tmp_path / "train_cls.txt", "2007_000032 0 14\na 7 11\n")
    deeplab = write(tmp_path / "train_aug.txt", "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n")
    assert [s.image_id for s in datasets.voc_samples(voc, cls_txt)] == ["2007_000032", "a"]
    assert [s.image_id for s in datasets.voc_samples(voc, deeplab)] == ["2007_000032"]


def test_voc_classes_file(voc):
    write(voc / "classes.txt", "cat\ndog\ntvmonitor\n")
    assert datasets.voc_classes(voc) == ("cat", "dog", "tvmonitor")
    assert datasets.voc_samples(voc, "val")[0].label.tolist() == [0, 0, 1]
    with pytest.raises(DatasetError, match=at("2007_000032.xml", 5) + " unknown class 'aeroplane'"):
        datasets.voc_samples(voc, "train")


def test_voc_missing_folders_and_lists(voc, tmp_path):
    with pytest.raises(DatasetError, match=re.escape("nowhere: no such folder; expected VOC2012/")):
        datasets.voc_samples(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match=re.escape("Segmentation/test.txt: list file missing")):
        datasets.voc_samples(voc, "test")
    with pytest.raises(DatasetError, match=re.escape("other.txt: list file missing")):
        datasets.voc_samples(voc, tmp_path / "other.txt")
    shutil.rmtree(voc / "Annotations")
    with pytest.raises(DatasetError, match=re.escape("Annotations: no such folder")):
        datasets.voc_samples(voc, "train")


@pytest.mark.parametrize(
    "text,line,message",
    [
        ("a\nc\n", 2, "image .*c.jpg missing"),
        ("a\n\na\n", 3, "image id 'a' again (first on line 1)"),
        ("b\n", None, "b.xml: no <object>"),
    ],
)
def test_voc_bad_lists(voc, text, line, message):
    write(voc / "ImageSets/Segmentation/train.txt", text)
    write(voc / "Annotations/b.xml", voc_xml())
    where = at("train.txt", line) + " " if line else ""
    with pytest.raises(DatasetError, match=where + (message if line == 2 else re.escape(message))):
        datasets.voc_samples(voc, "train")


def test_voc_image_without_annotation(voc):
    (voc / "Annotations/a.xml").unlink()
    with pytest.raises(DatasetError, match=at("train.txt", 3) + " annotation .*a.xml missing"):
        datasets.voc_samples(voc, "train")


def test_empty_and_undecodable_lists(voc):
    write(voc / "ImageSets/Segmentation/train.txt", "\n\n")
    with pytest.raises(DatasetError, match=re.escape("train.txt: lists no image")):
        datasets.voc_samples(voc, "train")
    (voc / "ImageSets/Segmentation/train.txt").write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(DatasetError, match=re.escape("train.txt: not a UTF-8 text file")):
        datasets.voc_samples(voc, "train")


def test_undecodable_image_names_itself(voc):
    (voc / "JPEGImages/a.jpg").write_bytes(b"\xff\xd8 truncated")
    samples = datasets.voc_samples(voc, "train")
    with pytest.raises(DatasetError, match=re.escape("a.jpg: cannot read the image")):
        datasets.ClassificationSet(samples, datasets.bas_train_transform())[1]
    with pytest.raises(DatasetError, match=re.escape("a.jpg: cannot read the image")):
        MultiScaleSet(samples)[1]


# --- COCO -------------------------------------------------------------------------------------------

# The 80 COCO category ids (with gaps), ascending: the original's class order.
COCO_IDS = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83),
            *range(84, 91)]  # fmt: skip
# Three val2014 images, their category ids, and their line in the original's val_cls.txt.
COCO_IMAGES = {
    42: ([18], [16]),  # dog
    74: ([1, 2, 18], [0, 1, 16]),  # person, bicycle, dog
    139: ([1, 62, 64, 67, 72, 78, 82, 84, 85, 86], [0, 56, 58, 60, 62, 68, 72, 73, 74, 75]),  # a living room
}


def coco_name(image_id: int) -> str:
    return f"COCO_val2014_{image_id:012d}"


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (crowd annotations): run lengths, column-major, zeros first."""
    flat = mask.flatten(order="F").astype(int)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], changes])).tolist()}


H, W = 10, 12
BICYCLE = np.zeros((H, W), np.uint8)
BICYCLE[4:8, 4:9] = 1
CROWD = np.zeros((H, W), np.uint8)
CROWD[:, 8:] = 1


@pytest.fixture
def coco(tmp_path) -> Path:
    """A COCO 2014 root with val2014: images 42, 74, 139 (10 x 12) and 7 (no annotation)."""
    root = tmp_path / "coco"
    images, annotations = [], []
    for image_id in (*COCO_IMAGES, 7):
        image_file(root / "val2014" / f"{coco_name(image_id)}.jpg", W, H)
        images.append({"id": image_id, "file_name": f"{coco_name(image_id)}.jpg", "height": H, "width": W})
    for image_id, (categories, _) in COCO_IMAGES.items():
        for k, category in enumerate(categories):
            polygon = [[k % 4, 0, k % 4 + 3, 0, k % 4 + 3, 3, k % 4, 3]]
            annotations.append({"image_id": image_id, "category_id": category, "segmentation": polygon, "iscrowd": 0})
    # image 74: the person a polygon, the bicycle a compressed RLE over it, the dog a crowd.
    annotations = [a for a in annotations if a["image_id"] != 74]
    bicycle = coco_mask.encode(np.asfortranarray(BICYCLE))
    annotations += [
        {"image_id": 74, "category_id": 1, "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]], "iscrowd": 0},
        {"image_id": 74, "category_id": 2, "segmentation": {**bicycle, "counts": bicycle["counts"].decode()}},
        {"image_id": 74, "category_id": 18, "segmentation": uncompressed_rle(CROWD), "iscrowd": 1},
    ]
    for index, annotation in enumerate(annotations):
        annotation["id"] = 1000 + index
    categories = [{"id": i, "name": f"category {i}", "supercategory": "thing"} for i in reversed(COCO_IDS)]
    content = {"images": images, "annotations": annotations, "categories": categories}
    write(root / "annotations/instances_val2014.json", json.dumps(content, indent=1))
    return root


def test_coco_labels_in_the_originals_class_order(coco):
    instances = CocoInstances(coco, "val")
    assert instances.category_ids == COCO_IDS and len(instances.classes) == 80
    samples = instances.samples()
    assert [s.image_id for s in samples] == [coco_name(i) for i in sorted(COCO_IMAGES)]  # image 7: no annotation
    for sample, (_, indices) in zip(samples, [COCO_IMAGES[i] for i in sorted(COCO_IMAGES)]):
        np.testing.assert_array_equal(sample.label, multi_hot(*indices, classes=80))
        assert sample.path == coco / "val2014" / f"{sample.image_id}.jpg"


def test_coco_class_order_matches_the_original_lists(shared_dir):
    listed = read_cls_txt(shared_dir / ORIGINAL / "data/coco14/val_cls.txt")
    for image_id, (_, indices) in COCO_IMAGES.items():
        assert listed[coco_name(image_id)] == set(indices)
    for split, count in (("train", 82081), ("val", 40137)):
        listed = read_cls_txt(shared_dir / ORIGINAL / f"data/coco14/{split}_cls.txt")
        assert len(listed) == count and set().union(*listed.values()) == set(range(80))
        assert list(listed) == sorted(listed)  # by name, as our default list


def test_coco_masks_polygons_rle_and_crowd(coco):
    instances = CocoInstances(coco, "val")
    expected = np.zeros((H, W), np.uint8)
    expected[2:6, 2:6] = 1  # the person's polygon: pixels x0 <= x < x1, y0 <= y < y1
    expected[BICYCLE == 1] = 2  # later annotations cover earlier ones
    crowded = expected.copy()
    expected[(CROWD == 1) & (expected == 0)] = 255
    crowded[CROWD == 1] = 17
    masks = instances.masks()
    assert masks.ids == [coco_name(i) for i in sorted(COCO_IMAGES)]
    np.testing.assert_array_equal(masks.mask(coco_name(74)), expected)
    np.testing.assert_array_equal(instances.masks(crowd="class").mask(coco_name(74)), crowded)
    image_id, dog = masks[0]
    assert image_id == coco_name(42) and dog.tolist() == np.pad(np.full((3, 3), 17), ((0, 7), (0, 9))).tolist()


def test_coco_lists(coco, tmp_path):
    instances = CocoInstances(coco, "val")
    listed = write(tmp_path / "val_cls.txt", f"{coco_name(139)} 0 56\n{coco_name(42)} 16\n")
    assert [s.image_id for s in instances.samples(listed)] == [coco_name(139), coco_name(42)]
    assert instances.masks(listed).ids == [coco_name(139), coco_name(42)]
    write(listed, f"{coco_name(42)}\n{coco_name(7)}\n")
    with pytest.raises(DatasetError, match=at("val_cls.txt", 2) + f" image '{coco_name(7)}' has no annotation"):
        instances.samples(listed)
    write(listed, f"{coco_name(42)}\n\nCOCO_val2014_000000000999\n")
    with pytest.raises(DatasetError, match=at("val_cls.txt", 3) + " image 'COCO_val2014_000000000999' is not in"):
        instances.masks(listed)
    (coco / "val2014" / f"{coco_name(74)}.jpg").unlink()
    with pytest.raises(DatasetError, match=re.escape(f"{coco_name(74)}.jpg: image missing")):
        instances.samples()


def edit_json(root: Path, edit) -> None:
    path = root / "annotations/instances_val2014.json"
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content, indent=1))


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: c["annotations"][0].update(image_id=5), "annotation 1000: unknown image id 5"),
        (lambda c: c["annotations"][0].update(category_id=12), "annotation 1000: unknown category id 12"),
        (lambda c: c["annotations"][0].update(segmentation=[[1, 2, 3, 4]]), "annotation 1000: a polygon needs"),
        (lambda c: c["annotations"][-1]["segmentation"].update(size=[3, 3]), "RLE size [3, 3] is not the image's"),
        (lambda c: c["annotations"][0].update(segmentation=5), "neither polygons nor an RLE"),
        (lambda c: c["annotations"][1].pop("category_id"), "annotations entry 1 lacks category_id"),
        (lambda c: c.pop("categories"), "no 'categories' list"),
        (lambda c: c["images"][1].update(file_name=c["images"][0]["file_name"]), "image 74: file name"),
    ],
)
def test_coco_bad_instances(coco, edit, message):
    edit_json(coco, edit)
    with pytest.raises(DatasetError, match=re.escape("instances_val2014.json: ") + ".*" + re.escape(message)):
        CocoInstances(coco, "val")


def test_coco_missing_and_broken_files(coco, tmp_path):
    with pytest.raises(DatasetError, match=re.escape("train2014: no such folder")):
        CocoInstances(coco, "train")
    with pytest.raises(DatasetError, match=re.escape("nowhere: no such folder")):
        CocoInstances(tmp_path / "nowhere", "val")
    path = coco / "annotations/instances_val2014.json"
    path.write_text('{"images": [\n  {"id": 1,}\n]}\n')
    with pytest.raises(DatasetError, match=at("instances_val2014.json", 2) + " not valid JSON"):
        CocoInstances(coco, "val")
    path.unlink()
    with pytest.raises(DatasetError, match=re.escape("instances_val2014.json: instances file missing")):
        CocoInstances(coco, "val")


# --- training and inference sets -------------------------------------------------------------------


def samples_of(tmp_path: Path, *sizes: tuple[int, int]) -> list[Sample]:
    """One sample per (width, height), random pixels, label [1, 0, 1]."""
    label = np.array([1, 0, 1], np.float32)
    files = [image_file(tmp_path / f"im{k}.png", w, h, seed=k) for k, (w, h) in enumerate(sizes)]
    return [Sample(f"im{k}", path, label) for k, path in enumerate(files)]


def reference_tensor(path: Path) -> torch.Tensor:
    """The original's normalization: float64 numpy, stored as float32, HWC -> CHW."""
    array = np.asarray(Image.open(path).convert("RGB"))
    out = np.empty_like(array, np.float32)
    for c in range(3):
        out[..., c] = (array[..., c] / 255.0 - datasets.IMAGENET_MEAN[c]) / datasets.IMAGENET_STD[c]
    return torch.from_numpy(out.transpose(2, 0, 1).copy())


def test_train_set_shapes_and_bas_preset(tmp_path):
    samples = samples_of(tmp_path, (50, 30), (600, 700))
    dataset = datasets.ClassificationSet(samples, datasets.bas_train_transform())
    image, label, index = dataset[1]
    assert image.shape == (3, 448, 448) and image.dtype == torch.float32
    assert label.dtype == torch.float32 and label.tolist() == [1, 0, 1] and index == 1
    assert dataset[0][0].shape == (3, 448, 448)  # squashed to 512 first: never padded
    assert (dataset[0][0] != 0).float().mean() > 0.99


def test_train_crop_of_a_small_image_is_the_whole_image_in_zeros(tmp_path):
    (sample,) = samples_of(tmp_path, (40, 30))
    crop = datasets.TrainTransform(crop=64, flip=False)(Image.open(sample.path).convert("RGB"))
    inside = (crop != 0).any(0)  # 64 x 64
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    assert (len(rows), len(cols)) == (30, 40)
    torch.testing.assert_close(crop[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], reference_tensor(sample.path),
                               rtol=0, atol=0)  # fmt: skip


def test_train_resize_long_stays_in_range(tmp_path):
    """IRN's CAM input: the long side drawn in 320..640, the short side scaled with it."""
    (sample,) = samples_of(tmp_path, (100, 50))
    image = Image.open(sample.path).convert("RGB")
    transform = datasets.cam_train_transform()
    heights = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = transform(image)  # 3 x 512 x 512, the resized image placed in zeros (or cropped)
        inside = (out != 0).any(0)
        width, height = int(inside.any(0).sum()), int(inside.any(1).sum())
        assert out.shape == (3, 512, 512) and 160 <= height <= 320
        if width < 512:  # not cropped: the short side is the long side's half, rounded half to even
            assert 320 <= width and height == int(np.round(width / 2))
        heights.add(height)
    assert len(heights) > 5 and max(heights) > 256  # some long sides beyond the crop


def test_augmentation_reproducible_under_seeded_items(tmp_path):
    samples = samples_of(tmp_path, (300, 200), (120, 260))
    seeded = SeededItems(datasets.ClassificationSet(samples, datasets.cam_train_transform()))
    first, again, other = seeded[(0, 123)], seeded[(0, 123)], seeded[(0, 124)]
    assert torch.equal(first[0], again[0]) and not torch.equal(first[0], other[0])
    seeded = SeededItems(datasets.ClassificationSet(samples, datasets.bas_train_transform()))
    assert torch.equal(seeded[(1, 5)][0], seeded[(1, 5)][0])
    flips = {bool(torch.equal(seeded[(0, s)][0], seeded[(0, 0)][0])) for s in range(8)}
    assert flips == {True, False}


def test_multi_scale_sizes_flip_twins_and_loader(tmp_path):
    samples = samples_of(tmp_path, (50, 37), (20, 16))
    dataset = MultiScaleSet(samples)
    item = dataset[0]
    assert item.image_id == "im0" and item.size == (37, 50) and item.label.tolist() == [1, 0, 1]
    # round half to even: 37 * 0.5 = 18.5 -> 18, 37 * 1.5 = 55.5 -> 56
    assert [tuple(x.shape) for x in item.images] == [(2, 3, 37, 50), (2, 3, 18, 25), (2, 3, 56, 75), (2, 3, 74, 100)]
    for pair in item.images:
        assert torch.equal(pair[1], pair[0].flip(-1))
    assert torch.equal(item.images[0][0], reference_tensor(samples[0].path))
    half = Image.open(samples[0].path).convert("RGB").resize((25, 18), Image.BICUBIC)
    half.save(tmp_path / "half.png")
    assert torch.equal(item.images[1][0], reference_tensor(tmp_path / "half.png"))
    loaded = list(DataLoader(MultiScaleSet(samples, scales=(1.0,)), batch_size=None))
    assert [(x.image_id, list(x.size), len(x.images)) for x in loaded] == [("im0", [37, 50], 1), ("im1", [16, 20], 1)]
    assert dataset.ids == ["im0", "im1"] and isinstance(loaded[0], datasets.MultiScaleItem)
    assert loaded[1].images[0].shape == (2, 3, 16, 20)


# --- the synthetic set --------------------------------------------------------------------------------

SMALL = dict(num_train_aug=10, num_train=4, num_val=5)


def test_synthetic_deterministic_and_seeded(tmp_path):
    a = make_synthetic_voc(tmp_path / "a", **SMALL, seed=3)
    b = make_synthetic_voc(tmp_path / "b", **SMALL, seed=3)
    c = make_synthetic_voc(tmp_path / "c", **SMALL, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    jpegs = [f for f in files if f.suffix == ".jpg"]
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in jpegs)


def test_synthetic_is_a_voc_tree_our_loader_reads(tmp_path):
    root = ensure_synthetic_voc(tmp_path / "VOCdevkit", **SMALL)
    assert root == tmp_path / "VOCdevkit/VOC2012"
    assert datasets.voc_classes(root) == CLASS_NAMES[:4]
    train_aug, train, val = (datasets.voc_samples(root, split) for split in ("train_aug", "train", "val"))
    assert (len(train_aug), len(train), len(val)) == (10, 4, 5)
    assert [s.image_id for s in train] == [s.image_id for s in train_aug[:4]] and train[0].image_id == "2000_000001"
    assert not {s.image_id for s in val} & {s.image_id for s in train_aug}
    for split, mode in (("train", "P"), ("val", "P"), ("train_aug", "L")):
        masks = datasets.voc_masks(root, split)
        folder = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
        assert Image.open(root / folder / f"{masks.ids[0]}.png").mode == mode
        for sample in datasets.voc_samples(root, split):
            mask = masks.mask(sample.image_id)
            image = np.asarray(Image.open(sample.path)).astype(int)  # H x W x 3
            assert mask.shape == image.shape[:2] and 64 <= min(mask.shape) and max(mask.shape) <= 96
            assert set(np.unique(mask).tolist()) - {0, 255} == {c + 1 for c in np.flatnonzero(sample.label)}
            assert 255 in mask  # the void outline
            for c in np.flatnonzero(sample.label):  # each class shows its part's colour on its objects
                close = np.abs(image - np.array(CLASS_COLOURS[c])).sum(-1) < 60
                assert (close & (mask == c + 1)).sum() >= 5
            for colour in DISTRACTOR_COLOURS:  # distractors never on an object
                close = np.abs(image - np.array(colour)).sum(-1) < 30
                assert not (close & (mask > 0) & (mask < 255)).any()
    labels = np.stack([s.label for s in train_aug])
    assert labels.sum(1).min() >= 1 and (labels.sum(1) >= 2).any()  # several objects, classes may repeat
    objects = [len(datasets.voc_objects(root / "Annotations" / f"{s.image_id}.xml")) for s in train_aug]
    assert set(objects) <= {2, 3}


def test_synthetic_built_once_and_rebuilt_on_new_parameters(tmp_path):
    folder = tmp_path / "VOCdevkit"
    root = ensure_synthetic_voc(folder, **SMALL)
    marker = json.loads((folder / MARKER).read_text())
    assert marker["kind"] == "wsss-synthetic" and marker["params"]["num_train_aug"] == 10
    assert marker["params"]["seed"] == 0 and marker["params"]["num_classes"] == 4
    stamp = (root / "JPEGImages/2000_000001.jpg").stat().st_mtime_ns
    (root / "sentinel").write_text("kept")
    assert ensure_synthetic_voc(folder, **SMALL) == root
    assert (root / "sentinel").exists() and (root / "JPEGImages/2000_000001.jpg").stat().st_mtime_ns == stamp
    (root / "sentinel").unlink()  # a file of the user's would stop the rebuild (test_synthetic_safety.py)
    ensure_synthetic_voc(folder, **{**SMALL, "num_val": 6})
    assert len(datasets.voc_samples(root, "val")) == 6


def test_synthetic_leaves_a_foreign_folder_alone(tmp_path):
    foreign = tmp_path / "mine"
    write(foreign / "VOC2012/notes.txt", "my own data")
    before = {p: p.read_bytes() for p in foreign.rglob("*") if p.is_file()}
    with pytest.raises(OutputError, match="holds files this project did not write .* pass another --voc12_root$"):
        ensure_synthetic_voc(foreign, **SMALL, hint="pass another --voc12_root")
    with pytest.raises(OutputError):
        make_synthetic_voc(foreign, **SMALL)
    assert {p: p.read_bytes() for p in foreign.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary folder left behind
    other = tmp_path / "run"
    write(other / MARKER, json.dumps({"kind": "training run"}))
    with pytest.raises(OutputError, match="holds a training run"):
        ensure_synthetic_voc(other, **SMALL)


def test_run_sample_makes_and_scores_coco_seeds(coco, tmp_path):
    """make_cam and eval_cam on a COCO root: labels and masks from the instances file, the
    80 classes in the original's order, a split as the list."""
    for method in ("bas", "cam"):
        state = build_model(method, num_classes=80, arch="tiny").state_dict()
        torch.save({"model": state}, tmp_path / f"{method}.pth")
    argv = ["--coco_root", str(coco), "--stages", "make_cam", "eval_cam", "--train_list", "val"]
    argv += ["--chainer_eval_set", "val", "--cam_out_dir", str(tmp_path / "seeds"), "--arch", "tiny"]
    argv += ["--bas_weights_name", str(tmp_path / "bas.pth"), "--cam_weights_name", str(tmp_path / "cam.pth")]
    run_sample.main([*argv, "--cam_scales", "1", "--num_workers", "0", "--no_progress"])
    assert sorted(p.stem for p in (tmp_path / "seeds").glob("*.npz")) == sorted(coco_name(i) for i in COCO_IMAGES)
    keys, _ = read_seed(tmp_path / "seeds" / f"{coco_name(74)}.npz")
    assert keys.tolist() == [0, 1, 16]  # person, bicycle, dog
    report = json.loads((tmp_path / "seeds_eval" / "eval_cam_val.json").read_text())
    assert report["images"] == 3 and len(report["iou_at_best"]) == 81
    with pytest.raises(ArgumentError, match="exclude each other"):
        run_sample.main([*argv, "--voc12_root", str(tmp_path)])


def test_run_sample_refines_coco_seeds_to_a_scored_segmentation_net(coco, tmp_path):
    """Part 2 on a COCO root, every stage: IR labels, the IRN, pseudo masks and their
    scores, a segmentation net of 81 outputs and its scores, all on val2014's three images."""
    for method in ("bas", "cam"):
        state = build_model(method, num_classes=80, arch="tiny").state_dict()
        torch.save({"model": state}, tmp_path / f"{method}.pth")
    argv = ["--coco_root", str(coco), "--all", "--train_list", "val", "--infer_list", "val", "--val_list", "val"]
    argv += ["--chainer_eval_set", "val", "--arch", "tiny", "--cam_scales", "1", "--num_workers", "0", "--no_progress"]
    argv += ["--bas_weights_name", str(tmp_path / "bas.pth"), "--cam_weights_name", str(tmp_path / "cam.pth")]
    argv += ["--cam_out_dir", str(tmp_path / "seeds"), "--ir_label_out_dir", str(tmp_path / "ir")]
    argv += ["--irn_weights_name", str(tmp_path / "sess" / "irn.pth"), "--sem_seg_out_dir", str(tmp_path / "masks")]
    argv += ["--seg_weights_name", str(tmp_path / "sess" / "seg.pth"), "--seg_out_dir", str(tmp_path / "seg")]
    argv += ["--irn_crop_size", "32", "--irn_batch_size", "2", "--irn_radius", "3", "--irn_num_epoches", "1"]
    argv += ["--seg_arch", "lraspp_mobilenet_v3_large", "--seg_pretrained", "none", "--seg_crop_size", "32"]
    argv += ["--seg_batch_size", "2", "--seg_num_epoches", "1", "--seg_scales", "1", "--exp_times", "1"]
    run_sample.main(argv)
    names = sorted(coco_name(i) for i in COCO_IMAGES)
    for folder in ("ir", "masks", "seg"):
        assert sorted(p.stem for p in (tmp_path / folder).glob("*.png")) == names, folder
    for folder in ("ir", "masks", "seg"):  # class indices of the images' own categories (c + 1), 255 only unsure
        labels = np.asarray(Image.open(tmp_path / folder / f"{coco_name(74)}.png"))
        assert labels.shape == (H, W) and set(np.unique(labels)) <= {0, 1, 2, 17, *([255] if folder == "ir" else [])}
    for report in ("masks_eval/eval_sem_seg_val.json", "seg_eval/eval_sem_seg_val.json"):
        scores = json.loads((tmp_path / report).read_text())
        assert scores["images"] == 3 and len(scores["iou"]) == 81
    assert torch.load(tmp_path / "sess" / "seg.pth", weights_only=True)["num_classes"] == 81
