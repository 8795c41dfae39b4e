"""Stage train_irn: IRN's inter-pixel relation net (``WSSS.irn``), trained on the IR labels,
whose class boundary map guides the random walk of make_sem_seg_labels.

Reads the images of ``--train_list`` and their IR labels ``<ir_label_out_dir>/<id>.png``
(stage cam_to_ir_label: index PNGs, 0 background, c + 1 class c, 255 unsure), writes
``--irn_weights_name``; skipped when that file exists. Trains on the project's training run
(``bas.training.TrainingRun``): one process or torchrun; beside the weights ``<name>_last.pth``
after every epoch (an interrupted stage resumes from it, to the same weights) and
``<name>_log.jsonl`` with the five loss terms per epoch, ``<name>`` the weights' file name
without its suffix (``res50_irn``).

On VOC every default is IRN's (step/train_irn.py): ResNet50 from ImageNet weights, frozen;
images rescaled by a random factor in 0.5..1.5, flipped, cropped to 512; pairs of radius 10
on the stride-4 labels; batch 32, 3 epochs; SGD with lr 0.1 for the edge branch and 10x for
the displacement branch, weight decay 1e-4 on both, poly schedule (power 0.9) over the steps
of the run, taken before every step; IRN's poly optimizer hands the weight decay to SGD's
momentum slot, so momentum is 1e-4 (``--irn_momentum``). After training, the displacement's
mean over the ``--infer_list`` images (top-left crops) is stored in the net, as IRN's
mean shift. The weights file is this project's format (``WSSS.irn.load_irn``):
``{"model", "arch", "crop_size", "radius", "epoch", "dataset"}``. On the synthetic set the
demo's values (tiny net, random frozen backbone, crop 96, radius 5, batch 8, 16 epochs, lr 0.3:
``PRESETS`` says why) train on the pipeline's 100 images in a minute or two on a CPU.

Where we differ: IRN counts a pixel as sure when its label is below 21 (VOC's classes), we
when it is not 255, so other class counts work; under torchrun each loss term is divided by
the pair count of the global batch, as IRN's single process did (the logged terms are rank
0's share of the global sums, times the number of processes).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from bas.errors import ArgumentError, require_positive
from bas.optim import poly_max_step
from bas.sampling import loader_options
from bas.training import PolySchedule, epoch_line
from WSSS import datasets
from WSSS.datasets import LabelledCrop, LabelledSet, Sample, TopLeftSet
from WSSS.irn import IRN, LAYOUTS, PathIndex, build_irn, irn_loss
from WSSS.training import stage_args, stage_run, trained_weights

log = logging.getLogger(__name__)

POLY_POWER = 0.9
IRN_SCALES = (0.5, 1.5)  # the random rescaling of its training images, IRN's


@dataclass(frozen=True)
class Preset:
    """The stage's defaults on a kind of dataset; each has a flag."""

    arch: str
    crop_size: int
    batch_size: int
    num_epoches: int
    learning_rate: float
    radius: int  # of the training pairs, in stride-4 cells
    pretrained: str | None  # the frozen backbone's weights


PRESETS = {
    "voc": Preset("resnet50", 512, 32, 3, 0.1, 10, "imagenet"),
    # The demo, on the 64-96 px images: crops of 96 (stride-4 maps of 24 x 24) hold a whole image
    # at scale 1; radius 5 (20 px: IRN's 10 would span half an image and leave a 15 x 6 band of
    # sources in a 24 x 24 map). The tiny net has no ImageNet weights, and its random frozen
    # features serve. run_sample.py refines the 100 images of the synthetic `train` list (its
    # eval list): 16 epochs of batch 8 at lr 0.3 (192 steps) give an edge map that tells the
    # masks' outlines from the rest with an AUC of 0.91 (8 epochs: 0.81). What counts is the
    # steps: on all 800 images, 2 epochs at lr 0.3 give 0.91 too, at lr 0.1 0.75, and 3 epochs
    # of batch 32 0.52, 8 epochs 0.78. The CAM net's trained backbone instead of random features
    # (--irn_pretrained sess_synthetic/cam_tiny.pth) gave 0.92 at lr 0.1, 0.92 at 0.3.
    "synthetic": Preset("tiny", 96, 8, 16, 0.3, 5, None),
}


def add_arguments(parser: argparse.ArgumentParser, add) -> None:
    group = parser.add_argument_group("inter-pixel relation network (train_irn; defaults: IRN's on VOC)")
    add(
        group,
        "irn_weights_name",
        help="the trained IRN, written there by train_irn unless the file exists (default sess/res50_irn.pth, "
        "sess_synthetic/irn_tiny.pth on the synthetic set)",
    )
    add(group, "irn_crop_size", type=int, help="random crop, a multiple of 4 (512; the demo 96)")
    add(group, "irn_batch_size", type=int, help="global batch, split over the processes (32; the demo 8)")
    add(group, "irn_num_epoches", type=int, help="epochs (3; the demo 16)")
    add(
        group,
        "irn_learning_rate",
        type=float,
        help="the edge branch's lr; the displacement branch gets 10x (0.1; the demo 0.3)",
    )
    add(group, "irn_weight_decay", type=float, default=1e-4, help="on both branches, IRN's 1e-4")
    add(
        group,
        "irn_momentum",
        type=float,
        default=1e-4,
        help="IRN's effective momentum: its poly optimizer hands the weight decay to SGD's momentum slot",
    )
    add(group, "irn_radius", type=int, help="pixel pairs up to this distance at stride 4 (IRN's 10; the demo 5)")
    add(
        group,
        "irn_pretrained",
        help="the frozen backbone: 'imagenet' (IRN's, on resnet50), a torchvision-format state dict, a WSSS net of "
        "this project (e.g. sess_synthetic/cam_tiny.pth: its backbone), or 'none' (random: the demo's default)",
    )


def settings(args: argparse.Namespace) -> dict:
    """The run's settings, the dataset's preset where a flag is unset, checked before any work."""
    preset = PRESETS["synthetic" if args.dataset == "synthetic" else "voc"]
    chosen = {"arch": args.arch}
    for name in ("crop_size", "batch_size", "num_epoches", "learning_rate", "radius", "pretrained"):
        chosen[name] = getattr(args, f"irn_{name}")
    if chosen["arch"] not in (None, preset.arch) and chosen["pretrained"] is None:
        chosen["pretrained"] = "none"  # the preset's weights are its arch's
    chosen = {name: getattr(preset, name) if value is None else value for name, value in chosen.items()}
    chosen["pretrained"] = None if chosen["pretrained"] == "none" else chosen["pretrained"]
    if chosen["arch"] not in LAYOUTS:
        raise ArgumentError(f"--arch {chosen['arch']}: IRN is built on {', '.join(LAYOUTS)}")
    for name in ("crop_size", "batch_size", "num_epoches", "learning_rate", "radius"):
        require_positive(f"--irn_{name}", chosen[name])
    if chosen["crop_size"] % 4:
        raise ArgumentError(f"--irn_crop_size {chosen['crop_size']}: must be a multiple of 4 (the labels' stride)")
    if chosen["crop_size"] // 4 <= 2 * (chosen["radius"] - 1):
        raise ArgumentError(
            f"--irn_radius {chosen['radius']}: too wide for --irn_crop_size {chosen['crop_size']} (pairs must fit "
            f"in its {chosen['crop_size'] // 4}-cell stride-4 map: radius < crop / 8 + 1)"
        )
    for name in ("weight_decay", "momentum"):
        if getattr(args, f"irn_{name}") < 0:
            raise ArgumentError(f"--irn_{name} {getattr(args, f'irn_{name}'):g}: must be 0 or more")
    if args.ir_label_out_dir is None:
        raise ArgumentError("train_irn needs --ir_label_out_dir, the folder of the IR labels")
    # What a resumed run must share with the run it continues, or it would not repeat it.
    data = {"train_list": str(args.train_list), "ir_label_out_dir": str(args.ir_label_out_dir)}
    seed = getattr(args, "seed", None) or 0  # run_sample's --seed, 0 when unset
    return {**chosen, "weight_decay": args.irn_weight_decay, "momentum": args.irn_momentum, "seed": seed, **data}


@torch.no_grad()
def displacement_mean(model: IRN, samples: list[Sample], crop: int, batch_size: int, workers: int, progress: bool):
    """IRN's mean shift: the mean displacement (2) over ``samples``, each at the top left of a
    crop x crop canvas, averaged per batch of ``batch_size`` and over the full batches (all
    batches when none is full)."""
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(
        TopLeftSet(samples, crop), batch_size, drop_last=len(samples) >= batch_size, **loader_options(workers, device)
    )
    model.eval()
    means = [
        model(images.to(device))[1].mean((0, 2, 3))
        for images, _, _ in tqdm(loader, desc="displacement mean", leave=False, disable=None if progress else True)
    ]
    return torch.stack(means).mean(0)


def global_mean(counts: torch.Tensor) -> torch.Tensor:
    """This batch's pair counts, as the mean over the processes (see ``irn_loss``)."""
    if not torch.distributed.is_initialized():
        return counts
    counts = counts.clone()
    torch.distributed.all_reduce(counts)
    return counts / torch.distributed.get_world_size()


def run(args: argparse.Namespace) -> Path:
    """The path of the trained IRN, trained first when absent."""
    weights = Path(args.irn_weights_name)
    if trained_weights("train_irn", weights):
        return weights
    setup = settings(args)
    trainer = stage_run(weights, setup, args)  # one per seed variant: run_sample trains one IRN for each
    root = getattr(args, "coco_root", None) or args.voc12_root
    where = (trainer.device, trainer.world)
    log.info("training IRN (%s) on %s (%s x %d), weights to %s", setup["arch"], root, *where, weights)

    # ============ data ============
    data = datasets.pipeline_data(args)
    samples, classes = data.samples(args.train_list), data.classes
    mean_samples = data.samples(args.infer_list)  # for the mean shift, after training
    crop = setup["crop_size"]
    transform = LabelledCrop(crop, IRN_SCALES, label_stride=4)
    made_by = "make them first (stage cam_to_ir_label) or point --ir_label_out_dir at them"
    train_set = LabelledSet(samples, args.ir_label_out_dir, len(classes), transform, made_by)
    loader = trainer.loader(train_set, args.num_workers, drop_last=True, batch_flag="--irn_batch_size")  # as IRN
    pairs = PathIndex(setup["radius"], (crop // 4, crop // 4)).to(trainer.device)
    log.info("%d images, %d pair directions, %d steps an epoch", len(train_set), len(pairs.directions), len(loader))

    # ============ model, optimizer, schedule ============
    model = trainer.place(build_irn(setup["arch"], setup["pretrained"]))
    edge, displacement = model.branch_parameters()
    lr, epochs = setup["learning_rate"], setup["num_epoches"]
    groups = [
        {"params": edge, "lr": lr, "lr_multiplier": 1},
        {"params": displacement, "lr": 10 * lr, "lr_multiplier": 10},
    ]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=setup["momentum"], weight_decay=setup["weight_decay"])
    scaler = trainer.scaler(None)
    max_step = poly_max_step(len(train_set), setup["batch_size"], epochs)
    schedule = PolySchedule(optimizer, lr, max_step, POLY_POWER, len(loader))  # IRN's, before each step

    # ============ resume (always: a stage finishes what an interrupted one began) ============
    resumed = trainer.resume(model, optimizer, scaler, settings=setup)
    trained = trainer.distribute(model)

    def compute_loss(net, images, ir_label, step):
        edge_logits, disp = net(images)  # B x 1 x h x w, B x 2 x h x w
        return irn_loss(edge_logits, disp, ir_label, pairs, global_mean)

    # ============ training loop ============
    for epoch in trainer.epochs(resumed["epoch"], epochs):
        stats = trainer.train_one_epoch(
            trained, loader, optimizer, scaler, compute_loss, epoch, epochs, before_step=schedule.before_step(epoch)
        )
        record = {"epoch": epoch + 1, "lr": schedule.lr, "train": stats}
        trainer.save(model, optimizer, scaler, epoch + 1, record, settings=setup)
        log.info("%s", epoch_line(record))

    # ============ the mean shift, the finished net ============
    if trainer.main:
        progress = not args.no_progress
        mean = displacement_mean(model, mean_samples, crop, setup["batch_size"], args.num_workers, progress)
        model.displacement_mean.copy_(mean)
    info = {"arch": setup["arch"], "crop_size": crop, "radius": setup["radius"], "epoch": epochs}
    trainer.finish(stage_args(args, setup), weights, {"model": model.state_dict(), **info, "dataset": args.dataset})
    log.info("IRN: %s (displacement mean %.3f, %.3f)", weights, *model.displacement_mean.tolist())
    return weights
