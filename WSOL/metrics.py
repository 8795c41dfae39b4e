"""Localization metrics, vectorized over thresholds, as the original BAS evaluator and wsolevaluation compute them.

- The original BAS protocol: Top-1 / Top-5 / GT-known Loc from the box of the largest
  connected component of the thresholded map, in the 224 center-crop frame.
- MaxBoxAccV2 (wsolevaluation): boxes of all contours at 1,000 CAM thresholds, best
  accuracy per IoU threshold (30, 50, 70), averaged.
- PxAP and PIoU from score histograms over mask pixels.

Functions take numpy arrays and return per-image results, so that results from several
batches (or processes) are concatenated or summed before they are reduced.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from bas.errors import DatasetError

CROP = 224
# wsolevaluation's CAM thresholds (cam_curve_interval 0.001), built the same way.
CAM_THRESHOLDS = np.array(list(np.arange(0, 1, 0.001)))
IOU_THRESHOLDS = (30, 50, 70)


# ------------------------------------------------------------------------- maps, boxes
def normalize_minmax(maps: np.ndarray) -> np.ndarray:
    """The original evaluator's normalization: (m - min) / (max - min + 1e-5) per map.
    N x h x w -> N x h x w."""
    low = maps.min(axis=(1, 2), keepdims=True)
    high = maps.max(axis=(1, 2), keepdims=True)
    return (maps - low) / (high - low + 1e-5)


def resize_maps(maps: np.ndarray, size: int | tuple[int, int], interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """N x h x w -> N x H x W float32 with cv2; ``size`` is square or (width, height)."""
    width, height = (size, size) if isinstance(size, (int, np.integer)) else (int(s) for s in size)
    resized = np.empty((len(maps), height, width), dtype=np.float32)
    for m, out in zip(maps, resized):  # each map straight into its row of the output
        cv2.resize(np.asarray(m, dtype=np.float32), (width, height), dst=out, interpolation=interpolation)
    return resized


def boxes_in_crop(boxes: np.ndarray, image_size: tuple[int, int], resize: int = 256, crop: int = CROP) -> np.ndarray:
    """GT boxes of the original protocol: scaled to resize x resize, shifted by the center
    crop, clipped to [0, crop - 1], then truncated to int. k x 4 -> k x 4 int."""
    width, height = image_size
    shift = (resize - crop) // 2
    scale = np.array([resize / width, resize / height] * 2)
    shifted = np.asarray(boxes, dtype=np.float64) * scale - shift
    clipped = np.concatenate([np.maximum(shifted[:, :2], 0), np.minimum(shifted[:, 2:], crop - 1)], axis=1)
    return np.trunc(clipped).astype(np.int64)


def boxes_resized(boxes: np.ndarray, image_size: tuple[int, int], size: int = CROP) -> np.ndarray:
    """wsolevaluation's GT boxes: resized from the image to size x size, truncated."""
    width, height = image_size
    scale = np.array([size / width, size / height] * 2)
    return np.trunc(np.asarray(boxes, dtype=np.float64) * scale).astype(np.int64)


def box_iou(boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """IoU with the +1 pixel convention of the original: ... x 4, k x 4 -> ... x k.
    A degenerate union (<= 0) gives 0, as in wsolevaluation."""
    return paired_iou(np.asarray(boxes)[..., None, :], np.asarray(gt_boxes))


def paired_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``box_iou`` of boxes paired by broadcasting: ... x 4 and ... x 4 -> ..."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    width = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    height = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = width * height
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


# ------------------------------------------------------------ the original BAS protocol
def largest_component_box(binary: np.ndarray, inclusive: bool = False) -> np.ndarray:
    """Box of the largest 8-connected component of a H x W bool map.

    Ties go to the component met first in row-major order (skimage's labelling numbers
    components in that order). The max is one past the last pixel, as skimage's
    regionprops gives it, unless ``inclusive``; no foreground gives the whole map.
    """
    return largest_component_boxes(np.asarray(binary, dtype=bool)[None], [0], inclusive)[0, 0]  # pixels > 0


def largest_component_boxes(
    maps: np.ndarray, thresholds: Sequence[float], inclusive: bool = False, chunk: int = 16
) -> np.ndarray:
    """N x H x W normalized maps, T thresholds (pixels > t) -> N x T x 4 boxes, each that of
    ``largest_component_box``. Thresholds compare as Python floats, as the original's argparse
    values did (in the maps' own precision), whatever type they are given in.

    All maps and thresholds in one pass, with no per-image work: each binary map (``chunk``
    maps at a time, in a buffer that fits the cache) is cut into its runs of foreground
    pixels along the rows, and the components are the connected sets of runs (8-connected:
    runs of consecutive rows that overlap or touch at a corner).
    """
    maps = np.asarray(maps)
    count, height, width = maps.shape
    thresholds = [float(t) for t in thresholds]
    # Each map in a zero frame, one column either side and a row below, so that runs never
    # cross rows or maps: a run is then found by its flat positions in the stack of framed
    # maps, where its first pixel starts and where its row returns to zero.
    line, plane = width + 2, (height + 1) * (width + 2)
    framed = np.zeros((min(chunk, count), height + 1, line), dtype=bool)
    starts, stops = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for i, t in enumerate(thresholds):
        for first in range(0, count, chunk):
            part = maps[first : first + chunk]
            np.greater(part, t, out=framed[: len(part), :height, 1:-1])
            flat = framed[: len(part)].ravel()
            flips = np.flatnonzero(flat[1:] != flat[:-1]) + (i * count + first) * plane
            starts.append(flips[0::2])  # (row, column) of each run's first pixel, as row * line + column
            stops.append(flips[1::2])  # and its end (one past its last pixel)
    boxes = _largest_run_component(np.concatenate(starts), np.concatenate(stops), line, height, len(thresholds) * count)
    boxes[:, 2:] -= int(inclusive)  # else one past the last pixel, as regionprops
    boxes = np.where(boxes[:, :1] < 0, [0, 0, width, height], boxes)  # no foreground: the whole map
    return np.ascontiguousarray(boxes.reshape(len(thresholds), count, 4).swapaxes(0, 1))


def _largest_run_component(starts: np.ndarray, stops: np.ndarray, line: int, height: int, maps: int) -> np.ndarray:
    """Runs of foreground pixels, as sorted flat positions of their first pixel and end in a
    stack of framed maps (``line`` pixels a row, ``height`` + 1 rows a map) -> per map, the
    box (x0, y0, x1, y1; max exclusive) of its largest 8-connected component, ties to the
    component met first in row-major order; -1 where a map has none."""
    boxes = np.full((maps, 4), -1, dtype=np.int64)
    if len(starts) == 0:
        return boxes
    # A run touches the runs of the next row that end at or after its start and begin at or
    # before its end: one block of the sorted runs, found by two binary searches.
    below = np.searchsorted(stops, starts + line)
    above = np.searchsorted(starts, stops + line, side="right")
    links = np.maximum(above - below, 0)
    ends = np.cumsum(links)
    neighbours = np.arange(ends[-1]) + np.repeat(below - ends + links, links)
    graph = csr_matrix((np.ones(len(neighbours), dtype=np.int8), neighbours, np.r_[0, ends]), (len(starts),) * 2)
    count, component = connected_components(graph, directed=True, connection="weak")
    rows = starts // line
    x0, x1 = starts - rows * line, stops - rows * line
    area = np.bincount(component, weights=x1 - x0, minlength=count)
    first = np.full(count, len(starts))  # each component's first run: its first pixel in row-major order
    np.minimum.at(first, component, np.arange(len(starts)))
    left, right, last_row = np.full(count, line), np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
    np.minimum.at(left, component, x0)
    np.maximum.at(right, component, x1)
    np.maximum.at(last_row, component, rows)
    top = rows[first]
    owner = top // (height + 1)
    order = np.lexsort((first, -area, owner))  # per map: the largest, then the first met
    best = order[np.r_[True, owner[order][1:] != owner[order][:-1]]]
    offset = owner[best] * (height + 1)
    boxes[owner[best]] = np.stack([left[best], top[best] - offset, right[best], last_row[best] - offset + 1], axis=1)
    return boxes


def best_gt_iou(boxes: np.ndarray, gt_boxes: list[np.ndarray]) -> np.ndarray:
    """N x T x 4 predicted boxes and each image's GT boxes (k_n x 4) -> N x T, the best IoU
    over the image's GT boxes (0 for an image without any), all images in one computation."""
    gt_boxes = [np.asarray(g, dtype=np.float64).reshape(-1, 4) for g in gt_boxes]
    counts = np.array([len(g) for g in gt_boxes], dtype=np.int64)
    best = np.zeros(boxes.shape[:2])
    if counts.sum() == 0:
        return best
    gt = np.concatenate(gt_boxes)  # K x 4
    owner = np.repeat(np.arange(len(gt_boxes)), counts)  # K
    ious = paired_iou(boxes[owner], gt[:, None, :])  # K x T
    present = counts > 0
    best[present] = np.maximum.reduceat(ious, (np.cumsum(counts) - counts)[present], axis=0)
    return best


def original_protocol_ious(
    maps: np.ndarray, gt_boxes: list[np.ndarray], thresholds: Sequence[float], size: int = CROP, inclusive=False
) -> tuple[np.ndarray, np.ndarray]:
    """Raw N x h x w maps and each image's GT boxes (crop frame) -> the best IoU over the GT
    boxes (N x T) and the predicted boxes (N x T x 4), at each threshold."""
    normalized = resize_maps(normalize_minmax(maps), size)
    boxes = largest_component_boxes(normalized, thresholds, inclusive)
    return best_gt_iou(boxes, gt_boxes), boxes


def localization_accuracy(
    best_iou: np.ndarray, top1: np.ndarray, top5: np.ndarray, iou_threshold: float = 0.5
) -> dict[str, np.ndarray]:
    """N x T IoUs with N class hits -> Top-1 Loc, Top-5 Loc, GT-known Loc per threshold, in %."""
    hit = best_iou >= iou_threshold
    return {
        "top1_loc": 100.0 * (hit & top1[:, None]).mean(0),
        "top5_loc": 100.0 * (hit & top5[:, None]).mean(0),
        "gt_known": 100.0 * hit.mean(0),
    }


# ---------------------------------------------------------------------- MaxBoxAccV2
def normalize_scoremap(score_map: np.ndarray) -> np.ndarray:
    """wsolevaluation's normalization: min-max to [0, 1]; a flat or NaN map becomes zeros."""
    if np.isnan(score_map).any() or score_map.min() == score_map.max():
        return np.zeros_like(score_map)
    shifted = score_map - score_map.min()
    return shifted / shifted.max()


def level_extents(quantized: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Per level l, the smallest rectangle holding every pixel > l: H x W uint8 map and
    L levels -> L x 4 (x0, y0, x1, y1), inclusive; x0 > x1 where no pixel is above l."""

    def first_last(profile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ahead = np.maximum.accumulate(profile)  # ahead[i] = max(profile[: i + 1]), non-decreasing
        behind = np.maximum.accumulate(profile[::-1])
        first = np.searchsorted(ahead, levels, side="right")
        return first, len(profile) - 1 - np.searchsorted(behind, levels, side="right")

    x0, x1 = first_last(quantized.max(0))
    y0, y1 = first_last(quantized.max(1))
    return np.stack([x0, y0, x1, y1], axis=1)


def contours_by_level(quantized: np.ndarray, levels: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
    """Every contour, outer and inner, of the map thresholded at each level (pixels >
    level), with the number per level: wsolevaluation's cv2.RETR_TREE contours, listed
    without the hierarchy (cv2.RETR_LIST), which no box needs.

    Each level is traced inside the rectangle of its foreground (OpenCV traces pixels on
    the border as any other): the same contours as on the whole map, on fewer pixels.
    """
    found, counts = [], []
    for level, (x0, y0, x1, y1) in zip(levels.tolist(), level_extents(quantized, levels).tolist()):
        binary = cv2.threshold(quantized[y0 : y1 + 1, x0 : x1 + 1], level, 255, cv2.THRESH_BINARY)[1]
        contours = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE, offset=(x0, y0))[-2]
        found.extend(contours)
        counts.append(len(contours))
    return found, counts


def contour_boxes(contours: list[np.ndarray], width: int, height: int) -> np.ndarray:
    """wsolevaluation's box of each contour: cv2.boundingRect's (x, y, x + w, y + h) with
    x + w and y + h clipped to the last pixel. C contours -> C x 4."""
    points = np.concatenate(contours)[:, 0]  # P x 2
    starts = np.cumsum([0] + [len(c) for c in contours[:-1]])
    low, high = np.minimum.reduceat(points, starts), np.maximum.reduceat(points, starts)
    x1, y1 = np.minimum(high[:, 0] + 1, width - 1), np.minimum(high[:, 1] + 1, height - 1)
    return np.stack([low[:, 0], low[:, 1], x1, y1], axis=1).astype(np.int64)


def best_iou_per_level(score_map: np.ndarray, gt: np.ndarray, cam_thresholds: np.ndarray) -> np.ndarray:
    """One size x size map in [0, 1] -> the best IoU of any of its boxes with any GT box,
    at each CAM threshold (T).

    The map is quantized to uint8 and thresholded at int(t * max), so the binary map only
    changes at its distinct levels: contours are traced once per level.
    """
    quantized = (score_map * 255).astype(np.uint8)
    top = int(quantized.max())
    if top == 0:  # nothing above any level: wsolevaluation's box [0, 0, 0, 0]
        return np.full(len(cam_thresholds), box_iou(np.zeros((1, 4)), gt).max())
    unique, position = np.unique((cam_thresholds * top).astype(np.int64), return_inverse=True)  # int(t * max)
    # Every level below the max leaves some pixel above it, so each has a contour.
    contours, counts = contours_by_level(quantized, unique)
    boxes = contour_boxes(contours, *score_map.shape[::-1])
    best = np.maximum.reduceat(box_iou(boxes, gt).max(-1), np.cumsum([0] + counts[:-1]))  # levels
    return best[position]


def maxboxacc_correct(
    maps: np.ndarray,
    gt_boxes: list[np.ndarray],
    size: int = CROP,
    iou_thresholds: Sequence[int] = IOU_THRESHOLDS,
    cam_thresholds: np.ndarray = CAM_THRESHOLDS,
) -> np.ndarray:
    """Raw maps (any size) and GT boxes in the size x size frame -> N x T x I bool: some
    box at CAM threshold t has IoU >= the IoU threshold with some GT box."""
    iou_limits = np.asarray(iou_thresholds) / 100
    correct = np.zeros((len(maps), len(cam_thresholds), len(iou_limits)), dtype=bool)
    for n, (raw, gt) in enumerate(zip(maps, gt_boxes)):
        resized = cv2.resize(raw.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        best = best_iou_per_level(normalize_scoremap(resized), gt, cam_thresholds)
        correct[n] = best[:, None] >= iou_limits
    return correct


def maxboxacc_from_counts(counts: np.ndarray, num_images: int, iou_thresholds=IOU_THRESHOLDS) -> dict:
    """T x I counts of localized images (summed over batches) -> MaxBoxAccV2 and the best
    accuracy per IoU threshold, in %."""
    accuracy = 100.0 * counts / max(num_images, 1)  # T x I
    best = accuracy.max(0)
    report = {"MaxBoxAccV2": float(best.mean())}
    report.update({f"IoU{t}": float(b) for t, b in zip(iou_thresholds, best)})
    report.update(
        {
            f"best_threshold_IoU{t}": round(float(CAM_THRESHOLDS[i]), 6)
            for t, i in zip(iou_thresholds, accuracy.argmax(0))
        }
    )
    return report


# ------------------------------------------------------------------------ PxAP, PIoU
HISTOGRAM_EDGES = np.append(CAM_THRESHOLDS, [1.0, 2.0, 3.0])  # [0, .001), ..., [.999, 1), [1, 2), [2, 3]


def load_mask(mask_paths: Sequence[Path], ignore_path: Path | None, size: int = CROP) -> tuple[np.ndarray, np.ndarray]:
    """Foreground (any instance mask > 0.5, read in grayscale, resized nearest) and
    ignored pixels (the ignore mask minus the foreground), size x size bool each."""

    def read(path: Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise DatasetError(f"{path}: cannot read the mask")
        return cv2.resize(np.float32(image), (size, size), interpolation=cv2.INTER_NEAREST) > 0.5

    foreground = np.any([read(p) for p in mask_paths], axis=0)
    ignore = read(ignore_path) & ~foreground if ignore_path else np.zeros_like(foreground)
    return foreground, ignore


def pixel_histograms(
    maps: np.ndarray, foreground: np.ndarray, ignore: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of map scores over GT-foreground and GT-background pixels (ignored
    pixels left out). N x H x W each -> two histograms that add across batches."""
    background = ~foreground if ignore is None else ~foreground & ~ignore
    fg_hist = np.histogram(maps[foreground], bins=HISTOGRAM_EDGES)[0].astype(np.float64)
    bg_hist = np.histogram(maps[background], bins=HISTOGRAM_EDGES)[0].astype(np.float64)
    return fg_hist, bg_hist


def _cumulative(fg_hist: np.ndarray, bg_hist: np.ndarray):
    """tp, fp, fn at every threshold, from the highest down."""
    tp, fp = fg_hist[::-1].cumsum(), bg_hist[::-1].cumsum()
    return tp, fp, fg_hist.sum() - tp


def pxap(fg_hist: np.ndarray, bg_hist: np.ndarray) -> float:
    """Pixel average precision (wsolevaluation), in %."""
    tp, fp, fn = _cumulative(fg_hist, bg_hist)
    predicted = tp + fp
    precision = tp / np.where(predicted > 0, predicted, 1)
    recall = tp / max(tp[-1] + fn[-1], 1)
    return float(100 * (precision[1:] * np.diff(recall))[predicted[1:] > 0].sum())


def piou(fg_hist: np.ndarray, bg_hist: np.ndarray) -> float:
    """Best IoU over thresholds of the thresholded maps with the masks, dataset-wide (the
    original's count_pxap), in %."""
    tp, fp, fn = _cumulative(fg_hist, bg_hist)
    return float(100 * (tp / np.maximum(tp + fp + fn, 1)).max())
