"""The WSSS pipeline, stage by stage, as IRN's run_sample.py: image labels in; pixel seeds,
pseudo masks and a segmentation net (and their mIoU) out. Each stage is a module
WSSS/steps/<stage>.py with a ``run(args)``, reads what the stages before it wrote, and can
be run again alone: it skips the work whose outputs exist (trained weights, seed files,
label PNGs).

    python run_sample.py                                          # the synthetic demo: seeds and pseudo masks
    python run_sample.py --all                                    # ... and a segmentation net on the masks
    python run_sample.py --voc12_root VOCdevkit/VOC2012          # the original's default stages on VOC
    python run_sample.py --stages eval_cam --voc12_root VOCdevkit/VOC2012 --cam_out_dir result/cam \\
        --chainer_eval_set val                                     # score any folder of seeds
    torchrun --nproc_per_node 4 run_sample.py --stages make_cam eval_cam --voc12_root ...

Part 1 makes and scores the seeds (train_cam, train_bas, make_cam, eval_cam); part 2
refines them as IRN (cam_to_ir_label, train_irn, make_sem_seg_labels, eval_sem_seg) and
trains a segmentation net on the pseudo masks (train_seg, eval_seg), once per seed variant
of --refine_nets. The original's flag names work with underscores and with dashes
(--voc12_root, --voc12-root), and so do its per-stage switches (--eval_cam_pass false).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from bas.cli import add_process_flags
from bas.devices import AMP_DTYPES
from bas.distributed import finish_distributed, first_on_rank_zero, init_distributed
from bas.errors import ArgumentError, require_positive, require_unit_interval, run_main
from WSSS import datasets
from WSSS.models import ARCHS
from WSSS.pictures import save_strips
from WSSS.reports import shown
from WSSS.steps import (
    cam_to_ir_label,
    eval_cam,
    eval_sem_seg,
    eval_seg,
    make_cam,
    make_sem_seg_labels,
    train_bas,
    train_cam,
    train_irn,
    train_seg,
)
from WSSS.steps.eval_sem_seg import score_label_folder
from WSSS.steps.make_cam import seed_folder
from WSSS.synthetic import ensure_synthetic_voc
from WSSS.training import SYNTHETIC_ROOT

log = logging.getLogger("run_sample")

# name -> the run(args) of its module WSSS/steps/<name>.py, in the order the pipeline runs
# them. run(args) gets the flags below and args.device, args.rank, args.world (set here once,
# by init_distributed).
STAGES = {
    "train_cam": train_cam.run,
    "train_bas": train_bas.run,
    "make_cam": make_cam.run,
    "eval_cam": eval_cam.run,
    "cam_to_ir_label": cam_to_ir_label.run,
    "train_irn": train_irn.run,
    "make_sem_seg_labels": make_sem_seg_labels.run,
    "eval_sem_seg": eval_sem_seg.run,
    "train_seg": train_seg.run,
    "eval_seg": eval_seg.run,
}
# The stages that declare flags of their own, in the same order: add_arguments(parser, add),
# ``add`` as _add below.
STAGE_FLAGS = (
    cam_to_ir_label.add_arguments,
    train_irn.add_arguments,
    make_sem_seg_labels.add_arguments,
    eval_sem_seg.add_arguments,
    train_seg.add_arguments,
    eval_seg.add_arguments,
)
# What a run without --stages or --all (and without *_pass switches) does: the original's
# default stages (the seeds and the pseudo masks, each scored), after the training of the seed
# nets (skipped where their weights exist) and, where an IRN's weights are missing, its IR
# labels and its training (``selected_stages``).
DEFAULT_STAGES = ("train_cam", "train_bas", "make_cam", "eval_cam", "make_sem_seg_labels", "eval_sem_seg")
SEED_NETS = ("bas+cam", "bas", "cam")
# The stages that read one seed variant's seeds (eval_cam and the refinement after it) run
# once per variant, each variant with its own outputs: the names given for the original's
# bas+cam, and these flags' values with _<variant>_only added for bas or cam alone.
PER_VARIANT = (
    "eval_cam",
    "cam_to_ir_label",
    "train_irn",
    "make_sem_seg_labels",
    "eval_sem_seg",
    "train_seg",
    "eval_seg",
)
VARIANT_FOLDERS = ("ir_label_out_dir", "sem_seg_out_dir", "seg_out_dir")  # their reports' folders follow them
VARIANT_FILES = ("irn_weights_name", "seg_weights_name")

# Without --voc12_root the pipeline runs on the embedded synthetic set (a VOCdevkit written
# on first use) with the tiny nets, so that it runs on a laptop CPU; these are its folders
# and settings.
SYNTHETIC_DEFAULTS = {
    "bas_weights_name": "sess_synthetic/bas_tiny.pth",
    "cam_weights_name": "sess_synthetic/cam_tiny.pth",
    "cam_out_dir": "result_synthetic/cam",
    "images_out_dir": "result_synthetic/images",
    "ir_label_out_dir": "result_synthetic/ir_label",
    "irn_weights_name": "sess_synthetic/irn_tiny.pth",
    "sem_seg_out_dir": "result_synthetic/sem_seg",
    "seg_weights_name": "sess_synthetic/seg_tiny.pth",
    "seg_out_dir": "result_synthetic/seg",
    # The walk's reach scaled to the demo's maps (16-24 cells a side at stride 4, VOC's ~94 x 128):
    # 8 steps; the 256 of VOC flood these maps (seed 0's pseudo masks, BAS / CAM seeds: 72.7 / 64.3
    # mIoU at 8 steps, 47.1 / 49.2 at 256; the seeds 54.9 / 45.6).
    "exp_times": 3,
    # The CRFs' kernel widths scaled to the demo's 64-96 px images (VOC's photos are about
    # 500 x 375): at IRN's 50 px the appearance kernel spans the image and takes the seeds' weak
    # parts of a body for background (seed 0's pseudo masks of CAM seeds: 37.1 at 1, 64.3 at 0.2).
    "crf_scale": 0.2,
}
# And the original's, on VOC.
VOC_DEFAULTS = {
    "bas_weights_name": "sess/epoch_10.pth.tar",
    "cam_weights_name": "sess/res50_cam.pth",
    "cam_out_dir": "result/cam",
    "images_out_dir": "result/images",
    "ir_label_out_dir": "result/ir_label",
    "irn_weights_name": "sess/res50_irn.pth",
    "sem_seg_out_dir": "result/sem_seg",
    # The papers' segmentation net, DeepLabv2-ResNet101 (BAS's 69.6 val mIoU); DeepLabV3 by --seg_arch.
    "seg_arch": "deeplabv2_resnet101",
    "seg_weights_name": "sess/deeplabv2_resnet101.pth",
    "seg_out_dir": "result/seg",
    "exp_times": 8,
    "crf_scale": 1.0,
}
# On COCO 2014, beside them.
COCO_DEFAULTS = {
    "bas_weights_name": "sess_coco/epoch_10.pth.tar",
    "cam_weights_name": "sess_coco/res50_cam.pth",
    "cam_out_dir": "result_coco/cam",
    "images_out_dir": "result_coco/images",
    "ir_label_out_dir": "result_coco/ir_label",
    "irn_weights_name": "sess_coco/res50_irn.pth",
    "sem_seg_out_dir": "result_coco/sem_seg",
    "seg_weights_name": "sess_coco/deeplabv3_resnet50.pth",
    "seg_out_dir": "result_coco/seg",
    "exp_times": 8,
    "crf_scale": 1.0,
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
    _add(
        group,
        "all",
        action="store_true",
        help=f"run every stage (default: {', '.join(DEFAULT_STAGES)}; and cam_to_ir_label, train_irn where an "
        "IRN's weights are missing)",
    )
    for stage in STAGES:
        _add(group, f"{stage}_pass", type=_bool, metavar="BOOL", help=f"run {stage} (true) or not (false)")

    group = parser.add_argument_group("environment")
    _add(
        group,
        "voc12_root",
        help="the VOC2012 folder of a VOCdevkit (JPEGImages, Annotations, SegmentationClass, ImageSets); "
        f"default: the embedded synthetic set, written on first use to {SYNTHETIC_ROOT}",
    )
    _add(
        group,
        "coco_root",
        help="a COCO 2014 root (train2014/, val2014/, annotations/instances_*.json) instead of VOC: lists are then "
        "a split, train or val (all its annotated images; train for --train_list's train_aug), or a file of "
        "image names",
    )
    _add(group, "num_workers", type=int, default=(os.cpu_count() or 2) // 2, help="data loader processes")
    _add(group, "device", help="default: cuda when present, else cpu (under torchrun: the local rank's GPU)")
    _add(group, "no_progress", action="store_true", help="no progress bars (for logs)")
    _add(
        group,
        "amp",
        choices=list(AMP_DTYPES),
        help="mixed precision of make_cam's nets and make_sem_seg_labels' IRN (default fp32, the original's); the "
        "folders record it",
    )
    _add(
        group,
        "channels_last",
        action="store_true",
        help="NHWC tensors for those nets (on CUDA; on the CPU make_cam runs in oneDNN's own layout)",
    )
    add_process_flags(group)

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
    _add(
        group,
        "refine_nets",
        nargs="+",
        choices=SEED_NETS,
        help="the seed variants the stages after eval_cam refine (IR labels, IRN, pseudo masks, segmentation net), "
        "each into its own folders (see --seed_nets); default bas+cam on VOC, bas and cam on the synthetic set",
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
        help=f"the seeds, one <id>.npz (or the original's <id>.npy) per image "
        f"(default {VOC_DEFAULTS['cam_out_dir']}; {SYNTHETIC_DEFAULTS['cam_out_dir']} on the synthetic set)",
    )
    _add(
        group,
        "cam_eval_thres",
        type=float,
        nargs="+",
        help="background threshold(s) eval_cam scores (default: the original's sweep 0.20, 0.21, ..., 0.44)",
    )
    _add(group, "cam_eval_out_dir", help="where eval_cam writes its JSON report (default: <cam_out_dir>_eval)")
    group = parser.add_argument_group("pictures")
    _add(
        group,
        "save_images",
        type=int,
        default=0,
        metavar="N",
        help="after the stages, a strip per image for the first N images of --chainer_eval_set and each variant: "
        "the image, its seeds, IR labels, pseudo mask, segmentation and ground truth (what exists of them)",
    )
    _add(group, "images_out_dir", help="where the strips go (default result/images; result_synthetic/images)")
    for add_arguments in STAGE_FLAGS:
        add_arguments(parser, _add)
    return parser


def selected_stages(args: argparse.Namespace) -> list[str]:
    """--stages (else every stage with --all, else the default stages, with cam_to_ir_label and
    train_irn where a refined variant has no IRN weights yet), with the *_pass switches added
    or removed, in pipeline order. Needs the dataset's defaults (``fill_dataset_defaults``)."""
    chosen = set(STAGES if args.all else args.stages or DEFAULT_STAGES)
    if not (args.all or args.stages):
        irn_files = (Path(variant_args(args, nets).irn_weights_name) for nets in args.refine_nets)
        if not all(path.is_file() for path in irn_files):
            chosen |= {"cam_to_ir_label", "train_irn"}
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
    for name in ("sem_seg_eval_out_dir", "seg_eval_out_dir"):
        if getattr(args, name) is not None and len(args.refine_nets or ()) > 1:
            raise ArgumentError(f"--{name} names one folder: give one --refine_nets with it")


def fill_dataset_defaults(args: argparse.Namespace) -> None:
    """VOC when --voc12_root is given, COCO with --coco_root, else the synthetic set (written
    now, on first use); the weights, seed folders and seed nets default accordingly."""
    if args.coco_root is not None and args.voc12_root is not None:
        raise ArgumentError("--voc12_root and --coco_root exclude each other: give one")
    args.dataset = "coco" if args.coco_root is not None else "voc" if args.voc12_root is not None else "synthetic"
    synthetic = args.dataset == "synthetic"
    if synthetic:
        args.voc12_root = first_on_rank_zero(lambda: ensure_synthetic_voc(SYNTHETIC_ROOT))
    if args.dataset == "coco" and args.train_list == "train_aug":
        args.train_list = "train"  # VOC's default list: on COCO the train split
    defaults = {"synthetic": SYNTHETIC_DEFAULTS, "voc": VOC_DEFAULTS, "coco": COCO_DEFAULTS}[args.dataset]
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.seed_nets = args.seed_nets or (list(SEED_NETS) if synthetic else ["bas+cam"])
    args.refine_nets = args.refine_nets or (["bas", "cam"] if synthetic else ["bas+cam"])


def variant_args(args: argparse.Namespace, nets: str) -> argparse.Namespace:
    """The flags of a PER_VARIANT stage for the seeds of ``nets``."""
    changes = {"cam_out_dir": str(seed_folder(args.cam_out_dir, nets))}
    if nets != "bas+cam":
        for name in VARIANT_FOLDERS:
            changes[name] = f"{getattr(args, name)}_{nets}_only"
        for name in VARIANT_FILES:
            path = Path(getattr(args, name))
            changes[name] = str(path.with_name(f"{path.stem}_{nets}_only{path.suffix}"))
    return argparse.Namespace(**{**vars(args), **changes})


def run_stage(stage: str, args: argparse.Namespace) -> dict[str, dict]:
    """One stage, once per seed variant where it reads one (eval_cam for every --seed_nets
    entry, the refinement for every --refine_nets entry). Returns the reports of the
    scoring stages by variant."""
    run = STAGES[stage]
    if args.dataset == "synthetic" and stage not in ("train_cam", "train_bas"):
        # The original makes seeds of all of train_aug and refines them all; the demo works on
        # the list eval_cam scores, to keep within minutes on a CPU.
        args = argparse.Namespace(**{**vars(args), "train_list": args.chainer_eval_set})
    if stage == "make_cam":  # every variant a later stage reads, from one pass of the nets
        args = argparse.Namespace(**{**vars(args), "seed_nets": list(dict.fromkeys(args.seed_nets + args.refine_nets))})
    if stage not in PER_VARIANT:
        run(args)
        return {}
    variants = args.seed_nets if stage == "eval_cam" else args.refine_nets
    return {nets: run(variant_args(args, nets)) for nets in variants}


def print_summary(reports: dict[str, dict[str, dict]], ir_labels: dict[str, dict]) -> None:
    """The mIoU of every variant's seeds, IR labels (on their labelled pixels, with the share
    labelled), pseudo masks and segmentation net, as far as the stages ran, side by side."""
    columns = [("eval_cam", "seeds"), ("ir_labels", "IR labels"), ("eval_sem_seg", "masks"), ("eval_seg", "seg val")]
    found = {**reports, "ir_labels": ir_labels}
    columns = [(stage, title) for stage, title in columns if found.get(stage)]
    variants = list(dict.fromkeys(nets for stage, _ in columns for nets in found[stage]))
    print("\n" + f"{'variant':<10}" + "".join(f" {title:>16}" for _, title in columns))
    for nets in variants:
        cells = []
        for stage, _ in columns:
            report = found[stage].get(nets)
            if report is None:
                cells.append("")
            elif stage == "eval_cam":
                cells.append(f"{shown(report['best_miou'], 0, 2)} (thr {report['best_threshold']:.2f})")
            elif stage == "ir_labels":
                cells.append(f"{shown(report['miou'], 0, 2)} ({shown(report['coverage'], 0, 0)} %)")
            else:
                cells.append(shown(report["miou"], 0, 2))
        print(f"{nets:<10}" + "".join(f" {cell:>16}" for cell in cells))


def score_ir_labels(args: argparse.Namespace) -> dict[str, dict]:
    """The IR labels of every --refine_nets variant on the list eval_cam scores, their unsure
    pixels left out (IR labels are meant to be sure where they say something)."""
    masks = datasets.pipeline_data(args).masks(args.chainer_eval_set)
    classes = datasets.pipeline_data(args).classes
    return {
        nets: score_label_folder(variant_args(args, nets).ir_label_out_dir, masks, classes, unsure="ignore")
        for nets in args.refine_nets
    }


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = get_args_parser().parse_args(argv)
    check_args(args)
    args.device, args.rank, args.world = init_distributed(args.device, args.local_rank, args.dist_timeout)
    try:
        fill_dataset_defaults(args)
        stages = selected_stages(args)
        reports = {}
        for stage in stages:
            log.info("stage %s", stage)
            reports[stage] = run_stage(stage, args)
        ir_labels = score_ir_labels(args) if "cam_to_ir_label" in stages and args.rank == 0 else {}
        cells = sum(len(reports.get(stage, {})) for stage in ("eval_cam", "eval_sem_seg", "eval_seg")) + len(ir_labels)
        if args.rank == 0 and cells > 1:
            print_summary(reports, ir_labels)
        if args.rank == 0 and args.save_images > 0:
            refined = any(stage in PER_VARIANT[1:] for stage in stages)  # a stage after eval_cam
            variants = {nets: variant_args(args, nets) for nets in (args.refine_nets if refined else args.seed_nets)}
            save_strips(args, variants, args.save_images)
    finally:
        finish_distributed()


if __name__ == "__main__":
    run_main(main)
