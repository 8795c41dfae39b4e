"""The torch datasets of the stages: classification training, multi-scale seed making, IRN's
displacement mean, training on label maps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image

from bas.data import load_rgb
from bas.errors import DatasetError
from WSSS.datasets.samples import Sample
from WSSS.datasets.transforms import LabelledCrop, rescale, to_tensor
from WSSS.datasets.voc import read_mask

SCALES = (1.0, 0.5, 1.5, 2.0)  # the original's seed scales


class ClassificationSet(torch.utils.data.Dataset):
    """Samples -> (3 x crop x crop image, C float32 multi-hot label, index) for training."""

    def __init__(self, samples: list[Sample], transform: Callable[[Image.Image], torch.Tensor]):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        sample = self.samples[index]
        return self.transform(load_rgb(sample.path)), torch.tensor(sample.label), index


class MultiScaleItem(NamedTuple):
    """One image for seed making. A data loader keeps the named tuple (and pins its tensors)
    but hands ``size`` back as a list [H, W]."""

    image_id: str
    size: tuple[int, int]  # (H, W) of the original image
    label: torch.Tensor  # C float32 multi-hot
    images: list[torch.Tensor]  # per scale: 2 x 3 x round(H*s) x round(W*s), the image and its mirror image


class MultiScaleSet(torch.utils.data.Dataset):
    """Samples -> ``MultiScaleItem``, each scale with its horizontally flipped twin stacked so
    that one forward pass serves both. Scales differ in size and VOC images differ in size, so
    images do not batch: load with ``DataLoader(dataset, batch_size=None)`` (items as they
    are). Unlike the original, a single scale still comes as a list of one."""

    def __init__(self, samples: list[Sample], scales: Sequence[float] = SCALES):
        self.samples, self.scales = samples, tuple(scales)
        self.ids = [sample.image_id for sample in samples]  # item i's id without loading its image

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> MultiScaleItem:
        sample = self.samples[index]
        image = load_rgb(sample.path)
        images = []
        for scale in self.scales:
            tensor = to_tensor(rescale(image, scale))  # 3 x h x w
            images.append(torch.stack([tensor, tensor.flip(-1)]))  # 2 x 3 x h x w
        return MultiScaleItem(sample.image_id, (image.height, image.width), torch.tensor(sample.label), images)


class TopLeftSet(torch.utils.data.Dataset):
    """Samples -> (3 x crop x crop image at the top left of a zero canvas, cut where larger,
    C multi-hot label, index): IRN's input for measuring the displacement's mean."""

    def __init__(self, samples: list[Sample], crop: int):
        self.samples, self.crop = samples, crop

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        sample = self.samples[index]
        tensor = to_tensor(load_rgb(sample.path))[:, : self.crop, : self.crop]  # 3 x h x w
        canvas = tensor.new_zeros(3, self.crop, self.crop)
        canvas[:, : tensor.shape[1], : tensor.shape[2]] = tensor
        return canvas, torch.tensor(sample.label), index


class LabelledSet(torch.utils.data.Dataset):
    """Samples and their label maps -> (3 x crop x crop image, int64 labels as ``transform``
    gives them, index): IRN's IR labels, the segmentation net's pseudo masks. ``label_dir``
    holds ``<id>.png`` of every sample (index PNGs at the image's size: 0 background, c + 1
    class c, 255 unsure), checked here, so that a missing one stops before any training;
    ``made_by`` names what makes them, for that error."""

    def __init__(
        self, samples: list[Sample], label_dir: str | Path, num_classes: int, transform: LabelledCrop, made_by: str
    ):
        self.samples, self.num_classes, self.transform = samples, num_classes, transform
        self.labels = [Path(label_dir) / f"{sample.image_id}.png" for sample in samples]
        missing = [path for path in self.labels if not path.is_file()]
        if missing:
            others = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DatasetError(f"{missing[0]}: no labels for this id{others}; {made_by}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, path = load_rgb(self.samples[index].path), self.labels[index]
        labels = read_mask(path, self.num_classes)
        if labels.shape != (image.height, image.width):
            raise DatasetError(
                f"{path}: {labels.shape[1]} x {labels.shape[0]} labels for the {image.width} x {image.height} "
                f"image {self.samples[index].path}"
            )
        image, labels = self.transform(image, Image.fromarray(labels))
        return image, labels.long(), index
