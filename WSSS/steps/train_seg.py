"""Stage train_seg: a segmentation net (torchvision's DeepLabV3, ``WSSS.segmentation``)
trained on the pseudo masks, the step after which image labels have given a segmentation
model. The original BAS code stops at the masks; the paper trains DeepLab on them.

Reads the images of ``--seg_train_list`` (default ``--train_list``, train_aug) and their
pseudo masks ``<sem_seg_out_dir>/<id>.png`` (stage make_sem_seg_labels, or any folder of
label PNGs: 0 background, c + 1 class c, 255 ignored), writes ``--seg_weights_name``;
skipped when that file exists. Trains on the project's training run
(``bas.training.TrainingRun``): one process or torchrun (SyncBatchNorm across GPUs),
``<name>_last.pth`` after every epoch beside the weights ``<name>.pth`` (an interrupted stage
resumes from it, to the same weights), ``<name>_log.jsonl`` and ``<name>_log.png`` with the
loss per epoch.

On VOC the defaults are the common DeepLabV3 recipe on train_aug (VainF/DeepLabV3Plus-Pytorch:
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
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bas.devices import AMP_DTYPES
from bas.errors import ArgumentError, require_positive
from bas.optim import poly_max_step, sgd
from bas.training import PolySchedule, epoch_line
from WSSS import datasets
from WSSS.datasets import IGNORE, LabelledCrop, LabelledSet
from WSSS.segmentation import ARCHS, build_segmentation_model, logits
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


PRESETS = {
    "voc": Preset("deeplabv3_resnet50", 512, 16, 30_000, 0.01, "imagenet"),
    # The demo: LR-ASPP on MobileNetV3 from scratch (no weights can be downloaded there), a
    # CPU-sized net whose head also reads stride-8 features, which the 64-96 px images need
    # (DeepLabV3-MobileNet sees them at stride 16 only: 4-6 cells a side). Crops of 64, lr 0.05
    # (from scratch it learns faster than the pretrained recipe's 0.01), 150 steps of 16 (3
    # epochs of the 800 train_aug images): about 2 minutes on 2 CPU cores, 81 val mIoU on the
    # set's true masks at scale 1.
    "synthetic": Preset("lraspp_mobilenet_v3_large", 64, 16, 150, 0.05, None),
}


def add_arguments(parser: argparse.ArgumentParser, add) -> None:
    group = parser.add_argument_group("segmentation net (train_seg; defaults: DeepLabV3 on VOC)")
    add(
        group,
        "seg_weights_name",
        help="the trained segmentation net, written there by train_seg unless the file exists (default "
        "sess/deeplabv3_resnet50.pth; sess_synthetic/seg_tiny.pth on the synthetic set)",
    )
    add(
        group,
        "seg_train_list",
        help="the ids it trains on, whose pseudo masks must exist (default: --train_list, train_aug; "
        "make_sem_seg_labels makes the masks of its --infer_list)",
    )
    add(group, "seg_arch", choices=list(ARCHS), help="torchvision's model (deeplabv3_resnet50; the demo lraspp_...)")
    add(
        group,
        "seg_pretrained",
        help="the backbone: 'imagenet' (torchvision's weights, downloaded once into torch's cache; the default "
        "on VOC), a torchvision classifier state dict by path, or 'none' (the demo's)",
    )
    add(group, "seg_crop_size", type=int, help="random crop after the random rescaling (512; the demo 64)")
    add(group, "seg_batch_size", type=int, help="global batch, split over the processes (16)")
    add(
        group,
        "seg_num_epoches",
        type=int,
        help="epochs (default: as many as 30k steps take, DeepLab's, 46 on train_aug; on the demo 150 steps)",
    )
    add(group, "seg_learning_rate", type=float, help="the backbone's lr; the head gets 10x (0.01; the demo 0.05)")
    add(group, "seg_weight_decay", type=float, default=1e-4, help="on every parameter (1e-4)")
    add(group, "seg_momentum", type=float, default=0.9, help="SGD momentum (0.9, DeepLab's)")
    add(
        group,
        "seg_scale_range",
        type=float,
        nargs=2,
        default=(0.5, 2.0),
        metavar=("MIN", "MAX"),
        help="the random rescaling factor of training images (DeepLab's 0.5 2.0)",
    )
    add(group, "seg_amp", choices=list(AMP_DTYPES), help="mixed precision on an accelerator (default fp32)")


def settings(args: argparse.Namespace, num_images: int) -> dict:
    """The run's settings on ``num_images`` training images, the dataset's preset where a
    flag is unset, checked before any work: what a resumed run must share with the run it
    continues."""
    preset = PRESETS["synthetic" if getattr(args, "dataset", "voc") == "synthetic" else "voc"]
    chosen = {}
    for name in ("arch", "crop_size", "batch_size", "num_epoches", "learning_rate", "pretrained"):
        value = getattr(args, f"seg_{name}")
        chosen[name] = getattr(preset, name, None) if value is None else value
    chosen["pretrained"] = None if chosen["pretrained"] == "none" else chosen["pretrained"]
    if chosen["num_epoches"] is None:  # whole epochs of the preset's steps, full batches only
        chosen["num_epoches"] = math.ceil(preset.steps / max(1, num_images // chosen["batch_size"]))
    for name in ("crop_size", "batch_size", "num_epoches", "learning_rate"):
        require_positive(f"--seg_{name}", chosen[name])
    if chosen["batch_size"] < 2:
        raise ArgumentError(f"--seg_batch_size {chosen['batch_size']}: BatchNorm needs 2 images a batch or more")
    for name in ("weight_decay", "momentum"):
        if getattr(args, f"seg_{name}") < 0:
            raise ArgumentError(f"--seg_{name} {getattr(args, f'seg_{name}'):g}: must be 0 or more")
    low, high = args.seg_scale_range
    if not 0 < low <= high:
        raise ArgumentError(f"--seg_scale_range {low:g} {high:g}: need 0 < MIN <= MAX")
    seed = getattr(args, "seed", None) or 0
    return {**chosen, "weight_decay": args.seg_weight_decay, "momentum": args.seg_momentum, "seed": seed,
            "scale_range": [low, high], "amp": args.seg_amp, "images": num_images}  # fmt: skip


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
    model = trainer.place(build_segmentation_model(setup["arch"], len(classes) + 1, setup["pretrained"]), sync_bn=True)
    lr, epochs = setup["learning_rate"], setup["num_epoches"]
    # WITH_BIASES: every parameter trains, those of the head ("classifier") at 10x the lr.
    optimizer = sgd(model, lr, setup["weight_decay"], setup["momentum"], nesterov=False, multipliers=WITH_BIASES)
    scaler = trainer.scaler(setup["amp"])
    max_step = poly_max_step(len(train_set), setup["batch_size"], epochs)
    schedule = PolySchedule(optimizer, lr, max_step, POLY_POWER, len(loader))  # before every step

    # ============ resume (always: a stage finishes what an interrupted one began) ============
    resumed = trainer.resume(model, optimizer, scaler, settings=setup)
    trained = trainer.distribute(model)

    def compute_loss(net, images, labels, step):
        loss = masked_cross_entropy(logits(net, images), labels)  # B x C x crop x crop, B x crop x crop
        return loss, {"ce": loss.detach()}

    # ============ training loop ============
    for epoch in trainer.epochs(resumed["epoch"], epochs):
        stats = trainer.train_one_epoch(
            trained, loader, optimizer, scaler, compute_loss, epoch, epochs, setup["amp"],
            before_step=schedule.before_step(epoch),
        )  # fmt: skip
        record = {"epoch": epoch + 1, "lr": schedule.lr, "train": stats}  # the lr of the epoch's last step
        trainer.save(model, optimizer, scaler, epoch + 1, record, settings=setup)
        log.info("%s", epoch_line(record))

    # ============ the finished net ============
    info = {"arch": setup["arch"], "num_classes": len(classes) + 1, "classes": list(classes), "epoch": epochs}
    info.update(crop_size=setup["crop_size"], dataset=getattr(args, "dataset", "voc"))
    trainer.finish(stage_args(args, setup), weights, {"model": model.state_dict(), **info})
    log.info("segmentation net: %s", weights)
    return weights
