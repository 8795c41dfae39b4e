"""Stage cam_to_ir_label: the labels the inter-pixel relation network (IRN) learns from,
made from the seeds as IRN makes them.

A seed is sure of a class only where its map is high, and sure of the background only where
every map is low. So each image gets two labellings, both refined by a dense CRF on the
image's colours (IRN's ``crf_inference_label``: ``WSSS.crf.crf_labels``):

- confident foreground: background plane ``--conf_fg_thres`` (0.30) in front of the maps,
  argmax, CRF; its classes are kept;
- confident background: background plane ``--conf_bg_thres`` in front, argmax, CRF; where it
  is background too, the pixel is background.

Every other pixel (foreground at the low threshold, background at the high one) is 255,
unsure: IRN learns no relation across it. BAS's default ``--conf_bg_thres`` is 0.17, IRN's
0.05 (BAS's maps are larger, so less of the image stays under 0.05).

Reads ``<cam_out_dir>/<id>.npz`` or the original's ``<id>.npy`` (``keys`` and ``high_res``;
``WSSS.seeds``) and ``JPEGImages/<id>.jpg`` for every id of ``--train_list`` (train_aug, as the
original: IRN trains on all of them); writes ``<ir_label_out_dir>/<id>.png``, H x W class
indices (0 background, c + 1 for class c, 255 unsure). By default the PNG is grayscale, as
IRN writes it: IRN's later stages read it with imageio, which turns a colour palette PNG
into RGB colours, not indices. ``--ir_label_palette voc`` writes a palette PNG with VOC's
colours instead, for viewing; PIL and our stages read both as the same indices.

The CRF's kernel widths are IRN's, in pixels of VOC's photos; ``--crf_scale`` scales them
for smaller images (0.2 on the synthetic set: at IRN's 50 px the appearance kernel spans a
whole 80 px image and pulls the seeds' weak parts of a body to the background).

Ids whose PNG exists are skipped, and each PNG is written under a temporary name and then
renamed, so a crashed run is finished by running it again; the folder records the settings
its labels were made with and refuses others. Under torchrun every process
does every world-th id; within a process, ``--num_workers`` loader processes share the CRFs
(CPU work, about a second per VOC image).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from bas.data import load_rgb
from bas.errors import DatasetError, require_positive, require_unit_interval
from bas.outputs import recorded_settings
from WSSS import datasets
from WSSS.crf import crf_labels
from WSSS.datasets import IGNORE, Sample
from WSSS.labels import PALETTES, save_label_png
from WSSS.sharding import claim_output, each_item, my_share, total
from WSSS.seeds import read_seed, seed_path

log = logging.getLogger(__name__)

OUTPUT_KIND = "wsss-ir-labels"


def add_arguments(parser: argparse.ArgumentParser, add) -> None:
    group = parser.add_argument_group("inter-pixel relation labels (cam_to_ir_label)")
    add(
        group,
        "conf_fg_thres",
        type=float,
        default=0.30,
        help="a pixel is confident foreground where a seed map beats this (after the CRF); default 0.30, "
        "IRN's and BAS's",
    )
    add(
        group,
        "conf_bg_thres",
        type=float,
        default=0.17,
        help="a pixel is confident background where no seed map beats this (after the CRF); default 0.17, "
        "BAS's (IRN's is 0.05)",
    )
    add(
        group,
        "crf_scale",
        type=float,
        help="times the dense CRFs' kernel widths in pixels (IRN's 3 and 50 px here, DeepLab's 1 and 67 px in "
        "eval_seg --seg_crf), which are set for VOC's photos of about 500 x 375 px; default 1 (IRN's), 0.2 on "
        "the synthetic set, whose images are 64-96 px a side",
    )
    add(
        group,
        "ir_label_out_dir",
        help="the IR labels, one <id>.png per image of --train_list (default result/ir_label; "
        "result_synthetic/ir_label on the synthetic set)",
    )
    add(
        group,
        "ir_label_palette",
        choices=PALETTES,
        default="gray",
        help="gray: index PNGs as IRN writes them (IRN's own stages can read only these); "
        "voc: palette PNGs in VOC's colours, for viewing (read by PIL and by our stages)",
    )


# ------------------------------------------------------------------------------- labels
def confident_labels(
    image: np.ndarray, cams: np.ndarray, keys: np.ndarray, threshold: float, scale: float = 1.0
) -> np.ndarray:
    """The classes of a seed with the background plane ``threshold`` in front (argmax: the
    first max wins, so a score equal to it is background), refined by the CRF.
    cams: K x H x W, keys: K (0-based) -> H x W int64, 0 background and key + 1."""
    plane = np.full((1, *cams.shape[1:]), threshold, dtype=cams.dtype)  # t in the maps' dtype, as np.pad casts it
    labels = np.concatenate([plane, cams]).argmax(axis=0)  # H x W in [0, K]
    return np.concatenate([[0], keys + 1])[crf_labels(image, labels, len(keys) + 1, scale)]


def combine(fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """IRN's rule: the class of the confident foreground where it has one; background where
    the confident background is background too; 255 (unsure) elsewhere. H x W -> H x W uint8."""
    return np.where(fg > 0, fg, np.where(bg > 0, IGNORE, 0)).astype(np.uint8)


def ir_label(
    image: np.ndarray, cams: np.ndarray, keys: np.ndarray, fg_thres: float, bg_thres: float, crf_scale: float = 1.0
) -> np.ndarray:
    """The IR label of one image: H x W x 3 uint8 image, K x H x W seed maps of the classes
    ``keys`` (K) -> H x W uint8. A seed without classes is background everywhere."""
    if len(keys) == 0:  # IRN's CRF of one label gives the same, with a division by zero
        return np.zeros(cams.shape[1:], np.uint8)
    return combine(
        confident_labels(image, cams, keys, fg_thres, crf_scale),
        confident_labels(image, cams, keys, bg_thres, crf_scale),
    )


# -------------------------------------------------------------------------------- stage
class IrLabelJobs(torch.utils.data.Dataset):
    """``jobs[i]`` makes and saves the IR label of ``samples[i]`` and returns its id: the
    per-image work is CPU work (two CRFs), which a data loader's workers share."""

    def __init__(
        self,
        samples: list[Sample],
        cam_dir: Path,
        out_dir: Path,
        fg_thres: float,
        bg_thres: float,
        palette: str,
        crf_scale: float = 1.0,
    ):
        self.samples, self.cam_dir, self.out_dir = samples, Path(cam_dir), Path(out_dir)
        self.fg_thres, self.bg_thres, self.palette, self.crf_scale = fg_thres, bg_thres, palette, crf_scale

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> str:
        sample = self.samples[index]
        seed = seed_path(self.cam_dir, sample.image_id)
        keys, cams = read_seed(seed)  # K, K x H x W
        image = np.asarray(load_rgb(sample.path))  # H x W x 3
        if cams.ndim != 3 or len(cams) != len(keys) or cams.shape[1:] != image.shape[:2]:
            raise DatasetError(
                f"{seed}: maps {tuple(cams.shape)} for {len(keys)} classes do not fit the image "
                f"{sample.path} ({image.shape[0]} x {image.shape[1]}); make the seeds again (stage make_cam)"
            )
        labels = ir_label(image, cams, keys, self.fg_thres, self.bg_thres, self.crf_scale)
        save_label_png(labels, self.out_dir / f"{sample.image_id}.png", self.palette)
        return sample.image_id


def check_seeds(samples: list[Sample], cam_dir: Path, list_name: str) -> None:
    """Stop before any work when a seed is missing, naming the first and the stage to run:
    make_cam makes seeds of its own --train_list (on the synthetic set run_sample gives it
    the list eval_cam scores), and IR labels need one for every id of this list."""
    missing = [seed for seed in (seed_path(cam_dir, s.image_id) for s in samples) if not seed.exists()]
    if missing:
        others = f" (and {len(missing) - 1} more of its ids)" if len(missing) > 1 else ""
        raise DatasetError(
            f"{missing[0]}: no seed for this id of --train_list {list_name}{others}; make seeds of that list first "
            f"(stage make_cam with --train_list {list_name}) or point --cam_out_dir at them"
        )


def make_ir_labels(
    jobs: IrLabelJobs, list_name: str, rank: int = 0, world: int = 1, workers: int = 0, progress: bool = False
) -> int:
    """Makes the IR labels of this process's share of ``jobs`` (every world-th sample) whose
    PNG is missing; returns how many PNGs all processes wrote. Every process checks the
    seeds of all missing PNGs first, so that all stop together when one is missing."""

    def missing(index: int) -> bool:
        return not (jobs.out_dir / f"{jobs.samples[index].image_id}.png").exists()

    check_seeds([sample for i, sample in enumerate(jobs.samples) if missing(i)], jobs.cam_dir, list_name)
    mine = my_share(len(jobs), rank, world, missing)
    for _ in each_item(jobs, mine, workers, "cam_to_ir_label", progress):
        pass
    return total(len(mine))


def run(args: argparse.Namespace) -> int:
    """IR labels of ``args.train_list`` from the seeds in ``args.cam_out_dir`` into
    ``args.ir_label_out_dir``; returns how many were written."""
    require_unit_interval("--conf_fg_thres", args.conf_fg_thres)
    require_unit_interval("--conf_bg_thres", args.conf_bg_thres)
    require_positive("--crf_scale", args.crf_scale)
    samples = datasets.pipeline_data(args).samples(args.train_list)
    out_dir = Path(args.ir_label_out_dir)
    settings = {
        "seeds": recorded_settings(args.cam_out_dir),  # the weights and scales they come from
        "conf_fg_thres": args.conf_fg_thres,
        "conf_bg_thres": args.conf_bg_thres,
        "crf_scale": args.crf_scale,
        "palette": args.ir_label_palette,
    }
    claim_output(out_dir, OUTPUT_KIND, args.rank, "choose another --ir_label_out_dir", settings)
    jobs = IrLabelJobs(
        samples,
        Path(args.cam_out_dir),
        out_dir,
        args.conf_fg_thres,
        args.conf_bg_thres,
        args.ir_label_palette,
        args.crf_scale,
    )
    written = make_ir_labels(
        jobs,
        args.train_list,
        args.rank,
        args.world,
        args.num_workers,
        progress=args.rank == 0 and not args.no_progress,
    )
    log.info("cam_to_ir_label: %d IR labels written to %s (%d were there)", written, out_dir, len(samples) - written)
    return written
