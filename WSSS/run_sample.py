"""The WSSS pipeline, stage by stage, as IRN's run_sample.py: image labels in, pixel seeds
(and their mIoU) out. Each stage is a module WSSS/steps/<stage>.py with a ``run(args)``,
reads what the stages before it wrote, and can be run again alone: it skips the images
whose outputs exist.

    python run_sample.py --voc12_root VOCdevkit/VOC2012          # the default stages
    python run_sample.py --stages eval_cam --voc12_root VOCdevkit/VOC2012 --cam_out_dir result/cam \\
        --chainer_eval_set val                                     # score any folder of seeds
    torchrun --nproc_per_node 4 run_sample.py --stages make_cam eval_cam --voc12_root ...

The original's flag names work with underscores and with dashes (--voc12_root,
--voc12-root), and so do its per-stage switches (--eval_cam_pass false).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os

from bas.engine import finish_distributed, init_distributed
from bas.errors import ArgumentError, require_positive, require_unit_interval, run_main
from WSSS.models import ARCHS

log = logging.getLogger("run_sample")

# name -> module with run(args), in the order the pipeline runs them. run(args) gets the
# flags below and args.device, args.rank, args.world (set here once, by init_distributed).
STAGES = {
    "make_cam": "WSSS.steps.make_cam",
    "eval_cam": "WSSS.steps.eval_cam",
}
# What a run without --stages (and without *_pass switches) does, as the original's defaults.
DEFAULT_STAGES = ("make_cam", "eval_cam")


def _bool(value: str) -> bool:
    """A switch's value as the original's command lines write it (True / False, 1 / 0, ...)."""
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not a boolean (true or false)")


def _add(group: argparse._ArgumentGroup, name: str, **kwargs) -> None:
    """A flag under the original's spelling (--voc12_root) and the dashed one (--voc12-root)."""
    spellings = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    group.add_argument(*spellings, dest=name, **kwargs)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    group = parser.add_argument_group("stages")
    _add(group, "stages", nargs="+", choices=list(STAGES), help=f"run these (in pipeline order: {', '.join(STAGES)})")
    for stage in STAGES:
        _add(group, f"{stage}_pass", type=_bool, metavar="BOOL", help=f"run {stage} (true) or not (false)")

    group = parser.add_argument_group("environment")
    _add(group, "voc12_root", help="the VOC2012 folder of a VOCdevkit (JPEGImages, SegmentationClass, ImageSets)")
    _add(group, "num_workers", type=int, default=(os.cpu_count() or 2) // 2, help="data loader processes")
    _add(group, "device", help="default: cuda when present, else cpu (under torchrun: the local rank's GPU)")
    _add(group, "no_progress", action="store_true", help="no progress bars (for logs)")
    _add(group, "debug", action="store_true", help="show the traceback of an expected error too")
    # The legacy launcher (python -m torch.distributed.launch) passes the local rank as a flag.
    _add(group, "local_rank", type=int, help=argparse.SUPPRESS)

    group = parser.add_argument_group("dataset")
    lists = "a list name under ImageSets/Segmentation (or SegmentationAug), or a list file (voc12/train_aug.txt)"
    _add(group, "train_list", default="train_aug", help=f"the ids make_cam makes seeds of (as the original): {lists}")
    _add(group, "val_list", default="val", help=lists)
    _add(group, "infer_list", default="train", help=f"the ids whose pseudo masks are made: {lists}")
    _add(group, "chainer_eval_set", default="train", help=f"the set eval_cam scores: {lists}")

    group = parser.add_argument_group("class activation maps (seeds)")
    _add(
        group,
        "seed_nets",
        default="bas+cam",
        choices=["bas+cam", "bas", "cam"],
        help="the nets whose maps make the seeds; the original fuses BAS's with IRN's CAM net's",
    )
    _add(group, "arch", choices=list(ARCHS), help="the nets' backbone (default: the checkpoint's, else resnet50)")
    _add(group, "bas_weights_name", default="sess/epoch_10.pth.tar", help="the BAS net (the original's make_cam path)")
    _add(
        group,
        "cam_weights_name",
        default="sess/res50_cam.pth",
        help="IRN's CAM net (<name>.pth is taken when <name> is absent: IRN saves there)",
    )
    _add(group, "cam_scales", type=float, nargs="+", default=[1.0, 0.5, 1.5, 2.0], help="multi-scale inference")
    _add(group, "cam_out_dir", default="result/cam", help="the seeds, one <id>.npy per image")
    _add(
        group,
        "cam_eval_thres",
        type=float,
        nargs="+",
        help="background threshold(s) eval_cam scores (default: the original's sweep 0.20, 0.21, ..., 0.44)",
    )
    _add(group, "cam_eval_out_dir", help="where eval_cam writes its JSON report (default: <cam_out_dir>_eval)")
    return parser


def selected_stages(args: argparse.Namespace) -> list[str]:
    """--stages (else the default stages), with the *_pass switches added or removed, in
    pipeline order."""
    chosen = set(args.stages or DEFAULT_STAGES)
    for stage in STAGES:
        switch = getattr(args, f"{stage}_pass")
        if switch is not None:
            (chosen.add if switch else chosen.discard)(stage)
    return [stage for stage in STAGES if stage in chosen]


def check_args(args: argparse.Namespace) -> None:
    """Flags out of range stop here, before any stage starts."""
    if args.voc12_root is None:
        raise ArgumentError("--voc12_root: give the VOC2012 folder of a VOCdevkit")
    require_unit_interval("--cam_eval_thres", args.cam_eval_thres)
    for scale in args.cam_scales:
        require_positive("--cam_scales", scale)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = get_args_parser().parse_args(argv)
    check_args(args)
    stages = selected_stages(args)
    args.device, args.rank, args.world = init_distributed(args.device, args.local_rank)
    try:
        for stage in stages:
            log.info("stage %s", stage)
            importlib.import_module(STAGES[stage]).run(args)
    finally:
        finish_distributed()


if __name__ == "__main__":
    run_main(main)
