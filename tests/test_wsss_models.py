"""The WSSS nets: shapes, gradient routing of the BAS net, BatchNorm statistics, the
positive-class draw, the losses, and checkpoints (ours, the original BAS release, IRN's)."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from bas.amc import GeneratorOutput
from bas.errors import CheckpointError
from WSSS.models import (
    BASNet,
    CAMNet,
    build_model,
    draw_positive,
    load_checkpoint,
    multilabel_bas_loss,
    multilabel_cross_entropy,
    multilabel_soft_margin_loss,
)

NUM_CLASSES = 5
ARCHS = ("resnet50", "tiny")
LABELS = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1], [1, 1, 1, 1, 0], [0, 1, 0, 0, 1]], dtype=torch.float32)
POSITIVE = torch.tensor([2, 4, 1, 1])  # one of each image's labels: the class its AMC runs on


@pytest.fixture(scope="module", params=ARCHS)
def bas_net(request):
    return build_model("bas", NUM_CLASSES, arch=request.param)


@pytest.fixture(scope="module", params=ARCHS)
def cam_net(request):
    return build_model("cam", NUM_CLASSES, arch=request.param)


def stride(model):
    return 16 if model.arch == "resnet50" else 4


# ------------------------------------------------------------------------------ shapes
@torch.no_grad()
def test_bas_net_shapes(bas_net, fresh):
    model = fresh(bas_net).eval()
    images, s = torch.randn(4, 3, 64, 96), stride(bas_net)
    out = model(images, LABELS, POSITIVE)
    assert torch.equal(out.positive, POSITIVE)
    assert out.score.shape == out.score_fg.shape == (4, NUM_CLASSES)
    assert out.bas.shape == out.area.shape == out.positive.shape == (4,)
    assert out.fg_map.shape == (4, 1, 64 // s, 96 // s)
    maps = model.class_maps(images)
    assert maps.shape == (4, NUM_CLASSES, 64 // s, 96 // s)
    assert 0 <= maps.min() and maps.max() <= 1
    assert torch.equal(out.fg_map[:, 0], maps[torch.arange(4), out.positive])


@torch.no_grad()
def test_cam_net_shapes_and_score_is_gap_of_the_class_map(cam_net, fresh):
    model = fresh(cam_net).eval()
    images, s = torch.randn(2, 3, 64, 96), stride(cam_net)
    out = model(images, LABELS[:2])
    assert out.score.shape == (2, NUM_CLASSES) and out.fg_map is None and out.bas is None
    maps = model.class_maps(images)
    assert maps.shape == (2, NUM_CLASSES, 64 // s, 96 // s) and maps.min() >= 0
    class_map = model.classifier_cls(model.tail(model.head(images)))  # before the ReLU
    assert torch.allclose(out.score, class_map.mean((2, 3)), atol=1e-5)
    assert torch.equal(maps, class_map.relu())


# --------------------------------------------------------------------- gradient routing
def amc_output(model, images, labels):
    """A training forward in which some sample's bas ratio is not saturated, so that its
    gradient can flow (the precondition of the routing tests): with positive class weights
    on the tail's ReLU output, S and S_bg are positive, and erasing lowers S_bg."""
    with torch.no_grad():
        model.classifier_cls.weight.abs_()
    out = model(images, labels, POSITIVE)
    assert ((out.bas > 0) & (out.bas < 1)).any(), "precondition: some bas entry in the ratio regime"
    return out


def test_multilabel_cross_entropy_reaches_all_but_the_localization_head(bas_net, fresh, grads):
    model = fresh(bas_net)
    out = model(torch.randn(4, 3, 64, 64), LABELS, POSITIVE)
    multilabel_cross_entropy(out.score, LABELS).backward()
    for part in (model.head, model.tail, model.classifier_cls):
        dead = [name for name, ok in grads(part).items() if not ok]
        assert not dead, f"no gradient for {dead[:5]}"
    assert not any(grads(model.classifier_loc).values())


@pytest.mark.parametrize("term", ["ce_fg", "bas", "area"])
def test_amc_terms_reach_the_localization_head_and_the_head_only(bas_net, term, fresh, grads):
    """CE(score_fg), bas and area train classifier_loc and the layers up to the tap,
    never the tail or classifier_cls (score_fg weights a detached class map)."""
    model = fresh(bas_net)
    out = amc_output(model, torch.randn(4, 3, 64, 64), LABELS)
    loss = {"ce_fg": F.cross_entropy(out.score_fg, out.positive), "bas": out.bas.sum(), "area": out.area.sum()}[term]
    loss.backward()
    assert all(grads(model.classifier_loc).values())
    assert any(grads(model.head).values()), f"{term} must reach the head through the foreground map"
    assert not any(grads(model.tail).values()), f"{term} reached the tail"
    assert not any(grads(model.classifier_cls).values()), f"{term} reached classifier_cls"


def test_frozen_pass_leaves_running_statistics(bas_net, fresh):
    model = fresh(bas_net)
    reference = copy.deepcopy(model)
    images = torch.randn(4, 3, 64, 64)
    model(images, LABELS, POSITIVE)  # the real pass and the frozen pass
    reference.classifier_cls(reference.tail(reference.head(images)))  # the real pass alone
    for (name, value), expected in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(value, expected), f"{name} differs: the frozen pass touched it"


# ------------------------------------------------------------------------ positive draw
def test_positive_draw_is_a_positive_class_and_roughly_uniform():
    generator = torch.Generator().manual_seed(3)
    labels = (torch.rand(4000, 20, generator=generator) < 0.2).float()
    labels[torch.arange(4000), torch.randint(20, (4000,), generator=generator)] = 1.0  # >= 1 positive each
    positive = draw_positive(labels, generator)
    assert positive.dtype == torch.long and bool((labels[torch.arange(4000), positive] == 1).all())
    three = torch.tensor([[0, 1, 0, 0, 1, 0, 1.0]]).expand(6000, 7)
    counts = torch.bincount(draw_positive(three, generator), minlength=7)
    assert counts[[0, 2, 3, 5]].sum() == 0
    assert all(abs(int(c) - 2000) < 150 for c in counts[[1, 4, 6]]), counts  # ~5 sigma


def test_an_image_without_positive_label_is_refused():
    with pytest.raises(ValueError, match="without a positive label"):
        draw_positive(torch.tensor([[0, 1.0], [0, 0]]), torch.Generator())


# ------------------------------------------------------------------------------ losses
def test_multilabel_cross_entropy_hand_made():
    score = torch.tensor([[0.0, 0, 0, 0], [math.log(3.0), 0, 0, 0]], requires_grad=True)
    labels = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0.0]])
    # image 0: class 0 against three zeros: log 4. image 1: class 0 (log 3) against the two
    # negatives: log(5/3); class 1 (0) against them, not against class 0: log 3.
    expected = (math.log(4.0) + math.log(5.0 / 3.0) + math.log(3.0)) / 2
    loss = multilabel_cross_entropy(score, labels)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    # image 1, class 0: softmax over {log 3, 0, 0} -> d/ds = (3/5 - 1) / 2 from its own term only
    assert score.grad[1, 0].item() == pytest.approx((3 / 5 - 1) / 2)


def test_multilabel_cross_entropy_equals_per_image_reference():
    """The original's reduction: per image, the mean CE over its positives, weighted by their number / B."""
    score, labels = torch.randn(6, 20), (torch.rand(6, 20) < 0.3).float()
    labels[:, 0] = 1.0
    expected = 0.0
    for s, y in zip(score, labels):
        pos, neg = s[y > 0.5], s[y < 0.5]
        rows = torch.cat([pos[:, None], neg.expand(len(pos), len(neg))], 1)
        expected += F.cross_entropy(rows, torch.zeros(len(pos), dtype=torch.long)) * len(pos) / len(score)
    assert torch.allclose(multilabel_cross_entropy(score, labels), expected, atol=1e-6)


def test_multilabel_cross_entropy_with_every_class_positive_is_zero_and_finite():
    score = torch.randn(2, 3, requires_grad=True)
    loss = multilabel_cross_entropy(score, torch.ones(2, 3))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(score.grad, torch.zeros(2, 3))


def test_multilabel_bas_loss_hand_made():
    labels, positive = torch.tensor([[1, 0, 0.0], [1, 1, 0]]), torch.tensor([0, 1])
    out = GeneratorOutput(
        score=torch.zeros(2, 3),  # ce: (log 3 + 2 log 2) / 2
        score_fg=torch.tensor([[math.log(2.0), 0, 0], [0, 0, 0]]),  # CE: (log 2 + log 3) / 2
        bas=torch.tensor([0.2, 1.0]),
        area=torch.tensor([0.5, 0.1]),
        positive=positive,
    )
    ce, ce_fg = (math.log(3.0) + 2 * math.log(2.0)) / 2, (math.log(2.0) + math.log(3.0)) / 2
    total, parts = multilabel_bas_loss(out, labels, positive)
    assert set(parts) == {"ce", "ce_fg", "bas", "area"}
    assert parts["ce"].item() == pytest.approx(ce) and parts["ce_fg"].item() == pytest.approx(ce_fg)
    assert total.item() == pytest.approx(ce + 0.2 * ce_fg + 0.6 + 1.2 * 0.3)
    total, _ = multilabel_bas_loss(out, labels, positive, alpha=1.0, beta=0.0)
    assert total.item() == pytest.approx(ce + ce_fg + 0.6)


def test_multilabel_soft_margin_loss_of_the_cam_net(cam_net, fresh):
    out = fresh(cam_net)(torch.randn(2, 3, 32, 32), LABELS[:2])
    total, parts = multilabel_soft_margin_loss(out, LABELS[:2])
    assert set(parts) == {"soft_margin"}
    assert torch.allclose(total, F.multilabel_soft_margin_loss(out.score, LABELS[:2]))


# ---------------------------------------------------------------------- the CAM net's BN
def test_resnet_cam_net_freezes_batchnorm_and_layers_below_layer3_as_irn():
    model = build_model("cam", NUM_CLASSES).train()
    before = copy.deepcopy(model.state_dict())
    frozen_modules = model.head[:6]  # conv1, bn1, relu, maxpool, layer1, layer2
    assert not any(p.requires_grad for p in frozen_modules.parameters())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss, _ = multilabel_soft_margin_loss(model(torch.randn(2, 3, 32, 32), LABELS[:2]), LABELS[:2])
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    frozen = {f"head.{key}" for key in frozen_modules.state_dict()}
    frozen |= {name for name in before if "running" in name or "num_batches_tracked" in name}
    assert not [name for name in frozen if not torch.equal(after[name], before[name])]
    assert not torch.equal(after["classifier_cls.weight"], before["classifier_cls.weight"]), "the step must train"
    # layer3's and layer4's BatchNorm layers keep IRN's trainable affine parameters.
    bn_weights = [
        p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters() if p.requires_grad
    ]
    assert bn_weights and all(p.grad is not None for p in bn_weights)
    assert all(
        name.startswith(("head.layer3.", "tail.", "classifier"))
        for name, p in model.named_parameters()
        if p.requires_grad
    )


def test_tiny_cam_net_trains_every_layer_and_its_batchnorm():
    """From random weights, fixed statistics would leave the demo net unable to learn."""
    model = build_model("cam", NUM_CLASSES, arch="tiny").train()
    assert all(p.requires_grad for p in model.parameters())
    before = copy.deepcopy(model.state_dict())
    model(torch.randn(4, 3, 32, 32), LABELS)
    assert not torch.equal(model.state_dict()["head.1.running_mean"], before["head.1.running_mean"])


def test_cam_net_batchnorm_stays_in_eval_mode_also_as_syncbatchnorm():
    model = nn.SyncBatchNorm.convert_sync_batchnorm(build_model("cam", NUM_CLASSES)).train()
    norms = [m for m in model.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert norms and not any(m.training for m in norms)
    assert model.training and model.classifier_cls.training
    before = copy.deepcopy(model.state_dict())
    model(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())


# ------------------------------------------------------------------------- checkpoints
def our_name(key):
    """Where a key of the original BAS net or of IRN's CAM net lands in ours, spelled out
    independently of the loader: IRN's ``backbone.i`` is ``stage{i+1}``; stage1 holds conv1
    (0), bn1 (1) and layer1 (4); stage2..4 wrap layer2..4; ``newly_added.0`` is ``classifier``."""
    key = key.removeprefix("resnet50.")
    if key.startswith("backbone."):
        index, rest = key.removeprefix("backbone.").split(".", 1)
        key = f"stage{int(index) + 1}.{rest}"
    for old, new in [("stage1.0.", "conv1."), ("stage1.1.", "bn1."), ("stage1.4.", "layer1."), ("stage2.0.", "layer2."),
                     ("stage3.0.", "layer3."), ("stage4.0.", "layer4."), ("newly_added.0.", "classifier_cls."),
                     ("classifier.", "classifier_cls.")]:  # fmt: skip
        if key.startswith(old):
            key = new + key.removeprefix(old)
    if key.startswith(("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")):
        return "head." + key
    return "tail." + key if key.startswith("layer4.") else key


def original_state_dict(shapes, model):
    """A state dict with the original's keys and our model's shapes; keys that name the
    same weights (IRN's aliases) share one tensor, as in the real file. Also returns the
    tensors under our names."""
    own, tensors = model.state_dict(), {}
    for key, shape in shapes.items():
        ours = our_name(key)
        assert list(own[ours].shape) == shape, key
        if ours not in tensors:
            tensors[ours] = torch.tensor(7) if key.endswith("num_batches_tracked") else torch.randn(shape)
    assert set(tensors) == set(own), "the key list must cover the model, and only it"
    return {key: tensors[our_name(key)] for key in shapes}, tensors


@pytest.mark.parametrize(
    ("method", "key_list", "prefix"),
    [("bas", "wsss_bas_c20.json", "module."), ("bas", "wsss_bas_c20.json", ""), ("cam", "wsss_cam_c20.json", "")],
)
def test_original_checkpoints_load(method, key_list, prefix, shared_dir, tmp_path):
    shapes = json.loads((shared_dir / "design" / "checkpoint_keys" / key_list).read_text())
    model = build_model(method, 20)
    original, expected = original_state_dict(shapes, model)
    # The BAS release was written in torch's legacy (non-zip) format.
    legacy = prefix == "module."
    torch.save(
        {prefix + k: v for k, v in original.items()},
        tmp_path / "original.pth",
        _use_new_zipfile_serialization=not legacy,
    )
    assert load_checkpoint(model, tmp_path / "original.pth") == {}
    loaded = model.state_dict()
    assert set(expected) == set(loaded)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_irn_aliases_that_disagree_are_refused(shared_dir):
    shapes = json.loads((shared_dir / "design" / "checkpoint_keys" / "wsss_cam_c20.json").read_text())
    model = build_model("cam", 20)
    original, _ = original_state_dict(shapes, model)
    original["stage4.0.2.conv3.weight"] = original["stage4.0.2.conv3.weight"] + 1
    with pytest.raises(CheckpointError, match=r"stage4\.0\.2\.conv3\.weight differs"):
        load_checkpoint(model, original)


@pytest.mark.parametrize("arch", ARCHS)
def test_our_checkpoint_round_trip(arch, tmp_path):
    model = build_model("bas", NUM_CLASSES, arch=arch)
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "ours.pth")
    other = build_model("bas", NUM_CLASSES, arch=arch)
    assert load_checkpoint(other, tmp_path / "ours.pth") == {"epoch": 3}
    for (name, value), expected in zip(other.state_dict().items(), model.state_dict().values()):
        assert torch.equal(value, expected), name


def test_bad_checkpoint_files_are_refused_with_their_name(tmp_path):
    model = build_model("bas", NUM_CLASSES, arch="tiny")
    with pytest.raises(CheckpointError, match="missing.pth"):
        load_checkpoint(model, tmp_path / "missing.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_checkpoint(model, tmp_path / "garbage.pth")
    torch.save({"model": torch.nn.Identity()}, tmp_path / "object.pth")
    with pytest.raises(CheckpointError, match="object.pth") as error:
        load_checkpoint(model, tmp_path / "object.pth")
    assert "weights_only" not in str(error.value)


def test_checkpoint_of_another_class_count_gives_one_line(tmp_path):
    torch.save({"model": build_model("bas", 21).state_dict()}, tmp_path / "c21.pth")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(build_model("bas", 20), tmp_path / "c21.pth")
    message = str(error.value)
    assert "c21.pth" in message and "classifier" in message and "\n" not in message


def test_cam_checkpoint_does_not_fit_the_bas_net(shared_dir):
    shapes = json.loads((shared_dir / "design" / "checkpoint_keys" / "wsss_cam_c20.json").read_text())
    original, _ = original_state_dict(shapes, build_model("cam", 20))
    with pytest.raises(CheckpointError, match="missing .*classifier_loc"):
        load_checkpoint(build_model("bas", 20), original)


# ------------------------------------------------------------------------------ builder
def test_pretrained_file_fills_the_backbone(tmp_path):
    reference = tvm.resnet50()
    torch.save(reference.state_dict(), tmp_path / "resnet50.pth")
    model = build_model("cam", 20, pretrained=tmp_path / "resnet50.pth")
    assert torch.equal(model.tail.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)
    assert torch.equal(model.head.layer3[0].downsample[0].weight, reference.layer3[0].downsample[0].weight)


def test_build_model_layouts_and_names():
    model = build_model("bas", 20)
    assert isinstance(model, BASNet) and isinstance(build_model("cam", 20), CAMNet)
    assert model.head.layer3[0].conv2.stride == (2, 2) and model.tail.layer4[0].conv2.stride == (1, 1)
    assert list(dict(model.tail.named_children())) == ["layer4"]
    with pytest.raises(ValueError, match="unknown method"):
        build_model("acol", 20)
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("bas", 20, arch="vgg")
