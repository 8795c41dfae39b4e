"""The original's image steps: normalization, rescaling, the training augmentation, and the
same random crop for an image and its label map."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from bas.data import IMAGENET_MEAN, IMAGENET_STD
from WSSS.datasets.samples import IGNORE


# Each channel's 256 levels ImageNet-normalized, computed in float64 and rounded once to
# float32, as the original's numpy normalization: 3 x 256.
_LEVELS = torch.arange(256, dtype=torch.float64)
_NORMALIZED = (
    (_LEVELS / 255 - torch.tensor(IMAGENET_MEAN, dtype=torch.float64)[:, None])
    / torch.tensor(IMAGENET_STD, dtype=torch.float64)[:, None]
).float()


def to_tensor(image: Image.Image) -> torch.Tensor:
    """3 x H x W float32, ImageNet-normalized as the original (so the inputs equal the
    original's bit for bit), each pixel's value looked up in its channel's table."""
    levels = torch.from_numpy(np.array(image, dtype=np.int64)).permute(2, 0, 1)  # 3 x H x W
    return _NORMALIZED.gather(1, levels.reshape(3, -1)).view(levels.shape)


def rescale(image: Image.Image, scale: float) -> Image.Image:
    """PIL bicubic to (round(H * s), round(W * s)), numpy's round half to even, as the original
    (PIL returns an unchanged copy where the size stays)."""
    width, height = image.size
    return image.resize((int(np.round(width * scale)), int(np.round(height * scale))), Image.BICUBIC)


class TrainTransform:
    """PIL image -> 3 x crop x crop normalized tensor, the original's steps in its order:
    resize (random long side in ``resize_long`` = (min, max), inclusive; or both sides to
    ``resize_square``), normalize, random horizontal flip, random crop. A side shorter than the
    crop is placed at a random offset in a zero container (zero after normalization: the mean
    colour). Random draws come from torch's generator, so ``bas.sampling.SeededItems`` makes each
    sample's augmentation depend on (seed, epoch, index) only.
    """

    def __init__(
        self,
        crop: int,
        resize_long: tuple[int, int] | None = None,
        resize_square: int | None = None,
        flip: bool = True,
    ):
        if resize_long is not None and resize_square is not None:
            raise ValueError("resize_long and resize_square exclude each other")
        self.crop, self.resize_long, self.resize_square, self.flip = crop, resize_long, resize_square, flip

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.resize_long is not None:
            low, high = self.resize_long
            target = int(torch.randint(low, high + 1, ()))
            image = rescale(image, target / max(image.size))
        elif self.resize_square is not None:
            image = image.resize((self.resize_square, self.resize_square), Image.BICUBIC)
        tensor = to_tensor(image)  # 3 x H x W
        if self.flip and bool(torch.randint(2, ())):
            tensor = tensor.flip(-1)
        return self._random_crop(tensor)

    def _random_crop(self, tensor: torch.Tensor) -> torch.Tensor:
        crop = self.crop
        out = tensor.new_zeros(3, crop, crop)
        (top, into_top), (left, into_left) = (self._offsets(size, crop) for size in tensor.shape[1:])
        height, width = min(crop, tensor.shape[1]), min(crop, tensor.shape[2])
        out[:, into_top : into_top + height, into_left : into_left + width] = tensor[
            :, top : top + height, left : left + width
        ]
        return out  # 3 x crop x crop

    @staticmethod
    def _offsets(size: int, crop: int) -> tuple[int, int]:
        """(offset in the image, offset in the container) along one side."""
        spare = size - crop
        if spare > 0:
            return int(torch.randint(spare + 1, ())), 0
        return 0, int(torch.randint(-spare + 1, ()))


def bas_train_transform() -> TrainTransform:
    """The original BAS net's training input (train_bas.py): both sides to 512, bicubic (the
    aspect ratio is not kept), flip, random crop 448."""
    return TrainTransform(crop=448, resize_square=512)


def cam_train_transform() -> TrainTransform:
    """IRN's CAM net's training input (step/train_cam): long side random in 320..640, flip,
    random crop 512 (zero-padded where the image is smaller)."""
    return TrainTransform(crop=512, resize_long=(320, 640))


class LabelledCrop:
    """(PIL image, H x W uint8 labels) -> (3 x crop x crop image, uint8 labels crop x crop, or
    round(crop / label_stride) a side): the training input of the nets that learn from label
    maps (IRN from IR labels, label_stride 4; the segmentation net from pseudo masks), in
    IRN's order of steps: both rescaled by a factor drawn uniformly in ``scale_range`` (the
    image bicubic, the labels nearest, to round(side x factor)), the image normalized, both
    flipped or not, both cropped at one random place (where smaller, padded: the image with
    0, the mean colour, the labels with 255, unsure / ignored), then the labels reduced to
    ``label_stride`` (nearest). Random draws come from torch's generator
    (``bas.sampling.SeededItems``)."""

    def __init__(self, crop: int, scale_range: tuple[float, float], flip: bool = True, label_stride: int = 1):
        self.crop, self.scale_range, self.flip, self.label_stride = crop, scale_range, flip, label_stride

    def __call__(self, image: Image.Image, labels: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.scale_range
        image = rescale(image, low + float(torch.rand(())) * (high - low))
        labels = labels.resize(image.size, Image.NEAREST)  # the image's size: round(side x scale)
        tensor, mask = to_tensor(image), torch.from_numpy(np.array(labels))  # 3 x H x W, H x W
        if self.flip and bool(torch.randint(2, ())):
            tensor, mask = tensor.flip(-1), mask.flip(-1)
        (top, into_top), (left, into_left) = (TrainTransform._offsets(size, self.crop) for size in mask.shape)
        height, width = min(self.crop, mask.shape[0]), min(self.crop, mask.shape[1])
        image_crop = tensor.new_zeros(3, self.crop, self.crop)
        label_crop = torch.full((self.crop, self.crop), IGNORE, dtype=torch.uint8)
        inside = (slice(into_top, into_top + height), slice(into_left, into_left + width))
        image_crop[(slice(None), *inside)] = tensor[:, top : top + height, left : left + width]
        label_crop[inside] = mask[top : top + height, left : left + width]
        if self.label_stride > 1:
            reduced = round(self.crop / self.label_stride)
            label_crop = torch.from_numpy(
                np.array(Image.fromarray(label_crop.numpy()).resize((reduced, reduced), Image.NEAREST))
            )
        return image_crop, label_crop
