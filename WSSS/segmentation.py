"""The segmentation net that the pseudo masks train (stage train_seg), its weights file and
its inference (stage eval_seg): beyond the original BAS code, which stops at the masks, so
that image labels in gives a segmentation model out, as the paper's DeepLab step.

The nets are torchvision's segmentation models, unchanged, so that their state dicts are
torchvision's and their code is read where it is documented:

- ``deeplabv3_resnet50`` (the default on VOC) and ``deeplabv3_resnet101``: DeepLabV3, ASPP
  on a dilated ResNet (features at stride 8), from ImageNet backbone weights;
- ``lraspp_mobilenet_v3_large`` (the CPU demo's) and ``deeplabv3_mobilenet_v3_large``.

Only the backbone starts from ImageNet weights (torchvision's weight enums, downloaded into
torch's hub cache on first use, or a torchvision-format classifier state dict by path):
torchvision's whole-model weights were trained on COCO with VOC's masks, which would leak
full supervision into a weakly supervised result. The auxiliary classifier is off: it helps
deep backbones only a little (torchvision trains with it at weight 0.5) and the WSSS
literature's DeepLab step does without it.

Inference (``predict``) is the usual DeepLab evaluation: at each scale the image and its
mirror image go through the net as one batch of two, the logits are resized to the image's
size (bilinear), turned into probabilities (softmax) and averaged over scales and mirrors;
``WSSS.crf.crf_refine`` optionally sharpens them with DeepLab's dense CRF.

``load_segmentation_model`` also reads the DeepLabv2-ResNet101 of the WSSS papers in
kazuto1011/deeplab-pytorch's checkpoint layout (``WSSS.deeplabv2``), recognised by its keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm
from torchvision.models import segmentation as tvs

from bas.checkpoints import load_state_dict_checked, read_checkpoint
from bas.errors import CheckpointError
from WSSS import deeplabv2

# arch -> (torchvision builder, the ImageNet weights of its backbone)
ARCHS = {
    "deeplabv3_resnet50": (tvs.deeplabv3_resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
    "deeplabv3_resnet101": (tvs.deeplabv3_resnet101, tvm.ResNet101_Weights.IMAGENET1K_V1),
    "deeplabv3_mobilenet_v3_large": (tvs.deeplabv3_mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1),
    "lraspp_mobilenet_v3_large": (tvs.lraspp_mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1),
}

# Every net stage train_seg trains: torchvision's, and the WSSS papers' DeepLabv2.
ARCH_NAMES = (*ARCHS, deeplabv2.ARCH)


def build_segmentation_model(
    arch: str, num_classes: int, pretrained: str | None = None, blocks: Sequence[int] | None = None
) -> nn.Module:
    """torchvision's ``arch`` with ``num_classes`` outputs (the background included) and no
    auxiliary classifier; ``model(x)["out"]`` is N x num_classes x H x W logits for an
    N x 3 x H x W input. ``pretrained``: None (random initialization), "imagenet" (the
    backbone's torchvision weights) or the path of a torchvision-format classifier state
    dict of the backbone (for machines without a network).

    ``deeplabv2_resnet101``: the bare MSC net of ``WSSS.deeplabv2`` (Caffe inputs, a list of
    outputs in training mode), ``pretrained`` the path of DeepLab's COCO-trained ResNet-101
    (``init_from_coco``) or None; ``blocks``: its depth (ResNet-101's unless given)."""
    if arch == deeplabv2.ARCH:
        net = deeplabv2.deeplabv2_resnet101(num_classes, blocks or deeplabv2.RESNET101_BLOCKS)
        if pretrained is not None:
            deeplabv2.init_from_coco(net, pretrained)
        return net
    if arch not in ARCHS:
        raise ValueError(f"unknown segmentation arch {arch!r}; choose one of {', '.join(ARCH_NAMES)}")
    builder, imagenet = ARCHS[arch]
    backbone_weights = imagenet if pretrained == "imagenet" else None
    kwargs = {} if arch.startswith("lraspp") else {"aux_loss": False}
    model = builder(weights=None, weights_backbone=backbone_weights, num_classes=num_classes, **kwargs)
    if pretrained not in (None, "imagenet"):
        load_backbone_file(model, Path(pretrained))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            # torchvision's MobileNetV3 keeps 1 % of each batch's statistics (made for 600
            # ImageNet epochs): after a run of a few hundred or thousand steps the running
            # statistics would still be mostly their initial values, and eval mode would
            # normalize with them. 10 %, PyTorch's default and the ResNets', tracks the batches.
            module.momentum = 0.1
    return model


def load_backbone_file(model: nn.Module, path: Path) -> None:
    """A torchvision classifier's state dict (``resnet50()``, ``mobilenet_v3_large()``)
    into the segmentation model's backbone: the classifier's own head is left out, and
    MobileNet's ``features.`` prefix dropped (the segmentation backbone holds the feature
    blocks themselves). Every backbone tensor must be in the file."""
    state = read_checkpoint(path)["model"]
    state = {key.removeprefix("features."): value for key, value in state.items()}
    own = model.backbone.state_dict()
    missing = [key for key in own if key not in state or state[key].shape != own[key].shape]
    if missing:
        raise CheckpointError(
            f"{path}: not the ImageNet weights of this backbone ({len(missing)} of its {len(own)} tensors missing "
            f"or of another shape, e.g. {missing[0]}); expected a torchvision classifier's state dict"
        )
    model.backbone.load_state_dict({key: state[key] for key in own})


def logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W -> N x C x H x W: the ``out`` of a torchvision segmentation model."""
    return model(images)["out"]


@torch.no_grad()
def predict(model: nn.Module, images: Sequence[torch.Tensor], size: Sequence[int], flip: bool = True) -> torch.Tensor:
    """Class probabilities of one image from its scaled copies, each with its mirror image
    (``WSSS.datasets.MultiScaleSet``: per scale 2 x 3 x h x w): the softmax of the logits
    resized to ``size`` (H, W), the mirror's flipped back, averaged over the 2 x S of them
    (over the S copies alone, without ``flip``). Returns C x H x W on the model's device; the
    model is put in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    views = 2 if flip else 1
    total = None
    for pair in images:
        scores = logits(model, pair[:views].to(device))  # views x C x h x w
        probs = F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False).softmax(1)
        summed = probs[0] + probs[1].flip(-1) if flip else probs[0]  # C x H x W
        total = summed if total is None else total + summed
    return total / (views * len(images))


def load_segmentation_model(path: str | Path, device: torch.device) -> tuple[nn.Module, dict]:
    """The net saved by stage train_seg at ``path``, or a DeepLabv2 in deeplab-pytorch's
    layout (recognised by its keys, no ``arch`` needed: ``WSSS.deeplabv2``), on ``device``
    in eval mode, and the file's other entries (arch, num_classes, classes, ...)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no segmentation net there; train it first (stage train_seg)")
    checkpoint = read_checkpoint(path)
    entries = {k: v for k, v in checkpoint.items() if k != "model"}
    if deeplabv2.is_layout(checkpoint["model"]):
        net, num_classes = deeplabv2.load_layout(checkpoint["model"], str(path))
        model = deeplabv2.ProjectInputs(net)
        return model.to(device).eval(), {**entries, "arch": deeplabv2.ARCH, "num_classes": num_classes}
    if "arch" not in checkpoint or checkpoint["arch"] not in ARCHS or "num_classes" not in checkpoint:
        keys = list(checkpoint["model"])
        found = f"entries {', '.join(entries)} and " if entries else ""
        raise CheckpointError(
            f"{path}: not a segmentation net of stage train_seg (no known 'arch', 'num_classes') nor a DeepLabv2 "
            f"state dict of deeplab-pytorch ({deeplabv2.FIRST_KEY}, ..., {deeplabv2.ASPP_KEY}, ...); "
            f"found {found}{len(keys)} weights: {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
        )
    model = build_segmentation_model(checkpoint["arch"], checkpoint["num_classes"])
    load_state_dict_checked(model, checkpoint["model"], str(path))
    return model.to(device).eval(), entries
