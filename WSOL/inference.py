"""Run a generator over a test set: class predictions and localization maps per image,
scored with ``WSOL.metrics``. Shared by train.py (model selection) and evaluator.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from bas.amc import global_average
from bas.devices import autocast, memory_format
from bas.errors import ArgumentError, DatasetError
from bas.outputs import replace_atomic
from bas.sampling import loader_options
from WSOL import metrics
from WSOL.datasets import ImageDataset, Sample
from WSOL.models import Generator

log = logging.getLogger(__name__)


def map_topk(requested: int | None, preset: int, num_classes: int) -> int:
    """The classes a map averages: ``requested`` (--topk), else the preset's. A preset's k above
    the model's classes (CUB's 80 or 200 on a smaller model) takes every class, the
    class-agnostic map it stands for, and says so; a requested k above them stops."""
    if requested is not None:
        if requested > num_classes:
            raise ArgumentError(f"--topk {requested}: the model has {num_classes} classes")
        return requested
    if preset > num_classes:
        log.info("top-k %d of the preset: the model has %d classes, maps of all %d", preset, num_classes, num_classes)
        return num_classes
    return preset


@dataclass
class Batch:
    indices: np.ndarray  # B, positions in the sample list
    labels: np.ndarray  # B
    probs: torch.Tensor  # B x C class probabilities (ten-crop averaged when asked)
    maps: np.ndarray  # B x h x w raw localization maps (28x28 at 224)


@torch.inference_mode()
def predict(
    model: Generator,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    topk: int,
    amp: str | None = None,
    progress: bool = True,
    channels_last: bool = False,
) -> Iterator[Batch]:
    """Maps of the GT class (topk=1) or of the top-k predicted classes, batch by batch.

    When the loader yields (center crop, ten crops) pairs, the class probabilities are
    the mean softmax of the ten crops (classification only, as in the original).
    """
    model.eval()
    layout = memory_format(channels_last)
    # disable=None: no bar where stderr is no terminal (a log file), even when ``progress``.
    for images, labels, indices in tqdm(loader, desc="evaluate", leave=False, disable=None if progress else True):
        tencrop = None
        if isinstance(images, (list, tuple)):
            images, tencrop = images
        images = images.to(device, non_blocking=True, memory_format=layout)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, amp):
            score, maps = model.localize(images, labels if topk == 1 else None, topk)
            probs = score.float().softmax(1)
            if tencrop is not None:
                b, n = tencrop.shape[:2]
                crops = tencrop.flatten(0, 1).to(device, non_blocking=True, memory_format=layout)  # (B*10) x 3 x H x W
                crop_scores = global_average(model.features_and_class_map(crops)[1])  # (B*10) x C
                probs = crop_scores.float().softmax(1).view(b, n, -1).mean(1)
        yield Batch(indices.numpy(), labels.cpu().numpy(), probs.cpu(), maps[:, 0].float().cpu().numpy())


def shard(dataset: torch.utils.data.Dataset, rank: int, world: int) -> torch.utils.data.Dataset:
    """This process's share of a test set: every world-th sample from ``rank`` on, so that
    every sample is seen exactly once across processes (no padded duplicates)."""
    return dataset if world == 1 else torch.utils.data.Subset(dataset, range(rank, len(dataset), world))


def evaluation_loader(
    samples: list[Sample], transform, batch_size: int, workers: int, device: torch.device, rank: int, world: int
) -> torch.utils.data.DataLoader:
    """Batches of this process's share of ``samples``, in order."""
    dataset = shard(ImageDataset(samples, transform), rank, world)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, **loader_options(workers, device))


def image_size(sample: Sample) -> tuple[int, int]:
    """(width, height): from the lists when they give it, else from the image header."""
    if sample.size is not None:
        return sample.size
    with Image.open(sample.path) as image:
        return image.size


@dataclass
class BoxResults:
    """Per-image results of the original box protocol; rows gather across processes."""

    indices: np.ndarray  # N
    top1: np.ndarray  # N bool, class top-1 correct
    top5: np.ndarray  # N bool
    best_iou: np.ndarray  # N x T, best IoU over the image's GT boxes at each CAM threshold

    @classmethod
    def concatenate(cls, parts: list[BoxResults]) -> BoxResults:
        """Rows of several batches or processes, in sample order."""
        fields = [np.concatenate([getattr(p, f) for p in parts]) for f in ("indices", "top1", "top5", "best_iou")]
        order = np.argsort(fields[0], kind="stable")
        return cls(*(f[order] for f in fields))

    def summary(self, thresholds: list[float], top5: bool = True) -> dict:
        """Top-1 (and Top-5, unless ``top5`` is False: with 5 classes or fewer it says
        nothing) classification and localization in %, at the best threshold by Top-1 Loc +
        GT-known (the original's choice), with every threshold's values."""
        acc = metrics.localization_accuracy(self.best_iou, self.top1, self.top5)
        best = int(np.argmax(acc["top1_loc"] + acc["gt_known"]))
        kinds = ("top1_loc", "top5_loc", "gt_known") if top5 else ("top1_loc", "gt_known")
        report = {"images": int(len(self.indices)), "cls_top1": 100.0 * float(self.top1.mean())}
        if top5:
            report["cls_top5"] = 100.0 * float(self.top5.mean())
        report["threshold"] = round(float(thresholds[best]), 6)
        report.update({k: float(acc[k][best]) for k in kinds})
        report["per_threshold"] = {f"{t:g}": {k: float(acc[k][i]) for k in kinds} for i, t in enumerate(thresholds)}
        return report


def box_results(
    batches: Iterator[Batch],
    samples: list[Sample],
    thresholds: list[float],
    resize: int,
    crop: int,
    inclusive: bool = False,
    on_batch=None,
) -> BoxResults:
    """Scores every batch with the original protocol (GT boxes in the center-crop frame).

    ``on_batch(batch, boxes)`` sees each batch with its predicted boxes (N x T x 4), e.g.
    to write overlays, so the maps are not kept in memory.
    """
    no_rows = np.zeros(0, dtype=bool)  # a process's share may hold no image: zero rows, not nothing
    parts = [BoxResults(np.zeros(0, dtype=np.int64), no_rows, no_rows, np.zeros((0, len(thresholds))))]
    for batch in batches:
        gt = [metrics.boxes_in_crop(samples[i].boxes, image_size(samples[i]), resize, crop) for i in batch.indices]
        best_iou, boxes = metrics.original_protocol_ious(batch.maps, gt, thresholds, size=crop, inclusive=inclusive)
        ranked = batch.probs.topk(min(5, batch.probs.shape[1]), dim=1).indices.numpy()
        parts.append(
            BoxResults(batch.indices, ranked[:, 0] == batch.labels, (ranked == batch.labels[:, None]).any(1), best_iou)
        )
        if on_batch is not None:
            on_batch(batch, boxes)
    return BoxResults.concatenate(parts)


def maxboxacc_counts(batches: Iterator[Batch], samples: list[Sample], size: int) -> np.ndarray:
    """MaxBoxAccV2 (wsolevaluation): per CAM threshold and IoU threshold, the number of
    images localized; T x I counts sum across processes. Expects uncropped images."""
    counts = np.zeros((len(metrics.CAM_THRESHOLDS), len(metrics.IOU_THRESHOLDS)), dtype=np.int64)
    for batch in batches:
        gt = [metrics.boxes_resized(samples[i].boxes, image_size(samples[i]), size) for i in batch.indices]
        counts += metrics.maxboxacc_correct(batch.maps, gt, size=size).sum(0)
    return counts


def save_maps(batch: Batch, samples: list[Sample], directory: Path, size: int) -> None:
    """wsolevaluation's format: ``directory/<image_id>.npy``, each map resized to size x size
    (bicubic) and min-max normalized, exactly what MaxBoxAccV2 scores, so that scoring the
    files again gives the same numbers."""
    for index, raw in zip(batch.indices, batch.maps):
        resized = cv2.resize(raw.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        score_map = metrics.normalize_scoremap(resized)

        def write(fd: int, score_map=score_map) -> None:
            with open(fd, "wb") as f:
                np.save(f, score_map)

        replace_atomic(write, directory / f"{samples[index].image_id}.npy")


def read_saved_map(path: Path) -> np.ndarray:
    """One saved map, checked as wsolevaluation checks them: a 2-D float array, finite, in
    [0, 1]; anything else stops with the file named."""
    if not path.is_file():
        raise DatasetError(f"{path}: no saved map for this image")
    try:
        score_map = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: not a .npy array ({error})") from None
    if score_map.ndim != 2 or score_map.dtype.kind != "f":
        raise DatasetError(f"{path}: expected a 2-D float map, got {score_map.dtype} of shape {score_map.shape}")
    if not np.isfinite(score_map).all():
        raise DatasetError(f"{path}: the map holds NaN or infinite values")
    if score_map.min() < 0 or score_map.max() > 1:
        raise DatasetError(
            f"{path}: values in [{score_map.min():g}, {score_map.max():g}]; saved maps must lie in [0, 1]"
        )
    return score_map.astype(np.float32)


def saved_map_batches(
    directory: Path, samples: list[Sample], size: int, batch: int = 64
) -> Iterator[tuple[list[Sample], np.ndarray]]:
    """Another method's maps, ``directory/<image_id>.npy``, as (samples, B x size x size).
    Maps of another size are resized (bicubic, as wsolevaluation resizes maps); maps
    already size x size, as --save-maps writes them, are taken as they are."""
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        maps = [read_saved_map(directory / f"{sample.image_id}.npy") for sample in chunk]
        yield (
            chunk,
            np.stack(
                [m if m.shape == (size, size) else metrics.resize_maps(m[None], size, cv2.INTER_CUBIC)[0] for m in maps]
            ),
        )
