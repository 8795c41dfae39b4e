"""ImageNet backbones cut in two at the BAS tap, and their weight loading.

Every backbone is split into a ``head`` (image -> tap features F, stride 8) and a
``tail`` (F -> the features that feed ``classifier_cls``, stride 16). The AMC re-runs
the tail on the erased F, so the cut is part of the method. The WSSS nets cut ResNet50
(and the demo's small CNN) in another ``layout``: tap and tail at the same stride.

Parameter names inside ``head`` and ``tail`` are torchvision's own (``layer3.0.conv1``,
``Mixed_6e.branch1x1.conv``, ``features`` indices for VGG), so a torchvision state dict
maps onto them by name. MobileNetV1 uses the original BAS layout (``model.N``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm
from torchvision.models import inception as tv_inception

from bas.checkpoints import load_torch_file
from bas.errors import CheckpointError

log = logging.getLogger(__name__)

ARCHS = ("vgg", "resnet", "inception", "mobilenet")
LAYOUTS = ("wsol", "wsss")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


@dataclass
class Backbone:
    """A backbone cut at the tap. ``head(x)`` gives F, ``tail(F)`` the tail features."""

    head: nn.Module
    tail: nn.Module
    tap_channels: int
    tail_channels: int
    # Maps a key of a foreign state dict (torchvision's, or the original BAS
    # checkpoints') to the key inside head/tail; None means "not a backbone key".
    translate_key: Callable[[str], str | None] = field(repr=False)
    classifier_width: int = 1024  # hidden channels of classifier_cls


class CutNet(nn.Module):
    """A net on a backbone cut at the tap: ``head`` up to it, ``tail`` after it, for
    ``num_classes``. What every net whose maps the AMC constrains (WSOL's generators, WSSS's
    BAS and CAM nets) shares; each adds its own ``classifier_cls``."""

    def __init__(self, arch: str, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.translate_key = backbone.translate_key
        self.head = backbone.head
        self.tail = backbone.tail


# ----------------------------------------------------------------------------- VGG16
# torchvision vgg16().features indices of conv1_1 .. conv5_3, in order.
VGG_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG_CONV_NAMES = tuple(
    f"conv{block}_{i}" for block, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)
)
_VGG_NAME_TO_INDEX = dict(zip(VGG_CONV_NAMES, VGG_CONV_INDICES))
_VGG_TAP = 23  # features[23] is pool4: the head ends at relu4_3 (28x28 at 224)


def _translate_vgg(key: str) -> str | None:
    prefix, _, rest = key.partition(".")
    if prefix == "features":
        return rest
    if prefix in _VGG_NAME_TO_INDEX:
        return f"{_VGG_NAME_TO_INDEX[prefix]}.{rest}"
    return None


def vgg16() -> Backbone:
    """VGG16 up to relu4_3 | pool4, conv5_1..conv5_3 + ReLU (no pool5)."""
    features = tvm.vgg16().features
    # Slicing an nn.Sequential keeps the original indices as names ("24.weight").
    head, tail = features[:_VGG_TAP], features[_VGG_TAP:30]
    return Backbone(head, tail, tap_channels=512, tail_channels=512, translate_key=_translate_vgg)


# -------------------------------------------------------------------------- ResNet50
def _translate_by_name(ignored_prefixes: tuple[str, ...]) -> Callable[[str], str | None]:
    def translate(key: str) -> str | None:
        return None if key.split(".")[0] in ignored_prefixes else key

    return translate


def resnet50(layout: str = "wsol") -> Backbone:
    """ResNet50 cut between layer3 and layer4.

    wsol: layer3 and layer4 at stride 1 and a 2x2 max-pool between them (tap at
    stride 8, tail at 16). wsss: layer3 keeps its stride 2, layer4 runs at stride 1 and
    nothing sits between them (tap and tail at stride 16).
    """
    _check_layout(layout)
    net = tvm.resnet50()
    stride_1 = (net.layer3, net.layer4) if layout == "wsol" else (net.layer4,)
    for layer in stride_1:
        layer[0].conv2.stride = (1, 1)
        layer[0].downsample[0].stride = (1, 1)
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")
    head = nn.Sequential(OrderedDict((name, getattr(net, name)) for name in names))
    between = {"pool": nn.MaxPool2d(2)} if layout == "wsol" else {}
    tail = nn.Sequential(OrderedDict(**between, layer4=net.layer4))
    return Backbone(head, tail, 1024, 2048, _translate_by_name(("fc",)))


# ----------------------------------------------------------------------- InceptionV3
class _InceptionBStride1(tv_inception.InceptionB):
    """Mixed_6a of the WSOL InceptionV3: stride 1, padding 1 (keeps 28x28)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__(in_channels)
        for conv in (self.branch3x3.conv, self.branch3x3dbl_3.conv):
            conv.stride, conv.padding = (1, 1), (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3(x)
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([branch3x3, branch3x3dbl, pool], 1)


class _InceptionDPadded(tv_inception.InceptionD):
    """Mixed_7a of the WSOL InceptionV3: stride-2 convs and pool with padding 1."""

    def __init__(self, in_channels: int) -> None:
        super().__init__(in_channels)
        for conv in (self.branch3x3_2.conv, self.branch7x7x3_4.conv):
            conv.padding = (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = conv(branch7x7x3)
        pool = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        return torch.cat([branch3x3, branch7x7x3, pool], 1)


_INCEPTION_HEAD_BLOCKS = tuple(f"Mixed_{n}" for n in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e"))


def inception_v3() -> Backbone:
    """InceptionV3 with the wsolevaluation strides: tap after Mixed_6e at 28x28."""
    net = tvm.Inception3(aux_logits=False, init_weights=False)
    net.Conv2d_1a_3x3.conv.padding = (1, 1)
    net.Mixed_6a = _InceptionBStride1(288)
    net.Mixed_7a = _InceptionDPadded(768)
    stem_pool = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    head = nn.Sequential(
        OrderedDict(
            Conv2d_1a_3x3=net.Conv2d_1a_3x3,
            Conv2d_2a_3x3=net.Conv2d_2a_3x3,
            Conv2d_2b_3x3=net.Conv2d_2b_3x3,
            maxpool1=nn.MaxPool2d(**stem_pool),
            Conv2d_3b_1x1=net.Conv2d_3b_1x1,
            Conv2d_4a_3x3=net.Conv2d_4a_3x3,
            maxpool2=nn.MaxPool2d(**stem_pool),
            **{name: getattr(net, name) for name in _INCEPTION_HEAD_BLOCKS},
        )
    )
    tail = nn.Sequential(OrderedDict((name, getattr(net, name)) for name in ("Mixed_7a", "Mixed_7b", "Mixed_7c")))
    return Backbone(head, tail, 768, 2048, _translate_by_name(("AuxLogits", "fc")))


# ---------------------------------------------------------------------- MobileNetV1
def _conv_bn(inp: int, out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True))


def _conv_dw(inp: int, out: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU (keys .0 .1 .3 .4)."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(inplace=True),
        nn.Conv2d(inp, out, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU(inplace=True),
    )


# (in, out, stride) of the 13 depthwise-separable blocks, width 1.0.
MOBILENET_BLOCKS = (
    (32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 1),
    (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1),
    (512, 1024, 2), (1024, 1024, 1),
)  # fmt: skip


def _translate_mobilenet(key: str) -> str | None:
    prefix, _, rest = key.partition(".")
    return rest if prefix == "model" else None


def mobilenet_v1() -> Backbone:
    """MobileNetV1 (ReLU): blocks 0..11 | the last two depthwise-separable blocks."""
    blocks = [_conv_bn(3, 32, 2)] + [_conv_dw(*spec) for spec in MOBILENET_BLOCKS]
    layers = nn.Sequential(*blocks)
    return Backbone(layers[:12], layers[12:], 512, 1024, _translate_mobilenet)


# ------------------------------------------------------------------------------ tiny
def _conv_bn_relu(inp: int, out: int) -> list[nn.Module]:
    return [nn.Conv2d(inp, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]


def tiny(layout: str = "wsol") -> Backbone:
    """A small CNN for the synthetic demos, fast on a CPU, with the tap at stride 4.

    wsol: tail = max-pool (the classifier's two 3x3 convs and 1x1 class conv complete
    it). wsss: the WSSS classifier is a bare 1x1 conv, so the tail carries the two 3x3
    conv-BN-ReLU blocks itself, at the tap's stride as ResNet50's layer4 is there.
    """
    _check_layout(layout)
    head = nn.Sequential(
        *_conv_bn_relu(3, 16), nn.MaxPool2d(2), *_conv_bn_relu(16, 32), nn.MaxPool2d(2), *_conv_bn_relu(32, 64)
    )
    if layout == "wsol":
        return Backbone(head, nn.Sequential(nn.MaxPool2d(2)), 64, 64, lambda key: key, classifier_width=64)
    tail = nn.Sequential(*_conv_bn_relu(64, 128), *_conv_bn_relu(128, 128))
    return Backbone(head, tail, 64, 128, lambda key: key)


BUILDERS: dict[str, Callable[[], Backbone]] = {
    "vgg": vgg16,
    "resnet": resnet50,
    "inception": inception_v3,
    "mobilenet": mobilenet_v1,
    "tiny": tiny,
}


def build_backbone(arch: str) -> Backbone:
    if arch not in BUILDERS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(BUILDERS)}")
    return BUILDERS[arch]()


# --------------------------------------------------------------------------- weights
@dataclass
class LoadReport:
    """Which keys of a weight file were used, which ignored, which model keys stayed untouched."""

    source: str
    used: list[str]
    ignored: list[str]
    missing: list[str]

    def __str__(self) -> str:
        def listing(names: list[str]) -> str:
            return f"{len(names)}: {', '.join(names[:8])}" + (" ..." if len(names) > 8 else "")

        lines = [f"loaded {len(self.used)} tensors from {self.source}"]
        if self.ignored:
            lines.append(f"  ignored {listing(self.ignored)}")
        if self.missing:
            lines.append(f"  not in the file {listing(self.missing)}")
        return "\n".join(lines)


def _backbone_keys(backbone: Backbone) -> dict[str, tuple[str, torch.Tensor]]:
    """Name inside head/tail -> ('head' | 'tail', the live tensor)."""
    keys = {}
    for part in ("head", "tail"):
        for name, tensor in getattr(backbone, part).state_dict(keep_vars=True).items():
            keys[name] = (part, tensor)
    return keys


def load_backbone_state(backbone: Backbone, state_dict: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Copy a torchvision-format (or original BAS) state dict into head and tail by name."""
    targets = _backbone_keys(backbone)
    used, ignored = [], []
    with torch.no_grad():
        for key, value in state_dict.items():
            name = backbone.translate_key(key) if isinstance(value, torch.Tensor) else None
            if name is None or name not in targets or targets[name][1].shape != value.shape:
                ignored.append(key)
                continue
            targets[name][1].copy_(value)
            used.append(name)
    missing = [n for n in targets if n not in set(used) and not n.endswith("num_batches_tracked")]
    return LoadReport(source, used, ignored, missing)


def load_backbone_by_position(backbone: Backbone, state_dict: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Copy tensors in order, skipping ``num_batches_tracked`` (the classic MobileNetV1 file)."""
    targets = [(n, t) for n, (_, t) in _backbone_keys(backbone).items() if not n.endswith("num_batches_tracked")]
    values = [
        (k, v) for k, v in state_dict.items() if isinstance(v, torch.Tensor) and not k.endswith("num_batches_tracked")
    ]
    used, ignored = [], []
    with torch.no_grad():
        for (name, target), (key, value) in zip(targets, values):
            if target.shape != value.shape:
                raise CheckpointError(
                    f"{source}: tensor #{len(used)} {key!r} has shape {tuple(value.shape)}, "
                    f"but {name!r} needs {tuple(target.shape)}; not a MobileNetV1 (ReLU, width 1.0) file"
                )
            target.copy_(value)
            used.append(name)
    ignored = [k for k, _ in values[len(targets) :]]
    missing = [n for n, _ in targets[len(values) :]]
    return LoadReport(source, used, ignored, missing)


# The ImageNet weights the original used, as torchvision weight enums.
IMAGENET_WEIGHTS = {
    "vgg": "VGG16_Weights.IMAGENET1K_V1",
    "resnet": "ResNet50_Weights.IMAGENET1K_V1",
    "inception": "Inception_V3_Weights.IMAGENET1K_V1",
}


def _imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """Download (into the torch hub cache) the torchvision ImageNet weights of ``arch``."""
    if arch == "mobilenet":
        try:
            import timm
        except ImportError:
            raise RuntimeError(
                "torchvision has no MobileNetV1: pass the classic file with "
                "--pretrained path/to/mobilenet_v1_with_relu_69_5.pth, or `pip install timm` "
                "to use timm's mobilenetv1_100"
            ) from None
        log.warning(
            "MobileNetV1 ImageNet weights from timm's mobilenetv1_100: same shapes, but trained "
            "with ReLU6; the paper used mobilenet_v1_with_relu_69_5.pth (pass it by path)"
        )
        return timm.create_model("mobilenetv1_100", pretrained=True).state_dict()
    if arch not in IMAGENET_WEIGHTS:
        raise ValueError(f"there are no ImageNet weights for {arch!r}")
    return tvm.get_weight(IMAGENET_WEIGHTS[arch]).get_state_dict(progress=True)


def load_imagenet_weights(arch: str, backbone: Backbone, pretrained: str) -> LoadReport:
    """``pretrained`` is "imagenet" (torchvision enums) or a path to a state dict file. A file
    that holds no state dict, or none of whose tensors fits, stops with a ``CheckpointError``."""
    if pretrained == "imagenet":
        state_dict, source = _imagenet_state_dict(arch), f"{arch} ImageNet weights"
    else:
        state_dict, source = load_torch_file(pretrained, f"a state dict of {arch} weights"), pretrained
        if isinstance(state_dict.get("state_dict"), dict):
            state_dict = state_dict["state_dict"]
    by_position = arch == "mobilenet"
    report = (load_backbone_by_position if by_position else load_backbone_state)(backbone, state_dict, source)
    if not report.used:
        counts = [(report.ignored, "unexpected"), (report.missing, "missing")]
        examples = "; ".join(f"{len(keys)} {kind} (e.g. {keys[0]})" for keys, kind in counts if keys)
        expected = "MobileNetV1's tensors in order" if by_position else "torchvision key names"
        raise CheckpointError(
            f"{source} does not fit the {arch} backbone: no tensor matches; {examples}; expected {expected}"
        )
    return report
