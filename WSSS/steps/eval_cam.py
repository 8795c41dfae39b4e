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
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bas.engine import gather_objects
from bas.errors import DatasetError, OutputError, UserError
from bas.outputs import claim, read_marker, write_text_atomic
from WSSS import datasets, metrics
from WSSS.seeds import read_seed, seed_path

log = logging.getLogger(__name__)

OUTPUT_KIND = "wsss-eval"


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


def shown(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def print_report(report: dict) -> None:
    print(f"seeds {report['cam_out_dir']} on {report['eval_set']} ({report['images']} images)")
    print(f"{'threshold':>10} {'mIoU':>8} {'fg on bg':>9}")
    for t, miou, fg_on_bg in zip(report["thresholds"], report["miou"], report["fg_on_bg"]):
        print(f"{t:>10.2f} {shown(miou, 8, 2)} {shown(fg_on_bg, 9, 3)}")
    best = shown(report["best_miou"], 0, 2)
    print(f"best: threshold {report['best_threshold']:.2f}, mIoU {best}; IoU per class (- : in neither):")
    for name, value in report["iou_at_best"].items():
        print(f"  {name:<14} {shown(value, 6, 2)}")


def claim_output(folder: Path, kind: str, rank: int, hint: str = "", settings: dict | None = None) -> None:
    """Rank 0 claims ``folder`` for ``kind`` (``bas.outputs.claim``) before any work; when
    it may not, every process stops with its message, so that none waits for the others.
    ``settings``, the choices its per-image files are made with, are recorded in the
    folder's marker: a folder of files made otherwise is refused, since a re-run only adds
    the missing files and would mix the two."""
    error = None
    if settings is not None:  # as the marker will hold them: JSON's lists, numbers and strings
        settings = json.loads(json.dumps(settings, default=str))
    if rank == 0:
        try:
            marker = read_marker(folder) or {}
            recorded = marker.get("settings") if marker.get("kind") == kind else None
            if settings is not None and recorded is not None and recorded != settings:
                raise OutputError(f"{folder} holds files made with {recorded}, not {settings}: remove it or {hint}")
            claim(folder, kind, hint, **({} if settings is None else {"settings": settings}))
        except UserError as caught:
            error = caught
    error = gather_objects(error)[0]
    if error is not None:
        raise error


def output_folder(inputs: str | Path, chosen: str | None) -> Path:
    """Where a report on the folder ``inputs`` goes: ``chosen`` (a flag's value), else a
    sibling (result/cam -> result/cam_eval), so that the scored folder, maybe the
    original's, is only read."""
    if chosen is not None:
        return Path(chosen)
    scored = Path(inputs).resolve()
    return scored.with_name(f"{scored.name}_eval")


def report_path(args: argparse.Namespace) -> Path:
    """Where the report on ``args.cam_out_dir``'s seeds on ``args.chainer_eval_set`` goes."""
    out_dir = output_folder(args.cam_out_dir, args.cam_eval_out_dir)
    return out_dir / f"eval_cam_{Path(args.chainer_eval_set).stem}.json"


def run(args: argparse.Namespace) -> dict:
    """Scores ``args.cam_out_dir`` on ``args.chainer_eval_set``, at ``args.cam_eval_thres``
    (a list) or the original's sweep; each process scores every world-th id and every
    process returns the whole set's report. Rank 0 prints it and writes it as JSON."""
    thresholds = sorted(args.cam_eval_thres or metrics.SWEEP)
    masks = datasets.pipeline_data(args).masks(args.chainer_eval_set)
    classes = datasets.pipeline_data(args).classes
    path = report_path(args)
    claim_output(path.parent, OUTPUT_KIND, args.rank, "choose another --cam_eval_out_dir")
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
