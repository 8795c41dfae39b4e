"""DeepLabv2 with ResNet-101, the segmentation net the WSSS papers train on their pseudo
masks (BAS's 69.6 val mIoU), as kazuto1011/deeplab-pytorch defines and trains it.

The modules carry that repository's names, so the state dict of ``deeplabv2_resnet101`` is its
checkpoint layout key for key (``checkpoint_final.pth``: ``base.layer1.conv1.conv.weight`` ...
``base.aspp.c3.bias``): its files load here as they are, and ours load there.

- The backbone is the MSRA (Caffe) ResNet-101: ``layer1`` is the stem (7x7 conv at stride 2,
  then a 3x3 max-pool at stride 2 that rounds up), ``layer2..5`` the bottleneck layers, the
  stride on each first block's 1x1 ``reduce`` conv; ``layer3`` halves the resolution,
  ``layer4`` and ``layer5`` dilate (2, 4) instead: logits at stride 8.
- ASPP: four 3x3 convs with bias at rates 6, 12, 18, 24 on the last features, summed.
- MSC: the net on the image and on its 0.5 and 0.75 rescales; the smaller logits resized
  to the largest and fused by a pixel-wise max. Training scores all four outputs.
- Inputs are Caffe's: BGR, 0-255, minus the mean colour, no division by a deviation
  (``caffe_input`` turns the project's ImageNet-normalized RGB tensors into them).

The training recipe (``RECIPE``, ``param_groups``, ``sgd``, ``freeze_batchnorm``,
``msc_loss``, ``init_from_coco``) is deeplab-pytorch's VOC configuration.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from bas.checkpoints import load_state_dict_checked, load_torch_file
from bas.data import IMAGENET_MEAN, IMAGENET_STD
from bas.errors import CheckpointError
from WSSS.datasets.samples import IGNORE

log = logging.getLogger(__name__)

ARCH = "deeplabv2_resnet101"
RESNET101_BLOCKS = (3, 4, 23, 3)  # bottlenecks in layer2..layer5
ATROUS_RATES = (6, 12, 18, 24)
MSC_SCALES = (0.5, 0.75)
MEAN_BGR = (104.008, 116.669, 122.675)
# The key every file of the layout holds first and the one its ASPP begins with.
FIRST_KEY, ASPP_KEY = "base.layer1.conv1.conv.weight", "base.aspp.c0.weight"


@dataclass(frozen=True)
class Recipe:
    """deeplab-pytorch's training and test settings on VOC (configs/voc12.yaml, main.py)."""

    lr: float = 2.5e-4  # the backbone's; the ASPP's weights 10x, its biases 20x
    momentum: float = 0.9
    weight_decay: float = 5e-4  # none on the ASPP's biases
    poly_power: float = 0.9
    poly_every: int = 10  # the rate changes every 10 iterations, not every one
    iterations: int = 20_000
    batch: int = 5  # images per forward pass ...
    accumulation: int = 2  # ... and passes per step: batches of 10, each pass's loss / 2
    crop: int = 321
    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)  # one drawn per image, not a range
    flip: bool = True
    init: str = "deeplabv1_resnet101-coco.pth"  # DeepLab's COCO-trained Caffe model, converted

    def poly_step(self, step: int) -> int:
        """The step whose poly rate step ``step`` (from 0) trains with: the last multiple of
        ``poly_every``, for ``bas.optim.set_poly_lr(optimizer, lr, poly_step(step),
        iterations, poly_power)``."""
        return step - step % self.poly_every


RECIPE = Recipe()


class ConvBnReLU(nn.Sequential):
    """A conv without bias, its BatchNorm and (optionally) a ReLU: the unit every conv of the
    MSRA ResNet comes in, named ``conv`` and ``bn`` as the layout."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, dilation: int, relu: bool = True) -> None:
        padding = dilation * (kernel // 2)
        super().__init__(
            OrderedDict(
                [
                    ("conv", nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation, bias=False)),
                    ("bn", nn.BatchNorm2d(out_ch)),
                ]
            )
        )
        if relu:
            self.add_module("relu", nn.ReLU())


class Bottleneck(nn.Module):
    """1x1 ``reduce`` (carrying the stride, as MSRA's ResNet), 3x3 ``conv3x3`` (dilated),
    1x1 ``increase``; the input added back, through a 1x1 ``shortcut`` where the width or
    the stride changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dilation: int) -> None:
        super().__init__()
        mid_ch = out_ch // 4
        self.reduce = ConvBnReLU(in_ch, mid_ch, 1, stride, 1)
        self.conv3x3 = ConvBnReLU(mid_ch, mid_ch, 3, 1, dilation)
        self.increase = ConvBnReLU(mid_ch, out_ch, 1, 1, 1, relu=False)
        first = in_ch != out_ch or stride != 1
        self.shortcut = ConvBnReLU(in_ch, out_ch, 1, stride, 1, relu=False) if first else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.increase(self.conv3x3(self.reduce(x))) + self.shortcut(x))


def res_layer(blocks: int, in_ch: int, out_ch: int, stride: int, dilation: int) -> nn.Sequential:
    """``blocks`` bottlenecks named ``block1..``; only the first changes width and stride."""
    layer = nn.Sequential()
    for i in range(blocks):
        block = Bottleneck(out_ch if i else in_ch, out_ch, 1 if i else stride, dilation)
        layer.add_module(f"block{i + 1}", block)
    return layer


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling as DeepLabv2 has it: one 3x3 conv with bias per rate
    (``c0..c3``), each straight to the classes, their outputs summed."""

    def __init__(self, in_ch: int, num_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        for i, rate in enumerate(rates):
            conv = nn.Conv2d(in_ch, num_classes, 3, padding=rate, dilation=rate, bias=True)
            nn.init.normal_(conv.weight, mean=0, std=0.01)  # the reference's start, kept by init_from_coco
            nn.init.zeros_(conv.bias)
            self.add_module(f"c{i}", conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(conv(x) for conv in self.children())


class DeepLabV2(nn.Sequential):
    """The single-scale net: N x 3 x H x W Caffe inputs -> N x C x h x w logits, h =
    ceil(H / 8) for the stem's rounding (65 -> 9, 321 -> 41)."""

    def __init__(
        self, num_classes: int, blocks: Sequence[int] = RESNET101_BLOCKS, rates: Sequence[int] = ATROUS_RATES
    ) -> None:
        stem = nn.Sequential(
            OrderedDict([("conv1", ConvBnReLU(3, 64, 7, 2, 1)), ("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))])
        )
        super().__init__(
            OrderedDict(
                [
                    ("layer1", stem),
                    ("layer2", res_layer(blocks[0], 64, 256, 1, 1)),
                    ("layer3", res_layer(blocks[1], 256, 512, 2, 1)),
                    ("layer4", res_layer(blocks[2], 512, 1024, 1, 2)),
                    ("layer5", res_layer(blocks[3], 1024, 2048, 1, 4)),
                    ("aspp", ASPP(2048, num_classes, rates)),
                ]
            )
        )


class DeepLabV2MSC(nn.Module):
    """``base`` on the image and on its ``scales`` rescales (bilinear). Training mode returns
    [full, 0.5, 0.75, max]: each scale's own logits and their pixel-wise max at the full
    scale's size; eval mode the max alone.

    After ``freeze_batchnorm`` the BatchNorms stay in eval mode through ``train()``."""

    def __init__(self, base: DeepLabV2, scales: Sequence[float] = MSC_SCALES) -> None:
        super().__init__()
        self.base, self.scales = base, tuple(scales)
        self.batchnorm_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        full = self.base(x)
        rescaled = [F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False) for s in self.scales]
        scaled = [self.base(image) for image in rescaled]
        resized = [F.interpolate(out, size=full.shape[-2:], mode="bilinear", align_corners=False) for out in scaled]
        fused = torch.stack([full, *resized]).amax(0)
        return [full, *scaled, fused] if self.training else fused

    def train(self, mode: bool = True) -> DeepLabV2MSC:
        super().train(mode)
        if self.batchnorm_frozen:
            freeze_batchnorm(self)
        return self


def deeplabv2_resnet101(num_classes: int, blocks: Sequence[int] = RESNET101_BLOCKS) -> DeepLabV2MSC:
    """DeepLabv2-ResNet101 with multi-scale inputs, randomly initialized. ``blocks``: the
    bottlenecks of layer2..layer5 (fewer give a lighter net with the same key pattern)."""
    return DeepLabV2MSC(DeepLabV2(num_classes, blocks))


def caffe_input(images: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W ImageNet-normalized RGB (the project's image tensors) -> the net's
    input: BGR in 0-255 minus ``MEAN_BGR`` (exact up to float rounding)."""
    mean = images.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = images.new_tensor(IMAGENET_STD)[:, None, None]
    rgb = (images * std + mean) * 255
    return rgb.flip(-3) - images.new_tensor(MEAN_BGR)[:, None, None]


class ProjectInputs(nn.Module):
    """The MSC net in eval mode as the project's inference calls a segmentation net:
    ImageNet-normalized RGB in, ``{"out": logits}`` out (``WSSS.segmentation.predict``)."""

    def __init__(self, net: DeepLabV2MSC) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.net(caffe_input(images))}


def is_layout(state_dict: dict) -> bool:
    """Whether a state dict is one of deeplab-pytorch's DeepLabv2 MSC (by its keys)."""
    return FIRST_KEY in state_dict and ASPP_KEY in state_dict


def load_layout(state_dict: dict, source: str) -> tuple[DeepLabV2MSC, int]:
    """The net a state dict of the layout holds, and its number of classes: the depth is
    read from the block keys, the classes from the ASPP (a file that does not fit the net
    so built stops with ``load_state_dict_checked``'s line). BatchNorm step counters absent
    from the file (PyTorch before 0.4.1 wrote none) start at 0: nothing reads them."""
    blocks = []
    for layer in range(2, 6):
        prefix = f"base.layer{layer}.block"
        numbers = {key[len(prefix) :].split(".")[0] for key in state_dict if key.startswith(prefix)}
        blocks.append(max((int(n) for n in numbers if n.isdigit()), default=0))
    num_classes = state_dict[ASPP_KEY].shape[0]
    model = deeplabv2_resnet101(num_classes, blocks)
    own = model.state_dict()
    counters = {k: own[k] for k in own if k.endswith(".num_batches_tracked") and k not in state_dict}
    load_state_dict_checked(model, {**state_dict, **counters}, source, f"DeepLabv2-ResNet of blocks {blocks}")
    return model, num_classes


def freeze_batchnorm(model: nn.Module) -> None:
    """BatchNorm as the reference trains it: running statistics and affine parameters kept
    from the initialization (eval mode, no gradient). A ``DeepLabV2MSC`` keeps them frozen
    through later ``train()`` calls."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            for param in module.parameters():
                param.requires_grad_(False)
    if isinstance(model, DeepLabV2MSC):
        model.batchnorm_frozen = True


def param_groups(model: DeepLabV2MSC, lr: float = RECIPE.lr, weight_decay: float = RECIPE.weight_decay) -> list[dict]:
    """The reference's three groups (Caffe's lr_mult, decay_mult): the backbone's conv
    weights at ``lr``, the ASPP's weights at 10x, its biases at 20x without weight decay.
    Each group holds its ``lr_multiplier`` (``bas.optim.set_poly_lr``) and its weight decay;
    BatchNorm parameters are never trained."""
    backbone, aspp_weights, aspp_biases = [], [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if name.startswith("base.aspp."):
                aspp_weights.append(module.weight)
                aspp_biases.append(module.bias)
            else:
                backbone.append(module.weight)
    groups = [(backbone, 1, weight_decay), (aspp_weights, 10, weight_decay), (aspp_biases, 20, 0.0)]
    return [
        {"params": params, "lr": lr * multiplier, "lr_multiplier": multiplier, "weight_decay": decay}
        for params, multiplier, decay in groups
    ]


def sgd(model: DeepLabV2MSC, recipe: Recipe = RECIPE) -> torch.optim.SGD:
    """SGD with momentum (not Nesterov) over ``param_groups``."""
    return torch.optim.SGD(param_groups(model, recipe.lr, recipe.weight_decay), lr=recipe.lr, momentum=recipe.momentum)


class TrainCrop:
    """(PIL image, H x W labels) -> (3 x crop x crop image, ImageNet-normalized as the
    project's tensors; crop x crop uint8 labels): the reference's augmentation, in its order.
    Both rescaled by one of ``scales`` (to int(side x scale); the image bilinear as OpenCV, in
    float, the labels nearest as PIL), padded at the bottom and right up to the crop (the image
    with DeepLab's mean colour, which ``caffe_input`` turns into 0; the labels with ``IGNORE``),
    cropped at one random place, flipped or not. Random draws come from torch's generator
    (``bas.sampling.SeededItems``)."""

    def __init__(self, crop: int = RECIPE.crop, scales: Sequence[float] = RECIPE.scales, flip: bool = RECIPE.flip):
        self.crop, self.scales, self.flip = crop, tuple(scales), flip

    def __call__(self, image: Image.Image, labels: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.scales[int(torch.randint(len(self.scales), ()))]
        width, height = (int(side * scale) for side in image.size)
        rgb = cv2.resize(np.asarray(image, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        mask = np.asarray(labels.resize((width, height), Image.NEAREST))  # H x W
        padded_h, padded_w = max(height, self.crop), max(width, self.crop)
        canvas = np.empty((padded_h, padded_w, 3), np.float32)
        canvas[...] = MEAN_BGR[::-1]
        canvas[:height, :width] = rgb
        label_canvas = np.full((padded_h, padded_w), IGNORE, np.uint8)
        label_canvas[:height, :width] = mask
        top = int(torch.randint(padded_h - self.crop + 1, ()))
        left = int(torch.randint(padded_w - self.crop + 1, ()))
        inside = (slice(top, top + self.crop), slice(left, left + self.crop))
        rgb, mask = torch.from_numpy(canvas[inside]).permute(2, 0, 1), torch.from_numpy(label_canvas[inside])
        if self.flip and bool(torch.randint(2, ())):
            rgb, mask = rgb.flip(-1), mask.flip(-1)
        mean = rgb.new_tensor(IMAGENET_MEAN)[:, None, None]
        std = rgb.new_tensor(IMAGENET_STD)[:, None, None]
        return (rgb / 255 - mean) / std, mask.contiguous()  # 3 x crop x crop, crop x crop


def resize_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """N x H x W label maps -> N x h x w by nearest neighbour at pixel centres (each output
    pixel takes the label under its centre): PIL's NEAREST, which the reference uses."""
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest-exact")[:, 0].long()


def msc_loss(outputs: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """The reference's loss: cross-entropy (``IGNORE`` left out, mean over the other
    pixels) of each MSC output against the labels resized to its size, summed over the
    outputs. With gradient accumulation the caller divides each pass's loss by the passes."""
    return sum(
        F.cross_entropy(out, resize_labels(labels, out.shape[-2:]), ignore_index=IGNORE) for out in outputs
    )


def init_from_coco(model: DeepLabV2MSC, path: str | Path) -> list[str]:
    """The training's initialization: DeepLab's COCO-trained ResNet-101, as deeplab-pytorch
    converts it (``deeplabv1_resnet101-coco.pth``, keys without ``base.``), into
    ``model.base``. Its classifier does not fit the ASPP, which keeps its initialization,
    as in the reference; every other tensor must be in the file. Returns the skipped keys."""
    what = "DeepLab's COCO-trained ResNet-101 (deeplabv1_resnet101-coco.pth)"
    state = {key.removeprefix("base."): value for key, value in load_torch_file(path, what).items()}
    own = model.base.state_dict()
    fitting = {
        key: state[key]
        for key in own
        if isinstance(state.get(key), torch.Tensor) and state[key].shape == own[key].shape
    }
    skipped = [key for key in own if key not in fitting]
    backbone_missing = [key for key in skipped if not key.startswith("aspp.")]
    if backbone_missing:
        raise CheckpointError(
            f"{path}: not {what} ({len(backbone_missing)} backbone tensors missing or of another shape, "
            f"e.g. {backbone_missing[0]})"
        )
    model.base.load_state_dict(fitting, strict=False)
    log.info(
        "%s: %d tensors loaded, %d of the ASPP skipped (not in the file or of another shape)",
        path,
        len(fitting),
        len(skipped),
    )
    return skipped
