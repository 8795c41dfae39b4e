"""WSSS IR labels and label scoring: IRN's confident foreground / background through the
dense CRF on a hand-made image, the combination rule against IRN's written plainly, the
PNG format, the stage's skipping, atomic writes and errors; eval_sem_seg's numbers on
hand-made PNGs (unsure pixels as background, as IRN, and left out); and the stages end to
end through run_sample.py on a small synthetic VOC set with seeds of untrained nets."""

import json
import os
import shutil
import types

import numpy as np
import pytest
import torch
from PIL import Image
from test_wsss_metrics import plain_confusion, save_palette_mask

from bas.errors import DatasetError, OutputError
from bas.outputs import claim
from WSSS import datasets, run_sample
from WSSS.models import build_model
from WSSS.seeds import read_seed, seed_path
from WSSS.steps import cam_to_ir_label, eval_sem_seg
from WSSS.labels import save_label_png
from WSSS.steps.cam_to_ir_label import IrLabelJobs, combine, ir_label, make_ir_labels
from WSSS.synthetic import make_synthetic_voc

STRIPES = ((220, 40, 40), (40, 200, 60), (50, 90, 250), (128, 128, 128))  # red, green, blue, grey


def stripes(height=20, width=10):
    """Four flat vertical stripes of distinct colours: H x 4W x 3 uint8."""
    image = np.zeros((height, 4 * width, 3), np.uint8)
    for i, colour in enumerate(STRIPES):
        image[:, i * width : (i + 1) * width] = colour
    return image


# ------------------------------------------------------------------------- the labels
def test_confident_where_the_seed_is_sure_unsure_between_background_where_low():
    image = stripes()  # 20 x 40
    keys = np.array([2, 5])
    cams = np.zeros((2, 20, 40), np.float32)
    cams[0, :, :10] = 0.2
    cams[0, 2:18, 1:9] = 1.0  # class 2 sure in the middle of the red stripe, unsure at its rim
    cams[:, :, 10:20] = 0.2  # green: above the background threshold 0.17, under the foreground one 0.30
    cams[1, :, 20:30] = 0.9  # class 5 sure on the blue stripe
    cams[:, :, 30:] = 0.1  # grey: low
    labels = ir_label(image, cams, keys, 0.30, 0.17)
    assert labels.dtype == np.uint8 and labels.shape == (20, 40)
    # The CRF follows the colours: the red stripe is class 2 (label 3) up to its edges.
    assert (labels[:, :10] == 3).all() and (labels[:, 10:20] == 255).all()
    assert (labels[:, 20:30] == 6).all() and (labels[:, 30:] == 0).all()
    # IRN's threshold 0.05: the grey stripe (0.1) is no longer sure background.
    assert (ir_label(image, cams, keys, 0.30, 0.05)[:, 30:] == 255).all()
    low = np.full((2, 20, 40), 0.1, np.float32)
    assert (ir_label(image, low, keys, 0.30, 0.17) == 0).all()
    assert (ir_label(image, np.zeros((0, 20, 40), np.float32), np.zeros(0, np.int64), 0.30, 0.17) == 0).all()


def test_crf_scale_keeps_a_small_images_sure_part_that_voc_widths_swallow():
    image = np.full((60, 60, 3), 30, np.uint8)
    image[10:50, 10:50] = (200, 150, 60)  # one body of one colour on a dark ground
    cams = np.zeros((1, 60, 60), np.float32)
    cams[0, 10:50, 10:50] = 0.2  # weak over the body: neither sure foreground nor sure background
    cams[0, 10:50, 10:22] = 0.9  # sure on its left part
    keys = np.array([0])
    # At IRN's 50 px the appearance kernel spans the image: the body's weak majority takes its
    # sure part to the background in the foreground labelling, so nothing of it is sure.
    voc = ir_label(image, cams, keys, 0.30, 0.17)
    assert (voc[10:50, 10:50] == 255).all() and (voc[:10] == 0).all()
    small = ir_label(image, cams, keys, 0.30, 0.17, crf_scale=0.2)
    assert (small[10:50, 10:20] == 1).all() and (small[10:50, 24:50] == 255).all()
    assert (small[:10] == 0).all() and (small[50:] == 0).all() and (small[:, :10] == 0).all()


def plain_combination(fg, bg):
    """IRN's cam_to_ir_label, step 2, as it is written there."""
    conf = fg.copy()
    conf[fg == 0] = 255
    conf[bg + fg == 0] = 0
    return conf.astype(np.uint8)


def test_combination_equals_irns_rule():
    rng = np.random.default_rng(0)
    for _ in range(20):
        fg = rng.choice([0, 0, 3, 7, 21], (9, 11))
        bg = np.where(fg > 0, fg, rng.choice([0, 3, 7, 21], (9, 11)))  # bg is fg wherever fg is
        bg = np.where(rng.random((9, 11)) < 0.1, rng.choice([0, 3], (9, 11)), bg)  # and now and then not
        np.testing.assert_array_equal(combine(fg, bg), plain_combination(fg, bg))


@pytest.mark.parametrize("palette", ["voc", "gray"])
def test_png_round_trips_to_the_same_indices(tmp_path, palette):
    labels = np.random.default_rng(1).choice([0, 1, 15, 20, 255], (13, 17)).astype(np.uint8)
    path = tmp_path / "x.png"
    save_label_png(labels, path, palette)
    with Image.open(path) as image:
        assert image.mode == ("P" if palette == "voc" else "L")
        if palette == "voc":
            assert image.getpalette() == datasets.voc_palette()
        np.testing.assert_array_equal(np.array(image), labels)
    np.testing.assert_array_equal(datasets.read_mask(path, 20), labels)
    assert os.listdir(tmp_path) == ["x.png"]


# -------------------------------------------------------------------------- the stage
@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """A small synthetic VOC set, and hand-made seeds of its train_aug ids (the image's
    classes, random maps)."""
    folder = tmp_path_factory.mktemp("ir")
    root = make_synthetic_voc(folder / "VOCdevkit", num_train_aug=5, num_train=2, num_val=1, seed=2) / "VOC2012"
    samples = datasets.voc_samples(root, "train_aug")
    rng = np.random.default_rng(3)
    (folder / "cam").mkdir()
    for sample in samples:
        width, height = Image.open(sample.path).size
        keys = np.flatnonzero(sample.label)
        seed = {"keys": keys, "high_res": rng.random((len(keys), height, width)).astype(np.float32)}
        np.save(folder / "cam" / f"{sample.image_id}.npy", seed)
    return types.SimpleNamespace(root=root, samples=samples, cam=folder / "cam", folder=folder)


def stage_args(voc, out_dir, **extra):
    args = {"voc12_root": voc.root, "train_list": "train_aug", "cam_out_dir": voc.cam, "ir_label_out_dir": out_dir}
    args.update(conf_fg_thres=0.30, conf_bg_thres=0.17, crf_scale=1.0, ir_label_palette="voc", rank=0, world=1)
    args.update(num_workers=0)
    return types.SimpleNamespace(**{**args, "no_progress": True, **extra})


def test_stage_writes_each_label_once_and_atomically(voc, tmp_path):
    out = tmp_path / "ir"
    assert cam_to_ir_label.run(stage_args(voc, out)) == 5
    names = sorted(os.listdir(out))
    # No temporary file; the lock says this process still holds the folder.
    assert names == sorted([".bas-lock", ".bas-output.json", *(f"{s.image_id}.png" for s in voc.samples)])
    for sample in voc.samples:
        labels = datasets.read_mask(out / f"{sample.image_id}.png", 4)
        keys, cams = read_seed(seed_path(voc.cam, sample.image_id))
        image = np.asarray(Image.open(sample.path).convert("RGB"))
        np.testing.assert_array_equal(labels, ir_label(image, cams, keys, 0.30, 0.17))
        assert set(np.unique(labels)) <= {0, 255, *(np.flatnonzero(sample.label) + 1)}
    stamps = {name: (out / name).stat().st_mtime_ns for name in names}
    assert cam_to_ir_label.run(stage_args(voc, out)) == 0  # all there: nothing made again
    (out / names[2]).unlink()
    assert cam_to_ir_label.run(stage_args(voc, out, num_workers=1)) == 1
    assert {name: (out / name).stat().st_mtime_ns for name in names if name != names[2]} == {
        name: stamp for name, stamp in stamps.items() if name != names[2]
    }
    assert sorted(os.listdir(out)) == names


def test_a_folder_of_labels_made_otherwise_is_refused(voc, tmp_path):
    out = tmp_path / "ir"
    cam_to_ir_label.run(stage_args(voc, out))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    seeds = tmp_path / "seeds"  # the same seeds, marked as make_cam marks its folder: made otherwise
    claim(seeds, "wsss-seeds", settings={"scales": [1.0]})
    shutil.copytree(voc.cam, seeds, dirs_exist_ok=True)
    for change in ({"conf_bg_thres": 0.05}, {"crf_scale": 0.2}, {"cam_out_dir": seeds}):
        with pytest.raises(OutputError, match=r"ir holds files made with .*'conf_bg_thres': 0\.17.*another --ir_label"):
            cam_to_ir_label.run(stage_args(voc, out, **change))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    assert cam_to_ir_label.run(stage_args(voc, out)) == 0  # the same settings: done already
    moved = tmp_path / "moved"  # the seeds and the labels moved elsewhere: their records name no path
    shutil.copytree(voc.cam, moved / "cam")
    shutil.copytree(out, moved / "ir")
    assert cam_to_ir_label.run(stage_args(voc, moved / "ir", cam_out_dir=moved / "cam")) == 0


def test_shards_make_every_label_once(voc, tmp_path):
    jobs = IrLabelJobs(voc.samples, voc.cam, tmp_path, 0.30, 0.17, "gray")
    assert [make_ir_labels(jobs, "train_aug", rank, 2) for rank in (0, 1)] == [3, 2]  # one process each
    assert len(list(tmp_path.glob("*.png"))) == 5


def test_a_missing_seed_stops_before_any_work_naming_the_file(voc, tmp_path):
    cam = tmp_path / "cam"
    cam.mkdir()
    for sample in voc.samples[1:]:
        (cam / f"{sample.image_id}.npy").write_bytes((voc.cam / f"{sample.image_id}.npy").read_bytes())
    with pytest.raises(DatasetError) as caught:
        cam_to_ir_label.run(stage_args(voc, tmp_path / "ir", cam_out_dir=cam))
    message = str(caught.value)
    assert "\n" not in message and str(seed_path(cam, voc.samples[0].image_id)) in message and "make_cam" in message
    assert sorted(os.listdir(tmp_path / "ir")) == [".bas-lock", ".bas-output.json"]


# ------------------------------------------------------------------------ eval_sem_seg
@pytest.fixture
def labelled(tmp_path):
    """A VOC-like folder of two classes with two masks, and label PNGs of them (one palette,
    one grayscale) with unsure pixels."""
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "classes.txt").write_text("a\nb\n")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("one\ntwo\n")
    gts = {"one": [[0, 0, 1, 1], [0, 255, 1, 2]], "two": [[0, 0, 0]]}
    preds = {"one": [[0, 255, 1, 1], [1, 0, 255, 2]], "two": [[0, 0, 0]]}
    for image_id, gt in gts.items():
        save_palette_mask(root / "SegmentationClass" / f"{image_id}.png", np.array(gt, np.uint8))
    save_label_png(np.array(preds["one"], np.uint8), tmp_path / "labels" / "one.png", "voc")
    save_label_png(np.array(preds["two"], np.uint8), tmp_path / "labels" / "two.png", "gray")
    gts = {k: np.array(v, np.uint8) for k, v in gts.items()}
    preds = {k: np.array(v, np.uint8) for k, v in preds.items()}
    return types.SimpleNamespace(root=root, folder=tmp_path / "labels", gts=gts, preds=preds, tmp=tmp_path)


def plain_miou(confusion):
    return 100 * np.nanmean(np.diag(confusion) / (confusion.sum(0) + confusion.sum(1) - np.diag(confusion)))


def test_eval_sem_seg_scores_unsure_pixels_as_background_and_left_out(labelled, capsys):
    argv = ["--stages", "eval_sem_seg", "--voc12_root", str(labelled.root), "--sem_seg_out_dir", str(labelled.folder)]
    run_sample.main([*argv, "--chainer_eval_set", "val", "--no_progress"])
    report = json.loads((labelled.tmp / "labels_eval" / "eval_sem_seg_val.json").read_text())
    assert report["images"] == 2
    # As background (IRN): IoU 5/7, 2/4, 1/1. Left out: 4/5, 2/3, 1/1 over the 8 labelled of 10 pixels, 7 right.
    assert report["miou"] == pytest.approx(100 * (5 / 7 + 1 / 2 + 1) / 3)
    assert report["iou"] == pytest.approx({"background": 100 * 5 / 7, "a": 50.0, "b": 100.0})
    assert report["miou_labelled"] == pytest.approx(100 * (4 / 5 + 2 / 3 + 1) / 3)
    assert report["coverage"] == pytest.approx(80.0) and report["precision"] == pytest.approx(100 * 7 / 8)
    # IRN's procedure written plainly: 255 set to 0, chainercv's confusion.
    irn = sum(plain_confusion(labelled.gts[i], np.where(labelled.preds[i] == 255, 0, labelled.preds[i]), 3)
              for i in ("one", "two"))  # fmt: skip
    assert report["miou"] == pytest.approx(plain_miou(irn))
    assert "80.0 % of the pixels" in capsys.readouterr().out
    masks = datasets.voc_masks(labelled.root, "val")
    ignored = eval_sem_seg.score_label_folder(labelled.folder, masks, ("a", "b"), unsure="ignore")
    assert ignored["miou"] == pytest.approx(report["miou_labelled"])


def test_eval_sem_seg_names_a_missing_or_bad_png(labelled):
    masks = datasets.voc_masks(labelled.root, "val")
    (labelled.folder / "two.png").unlink()
    with pytest.raises(DatasetError, match=r"two\.png: no labels for this id.*make_sem_seg_labels"):
        eval_sem_seg.score_label_folder(labelled.folder, masks, ("a", "b"))
    save_label_png(np.zeros((2, 2), np.uint8), labelled.folder / "two.png")
    with pytest.raises(DatasetError, match=r"two\.png scored against the mask of two: .*differ in shape"):
        eval_sem_seg.score_label_folder(labelled.folder, masks, ("a", "b"))


# ------------------------------------------------------------------------- end to end
def test_seeds_to_ir_labels_to_scores_through_run_sample(tmp_path, capsys):
    """make_cam (untrained tiny nets) -> cam_to_ir_label -> eval_sem_seg of the IR labels."""
    root = make_synthetic_voc(tmp_path / "VOCdevkit", num_train_aug=4, num_train=2, num_val=1) / "VOC2012"
    for method in ("bas", "cam"):
        torch.save({"model": build_model(method, num_classes=4, arch="tiny").state_dict()}, tmp_path / f"{method}.pth")
    argv = ["--voc12_root", str(root), "--cam_out_dir", str(tmp_path / "seeds"), "--num_workers", "0"]
    argv += ["--bas_weights_name", str(tmp_path / "bas.pth"), "--cam_weights_name", str(tmp_path / "cam.pth")]
    argv += ["--arch", "tiny", "--cam_scales", "1", "--no_progress", "--ir_label_out_dir", str(tmp_path / "ir")]
    argv += ["--sem_seg_out_dir", str(tmp_path / "ir")]
    run_sample.main([*argv, "--stages", "make_cam", "cam_to_ir_label", "eval_sem_seg"])
    train_aug = (root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()
    assert sorted(p.stem for p in (tmp_path / "ir").glob("*.png")) == sorted(train_aug)
    report = json.loads((tmp_path / "ir_eval" / "eval_sem_seg_train.json").read_text())
    assert report["images"] == 2 and 0 <= report["miou"] <= 100 and 0 < report["coverage"] <= 100
    assert list(report["iou"]) == ["background", *datasets.voc_classes(root)]
    assert "labelled" in capsys.readouterr().out
