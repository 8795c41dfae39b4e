"""Weights in: torchvision ImageNet state dicts, the classic MobileNetV1 file, our
checkpoints and the original release's checkpoints."""

import json
import logging

import pytest
import torch
from torchvision import models as tvm

from bas.backbones import build_backbone, load_imagenet_weights
from bas.errors import CheckpointError
from WSOL.models import build_model, convert_original_state_dict, load_checkpoint

TORCHVISION = {
    "vgg": (tvm.vgg16, {}, {"classifier"}),
    "resnet": (tvm.resnet50, {}, {"fc"}),
    "inception": (tvm.inception_v3, {"init_weights": False, "aux_logits": True}, {"AuxLogits", "fc"}),
}


def backbone_tensors(backbone):
    named = {}
    for part in ("head", "tail"):
        named.update({f"{part}.{k}": v for k, v in getattr(backbone, part).state_dict().items()})
    return named


@pytest.mark.parametrize("arch", list(TORCHVISION))
def test_torchvision_state_dict_fills_every_backbone_key(arch, tmp_path):
    make, kwargs, foreign = TORCHVISION[arch]
    state_dict = make(**kwargs).state_dict()
    path = tmp_path / f"{arch}.pth"
    torch.save(state_dict, path)

    backbone = build_backbone(arch)
    report = load_imagenet_weights(arch, backbone, str(path))
    assert report.missing == []
    assert {key.split(".")[0] for key in report.ignored} == foreign
    assert len(report.used) == len(backbone_tensors(backbone))
    for key, value in state_dict.items():
        name = backbone.translate_key(key)
        if name is not None:
            part = "head" if name in backbone.head.state_dict() else "tail"
            assert torch.equal(backbone_tensors(backbone)[f"{part}.{name}"], value), key


def test_build_model_loads_file_and_reports(tmp_path, caplog):
    reference = tvm.vgg16()
    torch.save(reference.state_dict(), tmp_path / "vgg16.pth")
    with caplog.at_level(logging.INFO):
        model = build_model("vgg", 4, pretrained=tmp_path / "vgg16.pth")
    assert torch.equal(getattr(model.tail, "28").weight, reference.features[28].weight)  # conv5_3
    assert "loaded 26 tensors" in caplog.text and "ignored 6" in caplog.text


def test_classic_mobilenet_file_loads_by_position(tmp_path):
    donor = build_backbone("mobilenet")
    tensors = [t for k, t in backbone_tensors(donor).items() if not k.endswith("num_batches_tracked")]
    classic = {f"w{i}": torch.randn_like(t) if t.is_floating_point() else t for i, t in enumerate(tensors)}
    classic.update({"fc.weight": torch.randn(1000, 1024), "fc.bias": torch.randn(1000)})
    torch.save(classic, tmp_path / "mobilenet_v1_with_relu_69_5.pth")

    backbone = build_backbone("mobilenet")
    report = load_imagenet_weights("mobilenet", backbone, str(tmp_path / "mobilenet_v1_with_relu_69_5.pth"))
    assert report.ignored == ["fc.weight", "fc.bias"] and report.missing == []
    # the last pointwise conv, followed by its BN's four tensors
    assert torch.equal(getattr(backbone.tail, "13")[3].weight, classic[f"w{len(tensors) - 5}"])


def test_wrong_weight_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pth: no such file"):
        build_model("resnet", 3, pretrained=tmp_path / "missing.pth")
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="other.pth does not fit the resnet backbone: no tensor matches"):
        build_model("resnet", 3, pretrained=tmp_path / "other.pth")
    torch.save({"a": torch.zeros(3, 3, 3, 3)}, tmp_path / "not_mobilenet.pth")
    with pytest.raises(CheckpointError, match="tensor #0 'a'"):
        build_model("mobilenet", 3, pretrained=tmp_path / "not_mobilenet.pth")


def test_our_checkpoint_round_trip(tmp_path):
    model = build_model("mobilenet", 5)
    torch.save({"model": model.state_dict(), "epoch": 7}, tmp_path / "ours.pth")
    other = build_model("mobilenet", 5)
    assert load_checkpoint(other, tmp_path / "ours.pth") == {"epoch": 7}
    for (name, value), expected in zip(other.state_dict().items(), model.state_dict().values()):
        assert torch.equal(value, expected), name


@pytest.mark.parametrize("arch", ["vgg", "resnet", "inception", "mobilenet"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_original_checkpoint_converts_and_loads(arch, prefix, shared_dir, tmp_path):
    shapes = json.loads((shared_dir / "design" / "checkpoint_keys" / f"{arch}_c200.json").read_text())
    original = {}
    for key, shape in shapes.items():
        original[key] = torch.tensor(5) if key.endswith("num_batches_tracked") else torch.randn(shape)
    release = {"model": {prefix + k: v for k, v in original.items()}, "best_thr": 0.1, "epoch": 99}
    torch.save(release, tmp_path / "o.pth")

    model = build_model(arch, 200)
    assert load_checkpoint(model, tmp_path / "o.pth") == {"best_thr": 0.1, "epoch": 99}
    converted = convert_original_state_dict(model, original)
    assert set(converted) == set(model.state_dict())
    loaded = model.state_dict()
    for key, value in converted.items():
        assert torch.equal(loaded[key], value), key


def test_original_key_names_land_where_expected():
    vgg, resnet, mobilenet = (build_model(arch, 3) for arch in ("vgg", "resnet", "mobilenet"))
    one = {"x": torch.zeros(1)}
    assert list(convert_original_state_dict(vgg, {"conv5_1.weight": one})) == ["tail.24.weight"]
    assert list(convert_original_state_dict(vgg, {"conv4_3.bias": one})) == ["head.21.bias"]
    assert list(convert_original_state_dict(resnet, {"layer4.2.bn3.running_var": one})) == [
        "tail.layer4.2.bn3.running_var"
    ]
    assert list(convert_original_state_dict(mobilenet, {"model.11.4.weight": one})) == ["head.11.4.weight"]
    assert list(convert_original_state_dict(mobilenet, {"classifier_loc.0.bias": one})) == ["classifier_loc.0.bias"]


def test_checkpoint_that_does_not_fit_is_refused(tmp_path):
    torch.save({"model": {"conv1_1.weight": torch.zeros(64, 3, 3, 3)}}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="does not fit the vgg BASGenerator: [0-9]+ missing"):
        load_checkpoint(build_model("vgg", 3), tmp_path / "partial.pth")
