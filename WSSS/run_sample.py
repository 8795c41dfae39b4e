"""The WSSS pipeline, stage by stage, as IRN's run_sample.py: image labels in, pixel seeds
(and their mIoU) out. Each stage is a module WSSS/steps/<stage>.py with a ``run(args)``,
reads what the stages before it wrote, and can be run again alone: it skips the work
whose outputs exist (trained weights, seed files).

    python run_sample.py                                          # the synthetic demo, every stage
    python run_sample.py --voc12_root VOCdevkit/VOC2012          # the default stages on VOC
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

from bas.engine import finish_distributed, first_on_rank_zero, init_distributed
from bas.errors import ArgumentError, require_positive, require_unit_interval, run_main
from WSSS.models import ARCHS
from WSSS.steps.make_cam import seed_folder
from WSSS.synthetic import ensure_synthetic_voc
from WSSS.train_bas import SYNTHETIC_ROOT

log = logging.getLogger("run_sample")

# name -> module with run(args), in the order the pipeline runs them. run(args) gets the
# flags below and args.device, args.rank, args.world (set here once, by init_distributed).
# A module may declare flags of its own: add_arguments(parser, add), ``add`` as _add below.
STAGES = {
    "train_cam": "WSSS.steps.train_cam",
    "train_bas": "WSSS.steps.train_bas",
    "make_cam": "WSSS.steps.make_cam",
    "eval_cam": "WSSS.steps.eval_cam",
    "cam_to_ir_label": "WSSS.steps.cam_to_ir_label",
    "eval_sem_seg": "WSSS.steps.eval_sem_seg",
}
# What a run without --stages or --all (and without *_pass switches) does: the seeds.
DEFAULT_STAGES = ("train_cam", "train_bas", "make_cam", "eval_cam")
SEED_NETS = ("bas+cam", "bas", "cam")

# Without --voc12_root the pipeline runs on the embedded synthetic set (a VOCdevkit written
# on first use) with the tiny nets, so that it runs on a laptop CPU; these are its folders.
SYNTHETIC_DEFAULTS = {
    "bas_weights_name": "sess_synthetic/bas_tiny.pth",
    "cam_weights_name": "sess_synthetic/cam_tiny.pth",
    "cam_out_dir": "result_synthetic/cam",
    "ir_label_out_dir": "result_synthetic/ir_label",
    "sem_seg_out_dir": "result_synthetic/sem_seg",
}
# And the original's, on VOC.
VOC_DEFAULTS = {
    "bas_weights_name": "sess/epoch_10.pth.tar",
    "cam_weights_name": "sess/res50_cam.pth",
    "cam_out_dir": "result/cam",
    "ir_label_out_dir": "result/ir_label",
    "sem_seg_out_dir": "result/sem_seg",
}


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
    _add(group, "all", action="store_true", help=f"run every stage (default: {', '.join(DEFAULT_STAGES)})")
    for stage in STAGES:
        _add(group, f"{stage}_pass", type=_bool, metavar="BOOL", help=f"run {stage} (true) or not (false)")

    group = parser.add_argument_group("environment")
    _add(
        group,
        "voc12_root",
        help="the VOC2012 folder of a VOCdevkit (JPEGImages, Annotations, SegmentationClass, ImageSets); "
        f"default: the embedded synthetic set, written on first use to {SYNTHETIC_ROOT}",
    )
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
        nargs="+",
        choices=SEED_NETS,
        help="the nets whose maps make the seeds: bas+cam (the original's: BAS's fused with IRN's CAM net's) "
        "into --cam_out_dir, bas and cam alone into <cam_out_dir>_bas_only and _cam_only; default bas+cam on VOC, "
        "all three on the synthetic set",
    )
    _add(group, "arch", choices=list(ARCHS), help="the nets' backbone (default: the checkpoint's, else resnet50)")
    _add(
        group,
        "bas_weights_name",
        help=f"the BAS net, trained there by train_bas when absent (default {VOC_DEFAULTS['bas_weights_name']}, "
        f"the original's; {SYNTHETIC_DEFAULTS['bas_weights_name']} on the synthetic set)",
    )
    _add(
        group,
        "cam_weights_name",
        help="IRN's CAM net, trained there by train_cam when absent (<name>.pth is taken when <name> is absent: "
        f"IRN saves there; default {VOC_DEFAULTS['cam_weights_name']}, {SYNTHETIC_DEFAULTS['cam_weights_name']} "
        "on the synthetic set)",
    )
    _add(group, "seed", type=int, help="the seed of the training stages (train_bas.py's --seed; default 0)")
    _add(group, "cam_scales", type=float, nargs="+", default=[1.0, 0.5, 1.5, 2.0], help="multi-scale inference")
    _add(
        group,
        "cam_out_dir",
        help=f"the seeds, one <id>.npy per image (default {VOC_DEFAULTS['cam_out_dir']}; "
        f"{SYNTHETIC_DEFAULTS['cam_out_dir']} on the synthetic set)",
    )
    _add(
        group,
        "cam_eval_thres",
        type=float,
        nargs="+",
        help="background threshold(s) eval_cam scores (default: the original's sweep 0.20, 0.21, ..., 0.44)",
    )
    _add(group, "cam_eval_out_dir", help="where eval_cam writes its JSON report (default: <cam_out_dir>_eval)")
    for module in STAGES.values():
        add_arguments = getattr(importlib.import_module(module), "add_arguments", None)
        if add_arguments is not None:
            add_arguments(parser, _add)
    return parser


def selected_stages(args: argparse.Namespace) -> list[str]:
    """--stages (else every stage with --all, else the default stages), with the *_pass
    switches added or removed, in pipeline order."""
    chosen = set(STAGES if args.all else args.stages or DEFAULT_STAGES)
    for stage in STAGES:
        switch = getattr(args, f"{stage}_pass")
        if switch is not None:
            (chosen.add if switch else chosen.discard)(stage)
    return [stage for stage in STAGES if stage in chosen]


def check_args(args: argparse.Namespace) -> None:
    """Flags out of range stop here, before any stage starts."""
    require_unit_interval("--cam_eval_thres", args.cam_eval_thres)
    for scale in args.cam_scales:
        require_positive("--cam_scales", scale)
    if args.cam_eval_out_dir is not None and len(args.seed_nets or ()) > 1:
        raise ArgumentError("--cam_eval_out_dir names one folder: give one --seed_nets with it")


def fill_dataset_defaults(args: argparse.Namespace) -> None:
    """VOC when --voc12_root is given, else the synthetic set (written now, on first use);
    the weights, seed folders and seed nets default accordingly."""
    synthetic = args.voc12_root is None
    args.dataset = "synthetic" if synthetic else "voc"
    if synthetic:
        args.voc12_root = first_on_rank_zero(lambda: ensure_synthetic_voc(SYNTHETIC_ROOT))
    for name, value in (SYNTHETIC_DEFAULTS if synthetic else VOC_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.seed_nets = args.seed_nets or (list(SEED_NETS) if synthetic else ["bas+cam"])


def run_stage(stage: str, args: argparse.Namespace) -> dict[str, dict]:
    """One stage; eval_cam once per --seed_nets entry. Returns eval_cam's reports."""
    module = importlib.import_module(STAGES[stage])
    if stage == "eval_cam":
        reports = {}
        for nets in args.seed_nets:
            folder = str(seed_folder(args.cam_out_dir, nets))
            reports[nets] = module.run(argparse.Namespace(**{**vars(args), "cam_out_dir": folder}))
        return reports
    if stage == "make_cam" and args.dataset == "synthetic":
        # The original makes seeds of all of train_aug (its later stages need them); the demo
        # only of the list eval_cam scores, to keep within minutes on a CPU.
        args = argparse.Namespace(**{**vars(args), "train_list": args.chainer_eval_set})
    module.run(args)
    return {}


def print_summary(reports: dict[str, dict]) -> None:
    """The seeds' best mIoU per net, side by side."""
    print(f"\n{'seeds':<10} {'mIoU':>7} {'threshold':>10}")
    for nets, report in reports.items():
        miou = "-" if report["best_miou"] is None else f"{report['best_miou']:.2f}"
        print(f"{nets:<10} {miou:>7} {report['best_threshold']:>10.2f}")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = get_args_parser().parse_args(argv)
    check_args(args)
    stages = selected_stages(args)
    args.device, args.rank, args.world = init_distributed(args.device, args.local_rank)
    try:
        fill_dataset_defaults(args)
        reports = {}
        for stage in stages:
            log.info("stage %s", stage)
            reports.update(run_stage(stage, args))
        if args.rank == 0 and len(reports) > 1:
            print_summary(reports)
    finally:
        finish_distributed()


if __name__ == "__main__":
    run_main(main)
