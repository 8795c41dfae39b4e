"""Scoring a folder of per-image files (seeds, label PNGs) against the masks, and the JSON
reports of the scoring stages (eval_cam, eval_sem_seg, eval_seg): where they go, their
numbers, how they print. A report goes into a folder of its own beside the scored one, so
that the scored folder, maybe the original's, is only read.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bas.distributed import gather_objects
from bas.errors import DatasetError
from bas.outputs import write_text_atomic
from WSSS import datasets, metrics
from WSSS.labels import read_labels
from WSSS.sharding import claim_output

log = logging.getLogger(__name__)

REPORT_KIND = "wsss-eval"  # what a report folder's marker says it holds


def score_files(
    path_of: Callable[[str], Path],
    masks: datasets.MaskSet,
    score: Callable[[Path, np.ndarray], np.ndarray],
    total: np.ndarray,
    indices: Sequence[int] | None = None,
    desc: str = "",
    progress: bool = False,
) -> np.ndarray:
    """``total`` plus ``score(path_of(id), mask)`` for the masks at ``indices``
    (default: all), each mask read once: the loop of every stage that scores a folder of
    per-image files. A ValueError of the scoring (a size, a label) names the file and the mask."""
    indices = range(len(masks)) if indices is None else indices
    for index in tqdm(indices, desc=desc, disable=None if progress else True, leave=False):
        image_id, gt = masks[index]
        path = path_of(image_id)
        try:
            total = total + score(path, gt)
        except DatasetError:
            raise
        except ValueError as error:
            raise DatasetError(f"{path} scored against the mask of {image_id}: {error}") from None
    return total


def report_number(value: float) -> float | None:
    """A report value; nan (a class in neither the masks nor the seeds) as None, JSON's null."""
    return None if np.isnan(value) else float(value)


def shown(value: float | None, width: int, digits: int) -> str:
    """A report value in ``width`` characters with ``digits`` decimals; None as "-"."""
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def output_folder(inputs: str | Path, chosen: str | None) -> Path:
    """Where a report on the folder ``inputs`` goes: ``chosen`` (a flag's value), else a
    sibling (result/cam -> result/cam_eval), so that the scored folder, maybe the
    original's, is only read."""
    if chosen is not None:
        return Path(chosen)
    scored = Path(inputs).resolve()
    return scored.with_name(f"{scored.name}_eval")


def report_path(args: argparse.Namespace) -> Path:
    """Where eval_cam's report on ``args.cam_out_dir``'s seeds on ``args.chainer_eval_set``
    goes (the pictures read the seeds' best threshold there)."""
    out_dir = output_folder(args.cam_out_dir, args.cam_eval_out_dir)
    return out_dir / f"eval_cam_{Path(args.chainer_eval_set).stem}.json"


# ---------------------------------------------------------------------- label PNGs
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


def print_label_report(report: dict) -> None:
    print(f"labels {report['sem_seg_out_dir']} on {report['eval_set']} ({report['images']} images)")
    print(f"mIoU {shown(report['miou'], 0, 2)} (unsure pixels as background, as IRN)")
    print(
        f"labelled {shown(report['coverage'], 0, 1)} % of the pixels, {shown(report['precision'], 0, 1)} % of "
        f"them right; mIoU on them {shown(report['miou_labelled'], 0, 2)}"
    )
    print(f"IoU per class (- : in neither):\n  {'':<14} {'all':>6} {'labelled':>9}")
    for name, value in report["iou"].items():
        print(f"  {name:<14} {shown(value, 6, 2)} {shown(report['iou_labelled'][name], 9, 2)}")


def label_report(args: argparse.Namespace, folder: str | Path, eval_set: str, chosen: str | None) -> dict:
    """Scores the label PNGs in ``folder`` on the list ``eval_set`` (eval_sem_seg's report,
    also eval_seg's on its predictions); each process scores every world-th id and every
    process returns the whole set's report. Rank 0 prints it and writes it as JSON into
    ``chosen`` (a flag's value), else beside ``folder`` (``output_folder``). ``args``: the
    pipeline's flags (the dataset, rank, world, no_progress)."""
    masks = datasets.pipeline_data(args).masks(eval_set)
    classes = datasets.pipeline_data(args).classes
    out_dir = output_folder(folder, chosen)
    claim_output(out_dir, REPORT_KIND, args.rank, "choose another --sem_seg_eval_out_dir")
    local = label_counts(
        folder,
        masks,
        len(classes),
        indices=range(args.rank, len(masks), args.world),
        progress=args.rank == 0 and not args.no_progress,
    )
    counts = sum(gather_objects(local))
    labelled = summarize_labels(counts, classes, "ignore")
    report = {"sem_seg_out_dir": str(folder), "eval_set": eval_set, "images": len(masks)}
    report.update(summarize_labels(counts, classes, "background"))
    report.update(miou_labelled=labelled["miou"], iou_labelled=labelled["iou"])
    if args.rank == 0:
        print_label_report(report)
        path = out_dir / f"eval_sem_seg_{Path(eval_set).stem}.json"
        write_text_atomic(path, json.dumps(report, indent=2) + "\n")
        log.info("eval_sem_seg: report written to %s", path)
    return report
