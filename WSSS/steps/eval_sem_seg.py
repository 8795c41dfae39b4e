"""Stage eval_sem_seg: the mIoU of a folder of label PNGs against the VOC masks, as IRN's
eval_sem_seg scores the pseudo masks of make_sem_seg_labels.

Reads the list of ``chainer_eval_set`` and each id's mask (as eval_cam) and label
``<sem_seg_out_dir>/<id>.png`` (H x W class indices, grayscale or palette: 0 background,
c + 1 for class c, 255 unsure). Any folder of such PNGs can be scored: IR labels, pseudo
masks, a segmentation net's predictions.

Unsure pixels (255) are scored two ways from one reading:

- as background: IRN's number (its eval_sem_seg sets 255 to 0 before scoring), the
  report's ``miou`` and ``iou``; an unsure pixel costs what a missed object costs;
- left out: ``miou_labelled`` and ``iou_labelled``, with ``coverage`` (the share of the
  pixels that are labelled) and ``precision`` (the share of the labelled pixels labelled
  right): the quality of confident labels, such as IR labels, where they say something.

A folder without 255 has coverage 100 and the same mIoU both ways. All values in percent.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bas.engine import gather_objects
from bas.outputs import write_text_atomic
from WSSS import datasets, metrics
from WSSS.labels import read_labels
from WSSS.steps.eval_cam import OUTPUT_KIND, claim_output, output_folder, report_number, score_files, shown

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser, add) -> None:
    group = parser.add_argument_group("semantic segmentation labels (eval_sem_seg)")
    add(
        group,
        "sem_seg_eval_out_dir",
        help="where eval_sem_seg writes its JSON report (default: <sem_seg_out_dir>_eval)",
    )


def label_counts(
    folder: str | Path,
    masks: datasets.MaskSet,
    num_classes: int,
    indices: Sequence[int] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """``metrics.unsure_confusion`` of ``<folder>/<id>.png`` summed over the masks at
    ``indices`` (default: all): n x (n + 1), n = num_classes + 1 (the background)."""

    def score(path: Path, gt: np.ndarray) -> np.ndarray:
        return metrics.unsure_confusion(gt, read_labels(path, num_classes), num_classes + 1)

    def png(image_id: str) -> Path:
        return Path(folder) / f"{image_id}.png"

    counts = np.zeros((num_classes + 1, num_classes + 2), dtype=np.int64)
    return score_files(png, masks, score, counts, indices, "eval_sem_seg", progress)


def summarize_labels(counts: np.ndarray, classes: Sequence[str], unsure: str = "background") -> dict:
    """mIoU and per-class IoU with the unsure pixels as background or left out (``unsure``,
    see ``metrics.fold_unsure``), coverage and precision; percent, undefined (nan) as None.
    ``counts``: from ``label_counts``; ``classes``: the foreground class names."""
    confusion = metrics.fold_unsure(counts, unsure)
    return {
        "miou": report_number(100 * metrics.mean_iou(confusion)),
        "iou": {name: report_number(v) for name, v in zip(("background", *classes), 100 * metrics.iou(confusion))},
        "coverage": report_number(100 * metrics.coverage(counts)),
        "precision": report_number(100 * metrics.precision(counts)),
    }


def score_label_folder(
    folder: str | Path, masks: datasets.MaskSet, classes: Sequence[str], unsure: str = "background"
) -> dict:
    """``summarize_labels`` of a whole folder in this process: for tables that compare
    folders (seeds' IR labels, pseudo masks, predictions) side by side."""
    return summarize_labels(label_counts(folder, masks, len(classes)), classes, unsure)


def print_report(report: dict) -> None:
    print(f"labels {report['sem_seg_out_dir']} on {report['eval_set']} ({report['images']} images)")
    print(f"mIoU {shown(report['miou'], 0, 2)} (unsure pixels as background, as IRN)")
    print(
        f"labelled {shown(report['coverage'], 0, 1)} % of the pixels, {shown(report['precision'], 0, 1)} % of "
        f"them right; mIoU on them {shown(report['miou_labelled'], 0, 2)}"
    )
    print(f"IoU per class (- : in neither):\n  {'':<14} {'all':>6} {'labelled':>9}")
    for name, value in report["iou"].items():
        print(f"  {name:<14} {shown(value, 6, 2)} {shown(report['iou_labelled'][name], 9, 2)}")


def run(args: argparse.Namespace) -> dict:
    """Scores ``args.sem_seg_out_dir`` on ``args.chainer_eval_set``; each process scores
    every world-th id and every process returns the whole set's report. Rank 0 prints it
    and writes it as JSON."""
    masks = datasets.pipeline_data(args).masks(args.chainer_eval_set)
    classes = datasets.pipeline_data(args).classes
    out_dir = output_folder(args.sem_seg_out_dir, args.sem_seg_eval_out_dir)
    claim_output(out_dir, OUTPUT_KIND, args.rank, "choose another --sem_seg_eval_out_dir")
    local = label_counts(
        args.sem_seg_out_dir,
        masks,
        len(classes),
        indices=range(args.rank, len(masks), args.world),
        progress=args.rank == 0 and not args.no_progress,
    )
    counts = sum(gather_objects(local))
    labelled = summarize_labels(counts, classes, "ignore")
    report = {"sem_seg_out_dir": str(args.sem_seg_out_dir), "eval_set": args.chainer_eval_set, "images": len(masks)}
    report.update(summarize_labels(counts, classes, "background"))
    report.update(miou_labelled=labelled["miou"], iou_labelled=labelled["iou"])
    if args.rank == 0:
        print_report(report)
        path = out_dir / f"eval_sem_seg_{Path(args.chainer_eval_set).stem}.json"
        write_text_atomic(path, json.dumps(report, indent=2) + "\n")
        log.info("eval_sem_seg: report written to %s", path)
    return report
