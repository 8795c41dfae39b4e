"""make_cam's fast path: nets prepared for inference give the plain nets' seeds in fp32 (up
to float rounding) and close ones in bf16; the image normalization by table lookup equals the
original's float64 formula; a seed folder records the precision."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bas.data import IMAGENET_MEAN, IMAGENET_STD
from bas.errors import OutputError
from WSSS import run_sample
from WSSS.datasets import MultiScaleItem
from WSSS.datasets.transforms import to_tensor
from WSSS.models import build_model
from WSSS.steps import make_cam
from WSSS.synthetic import make_synthetic_voc

CPU = torch.device("cpu")
VARIANTS = ["bas", "cam", "bas+cam"]


def drawn_nets(arch, methods=("bas", "cam"), classes=5):
    """Nets of ``methods`` on ``arch`` whose BatchNorm statistics and affine parameters are drawn,
    so that folding them changes every convolution."""
    torch.manual_seed(0)
    nets = {method: build_model(method, classes, arch=arch).eval() for method in methods}
    with torch.no_grad():
        for module in (m for net in nets.values() for m in net.modules()):
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return nets


def items(classes=5, sizes=((37, 50),), scales=(1.0, 0.5)):
    generator = torch.Generator().manual_seed(3)
    for index, (h, w) in enumerate(sizes):
        label = torch.zeros(classes)
        label[[index, 3]] = 1
        pairs = []
        for s in scales:
            image = torch.randn(3, int(np.round(h * s)), int(np.round(w * s)), generator=generator)
            pairs.append(torch.stack([image, image.flip(-1)]))
        yield MultiScaleItem(f"img_{index}", (h, w), label, pairs)


def assert_seeds_close(ours, plain, atol):
    for variant in VARIANTS:
        np.testing.assert_array_equal(ours[variant]["keys"], plain[variant]["keys"])
        for key in ("cam", "high_res"):
            assert ours[variant][key].dtype == np.float32
            np.testing.assert_allclose(ours[variant][key], plain[variant][key], rtol=0, atol=atol)


def test_fp32_seeds_of_prepared_nets_equal_the_plain_nets_seeds():
    nets = drawn_nets("tiny")
    prepared = {name: make_cam.InferenceNet(net, CPU) for name, net in nets.items()}
    for item in items():
        plain = make_cam.image_seeds(nets, VARIANTS, item, CPU)
        assert_seeds_close(make_cam.image_seeds(prepared, VARIANTS, item, CPU), plain, atol=1e-5)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in nets["cam"].modules())  # the nets themselves kept


def test_fp32_maps_of_a_prepared_resnet50_equal_the_plain_nets_maps():
    net = drawn_nets("resnet50", ["cam"])["cam"]
    pair = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = net.class_maps(pair)
    ours = make_cam.InferenceNet(net, CPU).class_maps(pair)
    assert ours.dtype == torch.float32 and ours.shape == plain.shape
    torch.testing.assert_close(ours, plain, rtol=0, atol=1e-5 * float(plain.abs().max()))


def test_the_autocast_path_in_channels_last_gives_the_same_fp32_seeds(monkeypatch):
    """The path of devices without oneDNN (CUDA): folded nets in the memory format asked for."""
    monkeypatch.setattr(make_cam, "onednn_dtype", lambda device, amp: None)
    nets = drawn_nets("tiny")
    prepared = {name: make_cam.InferenceNet(net, CPU, channels_last=True) for name, net in nets.items()}
    assert prepared["cam"].layout == torch.channels_last
    for item in items():
        plain = make_cam.image_seeds(nets, VARIANTS, item, CPU)
        assert_seeds_close(make_cam.image_seeds(prepared, VARIANTS, item, CPU), plain, atol=1e-5)


@pytest.mark.parametrize("onednn", [True, False])
def test_bf16_seeds_stay_close_to_fp32(monkeypatch, onednn):
    if not onednn:
        monkeypatch.setattr(make_cam, "onednn_dtype", lambda device, amp: None)
    nets = drawn_nets("tiny")
    prepared = {name: make_cam.InferenceNet(net, CPU, "bf16") for name, net in nets.items()}
    for item in items():
        plain = make_cam.image_seeds(nets, VARIANTS, item, CPU)
        ours = make_cam.image_seeds(prepared, VARIANTS, item, CPU)
        assert_seeds_close(ours, plain, atol=0.05)
        assert not all(np.array_equal(ours[v]["high_res"], plain[v]["high_res"]) for v in VARIANTS)  # bf16 indeed


def test_to_tensor_normalizes_every_level_as_the_float64_formula():
    levels = np.arange(256, dtype=np.uint8)
    pixels = np.stack([levels, levels[::-1], np.roll(levels, 7)], axis=-1).reshape(16, 16, 3)
    expected = np.empty((16, 16, 3), np.float32)  # the original's: float64, rounded once into float32
    for channel in range(3):
        expected[..., channel] = (pixels[..., channel] / 255.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
    ours = to_tensor(Image.fromarray(pixels))
    assert ours.dtype == torch.float32
    np.testing.assert_array_equal(ours.numpy(), expected.transpose(2, 0, 1))


def marker_settings(folder):
    return json.loads((folder / ".bas-output.json").read_text())["settings"]


def test_a_seed_folder_records_its_precision_and_refuses_the_other(tmp_path):
    voc = make_synthetic_voc(tmp_path / "VOCdevkit", num_train_aug=2, num_train=1, num_val=1) / "VOC2012"
    for method in ("bas", "cam"):
        torch.save({"model": build_model(method, num_classes=4, arch="tiny").state_dict()}, tmp_path / f"{method}.pth")
    argv = ["--voc12_root", str(voc), "--stages", "make_cam", "--num_workers", "0", "--no_progress"]
    argv += ["--bas_weights_name", str(tmp_path / "bas.pth"), "--cam_weights_name", str(tmp_path / "cam.pth")]
    argv += ["--arch", "tiny", "--cam_scales", "1", "0.5"]
    run_sample.main([*argv, "--cam_out_dir", str(tmp_path / "fp32")])
    assert "amp" not in marker_settings(tmp_path / "fp32")  # as fp32 folders were recorded before
    run_sample.main([*argv, "--cam_out_dir", str(tmp_path / "bf16"), "--amp", "bf16", "--channels-last"])
    assert marker_settings(tmp_path / "bf16")["amp"] == "bf16"
    assert sorted(p.name for p in (tmp_path / "bf16").glob("*.npz")) == sorted(
        p.name for p in (tmp_path / "fp32").glob("*.npz")
    )
    for folder, amp in (("fp32", ["--amp", "bf16"]), ("bf16", [])):
        with pytest.raises(OutputError, match="holds files made with"):
            run_sample.main([*argv, "--cam_out_dir", str(tmp_path / folder), *amp])
