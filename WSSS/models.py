"""The WSSS nets: the original's multi-label BAS net and IRN's CAM net, their losses, and
checkpoint loading.

Both are a backbone at stride 16 (``bas.backbones.resnet50(layout="wsss")``: layer3
keeps its stride 2, layer4 runs at stride 1, nothing between them) with a 1x1 class conv
without bias, ``classifier_cls``, on layer4.

The BAS net adds ``classifier_loc`` (3x3 conv without bias + sigmoid) on layer3, the
tap, and trains with the AMC of ``bas.amc``. Images carry several labels, so each step
one positive class per image, drawn at random, plays the ground truth of WSOL. Where the
original WSSS code differs from its WSOL code, we follow it: score_fg weights a
**detached** class map at its own resolution (so CE(score_fg) trains only classifier_loc
and the layers up to layer3), the saturated bas value is 1, and the classification term
is a multi-label cross-entropy.

IRN's CAM net (Ahn et al., CVPR 2019) is the plain classifier whose maps BAS's seeds are
fused with: on ResNet50, BatchNorm always normalizes with its (ImageNet) running
statistics, and the stem, layer1 and layer2 never train (IRN freezes conv1 and bn1 and
detaches layer2's output). The demo's tiny net starts from random weights, so it trains
every layer and its BatchNorm as usual: with statistics fixed at their initial values it
does not learn at all.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bas.amc import GeneratorOutput, activation_map_constraint, bas_loss, pick
from bas.backbones import Backbone, CutNet, load_imagenet_weights, resnet50, tiny
from bas.checkpoints import Checkpoint, load_state_dict_checked, read_checkpoint
from bas.errors import CheckpointError

log = logging.getLogger(__name__)

# The backbones, cut for WSSS: tap and class map at the same stride (16 for ResNet50;
# 4 for ``tiny``, the CPU demo's small CNN).
ARCHS: dict[str, Callable[[], Backbone]] = {"resnet50": partial(resnet50, "wsss"), "tiny": partial(tiny, "wsss")}
# Their names in bas.backbones' table of ImageNet weights.
IMAGENET_ARCH = {"resnet50": "resnet", "tiny": "tiny"}


def draw_positive(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One class per image, uniform among its positives (``labels > 0.5``): B x C -> B (long).

    The uniform numbers come from ``generator`` on the CPU, so that a seed gives the
    same classes on every device.
    """
    positives = labels > 0.5  # B x C
    count = positives.sum(1)  # B
    if not bool((count > 0).all()):
        raise ValueError("an image without a positive label: the AMC needs one of its classes")
    uniform = torch.rand(labels.shape[0], generator=generator).to(labels.device)  # B in [0, 1)
    k = torch.minimum((uniform * count).long(), count - 1)  # B: which positive, 0-based
    # The k-th positive sits where the running count of positives first exceeds k.
    return (positives.cumsum(1) <= k[:, None]).sum(1)


def _xavier_init(model: nn.Module) -> None:
    """The original BAS net's initialisation: xavier-uniform convs, BatchNorm 1 / 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class MultiLabelNet(CutNet):
    """Backbone + ``classifier_cls`` (1x1, no bias): what the BAS net and the CAM net share."""

    def __init__(self, arch: str, backbone: Backbone, num_classes: int) -> None:
        super().__init__(arch, backbone, num_classes)
        self.classifier_cls = nn.Conv2d(backbone.tail_channels, num_classes, 1, bias=False)


class BASNet(MultiLabelNet):
    """The multi-label BAS net: class map A on layer4, foreground maps M on layer3.

    The caller gives the class that plays the ground truth of each image (``draw_positive``
    from a generator of its own: the trainer's is keyed by seed, epoch, rank and step, so a
    resumed run draws the same classes).
    """

    def __init__(self, arch: str, backbone: Backbone, num_classes: int) -> None:
        super().__init__(arch, backbone, num_classes)
        self.classifier_loc = nn.Sequential(
            nn.Conv2d(backbone.tap_channels, num_classes, 3, padding=1, bias=False), nn.Sigmoid()
        )
        _xavier_init(self)

    def forward(self, images: torch.Tensor, labels: torch.Tensor, positive: torch.Tensor) -> GeneratorOutput:
        """images: B x 3 x H x W; labels: B x C multi-hot, as the CAM net is called; positive:
        B (long), the class each image's AMC runs on, one of its labels. ``out.positive`` holds it."""
        features = self.head(images)  # B x Ct x h x w, h = H/16 for ResNet50 (H/4 for tiny)
        class_map = self.classifier_cls(self.tail(features))  # B x C x h x w
        fg_map = pick(self.classifier_loc(features), positive)[:, None]  # B x 1 x h x w
        return activation_map_constraint(
            (self.tail, self.classifier_cls),
            features,
            class_map,
            fg_map,
            positive,
            saturated_bas=1.0,
            detach_fg_class_map=True,
        )

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        """M of every class: B x 3 x H x W -> B x C x h x w in [0, 1], at the tap's stride (no tail needed)."""
        return self.classifier_loc(self.head(images))


# Head modules of IRN's CAM net that never train, and whether BatchNorm keeps its running
# statistics, per arch: ResNet50's head is conv1, bn1, relu, maxpool, layer1, layer2, layer3.
FROZEN_HEAD_MODULES = {"resnet50": 6, "tiny": 0}
FIXED_BATCHNORM = {"resnet50": True, "tiny": False}


class CAMNet(MultiLabelNet):
    """IRN's CAM net: a multi-label classifier whose class activation maps are the seeds.

    On ResNet50, BatchNorm layers stay in eval mode whatever ``train()`` is told, so they
    normalize with their running statistics and never update them (IRN's FixedBatchNorm;
    SyncBatchNorm layers made from them too); the stem, layer1 and layer2 are frozen, as
    IRN's (conv1 and bn1 frozen, layer2's output detached: nothing below it trains), so
    their parameters never reach the optimizer or DDP. The affine parameters of layer3's
    and layer4's BatchNorm train, as IRN's do.
    """

    def __init__(self, arch: str, backbone: Backbone, num_classes: int) -> None:
        super().__init__(arch, backbone, num_classes)
        self.head[: FROZEN_HEAD_MODULES[arch]].requires_grad_(False)
        self.fixed_batchnorm = FIXED_BATCHNORM[arch]
        self.train()

    def train(self, mode: bool = True) -> CAMNet:
        super().train(mode)
        if self.fixed_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> GeneratorOutput:
        """Logits only (``out.score``, B x C): the CAM net's loss needs nothing else.
        ``labels`` is accepted so that both nets train through the same call."""
        features = self.tail(self.head(images))  # B x Cf x h x w
        # GAP first, then the 1x1 conv: the GAP of the class map, as IRN computes it.
        return GeneratorOutput(score=self.classifier_cls(features.mean((2, 3), keepdim=True)).flatten(1))

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        """relu(CAM) of every class: B x 3 x H x W -> B x C x h x w (h = H/16 for ResNet50)."""
        return F.relu(self.classifier_cls(self.tail(self.head(images))))


METHODS = {"bas": BASNet, "cam": CAMNet}


def build_model(
    method: str, num_classes: int = 20, pretrained: str | Path | None = None, arch: str = "resnet50"
) -> MultiLabelNet:
    """The BAS net (``method="bas"``) or IRN's CAM net (``"cam"``) on ``arch``: "resnet50",
    or "tiny" for the CPU demo.

    pretrained: None (random init), "imagenet" (torchvision's ResNet50 weights, through
    its cache) or a path to a torchvision-format state dict.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    backbone = ARCHS[arch]()
    model = METHODS[method](arch, backbone, num_classes)
    if pretrained is not None:
        log.info("%s", load_imagenet_weights(IMAGENET_ARCH[arch], backbone, str(pretrained)))
    return model


# ----------------------------------------------------------------------------- losses
def multilabel_cross_entropy(score: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The original BAS net's classification loss: B x C logits, B x C multi-hot -> scalar.

    For every positive class c of an image, a softmax cross-entropy of c against the
    image's negative classes only (the other positives left out); the sum over an image's
    positives, averaged over the batch (the original's per-image mean weighted by the
    number of positives).
    """
    positives = labels > 0.5  # B x C
    negatives = score.masked_fill(positives, float("-inf")).logsumexp(1, keepdim=True)  # B x 1
    ce = torch.logaddexp(score, negatives) - score  # B x C: -log softmax of c over {c} U negatives
    return ce.masked_fill(~positives, 0.0).sum() / score.shape[0]


def multilabel_bas_loss(
    out: GeneratorOutput, labels: torch.Tensor, positive: torch.Tensor, alpha: float = 0.2, beta: float = 1.2
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Multi-label CE(score) + alpha CE(score_fg, positive) + mean(bas) + beta mean(area);
    the parts, detached, for logging. labels: B x C multi-hot; positive: B, ``out.positive``."""
    return bas_loss(out, positive, alpha, beta, ce=multilabel_cross_entropy(out.score, labels))


def multilabel_soft_margin_loss(
    out: GeneratorOutput, labels: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The CAM net's loss, shaped like the BAS net's: (total, detached parts)."""
    loss = F.multilabel_soft_margin_loss(out.score, labels)
    return loss, {"soft_margin": loss.detach()}


# ------------------------------------------------------------------------ checkpoints
# IRN's CAM net holds its ResNet50 three times: as ``resnet50.*``, as ``stage1..4.*``
# (stage1 = conv1, bn1, relu, maxpool, layer1; stage2..4 wrap layer2..4) and as
# ``backbone.0..3.*`` (the stages again); its classifier as ``classifier.*`` and
# ``newly_added.0.*``.
_IRN_STAGE1 = {"0": "conv1", "1": "bn1", "4": "layer1"}


def _torchvision_name(key: str) -> str:
    """A key of the original BAS net or of IRN's CAM net, renamed as torchvision's ResNet50
    names it (``classifier_cls`` for the class conv); other keys as they are."""
    first, _, rest = key.partition(".")
    if first == "backbone" and rest.partition(".")[0].isdigit():
        index, _, rest = rest.partition(".")
        first = f"stage{int(index) + 1}"
    index, _, inner = rest.partition(".")
    if first == "resnet50":
        return rest
    if first == "stage1" and index in _IRN_STAGE1:
        return f"{_IRN_STAGE1[index]}.{inner}"
    if first in ("stage2", "stage3", "stage4") and index == "0":
        return f"layer{first[-1]}.{inner}"
    if first == "classifier":
        return f"classifier_cls.{rest}"
    if first == "newly_added" and index == "0":
        return f"classifier_cls.{inner}"
    return key


def convert_original_state_dict(
    model: MultiLabelNet, state_dict: dict[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Rename the keys of the original BAS net (``layer4.0.conv1.weight``) or of IRN's CAM
    net (``stage4.0.0.conv1.weight``, and its aliases) to ours (``tail.layer4.0.conv1.weight``).
    Aliases of one tensor must agree. Keys that match nothing are kept, so that loading
    reports them."""
    parts = {name: part for part in ("head", "tail") for name in getattr(model, part).state_dict()}

    def ours(key: str) -> str:
        name = _torchvision_name(key)
        return f"{parts[name]}.{name}" if name in parts else name

    return merge_aliases(state_dict, ours, source)


def merge_aliases(
    state_dict: dict[str, torch.Tensor], rename: Callable[[str], str], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """``state_dict`` under the names ``rename`` gives its keys. IRN's nets save one module
    under several names, so keys that meet under one name are copies of one tensor: they
    must agree, or the file is refused."""
    merged: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = rename(key)
        if name in merged and not torch.equal(merged[name], value):
            raise CheckpointError(f"{source}: {key} differs from another copy of the same weights ({name})")
        merged[name] = value
    return merged


def load_checkpoint(model: MultiLabelNet, checkpoint: str | Path | dict) -> dict:
    """Load into ``model`` our checkpoints (``{'model': state_dict, ...}``), the original
    BAS release (``epoch_10.pth.tar``: a bare state dict, ``module.`` keys) or IRN's
    ``res50_cam.pth``; a path or an already loaded dict. Returns the checkpoint's other
    entries. A file that does not fit raises ``CheckpointError`` naming it."""
    if not isinstance(checkpoint, dict):
        checkpoint = read_checkpoint(checkpoint)
    elif not isinstance(checkpoint.get("model"), dict):
        checkpoint = {"model": checkpoint}
    source = str(checkpoint.path) if isinstance(checkpoint, Checkpoint) else "checkpoint"
    state_dict = {k.removeprefix("module."): v for k, v in checkpoint["model"].items()}
    if not any(k.startswith(("head.", "tail.")) for k in state_dict):
        state_dict = convert_original_state_dict(model, state_dict, source)
    load_state_dict_checked(model, state_dict, source, f"the {model.arch} {type(model).__name__}")
    return {k: v for k, v in checkpoint.items() if k != "model"}
