"""Localization accuracy of a trained generator: Top-1 / Top-5 / GT-known Loc (the
original protocol) and MaxBoxAccV2 (wsolevaluation), from our checkpoints or the
original release's; or of any method's saved maps (--maps).

    python evaluator.py                                   # the demo's best checkpoint
    python evaluator.py --root CUB --data-dir /data/CUB_200_2011 --arch resnet --checkpoint resnet_cub.pth.tar
    python evaluator.py --maps scoremaps/ --root CUB --metadata metadata/CUB --output-dir scores/

Writes metrics.json (and, when asked, overlays in images/) to --output-dir, and maps to
--save-maps; an output folder must be new, empty, or one this project wrote.
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bas.distributed import finish_distributed, gather_objects, init_distributed
from bas.errors import ArgumentError, OutputError, require_unit_interval, run_main
from bas.outputs import check_writable, claim, differing_record, input_stamp, read_marker, write_text_atomic
from bas.viz import overlay, save_rgb
from WSOL import metrics
from WSOL.cli import (
    EVALUATION_KIND,
    MAPS_KIND,
    check_evaluation_args,
    class_names,
    evaluation_output_dir,
    evaluation_parser,
    load_samples,
    model_for_evaluation,
    resolve_preset,
)
from WSOL.datasets import Sample, ten_crop_transform, test_transform
from WSOL.inference import (
    Batch,
    BoxResults,
    box_results,
    evaluation_loader,
    image_size,
    map_topk,
    maxboxacc_counts,
    predict,
    save_maps,
    saved_map_batches,
)
from WSOL.presets import Preset

log = logging.getLogger("evaluator")


def get_args_parser() -> argparse.ArgumentParser:
    parser, group = evaluation_parser(__doc__)
    group.add_argument(
        "--threshold", type=float, nargs="+", help="CAM thresholds (default: the checkpoint's best, else the preset)"
    )
    group.add_argument("--tencrop", action="store_true", help="classify with the mean softmax of ten crops")
    group.add_argument(
        "--inclusive-box",
        action="store_true",
        help="score the predicted box with its last pixel as max (corrected); the original uses one past it",
    )
    group.add_argument("--no-maxboxacc", action="store_true", help="skip MaxBoxAccV2 (a second pass, uncropped)")
    group.add_argument(
        "--save-images", type=int, default=0, metavar="N", help="write N heat-map overlays to <output-dir>/images/"
    )
    group.add_argument(
        "--save-maps",
        type=Path,
        metavar="DIR",
        help="write our maps as DIR/<image_id>.npy in wsolevaluation's format (224 x 224, bicubic, min-max "
        "normalized); --maps DIR then gives this run's MaxBoxAccV2 at its thresholds. GT-known from saved maps is "
        "scored on the whole image resized to 224 (wsolevaluation's frame), not the original's center crop, so it "
        "differs from the model's",
    )
    return parser


class OverlayWriter:
    """Writes the first N images of the test set (sample indices below N, whichever
    process holds them) with their map, predicted box (green) at the first threshold, GT
    boxes (red), the class and the IoU, in the center-crop frame the boxes are scored in."""

    def __init__(
        self, samples: list[Sample], count: int, output: Path, resize: int, crop: int, names: list[str] | None
    ) -> None:
        self.samples, self.count, self.output = samples, count, output
        self.resize, self.crop, self.names = resize, crop, names

    def __call__(self, batch: Batch, boxes: np.ndarray) -> None:
        rows = np.flatnonzero(batch.indices < self.count)
        if len(rows) == 0:
            return
        maps = metrics.resize_maps(metrics.normalize_minmax(batch.maps[rows]), self.crop)
        shift = (self.resize - self.crop) // 2
        for row, score_map in zip(rows, maps):
            sample = self.samples[batch.indices[row]]
            with Image.open(sample.path) as image:
                image = np.asarray(image.convert("RGB").resize((self.resize, self.resize), Image.BILINEAR))
            image = np.ascontiguousarray(image[shift : shift + self.crop, shift : shift + self.crop])
            gt = metrics.boxes_in_crop(sample.boxes, image_size(sample), self.resize, self.crop)
            iou = metrics.box_iou(boxes[row, 0], gt).max() if len(gt) else 0.0
            label = self.names[sample.label] if self.names else f"class {sample.label}"
            picture = overlay(image, score_map, boxes[row, 0], gt, caption=f"{label}  IoU {iou:.2f}")
            directory = claim(self.output, EVALUATION_KIND) / "images"
            save_rgb(directory / Path(sample.image_id).with_suffix(".png").name, picture)


def evaluate_model(args: argparse.Namespace, device: torch.device, rank: int = 0, world: int = 1) -> dict:
    """The report of the checkpoint ``args`` names; under torchrun each process scores its
    share of the test set and every process returns the whole set's report."""
    model, extra, values = model_for_evaluation(args, device)
    args.threshold = args.threshold or [extra.get("best_thr") or values.threshold]
    args.topk = map_topk(args.topk, values.topk, args.num_classes)
    output = evaluation_output_dir(args)
    if args.save_maps:
        made_of = maps_made_of(args, values)
        check_maps_folder(args.save_maps, made_of)
    samples = load_samples(args, args.split)
    progress = not args.no_progress and rank == 0

    def batches(transform):
        loader = evaluation_loader(samples, transform, args.batch_size, args.workers, device, rank, world)
        return predict(model, loader, device, args.topk, args.amp, progress, args.channels_last)

    crop_transform = test_transform(values.resize, values.crop)
    if args.tencrop:
        crop_transform = _Both(crop_transform, ten_crop_transform(values.resize, values.crop))
    writer = OverlayWriter(samples, args.save_images, output, values.resize, values.crop, class_names(args))
    local = box_results(
        batches(crop_transform), samples, args.threshold, values.resize, values.crop, args.inclusive_box, writer
    )
    results = BoxResults.concatenate(gather_objects(local))
    report = {"checkpoint": str(args.checkpoint), "epoch": extra.get("epoch"), "split": args.split}
    report.update(results.summary(args.threshold, args.num_classes > 5))

    if not args.no_maxboxacc or args.save_maps:
        uncropped = batches(test_transform(values.crop, values.crop))
        if args.save_maps:
            folder = claim(args.save_maps, MAPS_KIND, thresholds=args.threshold, **made_of)
            uncropped = _saving(uncropped, samples, folder, values.crop)
        if args.no_maxboxacc:
            for _ in uncropped:  # the maps are only saved
                pass
        else:
            counts = sum(gather_objects(maxboxacc_counts(uncropped, samples, values.crop)))
            report.update(metrics.maxboxacc_from_counts(counts, len(samples)))
    return report


def maps_made_of(args: argparse.Namespace, values: Preset) -> dict:
    """What shapes saved maps, as their folder's marker records it: the weights (name, size,
    time written) and the settings a map depends on. The thresholds and ten-crop
    classification change no map."""
    settings = {"topk": args.topk, "size": values.crop, "precision": args.amp or "fp32"}
    return {"weights": input_stamp(args.checkpoint), "settings": settings}


def _maps_origin(made_of: dict) -> str:
    weights, settings = made_of.get("weights"), made_of.get("settings")
    if not weights or not settings:
        return "weights it does not record"
    written = datetime.fromtimestamp(weights["written"] / 1e9).isoformat(sep=" ", timespec="seconds")
    size = settings["size"]
    return (
        f"{weights['name']} ({weights['bytes']} bytes, written {written}; "
        f"top-{settings['topk']} maps, {size} x {size}, {settings['precision']})"
    )


def check_maps_folder(folder: Path, made_of: dict) -> None:
    """--save-maps adds maps only to a folder of maps made as these are: an interrupted run
    into another model's maps would leave a mixture that --maps scores as one model."""
    check_writable(folder, MAPS_KIND, "Choose another --save-maps folder.")
    recorded = differing_record(folder, made_of)
    if recorded is not None:
        raise OutputError(
            f"{folder} holds maps of {_maps_origin(recorded)}, not of {_maps_origin(made_of)}; "
            "choose another --save-maps or remove it"
        )


class _Both:
    """Center crop and ten crops of one image (ten-crop classification)."""

    def __init__(self, center, tencrop) -> None:
        self.center, self.tencrop = center, tencrop

    def __call__(self, image):
        return self.center(image), self.tencrop(image)


def _saving(batches, samples, directory, size):
    """Passes the batches on, writing their maps to ``directory`` on the way."""
    for batch in batches:
        save_maps(batch, samples, directory, size)
        yield batch


def evaluate_saved_maps(args: argparse.Namespace, rank: int = 0, world: int = 1) -> dict:
    """MaxBoxAccV2, and GT-known Loc at --threshold (default: the thresholds the maps were
    saved with), of saved maps against the dataset's boxes resized to the crop size (224 x
    224 on the real datasets, as wsolevaluation); each process scores its share.

    No pixel is read: with --metadata whose image_sizes.txt gives every size, no --data-dir
    is needed (the boxes are scaled by those sizes)."""
    images = args.data_dir is not None or args.metadata is None
    values = resolve_preset(args)
    evaluation_output_dir(args)
    marker = read_marker(args.maps) or {}
    thresholds = args.threshold or marker.get("thresholds") or [values.threshold]
    samples = load_samples(args, args.split, images=images)
    best_iou, counts = [np.zeros((0, len(thresholds)))], 0
    for chunk, maps in saved_map_batches(args.maps, samples[rank::world], values.crop):
        gt = [metrics.boxes_resized(s.boxes, image_size(s), values.crop) for s in chunk]
        best_iou.append(metrics.original_protocol_ious(maps, gt, thresholds, size=values.crop)[0])
        counts = counts + metrics.maxboxacc_correct(maps, gt, size=values.crop).sum(0)
    gathered = gather_objects((np.concatenate(best_iou), counts))
    gt_known = 100.0 * (np.concatenate([part[0] for part in gathered]) >= 0.5).mean(0)
    counts = sum(part[1] for part in gathered)
    best = int(np.argmax(gt_known))
    report = {"maps": str(args.maps), "split": args.split, "images": len(samples)}
    report.update(gt_known=float(gt_known[best]), threshold=round(float(thresholds[best]), 6))
    return {**report, **metrics.maxboxacc_from_counts(counts, len(samples))}


def print_table(report: dict) -> None:
    rows = [
        ("images", "images", "{:d}"),
        ("cls top-1", "cls_top1", "{:.2f}"),
        ("cls top-5", "cls_top5", "{:.2f}"),
        ("top-1 loc", "top1_loc", "{:.2f}"),
        ("top-5 loc", "top5_loc", "{:.2f}"),
        ("GT-known loc", "gt_known", "{:.2f}"),
        ("CAM threshold", "threshold", "{:g}"),
        ("MaxBoxAccV2", "MaxBoxAccV2", "{:.2f}"),
        ("  IoU 30 / 50 / 70", "IoU30", None),
    ]
    for name, key, fmt in rows:
        if key not in report:
            continue
        value = fmt.format(report[key]) if fmt else " / ".join(f"{report[f'IoU{t}']:.2f}" for t in (30, 50, 70))
        print(f"{name:<20} {value:>20}")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = get_args_parser().parse_args(argv)
    check_evaluation_args(args)
    require_unit_interval("--threshold", args.threshold)
    if args.save_images < 0:
        raise ArgumentError(f"--save-images {args.save_images}: must be 0 or more")
    device, rank, world = init_distributed(args.device, args.local_rank, args.dist_timeout)
    report = evaluate_saved_maps(args, rank, world) if args.maps else evaluate_model(args, device, rank, world)
    if rank == 0:
        path = claim(args.output_dir, EVALUATION_KIND) / "metrics.json"
        write_text_atomic(path, json.dumps(report, indent=2) + "\n")
        print_table(report)
        print(f"metrics written to {path}")
    finish_distributed()


if __name__ == "__main__":
    run_main(main)
