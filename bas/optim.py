"""The optimizer and its learning-rate schedules: the WSOL paper's four parameter groups
and step decay, the WSSS code's poly decay. Rates are computed from the epoch or step, never
accumulated, so that a resumed run gets the rates of an uninterrupted one."""

from __future__ import annotations

import torch
from torch import nn


# Learning-rate multiplier per (classifier?, weight or bias) part of a model: the WSOL
# paper's four groups. A part missing from a table is never given to the optimizer.
Multipliers = dict[tuple[bool, str], float]
WSOL_MULTIPLIERS: Multipliers = {(False, "weight"): 1, (False, "bias"): 2, (True, "weight"): 10, (True, "bias"): 20}


def param_groups(model: nn.Module, lr: float, multipliers: Multipliers = WSOL_MULTIPLIERS) -> list[dict]:
    """Trainable parameters grouped by ``multipliers``: a parameter whose name holds
    "classifier" is a classifier part, one whose name ends in "bias" a bias. The default
    is the original WSOL code's: backbone weights 1x, backbone biases 2x, ``classifier*``
    weights 10x, ``classifier*`` biases 20x the base learning rate."""
    groups: dict[tuple[bool, str], list] = {key: [] for key in multipliers}
    for name, param in model.named_parameters():
        key = ("classifier" in name, "bias" if name.endswith("bias") else "weight")
        if param.requires_grad and key in groups:
            groups[key].append(param)
    return [
        {"params": params, "lr": lr * multipliers[key], "lr_multiplier": multipliers[key]}
        for key, params in groups.items()
        if params
    ]


def sgd(
    model: nn.Module,
    lr: float,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    nesterov: bool = True,
    multipliers: Multipliers = WSOL_MULTIPLIERS,
) -> torch.optim.SGD:
    """SGD over the learning-rate groups of ``param_groups`` (by default the WSOL paper's:
    Nesterov momentum, four groups)."""
    groups = param_groups(model, lr, multipliers)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def set_step_lr(
    optimizer: torch.optim.Optimizer, base_lr: float, epoch: int, decay_epoch: int, rate: float = 0.1
) -> float:
    """lr x ``rate`` at every multiple of ``decay_epoch`` (epochs counted from 0); returns
    the base group's lr. Computed from the epoch, not accumulated, so that a resumed run
    gets the same rate."""
    lr = base_lr * rate ** (epoch // decay_epoch) if decay_epoch > 0 else base_lr
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_multiplier"]
    return lr


def poly_max_step(dataset_size: int, batch_size: int, epochs: int, steps_factor: int = 1) -> int:
    """The length of a poly schedule: ``epochs`` x the steps of an epoch at ``batch_size``,
    times ``steps_factor``. The original WSSS code computes it from the per-process batch
    (its global 16 over 4 GPUs) while each step takes the global batch: factor 4, and the
    schedule spans four times the steps taken."""
    return dataset_size * steps_factor // batch_size * epochs


def set_poly_lr(
    optimizer: torch.optim.Optimizer, base_lr: float, step: int, max_step: int, power: float = 0.9
) -> float:
    """lr x (1 - step / max_step) ** power for step ``step`` (counted from 0 over the whole
    run); returns the base group's lr. As the original's poly optimizer, the rate stops
    changing after step max_step - 1. Computed from the step, so a resumed run gets the
    same rates."""
    lr = base_lr * (1 - min(step, max_step - 1) / max_step) ** power
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_multiplier"]
    return lr
