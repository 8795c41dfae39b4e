"""Segmentation metrics: the confusion matrix and mIoU, the seeds' scores at many
background thresholds from one reading of each seed, and the scores of labellings that
leave pixels unsure (IR labels: 255 where neither confident foreground nor background).

The conventions are the original's (IRN's eval_cam with chainercv's confusion): rows are
the ground truth, columns the prediction, class 0 is the background, pixels labelled
``IGNORE`` (255, the VOC border) are left out, IoU = diag / (row + col - diag), and the
mIoU is the mean over the classes whose IoU is defined (a class absent from both the
ground truth and the prediction has IoU nan and is left out, as ``np.nanmean`` does).

A seed scores a pixel as the first maximum of [t, cam_1, ..., cam_K] (the background
plane t in front), mapped through [0, key_1 + 1, ..., key_K + 1]. Confusion matrices are
counts, so matrices of images, or of processes, add up before the IoU is taken.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

IGNORE = 255
# The original's background sweep: t = i / 100 for i in 20..44 (25 thresholds).
SWEEP = tuple(i / 100.0 for i in range(20, 45))


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (ground truth, prediction) pairs over the pixels whose ground truth is
    not ``IGNORE``. gt, pred: H x W integer labels in [0, num_classes) -> n x n int64."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    valid = gt != IGNORE
    pairs = gt[valid].astype(np.int64) * num_classes + pred[valid]
    counts = np.bincount(pairs, minlength=num_classes**2)
    if counts.size > num_classes**2:  # a label at or past num_classes (cheaper to find here than before)
        raise ValueError(f"labels at or above {num_classes} (other than {IGNORE})")
    return counts.reshape(num_classes, num_classes)


def iou(confusion: np.ndarray) -> np.ndarray:
    """Per-class IoU of an n x n (or ... x n x n) confusion matrix; nan where a class is in
    neither the ground truth nor the prediction."""
    diag = np.diagonal(confusion, axis1=-2, axis2=-1)
    union = confusion.sum(-1) + confusion.sum(-2) - diag
    with np.errstate(divide="ignore", invalid="ignore"):
        return diag / union


def mean_iou(confusion: np.ndarray) -> np.ndarray | np.floating:
    """The original's mIoU: ``np.nanmean`` of the per-class IoU (over the last axis); nan,
    without a warning, where no class is defined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(iou(confusion), axis=-1)


def foreground_on_background(confusion: np.ndarray) -> np.ndarray | np.floating:
    """The share of the pixels predicted as foreground that are background in the ground
    truth (the original BAS eval_cam's second printed number)."""
    predicted_fg = confusion[..., :, 1:].sum((-2, -1))
    on_bg = confusion[..., 0, 1:].sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return on_bg / predicted_fg


# ------------------------------------------------------------ many thresholds at once
def threshold_counts(
    cams: np.ndarray, keys: np.ndarray, gt: np.ndarray, thresholds: Sequence[float], num_classes: int
) -> np.ndarray:
    """What the confusion matrices of one seed at every background threshold need, from
    one pass over the seed: counts over (gt class, foreground class, j), where j is how
    many thresholds lie below the pixel's top foreground score.

    At threshold t a pixel is foreground exactly when its top score beats t (a score equal
    to t loses: the background plane is first), and it then takes the class of its first
    top score, whatever t is. So the class is found once, and counting the thresholds
    below the top score says at which of them the pixel is foreground. The thresholds are
    cast to the cams' dtype, as the original's padding casts t, so that ties fall the same way.

    cams: K x H x W scores of the seed's classes, keys: K class indices (0-based, the
    background excluded), gt: H x W labels (``IGNORE`` left out), thresholds: T values in
    ascending order. Returns n x n x (T + 1) int64 (n = num_classes, the background
    included); add them over images, then ``threshold_confusions``.
    """
    levels = np.asarray(thresholds, dtype=cams.dtype if cams.dtype.kind == "f" else np.float64)
    if np.any(np.diff(levels) < 0):
        raise ValueError("thresholds must be in ascending order")
    if cams.ndim != 3 or len(keys) != len(cams):
        raise ValueError(f"cams {cams.shape} do not hold one H x W map per key ({len(keys)} keys)")
    if cams.shape[1:] != gt.shape:
        raise ValueError(f"ground truth {gt.shape} and seed {cams.shape[1:]} differ in size")
    if len(keys) and not 0 <= int(np.min(keys)) <= int(np.max(keys)) < num_classes - 1:
        raise ValueError(f"class keys {np.asarray(keys).tolist()} out of range for {num_classes - 1} classes")
    if gt.size and (int(gt.min()) < 0 or int(gt.max()) > IGNORE):
        raise ValueError(f"ground truth labels outside 0..{num_classes - 1} and {IGNORE}")
    bins = len(levels) + 1
    if len(keys) == 0:  # no foreground plane: background everywhere, at every threshold
        first, below, planes, classes = 0, 0, 1, np.zeros(1, np.int64)
    else:
        first, below = top_class_and_bin(cams, levels)
        planes, classes = len(keys), np.asarray(keys, dtype=np.int64) + 1
    # One bincount over (gt label, plane, j) with gt as read (the void label 255 included,
    # cheaper to drop from the counts than from the pixels), then planes become classes.
    # In place and in the smallest unsigned type that holds the index (two bytes for up to
    # 9 planes at 25 thresholds): each pass over the pixels moves as few bytes as it can.
    size = (IGNORE + 1) * planes * bins
    index = gt.astype(np.min_scalar_type(size - 1))
    index *= planes
    index += first
    index *= bins
    index += below
    by_label = np.bincount(index.ravel(), minlength=size).reshape(IGNORE + 1, planes, bins)
    if by_label[num_classes:IGNORE].any():
        raise ValueError(f"ground truth labels at or above {num_classes} (other than {IGNORE})")
    counts = np.zeros((num_classes, num_classes, bins), dtype=np.int64)
    np.add.at(counts, (slice(None), classes), by_label[:num_classes])
    return counts


def top_class_and_bin(cams: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel of K x H x W ``cams``: the plane of the first top score, as ``np.argmax``
    gives it, and how many of the ascending ``levels`` lie strictly below that score
    (a nan score, which ``np.argmax`` takes for the top, beats them all). Both H x W, as
    small unsigned integers: whole-map comparisons and sums, no per-pixel search or
    masked write, which cost more than the rest of the scoring together."""
    top = cams[0] if len(cams) == 1 else cams.max(axis=0)  # nan where a score is nan
    below = np.zeros(top.shape, dtype=np.min_scalar_type(len(levels)))
    above = np.empty(top.shape, dtype=bool)
    for level in levels:
        np.greater(top, level, out=above)
        np.add(below, above.view(np.uint8), out=below)  # as bytes: no cast from bool
    plane_type = np.min_scalar_type(len(cams) - 1)
    nan = np.isnan(top)
    if nan.any():
        below[nan] = len(levels)
        return np.argmax(cams, axis=0).astype(plane_type), below
    # The first top plane is the number of planes before it: the length of the leading
    # run of planes below the top (the last plane is at the top when all others are not).
    first = np.zeros(top.shape, dtype=plane_type)
    if len(cams) > 1:
        not_yet = cams[0] != top
        first += not_yet
        for plane in cams[1:-1]:
            not_yet &= plane != top
            first += not_yet
    return first, below


def threshold_confusions(counts: np.ndarray) -> np.ndarray:
    """The confusion matrix at each threshold, from ``threshold_counts`` (summed over
    images): a pixel counted with j thresholds below its top score is foreground at the
    thresholds 0..j-1 and background at j..T-1. n x n x (T + 1) -> T x n x n int64."""
    # foreground[i] = counts with j > i: a cumulative sum from the top bin down.
    foreground = np.cumsum(counts[..., :0:-1], axis=-1)[..., ::-1]  # n x n x T
    background = np.cumsum(counts[..., :-1].sum(1), axis=-1)  # n x T: j <= i, whatever the class
    confusions = np.moveaxis(foreground, -1, 0).copy()  # T x n x n
    confusions[:, :, 0] += background.T
    return confusions


# ------------------------------------------------------------- labels with unsure pixels
UNSURE = ("background", "ignore")


def unsure_confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``confusion_matrix`` of a labelling that may leave pixels unsure (``IGNORE`` in
    ``pred``, as IR labels do), with one more column that counts them, so that one pass
    serves both ways of scoring them (``fold_unsure``). gt, pred: H x W -> n x (n + 1) int64."""
    unsure = pred == IGNORE
    if np.any(pred[~unsure] >= num_classes):
        raise ValueError(f"predicted labels at or above {num_classes} (other than {IGNORE})")
    return confusion_matrix(gt, np.where(unsure, num_classes, pred), num_classes + 1)[:num_classes]


def fold_unsure(counts: np.ndarray, unsure: str = "background") -> np.ndarray:
    """The n x n confusion of ``unsure_confusion`` counts (summed over images): the unsure
    pixels as background ("background", IRN's eval_sem_seg, which sets 255 to 0 before
    scoring) or left out ("ignore": the labels' quality where they say something)."""
    if unsure not in UNSURE:
        raise ValueError(f"unsure {unsure!r}: expected one of {UNSURE}")
    confusion = counts[:, :-1].copy()
    if unsure == "background":
        confusion[:, 0] += counts[:, -1]
    return confusion


def coverage(counts: np.ndarray) -> np.floating:
    """The share of the scored pixels (ground truth not ``IGNORE``) that the labels label."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1 - counts[:, -1].sum() / counts.sum()


def precision(counts: np.ndarray) -> np.floating:
    """The share of the labelled pixels whose label is right (pixel accuracy, unsure left out)."""
    labelled = counts[:, :-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.trace(labelled) / labelled.sum()
