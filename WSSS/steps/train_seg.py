"""Stage train_seg: a segmentation net (torchvision's DeepLabV3, or the papers' DeepLabv2:
``WSSS.segmentation``) trained on the pseudo masks, the step after which image labels have given a segmentation
model. The original BAS code stops at the masks; the paper trains DeepLab on them.

Reads the images of ``--seg_train_list`` (default ``--train_list``, train_aug) and their
pseudo masks ``<sem_seg_out_dir>/<id>.png`` (stage make_sem_seg_labels, or any folder of
label PNGs: 0 background, c + 1 class c, 255 ignored), writes ``--seg_weights_name``;
skipped when that file exists. Trains on the project's training run
(``bas.training.TrainingRun``): one process or torchrun (SyncBatchNorm across GPUs),
``<name>_last.pth`` after every epoch beside the weights ``<name>.pth`` (an interrupted stage
resumes from it, to the same weights), ``<name>_log.jsonl`` and ``<name>_log.png`` with the
loss per epoch.

For torchvision's nets (on COCO by default, on VOC by --seg_arch) the defaults are the common
DeepLabV3 recipe on train_aug (VainF/DeepLabV3Plus-Pytorch:
lr 0.01, batch 16, crop 513, 30k iterations; sssegmentation reports 77.7 val mIoU for
DeepLabV3 R-50-D8, torchvision's layout, with lr 0.01, batch 16, crop 512, on the true masks):
the backbone from ImageNet weights; images rescaled by a random factor in 0.5..2.0, flipped,
cropped to 512 (padded with the mean colour and ignored labels); batch 16; SGD with momentum
0.9, weight decay 1e-4, lr 0.01 for the backbone and 10x for the head (``classifier``), poly
schedule (power 0.9) over the run's steps, taken before every step; cross entropy over the
labelled pixels (255 ignored); 30k steps rounded up to whole epochs: 46 epochs of train_aug's
10,582 images, 30,406 steps of 16 (``--seg_num_epoches`` sets the epochs). The demo's
settings, and why, are in PRESETS. The weights file is ``{"model", "arch", "num_classes",
"classes", "epoch", "crop_size", "dataset"}``, read by eval_seg
(``WSSS.segmentation.load_segmentation_model``).

``--seg_arch deeplabv2_resnet101`` (run_sample's default on VOC) trains DeepLabv2-ResNet101
with deeplab-pytorch's VOC recipe (``WSSS.deeplabv2.RECIPE``): from DeepLab's COCO-trained
ResNet-101 (``--seg_init``), BatchNorm frozen at it; Caffe inputs; SGD with momentum 0.9, weight
decay 5e-4, lr 2.5e-4 for the backbone, 10x for the ASPP's weights, 20x and no decay for its
biases; poly (0.9) changed every 10 steps; steps of 10 images as 2 passes of 5 (gradients
accumulated); the cross entropy of the four MSC outputs; 20k steps rounded up to whole epochs
(19 epochs of train_aug); the reference's augmentation (``WSSS.deeplabv2.TrainCrop``: one of
the scales 0.5, 0.75, 1, 1.25, 1.5, crops of 321, flipped). Its weights file is the bare state
dict in the reference's layout, which its code and eval_seg both read.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from bas.devices import AMP_DTYPES
from bas.errors import ArgumentError, require_positive
from bas.optim import poly_max_step, sgd
from bas.training import PolySchedule, epoch_line
from WSSS import datasets, deeplabv2
from WSSS.datasets import IGNORE, LabelledCrop, LabelledSet
from WSSS.deeplabv2 import RECIPE
from WSSS.segmentation import ARCH_NAMES, build_segmentation_model, logits
from WSSS.training import WITH_BIASES, stage_args, stage_run, trained_weights

log = logging.getLogger(__name__)

POLY_POWER = 0.9


@dataclass(frozen=True)
class Preset:
    """The stage's defaults on a kind of dataset; each has a flag."""

    arch: str
    crop_size: int
    batch_size: int  # global
    steps: int  # the run's length, as DeepLab recipes give it: whole epochs of at least this many steps
    learning_rate: float  # the backbone's; the head gets 10x
    pretrained: str | None  # the backbone's weights
    weight_decay: float = 1e-4
    scale_range: tuple[float, float] | None = (0.5, 2.0)  # drawn uniformly; None: DeepLabv2's scales
    accumulation: int = 1  # batches a step
    poly_every: int = 1  # steps between changes of the rate


PRESETS = {
    "voc": Preset("deeplabv3_resnet50", 512, 16, 30_000, 0.01, "imagenet"),
    # The demo: LR-ASPP on MobileNetV3 from scratch (no weights can be downloaded there), a
    # CPU-sized net whose head also reads stride-8 features, which the 64-96 px images need
    # (DeepLabV3-MobileNet sees them at stride 16 only: 4-6 cells a side). Crops of 64, lr 0.05
    # (from scratch it learns faster than the pretrained recipe's 0.01), 150 steps of 16 (3
    # epochs of the 800 train_aug images): about 2 minutes on 2 CPU cores, 81 val mIoU on the
    # set's true masks at scale 1.
    "synthetic": Preset("lraspp_mobilenet_v3_large", 64, 16, 150, 0.05, None),
    # DeepLabv2 on any dataset: deeplab-pytorch's VOC recipe, from --seg_init.
    deeplabv2.ARCH: Preset(
        deeplabv2.ARCH, RECIPE.crop, RECIPE.batch, RECIPE.iterations, RECIPE.lr, None, RECIPE.weight_decay,
        None, RECIPE.accumulation, RECIPE.poly_every,
    ),  # fmt: skip
}


def add_arguments(parser: argparse.ArgumentParser, add) -> None:
    group = parser.add_argument_group("segmentation net (train_seg; defaults: DeepLabv2 on VOC, DeepLabV3 on COCO)")
    add(
        group,
        "seg_weights_name",
        help="the trained segmentation net, written there by train_seg unless the file exists (default "
        "sess/deeplabv2_resnet101.pth on VOC, whatever --seg_arch: name another file for another net; "
        "sess_coco/deeplabv3_resnet50.pth on COCO; sess_synthetic/seg_tiny.pth on the synthetic set)",
    )
    add(
        group,
        "seg_train_list",
        help="the ids it trains on, whose pseudo masks must exist (default: --train_list, train_aug; "
        "make_sem_seg_labels makes the masks of its --infer_list)",
    )
    add(
        group,
        "seg_arch",
        choices=list(ARCH_NAMES),
        help="the net: deeplabv2_resnet101 (the papers' DeepLabv2, WSSS.deeplabv2; run_sample's default on VOC), "
        "torchvision's deeplabv3_resnet50 (the default on COCO) and the others; the demo's lraspp_mobilenet_v3_large, "
        "a CPU-sized net: a ResNet-101 for 20k steps is far beyond a CPU demo",
    )
    add(
        group,
        "seg_pretrained",
        help="a torchvision net's backbone: 'imagenet' (torchvision's weights, downloaded once into torch's cache; "
        "the default on VOC), a torchvision classifier state dict by path, or 'none' (the demo's)",
    )
    add(
        group,
        "seg_init",
        help="DeepLabv2's start: DeepLab's COCO-trained ResNet-101 as deeplab-pytorch converts it "
        f"({RECIPE.init}), required on VOC and COCO, or 'none' (random weights; the demo's default)",
    )
    # DeepLabv2's bottlenecks in layer2..5, ResNet-101's (3 4 23 3) unless set: lighter nets for tests.
    add(group, "seg_blocks", type=int, nargs=4, help=argparse.SUPPRESS)
    add(group, "seg_crop_size", type=int, help="random crop after the rescaling (512; DeepLabv2 321; the demo 64)")
    add(group, "seg_batch_size", type=int, help="global batch of a pass, split over the processes (16; DeepLabv2 5)")
    add(
        group,
        "seg_accumulation",
        type=int,
        help="passes whose gradients make one step (1; DeepLabv2 2: steps of 10 images as 2 x 5)",
    )
    add(group, "seg_iterations", type=int, help="the run's steps, rounded up to whole epochs (30k; DeepLabv2 20k)")
    add(
        group,
        "seg_num_epoches",
        type=int,
        help="epochs (default: as many as --seg_iterations take, 46 on train_aug; on the demo 150 steps)",
    )
    add(
        group,
        "seg_learning_rate",
        type=float,
        help="the backbone's lr; the head gets 10x (0.01; DeepLabv2 2.5e-4, its ASPP's biases 20x; the demo 0.05)",
    )
    add(group, "seg_weight_decay", type=float, help="on every parameter (1e-4; DeepLabv2 5e-4, none on ASPP biases)")
    add(group, "seg_momentum", type=float, default=0.9, help="SGD momentum (0.9, DeepLab's)")
    add(
        group,
        "seg_scale_range",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="the random rescaling factor of torchvision's nets' training images (0.5 2.0); DeepLabv2 draws "
        f"one of the reference's {' '.join(map(str, RECIPE.scales))}",
    )
    add(group, "seg_amp", choices=list(AMP_DTYPES), help="mixed precision on an accelerator (default fp32)")


def settings(args: argparse.Namespace, num_images: int) -> dict:
    """The run's settings on ``num_images`` training images, the dataset's preset where a
    flag is unset, checked before any work: what a resumed run must share with the run it
    continues."""
    dataset = getattr(args, "dataset", "voc")
    preset = PRESETS["synthetic" if dataset == "synthetic" else "voc"]
    if (args.seg_arch or preset.arch) == deeplabv2.ARCH:
        preset = PRESETS[deeplabv2.ARCH]
    chosen = {}
    names = ("arch", "crop_size", "batch_size", "accumulation", "num_epoches", "learning_rate", "weight_decay")
    for name in (*names, "scale_range"):
        value = getattr(args, f"seg_{name}")
        chosen[name] = getattr(preset, name, None) if value is None else value
    chosen["pretrained"] = initialization(args, preset, dataset)
    chosen["blocks"] = args.seg_blocks
    steps = args.seg_iterations or preset.steps
    images_a_step = chosen["batch_size"] * chosen["accumulation"]
    if chosen["num_epoches"] is None:  # whole epochs of the steps, full batches only
        chosen["num_epoches"] = math.ceil(steps / max(1, num_images // images_a_step))
    for name in ("crop_size", "batch_size", "accumulation", "iterations", "num_epoches", "learning_rate"):
        require_positive(f"--seg_{name}", steps if name == "iterations" else chosen[name])
    if chosen["arch"] != deeplabv2.ARCH and chosen["batch_size"] < 2:  # DeepLabv2's BatchNorm is frozen
        raise ArgumentError(f"--seg_batch_size {chosen['batch_size']}: BatchNorm needs 2 images a batch or more")
    if num_images < images_a_step:
        raise ArgumentError(
            f"--seg_batch_size {chosen['batch_size']} x --seg_accumulation {chosen['accumulation']}: no full step "
            f"in {num_images} images"
        )
    for name, value in (("weight_decay", chosen["weight_decay"]), ("momentum", args.seg_momentum)):
        if value < 0:
            raise ArgumentError(f"--seg_{name} {value:g}: must be 0 or more")
    if chosen["arch"] == deeplabv2.ARCH:
        if args.seg_scale_range is not None:
            raise ArgumentError(
                f"--seg_scale_range is for torchvision's nets; {deeplabv2.ARCH} draws among {RECIPE.scales}"
            )
        chosen["scale_range"] = None
    else:
        low, high = chosen["scale_range"]
        if not 0 < low <= high:
            raise ArgumentError(f"--seg_scale_range {low:g} {high:g}: need 0 < MIN <= MAX")
        chosen["scale_range"] = [low, high]
    seed = getattr(args, "seed", None) or 0
    return {**chosen, "poly_every": preset.poly_every, "momentum": args.seg_momentum, "seed": seed,
            "amp": args.seg_amp, "images": num_images}  # fmt: skip


def initialization(args: argparse.Namespace, preset: Preset, dataset: str) -> str | None:
    """The weights the net starts from, None for random ones: ``--seg_pretrained`` for a
    torchvision net, ``--seg_init`` for DeepLabv2, which the papers' results need on a
    real dataset."""
    if preset.arch != deeplabv2.ARCH:
        if args.seg_init is not None:
            raise ArgumentError(f"--seg_init is DeepLabv2's; {args.seg_arch or preset.arch} starts from --seg_pretrained")
        chosen = preset.pretrained if args.seg_pretrained is None else args.seg_pretrained
        return None if chosen == "none" else chosen
    if args.seg_pretrained is not None:
        raise ArgumentError(f"--seg_pretrained is for torchvision's nets; {deeplabv2.ARCH} starts from --seg_init")
    if args.seg_init is None and dataset != "synthetic":
        raise ArgumentError(
            f"{deeplabv2.ARCH} on {dataset} needs --seg_init: DeepLab's COCO-trained ResNet-101 ({RECIPE.init}, "
            "deeplab-pytorch's), or 'none' for random weights"
        )
    return None if args.seg_init in (None, "none") else args.seg_init


def masked_cross_entropy(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy averaged over the labelled pixels (255 left out): N x C x H x W logits,
    N x H x W labels. A batch without a labelled pixel (a crop of unsure labels only) gives
    0, not torch's nan, which would stop the run."""
    summed = F.cross_entropy(scores.float(), labels, ignore_index=IGNORE, reduction="sum")
    return summed / (labels != IGNORE).sum().clamp(min=1)


def run(args: argparse.Namespace) -> Path:
    """The path of the trained segmentation net, trained first when absent."""
    weights = Path(args.seg_weights_name)
    if trained_weights("train_seg", weights):
        return weights
    if args.sem_seg_out_dir is None:
        raise ArgumentError("train_seg needs --sem_seg_out_dir, the folder of the pseudo masks")

    # ============ data (every pseudo mask checked before any work) ============
    data = datasets.pipeline_data(args)
    samples, classes = data.samples(args.seg_train_list or args.train_list), data.classes
    setup = settings(args, len(samples))
    is_v2 = setup["arch"] == deeplabv2.ARCH
    if is_v2:
        transform = deeplabv2.TrainCrop(setup["crop_size"])
    else:
        transform = LabelledCrop(setup["crop_size"], tuple(setup["scale_range"]))
    made_by = (
        "make them first (stage make_sem_seg_labels, --infer_list the training list) or point --sem_seg_out_dir "
        "at a folder of label PNGs"
    )
    train_set = LabelledSet(samples, args.sem_seg_out_dir, len(classes), transform, made_by)
    trainer = stage_run(weights, setup, args)  # one per seed variant, as IRN
    where = (trainer.device, trainer.world)
    log.info("training %s on the masks in %s (%s x %d)", setup["arch"], args.sem_seg_out_dir, *where)
    # full batches: BatchNorm needs 2 images or more
    loader = trainer.loader(train_set, args.num_workers, drop_last=True, batch_flag="--seg_batch_size")
    log.info("%d images, %d classes + background, %d steps an epoch", len(train_set), len(classes), len(loader))

    # ============ model, optimizer, schedule ============
    net = build_segmentation_model(setup["arch"], len(classes) + 1, setup["pretrained"], setup["blocks"])
    lr, epochs, accumulation = setup["learning_rate"], setup["num_epoches"], setup["accumulation"]
    if is_v2:  # BatchNorm kept at the initialization's; three groups (ASPP 10x, its biases 20x)
        deeplabv2.freeze_batchnorm(net)
        model = trainer.place(net)
        recipe = replace(RECIPE, lr=lr, weight_decay=setup["weight_decay"], momentum=setup["momentum"])
        optimizer = deeplabv2.sgd(model, recipe)
    else:  # WITH_BIASES: every parameter trains, those of the head ("classifier") at 10x the lr.
        model = trainer.place(net, sync_bn=True)
        optimizer = sgd(model, lr, setup["weight_decay"], setup["momentum"], nesterov=False, multipliers=WITH_BIASES)
    scaler = trainer.scaler(setup["amp"])
    max_step = poly_max_step(len(train_set), setup["batch_size"] * accumulation, epochs)
    steps_per_epoch = len(loader) // accumulation
    if steps_per_epoch == 0:  # a process's share holds no full step
        trainer.close()
        raise ArgumentError(f"--seg_accumulation {accumulation}: more than the {len(loader)} batches of an epoch")
    schedule = PolySchedule(optimizer, lr, max_step, POLY_POWER, steps_per_epoch, setup["poly_every"])

    # ============ resume (always: a stage finishes what an interrupted one began) ============
    resumed = trainer.resume(model, optimizer, scaler, settings=setup)
    trained = trainer.distribute(model)

    def compute_loss(net, images, labels, batch):
        if is_v2:  # the four MSC outputs, each against the labels resized to it
            loss = deeplabv2.msc_loss(net(deeplabv2.caffe_input(images)), labels.long())
        else:
            loss = masked_cross_entropy(logits(net, images), labels)  # B x C x crop x crop, B x crop x crop
        return loss, {"ce": loss.detach()}

    # ============ training loop ============
    for epoch in trainer.epochs(resumed["epoch"], epochs):
        stats = trainer.train_one_epoch(
            trained, loader, optimizer, scaler, compute_loss, epoch, epochs, setup["amp"],
            before_step=schedule.before_step(epoch), accumulation=accumulation,
        )  # fmt: skip
        record = {"epoch": epoch + 1, "lr": schedule.lr, "train": stats}  # the lr of the epoch's last step
        trainer.save(model, optimizer, scaler, epoch + 1, record, settings=setup)
        log.info("%s", epoch_line(record))

    # ============ the finished net ============
    info = {"arch": setup["arch"], "num_classes": len(classes) + 1, "classes": list(classes), "epoch": epochs}
    info.update(crop_size=setup["crop_size"], dataset=getattr(args, "dataset", "voc"))
    # DeepLabv2's: the bare state dict, the reference's layout
    finished = model.state_dict() if is_v2 else {"model": model.state_dict(), **info}
    trainer.finish(stage_args(args, setup), weights, finished)
    log.info("segmentation net: %s", weights)
    return weights
