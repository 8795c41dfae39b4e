"""Pixel-level localization: PxAP and PIoU (wsolevaluation's PxAP; the original's PIoU)
of a trained generator, or of any method's saved maps (--maps).

    python count_pxap.py                                  # the demo (CUB-format masks in segmentations/)
    python count_pxap.py --root OpenImages --data-dir /data/OpenImages --metadata metadata/OpenImages \\
        --checkpoint resnet_openimages.pth.tar --arch resnet
    python count_pxap.py --maps scoremaps/ --metadata metadata/OpenImages --data-dir /data/OpenImages

Maps are computed on the whole image resized to the crop size (no center crop), so that
they align with the masks; writes metrics_pxap.json to --output-dir (beside evaluator.py's
metrics.json by default).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator

import numpy as np
import torch

from bas.distributed import finish_distributed, gather_objects, init_distributed
from bas.errors import DatasetError, run_main
from bas.outputs import claim, write_text_atomic
from WSOL import metrics
from WSOL.cli import (
    EVALUATION_KIND,
    check_evaluation_args,
    evaluation_output_dir,
    evaluation_parser,
    load_samples,
    model_for_evaluation,
    resolve_preset,
)
from WSOL.datasets import Sample, test_transform
from WSOL.inference import evaluation_loader, map_topk, predict, saved_map_batches

log = logging.getLogger("count_pxap")


def get_args_parser() -> argparse.ArgumentParser:
    return evaluation_parser(__doc__)[0]


def histograms(batches: Iterator[tuple[list[Sample], np.ndarray]], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Score histograms over GT-foreground and GT-background pixels, summed over batches
    of (samples, raw maps)."""
    fg_hist = bg_hist = 0
    for samples, maps in batches:
        resized = metrics.resize_maps(metrics.normalize_minmax(maps), size)  # B x size x size
        masks = [metrics.load_mask(s.mask_paths, s.ignore_path, size) for s in samples]
        fg = np.stack([m[0] for m in masks])
        ignore = np.stack([m[1] for m in masks])
        f, b = metrics.pixel_histograms(resized, fg, ignore)
        fg_hist, bg_hist = fg_hist + f, bg_hist + b
    return fg_hist, bg_hist


def model_batches(args: argparse.Namespace, model, values, device, samples: list[Sample], rank: int, world: int):
    """(samples, raw maps) of this process's share of ``samples``."""
    transform = test_transform(values.crop, values.crop)
    loader = evaluation_loader(samples, transform, args.batch_size, args.workers, device, rank, world)
    progress = not args.no_progress and rank == 0
    for batch in predict(model, loader, device, args.topk, args.amp, progress, args.channels_last):
        yield [samples[i] for i in batch.indices], batch.maps


def with_masks(samples: list[Sample], args: argparse.Namespace) -> list[Sample]:
    samples = [s for s in samples if s.mask_paths]
    if not samples:
        raise DatasetError(f"no {args.split} image of {args.root} has a mask: PxAP needs masks (segmentations/)")
    return samples


def evaluate(args: argparse.Namespace, device: torch.device, rank: int = 0, world: int = 1) -> dict:
    """PxAP and PIoU of the model (or the saved maps) that ``args`` names; under torchrun
    each process scores its share and the histograms are summed."""
    if args.maps is not None:
        size = resolve_preset(args).crop
        samples = with_masks(load_samples(args, args.split), args)
        batches = saved_map_batches(args.maps, samples[rank::world], size)
        evaluation_output_dir(args)
    else:
        model, _, values = model_for_evaluation(args, device)
        args.topk = map_topk(args.topk, values.topk, args.num_classes)
        evaluation_output_dir(args)
        samples = with_masks(load_samples(args, args.split), args)
        batches, size = model_batches(args, model, values, device, samples, rank, world), values.crop
    fg_hist, bg_hist = (sum(parts) for parts in zip(*gather_objects(histograms(batches, size))))
    return {"images": len(samples), "PxAP": metrics.pxap(fg_hist, bg_hist), "PIoU": metrics.piou(fg_hist, bg_hist)}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = get_args_parser().parse_args(argv)
    check_evaluation_args(args)
    device, rank, world = init_distributed(args.device, args.local_rank, args.dist_timeout)
    report = evaluate(args, device, rank, world)
    if rank == 0:
        path = claim(args.output_dir, EVALUATION_KIND) / "metrics_pxap.json"
        write_text_atomic(path, json.dumps(report, indent=2) + "\n")
        print(
            f"{'images':<8}{report['images']:>10d}\n{'PxAP':<8}{report['PxAP']:>10.2f}\n"
            f"{'PIoU':<8}{report['PIoU']:>10.2f}"
        )
    finish_distributed()


if __name__ == "__main__":
    run_main(main)
