"""The four BAS generators for WSOL, a plain CAM baseline, and checkpoint loading.

A generator is a backbone cut at its tap (``bas.backbones``) plus two heads:
``classifier_cls`` turns the tail features into the class map A (C x 14x14 at 224)
and ``classifier_loc`` turns the tap features F into the foreground maps M
(C x 28x28, sigmoid). The AMC itself lives in ``bas.amc``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from bas.amc import GeneratorOutput, activation_map_constraint, global_average, mean_class_map, pick
from bas.backbones import Backbone, CutNet, build_backbone, load_imagenet_weights
from bas.checkpoints import Checkpoint, load_state_dict_checked, read_checkpoint

log = logging.getLogger(__name__)

# Value of the bas term where S_bg > S: it carries no gradient, only the logged loss
# differs, as in the original code.
SATURATED_BAS = {"vgg": 0.0, "resnet": 1.0, "inception": 1.0, "mobilenet": 1.0, "tiny": 1.0}


def _conv(inp: int, out: int, kernel: int) -> nn.Conv2d:
    return nn.Conv2d(inp, out, kernel, padding=kernel // 2)


class Generator(CutNet):
    """Backbone + ``classifier_cls``: what BAS and the CAM baseline share."""

    def __init__(self, arch: str, backbone: Backbone, num_classes: int) -> None:
        super().__init__(arch, backbone, num_classes)
        width = backbone.classifier_width
        self.classifier_cls = nn.Sequential(
            _conv(backbone.tail_channels, width, 3),
            nn.ReLU(inplace=True),
            _conv(width, width, 3),
            nn.ReLU(inplace=True),
            _conv(width, num_classes, 1),
        )

    def class_map(self, features: torch.Tensor) -> torch.Tensor:
        """Tap features F (B x Ct x 28 x 28) -> class map A (B x C x 14 x 14): the tail and
        ``classifier_cls``, the part the AMC re-runs on erased features."""
        return self.classifier_cls(self.tail(features))

    def features_and_class_map(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B x 3 x 224 x 224 -> F (B x Ct x 28 x 28), A (B x C x 14 x 14)."""
        features = self.head(images)
        return features, self.class_map(features)

    @staticmethod
    def _classes(score: torch.Tensor, labels: torch.Tensor | None, topk: int) -> torch.Tensor:
        """B x k class indices whose maps are averaged: the GT class, or the top-k predicted."""
        if topk == 1:
            if labels is None:
                raise ValueError("topk=1 localizes the ground-truth class (GT-known): pass labels")
            return labels[:, None]
        return score.topk(topk, dim=1).indices


class BASGenerator(Generator):
    """A BAS generator: trained with the AMC, localizes with ``classifier_loc``."""

    def __init__(self, arch: str, backbone: Backbone, num_classes: int) -> None:
        super().__init__(arch, backbone, num_classes)
        self.classifier_loc = nn.Sequential(_conv(backbone.tap_channels, num_classes, 3), nn.Sigmoid())
        self.saturated_bas = SATURATED_BAS[arch]

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> GeneratorOutput:
        features, class_map = self.features_and_class_map(images)
        fg_map = pick(self.classifier_loc(features), labels)[:, None]  # B x 1 x 28 x 28
        return activation_map_constraint(
            (self.tail, self.classifier_cls), features, class_map, fg_map, labels, self.saturated_bas
        )

    def localize(
        self, images: torch.Tensor, labels: torch.Tensor | None = None, topk: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B x C) and foreground maps (B x 1 x 28 x 28 in [0, 1]) averaged over
        the GT class (topk=1) or the top-k predicted classes."""
        features, class_map = self.features_and_class_map(images)
        score = global_average(class_map)
        return score, mean_class_map(self.classifier_loc(features), self._classes(score, labels, topk))


class CAMBaseline(Generator):
    """The same network trained with cross-entropy only; localizes with the class map A."""

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> GeneratorOutput:
        _, class_map = self.features_and_class_map(images)
        return GeneratorOutput(score=global_average(class_map), fg_map=pick(class_map, labels)[:, None])

    def localize(
        self, images: torch.Tensor, labels: torch.Tensor | None = None, topk: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B x C) and class activation maps (B x 1 x 14 x 14, unnormalized)."""
        _, class_map = self.features_and_class_map(images)
        score = global_average(class_map)
        return score, mean_class_map(class_map, self._classes(score, labels, topk))


METHODS = {"bas": BASGenerator, "cam": CAMBaseline}


def _init_weights(model: nn.Module, arch: str) -> None:
    """The original initialisation: N(0, 0.02) convs for VGG; xavier convs, BN 1/0 otherwise."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if arch == "vgg":
                nn.init.normal_(m.weight, 0.0, 0.02)
                continue
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_model(arch: str, num_classes: int, pretrained: str | None = None, method: str = "bas") -> Generator:
    """A generator for ``arch`` in vgg/resnet/inception/mobilenet (or ``tiny``, the demo's).

    pretrained: None (random init), "imagenet" (torchvision weights, downloaded into
    the torch cache) or a path to a torchvision-format state dict (for MobileNetV1 the
    classic positional ``mobilenet_v1_with_relu_69_5.pth``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    backbone = build_backbone(arch)
    model = METHODS[method](arch, backbone, num_classes)
    _init_weights(model, arch)
    if pretrained is not None:
        log.info("%s", load_imagenet_weights(arch, backbone, str(pretrained)))
    return model


# ------------------------------------------------------------------------ checkpoints
def _strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def convert_original_state_dict(model: Generator, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of an original BAS checkpoint (``conv5_1.weight``, ``layer4.*``,
    ``model.12.*``) to this project's (``tail.24.weight``, ``tail.layer4.*``, ``tail.12.*``).
    Keys that match nothing are kept as they are, so that loading reports them."""
    parts = {name: part for part in ("head", "tail") for name in getattr(model, part).state_dict()}
    converted = {}
    for key, value in state_dict.items():
        name = None if key.startswith("classifier_") else model.translate_key(key)
        converted[f"{parts[name]}.{name}" if name in parts else key] = value
    return converted


def load_checkpoint(model: Generator, checkpoint: str | Path | dict) -> dict:
    """Load our checkpoints or the original release (``{'model': state_dict}``, keys
    possibly ``module.``-prefixed) into ``model``; returns the checkpoint's other entries."""
    if not isinstance(checkpoint, dict):
        checkpoint = read_checkpoint(checkpoint)
    source = str(checkpoint.path) if isinstance(checkpoint, Checkpoint) else "checkpoint"
    state_dict = _strip_module_prefix(checkpoint["model"])
    if not any(k.startswith(("head.", "tail.")) for k in state_dict):
        state_dict = convert_original_state_dict(model, state_dict)
    load_state_dict_checked(model, state_dict, source, f"the {model.arch} {type(model).__name__}")
    return {k: v for k, v in checkpoint.items() if k != "model"}
