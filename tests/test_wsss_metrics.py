"""WSSS seeds: the confusion matrix and mIoU on hand-made cases, the all-thresholds pass
against the original's one-threshold-at-a-time procedure written here plainly, eval_cam
on a small VOC-like folder through run_sample.py, and make_cam's fusion against the
original's per-scale loop written here plainly."""

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import WSSS
from bas.errors import DatasetError, OutputError, run_main
from WSSS import datasets, metrics, run_sample
from WSSS.datasets import MultiScaleItem, voc_masks
from WSSS.models import build_model
from WSSS.seeds import read_seed
from WSSS.steps import eval_cam, make_cam
from WSSS.synthetic import make_synthetic_voc

WSSS_DIR = Path(WSSS.__file__).parent


# ----------------------------------------------------------- plain reference versions
def plain_confusion(gt, pred, n):
    """chainercv's confusion, a pixel at a time: gt 255 is left out."""
    confusion = np.zeros((n, n), dtype=np.int64)
    for g, p in zip(gt.ravel(), pred.ravel()):
        if g != 255:
            confusion[g, p] += 1
    return confusion


def plain_prediction(cams, keys, t):
    """The original eval_cam at one threshold: the background plane t in front, argmax, keys + 1."""
    padded = np.pad(cams, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=t)
    return np.pad(np.asarray(keys) + 1, (1, 0), mode="constant")[np.argmax(padded, axis=0)]


def plain_miou_per_threshold(seeds, masks, thresholds, n):
    """The original's procedure: every seed read again for each threshold."""
    result = []
    for t in thresholds:
        confusion = sum(
            plain_confusion(gt, plain_prediction(cams, keys, t), n) for (keys, cams), gt in zip(seeds, masks)
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.diag(confusion) / (confusion.sum(1) + confusion.sum(0) - np.diag(confusion))
        result.append(np.nanmean(iou))
    return result


def random_seed(rng, shape, dtype=np.float32, levels=None):
    """keys (0..3 classes of 20) and K x H x W cams; ``levels`` draws the values from a few
    numbers (for ties with the thresholds and between classes)."""
    k = int(rng.integers(0, 4))
    keys = np.sort(rng.choice(20, k, replace=False))
    cams = rng.choice(levels, (k, *shape)) if levels is not None else rng.random((k, *shape))
    return keys, cams.astype(dtype)


def random_mask(rng, shape, keys):
    return rng.choice([0, 255, 7, *(np.asarray(keys) + 1)], shape).astype(np.uint8)


# ---------------------------------------------------------------- confusion and mIoU
def test_confusion_hand_made():
    gt = np.array([[0, 1, 1], [255, 2, 0]], dtype=np.uint8)
    pred = np.array([[0, 1, 2], [1, 2, 2]], dtype=np.uint8)
    expected = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 1]])  # the 255 pixel (predicted 1) is left out
    confusion = metrics.confusion_matrix(gt, pred, 3)
    np.testing.assert_array_equal(confusion, expected)
    # IoU = diag / (row + col - diag): 1/(2+1-1), 1/(2+1-1), 1/(1+3-1)
    np.testing.assert_allclose(metrics.iou(confusion), [1 / 2, 1 / 2, 1 / 3])
    assert metrics.mean_iou(confusion) == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3)


def test_absent_classes_are_nan_and_left_out_of_the_mean():
    gt = np.array([[0, 0, 1, 1]], dtype=np.uint8)
    pred = np.array([[0, 3, 1, 1]], dtype=np.uint8)
    per_class = metrics.iou(metrics.confusion_matrix(gt, pred, 5))
    # class 2 and 4: in neither -> nan; class 3: predicted only -> 0, and counted in the mean
    np.testing.assert_array_equal(np.isnan(per_class), [False, False, True, False, True])
    assert per_class[3] == 0
    assert metrics.mean_iou(metrics.confusion_matrix(gt, pred, 5)) == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_no_class_at_all_gives_nan_quietly(recwarn):
    assert np.isnan(metrics.mean_iou(np.zeros((3, 3), dtype=np.int64)))
    assert len(recwarn) == 0


def test_confusion_equals_plain_and_rejects_labels_out_of_range():
    rng = np.random.default_rng(0)
    gt = rng.choice([0, 1, 2, 5, 255], (17, 23)).astype(np.uint8)
    pred = rng.integers(0, 6, (17, 23))
    np.testing.assert_array_equal(metrics.confusion_matrix(gt, pred, 6), plain_confusion(gt, pred, 6))
    with pytest.raises(ValueError, match="at or above 6"):
        metrics.confusion_matrix(np.full((2, 2), 6, np.uint8), np.zeros((2, 2), int), 6)


# ------------------------------------------------------------- all thresholds at once
def sweep(cams, keys, gt, thresholds, n=21):
    return metrics.threshold_confusions(metrics.threshold_counts(cams, keys, gt, thresholds, n))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tied", [False, True])
def test_all_thresholds_equal_one_at_a_time(dtype, tied):
    """Exactly the original's matrices, with ties at exactly t and between classes when ``tied``."""
    rng = np.random.default_rng(1)
    levels = [0.0, 0.2, 0.25, 0.3, 0.3, 0.44, 0.7, 1.0] if tied else None
    thresholds = np.array(metrics.SWEEP)
    for _ in range(30):
        shape = tuple(rng.integers(1, 20, 2))
        keys, cams = random_seed(rng, shape, dtype, levels)
        gt = random_mask(rng, shape, keys)
        confusions = sweep(cams, keys, gt, thresholds)
        for i, t in enumerate(thresholds):
            np.testing.assert_array_equal(confusions[i], plain_confusion(gt, plain_prediction(cams, keys, t), 21))


def test_all_thresholds_on_a_hand_made_seed():
    """A 2 x 3 seed of classes 2 and 5 (keys 1, 4), one void pixel, thresholds 0.3 and 0.5:
    a score equal to a threshold is background there, a tie between classes goes to the first."""
    cams = np.array(
        [[[0.6, 0.3, 0.1], [0.5, 0.9, 0.4]], [[0.2, 0.3, 0.7], [0.5, 0.1, 0.2]]], dtype=np.float32
    )  # top scores 0.6 0.3 0.7 / 0.5 (tie) 0.9 0.4
    gt = np.array([[2, 2, 5], [0, 255, 0]], np.uint8)
    confusions = metrics.threshold_confusions(metrics.threshold_counts(cams, np.array([1, 4]), gt, [0.3, 0.5], 6))
    at_03 = np.zeros((6, 6), np.int64)
    at_03[2, 2], at_03[2, 0], at_03[5, 5], at_03[0, 2] = 1, 1, 1, 2  # 0.3 ties t; 0.5 and 0.4 beat it
    at_05 = np.zeros((6, 6), np.int64)
    at_05[2, 2], at_05[2, 0], at_05[5, 5], at_05[0, 0] = 1, 1, 1, 2  # 0.5 ties t, 0.4 is below
    np.testing.assert_array_equal(confusions, [at_03, at_05])


@pytest.mark.parametrize("t", metrics.SWEEP)
def test_a_score_equal_to_the_threshold_is_background(t):
    """The original's padding casts t to the cams' dtype (float32 rounds 0.3 up, 0.29 down):
    a score equal to that is background, the next float32 above is foreground."""
    tie = np.float32(t)
    cams = np.array([[[tie, np.nextafter(tie, np.float32(1))]]], dtype=np.float32)
    confusions = sweep(cams, np.array([4]), np.array([[5, 5]], np.uint8), [t])
    np.testing.assert_array_equal(confusions[0][5, [0, 5]], [1, 1])


def test_ties_between_classes_go_to_the_first_and_nan_as_argmax():
    cams = np.array([[[0.5, np.nan]], [[0.5, 0.1]]], dtype=np.float32)  # classes 3 and 8 tie at the first pixel
    keys, gt = np.array([2, 7]), np.array([[3, 3]], np.uint8)
    confusions = sweep(cams, keys, gt, [0.2, 0.6])
    for i, t in enumerate([0.2, 0.6]):
        np.testing.assert_array_equal(confusions[i], plain_confusion(gt, plain_prediction(cams, keys, t), 21))


def test_no_classes_and_bad_input():
    gt = np.array([[0, 3], [255, 0]], np.uint8)
    confusions = sweep(np.zeros((0, 2, 2), np.float32), np.zeros(0, np.int64), gt, [0.1, 0.2])
    np.testing.assert_array_equal(confusions[:, [0, 3], 0], [[2, 1], [2, 1]])
    cams = np.ones((1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="ascending"):
        sweep(cams, [1], gt, [0.3, 0.2])
    with pytest.raises(ValueError, match="differ in size"):
        sweep(cams, [1], gt[:1], [0.3])
    with pytest.raises(ValueError, match="out of range"):
        sweep(cams, [20], gt, [0.3])
    with pytest.raises(ValueError, match="at or above 21"):
        sweep(cams, [1], np.full((2, 2), 30, np.uint8), [0.3])


@pytest.mark.parametrize("planes, count", [(9, 25), (10, 25), (20, 100)])
def test_the_largest_labels_planes_and_bins_are_counted_exactly(planes, count):
    """Index values at the top of their type (void label, last plane, last bin: 59,903 of
    a two-byte index for 9 planes at 25 thresholds) and past it, against one at a time."""
    rng = np.random.default_rng(3)
    keys = np.sort(rng.choice(20, planes, replace=False))
    thresholds = np.linspace(0.01, 0.99, count)
    cams = rng.random((planes, 9, 11)).astype(np.float32)
    cams[-1, 0] = 1.0  # the last plane at the top of the first row, above every threshold
    gt = rng.choice([0, 20, 255, *(keys + 1)], (9, 11)).astype(np.uint8)
    gt[0] = 255
    confusions = sweep(cams, keys, gt, thresholds)
    for i in (0, count // 2, count - 1):
        prediction = plain_prediction(cams, keys, thresholds[i])
        np.testing.assert_array_equal(confusions[i], plain_confusion(gt, prediction, 21))


def test_summed_counts_give_the_sum_of_confusions():
    """Counts add over images (and processes) before they become confusion matrices."""
    rng = np.random.default_rng(2)
    thresholds = [0.1, 0.3, 0.5]
    total, expected = 0, 0
    for _ in range(4):
        keys, cams = random_seed(rng, (6, 7))
        gt = random_mask(rng, (6, 7), keys)
        total = total + metrics.threshold_counts(cams, keys, gt, thresholds, 21)
        expected = expected + sweep(cams, keys, gt, thresholds)
    np.testing.assert_array_equal(metrics.threshold_confusions(total), expected)


# --------------------------------------------------------------------------- eval_cam
def save_palette_mask(path, mask):
    image = Image.fromarray(mask, mode="P")
    image.putpalette([(37 * i) % 256 for i in range(768)])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def write_voc(root, cam_dir, rng, count=5, eval_set="val"):
    """A VOC2012-like folder (palette masks with a void border, an id list) and seeds of
    its ids, alternately in the original's format (torch tensors inside) and as numpy."""
    ids, seeds, masks = [], [], []
    for i in range(count):
        image_id = f"2007_{i:06d}"
        shape = (int(rng.integers(9, 20)), int(rng.integers(9, 20)))
        keys, cams = random_seed(rng, shape, levels=[0.0, 0.1, 0.25, 0.3, 0.6, 1.0] if i % 2 else None)
        mask = random_mask(rng, shape, keys)
        mask[0] = 255
        save_palette_mask(root / "SegmentationClass" / f"{image_id}.png", mask)
        low = np.zeros((len(keys), (shape[0] - 1) // 4 + 1, (shape[1] - 1) // 4 + 1), np.float32)
        if i % 2:
            seed = {"keys": torch.from_numpy(keys), "cam": torch.from_numpy(low), "high_res": cams}
        else:
            seed = {"keys": keys, "cam": low, "high_res": cams}
        cam_dir.mkdir(parents=True, exist_ok=True)
        np.save(cam_dir / f"{image_id}.npy", seed)
        ids.append(image_id)
        seeds.append((keys, cams))
        masks.append(mask)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / f"{eval_set}.txt").write_text("\n".join(ids) + "\n")
    return ids, seeds, masks


@pytest.fixture
def voc(tmp_path):
    rng = np.random.default_rng(4)  # 8 classes in 4 seeds, and a seed without a class
    root, cam_dir = tmp_path / "VOC2012", tmp_path / "cam"
    ids, seeds, masks = write_voc(root, cam_dir, rng)
    return types.SimpleNamespace(root=root, cam_dir=cam_dir, ids=ids, seeds=seeds, masks=masks, tmp=tmp_path)


def eval_args(voc, *extra):
    argv = ["--stages", "eval_cam", "--voc12_root", str(voc.root), "--cam_out_dir", str(voc.cam_dir)]
    return argv + ["--chainer_eval_set", "val", "--no_progress", *extra]


def test_eval_cam_reports_the_original_numbers(voc, capsys):
    run_sample.main(eval_args(voc))
    strict = {"parse_constant": lambda constant: pytest.fail(f"{constant} in the JSON report")}
    report = json.loads((voc.tmp / "cam_eval" / "eval_cam_val.json").read_text(), **strict)
    expected = 100 * np.array(plain_miou_per_threshold(voc.seeds, voc.masks, metrics.SWEEP, 21))
    assert report["thresholds"] == list(metrics.SWEEP) and report["images"] == 5
    np.testing.assert_allclose(report["miou"], expected, rtol=1e-12)
    best = int(np.nanargmax(expected))
    assert report["best_threshold"] == metrics.SWEEP[best] and report["best_miou"] == pytest.approx(expected[best])
    assert list(report["iou_at_best"])[:2] == ["background", "aeroplane"]
    assert report["iou_at_best"]["boat"] is None  # in neither the masks nor the seeds: nan, JSON's null
    out = capsys.readouterr().out
    assert "0.20" in out and "0.44" in out and "pottedplant" in out
    # one threshold (--cam_eval_thres), into a folder of our choice, read again from the same seeds
    run_sample.main(eval_args(voc, "--cam_eval_thres", "0.3", "--cam_eval_out_dir", str(voc.tmp / "one")))
    report = json.loads((voc.tmp / "one" / "eval_cam_val.json").read_text())
    assert report["thresholds"] == [0.3]
    assert report["miou"][0] == pytest.approx(expected[metrics.SWEEP.index(0.3)], rel=1e-12)


def test_eval_cam_on_real_voc_masks(shared_dir, tmp_path):
    """The real VOC val masks (palette PNGs with the void border), against seeds drawn from
    the masks themselves: 100 mIoU at every threshold."""
    masks = sorted((shared_dir / "data" / "voc2012" / "SegmentationClass").glob("*.png"))
    root, cam_dir = tmp_path / "VOC2012", tmp_path / "cam"
    (root / "SegmentationClass").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    cam_dir.mkdir()
    for path in masks:
        (root / "SegmentationClass" / path.name).write_bytes(path.read_bytes())
        with Image.open(path) as image:
            mask = np.asarray(image)
        keys = np.setdiff1d(np.unique(mask), [0, 255]) - 1
        np.save(cam_dir / f"{path.stem}.npy", {"keys": keys, "high_res": (mask == keys[:, None, None] + 1) * 1.0})
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{p.stem}\n" for p in masks))
    argv = ["--stages", "eval_cam", "--voc12_root", str(root), "--cam_out_dir", str(cam_dir)]
    run_sample.main(argv + ["--chainer_eval_set", "val", "--no_progress"])
    report = json.loads((tmp_path / "cam_eval" / "eval_cam_val.json").read_text())
    assert report["images"] == len(masks) == 30
    assert report["miou"] == [100.0] * 25


def test_eval_cam_shards_add_up(voc):
    masks = voc_masks(voc.root, "val")
    shards = [eval_cam.score_seeds(voc.cam_dir, masks, metrics.SWEEP, 20, range(r, 5, 2)) for r in range(2)]
    whole = eval_cam.score_seeds(voc.cam_dir, masks, metrics.SWEEP, 20)
    np.testing.assert_array_equal(shards[0] + shards[1], whole)


@pytest.mark.parametrize("broken", ["seed", "mask", "size", "list"])
def test_eval_cam_names_the_file_at_fault(voc, broken):
    first = voc.ids[0]
    if broken == "seed":
        (voc.cam_dir / f"{first}.npy").unlink()
        culprit = voc.cam_dir / f"{first}.npz"  # where make_cam would write it
    elif broken == "mask":
        (voc.root / "SegmentationClass" / f"{first}.png").unlink()
        culprit = voc.root / "SegmentationClass" / f"{first}.png"
    elif broken == "size":
        save_palette_mask(voc.root / "SegmentationClass" / f"{first}.png", np.zeros((3, 3), np.uint8))
        culprit = voc.cam_dir / f"{first}.npy"
    else:
        (voc.root / "ImageSets" / "Segmentation" / "val.txt").unlink()
        culprit = voc.root / "ImageSets" / "Segmentation" / "val.txt"
    with pytest.raises(DatasetError, match=re.escape(str(culprit))):
        run_sample.main(eval_args(voc))


def test_eval_cam_never_writes_into_a_users_folder(voc):
    folder = voc.tmp / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    with pytest.raises(OutputError):
        run_sample.main(eval_args(voc, "--cam_eval_out_dir", str(folder)))
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_run_sample_command_line(voc, capsys):
    """The documented command, from inside WSSS/; two processes under torchrun (gloo) give
    the same report; an expected error is one line."""
    command = [sys.executable, "run_sample.py", *eval_args(voc)]
    done = subprocess.run(command, cwd=WSSS_DIR, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "best: threshold" in done.stdout
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = [*torchrun, "run_sample.py", *eval_args(voc, "--cam_eval_out_dir", str(voc.tmp / "two"))]
    done = subprocess.run(two, cwd=WSSS_DIR, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = "eval_cam_val.json"
    assert (voc.tmp / "two" / report).read_text() == (voc.tmp / "cam_eval" / report).read_text()
    (voc.cam_dir / f"{voc.ids[2]}.npy").unlink()
    with pytest.raises(SystemExit) as stopped:
        run_main(run_sample.main, eval_args(voc))  # what the script's __main__ does
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {voc.cam_dir / voc.ids[2]}.npz: no seed")


# ------------------------------------------------------------------ run_sample's flags
@pytest.mark.parametrize(
    "flag, value, dest, parsed",
    [
        ("voc12_root", "VOC", "voc12_root", "VOC"),
        ("cam_out_dir", "seeds", "cam_out_dir", "seeds"),
        ("chainer_eval_set", "val", "chainer_eval_set", "val"),
        ("train_list", "a.txt", "train_list", "a.txt"),
        ("infer_list", "b.txt", "infer_list", "b.txt"),
        ("num_workers", "3", "num_workers", 3),
        ("cam_weights_name", "w.pth", "cam_weights_name", "w.pth"),
        ("cam_eval_out_dir", "ev", "cam_eval_out_dir", "ev"),
    ],
)
def test_flags_with_underscores_and_dashes(flag, value, dest, parsed):
    parser = run_sample.get_args_parser()
    for spelling in (flag, flag.replace("_", "-")):
        assert getattr(parser.parse_args([f"--{spelling}", value]), dest) == parsed


def test_list_flags_and_stage_selection(tmp_path):
    parser = run_sample.get_args_parser()
    args = parser.parse_args(["--cam-scales", "1", "0.5", "--cam_eval_thres", "0.25", "0.3"])
    assert args.cam_scales == [1.0, 0.5] and args.cam_eval_thres == [0.25, 0.3]
    assert parser.parse_args([]).cam_scales == [1.0, 0.5, 1.5, 2.0] and parser.parse_args([]).cam_eval_thres is None

    irn_file = tmp_path / "res50_irn.pth"

    def stages(*argv):
        fills = ["--irn_weights_name", str(irn_file), "--refine_nets", "bas+cam", "--cam_out_dir", "seeds"]
        args = parser.parse_args([*argv, *fills])  # what fill_dataset_defaults gives on VOC
        return run_sample.selected_stages(args)

    original = ["make_cam", "eval_cam", "make_sem_seg_labels", "eval_sem_seg"]  # the original's defaults
    irn_trained = ["make_cam", "eval_cam", "cam_to_ir_label", "train_irn", "make_sem_seg_labels", "eval_sem_seg"]
    assert stages() == ["train_cam", "train_bas", *irn_trained]  # IRN's weights missing: trained first
    irn_file.touch()
    assert stages() == ["train_cam", "train_bas", *original]  # each training stage skips existing weights
    assert stages("--stages", "eval_cam", "make_cam") == ["make_cam", "eval_cam"]  # pipeline order
    assert stages("--make_cam_pass", "False") == ["train_cam", "train_bas", *original[1:]]
    assert stages("--stages", "make_cam", "--eval-cam-pass", "true") == ["make_cam", "eval_cam"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--eval_cam_pass", "maybe"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--stages", "no_such_stage"])


# --------------------------------------------------------------------------- make_cam
class StubNet(torch.nn.Module):
    """A fixed random 1x1 conv over the image pooled at stride 16, through a sigmoid; counts
    the images it sees."""

    def __init__(self, seed, classes=6):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, classes, 1)
        with torch.no_grad():
            weights = torch.randn(classes, 3, 1, 1, generator=torch.Generator().manual_seed(seed))
            self.conv.weight.copy_(weights)
        self.seen = 0

    def class_maps(self, images):
        self.seen += len(images)
        return torch.sigmoid(self.conv(F.avg_pool2d(images, 16, ceil_mode=True)))


class TinyInferenceSet(torch.utils.data.Dataset):
    """Per image: its id, (H, W), a multi-hot label, and per scale the image and its mirror."""

    def __init__(self, sizes, scales=(1.0, 0.5, 1.5), classes=6):
        generator = torch.Generator().manual_seed(5)
        self.ids = [f"img_{i}" for i in range(len(sizes))]
        self.items = []
        for image_id, (h, w) in zip(self.ids, sizes):
            label = torch.zeros(classes)
            label[torch.randperm(classes, generator=generator)[: 1 + len(self.items) % 3]] = 1
            pairs = []
            for s in scales:
                image = torch.randn(3, int(np.round(h * s)), int(np.round(w * s)), generator=generator)
                pairs.append(torch.stack([image, image.flip(-1)]))
            self.items.append(MultiScaleItem(image_id, (h, w), label, pairs))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


@torch.no_grad()
def plain_seed(nets, item):
    """The original's make_cam for one image, a net at a time, a scale at a time."""
    h, w = item.size
    strided = ((h - 1) // 4 + 1, (w - 1) // 4 + 1)
    up = (((h - 1) // 16 + 1) * 16, ((w - 1) // 16 + 1) * 16)
    valid = torch.nonzero(item.label)[:, 0]
    lows, highs = [], []
    for net in nets:
        outputs = []
        for pair in item.images:
            maps = net.class_maps(pair)
            outputs.append(maps[0] + maps[1].flip(-1))
        low = torch.sum(torch.stack([F.interpolate(o[None], strided, mode="bilinear")[0] for o in outputs]), 0)
        high = [F.interpolate(o[:, None], up, mode="bilinear", align_corners=False) for o in outputs]
        high = torch.sum(torch.stack(high, 0), 0)[:, 0, :h, :w]
        low, high = low[valid], high[valid]
        low /= F.adaptive_max_pool2d(low, (1, 1)) + 1e-5
        high /= F.adaptive_max_pool2d(high, (1, 1)) + 1e-5
        lows.append(low)
        highs.append(high)
    if len(nets) == 2:
        lows[0] = lows[1] + lows[0]
        lows[0] /= F.adaptive_max_pool2d(lows[0], (1, 1)) + 1e-5
        highs[0] = highs[1] + highs[0]
        highs[0] /= F.adaptive_max_pool2d(highs[0], (1, 1)) + 1e-5
    return {"keys": valid.numpy(), "cam": lows[0].numpy(), "high_res": highs[0].numpy()}


SIZES = [(37, 50), (64, 48), (21, 30), (50, 33)]


NAMES = ("bas", "cam")


@pytest.mark.parametrize("count", [1, 2])
def test_make_cam_fusion_equals_the_original_loop(count):
    nets = {name: StubNet(seed) for seed, name in enumerate(NAMES[:count])}
    variant = "+".join(nets)
    for item in TinyInferenceSet(SIZES):
        ours = make_cam.image_seeds(nets, [variant], item, torch.device("cpu"))[variant]
        plain = plain_seed(list(nets.values()), item)
        h, w = item.size
        assert ours["cam"].shape == (len(plain["keys"]), (h - 1) // 4 + 1, (w - 1) // 4 + 1)
        assert ours["high_res"].shape == (len(plain["keys"]), h, w)
        assert ours["keys"].dtype == np.int64 and ours["cam"].dtype == ours["high_res"].dtype == np.float32
        for key in ("keys", "cam", "high_res"):
            np.testing.assert_array_equal(ours[key], plain[key])


def test_make_cam_makes_every_variant_in_one_pass():
    """bas, cam and bas+cam from one run of each net per image, each equal to the original
    loop run for that variant alone."""
    nets = {name: StubNet(seed) for seed, name in enumerate(NAMES)}
    dataset = TinyInferenceSet(SIZES)
    for item in dataset:
        ours = make_cam.image_seeds(nets, ["bas", "cam", "bas+cam"], item, torch.device("cpu"))
        for variant, seed in ours.items():
            plain = plain_seed([nets[name] for name in variant.split("+")], item)
            for key in ("keys", "cam", "high_res"):
                np.testing.assert_array_equal(seed[key], plain[key])
    nets["bas"].seen = nets["cam"].seen = 0
    make_cam.image_seeds(nets, ["bas", "cam", "bas+cam"], dataset[0], torch.device("cpu"))
    assert nets["bas"].seen == nets["cam"].seen == 2 * 3  # a pair per scale, once


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_make_cam_on_the_gpu_matches_the_cpu():
    nets = {"bas": StubNet(0), "cam": StubNet(1)}
    for item in TinyInferenceSet(SIZES):
        plain = plain_seed(list(nets.values()), item)
        gpu_nets = {name: net.cuda() for name, net in nets.items()}
        ours = make_cam.image_seeds(gpu_nets, ["bas+cam"], item, torch.device("cuda"))["bas+cam"]
        nets = {name: net.cpu() for name, net in nets.items()}
        np.testing.assert_array_equal(ours["keys"], plain["keys"])
        for key in ("cam", "high_res"):
            np.testing.assert_allclose(ours[key], plain[key], atol=1e-5)


def files(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def test_make_cam_skips_existing_and_repeats_byte_for_byte(tmp_path):
    dataset = TinyInferenceSet(SIZES)
    nets = {"bas": StubNet(0), "cam": StubNet(1)}
    cpu = torch.device("cpu")

    def make(folder, variants=("bas+cam",), **shard):
        dirs = {variant: tmp_path / f"{folder}_{variant}" for variant in variants}
        return make_cam.make_seeds(nets, dataset, dirs, cpu, **shard)

    assert make("a") == {"bas+cam": 4}
    first = files(tmp_path / "a_bas+cam")
    assert sorted(first) == [f"{i}.npz" for i in dataset.ids]  # no temporary file left
    keys, cams = read_seed(tmp_path / "a_bas+cam" / "img_1.npz")  # eval_cam reads what make_cam writes
    np.testing.assert_array_equal(keys, dataset[1].label.nonzero()[:, 0].numpy())
    assert cams.shape == (len(keys), 64, 48)

    # again, elsewhere, with other variants beside it, and as two processes' shares: the same bytes
    assert make("b", ("bas", "bas+cam")) == {"bas": 4, "bas+cam": 4}
    for rank in (1, 0):
        make("c", rank=rank, world=2)
    assert files(tmp_path / "b_bas+cam") == first and files(tmp_path / "c_bas+cam") == first

    # an existing file, ours or the original's, is kept and its image not run; the missing one is made again
    (tmp_path / "a_bas+cam" / "img_2.npz").write_bytes(b"kept")
    (tmp_path / "a_bas+cam" / "img_0.npz").rename(tmp_path / "a_bas+cam" / "img_0.npy")
    (tmp_path / "a_bas+cam" / "img_3.npz").unlink()
    nets["bas"].seen = 0
    assert make("a") == {"bas+cam": 1}
    assert nets["bas"].seen == 2 * 3  # img_3 only: a pair per scale
    made = {("img_0.npy" if name == "img_0.npz" else name): data for name, data in first.items()}
    assert files(tmp_path / "a_bas+cam") == {**made, "img_2.npz": b"kept"}

    # a variant missing one image: only that image runs, only that file is written
    (tmp_path / "b_bas" / "img_0.npz").unlink()
    nets["bas"].seen = nets["cam"].seen = 0
    assert make("b", ("bas", "bas+cam")) == {"bas": 1, "bas+cam": 0}
    assert (nets["bas"].seen, nets["cam"].seen) == (2 * 3, 0)


def test_make_cam_then_eval_cam_through_run_sample(tmp_path):
    """Both stages on a small synthetic VOC set with tiny nets: the seeds of the train_aug
    list, IRN's <name>.pth file taken for --cam_weights_name <name>, a report, and a user's
    folder refused."""
    voc = make_synthetic_voc(tmp_path / "VOCdevkit", num_train_aug=4, num_train=2, num_val=1) / "VOC2012"
    for method, name in (("bas", "bas.pth"), ("cam", "cam.pth.pth")):
        torch.save({"model": build_model(method, num_classes=4, arch="tiny").state_dict()}, tmp_path / name)
    argv = ["--voc12_root", str(voc), "--cam_out_dir", str(tmp_path / "seeds"), "--num_workers", "1"]
    argv += ["--bas_weights_name", str(tmp_path / "bas.pth"), "--cam_weights_name", str(tmp_path / "cam.pth")]
    argv += ["--arch", "tiny", "--cam_scales", "1", "0.5", "--no_progress", "--stages", "make_cam", "eval_cam"]
    run_sample.main(argv)
    train_aug = (voc / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()
    assert sorted(p.stem for p in (tmp_path / "seeds").glob("*.npz")) == sorted(train_aug)
    report = json.loads((tmp_path / "seeds_eval" / "eval_cam_train.json").read_text())
    assert report["images"] == 2 and len(report["miou"]) == 25
    assert list(report["iou_at_best"]) == ["background", *datasets.voc_classes(voc)]

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x.npy").touch()
    with pytest.raises(OutputError):
        run_sample.main([*argv[:-3], "--stages", "make_cam", "--cam_out_dir", str(tmp_path / "mine")])
    assert os.listdir(tmp_path / "mine") == ["x.npy"]
