"""Dataset lists: the real annotation files, a CUB release and class folders written here,
the transforms, and every kind of bad input (named by file and line)."""

import functools
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from bas.errors import DatasetError
from WSOL import datasets

METADATA = Path("data/wsolevaluation/metadata")
ORIGINAL_CUB = Path("data/bas-extension/WSOL/Data/CUB_200_2011")

# The first five lines of the CUB_200_2011 release (images.txt, train_test_split.txt,
# bounding_boxes.txt as x y width height); all are class 1.
RELEASE_HEAD = [
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg", 0, (60.0, 27.0, 325.0, 304.0)),
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg", 1, (139.0, 30.0, 153.0, 264.0)),
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0002_55.jpg", 0, (14.0, 112.0, 388.0, 186.0)),
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0074_59.jpg", 1, (112.0, 90.0, 255.0, 242.0)),
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0014_89.jpg", 1, (70.0, 50.0, 134.0, 303.0)),
]


@functools.lru_cache
def metadata(shared: Path, dataset: str, split: str) -> list[datasets.Sample]:
    """Parsed once per module run: ILSVRC test alone has 50,000 images."""
    return datasets.wsol_metadata(shared / METADATA / dataset / split, shared)


def raw_lines(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines() if line]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def lines(*rows) -> str:
    return "".join(" ".join(map(str, row)) + "\n" for row in rows)


def at(path_name: str, lineno: int) -> str:
    """The start of an error message: ``<file>:<line>:``."""
    return re.escape(f"{path_name}:{lineno}:")


# --- the real wsolevaluation metadata ---------------------------------------------------------

SPLITS = [
    ("CUB", "train", 5994, 200, 5994),
    ("CUB", "val", 1000, 200, 1000),
    ("CUB", "test", 5794, 200, 5794),
    ("ILSVRC", "val", 10000, 1000, 18532),
    ("ILSVRC", "test", 50000, 1000, 80477),
    ("OpenImages", "val", 2500, 100, 3854),
    ("OpenImages", "test", 5000, 100, 7632),
]


@pytest.mark.parametrize("dataset,split,images,classes,localizations", SPLITS)
def test_real_metadata_counts(shared_dir, dataset, split, images, classes, localizations):
    samples = metadata(shared_dir, dataset, split)
    assert len(samples) == images
    assert datasets.num_classes(samples) == classes
    assert {s.label for s in samples} == set(range(classes))
    if dataset == "OpenImages":
        assert sum(len(s.mask_paths) for s in samples) == localizations
        assert all(s.ignore_path is not None and s.size is None and s.boxes.shape == (0, 4) for s in samples)
    else:
        assert sum(len(s.boxes) for s in samples) == localizations
        assert all(s.size is not None and not s.mask_paths and s.ignore_path is None for s in samples)


@pytest.mark.parametrize("dataset,split", [row[:2] for row in SPLITS])
def test_real_metadata_first_and_last_match_raw_lines(shared_dir, dataset, split):
    folder = shared_dir / METADATA / dataset / split
    samples = metadata(shared_dir, dataset, split)
    ids = [row[0] for row in raw_lines(folder / "image_ids.txt")]
    labels = dict(raw_lines(folder / "class_labels.txt"))
    sizes = {row[0]: (int(row[1]), int(row[2])) for row in raw_lines(folder / "image_sizes.txt")}
    localization = raw_lines(folder / "localization.txt")
    for position in (0, -1):
        sample = samples[position]
        assert sample.image_id == ids[position]
        assert sample.path == shared_dir / ids[position]
        assert sample.label == int(labels[sample.image_id])
        assert sample.size == sizes.get(sample.image_id)
        rows = [row[1:] for row in localization if row[0] == sample.image_id]
        if dataset == "OpenImages":
            assert sample.mask_paths == tuple(shared_dir / row[0] for row in rows)
            assert sample.ignore_path == shared_dir / rows[0][1]
        else:
            assert sample.boxes.dtype == np.float32
            np.testing.assert_array_equal(sample.boxes, np.array(rows, dtype=np.float32))


def test_real_metadata_known_entries(shared_dir):
    cub = metadata(shared_dir, "CUB", "test")[0]
    assert cub.image_id == "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
    assert (cub.label, cub.size) == (0, (500, 335))
    np.testing.assert_array_equal(cub.boxes, [[60, 27, 385, 331]])

    ilsvrc = metadata(shared_dir, "ILSVRC", "test")
    assert (ilsvrc[0].image_id, ilsvrc[0].label) == ("val/ILSVRC2012_val_00000001.JPEG", 65)
    np.testing.assert_array_equal(ilsvrc[1].boxes, [[45, 49, 499, 162], [2, 69, 437, 207]])  # two boxes
    assert (ilsvrc[-1].image_id, ilsvrc[-1].label) == ("val/ILSVRC2012_val_00050000.JPEG", 355)
    np.testing.assert_array_equal(ilsvrc[-1].boxes, [[237, 109, 446, 374], [175, 89, 474, 342]])
    assert max(len(s.boxes) for s in ilsvrc) == 20
    assert max(len(s.boxes) for s in metadata(shared_dir, "ILSVRC", "val")) == 259
    assert metadata(shared_dir, "ILSVRC", "val")[0].image_id == "val2/0/0.jpeg"

    openimages = metadata(shared_dir, "OpenImages", "test")[0]
    assert openimages.image_id == "test/01226z/7af766bd43da900b.jpg"
    assert [p.name for p in openimages.mask_paths] == [
        "7af766bd43da900b_m01226z_6554d965.png",
        "7af766bd43da900b_m01226z_8856c605.png",
    ]
    assert openimages.ignore_path == shared_dir / "test/01226z/7af766bd43da900b_ignore.png"


def test_real_boxes_lie_inside_their_images(shared_dir):
    for dataset, split in [("CUB", "test"), ("ILSVRC", "val"), ("ILSVRC", "test")]:
        for sample in metadata(shared_dir, dataset, split):
            assert (sample.boxes[:, 2:] <= np.array(sample.size)).all()
            assert (sample.boxes[:, :2] >= 0).all() and (sample.boxes[:, 2:] >= sample.boxes[:, :2]).all()


def test_boxes_are_read_only(shared_dir):
    with pytest.raises(ValueError, match="read-only"):
        metadata(shared_dir, "CUB", "val")[0].boxes[0, 0] = 1


def test_openimages_masks_under_a_mask_root(shared_dir, tmp_path):
    """wsolevaluation's own test masks, found through ``mask_root``."""
    masks = shared_dir / "data/wsolevaluation/test_data/test_masks"
    ids = ["val/0bt_c3/1cd9ac0169ec7df0.jpg", "val/0bt_c3/3a29f0b33894d4a6.jpg"]
    write(tmp_path / "meta/image_ids.txt", "\n".join(ids))
    write(tmp_path / "meta/class_labels.txt", f"{ids[0]},3\n{ids[1]},3\n")
    write(tmp_path / "meta/image_sizes.txt", "")
    write(
        tmp_path / "meta/localization.txt",
        f"{ids[0]},val/0bt_c3/1cd9ac0169ec7df0_m0bt_c3_6932e993.png,val/0bt_c3/1cd9ac0169ec7df0_ignore.png\n"
        f"{ids[1]},val/0bt_c3/3a29f0b33894d4a6_m0bt_c3_3581e3ae.png,val/0bt_c3/3a29f0b33894d4a6_ignore.png\n"
        f"{ids[1]},val/0bt_c3/3a29f0b33894d4a6_m0bt_c3_d2422806.png,\n",
    )
    samples = datasets.wsol_metadata(tmp_path / "meta", tmp_path, mask_root=masks)
    assert [len(s.mask_paths) for s in samples] == [1, 2]
    assert all(p.is_file() for s in samples for p in (*s.mask_paths, s.ignore_path))
    assert samples[1].path == tmp_path / ids[1] and samples[1].size is None


# --- the CUB release box convention -----------------------------------------------------------


def write_release(root: Path, entries: list[tuple[str, int, int, tuple[float, ...]]]) -> Path:
    """A CUB_200_2011 release folder (no image files) from (path, class id, is_train, x y w h)."""
    (root / "images").mkdir(parents=True)
    ids = range(1, len(entries) + 1)
    write(root / "images.txt", lines(*[(i, e[0]) for i, e in zip(ids, entries)]))
    write(root / "image_class_labels.txt", lines(*[(i, e[1]) for i, e in zip(ids, entries)]))
    write(root / "train_test_split.txt", lines(*[(i, e[2]) for i, e in zip(ids, entries)]))
    write(root / "bounding_boxes.txt", lines(*[(i, *e[3]) for i, e in zip(ids, entries)]))
    return root


def test_cub_release_boxes_equal_wsolevaluation(shared_dir, tmp_path):
    """x1 = x + width, y1 = y + height: the release's first lines give wsolevaluation's boxes."""
    root = write_release(tmp_path / "CUB_200_2011", [(name, 1, train, box) for name, train, box in RELEASE_HEAD])
    for split, count in (("test", 2), ("train", 3)):
        ours = datasets.cub_release(root, split)
        theirs = metadata(shared_dir, "CUB", split)[:count]
        assert [s.image_id for s in ours] == [s.image_id for s in theirs]
        assert [s.label for s in ours] == [s.label for s in theirs] == [0] * count
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a.boxes, b.boxes)


def test_cub_release_reproduces_the_original_lists(shared_dir, tmp_path):
    """The original's test_bounding_box.txt, written back as a release: we get its boxes unclipped,
    and wsolevaluation's are the same boxes clipped to (width - 1, height - 1)."""
    names = [line.split(";") for line in (shared_dir / ORIGINAL_CUB / "test_list.txt").read_text().splitlines()]
    boxes = np.loadtxt(shared_dir / ORIGINAL_CUB / "test_bounding_box.txt")  # N x 6: x0 y0 x1 y1 h w
    entries = [(n, int(c) + 1, 0, (x0, y0, x1 - x0, y1 - y0)) for (n, c), (x0, y0, x1, y1, _, _) in zip(names, boxes)]
    ours = datasets.cub_release(write_release(tmp_path / "CUB_200_2011", entries), "test")
    theirs = {s.image_id: s for s in metadata(shared_dir, "CUB", "test")}
    assert len(ours) == len(theirs) == 5794
    ours_boxes = np.concatenate([s.boxes for s in ours])
    np.testing.assert_array_equal(ours_boxes, boxes[:, :4])
    sizes = np.array([theirs[s.image_id].size for s in ours])  # N x 2 (width, height)
    np.testing.assert_array_equal(sizes, boxes[:, [5, 4]])
    clipped = np.minimum(ours_boxes, np.tile(sizes - 1, 2))
    np.testing.assert_array_equal(clipped, np.concatenate([theirs[s.image_id].boxes for s in ours]))
    assert (ours_boxes != clipped).any(axis=1).sum() == 36  # release boxes reaching past the border
    assert [s.label for s in ours] == [theirs[s.image_id].label for s in ours]


# --- a CUB release with images, end to end ----------------------------------------------------

# path, class id (1-based), is_train, (x, y, w, h), (width, height)
TINY_CUB = [
    ("001.Red/red_1.jpg", 1, 1, (2.0, 3.0, 20.0, 10.0), (40, 30)),
    ("001.Red/red_2.jpg", 1, 0, (0.0, 0.0, 30.0, 50.0), (30, 50)),
    ("002.Blue/blue_1.jpg", 2, 1, (10.5, 4.0, 30.0, 40.0), (64, 48)),
    ("002.Blue/blue_2.jpg", 2, 0, (5.0, 5.0, 40.0, 40.0), (50, 50)),
]


@pytest.fixture
def cub_root(tmp_path) -> Path:
    root = write_release(tmp_path / "CUB_200_2011", [entry[:4] for entry in TINY_CUB])
    write(root / "classes.txt", lines((1, "001.Red"), (2, "002.Blue")))
    for name, class_id, _, _, size in TINY_CUB:
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (200, 10, 10) if class_id == 1 else (10, 10, 200)).save(root / "images" / name)
        mask = (root / "segmentations" / name).with_suffix(".png")
        mask.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", size, 255).save(mask)
    return root


def test_cub_release_end_to_end(cub_root):
    train = datasets.cub_release(cub_root, "train")
    test = datasets.cub_release(cub_root, "test")
    assert [s.image_id for s in train] == ["001.Red/red_1.jpg", "002.Blue/blue_1.jpg"]
    assert [s.label for s in train] == [0, 1] and [s.label for s in test] == [0, 1]
    assert datasets.num_classes(train) == 2
    np.testing.assert_array_equal(train[1].boxes, [[10.5, 4.0, 40.5, 44.0]])
    assert train[0].boxes.shape == (1, 4) and train[0].boxes.dtype == np.float32
    assert train[0].size is None
    assert train[0].path == cub_root / "images/001.Red/red_1.jpg"
    assert train[0].mask_paths == (cub_root / "segmentations/001.Red/red_1.png",)

    image, label, index = datasets.ImageDataset(train, datasets.train_transform(32, 28))[1]
    assert image.shape == (3, 28, 28) and (label, index) == (1, 1)
    image, label, index = datasets.ImageDataset(test, datasets.test_transform(32, 28))[0]
    assert image.shape == (3, 28, 28) and (label, index) == (0, 0)
    crops, _, _ = datasets.ImageDataset(test, datasets.ten_crop_transform(32, 28))[1]
    assert crops.shape == (10, 3, 28, 28)
    loader = torch.utils.data.DataLoader(datasets.ImageDataset(test, datasets.test_transform()), batch_size=2)
    images, labels, indices = next(iter(loader))
    assert images.shape == (2, 3, 224, 224) and labels.tolist() == [0, 1] and indices.tolist() == [0, 1]


def test_cub_release_without_segmentations(cub_root):
    for mask in (cub_root / "segmentations").rglob("*.png"):
        mask.unlink()
    for folder in sorted((cub_root / "segmentations").rglob("*"), reverse=True):
        folder.rmdir()
    (cub_root / "segmentations").rmdir()
    assert all(s.mask_paths == () for s in datasets.cub_release(cub_root, "test"))


def test_lists_tolerate_crlf_and_blank_lines(cub_root):
    text = (cub_root / "images.txt").read_text()
    (cub_root / "images.txt").write_text("\n" + text.replace("\n", "\r\n") + "\n\n")
    assert len(datasets.cub_release(cub_root, "train")) == 2


# --- transforms -------------------------------------------------------------------------------


def test_transforms_follow_the_original_order():
    train = datasets.train_transform()
    steps = [T.Resize, T.RandomCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    assert [type(t) for t in train.transforms] == steps
    resize = train.transforms[0]
    assert resize.size == (256, 256) and resize.interpolation == T.InterpolationMode.BILINEAR
    assert train.transforms[1].size == (224, 224)
    test = datasets.test_transform()
    assert [type(t) for t in test.transforms] == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    assert test.transforms[0].size == (256, 256) and test.transforms[1].size == (224, 224)
    assert test.transforms[3].mean == datasets.IMAGENET_MEAN and test.transforms[3].std == datasets.IMAGENET_STD


def test_test_transform_squashes_and_normalizes():
    """A non-square image becomes resize x resize (aspect not kept); one color maps to
    (c / 255 - mean) / std per channel."""
    image = Image.new("RGB", (300, 100), (255, 0, 128))
    out = datasets.test_transform(224, 224)(image)  # OpenImages test: a plain resize
    assert out.shape == (3, 224, 224)
    expected = (torch.tensor([255, 0, 128]) / 255 - torch.tensor(datasets.IMAGENET_MEAN)) / torch.tensor(
        datasets.IMAGENET_STD
    )
    torch.testing.assert_close(out.mean((1, 2)), expected)


def test_ten_crop_is_center_and_corners_with_flips():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    crops = datasets.ten_crop_transform(32, 24)(image)  # 10 x 3 x 24 x 24
    center = datasets.test_transform(32, 24)(image)
    torch.testing.assert_close(crops[4], center)
    torch.testing.assert_close(crops[9], center.flip(-1))
    pickle.dumps(datasets.ten_crop_transform())  # data-loader workers can take it


# --- class folders ----------------------------------------------------------------------------


def test_class_folders_match_image_folder(tmp_path):
    for name in ["n02/b.JPEG", "n01/a.JPEG", "n01/c.png", "n01/sub/d.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6)).save(tmp_path / name, format="PNG")
    write(tmp_path / "n01/notes.txt", "not an image")
    samples = datasets.class_folders(tmp_path)
    assert [(s.image_id, s.label) for s in samples] == [
        ("n01/a.JPEG", 0),
        ("n01/c.png", 0),
        ("n01/sub/d.jpg", 0),
        ("n02/b.JPEG", 1),
    ]
    assert [(str(s.path), s.label) for s in samples] == ImageFolder(str(tmp_path)).samples
    assert all(s.boxes.shape == (0, 4) and s.size is None for s in samples)
    assert datasets.ImageDataset(samples, datasets.test_transform(8, 8))[3][0].shape == (3, 8, 8)


# --- bad input: CUB release -------------------------------------------------------------------


def test_cub_missing_folder_and_files(tmp_path, cub_root):
    with pytest.raises(DatasetError, match=r"nope: no such folder; expected the CUB_200_2011 release folder"):
        datasets.cub_release(tmp_path / "nope", "train")
    (cub_root / "bounding_boxes.txt").unlink()
    with pytest.raises(DatasetError, match=r"bounding_boxes\.txt: list file missing; expected the CUB_200_2011"):
        datasets.cub_release(cub_root, "train")


def test_cub_split_names(cub_root):
    with pytest.raises(DatasetError, match="expected 'train' or 'test'"):
        datasets.cub_release(cub_root, "val")


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("images.txt", lines((1, "001.Red/red_1.jpg"), (2, "a", "b")), at("images.txt", 2) + " expected"),
        ("images.txt", lines((1, "001.Red/red_1.jpg"), ("x", "b.jpg")), at("images.txt", 2) + " image id 'x'"),
        ("images.txt", lines(*[(i, f"{i}.jpg") for i in (1, 2, 3, 1)]), at("images.txt", 4) + " image id 1 again"),
        (
            "bounding_boxes.txt",
            lines((1, 0, 0, 1, 1), (2, 0, 0, 1, 1), (3, 0, "abc", 1, 1), (4, 0, 0, 1, 1)),
            at("bounding_boxes.txt", 3) + " box value 'abc' is not a number",
        ),
        (
            "bounding_boxes.txt",
            lines((1, 5, 5, -2, 1), (2, 0, 0, 1, 1), (3, 0, 0, 1, 1), (4, 0, 0, 1, 1)),
            at("bounding_boxes.txt", 1) + r" box \(5, 5, 3, 6\) has x1 < x0",
        ),
        (
            "bounding_boxes.txt",
            lines((1, 0, 0, 1, 1), (2, -1, 0, 1, 1), (3, 0, 0, 1, 1), (4, 0, 0, 1, 1)),
            at("bounding_boxes.txt", 2) + " box .* lies outside the image",
        ),
        (
            "image_class_labels.txt",
            lines((1, 1), (2, 7), (3, 2), (4, 2)),
            at("image_class_labels.txt", 2) + " unknown class id 7",
        ),
        (
            "image_class_labels.txt",
            lines((1, 1), (2, 1), (3, 2), (4, 2), (99, 1)),
            at("image_class_labels.txt", 5) + r" unknown image id '99' \(not in images\.txt\)",
        ),
        (
            "image_class_labels.txt",
            lines((1, 1), (2, 1), (3, 2), (4, 2), (2, 1)),
            at("image_class_labels.txt", 5) + " image id 2 again",
        ),
        ("train_test_split.txt", lines((1, 1), (2, 0), (4, 0)), at("images.txt", 3) + " image 3 has no line in"),
        ("train_test_split.txt", lines((1, 2), (2, 0), (3, 1), (4, 0)), at("train_test_split.txt", 1) + " is_tr"),
        ("classes.txt", lines((1, "a"), (1, "b")), at("classes.txt", 2) + " class id 1 again"),
    ],
)
def test_cub_bad_lines(cub_root, name, text, message):
    write(cub_root / name, text)
    with pytest.raises(DatasetError, match=message):
        datasets.cub_release(cub_root, "train")


def test_cub_missing_segmentation(cub_root):
    (cub_root / "segmentations/002.Blue/blue_1.png").unlink()
    with pytest.raises(DatasetError, match=at("images.txt", 3) + " segmentation mask .*blue_1.png missing"):
        datasets.cub_release(cub_root, "train")


def test_cub_empty_split(cub_root):
    write(cub_root / "train_test_split.txt", lines((1, 0), (2, 0), (3, 0), (4, 0)))
    with pytest.raises(DatasetError, match=r"train_test_split\.txt: no image is marked 1"):
        datasets.cub_release(cub_root, "train")


# --- bad input: wsolevaluation metadata -------------------------------------------------------


def write_metadata(folder: Path, **files: str) -> Path:
    """A split folder with two images (a.jpg 40x30, b.jpg 20x20), overridden by ``files``."""
    defaults = {
        "image_ids": "a.jpg\nb.jpg\n",
        "class_labels": "a.jpg,0\nb.jpg,1\n",
        "image_sizes": "a.jpg,40,30\nb.jpg,20,20\n",
        "localization": "a.jpg,0,0,40,30\nb.jpg,1,2,3,4\nb.jpg,0,0,5,5\n",
    }
    for name, text in {**defaults, **files}.items():
        if text is not None:
            write(folder / f"{name}.txt", text)
    return folder


def test_wsol_small_split(tmp_path):
    samples = datasets.wsol_metadata(write_metadata(tmp_path / "meta"), tmp_path)
    assert [(s.image_id, s.label, s.size, len(s.boxes)) for s in samples] == [
        ("a.jpg", 0, (40, 30), 1),
        ("b.jpg", 1, (20, 20), 2),
    ]
    train = datasets.wsol_metadata(write_metadata(tmp_path / "train", image_sizes=None, localization=None), tmp_path)
    assert all(s.size is None and s.boxes.shape == (0, 4) for s in train)


def test_wsol_missing_folders_and_files(tmp_path):
    with pytest.raises(DatasetError, match=r"nope: no such folder; expected a wsolevaluation metadata"):
        datasets.wsol_metadata(tmp_path / "nope", tmp_path)
    folder = write_metadata(tmp_path / "meta")
    with pytest.raises(DatasetError, match=r"images: no such folder; expected the root that ids like 'a\.jpg'"):
        datasets.wsol_metadata(folder, tmp_path / "images")
    (folder / "class_labels.txt").unlink()
    with pytest.raises(DatasetError, match=r"class_labels\.txt: list file missing; expected a wsolevaluation"):
        datasets.wsol_metadata(folder, tmp_path)


@pytest.mark.parametrize(
    "files,message",
    [
        ({"image_ids": "a.jpg\nb.jpg\na.jpg\n"}, at("image_ids.txt", 3) + " image id 'a.jpg' again"),
        ({"class_labels": "a.jpg,0\nb.jpg,x\n"}, at("class_labels.txt", 2) + " class index 'x' is not an integer"),
        ({"class_labels": "a.jpg,0\nb.jpg\n"}, at("class_labels.txt", 2) + " expected 'image_id,class_index'"),
        ({"class_labels": "a.jpg,0\n"}, at("image_ids.txt", 2) + r" image 'b\.jpg' has no line in class_labels\.txt"),
        ({"class_labels": "a.jpg,0\nb.jpg,-1\n"}, at("class_labels.txt", 2) + " class index -1 is negative"),
        ({"class_labels": "a.jpg,0\nb.jpg,1\nc.jpg,1\n"}, at("class_labels.txt", 3) + " unknown image id 'c.jpg'"),
        ({"image_sizes": "a.jpg,40,30\n"}, at("image_ids.txt", 2) + r" image 'b\.jpg' has no line in image_sizes"),
        ({"image_sizes": "a.jpg,40,30\nb.jpg,0,20\n"}, at("image_sizes.txt", 2) + " size 0x20 is empty"),
        ({"localization": "a.jpg,0,0,41,10\nb.jpg,0,0,1,1\n"}, at("localization.txt", 1) + r" box \(0, 0, 41, 10\) "),
        ({"localization": "a.jpg,0,0,1,1\nb.jpg,0,0,1,21\n"}, at("localization.txt", 2) + r" .* image of 20x20"),
        ({"localization": "a.jpg,9,0,1,1\nb.jpg,0,0,1,1\n"}, at("localization.txt", 1) + " .* has x1 < x0"),
        ({"localization": "a.jpg,0,0,1,1\nb.jpg,0,0,1\n"}, at("localization.txt", 2) + " expected 'image_id,x0,y0"),
        (
            {"localization": "a.jpg,0,0,1\nb.jpg,0,0,1,1\n"},
            at("localization.txt", 1) + " expected 'image_id,x0,y0,x1,y1' or 'image_id,mask_path,ignore_path'",
        ),
        ({"localization": "a.jpg,0,0,1,1\nc.jpg,0,0,1,1\n"}, at("localization.txt", 2) + " unknown image id 'c.jpg'"),
        ({"localization": "a.jpg,0,0,1,1\n"}, at("image_ids.txt", 2) + " image 'b.jpg' has no line in localization"),
        ({"localization": "a.jpg,0,0,1,nan\nb.jpg,0,0,1,1\n"}, at("localization.txt", 1) + " box value 'nan' is not"),
        (
            {"localization": "a.jpg,a_m.png,a_ignore.png\nb.jpg,b_m.png,\nb.jpg,b_m2.png,b_ignore.png\n"},
            at("localization.txt", 3) + " ignore mask on a later line",
        ),
        ({"localization": "a.jpg,,a_ignore.png\nb.jpg,b_m.png,\n"}, at("localization.txt", 1) + " empty mask path"),
        (
            {"localization": "a.jpg,a_m.png,a_ignore.png\nb.jpg,0,0,1,1\n"},
            at("localization.txt", 2) + " expected 'image_id,mask_path,ignore_path'",
        ),
    ],
)
def test_wsol_bad_lines(tmp_path, files, message):
    with pytest.raises(DatasetError, match=message):
        datasets.wsol_metadata(write_metadata(tmp_path / "meta", **files), tmp_path)


# --- bad input: class folders and images ------------------------------------------------------


def test_class_folders_bad_trees(tmp_path):
    with pytest.raises(DatasetError, match=r"nope: no such folder; expected class folders"):
        datasets.class_folders(tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"Couldn't find any class folder"):
        datasets.class_folders(tmp_path)
    (tmp_path / "n01").mkdir()
    with pytest.raises(DatasetError, match=r"Found no valid file for the classes n01"):
        datasets.class_folders(tmp_path)


def test_image_that_fails_to_decode_names_its_path(cub_root):
    samples = datasets.cub_release(cub_root, "test")
    samples[1].path.write_bytes(b"not a jpeg")
    dataset = datasets.ImageDataset(samples, datasets.test_transform(32, 28))
    assert dataset[0][0].shape == (3, 28, 28)
    with pytest.raises(DatasetError, match=re.escape(f"{samples[1].path}: cannot read the image")):
        dataset[1]
    samples[1].path.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(samples[1].path))):
        dataset[1]


def test_num_classes_of_nothing():
    with pytest.raises(DatasetError, match="no samples"):
        datasets.num_classes([])
    assert issubclass(DatasetError, ValueError)
