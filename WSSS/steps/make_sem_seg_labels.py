"""Stage make_sem_seg_labels: the pseudo masks, the seeds spread by a random walk over the
affinities of the inter-pixel relation network (IRN), as IRN makes them with BAS's change.

For each image of ``--infer_list`` (train, as the original): IRN's class boundary map of
the image at stride 4 (``WSSS.irn.IRN.edge_map``: the image and its mirror, averaged);
the seed's stride-4 maps (``cam`` of make_cam's file) raised to ``--sem_seg_power`` (1.5,
BAS's change; IRN's is 1); the walk (``WSSS.randomwalk.propagate``: affinities within
radius 5 from the boundaries, power ``--beta`` 10, 2^``--exp_times`` = 256 steps); the
result upsampled x4 (bilinear), cropped to the image and divided by its maximum; a
background plane at ``--sem_seg_bg_thres`` in front (0.22 as BAS runs it; IRN's 0.25),
argmax, and the class indices as a grayscale PNG ``<sem_seg_out_dir>/<id>.png`` (0
background, c + 1 class c), which IRN's stages and ours read.

``--amp`` and ``--channels-last`` apply to IRN's forward pass (the walk stays in float64);
the folder records the precision. Ids whose PNG exists are skipped, each PNG is written
then renamed, and under torchrun every process does every world-th id.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bas.devices import autocast, memory_format
from bas.errors import DatasetError, require_positive, require_unit_interval
from bas.outputs import input_stamp, recorded_settings
from WSSS import datasets
from WSSS.irn import IRN, load_irn
from WSSS.labels import save_label_png
from WSSS.randomwalk import propagate
from WSSS.sharding import claim_output, each_item, my_share, total
from WSSS.seeds import read_seed, seed_path

log = logging.getLogger(__name__)

OUTPUT_KIND = "wsss-pseudo-masks"
RADIUS = 5  # the walk's neighbourhood, IRN's at inference


def add_arguments(parser: argparse.ArgumentParser, add) -> None:
    group = parser.add_argument_group("pseudo masks (make_sem_seg_labels)")
    add(
        group,
        "sem_seg_out_dir",
        help="the pseudo masks, one <id>.png per image of --infer_list (default result/sem_seg; "
        "result_synthetic/sem_seg on the synthetic set); eval_sem_seg scores this folder, or any folder of label "
        "PNGs given here, e.g. --sem_seg_out_dir result/ir_label",
    )
    add(group, "beta", type=float, default=10, help="affinity = (1 - max boundary on the path) ** beta (10)")
    add(
        group,
        "exp_times",
        type=int,
        help="the walk takes 2 ** exp_times steps (default 8, 256 steps, IRN's; 3 on the synthetic set, whose "
        "maps are about 5x smaller a side)",
    )
    add(
        group, "sem_seg_power", type=float, default=1.5, help="the seeds' maps ** this before the walk (BAS 1.5, IRN 1)"
    )
    add(
        group,
        "sem_seg_bg_thres",
        type=float,
        default=0.22,
        help="background where no walked map beats this (after division by the max); BAS 0.22, IRN 0.25",
    )


@torch.no_grad()
def pseudo_mask(
    edge: torch.Tensor,
    cams: torch.Tensor,
    keys: np.ndarray,
    size: tuple[int, int],
    bg_thres: float,
    power: float = 1.5,
    beta: float = 10,
    exp_times: int = 8,
) -> np.ndarray:
    """The pseudo mask of one H x W image (``size``) from its boundary map (h x w, stride 4)
    and its seed's stride-4 maps (K x h x w) of the classes ``keys`` (K, 0-based) ->
    H x W uint8, 0 background, key + 1."""
    if len(keys) == 0:  # nothing to walk: background everywhere
        return np.zeros(size, np.uint8)
    walked = propagate(cams.to(edge.device, torch.float32) ** power, edge, RADIUS, beta, exp_times)  # K x h x w
    up = F.interpolate(walked[None], scale_factor=4, mode="bilinear", align_corners=False)[0, :, : size[0], : size[1]]
    up = up / up.max()
    plane = torch.full((1, *size), bg_thres, dtype=up.dtype, device=up.device)
    indices = torch.cat([plane, up]).argmax(0).cpu().numpy()  # H x W in [0, K]
    return np.concatenate([[0], keys + 1]).astype(np.uint8)[indices]


def read_strided_seed(path: Path, size: tuple[int, int]) -> tuple[np.ndarray, torch.Tensor]:
    """The keys (K) and the stride-4 maps (K x h x w) of a seed file, checked against the
    image's size."""
    keys, cams = read_seed(path, "cam")
    expected = ((size[0] - 1) // 4 + 1, (size[1] - 1) // 4 + 1)
    if cams.ndim != 3 or len(cams) != len(keys) or cams.shape[1:] != expected:
        raise DatasetError(
            f"{path}: stride-4 maps {tuple(cams.shape)} for {len(keys)} classes do not fit an image of "
            f"{size[0]} x {size[1]} (expected K x {expected[0]} x {expected[1]}); make the seeds again (stage make_cam)"
        )
    return keys, torch.from_numpy(np.ascontiguousarray(cams, dtype=np.float32))


def make_pseudo_masks(
    irn: IRN,
    pad_to: int,
    dataset: datasets.MultiScaleSet,
    cam_dir: Path,
    out_dir: Path,
    options: dict,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
    progress: bool = False,
    amp: str | None = None,
    channels_last: bool = False,
) -> int:
    """Writes the pseudo masks of this process's share of ``dataset`` (every world-th image,
    at scale 1 with its mirror) whose PNG is missing; returns how many all processes wrote.
    ``options``: pseudo_mask's bg_thres, power, beta, exp_times; ``amp`` and
    ``channels_last``: IRN's precision and memory layout."""
    mine = my_share(len(dataset), rank, world, lambda i: not (out_dir / f"{dataset.ids[i]}.png").exists())
    layout = memory_format(channels_last)
    irn.to(device, memory_format=layout).eval()
    for _, item in each_item(dataset, mine, workers, "make_sem_seg_labels", progress):
        size = tuple(int(s) for s in item.size)
        keys, cams = read_strided_seed(seed_path(cam_dir, item.image_id), size)
        with autocast(device, amp):
            edge = irn.edge_map(item.images[0].to(device, memory_format=layout), pad_to).float()  # h x w
        save_label_png(pseudo_mask(edge, cams, keys, size, **options), out_dir / f"{item.image_id}.png")
    return total(len(mine))


def run(args: argparse.Namespace) -> int:
    """Pseudo masks of ``args.infer_list`` from the seeds in ``args.cam_out_dir`` and the IRN
    at ``args.irn_weights_name`` into ``args.sem_seg_out_dir``; returns how many were written."""
    require_unit_interval("--sem_seg_bg_thres", args.sem_seg_bg_thres)
    require_positive("--sem_seg_power", args.sem_seg_power)
    samples = datasets.pipeline_data(args).samples(args.infer_list)
    irn, info = load_irn(args.irn_weights_name)
    out_dir = Path(args.sem_seg_out_dir)
    options = {
        "bg_thres": args.sem_seg_bg_thres,
        "power": args.sem_seg_power,
        "beta": args.beta,
        "exp_times": args.exp_times,
    }
    settings = {"seeds": recorded_settings(args.cam_out_dir), "irn": input_stamp(args.irn_weights_name), **options}
    if args.amp:  # fp32 folders keep the marker they always had
        settings["amp"] = args.amp
    claim_output(out_dir, OUTPUT_KIND, args.rank, "choose another --sem_seg_out_dir", settings)
    written = make_pseudo_masks(
        irn,
        info["crop_size"],
        datasets.MultiScaleSet(samples, [1.0]),
        Path(args.cam_out_dir),
        out_dir,
        options,
        args.device,
        args.rank,
        args.world,
        args.num_workers,
        progress=args.rank == 0 and not args.no_progress,
        amp=args.amp,
        channels_last=args.channels_last,
    )
    log.info(
        "make_sem_seg_labels: %d pseudo masks written to %s (%d were there)", written, out_dir, len(samples) - written
    )
    return written
