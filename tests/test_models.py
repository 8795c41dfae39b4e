"""The four generators: shapes, gradient routing, BatchNorm statistics, the CAM baseline."""

import copy
import subprocess
import sys

import pytest
import torch

from bas.amc import bas_loss
from bas.backbones import ARCHS
from WSOL.models import BASGenerator, CAMBaseline, build_model

NUM_CLASSES = 6


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    return build_model(request.param, NUM_CLASSES)


@torch.no_grad()
def test_shapes_at_224(model, fresh):
    model = fresh(model).eval()
    images, labels = torch.randn(2, 3, 224, 224), torch.tensor([1, 5])
    features, class_map = model.features_and_class_map(images)
    assert features.shape[-2:] == (28, 28) and class_map.shape == (2, NUM_CLASSES, 14, 14)
    out = model(images, labels)
    assert out.score.shape == out.score_fg.shape == (2, NUM_CLASSES)
    assert out.bas.shape == out.area.shape == (2,)
    assert out.fg_map.shape == (2, 1, 28, 28)
    score, fg_map = model.localize(images, labels)
    assert torch.allclose(score, out.score) and torch.allclose(fg_map, out.fg_map)
    assert model.localize(images, topk=3)[1].shape == (2, 1, 28, 28)


@torch.no_grad()
def test_localize_topk_is_mean_of_top_classes(model, fresh):
    model = fresh(model).eval()
    images = torch.randn(2, 3, 64, 64)
    score, fg_map = model.localize(images, topk=NUM_CLASSES)
    all_maps = model.classifier_loc(model.head(images))  # B x C x h x w
    assert torch.allclose(fg_map, all_maps.mean(1, keepdim=True), atol=1e-6)
    with pytest.raises(ValueError, match="GT-known"):
        model.localize(images)


def unsaturated_output(model, images, labels):
    """A training forward where the bas ratio is not saturated for some sample, so that
    its gradient can flow: shift the class logits up so that S and S_bg are positive."""
    with torch.no_grad():
        model.classifier_cls[-1].bias.fill_(10.0)
    out = model(images, labels)
    assert ((out.bas > 0) & (out.bas < 1)).any(), "precondition: some bas entry in the ratio regime"
    return out


def test_bas_term_reaches_loc_head_and_head_only(model, fresh, grads):
    model = fresh(model)
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    out = unsaturated_output(model, images, labels)
    out.bas.sum().backward()
    assert all(grads(model.classifier_loc).values())
    assert any(grads(model.head).values()), "bas must reach the head through the tap features"
    assert not any(grads(model.tail).values()), "no gradient may reach the tail's weights"
    assert not any(grads(model.classifier_cls).values())


def test_cross_entropy_reaches_whole_backbone(model, fresh, grads):
    model = fresh(model)
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 4])
    torch.nn.functional.cross_entropy(model(images, labels).score, labels).backward()
    for part in (model.head, model.tail, model.classifier_cls):
        dead = [name for name, ok in grads(part).items() if not ok]
        assert not dead, f"no gradient for {dead[:5]}"
    assert not any(grads(model.classifier_loc).values())


def test_foreground_cross_entropy_reaches_loc_head(model, fresh, grads):
    model = fresh(model)
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 4])
    torch.nn.functional.cross_entropy(model(images, labels).score_fg, labels).backward()
    assert all(grads(model.classifier_loc).values())
    assert all(grads(model.classifier_cls).values())


def test_frozen_pass_leaves_running_statistics(model, fresh):
    model = fresh(model)
    reference = copy.deepcopy(model)
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    model(images, labels)  # the real pass and the frozen pass
    reference.features_and_class_map(images)  # the real pass alone
    for (name, value), expected in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(value, expected), f"{name} differs: the frozen pass touched it"


def loss_and_gradients(model, images, labels):
    loss, _ = bas_loss(model(images, labels), labels, alpha=0.5, beta=1.5)
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


def test_channels_last_gives_the_same_loss_and_gradients(model, fresh):
    """--channels-last: the same numbers from NHWC weights and images. In float64, as
    float32 rounding, summed in another order, grows through a deep net at random init."""
    images, labels = torch.randn(2, 3, 64, 64, dtype=torch.float64), torch.tensor([1, 4])
    loss, grads = loss_and_gradients(fresh(model).double(), images, labels)
    nhwc = fresh(model).double().to(memory_format=torch.channels_last)
    nhwc_loss, nhwc_grads = loss_and_gradients(nhwc, images.to(memory_format=torch.channels_last), labels)
    assert torch.allclose(nhwc_loss, loss, rtol=1e-12, atol=0)
    for a, b in zip(nhwc_grads, grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)


def test_compiled_generator_gives_the_eager_loss_and_gradients():
    """--compile: torch.compile traces the frozen tail's functional call as well."""
    model = build_model("tiny", NUM_CLASSES).train()
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 5])
    loss, grads = loss_and_gradients(copy.deepcopy(model), images, labels)
    compiled_loss, compiled_grads = loss_and_gradients(torch.compile(model), images, labels)
    assert torch.allclose(compiled_loss, loss, atol=1e-5)
    for a, b in zip(compiled_grads, grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_cam_baseline_trains_with_class_map_only():
    model = build_model("mobilenet", NUM_CLASSES, method="cam")
    assert isinstance(model, CAMBaseline) and not hasattr(model, "classifier_loc")
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([2, 3])
    out = model(images, labels)
    assert out.bas is None and out.score_fg is None and out.area is None
    _, class_map = model.features_and_class_map(images)
    assert torch.allclose(out.fg_map[:, 0], class_map[[0, 1], [2, 3]])
    score, cam = model.eval().localize(images, labels)
    assert cam.shape == (2, 1, 4, 4) and score.shape == (2, NUM_CLASSES)


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("alexnet", 3)
    with pytest.raises(ValueError, match="unknown method"):
        build_model("vgg", 3, method="acol")
    assert isinstance(build_model("mobilenet", 3), BASGenerator)


def test_packages_import_from_any_folder(tmp_path):
    code = "import bas.amc, WSOL.models; print(WSOL.models.build_model.__name__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "build_model"
