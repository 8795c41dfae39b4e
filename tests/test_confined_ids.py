"""Every id and relative path a dataset's lists give stays inside its folder: a list cannot
send a read, nor any output named after an id (maps, overlays, seeds), outside the folders
the user chose. Bad paths stop at read time with the list file and line."""

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bas.errors import DatasetError
from WSOL import datasets
from WSOL import train as train_script
from WSOL.synthetic import make_synthetic
from WSSS import datasets as wsss

LEAVING = ["../../outside/x.jpg", "/abs/x.jpg", "a/../../x.jpg"]
WSOL = Path(__file__).resolve().parents[1] / "WSOL"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def image(path: Path, size: tuple[int, int] = (4, 4)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path)
    return path


def refused(list_file: str, lineno: int, name: str) -> str:
    """The error of a path leaving its folder, at a line of ``list_file`` (its path or name)."""
    return re.escape(f"{list_file}:{lineno}: path {name!r} ") + "(is absolute|goes up a folder with '..')"


def snapshot(folder: Path, leave_out: tuple[Path, ...] = ()) -> dict:
    """Every entry under ``folder`` (but those under ``leave_out``), a file with its size and
    time written: an entry added or a file replaced changes the snapshot."""
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
        for p in sorted(folder.rglob("*"))
        if not any(p == out or out in p.parents for out in leave_out)
    }


# --- the CUB release ------------------------------------------------------------------------------


def cub_release(root: Path, names: list[str], boxes: list[str] | None = None) -> Path:
    """A CUB_200_2011 folder listing ``names`` (all class 1, all test), without image files."""
    (root / "images").mkdir(parents=True)
    ids = range(1, len(names) + 1)
    write(root / "images.txt", "".join(f"{i} {name}\n" for i, name in zip(ids, names)))
    write(root / "image_class_labels.txt", "".join(f"{i} 1\n" for i in ids))
    write(root / "train_test_split.txt", "".join(f"{i} 0\n" for i in ids))
    boxes = boxes or ["0 0 1 1"] * len(names)
    write(root / "bounding_boxes.txt", "".join(f"{i} {box}\n" for i, box in zip(ids, boxes)))
    return root


@pytest.mark.parametrize("name", LEAVING)
def test_cub_release_refuses_an_image_outside_images(tmp_path, name):
    root = cub_release(tmp_path / "CUB", ["001.Bird/a.jpg", name])
    with pytest.raises(DatasetError, match=refused("images.txt", 2, name)):
        datasets.cub_release(root, "test")


@pytest.mark.parametrize(
    "name,problem",
    [("a\\..\\..\\x.jpg", "holds a backslash"), ("C:x.jpg", "starts with a drive"), ("a\0.jpg", "holds a NUL byte")],
)
def test_cub_release_refuses_paths_that_leave_elsewhere(tmp_path, name, problem):
    root = cub_release(tmp_path / "CUB", [name])
    with pytest.raises(DatasetError, match=re.escape(f"images.txt:1: path {name!r} ") + problem):
        datasets.cub_release(root, "test")


def test_cub_release_accepts_nested_ids(tmp_path):
    root = cub_release(tmp_path / "CUB", ["001.Bird/a.jpg", "002.Other.Bird/sub/b..c.jpg"])
    samples = datasets.cub_release(root, "test")
    assert [s.path for s in samples] == [root / "images/001.Bird/a.jpg", root / "images/002.Other.Bird/sub/b..c.jpg"]


# --- wsolevaluation metadata ----------------------------------------------------------------------


def metadata(folder: Path, ids: list[str], localization: str) -> Path:
    write(folder / "image_ids.txt", "".join(f"{i}\n" for i in ids))
    write(folder / "class_labels.txt", "".join(f"{i},0\n" for i in ids))
    write(folder / "image_sizes.txt", "".join(f"{i},4,4\n" for i in ids))
    write(folder / "localization.txt", localization)
    return folder


@pytest.mark.parametrize("name", LEAVING)
def test_wsol_metadata_refuses_an_image_outside_its_root(tmp_path, name):
    ids = ["001.Bird/a.jpg", name]
    folder = metadata(tmp_path / "meta", ids, "".join(f"{i},0,0,1,1\n" for i in ids))
    with pytest.raises(DatasetError, match=refused("image_ids.txt", 2, name)):
        datasets.wsol_metadata(folder, tmp_path)
    with pytest.raises(DatasetError, match=refused("image_ids.txt", 2, name)):
        datasets.wsol_metadata(folder, None)  # scoring saved maps: no image root, the ids are the paths


@pytest.mark.parametrize("name", LEAVING)
@pytest.mark.parametrize("localization,lineno", [("a.jpg,m.png,\na.jpg,{},\n", 2), ("a.jpg,m.png,{}\n", 1)])
def test_wsol_metadata_refuses_a_mask_outside_its_root(tmp_path, name, localization, lineno):
    folder = metadata(tmp_path / "meta", ["a.jpg"], localization.format(name))
    with pytest.raises(DatasetError, match=refused("localization.txt", lineno, name)):
        datasets.wsol_metadata(folder, tmp_path)


def test_wsol_metadata_accepts_nested_ids_and_masks(tmp_path):
    folder = metadata(tmp_path / "meta", ["001.Bird/a.jpg"], "001.Bird/a.jpg,masks/001.Bird/a.png,ign/a.png\n")
    (tmp_path / "images").mkdir()
    (sample,) = datasets.wsol_metadata(folder, tmp_path / "images", tmp_path / "masks")
    assert sample.path == tmp_path / "images/001.Bird/a.jpg"
    assert sample.mask_paths == (tmp_path / "masks/masks/001.Bird/a.png",)
    assert sample.ignore_path == tmp_path / "masks/ign/a.png"


# --- Stanford Dogs, FGVC-Aircraft -----------------------------------------------------------------


def test_aircraft_refuses_an_image_outside_images(tmp_path):
    data = tmp_path / "fgvc/data"
    (data / "images").mkdir(parents=True)
    write(data / "variants.txt", "707-320\n")
    write(data / "images_variant_test.txt", "1025794 707-320\n../../x 707-320\n")
    write(data / "images_box.txt", "1025794 1 1 10 10\n../../x 1 1 10 10\n")
    with pytest.raises(DatasetError, match=refused("images_variant_test.txt", 2, "../../x")):
        datasets.fgvc_aircraft(tmp_path / "fgvc", "test")


def test_dogs_refuse_an_image_outside_images(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    root = tmp_path / "dogs"
    (root / "Images").mkdir(parents=True)
    write(root / "Annotation/n02085620-Chihuahua/a", "<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin>"
          "<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>\n")  # fmt: skip
    files = np.array(["n02085620-Chihuahua/a.jpg", "../../x.jpg"], dtype=object)
    annotations = np.array(["n02085620-Chihuahua/a", "n02085620-Chihuahua/a"], dtype=object)
    scipy_io.savemat(root / "test_list.mat", {"file_list": files, "annotation_list": annotations, "labels": [1, 2]})
    with pytest.raises(DatasetError, match=re.escape("test_list.mat: entry 2: file_list '../../x.jpg' goes up")):
        datasets.stanford_dogs(root, "test")


# --- WSSS: VOC lists and COCO ---------------------------------------------------------------------


@pytest.fixture
def voc(tmp_path) -> Path:
    root = tmp_path / "VOC2012"
    for name in ("a", "x"):
        image(root / "JPEGImages" / f"{name}.jpg")
        write(root / "Annotations" / f"{name}.xml", "<annotation><object><name>dog</name></object></annotation>\n")
    return root


@pytest.mark.parametrize("name", LEAVING)
def test_voc_lists_refuse_ids_outside_jpeg_images(voc, name):
    write(voc / "ImageSets/Segmentation/train.txt", f"a\n{name}\n")
    for read in (wsss.voc_samples, wsss.voc_images):
        with pytest.raises(DatasetError, match=refused("train.txt", 2, name)):
            read(voc, "train")


def test_voc_lists_take_ids_and_deeplab_paths_only(voc):
    write(voc / "ImageSets/Segmentation/train.txt", "/JPEGImages/a.jpg /SegmentationClassAug/a.png\nx.jpg\n")
    assert [s.image_id for s in wsss.voc_images(voc, "train")] == ["a", "x"]
    write(voc / "ImageSets/Segmentation/train.txt", "a\nsomewhere/x.jpg\n")
    with pytest.raises(DatasetError, match=re.escape("train.txt:2: 'somewhere/x.jpg' is not an image id")):
        wsss.voc_samples(voc, "train")


def coco(root: Path, file_name: str) -> Path:
    """A COCO root with one val2014 image, annotated."""
    image(root / "val2014/COCO_val2014_000000000001.jpg")
    content = {
        "images": [{"id": 1, "file_name": file_name, "height": 4, "width": 4}],
        "annotations": [{"id": 9, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 2, 0, 2, 2]]}],
        "categories": [{"id": 1, "name": "person"}],
    }
    write(root / "annotations/instances_val2014.json", json.dumps(content))
    return root


@pytest.mark.parametrize("name", LEAVING)
def test_coco_refuses_a_file_name_outside_its_images(tmp_path, name):
    root = coco(tmp_path / "coco", name)
    message = re.escape(f"instances_val2014.json: image 1: file name {name!r} ") + "(is absolute|goes up)"
    with pytest.raises(DatasetError, match=message):
        wsss.CocoInstances(root, "val")


@pytest.mark.parametrize("name", LEAVING)
def test_coco_lists_refuse_names_outside(tmp_path, name):
    instances = wsss.CocoInstances(coco(tmp_path / "coco", "COCO_val2014_000000000001.jpg"), "val")
    listed = write(tmp_path / "val.txt", f"COCO_val2014_000000000001\n{name}\n")
    with pytest.raises(DatasetError, match=refused("val.txt", 2, name)):
        instances.samples(listed)
    plain = write(tmp_path / "plain.txt", "COCO_val2014_000000000001\n")
    assert [s.image_id for s in instances.samples(plain)] == ["COCO_val2014_000000000001"]


# --- end to end: saved maps -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    data = make_synthetic(tmp_path_factory.mktemp("data") / "Synthetic", num_train=8, num_test=4, seed=1)
    run = tmp_path_factory.mktemp("run") / "run"
    argv = ["--data-dir", str(data), "--output-dir", str(run), "--workers", "0", "--no-progress", "--epochs", "1"]
    train_script.train(train_script.get_args_parser().parse_args([*argv, "--batch-size", "8"]))
    return run / "best_loc.pth"


@pytest.mark.parametrize("crafted", ["../../outside/x.jpg", "{tmp}/user/x.jpg"])
def test_evaluator_writes_no_map_outside_its_folder(checkpoint, tmp_path, crafted):
    """An id of images.txt that climbs out (or is absolute) would put its map, DIR/<id>.npy,
    outside DIR: beside the user's files, replacing one on a rerun."""
    data = make_synthetic(tmp_path / "data" / "Synthetic", num_train=8, num_test=4, seed=1)
    crafted = crafted.format(tmp=tmp_path)
    images_txt = data / "images.txt"
    lines = images_txt.read_text().splitlines()
    _, name = lines[8].split()  # id 9, the first test image, moved to where the crafted id finds it
    for folder, suffix in (("images", ".jpg"), ("segmentations", ".png")):
        target = Path(data / folder / crafted).with_suffix(suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(data / folder / name).with_suffix(suffix), target)
    lines[8] = f"9 {crafted}"
    images_txt.write_text("\n".join(lines) + "\n")
    maps, output = tmp_path / "maps", tmp_path / "ev"
    before = snapshot(tmp_path.parent, (maps, output))

    argv = ["--data-dir", data, "--checkpoint", checkpoint, "--save-maps", maps, "--output-dir", output]
    result = subprocess.run(
        [sys.executable, str(WSOL / "evaluator.py"), *map(str, argv), "--workers", "0", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert re.fullmatch("error: " + refused(str(images_txt), 9, crafted) + ".*", errors[0])
    assert snapshot(tmp_path.parent, (maps, output)) == before
    assert not list(maps.rglob("*.npy"))


# --- boxes past their image -----------------------------------------------------------------------


def test_a_box_outside_its_image_is_warned_once(tmp_path, caplog):
    """The release gives no sizes: a box is checked when its image is read. One pixel past the
    border is the release's x + width of a box touching it; more is a box of another image."""
    root = cub_release(tmp_path / "CUB", ["001.Bird/a.jpg", "001.Bird/b.jpg"], ["60 27 265 277", "0 0 11 10"])
    image(root / "images/001.Bird/a.jpg", (1, 1))
    image(root / "images/001.Bird/b.jpg", (10, 10))
    dataset = datasets.ImageDataset(datasets.cub_release(root, "test"), datasets.test_transform(8, 8))
    with caplog.at_level(logging.WARNING):
        for index in (0, 1, 0):
            dataset[index]
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            f"{root / 'bounding_boxes.txt'}:1: box (60, 27, 325, 304) lies outside the 1x1 image "
            f"{root / 'images/001.Bird/a.jpg'}; the evaluation clips it to the image",
        )
    ]
