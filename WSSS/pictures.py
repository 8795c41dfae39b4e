"""Strips that show where each stage of the pipeline helps: per image, the image, its seeds,
IR labels, pseudo mask, the segmentation net's prediction and the ground truth, side by side
in VOC's colours (run_sample.py --save_images N).

A strip shows what the stages of this run (or earlier ones) left on disk: a panel whose
file is missing is left out. The seeds are shown as eval_cam scores them, the background
plane at the variant's best threshold.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bas.data import load_rgb
from bas.outputs import claim
from bas.viz import save_rgb, strip
from WSSS import datasets, deeplabv2
from WSSS.reports import report_path
from WSSS.seeds import read_seed, seed_path
from WSSS.segmentation import load_segmentation_model, predict

log = logging.getLogger(__name__)

OUTPUT_KIND = "wsss-pictures"
DEFAULT_THRESHOLD = 0.25  # the seeds' background threshold when eval_cam has not scored them


def colour(labels: np.ndarray) -> np.ndarray:
    """H x W class indices (255 unsure) -> H x W x 3 uint8 RGB in VOC's palette."""
    palette = np.array(datasets.voc_palette(), np.uint8).reshape(256, 3)
    return palette[labels]


def seed_labels(path: Path, threshold: float) -> np.ndarray:
    """The labels of a seed file as eval_cam scores it: background where no map beats
    ``threshold``, else the class of the highest map (0 background, key + 1)."""
    keys, cams = read_seed(path)  # K, K x H x W
    with_background = np.concatenate([np.full((1, *cams.shape[1:]), threshold, cams.dtype), cams])
    return np.concatenate([[0], keys + 1]).astype(np.uint8)[with_background.argmax(0)]


def read_png(path: Path) -> np.ndarray | None:
    """H x W class indices of a label PNG (grayscale or palette), None when absent."""
    return np.asarray(Image.open(path)) if path.is_file() else None


def scored_threshold(flags: argparse.Namespace) -> float:
    """The best threshold of the variant's seeds in eval_cam's report on disk (this run's or
    an earlier one's), else DEFAULT_THRESHOLD. A report is taken only when it scored these
    seeds' folder: --cam_eval_out_dir may hold another variant's."""
    try:
        report = json.loads(report_path(flags).read_text())
        if Path(report["cam_out_dir"]).resolve() == Path(flags.cam_out_dir).resolve():
            return float(report["best_threshold"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return DEFAULT_THRESHOLD


def save_strips(args: argparse.Namespace, variants: dict[str, argparse.Namespace], count: int) -> int:
    """Strips of the first ``count`` ids of ``args.chainer_eval_set`` for each variant (its
    flags, as run_sample.variant_args gives them) into ``args.images_out_dir``, named
    <id>_<variant>.png, the seeds at their best threshold as eval_cam's report gives it.
    Returns how many were written."""
    out_dir = Path(args.images_out_dir)
    claim(out_dir, OUTPUT_KIND, "choose another --images_out_dir")
    samples = datasets.pipeline_data(args).samples(args.chainer_eval_set)[:count]
    masks = datasets.pipeline_data(args).masks(args.chainer_eval_set)
    written = 0
    for nets, flags in variants.items():
        weights = Path(flags.seg_weights_name)
        model, info = load_segmentation_model(weights, torch.device("cpu")) if weights.is_file() else (None, {})
        flip = info.get("arch") != deeplabv2.ARCH  # as eval_seg predicts
        scaled = datasets.MultiScaleSet(samples, [1.0])
        threshold = scored_threshold(flags)  # the variant's report, read once
        for index, sample in enumerate(samples):
            image = np.asarray(load_rgb(sample.path))
            panels = [("image", image)]
            seed = seed_path(flags.cam_out_dir, sample.image_id)
            if seed.is_file():
                panels.append((f"seeds {nets} ({threshold:.2f})", colour(seed_labels(seed, threshold))))
            for caption, folder in (("IR labels", flags.ir_label_out_dir), ("pseudo mask", flags.sem_seg_out_dir)):
                labels = read_png(Path(folder) / f"{sample.image_id}.png")
                if labels is not None:
                    panels.append((caption, colour(labels)))
            if model is not None:
                item = scaled[index]
                panels.append(("segmentation", colour(predict(model, item.images, item.size, flip).argmax(0).numpy())))
            panels.append(("ground truth", colour(masks.mask(sample.image_id))))
            save_rgb(out_dir / f"{sample.image_id}_{nets.replace('+', '_')}.png", strip(panels))
            written += 1
    log.info("%d strips written to %s", written, out_dir)
    return written
