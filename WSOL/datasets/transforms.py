"""The image transforms of the original BAS loaders: squash, crop, flip, ten crops; ImageNet's
normalization."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms as T

from bas.data import IMAGENET_MEAN, IMAGENET_STD


def _tensor_steps() -> list:
    return [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def _squash(resize: int) -> T.Resize:
    """Both sides to ``resize`` (aspect ratio not kept), bilinear, as the original loaders."""
    return T.Resize((resize, resize), interpolation=T.InterpolationMode.BILINEAR)


def train_transform(resize: int = 256, crop: int = 224) -> T.Compose:
    """Original order: squash to resize x resize, random crop, random horizontal flip."""
    return T.Compose([_squash(resize), T.RandomCrop(crop), T.RandomHorizontalFlip(), *_tensor_steps()])


def test_transform(resize: int = 256, crop: int = 224) -> T.Compose:
    """Squash to resize x resize, center crop -> 3 x crop x crop. OpenImages test: resize = crop
    (a plain resize to 224, as the original)."""
    return T.Compose([_squash(resize), T.CenterCrop(crop), *_tensor_steps()])


class _EachCrop:
    """Tensor + normalization for each crop, stacked (a class, not a lambda, so that
    data-loader workers can pickle it)."""

    def __init__(self):
        self.to_tensor = T.Compose(_tensor_steps())

    def __call__(self, crops: tuple[Image.Image, ...]) -> torch.Tensor:
        return torch.stack([self.to_tensor(crop) for crop in crops])  # n x 3 x crop x crop


def ten_crop_transform(resize: int = 256, crop: int = 224) -> T.Compose:
    """Squash to resize x resize, then torchvision's TenCrop (four corners and the center, and
    their mirror images) -> 10 x 3 x crop x crop, as the original's ten-crop test."""
    return T.Compose([_squash(resize), T.TenCrop(crop), _EachCrop()])
