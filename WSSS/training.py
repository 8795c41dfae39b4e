"""Training the nets whose maps make the seeds, from image labels: the multi-label BAS net
and IRN's CAM net. Here are their flags, the defaults per dataset and method (``PRESETS``)
and the run; train_bas.py and train_cam.py are its command lines (train_bas.py's docstring
gives the defaults and the original's quirks kept), and the pipeline's stages train_bas and
train_cam run it (``run_stage``). The later nets (stages train_irn, train_seg) train into
the same folders, so their runs share ``RUN_KIND`` and the stages' plumbing here: weights
that exist are used (``trained_weights``), a run in their folder (``stage_run``), its flags
recorded beside them (``stage_args``).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from bas.cli import add_process_flags, add_speed_arguments
from bas.distributed import first_on_rank_zero
from bas.errors import ArgumentError, DatasetError, require_positive
from bas.optim import poly_max_step, sgd
from bas.outputs import check_writable
from bas.sampling import keyed_generator
from bas.training import (
    LossFunction,
    PolySchedule,
    TrainingRun,
    add_tensorboard_flag,
    epoch_line,
    flag_values,
    jsonable_args,
)
from WSSS.datasets import ClassificationSet, CocoInstances, Sample, TrainTransform, voc_classes, voc_samples
from WSSS.models import ARCHS, build_model, draw_positive, multilabel_bas_loss, multilabel_soft_margin_loss
from WSSS.synthetic import ensure_synthetic_voc

log = logging.getLogger("train_bas")

RUN_KIND = "WSSS training run"  # what the output folder's marker says it holds
DATASETS = ("synthetic", "voc", "coco")
# Where the demo set is written (a VOCdevkit), and each dataset's default output folder, from the current folder.
SYNTHETIC_ROOT = Path("data/SyntheticVOC")
DEFAULT_OUTPUT_DIRS = {"voc": Path("sess"), "coco": Path("sess_coco"), "synthetic": Path("sess_synthetic")}

# Where the BAS net's parameters go (bas.optim.param_groups: (classifier?, weight or bias)
# -> lr multiplier; parts left out never train). The original collects names holding
# "weight" only; IRN's CAM net gives every trainable parameter to its optimizer.
WEIGHTS_ONLY = {(False, "weight"): 1, (True, "weight"): 10}
WITH_BIASES = {**WEIGHTS_ONLY, (False, "bias"): 1, (True, "bias"): 10}


@dataclass(frozen=True)
class Preset:
    """A method's defaults on a kind of dataset; every one has a flag."""

    arch: str
    epochs: int
    batch_size: int  # global
    lr: float
    poly_steps_factor: int
    crop_size: int
    resize_square: int | None = None  # both sides to this, or
    resize_long: tuple[int, int] | None = None  # the long side random in [min, max]
    pretrained: str | None = None
    sync_bn: bool = False
    train_biases: bool = False
    alpha: float = 0.2  # BAS loss weights, the original's
    beta: float = 1.2


PRESETS = {
    # The original BAS net (WSSS/train_bas.py, 4 GPUs) and IRN's CAM net (step/train_cam.py, 1 process).
    ("real", "bas"): Preset("resnet50", 10, 16, 0.005, 4, 448, resize_square=512, pretrained="imagenet", sync_bn=True),
    ("real", "cam"): Preset(
        "resnet50", 5, 16, 0.1, 1, 512, resize_long=(320, 640), pretrained="imagenet", train_biases=True
    ),
    # The demo: the tiny net from scratch on the 64-96 px images, sizes scaled from the real ones
    # (squash to 96, crop 84; long side 64..128, crop 96), 8 epochs, quirks kept. Its foreground
    # maps need alpha 1.0 and beta 0.8 (the WSOL demo's are 0.5 / 0.7): with the original's
    # 0.2 / 1.2 the maps of one or two of the four classes collapse (max < 0.1) before the
    # classifier has learned them, at lr 0.005, 0.01 and 0.02 alike. The CAM net, from scratch
    # too, gets IRN's lr doubled (0.2).
    ("synthetic", "bas"): Preset(
        "tiny", 8, 16, 0.01, 4, 84, resize_square=96, sync_bn=True, alpha=1.0, beta=0.8
    ),
    ("synthetic", "cam"): Preset("tiny", 8, 16, 0.2, 1, 96, resize_long=(64, 128), train_biases=True),
}  # fmt: skip


def _add(group: argparse._ArgumentGroup, *names: str, **kwargs) -> None:
    """A flag under its dashed name and its underscored twin (the original's spelling)."""
    spellings = []
    for name in names:
        spellings += [name] + (["--" + name[2:].replace("-", "_")] if "-" in name[2:] else [])
    group.add_argument(*spellings, **kwargs)


def get_args_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The flags of train_bas.py, whose ``--help`` shows ``description``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    group = parser.add_argument_group("data")
    _add(
        group,
        "--dataset",
        choices=DATASETS,
        default="synthetic",
        help="synthetic (the default) is a small demo set written on first use in the VOCdevkit layout",
    )
    _add(
        group,
        "--voc12-root",
        type=Path,
        help=f"the VOC2012 folder of a VOCdevkit; for the synthetic set, the folder it is written into "
        f"(default {SYNTHETIC_ROOT})",
    )
    _add(
        group,
        "--make-synthetic",
        action="store_true",
        help=f"--dataset synthetic: write the demo set into a --voc12_root that does not exist (without this flag "
        f"only {SYNTHETIC_ROOT} is made, so that a mistyped --voc12_root is reported)",
    )
    _add(group, "--coco-root", type=Path, help="a COCO 2014 root: train2014/, annotations/instances_train2014.json")
    _add(
        group,
        "--train-list",
        help="VOC: a list name under ImageSets/Segmentation (or SegmentationAug) or a list file (default train_aug, "
        "the 10,582 images with SBD's labels); COCO: a list of file names without suffix (default: every "
        "annotated train2014 image)",
    )
    _add(
        group,
        "--workers",
        "--num-workers",
        dest="workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="data loader processes (kept alive across epochs)",
    )

    group = parser.add_argument_group("model")
    _add(group, "--method", choices=["bas", "cam"], default="bas", help="the BAS net, or IRN's CAM net (train_cam.py)")
    _add(group, "--arch", choices=list(ARCHS), help="default: resnet50 on real data, tiny on the synthetic set")
    _add(
        group,
        "--pretrained",
        help="'imagenet' (torchvision's ResNet50 weights; the default on real data, as the original), a path to a "
        "torchvision-format state dict, or 'none' for random init (the demo's default)",
    )
    _add(group, "--alpha", type=float, help="BAS: weight of CE(score_fg, positive class); the original's 0.2")
    _add(
        group,
        "--beta",
        type=float,
        help="BAS: weight of the area term; the original's 1.2 (too high and maps shrink, too low and they spread)",
    )

    group = parser.add_argument_group("optimization (defaults: the original's, per method)")
    _add(group, "--epochs", type=int)
    _add(group, "--batch-size", type=int, help="global batch, split over the processes")
    _add(group, "--lr", type=float, help="base lr; weights of classifier_* layers get 10x")
    _add(group, "--weight-decay", "--wt-dec", dest="weight_decay", type=float, default=1e-4)
    _add(
        group,
        "--momentum",
        type=float,
        default=1e-4,
        help="the original's effective momentum: its poly optimizer hands the weight decay to SGD's momentum slot; "
        "0.9 is what the schedule was written for",
    )
    _add(group, "--poly-power", type=float, default=0.9, help="lr x (1 - step / max_step) ** power, every step")
    _add(
        group,
        "--poly-steps-factor",
        type=int,
        help="max_step = factor x the steps of a run: 4 for BAS (the original computed it from the per-process "
        "batch of its 4 GPUs, so lr falls only to ~0.77 of its start), 1 for the CAM net and for a schedule that "
        "ends with the run",
    )
    _add(
        group,
        "--train-biases",
        action=argparse.BooleanOptionalAction,
        help="give BatchNorm (and classifier) biases to the optimizer: off for BAS, whose original collects "
        "parameters named 'weight' only; on for the CAM net, as IRN's",
    )

    group = parser.add_argument_group("augmentation (defaults: the original's, per method)")
    _add(group, "--crop-size", type=int, help="random crop (zero-padded where the image is smaller)")
    _add(group, "--resize-square", type=int, help="both sides to this before cropping (BAS: 512)")
    _add(group, "--resize-long", type=int, nargs=2, metavar=("MIN", "MAX"), help="long side random in [MIN, MAX] (CAM)")

    group = parser.add_argument_group("run")
    _add(group, "--output-dir", type=Path, help="default: sess (VOC, the original's), sess_coco, sess_synthetic")
    _add(
        group,
        "--weights-name",
        help="the finished net's file in --output-dir (default: the original's, epoch_<epochs>.pth.tar for BAS, "
        "res50_cam.pth for the CAM net)",
    )
    _add(group, "--seed", type=int, default=0, help="0, as the original")
    _add(group, "--resume", action="store_true", help="continue from <output-dir>/<method>_last.pth")
    _add(group, "--no-progress", action="store_true", help="no progress bars (for logs)")
    add_tensorboard_flag(group)
    group = add_speed_arguments(parser)
    _add(group, "--compile", action="store_true", help="torch.compile the training forward pass")

    group = parser.add_argument_group("distributed (torchrun --nproc_per_node N train_bas.py ...)")
    _add(
        group,
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        help="BatchNorm statistics of the global batch (default on for BAS, as the original; the CAM net's "
        "BatchNorm is frozen)",
    )
    add_process_flags(parser)
    return parser


def fill_defaults(args: argparse.Namespace) -> None:
    """Every option left unset takes the method's preset for the dataset; every value is
    checked before any work starts."""
    preset = PRESETS["synthetic" if args.dataset == "synthetic" else "real", args.method]
    names = ("arch", "epochs", "batch_size", "lr", "poly_steps_factor", "crop_size", "sync_bn", "train_biases")
    for name in (*names, "alpha", "beta"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(preset, name))
    if args.resize_square is None and args.resize_long is None:
        args.resize_square, args.resize_long = preset.resize_square, preset.resize_long
    if args.pretrained is None and args.arch == preset.arch:
        args.pretrained = preset.pretrained
    if args.pretrained == "none":
        args.pretrained = None
    args.output_dir = args.output_dir or DEFAULT_OUTPUT_DIRS[args.dataset]
    if args.weights_name is None:
        cam_name = "res50_cam.pth" if args.arch == "resnet50" else f"{args.arch}_cam.pth"
        args.weights_name = f"epoch_{args.epochs}.pth.tar" if args.method == "bas" else cam_name

    for flag in ("epochs", "batch_size", "lr", "poly_steps_factor", "poly_power", "crop_size", "resize_square"):
        require_positive("--" + flag.replace("_", "-"), getattr(args, flag))
    for flag in ("alpha", "beta", "weight_decay", "momentum", "workers", "seed"):
        if getattr(args, flag) < 0:
            raise ArgumentError(f"--{flag.replace('_', '-')} {getattr(args, flag):g}: must be 0 or more")
    if args.resize_square is not None and args.resize_long is not None:
        raise ArgumentError("--resize-square and --resize-long exclude each other: give one")
    if args.resize_long is not None and not 0 < args.resize_long[0] <= args.resize_long[1]:
        raise ArgumentError(f"--resize-long {args.resize_long[0]} {args.resize_long[1]}: need 0 < MIN <= MAX")
    if args.dataset == "voc" and args.voc12_root is None:
        raise ArgumentError("--dataset voc: give --voc12_root, the VOC2012 folder of a VOCdevkit")
    if args.dataset == "coco" and args.coco_root is None:
        raise ArgumentError("--dataset coco: give --coco_root, the COCO 2014 folder (train2014/, annotations/)")
    if args.dataset == "synthetic":
        args.voc12_root = args.voc12_root or SYNTHETIC_ROOT
        at_default = os.path.abspath(args.voc12_root) == os.path.abspath(SYNTHETIC_ROOT)
        if not (args.voc12_root.exists() or args.make_synthetic or at_default):
            raise DatasetError(
                f"--voc12_root {args.voc12_root}: no such folder; the demo set is written only to {SYNTHETIC_ROOT}, "
                "or elsewhere with --make-synthetic"
            )
    if Path(args.weights_name).name != args.weights_name:
        raise ArgumentError(f"--weights-name {args.weights_name}: a file name, without folders (see --output-dir)")
    check_writable(args.output_dir, RUN_KIND, "Choose another --output-dir.")


def training_samples(args: argparse.Namespace) -> tuple[list[Sample], tuple[str, ...]]:
    """The training images with their labels, and the class names. The synthetic set is
    written first (rank 0 first, the other processes find it written)."""
    if args.dataset == "coco":  # --train-list: a file of train2014 image names; none or "train": all of them
        instances = CocoInstances(args.coco_root, "train")
        return instances.samples(None if args.train_list in (None, "train") else args.train_list), instances.classes
    root = args.voc12_root
    if args.dataset == "synthetic":
        hint = (
            "--dataset synthetic (the default) writes its demo set only into an absent or empty folder: "
            "pass --dataset voc for a VOCdevkit, or another --voc12_root."
        )
        root = first_on_rank_zero(lambda: ensure_synthetic_voc(args.voc12_root, hint=hint))
    return voc_samples(root, args.train_list or "train_aug"), voc_classes(root)


def loss_function(args: argparse.Namespace, epoch: int, rank: int) -> LossFunction:
    """One batch's loss. BAS: the positive class of each image's AMC is drawn from a
    generator seeded by (seed, epoch, rank, step), so a resumed run draws the same."""
    if args.method == "cam":
        return lambda model, images, labels, step: multilabel_soft_margin_loss(model(images, labels), labels)

    def compute_loss(model, images, labels, step):
        positive = draw_positive(labels, keyed_generator(args.seed, epoch, rank, step))  # B
        out = model(images, labels, positive)
        return multilabel_bas_loss(out, labels, positive, args.alpha, args.beta)

    return compute_loss


# What a resumed run must share with the run it continues, or it would not repeat it.
RESUME_KEYS = ("method", "arch", "dataset", "epochs", "batch_size", "lr", "poly_steps_factor", "poly_power", "seed")


def train(args: argparse.Namespace) -> dict:
    """Trains the net of ``args.method``; returns the last epoch's record with the path of
    the finished weights (``weights``)."""
    fill_defaults(args)
    prefix = f"{args.method}_"
    run = TrainingRun(
        args.output_dir,
        RUN_KIND,
        args.batch_size,
        args.seed,
        args.device,
        args.local_rank,
        prefix=prefix,
        progress=not args.no_progress,
        tensorboard=args.tensorboard,
        resume=args.resume,
        epochs=args.epochs,
        join_timeout=args.dist_timeout,
    )
    log.info(
        "training the %s net (%s) on %s (%s x %d), output in %s",
        args.method,
        args.arch,
        args.dataset,
        run.device,
        run.world,
        args.output_dir,
    )

    # ============ data ============
    samples, classes = training_samples(args)
    resize_long = tuple(args.resize_long) if args.resize_long else None
    transform = TrainTransform(args.crop_size, resize_long=resize_long, resize_square=args.resize_square)
    train_set = ClassificationSet(samples, transform)
    loader = run.loader(train_set, args.workers, drop_last=True)  # as the original: full batches only
    log.info("%d training images, %d classes, %d steps an epoch", len(train_set), len(classes), len(loader))

    # ============ model ============
    model = build_model(args.method, len(classes), args.pretrained, args.arch)
    model = run.place(model, args.sync_bn, args.channels_last)

    # ============ optimizer and schedule ============
    multipliers = WITH_BIASES if args.train_biases else WEIGHTS_ONLY
    optimizer = sgd(model, args.lr, args.weight_decay, args.momentum, nesterov=False, multipliers=multipliers)
    scaler = run.scaler(args.amp)
    max_step = poly_max_step(len(train_set), args.batch_size, args.epochs, args.poly_steps_factor)
    schedule = PolySchedule(optimizer, args.lr, max_step, args.poly_power, len(loader))  # the original's, every step

    # ============ resume ============
    settings = flag_values(args, RESUME_KEYS)  # saved with every checkpoint, checked on resume
    start_epoch = 0
    if args.resume:
        start_epoch = run.resume(model, optimizer, scaler, settings=settings)["epoch"]
    trained = run.distribute(model, args.compile)

    # ============ training loop ============
    record = {}
    for epoch in run.epochs(start_epoch, args.epochs):
        compute_loss = loss_function(args, epoch, run.rank)
        stats = run.train_one_epoch(
            trained, loader, optimizer, scaler, compute_loss, epoch, args.epochs, args.amp, args.channels_last,
            schedule.before_step(epoch),
        )  # fmt: skip
        record = {"epoch": epoch + 1, "lr": schedule.lr, "train": stats}  # the lr of the epoch's last step
        run.save(model, optimizer, scaler, epoch + 1, record, settings=settings, args=jsonable_args(args))
        log.info("%s", epoch_line(record))

    # ============ the finished net ============
    weights = args.output_dir / args.weights_name
    info = {"method": args.method, "arch": args.arch, "num_classes": len(classes), "classes": list(classes)}
    net = {"model": model.state_dict(), "epoch": args.epochs, **info, "dataset": args.dataset}
    run.finish(jsonable_args(args), weights, net)
    log.info("the %s net: %s", args.method, weights)
    return {**record, "weights": weights}


# run_sample.py's flags the seed nets train with, by their names in ``get_args_parser``;
# IRN's --<method>_* flags (``{}`` the method) count where the pipeline's flags have them.
PIPELINE_FLAGS = {
    "voc12_root": "voc12_root",
    "coco_root": "coco_root",
    "train_list": "train_list",
    "arch": "arch",
    "device": "device",
    "seed": "seed",
    "local_rank": "local_rank",
    "num_workers": "workers",
    "no_progress": "no_progress",
    "{}_batch_size": "batch_size",
    "{}_num_epoches": "epochs",
    "{}_learning_rate": "lr",
    "{}_weight_decay": "weight_decay",
    "{}_crop_size": "crop_size",
}


def run_stage(args: argparse.Namespace, method: str) -> Path:
    """A pipeline stage (run_sample.py's train_bas, train_cam): the weights named by
    ``args.<method>_weights_name``, trained here unless the file exists (the user's, or
    this stage's earlier result; for IRN's naming, ``<name>.pth`` counts too). The net is
    trained as train_bas.py trains it, into the folder of that file, resuming where an
    interrupted stage stopped, with the pipeline's flags (``PIPELINE_FLAGS``) where given.
    """
    weights = Path(getattr(args, f"{method}_weights_name"))
    existing = trained_weights(f"train_{method}", weights, Path(f"{weights}.pth"))
    if existing is not None:
        return existing
    flags = get_args_parser().parse_args([])  # every flag at its default
    for name, ours in PIPELINE_FLAGS.items():
        value = getattr(args, name.format(method), None)
        if value is not None:
            setattr(flags, ours, value)
    flags.method, flags.output_dir, flags.weights_name, flags.resume = method, weights.parent, weights.name, True
    flags.dataset = getattr(args, "dataset", None) or "voc"
    for root in ("voc12_root", "coco_root"):
        if getattr(flags, root) is not None:
            setattr(flags, root, Path(getattr(flags, root)))
    if flags.dataset == "synthetic" and flags.voc12_root is not None:  # the pipeline reads its VOC2012 folder;
        flags.voc12_root = flags.voc12_root.parent  # training wants the folder the set was written into
    return train(flags)["weights"]


def trained_weights(stage: str, *candidates: Path) -> Path | None:
    """The first of a stage's ``candidates`` (the places of its net's weights) that exists:
    then the stage has nothing to train."""
    for path in candidates:
        if path.is_file():
            log.info("%s: %s exists, nothing to train (remove it to train again)", stage, path)
            return path
    return None


def stage_run(weights: Path, setup: dict, args: argparse.Namespace) -> TrainingRun:
    """The training run of a later pipeline stage's net (train_irn, train_seg): in the
    folder of its ``weights``, its files named after them (``<stem>_last.pth``, beside
    other nets and other variants of the same net), always resumed: a stage finishes what
    an interrupted one began. ``setup``: the stage's settings (``batch_size``, ``seed``)."""
    prefix = f"{weights.stem}_"
    progress = not args.no_progress
    return TrainingRun(
        weights.parent, RUN_KIND, setup["batch_size"], setup["seed"], args.device, args.local_rank, prefix, progress,
        resume=True,
    )  # fmt: skip


def stage_args(args: argparse.Namespace, setup: dict) -> dict:
    """What a later stage's net records of its run in ``<stem>_args.json``: the pipeline's
    flags and the stage's settings."""
    return {**jsonable_args(args), "settings": setup}
