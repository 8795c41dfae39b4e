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
from collections.abc import Sequence
from pathlib import Path

from WSSS import datasets
from WSSS.reports import label_counts, label_report, summarize_labels


def add_arguments(parser: argparse.ArgumentParser, add) -> None:
    group = parser.add_argument_group("semantic segmentation labels (eval_sem_seg)")
    add(
        group,
        "sem_seg_eval_out_dir",
        help="where eval_sem_seg writes its JSON report (default: <sem_seg_out_dir>_eval)",
    )


def score_label_folder(
    folder: str | Path, masks: datasets.MaskSet, classes: Sequence[str], unsure: str = "background"
) -> dict:
    """``summarize_labels`` of a whole folder in this process: for tables that compare
    folders (seeds' IR labels, pseudo masks, predictions) side by side."""
    return summarize_labels(label_counts(folder, masks, len(classes)), classes, unsure)


def run(args: argparse.Namespace) -> dict:
    """Scores ``args.sem_seg_out_dir`` on ``args.chainer_eval_set`` (``WSSS.reports.label_report``)."""
    return label_report(args, args.sem_seg_out_dir, args.chainer_eval_set, args.sem_seg_eval_out_dir)
