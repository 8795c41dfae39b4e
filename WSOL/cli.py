"""What train.py, evaluator.py and count_pxap.py share: dataset arguments and their
resolution into samples, presets, and building a model from a checkpoint."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch

from bas.engine import memory_format
from WSOL import datasets
from WSOL.models import Generator, build_model, load_checkpoint, read_checkpoint
from WSOL.presets import DEFAULT_ARCH, PRESETS, Preset, preset
from WSOL.synthetic import PARAMS_FILE, make_synthetic

log = logging.getLogger(__name__)

DEFAULT_DATA_DIRS = {
    "CUB": "data/CUB_200_2011",
    "ILSVRC": "data/ILSVRC",
    "OpenImages": "data/OpenImages",
    "Synthetic": "data/Synthetic",
}


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--root",
        default="Synthetic",
        choices=list(PRESETS),
        help="dataset; Synthetic (the default) is a small demo set written on first use in the CUB release format",
    )
    group.add_argument(
        "--data-dir",
        type=Path,
        help="where the dataset lies: the CUB_200_2011 release folder, the ILSVRC or OpenImages root "
        "(default: data/<root> under the current folder)",
    )
    group.add_argument(
        "--metadata",
        type=Path,
        help="a wsolevaluation metadata folder (metadata/<DS>, holding train/ val/ test/); "
        "needed for ILSVRC evaluation and OpenImages, optional for CUB",
    )
    group.add_argument(
        "--mask-dir", type=Path, help="root of the OpenImages masks named in the metadata (default: --data-dir)"
    )
    group.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="data loader processes (kept alive across epochs)",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--arch",
        choices=["vgg", "resnet", "inception", "mobilenet", "tiny"],
        help="generator backbone (default: mobilenet on CUB, resnet on ILSVRC/OpenImages, tiny on Synthetic)",
    )
    group.add_argument(
        "--method", choices=["bas", "cam"], help="bas (default), or the plain CAM baseline (same net, CE only)"
    )
    group.add_argument("--num-classes", type=int, help="default: the dataset's")


def script_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the data and model arguments every script takes."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    add_data_arguments(parser)
    add_model_arguments(parser)
    # The legacy launcher (python -m torch.distributed.launch) passes the local rank as a flag.
    parser.add_argument("--local-rank", "--local_rank", type=int, help=argparse.SUPPRESS)
    return parser


def evaluation_parser(description: str) -> tuple[argparse.ArgumentParser, argparse._ArgumentGroup]:
    """The arguments evaluator.py and count_pxap.py share; returns the parser and its
    "evaluation" group for the script's own options."""
    parser = script_parser(description)
    group = parser.add_argument_group("evaluation")
    group.add_argument("--checkpoint", type=Path, help="default: logs/<root>/<arch>_<method>/best_loc.pth")
    group.add_argument("--split", default="test")
    group.add_argument("--topk", type=int, help="maps averaged over the top-k classes (default: the preset's)")
    group.add_argument("--maps", type=Path, help="score saved maps DIR/<image_id>.npy instead of a model")
    group.add_argument("--output-dir", type=Path, help="default: beside the checkpoint (or the maps)")
    group.add_argument("--batch-size", type=int, default=64)
    group.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    add_speed_arguments(parser)
    return parser, group


def add_speed_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Device and speed options; their defaults (fp32, contiguous) reproduce the paper."""
    group = parser.add_argument_group("device and speed")
    group.add_argument("--device", help="default: cuda when present, else cpu (under torchrun: the local rank's GPU)")
    group.add_argument("--amp", choices=["bf16", "fp16"], help="mixed precision (default: fp32, exact reproduction)")
    group.add_argument("--channels-last", action="store_true", help="NHWC memory layout (faster convolutions on GPUs)")
    return group


def resolve_preset(args: argparse.Namespace) -> Preset:
    """Fills ``args.arch``, ``args.data_dir`` and ``args.num_classes`` from the dataset."""
    args.arch = args.arch or DEFAULT_ARCH[args.root]
    args.data_dir = Path(args.data_dir or DEFAULT_DATA_DIRS[args.root])
    values = preset(args.root, args.arch)
    args.num_classes = args.num_classes or values.num_classes
    return values


def load_samples(args: argparse.Namespace, split: str) -> list[datasets.Sample]:
    """The samples of ``split`` ('train', 'val' or 'test') of ``args.root``."""
    if args.root == "Synthetic" and not (args.data_dir / PARAMS_FILE).is_file():
        make_synthetic(args.data_dir)  # first use: written once, in the CUB release format
    if args.metadata is not None:
        return datasets.wsol_metadata(args.metadata / split, args.data_dir, args.mask_dir)
    if args.root in ("CUB", "Synthetic"):
        return datasets.cub_release(args.data_dir, split)
    if args.root == "ILSVRC" and split == "train":
        return datasets.class_folders(args.data_dir / "train")
    raise datasets.DatasetError(
        f"{args.root} {split}: pass --metadata <wsolevaluation metadata/{args.root}> "
        "(folders train/ val/ test/ with image_ids.txt, class_labels.txt, image_sizes.txt, localization.txt)"
    )


def model_for_evaluation(args: argparse.Namespace, device: torch.device) -> tuple[Generator, dict, Preset]:
    """The model of ``args.checkpoint`` (default: the demo's best) on ``device``, the
    checkpoint's other entries, and the preset.

    Our checkpoints record arch, method and classes; for the original release's, --arch
    (and --num-classes where the dataset's default does not fit) say what to build.
    """
    if args.checkpoint is None:
        resolve_preset(args)
        args.checkpoint = Path("logs") / args.root / f"{args.arch}_{args.method or 'bas'}" / "best_loc.pth"
    checkpoint = read_checkpoint(args.checkpoint)
    for key in ("arch", "method", "num_classes"):
        if key in checkpoint and getattr(args, key, None) is None:
            setattr(args, key, checkpoint[key])
    values = resolve_preset(args)
    model = build_model(args.arch, args.num_classes, method=args.method or "bas")
    extra = load_checkpoint(model, checkpoint)
    log.info("loaded %s (epoch %s)", args.checkpoint, extra.get("epoch", "?"))
    return model.to(device, memory_format=memory_format(args.channels_last)), extra, values
