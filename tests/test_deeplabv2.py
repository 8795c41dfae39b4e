"""DeepLabv2-ResNet101 in deeplab-pytorch's layout: ASPP, multi-scale fusion, output stride,
the checkpoint layout both ways, and the training recipe's pieces, on a net with one block per
layer (the same keys as ResNet-101's, fewer of them)."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from bas.errors import CheckpointError
from bas.optim import set_poly_lr
from bas.training import TrainingRun
from WSSS import datasets, deeplabv2, run_sample
from WSSS.datasets.transforms import to_tensor
from WSSS.segmentation import load_segmentation_model
from WSSS.synthetic import make_synthetic_voc

LIGHT = (1, 1, 1, 1)


@pytest.fixture(scope="module")
def light_net():
    torch.manual_seed(0)
    return deeplabv2.deeplabv2_resnet101(3, LIGHT).eval()


def test_aspp_sums_four_dilated_convs():
    aspp = deeplabv2.ASPP(4, 3, deeplabv2.ATROUS_RATES)
    with torch.no_grad():
        for conv in aspp.children():
            conv.bias.normal_()  # the zero initialization would hide the biases
    x = torch.randn(1, 4, 30, 30)
    by_hand = sum(
        F.conv2d(x, conv.weight, conv.bias, padding=rate, dilation=rate)
        for conv, rate in zip([aspp.c0, aspp.c1, aspp.c2, aspp.c3], (6, 12, 18, 24))
    )
    torch.testing.assert_close(aspp(x), by_hand)


def test_msc_fuses_the_three_scales_by_their_max(light_net):
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        full = light_net.base(x)
        half = light_net.base(F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False))
        three_quarters = light_net.base(F.interpolate(x, scale_factor=0.75, mode="bilinear", align_corners=False))
        up = [F.interpolate(o, size=(9, 9), mode="bilinear", align_corners=False) for o in (half, three_quarters)]
        by_hand = torch.maximum(full, torch.maximum(up[0], up[1]))
        fused = light_net(x)
        training = copy.deepcopy(light_net)
        deeplabv2.freeze_batchnorm(training)  # batch statistics would make the outputs differ
        outputs = training.train()(x)
    torch.testing.assert_close(fused, by_hand)
    assert len(outputs) == 4
    for output, expected in zip(outputs, (full, half, three_quarters, by_hand)):
        torch.testing.assert_close(output, expected)


def test_logits_at_stride_8_with_the_stems_rounding_up(light_net):
    # 65: conv1 (65 + 6 - 7) // 2 + 1 = 33, pool ceil((33 + 2 - 3) / 2) + 1 = 17, layer3 (17 - 1) // 2 + 1 = 9.
    # 64: conv1 32, pool ceil(31 / 2) + 1 = 17 (16 if the pool rounded down), layer3 9.
    # MSC of 65: 0.5 -> 32 px -> 16 -> 9 -> 5; 0.75 -> 48 px -> 24 -> 13 -> 7.
    with torch.no_grad():
        assert light_net.base(torch.zeros(1, 3, 65, 65)).shape == (1, 3, 9, 9)
        assert light_net.base(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 9, 9)
        outputs = copy.deepcopy(light_net).train()(torch.zeros(2, 3, 65, 65))
        shapes = [tuple(o.shape[-2:]) for o in outputs]
    assert shapes == [(9, 9), (5, 5), (7, 7), (9, 9)]


def test_state_dict_is_the_reference_checkpoint_layout(shared_dir):
    reference = json.loads((shared_dir / "design/checkpoint_keys/deeplabv2_resnet101_msc_c21.json").read_text())
    ours = deeplabv2.deeplabv2_resnet101(21).state_dict()
    assert [(k, list(v.shape)) for k, v in ours.items()] == [(k, list(v)) for k, v in reference.items()]


def test_loader_recognises_a_reference_file_by_its_keys(light_net, tmp_path):
    torch.save(light_net.state_dict(), tmp_path / "checkpoint_final.pth")  # as the reference saves: a bare state dict
    model, info = load_segmentation_model(tmp_path / "checkpoint_final.pth", torch.device("cpu"))
    assert info == {"arch": "deeplabv2_resnet101", "num_classes": 3}
    image = to_tensor(Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)))[None]
    with torch.no_grad():
        expected = light_net(deeplabv2.caffe_input(image))
        torch.testing.assert_close(model(image)["out"], expected)


def test_loader_accepts_a_file_without_batchnorm_step_counters(light_net, tmp_path):
    # PyTorch before 0.4.1 wrote no num_batches_tracked; inference never reads it
    state = {k: v for k, v in light_net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    model, _ = load_segmentation_model(tmp_path / "old.pth", torch.device("cpu"))
    assert all(torch.equal(model.net.state_dict()[k], v) for k, v in state.items())


def test_loader_error_lists_the_keys_of_a_file_of_neither_layout(tmp_path):
    torch.save({"arch": "mystery", "model": {"encoder.conv.weight": torch.zeros(1)}}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="found entries arch and 1 weights: encoder.conv.weight"):
        load_segmentation_model(tmp_path / "x.pth", torch.device("cpu"))


def test_caffe_input_is_bgr_0_255_minus_the_mean():
    image = to_tensor(Image.fromarray(np.array([[[255, 0, 128]]], dtype=np.uint8)))[None]
    expected = torch.tensor([128 - 104.008, 0 - 116.669, 255 - 122.675]).view(1, 3, 1, 1)
    torch.testing.assert_close(deeplabv2.caffe_input(image), expected, atol=1e-4, rtol=0)


def test_train_crop_halves_by_block_means_and_pads_bottom_right_with_the_mean_and_ignore():
    # A 4 x 6 image at scale 0.5 is 2 x 3: OpenCV's bilinear at half size is each 2 x 2 block's
    # mean; the crop (4) is larger, so the picture sits top left, the rest DeepLab's mean colour.
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 2
    labels = np.arange(24, dtype=np.uint8).reshape(4, 6)
    crop = deeplabv2.TrainCrop(crop=4, scales=(0.5,), flip=False)
    image, mask = crop(Image.fromarray(rgb), Image.fromarray(labels))
    caffe = deeplabv2.caffe_input(image[None])[0]  # 3 x 4 x 4, BGR minus the mean
    blocks = rgb.astype(np.float64).reshape(2, 2, 3, 2, 3).mean(axis=(1, 3))  # 2 x 3 x RGB
    expected = torch.zeros(3, 4, 4, dtype=torch.float64)
    expected[:, :2, :3] = torch.from_numpy(blocks[..., ::-1].copy()).permute(2, 0, 1) - torch.tensor(
        deeplabv2.MEAN_BGR, dtype=torch.float64
    ).view(3, 1, 1)
    torch.testing.assert_close(caffe.double(), expected, atol=2e-4, rtol=0)
    assert mask.dtype == torch.uint8
    assert mask[:2, :3].tolist() == labels[1::2, 1::2].tolist()  # PIL's nearest: the pixel under each centre
    assert (mask[2:] == 255).all() and (mask[:, 3:] == 255).all()


def test_train_crop_draws_one_of_the_five_scales_to_int_of_side_times_scale():
    torch.manual_seed(0)
    crop = deeplabv2.TrainCrop(crop=30, flip=False)  # larger than any rescaled 10 x 7 picture
    image, labels = Image.new("RGB", (10, 7)), Image.fromarray(np.zeros((7, 10), np.uint8))
    sizes = set()
    for _ in range(100):
        _, mask = crop(image, labels)
        sizes.add((int((mask != 255).any(1).sum()), int((mask != 255).any(0).sum())))
    assert sizes == {(int(7 * s), int(10 * s)) for s in (0.5, 0.75, 1.0, 1.25, 1.5)}  # (3, 5) ... (10, 15)


def test_train_crop_cuts_and_flips_image_and_labels_alike():
    torch.manual_seed(1)
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    labels = rgb[..., 0] // 16  # the labels are the image's red channel, coarsened
    crop = deeplabv2.TrainCrop(crop=16, scales=(1.0,))
    for _ in range(10):
        image, mask = crop(Image.fromarray(rgb), Image.fromarray(labels))
        red = deeplabv2.caffe_input(image[None])[0, 2] + deeplabv2.MEAN_BGR[2]
        assert torch.equal(red.round().to(torch.uint8) // 16, mask)


def test_param_groups_learning_rates_and_weight_decay(light_net):
    optimizer = deeplabv2.sgd(light_net)
    groups = optimizer.param_groups
    assert [(g["lr"], g["lr_multiplier"], g["weight_decay"]) for g in groups] == [
        (2.5e-4, 1, 5e-4),
        (2.5e-3, 10, 5e-4),
        (5e-3, 20, 0.0),
    ]
    assert all(g["momentum"] == 0.9 and not g["nesterov"] for g in groups)
    convs = [m for n, m in light_net.named_modules() if isinstance(m, nn.Conv2d) and ".aspp." not in n]
    assert [id(p) for p in groups[0]["params"]] == [id(m.weight) for m in convs]
    assert [id(p) for p in groups[1]["params"]] == [id(c.weight) for c in light_net.base.aspp.children()]
    assert [id(p) for p in groups[2]["params"]] == [id(c.bias) for c in light_net.base.aspp.children()]


def test_poly_rate_changes_every_10_iterations():
    assert [deeplabv2.RECIPE.poly_step(s) for s in (0, 9, 10, 19, 19999)] == [0, 0, 10, 10, 19990]
    optimizer = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr_multiplier": 20}], lr=1.0)
    recipe = deeplabv2.RECIPE
    lr = set_poly_lr(optimizer, recipe.lr, recipe.poly_step(25), recipe.iterations, recipe.poly_power)
    assert lr == pytest.approx(2.5e-4 * (1 - 20 / 20000) ** 0.9)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(20 * lr)


def test_frozen_batchnorm_stays_frozen_after_train():
    net = deeplabv2.deeplabv2_resnet101(3, LIGHT)
    deeplabv2.freeze_batchnorm(net)
    net.train()
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert net.training and net.base.aspp.training
    assert not any(m.training for m in norms)
    assert not any(p.requires_grad for m in norms for p in m.parameters())
    before = [m.running_mean.clone() for m in norms]
    net(torch.randn(2, 3, 33, 33))
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, norms))


def test_loss_sums_the_cross_entropy_of_the_four_outputs():
    labels = torch.tensor([[[0, 1], [255, 1]]])
    full = torch.tensor([[[[0.0, 1.0], [5.0, 2.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # class 0, class 1 planes
    small = torch.tensor([[[[3.0]], [[1.0]]]])  # 1 x 1: the label under its centre, (1, 1) -> 1
    fused = torch.zeros(1, 2, 2, 2)

    def ce(logit_0, logit_1, label):
        return math.log(math.exp(logit_0) + math.exp(logit_1)) - (logit_0, logit_1)[label]

    by_hand = (
        (ce(0, 0, 0) + ce(1, 0, 1) + ce(2, 0, 1)) / 3  # the 255 pixel left out
        + ce(3, 1, 1)
        + ce(3, 1, 1)
        + math.log(2)
    )
    loss = deeplabv2.msc_loss([full, small, small, fused], labels)
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.parametrize("size", [41, 31, 21])
def test_labels_resized_as_pils_nearest(size):
    labels = torch.randint(0, 256, (1, 321, 321))
    pil = Image.fromarray(labels[0].numpy().astype(np.float32)).resize((size, size), resample=Image.NEAREST)
    assert torch.equal(deeplabv2.resize_labels(labels, (size, size))[0], torch.tensor(np.asarray(pil)).long())


def coco_file(net: deeplabv2.DeepLabV2MSC, path, aspp_classes=None):
    """A file as deeplab-pytorch converts DeepLab's COCO model: the backbone without ``base.``,
    its own 1x1 classifier ``fc``, and optionally an ASPP of another number of classes."""
    state = {k: v.clone() for k, v in net.base.state_dict().items() if not k.startswith("aspp.")}
    state.update({"fc.weight": torch.randn(91, 2048, 1, 1), "fc.bias": torch.randn(91)})
    if aspp_classes:
        state.update({f"aspp.c{i}.weight": torch.randn(aspp_classes, 2048, 3, 3) for i in range(4)})
    torch.save(state, path)
    return state


@pytest.mark.parametrize("aspp_classes", [None, 91])
def test_init_from_coco_loads_the_backbone_and_skips_the_aspp(tmp_path, aspp_classes):
    state = coco_file(deeplabv2.deeplabv2_resnet101(3, LIGHT), tmp_path / "coco.pth", aspp_classes)
    net = deeplabv2.deeplabv2_resnet101(3, LIGHT)
    aspp_before = {k: v.clone() for k, v in net.base.aspp.state_dict().items()}
    skipped = deeplabv2.init_from_coco(net, tmp_path / "coco.pth")
    assert skipped == [f"aspp.c{i}.{p}" for i in range(4) for p in ("weight", "bias")]
    own = net.base.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if k in own and not k.startswith("aspp."))
    assert all(torch.equal(net.base.aspp.state_dict()[k], v) for k, v in aspp_before.items())


def test_init_from_coco_refuses_a_file_without_the_backbone(tmp_path):
    state = coco_file(deeplabv2.deeplabv2_resnet101(3, LIGHT), tmp_path / "coco.pth")
    del state["layer5.block1.increase.conv.weight"]
    torch.save(state, tmp_path / "coco.pth")
    with pytest.raises(CheckpointError, match="1 backbone tensors missing .*layer5.block1.increase.conv.weight"):
        deeplabv2.init_from_coco(deeplabv2.deeplabv2_resnet101(3, LIGHT), tmp_path / "coco.pth")


def test_eval_seg_scores_a_reference_file_as_deeplab_pytorch_tests_it(tmp_path):
    """One pass over the image as it is (the MSC max inside the net), no mirror image, the
    logits resized bilinearly to the image, their argmax: deeplab-pytorch's test."""
    root = make_synthetic_voc(tmp_path / "VOCdevkit", num_train_aug=2, num_train=1, num_val=2, seed=1) / "VOC2012"
    weights = tmp_path / "checkpoint_final.pth"
    net = deeplabv2.deeplabv2_resnet101(5, LIGHT).eval()
    torch.save(net.state_dict(), weights)
    argv = ["--voc12_root", str(root), "--num_workers", "0", "--no_progress"]
    argv += ["--seg_weights_name", str(weights), "--seg_out_dir", str(tmp_path / "seg")]
    run_sample.main([*argv, "--stages", "eval_seg"])
    report = json.loads((tmp_path / "seg_eval" / "eval_sem_seg_val.json").read_text())
    assert report["images"] == 2
    marker = json.loads((tmp_path / "seg" / ".bas-output.json").read_text())
    assert (marker["settings"]["scales"], marker["settings"]["flip"]) == ([1.0], False)
    for sample in datasets.voc_images(root, "val"):
        bgr = np.asarray(Image.open(sample.path).convert("RGB"), np.float32)[..., ::-1] - np.float32(deeplabv2.MEAN_BGR)
        with torch.no_grad():
            scores = net(torch.from_numpy(bgr.copy()).permute(2, 0, 1)[None])  # 1 x 5 x h/8 x w/8, eval: the max
        by_hand = F.interpolate(scores, bgr.shape[:2], mode="bilinear", align_corners=False)[0].argmax(0)
        with Image.open(tmp_path / "seg" / f"{sample.image_id}.png") as png:
            assert png.size == Image.open(sample.path).size
            assert (torch.from_numpy(np.array(png)).long() == by_hand).float().mean() > 0.999


# ------------------------------------------------------------------- gradient accumulation
def test_two_accumulated_batches_are_one_step_of_their_union(tmp_path):
    """TrainingRun.train_one_epoch with accumulation 2 over batches of 2 leaves a linear
    model (no BatchNorm) where one batch of 4 per step leaves it; the schedule runs once per
    step, and a last batch without its partner is left out."""
    torch.manual_seed(0)
    images, labels = torch.randn(9, 3), torch.randn(9, 1)

    def loss_parts(net, x, y, batch):
        return F.mse_loss(net(x), y), {}

    start = nn.Linear(3, 1)
    finished = []
    for batch, accumulation in ((4, 1), (2, 2)):
        model = copy.deepcopy(start)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        loader = [(images[i : i + batch], labels[i : i + batch], None) for i in range(0, 9 - 9 % batch, batch)]
        if accumulation == 2:
            loader.append((images[8:], labels[8:], None))  # 5 batches: 2 steps, the last batch left out
        run = TrainingRun(tmp_path / str(batch), "test-run", batch, 0, "cpu", progress=False)
        steps = []
        run.train_one_epoch(
            model, loader, optimizer, run.scaler(None), loss_parts, 0, 1, before_step=steps.append,
            accumulation=accumulation,
        )  # fmt: skip
        assert steps == [0, 1]
        finished.append(model)
    for one, accumulated in zip(*(m.parameters() for m in finished)):
        torch.testing.assert_close(accumulated, one)
