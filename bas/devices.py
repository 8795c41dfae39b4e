"""Where and in what precision the model runs: the device (CUDA when present), mixed
precision, and the memory layout of its tensors."""

from __future__ import annotations

from contextlib import nullcontext

import torch


def pick_device(name: str | None = None) -> torch.device:
    """The device asked for, else CUDA when present, else the CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str | None):
    """Mixed precision for the forward pass; ``None`` keeps fp32 (exact reproduction)."""
    if amp is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def memory_format(channels_last: bool) -> torch.memory_format:
    """NHWC when asked (faster convolutions on recent GPUs), else the tensors' own layout;
    for ``module.to(memory_format=...)`` and ``tensor.to(memory_format=...)`` alike."""
    return torch.channels_last if channels_last else torch.preserve_format
