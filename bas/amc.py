"""The Activation Map Constraint (AMC) of BAS, for any generator cut at a tap.

A generator gives tap features F = head(x), a class map A = tail(F) and a foreground
map M_fg (its localization head's map of the ground-truth class). The AMC erases the
foreground from a detached copy of F, re-runs the tail on it with the live weights but
no gradient into them, and reads the background activation S_bg of the ground-truth
class. Suppressing S_bg (the ``bas`` term) pushes M_fg to cover the whole object; the
``area`` term keeps it from covering everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

EPS = 1e-8


@dataclass
class GeneratorOutput:
    """Per-sample results of a generator's training forward.

    Terms a method does not produce (the CAM baseline has no AMC, IRN's CAM net no map
    of a ground-truth class) are None and add nothing to the loss.
    """

    score: torch.Tensor  # B x C logits, GAP of the class map
    fg_map: torch.Tensor | None = None  # B x 1 x h x w, the map of the ground-truth class (28x28 at 224)
    score_fg: torch.Tensor | None = None  # B x C logits of the foreground-weighted class map
    bas: torch.Tensor | None = None  # B, background activation S_bg / S
    area: torch.Tensor | None = None  # B, mean of the foreground map
    # B, the class each sample's AMC ran on: its label in WSOL, the positive class drawn
    # among its labels in WSSS (the loss needs it).
    positive: torch.Tensor | None = None


def pick(tensor: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``tensor[i, classes[i]]`` for every sample: B x C x ... , B -> B x ..."""
    return tensor[torch.arange(tensor.shape[0], device=tensor.device), classes]


def mean_class_map(maps: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Mean of each sample's maps over its classes: B x C x h x w, B x k -> B x 1 x h x w."""
    rows = torch.arange(maps.shape[0], device=maps.device)[:, None]
    return maps[rows, classes].mean(1, keepdim=True)


def global_average(class_map: torch.Tensor) -> torch.Tensor:
    """B x C x h x w -> B x C."""
    return class_map.mean((2, 3))


def frozen_call(modules: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Run ``modules`` in sequence with their current weights but no gradient into them.

    The gradient still flows to ``x``. BatchNorm behaves as the module's mode says
    (batch statistics in train mode), but updates copies of its running statistics,
    so the real ones only ever see the real forward pass. This replaces a deep copy of
    the tail at every step.
    """
    for module in modules:
        params = {name: p.detach() for name, p in module.named_parameters()}
        buffers = {name: b.clone() for name, b in module.named_buffers()}
        x = functional_call(module, {**params, **buffers}, (x,))
    return x


def foreground_score(class_map: torch.Tensor, fg_map: torch.Tensor) -> torch.Tensor:
    """GAP of the class map weighted by the foreground map, pooled to its size.

    B x C x h x w, B x 1 x H x W -> B x C. At 224 input the WSOL map is 28x28 and the
    class map 14x14: the adaptive pool is then exactly the original 2x2 average pool.
    The WSSS net has both at stride 16, and the map weights the class map as it is.
    """
    if fg_map.shape[-2:] != class_map.shape[-2:]:
        fg_map = F.adaptive_avg_pool2d(fg_map, class_map.shape[-2:])
    return global_average(class_map * fg_map)


def bas_term(score_gt: torch.Tensor, score_bg: torch.Tensor, saturated: float) -> torch.Tensor:
    """relu(S_bg) / relu(S), with S detached; ``saturated`` (no gradient) where S_bg > S."""
    s = torch.relu(score_gt).detach()
    s_bg = torch.relu(score_bg)
    ratio = s_bg / (s + EPS)
    return torch.where(s_bg > s, torch.full_like(ratio, saturated), ratio)


def area_term(fg_map: torch.Tensor) -> torch.Tensor:
    """Mean activation of each foreground map: B x 1 x h x w -> B."""
    return fg_map.flatten(1).mean(1)


def activation_map_constraint(
    tail: Sequence[nn.Module],
    features: torch.Tensor,
    class_map: torch.Tensor,
    fg_map: torch.Tensor,
    labels: torch.Tensor,
    saturated_bas: float = 1.0,
    detach_fg_class_map: bool = False,
) -> GeneratorOutput:
    """All BAS outputs of one training forward.

    tail: the modules that map tap features to the class map (re-run frozen).
    features: B x Ct x H x W tap features F (not detached: M_fg was computed from them).
    class_map: B x C x h x w, tail(F). fg_map: B x 1 x H x W, M of the GT class.
    labels: B, the class playing the ground truth.
    detach_fg_class_map: score_fg weights a detached class map (the WSSS net), so that
    CE(score_fg) trains only the foreground map and the layers below the tap.
    """
    score = global_average(class_map)
    erased = features.detach() * (1 - fg_map)  # B x Ct x H x W
    score_bg = pick(global_average(frozen_call(tail, erased)), labels)  # B
    fg_class_map = class_map.detach() if detach_fg_class_map else class_map
    return GeneratorOutput(
        score=score,
        fg_map=fg_map,
        score_fg=foreground_score(fg_class_map, fg_map),
        bas=bas_term(pick(score, labels), score_bg, saturated_bas),
        area=area_term(fg_map),
        positive=labels,
    )


def bas_loss(
    out: GeneratorOutput, labels: torch.Tensor, alpha: float, beta: float, ce: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CE(score) + alpha CE(score_fg) + mean(bas) + beta mean(area); the parts, detached, for logging.

    labels: B, the classes the AMC ran on. ce: the classification term, where it is not
    the cross-entropy of ``score`` against ``labels`` (the multi-label WSSS loss).
    """
    terms = {"ce": F.cross_entropy(out.score, labels) if ce is None else ce}
    if out.score_fg is not None:
        terms["ce_fg"] = F.cross_entropy(out.score_fg, labels)
    if out.bas is not None:
        terms["bas"] = out.bas.mean()
    if out.area is not None:
        terms["area"] = out.area.mean()
    weights = {"ce": 1.0, "ce_fg": alpha, "bas": 1.0, "area": beta}
    total = sum(weights[name] * value for name, value in terms.items())
    return total, {name: value.detach() for name, value in terms.items()}
