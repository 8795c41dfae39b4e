"""The segmentation net on the pseudo masks (WSSS.segmentation, stages train_seg and
eval_seg) on a tiny synthetic VOCdevkit whose own masks play the pseudo masks."""

import argparse
import json
import os
import re
import shutil
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from bas.errors import ArgumentError, CheckpointError, DatasetError, OutputError
from bas.outputs import read_marker
from WSSS import datasets, deeplabv2, run_sample
from WSSS.crf import crf_refine
from WSSS.segmentation import build_segmentation_model, load_segmentation_model, predict
from WSSS.steps import eval_sem_seg, train_seg
from WSSS.synthetic import make_synthetic_voc

# The demo net at crops of 32: an epoch of the 8 train_aug images is two steps of 4.
TINY = ["--seg_arch", "lraspp_mobilenet_v3_large", "--seg_pretrained", "none", "--seg_crop_size", "32"]
TINY += ["--seg_batch_size", "4", "--seg_num_epoches", "1", "--seg_scales", "1", "0.5"]


def test_builder_gives_logits_at_the_input_size():
    model = build_segmentation_model("lraspp_mobilenet_v3_large", num_classes=5)
    out = model(torch.randn(2, 3, 64, 72))["out"]
    assert out.shape == (2, 5, 64, 72)
    assert {name.split(".")[0] for name, _ in model.named_parameters()} == {"backbone", "classifier"}  # no aux head
    with pytest.raises(ValueError, match="unknown segmentation arch"):
        build_segmentation_model("fcn", 5)


def test_backbone_weights_by_path_load_a_torchvision_classifier(tmp_path):
    classifier = torchvision.models.mobilenet_v3_large()
    torch.save(classifier.state_dict(), tmp_path / "mobilenet.pth")
    model = build_segmentation_model("lraspp_mobilenet_v3_large", 5, str(tmp_path / "mobilenet.pth"))
    assert torch.equal(model.backbone["16"][0].weight, classifier.features[16][0].weight)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointError, match=r"resnet18\.pth: not the ImageNet weights of this backbone"):
        build_segmentation_model("lraspp_mobilenet_v3_large", 5, str(tmp_path / "resnet18.pth"))


# ------------------------------------------------------------------------------ inference
class Ramp(nn.Module):
    """A stub net that is not flip-invariant: per pixel, the image's mean colour times a
    weight per class plus a ramp from left to right."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(-1, 1, num_classes))

    def forward(self, x):
        ramp = torch.linspace(0, 2, x.shape[-1])  # W
        return {"out": x.mean(1, keepdim=True) * self.weight[:, None, None] + ramp * self.weight[:, None, None] ** 2}


def pairs(image: torch.Tensor, sizes) -> list[torch.Tensor]:
    """MultiScaleSet's items: per size, the image resized and its mirror, 2 x 3 x h x w."""
    scaled = [F.interpolate(image[None], size, mode="bilinear", align_corners=False)[0] for size in sizes]
    return [torch.stack([t, t.flip(-1)]) for t in scaled]


def test_multi_scale_flip_inference_equals_a_plain_loop():
    model, image = Ramp(), torch.randn(3, 10, 14)
    scaled = pairs(image, [(10, 14), (5, 7), (15, 21)])
    probs = predict(model, scaled, (10, 14))
    total = 0
    for pair in scaled:  # the pair as one batch, as predict runs it: the same numbers, bit for bit
        one, mirror = F.interpolate(model(pair)["out"], (10, 14), mode="bilinear", align_corners=False).softmax(1)
        total = total + (one + mirror.flip(-1))
    assert torch.equal(probs, total / 6)
    total = 0
    for pair in scaled:  # one image at a time: softmax's vectorized kernels may round otherwise
        for image, flipped in zip(pair, (False, True)):
            scores = F.interpolate(model(image[None])["out"], (10, 14), mode="bilinear", align_corners=False)
            total = total + (scores.softmax(1)[0].flip(-1) if flipped else scores.softmax(1)[0])
    torch.testing.assert_close(probs, total / 6, rtol=0, atol=1e-6)


def test_the_mirror_image_is_flipped_back():
    model, image = Ramp(), torch.randn(3, 8, 12)
    (pair,) = pairs(image, [(8, 12)])
    probs = predict(model, [pair], (8, 12))
    one, mirror = model(pair)["out"].softmax(1)  # C x H x W each
    torch.testing.assert_close(probs, (one + mirror.flip(-1)) / 2)
    assert not torch.allclose(probs, (one + mirror) / 2)  # the ramp makes the flip matter
    assert torch.allclose(probs.sum(0), torch.ones(8, 12))


def test_without_flip_the_mirror_images_are_left_out():
    model, image = Ramp(), torch.randn(3, 8, 12)
    scaled = pairs(image, [(8, 12), (4, 6)])
    probs = predict(model, scaled, (8, 12), flip=False)
    each = [
        F.interpolate(model(pair[:1])["out"], (8, 12), mode="bilinear", align_corners=False).softmax(1)[0]
        for pair in scaled
    ]
    torch.testing.assert_close(probs, (each[0] + each[1]) / 2)
    assert not torch.allclose(probs, predict(model, scaled, (8, 12)))


def test_crf_relabels_the_unsure_pixels_that_differ_from_their_colour_and_gives_probabilities():
    """A dark half (class 0) and a bright half (class 1). Two unsure pixels lean 0.6 to the
    other half's class and the CRF gives them their colour's; a dark pixel in the bright half
    keeps its 0.6 for class 0, which its colour shares: the appearance kernel decides."""
    image = np.zeros((12, 16, 3), np.uint8)
    image[:, 8:] = 200
    image[5, 11] = 0
    probs = np.full((2, 12, 16), 0.1, np.float32)
    probs[0, :, :8], probs[1, :, 8:] = 0.9, 0.9
    probs[:, 8, 2] = 0.4, 0.6  # dark, leaning to the bright class
    probs[:, 3, 13] = probs[:, 5, 11] = 0.6, 0.4  # bright and dark in the bright half, leaning to the dark class
    refined = crf_refine(image, probs)
    assert refined.shape == (2, 12, 16)
    np.testing.assert_allclose(refined.sum(0), 1, rtol=1e-4)
    assert np.argwhere(refined.argmax(0) != probs.argmax(0)).tolist() == [[3, 13], [8, 2]]
    assert refined[0, 5, 11] > 0.6


def test_loss_leaves_out_ignored_pixels_and_is_zero_without_labels():
    scores, labels = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    labels[0, 0] = 255
    expected = F.cross_entropy(scores, labels, ignore_index=255)
    torch.testing.assert_close(train_seg.masked_cross_entropy(scores, labels), expected)
    assert train_seg.masked_cross_entropy(scores, torch.full_like(labels, 255)).item() == 0


def test_the_default_run_is_the_presets_steps_in_whole_epochs():
    parser = argparse.ArgumentParser()
    train_seg.add_arguments(parser, lambda group, name, **kwargs: group.add_argument(f"--{name}", **kwargs))
    args = parser.parse_args([])
    args.sem_seg_out_dir = "masks"
    for dataset, images, epochs in (("voc", 10_582, 46), ("synthetic", 800, 3), ("synthetic", 100, 25)):
        args.dataset = dataset
        assert train_seg.settings(args, images)["num_epoches"] == epochs  # 30k steps of 16; the demo's 150
    args.dataset, args.seg_arch, args.seg_init = "voc", "deeplabv2_resnet101", "coco.pth"  # 20k steps of 5 x 2
    chosen = train_seg.settings(args, 10_582)
    assert (chosen["num_epoches"], chosen["crop_size"], chosen["batch_size"], chosen["accumulation"]) == (19, 321, 5, 2)
    assert (chosen["weight_decay"], chosen["scale_range"], chosen["pretrained"]) == (5e-4, None, "coco.pth")
    args.seg_scale_range = [0.5, 2.0]  # DeepLabv2 draws among the reference's five scales, not in a range
    with pytest.raises(ArgumentError, match="--seg_scale_range is for torchvision's nets"):
        train_seg.settings(args, 10_582)
    args.seg_scale_range = None
    args.seg_arch, args.seg_init = None, None
    args.seg_num_epoches = 2
    assert train_seg.settings(args, 100)["num_epoches"] == 2
    args.seg_batch_size = 1
    with pytest.raises(ArgumentError, match="--seg_batch_size 1: BatchNorm needs 2 images"):
        train_seg.settings(args, 100)


# ------------------------------------------------------------------------------ the stages
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny set, and the demo net trained one epoch on its own masks through run_sample."""
    folder = tmp_path_factory.mktemp("seg")
    root = make_synthetic_voc(folder / "VOCdevkit", num_train_aug=8, num_train=2, num_val=3, seed=1) / "VOC2012"
    argv = ["--voc12_root", str(root), "--num_workers", "0", "--no_progress", *TINY]
    argv += ["--sem_seg_out_dir", str(root / "SegmentationClassAug"), "--seg_out_dir", str(folder / "seg")]
    argv += ["--seg_weights_name", str(folder / "sess" / "seg.pth")]
    run_sample.main([*argv, "--stages", "train_seg", "eval_seg"])
    return types.SimpleNamespace(root=root, folder=folder, argv=argv, weights=folder / "sess" / "seg.pth")


def test_train_seg_writes_weights_and_log_and_runs_once(trained):
    records = [json.loads(line) for line in (trained.folder / "sess" / "seg_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1] and set(records[0]["train"]) == {"ce"}
    assert records[0]["lr"] < 0.01  # the poly schedule ran down from the base lr
    checkpoint = torch.load(trained.weights, weights_only=True)
    assert checkpoint["arch"] == "lraspp_mobilenet_v3_large" and checkpoint["num_classes"] == 5
    assert checkpoint["classes"] == list(datasets.voc_classes(trained.root))
    model, info = load_segmentation_model(trained.weights, torch.device("cpu"))
    assert info["epoch"] == 1 and not model.training
    stamp = trained.weights.stat().st_mtime_ns
    run_sample.main([*trained.argv, "--stages", "train_seg"])  # the weights exist: nothing to train
    assert trained.weights.stat().st_mtime_ns == stamp


def test_eval_seg_writes_every_val_id_and_scores_them_as_eval_sem_seg(trained, capsys):
    val = datasets.voc_images(trained.root, "val")
    out = trained.folder / "seg"
    assert sorted(os.listdir(out)) == sorted([".bas-lock", ".bas-output.json", *(f"{s.image_id}.png" for s in val)])
    for sample in val:
        with Image.open(out / f"{sample.image_id}.png") as png:
            assert png.mode == "L" and png.size == Image.open(sample.path).size
    report = json.loads((trained.folder / "seg_eval" / "eval_sem_seg_val.json").read_text())
    masks = datasets.voc_masks(trained.root, "val")
    expected = eval_sem_seg.score_label_folder(out, masks, datasets.voc_classes(trained.root))
    assert report["images"] == 3 and report["miou"] == expected["miou"] and report["iou"] == expected["iou"]

    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    run_sample.main([*trained.argv, "--stages", "eval_seg"])  # all there: scored again, nothing predicted
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == stamps
    assert "mIoU" in capsys.readouterr().out
    with pytest.raises(OutputError, match=r"seg holds files made with .*'scales': \[1.0, 0.5\]"):
        run_sample.main([*trained.argv, "--stages", "eval_seg", "--seg_scales", "1"])


def test_eval_seg_on_a_test_list_writes_the_servers_layout_only(trained):
    out = trained.folder / "test"
    argv = [*trained.argv, "--stages", "eval_seg", "--seg_out_dir", str(out), "--seg_test", "--seg_crf"]
    run_sample.main(argv)
    server = out / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    val = datasets.voc_images(trained.root, "val")
    assert sorted(os.listdir(server)) == sorted(f"{s.image_id}.png" for s in val)
    for sample in val:
        with Image.open(server / f"{sample.image_id}.png") as png:
            assert png.mode == "P" and png.getpalette() == datasets.voc_palette()
            assert set(np.unique(np.array(png))) <= set(range(5))
    assert not (trained.folder / "test_eval").exists()
    assert read_marker(out)["settings"]["crf"] is True
    with pytest.raises(ArgumentError, match="--crf_scale 0: must be positive"):  # pydensecrf would crash the process
        run_sample.main([*argv, "--crf_scale", "0"])


def test_a_missing_pseudo_mask_stops_train_seg_before_any_work(trained, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    ids = (trained.root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()
    for image_id in ids[1:]:
        shutil.copy(trained.root / "SegmentationClassAug" / f"{image_id}.png", masks)
    argv = [*trained.argv, "--stages", "train_seg", "--sem_seg_out_dir", str(masks)]
    argv += ["--seg_weights_name", str(tmp_path / "sess" / "seg.pth")]
    message = f"{masks / ids[0]}.png: no labels for this id; make them first"
    with pytest.raises(DatasetError, match="^" + re.escape(message)):
        run_sample.main(argv)
    assert not (tmp_path / "sess").exists()


# ------------------------------------------------------------------------------ DeepLabv2
def test_deeplabv2_trains_with_its_recipe_and_eval_seg_reads_its_file(trained, tmp_path):
    """A one-block-a-layer DeepLabv2 (the hidden --seg_blocks) from a COCO-style file with
    BatchNorm statistics of its own: two steps of 2 x 2 images on the tiny set. BatchNorm
    keeps the file's statistics, the ASPP's biases train at 20x the rate without weight decay,
    the weights are the bare state dict of deeplab-pytorch's layout, which eval_seg reads."""
    torch.manual_seed(0)
    coco = deeplabv2.deeplabv2_resnet101(91, (1, 1, 1, 1)).base
    with torch.no_grad():
        for module in coco.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1), module.running_var.uniform_(0.5, 2)
    torch.save(coco.state_dict(), tmp_path / "coco.pth")
    weights = tmp_path / "sess" / "deeplabv2.pth"
    argv = ["--voc12_root", str(trained.root), "--num_workers", "0", "--no_progress"]
    argv += ["--sem_seg_out_dir", str(trained.root / "SegmentationClassAug")]
    argv += ["--seg_arch", "deeplabv2_resnet101", "--seg_blocks", "1", "1", "1", "1", "--seg_crop_size", "33"]
    argv += ["--seg_batch_size", "2", "--seg_num_epoches", "1", "--seg_weights_name", str(weights)]
    argv += ["--seg_out_dir", str(tmp_path / "seg"), "--seg_scales", "1"]
    with pytest.raises(ArgumentError, match="deeplabv2_resnet101 on voc needs --seg_init"):
        run_sample.main([*argv, "--stages", "train_seg"])
    run_sample.main([*argv, "--seg_init", str(tmp_path / "coco.pth"), "--stages", "train_seg", "eval_seg"])

    state = torch.load(weights, weights_only=True)
    assert deeplabv2.is_layout(state) and state["base.aspp.c0.weight"].shape[0] == 5
    for key, value in coco.state_dict().items():
        if "bn." in key:  # statistics and affine parameters as the file's
            assert torch.equal(state[f"base.{key}"], value), key
    assert not torch.equal(state["base.layer2.block1.reduce.conv.weight"], coco.layer2.block1.reduce.conv.weight)
    last = torch.load(tmp_path / "sess" / "deeplabv2_last.pth", weights_only=True)
    groups = last["optimizer"]["param_groups"]
    assert [(g["lr_multiplier"], g["weight_decay"]) for g in groups] == [(1, 5e-4), (10, 5e-4), (20, 0.0)]
    assert [g["lr"] for g in groups] == [2.5e-4, 2.5e-3, 5e-3]  # poly changes the rate every 10 steps only
    assert last["settings"]["accumulation"] == 2 and last["epoch"] == 1
    report = json.loads((tmp_path / "seg_eval" / "eval_sem_seg_val.json").read_text())
    assert report["images"] == 3
    model, info = load_segmentation_model(weights, torch.device("cpu"))
    assert info["arch"] == "deeplabv2_resnet101" and info["num_classes"] == 5 and not model.training
