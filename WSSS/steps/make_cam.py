"""Stage make_cam: the seeds, multi-scale + flip class maps of each training image, as the
original makes them, saved per image.

For each net and scale, the net's maps of the image and of its mirror image (one batch
of 2) are summed with the mirror's flipped back, resized bilinearly to the stride-4 size
and to the stride-16-rounded-up size (then cropped to the image), and summed over the
scales; the image's GT classes are kept, each divided by its max (+1e-5). With BAS and
CAM nets (the original's default) each net's maps are normalised so, summed, and
normalised again. Saved: ``<cam_out_dir>/<id>.npz`` (``WSSS.seeds``), the original's dict
as plain arrays, not a pickle (which can run code when read): ``keys`` (K class indices,
0-based, int64), ``cam`` (K x h4 x w4) and ``high_res`` (K x H x W), float32. The
original's later stages load ``<id>.npy`` and do not read it; ours read both.

Several seed variants (``--seed_nets bas+cam bas cam``) are made in one pass: each net runs
once per image, and every variant's file is composed from its nets' maps.

The nets run as ``InferenceNet`` prepares them: BatchNorm folded into the convolutions, on
the CPU in oneDNN's blocked layout; in fp32 (the default) the maps are the plain nets' up to
float rounding. ``--amp bf16`` computes them in bfloat16 (the seeds' resizing and sums stay
in float32).

Ids whose files exist (ours, or the original's ``<id>.npy``) are skipped, and each file is
written under a temporary name and then renamed, so a crashed run is finished by running it
again; a folder records the weights (name, size, time written), scales and mixed precision
its seeds come from, and refuses others.
Under torchrun every process does every world-th id; the files do not depend on the
number of processes.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
from collections.abc import Sequence
from functools import reduce
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.optimization import fuse as fold_conv_bn

from bas.checkpoints import read_checkpoint
from bas.devices import autocast, memory_format
from bas.distributed import gather_objects
from bas.outputs import input_stamp
from WSSS import datasets
from WSSS.datasets import MultiScaleItem
from WSSS.models import build_model, load_checkpoint
from WSSS.seeds import seed_path, write_seed
from WSSS.sharding import claim_output, each_item

log = logging.getLogger(__name__)

OUTPUT_KIND = "wsss-seeds"


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """A copy of ``net`` in eval mode with each BatchNorm that follows a convolution folded
    into its weights and bias: the same outputs up to float rounding, without BatchNorm's
    pass over every activation."""
    folded = copy.deepcopy(net).eval()
    for name, child in folded.named_children():
        if any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in child.modules()):
            setattr(folded, name, fold_conv_bn(child))
    return folded


def onednn_dtype(device: torch.device, amp: str | None) -> torch.dtype | None:
    """The dtype a net runs in oneDNN's own tensors on ``device``, None where it does not: on
    the CPU in fp32, and in bf16 where the CPU computes it natively. oneDNN's blocked layout
    saves the reorders of every convolution's input and output that NCHW and channels-last
    tensors cost there."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    if amp is None:
        return torch.float32
    if amp == "bf16" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


class InferenceNet:
    """A net's ``class_maps`` as make_cam computes them, in float32, from a copy of the net
    prepared once for inference on ``device``: BatchNorm folded (``fold_batchnorm``); on the
    CPU in oneDNN's tensors (``onednn_dtype``), elsewhere in the memory format asked for,
    under autocast for ``amp``."""

    @torch.no_grad()
    def __init__(self, net: nn.Module, device: torch.device, amp: str | None = None, channels_last: bool = False):
        folded = fold_batchnorm(net).to(device)
        self.device, self.amp, self.dtype = device, amp, onednn_dtype(device, amp)
        if self.dtype is not None:
            self.net = torch.utils.mkldnn.to_mkldnn(folded, self.dtype)
        else:
            self.layout = memory_format(channels_last)
            self.net = folded.to(memory_format=self.layout)

    @torch.no_grad()
    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W float32 -> the net's B x C x h x w maps, float32."""
        if self.dtype is not None:
            return self.net.class_maps(images.to(self.dtype).to_mkldnn()).to_dense().float()
        with autocast(self.device, self.amp):
            return self.net.class_maps(images.to(memory_format=self.layout)).float()


def strided_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """The size of a map at ``stride`` of an H x W image: ceil(H / stride), ceil(W / stride)."""
    return (size[0] - 1) // stride + 1, (size[1] - 1) // stride + 1


def normalize_max(maps: torch.Tensor) -> torch.Tensor:
    """Each K x h x w map divided by its max + 1e-5, as the original."""
    return maps / (maps.amax(dim=(-2, -1), keepdim=True) + 1e-5)


def net_seed(
    net: nn.Module, pairs: Sequence[torch.Tensor], keys: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One net's normalised maps of the ``keys`` classes of one H x W image: K x h4 x w4
    and K x H x W. ``pairs``: per scale, the image and its mirror, 2 x 3 x h_s x w_s."""
    low, high = strided_size(size, 4), tuple(16 * s for s in strided_size(size, 16))
    low_maps, high_maps = [], []
    for pair in pairs:
        maps = net.class_maps(pair)  # 2 x C x h x w
        fused = (maps[0] + maps[1].flip(-1))[keys][None]  # 1 x K x h x w; resizing is per map, so keep K only
        low_maps.append(F.interpolate(fused, low, mode="bilinear", align_corners=False)[0])
        full = F.interpolate(fused, high, mode="bilinear", align_corners=False)[0]
        high_maps.append(full[:, : size[0], : size[1]])
    return normalize_max(torch.stack(low_maps).sum(0)), normalize_max(torch.stack(high_maps).sum(0))


def fuse(seeds: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed of several nets from each net's (low, high) maps: normalised sums, as the
    original fuses BAS's with CAM's; one net's maps as they are."""
    if len(seeds) == 1:
        return seeds[0]
    lows, highs = zip(*seeds)
    return normalize_max(reduce(torch.add, lows)), normalize_max(reduce(torch.add, highs))


def seed_folder(cam_out_dir: str | Path, variant: str) -> Path:
    """Where the seeds of ``variant`` go: --cam_out_dir for the original's bas+cam, a sibling
    (<cam_out_dir>_bas_only, _cam_only) for one net alone."""
    return Path(cam_out_dir if variant == "bas+cam" else f"{cam_out_dir}_{variant}_only")


@torch.no_grad()
def image_seeds(
    nets: dict[str, nn.Module], variants: Sequence[str], item: MultiScaleItem, device: torch.device
) -> dict:
    """The seed of one image for each variant ("bas", "cam", "bas+cam": the nets of ``nets``
    whose maps it fuses, joined by +); each net runs once, whatever the variants share."""
    size = tuple(int(s) for s in item.size)  # (H, W); a data loader hands it back as a list
    keys = torch.nonzero(torch.as_tensor(item.label))[:, 0]  # K
    if len(keys) == 0:  # no class to map: an empty seed scores as background everywhere
        empty = {
            "keys": keys.numpy(),
            "cam": np.zeros((0, *strided_size(size, 4)), np.float32),
            "high_res": np.zeros((0, *size), np.float32),
        }
        return dict.fromkeys(variants, empty)
    pairs = [pair.to(device, non_blocking=True) for pair in item.images]
    needed = {name for variant in variants for name in variant.split("+")}
    maps = {name: net_seed(nets[name], pairs, keys.to(device), size) for name in sorted(needed)}
    seeds = {}
    for variant in variants:
        low, high = fuse([maps[name] for name in variant.split("+")])
        seeds[variant] = {"keys": keys.numpy(), "cam": low.cpu().numpy(), "high_res": high.cpu().numpy()}
    return seeds


def make_seeds(
    nets: dict[str, nn.Module],
    dataset: torch.utils.data.Dataset,
    out_dirs: dict[str, Path],
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
    progress: bool = False,
) -> dict[str, int]:
    """Writes the seeds of each variant (``out_dirs``: variant -> its folder) for this
    process's share of ``dataset`` (every world-th item) whose file is missing; returns how
    many files of each variant all processes wrote. ``dataset[i]`` is a ``MultiScaleItem``
    and ``dataset.ids[i]`` its id (known without loading the image); ``nets`` are on
    ``device`` already (``InferenceNet``)."""
    out_dirs = {variant: Path(folder) for variant, folder in out_dirs.items()}

    def missing(index: int) -> list[str]:
        return [v for v, folder in out_dirs.items() if not seed_path(folder, dataset.ids[index]).exists()]

    todo = {i: missing(i) for i in range(rank, len(dataset), world)}  # shard first: others write meanwhile
    todo = {i: variants for i, variants in todo.items() if variants}  # index -> its missing variants
    pin = device.type == "cuda"
    for index, item in each_item(dataset, list(todo), workers, "make_cam", progress, pin_memory=pin):
        for variant, seed in image_seeds(nets, todo[index], item, device).items():
            write_seed(out_dirs[variant], item.image_id, seed)
    written = {variant: sum(variant in variants for variants in todo.values()) for variant in out_dirs}
    # Summed over the processes; also waits for every process: the next stage reads all seeds.
    return {variant: sum(counts[variant] for counts in gather_objects(written)) for variant in out_dirs}


def weights_file(path: str) -> str:
    """``path``, or ``path`` + .pth when only that exists: IRN's train_cam saves its CAM net
    as ``<name>.pth`` (its default name res50_cam.pth gives res50_cam.pth.pth), which its
    make_cam reads."""
    return path + ".pth" if not os.path.exists(path) and os.path.exists(path + ".pth") else path


def load_net(method: str, path: str, num_classes: int, arch: str | None) -> nn.Module:
    """A net of ``method`` with the weights of ``path`` (``weights_file``): ours, the original
    BAS release, or IRN's CAM net. The arch is ``arch``, else the checkpoint's, else ResNet50."""
    path = weights_file(path)
    checkpoint = read_checkpoint(path)
    net = build_model(method, num_classes, arch=arch or checkpoint.get("arch", "resnet50"))
    load_checkpoint(net, checkpoint)
    log.info("make_cam: %s net from %s", method, path)
    return net


def run(args: argparse.Namespace) -> dict[str, int]:
    """Seeds of ``args.train_list`` (the original makes them for train_aug) for each variant
    of ``args.seed_nets`` (bas+cam into ``args.cam_out_dir``, see ``seed_folder``); returns
    how many files of each variant were written."""
    samples = datasets.pipeline_data(args).samples(args.train_list)
    num_classes = len(datasets.pipeline_data(args).classes)
    weights = {"bas": args.bas_weights_name, "cam": args.cam_weights_name}
    needed = sorted({name for variant in args.seed_nets for name in variant.split("+")})
    placement = {"device": args.device, "amp": args.amp, "channels_last": args.channels_last}
    nets = {name: InferenceNet(load_net(name, weights[name], num_classes, args.arch), **placement) for name in needed}
    out_dirs = {variant: seed_folder(args.cam_out_dir, variant) for variant in args.seed_nets}
    precision = {"amp": args.amp} if args.amp else {}  # fp32 folders keep the marker they always had
    for variant, folder in out_dirs.items():
        made_of = {name: input_stamp(weights_file(weights[name])) for name in variant.split("+")}
        settings = {"nets": made_of, "scales": list(args.cam_scales), **precision}
        claim_output(folder, OUTPUT_KIND, args.rank, "choose another --cam_out_dir", settings)
    written = make_seeds(
        nets,
        datasets.MultiScaleSet(samples, args.cam_scales),
        out_dirs,
        args.device,
        args.rank,
        args.world,
        args.num_workers,
        progress=args.rank == 0 and not args.no_progress,
    )
    for variant, folder in out_dirs.items():
        count = written[variant]
        log.info("make_cam: %d seeds written to %s (%d were there)", count, folder, len(samples) - count)
    return written
