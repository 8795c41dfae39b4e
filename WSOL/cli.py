"""What the WSOL scripts (train, evaluator, count_pxap, localize, motivation) share: dataset
and model arguments, their resolution into samples and presets, and building a model from a
checkpoint."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch

from bas.cli import add_process_flags, add_speed_arguments
from bas.devices import memory_format
from bas.errors import ArgumentError, CheckpointError, DatasetError, require_positive
from bas.outputs import check_writable, read_marker
from WSOL import datasets
from WSOL.models import Generator, build_model, load_checkpoint, read_checkpoint
from WSOL.presets import DEFAULT_ARCH, PRESETS, Preset, preset
from WSOL.synthetic import ensure_synthetic

log = logging.getLogger(__name__)

# What the marker of each output folder says it holds (bas.outputs).
EVALUATION_KIND = "WSOL evaluation"
MAPS_KIND = "WSOL maps"

# The checkpoints train.py keeps besides last.pth, with the quantity each one maximizes
# on the evaluation split (as the original).
BEST_CHECKPOINTS = {"best_top1.pth": "top1_loc", "best_gt.pth": "gt_known", "best_loc.pth": "top1_loc+gt_known"}

DEFAULT_DATA_DIRS = {
    "CUB": "data/CUB_200_2011",
    "ILSVRC": "data/ILSVRC",
    "OpenImages": "data/OpenImages",
    "Dogs": "data/StanfordDogs",
    "Cars": "data/stanford_cars",
    "Aircraft": "data/fgvc-aircraft-2013b",
    "Synthetic": "data/Synthetic",
}
# FGVC-Aircraft's split that train.py trains on: train + val, as the original.
AIRCRAFT_TRAIN_SPLIT = "trainval"


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--root",
        default="Synthetic",
        choices=list(PRESETS),
        help="dataset; Synthetic (the default) is a small demo set written on first use in the CUB release format; "
        "Dogs, Cars and Aircraft are Stanford Dogs, Stanford Cars and FGVC-Aircraft in their release formats",
    )
    group.add_argument(
        "--data-dir",
        type=Path,
        help="where the dataset lies: the CUB_200_2011 release folder, the ILSVRC or OpenImages root, the Stanford "
        "Dogs or Stanford Cars release folder, the fgvc-aircraft-2013b folder (default: under data/ in the current "
        "folder); with --metadata and --maps, only needed where image_sizes.txt does not give every size",
    )
    group.add_argument(
        "--make-synthetic",
        action="store_true",
        help=f"--root Synthetic: write the demo set into a --data-dir that does not exist (without this flag only "
        f"{DEFAULT_DATA_DIRS['Synthetic']} is made, so that a mistyped --data-dir is reported)",
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
    add_process_flags(parser)
    return parser


def evaluation_parser(description: str) -> tuple[argparse.ArgumentParser, argparse._ArgumentGroup]:
    """The arguments evaluator.py and count_pxap.py share; returns the parser and its
    "evaluation" group for the script's own options."""
    parser = script_parser(description)
    group = parser.add_argument_group("evaluation")
    group.add_argument("--checkpoint", type=Path, help="default: logs/<root>/<arch>_<method>/best_loc.pth")
    group.add_argument("--split", default="test")
    group.add_argument("--topk", type=int, help="maps averaged over the top-k classes (default: the preset's)")
    group.add_argument(
        "--maps",
        type=Path,
        help="score saved maps DIR/<image_id>.npy (wsolevaluation's format: 2-D, in [0, 1]) instead of a model; "
        "maps written by evaluator.py --save-maps give the model's own MaxBoxAccV2 and keep its thresholds",
    )
    group.add_argument(
        "--output-dir",
        type=Path,
        help="default: eval_<split> beside the checkpoint, or inside a --maps folder this project wrote",
    )
    group.add_argument("--batch-size", type=int, default=64)
    group.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    add_speed_arguments(parser)
    return parser, group


def check_evaluation_args(args: argparse.Namespace) -> None:
    """Flags evaluator.py and count_pxap.py share, checked before any work."""
    require_positive("--batch-size", args.batch_size)
    require_positive("--topk", args.topk)
    require_positive("--num-classes", args.num_classes)
    if args.workers < 0:
        raise ArgumentError(f"--workers {args.workers}: must be 0 or more")


def evaluation_output_dir(args: argparse.Namespace) -> Path:
    """Where the evaluation writes: --output-dir, else eval_<split> beside the checkpoint, or
    inside a maps folder this project wrote (a foreign maps folder is never written into).
    Checked now, made when the first file is written."""
    if args.output_dir is None:
        if args.maps is None:
            args.output_dir = args.checkpoint.parent / f"eval_{args.split}"
        elif (read_marker(args.maps) or {}).get("kind") == MAPS_KIND:
            args.output_dir = args.maps / f"eval_{args.split}"
        else:
            raise ArgumentError(
                f"--maps {args.maps} was not written by this project: pass --output-dir for the metrics"
            )
    return check_writable(args.output_dir, EVALUATION_KIND, "Choose another --output-dir.")


def describe_checkpoint(path: Path, extra: dict) -> str:
    """Which checkpoint is evaluated and what it holds: the best checkpoints of a run hold
    the epoch that was best during training, not the last one."""
    line = f"evaluating {path}"
    if "epoch" in extra:
        line += f" (epoch {extra['epoch']}"
        quantity = BEST_CHECKPOINTS.get(path.name)
        if quantity and "metrics" in extra:
            words = {"top1_loc": "top-1 loc", "gt_known": "GT-known"}
            line += f": the best {' + '.join(words[q] for q in quantity.split('+'))} during training"
        line += ")"
    return line


def class_names(args: argparse.Namespace) -> list[str] | None:
    """Class names where the dataset has them: the CUB release's classes.txt ("1
    001.Black_footed_Albatross" -> "Black_footed_Albatross"), the Stanford Dogs breed folders,
    Stanford Cars' cars_meta.mat, FGVC-Aircraft's variants.txt."""
    readers = {
        "Dogs": datasets.dogs_class_names,
        "Cars": datasets.cars_class_names,
        "Aircraft": datasets.aircraft_class_names,
    }
    if args.root in readers:
        return readers[args.root](args.data_dir)
    path = args.data_dir / "classes.txt"
    if args.root not in ("CUB", "Synthetic") or not path.is_file():
        return None
    names = [line.split(maxsplit=1)[-1] for line in path.read_text().splitlines() if line.strip()]
    return [name.split(".", 1)[-1] for name in names]


def resolve_preset(args: argparse.Namespace) -> Preset:
    """Fills ``args.arch``, ``args.data_dir`` and ``args.num_classes`` from the dataset."""
    args.arch = args.arch or DEFAULT_ARCH[args.root]
    args.data_dir = Path(args.data_dir or DEFAULT_DATA_DIRS[args.root])
    values = preset(args.root, args.arch)
    args.num_classes = args.num_classes or values.num_classes
    return values


def load_samples(args: argparse.Namespace, split: str, images: bool = True) -> list[datasets.Sample]:
    """The samples of ``split`` ('train', 'val' or 'test') of ``args.root``. FGVC-Aircraft's
    'train' is its train + val split, as the original trains on.

    ``images`` False: the caller reads no pixel (it scores saved maps), so wsolevaluation
    metadata needs no image folder where its image_sizes.txt gives every image's size.
    """
    if args.metadata is not None and not images:
        return datasets.wsol_metadata(args.metadata / split, None)
    if args.root == "Synthetic":  # written on first use, in the CUB release format
        default = DEFAULT_DATA_DIRS["Synthetic"]  # relative to the current folder
        at_default = os.path.abspath(args.data_dir) == os.path.abspath(default)
        if not (args.data_dir.exists() or args.make_synthetic or at_default):
            raise DatasetError(
                f"{args.data_dir}: no such folder; the demo set is written only to {default}, "
                "or elsewhere with --make-synthetic"
            )
        ensure_synthetic(args.data_dir, hint=synthetic_hint(args.data_dir))
    if args.metadata is not None:
        return datasets.wsol_metadata(args.metadata / split, args.data_dir, args.mask_dir)
    if args.root in ("CUB", "Synthetic"):
        return datasets.cub_release(args.data_dir, split)
    if args.root == "Dogs":
        return datasets.stanford_dogs(args.data_dir, split)
    if args.root == "Cars":
        return datasets.stanford_cars(args.data_dir, split)
    if args.root == "Aircraft":
        return datasets.fgvc_aircraft(args.data_dir, AIRCRAFT_TRAIN_SPLIT if split == "train" else split)
    if args.root == "ILSVRC" and split == "train":
        return datasets.class_folders(args.data_dir / "train")
    raise DatasetError(
        f"{args.root} {split}: pass --metadata <wsolevaluation metadata/{args.root}> "
        "(folders train/ val/ test/ with image_ids.txt, class_labels.txt, image_sizes.txt, localization.txt)"
    )


def synthetic_hint(folder: Path) -> str:
    """What the user probably meant when --root Synthetic (the default) meets a folder that
    is not the demo set."""
    if (folder / "synthetic.json").is_file():
        return f"It is an earlier version's demo set: remove it (rm -r {folder}) and run again."
    if (folder / "images.txt").is_file() or (folder / "bounding_boxes.txt").is_file():
        return "It looks like the CUB-200-2011 release: did you mean --root CUB?"
    if (folder / "train").is_dir() or (folder / "val").is_dir():
        return "It looks like a real dataset: did you mean --root ILSVRC or --root OpenImages (with --metadata)?"
    releases = {"Annotation": "Dogs", "devkit/cars_meta.mat": "Cars", "data/images_box.txt": "Aircraft"}
    for name, root in releases.items():
        if (folder / name).exists():
            return f"It looks like a real dataset: did you mean --root {root}?"
    return (
        "--root Synthetic (the default) writes its demo set only into an absent or empty folder: "
        "pass --root CUB / ILSVRC / OpenImages / Dogs / Cars / Aircraft for a real dataset, or another --data-dir."
    )


def model_for_evaluation(
    args: argparse.Namespace, device: torch.device, checkpoint: dict | None = None
) -> tuple[Generator, dict, Preset]:
    """The model of ``args.checkpoint`` (default: the demo's best) on ``device``, the
    checkpoint's other entries, and the preset. ``checkpoint``: the file's content where the
    caller has read it already (a large file is read once).

    Our checkpoints record arch, method and classes; for the original release's, --arch
    (and --num-classes where the dataset's default does not fit) say what to build.
    """
    if args.checkpoint is None:
        resolve_preset(args)
        args.checkpoint = Path("logs") / args.root / f"{args.arch}_{args.method or 'bas'}" / "best_loc.pth"
    checkpoint = checkpoint if checkpoint is not None else read_checkpoint(args.checkpoint)
    for key in ("arch", "method", "num_classes"):
        given, recorded = getattr(args, key, None), checkpoint.get(key)
        if given is not None and recorded is not None and given != recorded:
            flag = "--" + key.replace("_", "-")
            raise CheckpointError(
                f"{args.checkpoint} holds a {key} {recorded!r} model; {flag} {given} contradicts it (drop {flag})"
            )
        if recorded is not None:
            setattr(args, key, recorded)
    values = resolve_preset(args)
    model = build_model(args.arch, args.num_classes, method=args.method or "bas")
    extra = load_checkpoint(model, checkpoint)
    log.info("%s", describe_checkpoint(args.checkpoint, extra))
    return model.to(device, memory_format=memory_format(args.channels_last)), extra, values
