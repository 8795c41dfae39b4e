"""Stanford Dogs, Stanford Cars and FGVC-Aircraft: small releases written here in their official
formats (MATLAB lists through scipy, XML and text annotations), read by the loaders and the
scripts, and bad input named by file and line (or MATLAB entry)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from bas.errors import DatasetError
from WSOL import cli, datasets, evaluator
from WSOL.models import build_model
from WSOL.presets import PRESETS, preset


def cells(strings: list[str]) -> np.ndarray:
    """A MATLAB N x 1 cell array of strings."""
    array = np.empty((len(strings), 1), dtype=object)
    for row, text in enumerate(strings):
        array[row, 0] = text
    return array


def image(path: Path, size: tuple[int, int], colour=(120, 60, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


# --- Stanford Dogs ------------------------------------------------------------------------------

VOC_XML = """<annotation>
\t<folder>{wnid}</folder>
\t<filename>{name}</filename>
\t<source>
\t\t<database>ImageNet database</database>
\t</source>
\t<size>
\t\t<width>{width}</width>
\t\t<height>{height}</height>
\t\t<depth>3</depth>
\t</size>
\t<segment>0</segment>
{objects}</annotation>
"""
VOC_OBJECT = """\t<object>
\t\t<name>{breed}</name>
\t\t<pose>Unspecified</pose>
\t\t<truncated>0</truncated>
\t\t<difficult>0</difficult>
\t\t<bndbox>
\t\t\t<xmin>{0}</xmin>
\t\t\t<ymin>{1}</ymin>
\t\t\t<xmax>{2}</xmax>
\t\t\t<ymax>{3}</ymax>
\t\t</bndbox>
\t</object>
"""
# (folder, file stem, label (1-based), split, boxes, (width, height))
DOGS = [
    ("n02085620-Chihuahua", "n02085620_7", 1, "train", [(71, 1, 192, 180)], (250, 188)),
    ("n02085782-Japanese_spaniel", "n02085782_2", 2, "train", [(10, 20, 30, 40), (50, 60, 70, 80)], (100, 90)),
    ("n02085620-Chihuahua", "n02085620_10131", 1, "test", [(49, 9, 393, 493)], (395, 495)),
    ("n02085782-Japanese_spaniel", "n02085782_9", 2, "test", [(0, 0, 5, 5)], (8, 8)),
]


def write_dogs(root: Path, lists_folder: str = "") -> Path:
    for folder, stem, _, _, boxes, size in DOGS:
        objects = "".join(VOC_OBJECT.format(*box, breed=folder.split("-", 1)[1]) for box in boxes)
        xml = VOC_XML.format(wnid=folder[1:9], name=stem, width=size[0], height=size[1], objects=objects)
        (root / "Annotation" / folder).mkdir(parents=True, exist_ok=True)
        (root / "Annotation" / folder / stem).write_text(xml)
        image(root / "Images" / folder / f"{stem}.jpg", size)
    (root / lists_folder).mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        rows = [row for row in DOGS if row[3] == split]
        savemat(
            root / lists_folder / f"{split}_list.mat",
            {
                "file_list": cells([f"{r[0]}/{r[1]}.jpg" for r in rows]),
                "annotation_list": cells([f"{r[0]}/{r[1]}" for r in rows]),
                "labels": np.array([[float(r[2])] for r in rows]),
            },
        )
    return root


@pytest.mark.parametrize("lists_folder", ["", "lists"])
def test_dogs_release(tmp_path, lists_folder):
    root = write_dogs(tmp_path / "dogs", lists_folder)
    train, test = datasets.stanford_dogs(root, "train"), datasets.stanford_dogs(root, "test")
    assert [s.image_id for s in train] == [
        "n02085620-Chihuahua/n02085620_7.jpg",
        "n02085782-Japanese_spaniel/n02085782_2.jpg",
    ]
    assert [s.label for s in train] == [0, 1] and [s.label for s in test] == [0, 1]
    assert train[0].path == root / "Images/n02085620-Chihuahua/n02085620_7.jpg" and train[0].path.is_file()
    np.testing.assert_array_equal(train[0].boxes, [[71, 1, 192, 180]])  # as written, as ILSVRC's
    np.testing.assert_array_equal(train[1].boxes, [[10, 20, 30, 40], [50, 60, 70, 80]])  # one per dog
    assert train[0].size == (250, 188) and test[0].size == (395, 495)
    assert datasets.dogs_class_names(root) == ["Chihuahua", "Japanese_spaniel"]


def dogs_bad(root: Path, split: str, **variables) -> None:
    rows = [row for row in DOGS if row[3] == split]
    content = {
        "file_list": cells([f"{r[0]}/{r[1]}.jpg" for r in rows]),
        "annotation_list": cells([f"{r[0]}/{r[1]}" for r in rows]),
        "labels": np.array([[float(r[2])] for r in rows]),
    }
    content.update(variables)
    savemat(root / f"{split}_list.mat", {k: v for k, v in content.items() if v is not None})


def test_dogs_bad_lists(tmp_path):
    root = write_dogs(tmp_path / "dogs")
    mat = re.escape(str(root / "train_list.mat"))
    dogs_bad(root, "train", labels=np.array([[1.0], [1.0], [2.0]]))
    with pytest.raises(DatasetError, match=f"{mat}: 2 files, 2 annotations and 3 labels"):
        datasets.stanford_dogs(root, "train")
    dogs_bad(root, "train", labels=np.array([[1.0], [0.0]]))
    with pytest.raises(DatasetError, match=f"{mat}: entry 2: label 0 is not an integer >= 1"):
        datasets.stanford_dogs(root, "train")
    dogs_bad(root, "train", labels=None)
    with pytest.raises(DatasetError, match=f"{mat}: no variable 'labels'"):
        datasets.stanford_dogs(root, "train")
    dogs_bad(root, "test", labels=np.array([[1.0], [1.0]]))  # two breeds, one label
    with pytest.raises(
        DatasetError,
        match=r"test_list\.mat: entry 2: label 1 for n02085782-Japanese_spaniel/, as entry 1 for n02085620-Chihuahua/",
    ):
        datasets.stanford_dogs(root, "test")
    (root / "train_list.mat").write_text("not matlab")
    with pytest.raises(DatasetError, match=f"{mat}: not a MATLAB v5 file scipy can read"):
        datasets.stanford_dogs(root, "train")
    with pytest.raises(DatasetError, match="expected 'train' or 'test'"):
        datasets.stanford_dogs(root, "val")
    (root / "test_list.mat").unlink()
    with pytest.raises(DatasetError, match=r"test_list\.mat: file missing; expected the Stanford Dogs release"):
        datasets.stanford_dogs(root, "test")


def test_dogs_bad_annotations(tmp_path):
    root = write_dogs(tmp_path / "dogs")
    xml = root / "Annotation/n02085782-Japanese_spaniel/n02085782_2"
    text = xml.read_text()
    xml.write_text(text.replace("<xmax>70</xmax>", "<xmax>abc</xmax>"))  # the second object's box, line 33
    with pytest.raises(DatasetError, match=re.escape(f"{xml}:33: xmax 'abc' is not a number")):
        datasets.stanford_dogs(root, "train")
    xml.write_text(text.replace("<ymax>40</ymax>", ""))
    with pytest.raises(DatasetError, match=re.escape(f"{xml}:23: <bndbox> has no <ymax>")):
        datasets.stanford_dogs(root, "train")
    xml.write_text(text.replace("</object>", "</objet>", 1))
    with pytest.raises(DatasetError, match=re.escape(f"{xml}:24: not valid XML (mismatched tag")):
        datasets.stanford_dogs(root, "train")
    xml.write_text(text.replace("<xmin>50</xmin>", "<xmin>90</xmin>"))
    with pytest.raises(DatasetError, match=re.escape(f"{xml}:35: box (90, 60, 70, 80) has x1 < x0")):
        datasets.stanford_dogs(root, "train")
    xml.unlink()
    with pytest.raises(DatasetError, match=re.escape(f"{xml}: annotation missing")):
        datasets.stanford_dogs(root, "train")


# --- Stanford Cars ------------------------------------------------------------------------------

CAR_FIELDS = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
# fname, class (1-based), x1, y1, x2, y2 (1-based, max inclusive), (width, height)
CARS_TRAIN = [("00001.jpg", 2, 39, 116, 569, 375, (600, 400)), ("00002.jpg", 1, 1, 1, 30, 20, (30, 20))]
CARS_TEST = [("00001.jpg", 3, 30, 52, 246, 147, (260, 150))]


def annotations(rows, fields=CAR_FIELDS) -> np.ndarray:
    """A MATLAB 1 x N struct array with ``fields``, integers typed as the release stores them."""
    records = []
    for fname, label, *box, _ in rows:
        values = dict(zip(("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"), map(np.uint16, box)))
        values.update({"class": np.uint8(label), "fname": fname})
        records.append(tuple(values[name] for name, _ in fields))
    return np.array(records, dtype=fields)[None]


def write_cars(root: Path, test_labels_in_devkit: bool = False) -> Path:
    for split, rows in (("train", CARS_TRAIN), ("test", CARS_TEST)):
        for name, *_, size in rows:
            image(root / f"cars_{split}" / name, size)
    (root / "devkit").mkdir(parents=True)
    savemat(root / "devkit/cars_train_annos.mat", {"annotations": annotations(CARS_TRAIN)})
    savemat(
        root / "devkit/cars_test_annos.mat", {"annotations": annotations(CARS_TEST, CAR_FIELDS[:4] + CAR_FIELDS[5:])}
    )
    where = root / "devkit" if test_labels_in_devkit else root
    savemat(where / "cars_test_annos_withlabels.mat", {"annotations": annotations(CARS_TEST)})
    savemat(
        root / "devkit/cars_meta.mat",
        {"class_names": cells(["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]).T},
    )
    return root


@pytest.mark.parametrize("test_labels_in_devkit", [False, True])
def test_cars_release(tmp_path, test_labels_in_devkit):
    root = write_cars(tmp_path / "stanford_cars", test_labels_in_devkit)
    train, test = datasets.stanford_cars(root, "train"), datasets.stanford_cars(root, "test")
    assert [s.image_id for s in train] == ["00001.jpg", "00002.jpg"] and [s.label for s in train] == [1, 0]
    assert train[0].path == root / "cars_train/00001.jpg" and test[0].path == root / "cars_test/00001.jpg"
    np.testing.assert_array_equal(train[0].boxes, [[38, 115, 569, 375]])  # 1-based inclusive -> pixel edges
    np.testing.assert_array_equal(train[1].boxes, [[0, 0, 30, 20]])  # the whole 30 x 20 image
    assert test[0].label == 2 and train[0].size is None
    assert datasets.cars_class_names(root)[0] == "AM General Hummer SUV 2000"


def test_cars_bad_annotations(tmp_path):
    root = write_cars(tmp_path / "stanford_cars")
    (root / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(
        DatasetError, match=r"cars_test_annos_withlabels\.mat: file missing; expected the Stanford Cars"
    ):
        datasets.stanford_cars(root, "test")
    savemat(
        root / "cars_test_annos_withlabels.mat",
        {"annotations": annotations(CARS_TEST, CAR_FIELDS[:4] + CAR_FIELDS[5:])},
    )
    with pytest.raises(DatasetError, match=r"lack the field 'class' \(cars_test_annos\.mat has none"):
        datasets.stanford_cars(root, "test")
    train = root / "devkit/cars_train_annos.mat"
    savemat(train, {"annotations": annotations([CARS_TRAIN[0], ("00002.jpg", 4, 1, 1, 30, 20, None)])})
    with pytest.raises(DatasetError, match=re.escape(f"{train}: entry 2: class 4, but cars_meta.mat names 3")):
        datasets.stanford_cars(root, "train")
    savemat(train, {"annotations": annotations([("00001.jpg", 1, 0, 1, 30, 20, None)])})
    with pytest.raises(DatasetError, match=re.escape(f"{train}: entry 1: bbox_x1 0 is not an integer >= 1")):
        datasets.stanford_cars(root, "train")
    savemat(train, {"annotations": annotations([("00001.jpg", 1, 40, 1, 30, 20, None)])})
    with pytest.raises(DatasetError, match=re.escape(f"{train}: entry 1: box (40, 1, 30, 20) has x2 < x1")):
        datasets.stanford_cars(root, "train")


# --- FGVC-Aircraft ------------------------------------------------------------------------------

VARIANTS = ["707-320", "A300B4", "F/A-18"]
# id, variant, split, (xmin, ymin, xmax, ymax) 1-based inclusive, (width, height)
AIRCRAFT = [
    ("1025794", "707-320", "train", (3, 144, 998, 431), (1000, 500)),
    ("0056978", "F/A-18", "val", (1, 1, 40, 30), (40, 50)),
    ("2074164", "A300B4", "test", (10, 20, 30, 40), (60, 60)),
]


def write_aircraft(root: Path) -> Path:
    data = root / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("".join(f"{v}\n" for v in VARIANTS))
    splits = {"train": ["train"], "val": ["val"], "trainval": ["train", "val"], "test": ["test"]}
    for split, parts in splits.items():
        text = "".join(f"{i} {v}\n" for i, v, s, _, _ in AIRCRAFT if s in parts)
        (data / f"images_variant_{split}.txt").write_text(text)
    (data / "images_box.txt").write_text("".join(f"{i} {' '.join(map(str, box))}\n" for i, _, _, box, _ in AIRCRAFT))
    for image_id, *_, size in AIRCRAFT:
        image(data / "images" / f"{image_id}.jpg", size)
    return root


def test_aircraft_release(tmp_path):
    root = write_aircraft(tmp_path / "fgvc-aircraft-2013b")
    trainval = datasets.fgvc_aircraft(root, "trainval")
    assert [s.image_id for s in trainval] == ["1025794.jpg", "0056978.jpg"] and [s.label for s in trainval] == [0, 2]
    assert trainval[0].path == root / "data/images/1025794.jpg"
    np.testing.assert_array_equal(trainval[0].boxes, [[2, 143, 998, 431]])  # 1-based inclusive -> pixel edges
    np.testing.assert_array_equal(trainval[1].boxes, [[0, 0, 40, 30]])
    assert [s.image_id for s in datasets.fgvc_aircraft(root, "val")] == ["0056978.jpg"]
    assert [s.label for s in datasets.fgvc_aircraft(root, "test")] == [1]
    assert datasets.aircraft_class_names(root) == VARIANTS
    with pytest.raises(DatasetError, match="expected one of train, val, trainval, test"):
        datasets.fgvc_aircraft(root, "all")


@pytest.mark.parametrize(
    "name,text,message",
    [
        (
            "images_variant_test.txt",
            "2074164 A300B4\n\n2074164 A300B4\n",
            ":3: image '2074164' again (first on line 1)",
        ),
        ("images_variant_test.txt", "2074164 Concorde\n", ":1: variant 'Concorde' is not in variants.txt"),
        ("images_box.txt", "1025794 3 144 998 431\n", "images_variant_test.txt:1: image '2074164' has no line in"),
        ("images_box.txt", "2074164 0 20 30 40\n", "images_box.txt:1: box (0 20 30 40) starts before pixel 1"),
        ("images_box.txt", "2074164 10 20 30\n", "images_box.txt:1: expected '<image_id> <xmin> <ymin> <xmax> <ymax>'"),
        ("variants.txt", "A300B4\n707-320\nA300B4\n", "variants.txt:3: variant 'A300B4' again (first on line 1)"),
    ],
)
def test_aircraft_bad_lines(tmp_path, name, text, message):
    root = write_aircraft(tmp_path / "fgvc-aircraft-2013b")
    (root / "data" / name).write_text(text)
    with pytest.raises(DatasetError, match=re.escape(message)):
        datasets.fgvc_aircraft(root, "test")


def test_missing_release_folders(tmp_path):
    with pytest.raises(DatasetError, match="Images: no such folder; expected the Stanford Dogs release"):
        datasets.stanford_dogs(tmp_path, "train")
    with pytest.raises(DatasetError, match="cars_train: no such folder; expected the Stanford Cars release"):
        datasets.stanford_cars(tmp_path, "train")
    with pytest.raises(DatasetError, match="data: no such folder; expected the fgvc-aircraft-2013b folder"):
        datasets.fgvc_aircraft(tmp_path, "train")


# --- the scripts --------------------------------------------------------------------------------


def test_presets_follow_the_original_defaults():
    """The original has no table entry for these datasets: its command-line defaults apply to every arch."""
    for root, classes in (("Dogs", 120), ("Cars", 196), ("Aircraft", 100)):
        assert set(PRESETS[root]) == {"vgg", "resnet", "inception", "mobilenet"}
        values = preset(root, "vgg")
        assert (values.alpha, values.beta, values.threshold, values.batch_size) == (0.5, 1.5, 0.1, 32)
        assert (values.epochs, values.decay_epoch, values.num_classes, values.topk) == (120, 80, classes, classes)


def test_roots_reach_their_loaders_and_names(tmp_path):
    parser = cli.script_parser("test")
    releases = {
        "Dogs": (write_dogs(tmp_path / "dogs"), 2, "Chihuahua"),
        "Cars": (write_cars(tmp_path / "cars"), 2, "AM General Hummer SUV 2000"),
        "Aircraft": (write_aircraft(tmp_path / "aircraft"), 2, "707-320"),  # train: train + val
    }
    for root, (folder, train_images, first_name) in releases.items():
        args = parser.parse_args(["--root", root, "--data-dir", str(folder)])
        cli.resolve_preset(args)
        assert len(cli.load_samples(args, "train")) == train_images, root
        assert cli.class_names(args)[0] == first_name
    args = parser.parse_args(["--root", "Aircraft", "--data-dir", str(releases["Aircraft"][0])])
    assert cli.resolve_preset(args).num_classes == 100 and len(cli.load_samples(args, "val")) == 1


def test_evaluator_on_a_fine_grained_release(tmp_path):
    """The whole original protocol on FGVC-Aircraft's test split, from a checkpoint of ours."""
    root = write_aircraft(tmp_path / "fgvc-aircraft-2013b")
    model = build_model("tiny", 3)
    checkpoint = {"model": model.state_dict(), "arch": "tiny", "num_classes": 3, "method": "bas", "root": "Aircraft"}
    torch.save(checkpoint, tmp_path / "tiny.pth")
    argv = ["--root", "Aircraft", "--data-dir", str(root), "--checkpoint", str(tmp_path / "tiny.pth")]
    argv += ["--workers", "0", "--no-progress", "--topk", "3", "--no-maxboxacc", "--output-dir", str(tmp_path / "ev")]
    report = evaluator.evaluate_model(evaluator.get_args_parser().parse_args(argv), torch.device("cpu"))
    assert report["images"] == 1 and report["threshold"] == 0.1 and 0 <= report["gt_known"] <= 100
