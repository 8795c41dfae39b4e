"""Stage eval_cam: the mIoU of a folder of seeds against the VOC masks, at every
background threshold of a sweep.

Reads the list of ``chainer_eval_set`` (``ImageSets/Segmentation/<set>.txt``, or a list
file), each id's mask (``SegmentationClass/<id>.png``; ``SegmentationClassAug`` for
train_aug) and seed ``<cam_out_dir>/<id>.npz`` (make_cam's) or ``<id>.npy`` (the
original's; ``WSSS.seeds`` reads both; ``high_res`` is what is scored, as in the original).
No images are needed. Each seed is read once and scored at all thresholds together (the
original read every file again for each of its 25 thresholds); the numbers are the original's.

Reading a seed runs no code: ours hold plain arrays, and the original's pickles are rebuilt
admitting numpy arrays and torch tensors only (a file naming anything else is refused).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from bas.distributed import gather_objects
from bas.outputs import write_text_atomic
from WSSS import datasets, metrics
from WSSS.reports import REPORT_KIND, report_number, report_path, score_files, shown
from WSSS.seeds import read_seed, seed_path
from WSSS.sharding import claim_output

log = logging.getLogger(__name__)


def score_seeds(
    cam_out_dir: Path,
    masks: datasets.MaskSet,
    thresholds: Sequence[float],
    num_classes: int,
    indices: Sequence[int] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """``metrics.threshold_counts`` summed over the masks at ``indices`` (default: all),
    each seed and mask read once: n x n x (T + 1) for ascending ``thresholds``, n =
    num_classes + 1 (the background)."""

    def score(path: Path, gt: np.ndarray) -> np.ndarray:
        keys, cams = read_seed(path)
        return metrics.threshold_counts(cams, keys, gt, thresholds, num_classes + 1)

    counts = np.zeros((num_classes + 1, num_classes + 1, len(thresholds) + 1), dtype=np.int64)
    path_of = partial(seed_path, cam_out_dir)
    return score_files(path_of, masks, score, counts, indices, "eval_cam", progress)


def summarize(counts: np.ndarray, thresholds: Sequence[float], classes: Sequence[str]) -> dict:
    """mIoU (percent) and the share of predicted foreground on background per threshold;
    the per-class IoU (percent) at the best threshold (the first of equals). ``classes``:
    the foreground class names. Undefined values (nan) are None."""
    confusions = metrics.threshold_confusions(counts)  # T x n x n
    miou = 100 * metrics.mean_iou(confusions)
    best = int(np.nanargmax(miou)) if not np.all(np.isnan(miou)) else 0
    per_class = 100 * metrics.iou(confusions[best])
    return {
        "thresholds": [float(t) for t in thresholds],
        "miou": [report_number(v) for v in miou],
        "fg_on_bg": [report_number(v) for v in metrics.foreground_on_background(confusions)],
        "best_threshold": float(thresholds[best]),
        "best_miou": report_number(miou[best]),
        "iou_at_best": {name: report_number(v) for name, v in zip(("background", *classes), per_class)},
    }


def print_report(report: dict) -> None:
    print(f"seeds {report['cam_out_dir']} on {report['eval_set']} ({report['images']} images)")
    print(f"{'threshold':>10} {'mIoU':>8} {'fg on bg':>9}")
    for t, miou, fg_on_bg in zip(report["thresholds"], report["miou"], report["fg_on_bg"]):
        print(f"{t:>10.2f} {shown(miou, 8, 2)} {shown(fg_on_bg, 9, 3)}")
    best = shown(report["best_miou"], 0, 2)
    print(f"best: threshold {report['best_threshold']:.2f}, mIoU {best}; IoU per class (- : in neither):")
    for name, value in report["iou_at_best"].items():
        print(f"  {name:<14} {shown(value, 6, 2)}")


def run(args: argparse.Namespace) -> dict:
    """Scores ``args.cam_out_dir`` on ``args.chainer_eval_set``, at ``args.cam_eval_thres``
    (a list) or the original's sweep; each process scores every world-th id and every
    process returns the whole set's report. Rank 0 prints it and writes it as JSON."""
    thresholds = sorted(args.cam_eval_thres or metrics.SWEEP)
    masks = datasets.pipeline_data(args).masks(args.chainer_eval_set)
    classes = datasets.pipeline_data(args).classes
    path = report_path(args)
    claim_output(path.parent, REPORT_KIND, args.rank, "choose another --cam_eval_out_dir")
    local = score_seeds(
        args.cam_out_dir,
        masks,
        thresholds,
        len(classes),
        indices=range(args.rank, len(masks), args.world),
        progress=args.rank == 0 and not args.no_progress,
    )
    counts = sum(gather_objects(local))
    report = {"cam_out_dir": str(args.cam_out_dir), "eval_set": args.chainer_eval_set, "images": len(masks)}
    report.update(summarize(counts, thresholds, classes))
    if args.rank == 0:
        print_report(report)
        write_text_atomic(path, json.dumps(report, indent=2) + "\n")
        log.info("eval_cam: report written to %s", path)
    return report
