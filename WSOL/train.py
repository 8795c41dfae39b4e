"""Train a BAS generator (or the CAM baseline) for weakly supervised object localization.

    python train.py                         # the synthetic demo: tiny generator, a few minutes on a CPU
    python train.py --root CUB --data-dir /data/CUB_200_2011 --arch resnet --pretrained imagenet

Every hyper-parameter defaults to the paper's value for the dataset and arch
(WSOL/presets.py); any flag overrides it. Each epoch appends one JSON line to
<output-dir>/log.jsonl, redraws its curves (loss terms, scores, lr) in <output-dir>/log.png
and rewrites <output-dir>/last.pth atomically; --resume continues from it and gives the
same result as an uninterrupted run. --tensorboard logs the same numbers to
<output-dir>/tensorboard/ as well.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bas.amc import bas_loss
from bas.checkpoints import read_checkpoint, save_atomic
from bas.cli import add_speed_arguments
from bas.distributed import gather_objects, share_buffers
from bas.errors import ArgumentError, require_positive, require_unit_interval, run_main
from bas.optim import set_step_lr, sgd
from bas.outputs import check_writable, write_text_atomic
from bas.training import TrainingRun, add_tensorboard_flag, epoch_line, flag_values, jsonable_args
from WSOL.cli import BEST_CHECKPOINTS, load_samples, resolve_preset, script_parser
from WSOL.datasets import ImageDataset, test_transform, train_transform
from WSOL.inference import BoxResults, box_results, evaluation_loader, predict
from WSOL.models import build_model

log = logging.getLogger("train")

RUN_KIND = "WSOL training run"  # what the output folder's marker says it holds


# What a resumed run must share with the run it continues, or it would not repeat it; not
# --epochs: the step schedule does not depend on it, so a run may be resumed to train longer.
RESUME_KEYS = ("root", "arch", "method", "num_classes", "alpha", "beta", "lr", "decay_epoch", "batch_size")
RESUME_KEYS += ("weight_decay", "momentum", "seed")


def get_args_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    group = parser.add_argument_group("method (defaults: the paper's, per dataset x arch)")
    group.add_argument("--alpha", type=float, help="weight of CE(score_fg), the foreground-guided classification")
    group.add_argument("--beta", type=float, help="weight of the area term: too low and maps cover the background")
    group.add_argument(
        "--pretrained",
        help="'imagenet' (torchvision weights, downloaded once), a path to a state dict, or nothing for random init",
    )
    group = parser.add_argument_group("optimization (defaults: the paper's)")
    group.add_argument("--epochs", type=int)
    group.add_argument("--decay-epoch", type=int, help="lr x 0.1 at every multiple of this epoch")
    group.add_argument("--lr", type=float, help="base lr; backbone biases 2x, classifier weights 10x, biases 20x")
    group.add_argument("--batch-size", type=int, help="global batch size")
    group.add_argument("--weight-decay", type=float, default=5e-4)
    group.add_argument("--momentum", type=float, default=0.9)
    group = parser.add_argument_group("evaluation during training")
    group.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (and after the last)")
    group.add_argument("--eval-split", default="test", help="split used to pick the best checkpoints")
    group.add_argument(
        "--threshold",
        type=float,
        nargs="+",
        help="CAM thresholds of the box protocol; the best checkpoints are picked at the best of them "
        "(default: the preset's, on the synthetic set the sweep 0.1 .. 0.7 its evaluation uses)",
    )
    group.add_argument("--topk", type=int, help="maps averaged over the top-k classes (1: the GT class)")
    group = parser.add_argument_group("run")
    group.add_argument("--output-dir", type=Path, help="default: logs/<root>/<arch>_<method>")
    group.add_argument("--seed", type=int, default=6, help="6, as the original")
    group.add_argument("--resume", action="store_true", help="continue from <output-dir>/last.pth")
    group.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    add_tensorboard_flag(group)
    group = add_speed_arguments(parser)
    group.add_argument("--compile", action="store_true", help="torch.compile the training forward pass")
    group = parser.add_argument_group("distributed (torchrun --nproc_per_node N train.py ...)")
    group.add_argument("--sync-bn", action="store_true", help="synchronize BatchNorm statistics across processes")
    return parser


def fill_defaults(args: argparse.Namespace) -> None:
    """Every option left unset takes the preset's value; every value is checked before any
    work starts, the output folder included."""
    values = resolve_preset(args)
    args.method = args.method or "bas"
    for name in ("alpha", "beta", "topk", "epochs", "decay_epoch", "lr", "batch_size"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(values, name))
    args.threshold = args.threshold or sorted({values.threshold, *values.sweep})
    args.resize, args.crop = values.resize, values.crop
    args.output_dir = args.output_dir or Path("logs") / args.root / f"{args.arch}_{args.method}"
    for flag in ("epochs", "decay_epoch", "lr", "batch_size", "topk", "eval_every", "num_classes"):
        require_positive("--" + flag.replace("_", "-"), getattr(args, flag))
    if args.workers < 0:
        raise ArgumentError(f"--workers {args.workers}: must be 0 or more")
    require_unit_interval("--threshold", args.threshold)
    check_writable(args.output_dir, RUN_KIND, "Choose another --output-dir.")


def loss_function(alpha: float, beta: float):
    """The loss of one batch: the BAS loss (CE only for the CAM baseline, whose outputs
    have no AMC terms), with the classification accuracy for the log."""

    def compute_loss(model, images, labels, step):
        out = model(images, labels)
        loss, parts = bas_loss(out, labels, alpha, beta)
        parts["cls_acc"] = (out.score.argmax(1) == labels).float().mean() * 100
        return loss, parts

    return compute_loss


def evaluate(model, loader, samples, args, device, show: bool) -> dict:
    """The original box protocol over the whole test set, each process scoring its share
    with rank 0's weights and BatchNorm statistics: exactly the model that is saved."""
    share_buffers(model)
    batches = predict(model, loader, device, args.topk, args.amp, show and not args.no_progress, args.channels_last)
    local = box_results(batches, samples, args.threshold, args.resize, args.crop)
    return BoxResults.concatenate(gather_objects(local)).summary(args.threshold, args.num_classes > 5)


def train(args: argparse.Namespace) -> dict:
    fill_defaults(args)
    run = TrainingRun(
        args.output_dir,
        RUN_KIND,
        args.batch_size,
        args.seed,
        args.device,
        args.local_rank,
        progress=not args.no_progress,
        tensorboard=args.tensorboard,
        resume=args.resume,
        epochs=args.epochs,
        join_timeout=args.dist_timeout,
    )
    device = run.device
    log.info(
        "training %s %s on %s (%s x %d), output in %s",
        args.method,
        args.arch,
        args.root,
        device,
        run.world,
        args.output_dir,
    )

    # ============ data ============
    train_set = ImageDataset(load_samples(args, "train"), train_transform(args.resize, args.crop))
    train_loader = run.loader(train_set, args.workers)
    test_samples = load_samples(args, args.eval_split)
    test_loader = evaluation_loader(
        test_samples, test_transform(args.resize, args.crop), run.batch_size, args.workers, device, run.rank, run.world
    )
    log.info("%d training images, %d %s images", len(train_set), len(test_samples), args.eval_split)

    # ============ model and optimizer ============
    model = run.place(
        build_model(args.arch, args.num_classes, args.pretrained, args.method), args.sync_bn, args.channels_last
    )
    optimizer = sgd(model, args.lr, args.weight_decay, args.momentum)
    scaler = run.scaler(args.amp)

    # ============ resume ============
    best = {name: -1.0 for name in BEST_CHECKPOINTS}
    settings = flag_values(args, RESUME_KEYS)  # saved with every checkpoint, checked on resume
    start_epoch = 0
    if args.resume:
        resumed = run.resume(model, optimizer, scaler, settings=settings)
        start_epoch, best = resumed["epoch"], resumed.get("best", best)
    trained = run.distribute(model, args.compile)

    # ============ training loop ============
    summary = {}
    compute_loss = loss_function(args.alpha, args.beta)
    for epoch in run.epochs(start_epoch, args.epochs):
        lr = set_step_lr(optimizer, args.lr, epoch, args.decay_epoch)
        record = {"epoch": epoch + 1, "lr": lr}
        record["train"] = run.train_one_epoch(
            trained, train_loader, optimizer, scaler, compute_loss, epoch, args.epochs, args.amp, args.channels_last
        )
        run.claim()  # made only now: a run that fails earlier leaves nothing

        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            summary = evaluate(model, test_loader, test_samples, args, device, run.main)
            record["test"] = {k: v for k, v in summary.items() if k != "per_threshold"}
            for name, quantity in BEST_CHECKPOINTS.items():
                value = sum(summary[key] for key in quantity.split("+"))
                if value > best[name]:
                    best[name] = value
                    if run.main:
                        save_atomic(checkpoint_for_release(model, args, epoch + 1, summary), args.output_dir / name)

        run.save(model, optimizer, scaler, epoch + 1, record, best=best, settings=settings, args=jsonable_args(args))
        log.info("%s", wsol_epoch_line(record))

    # ============ the end ============
    if run.main:
        write_summary(args, run.history.records())
        log.info("%s", best_checkpoint_line(args.output_dir / "best_loc.pth"))
    run.finish(jsonable_args(args))  # args.json; the nets are the best checkpoints, saved as they came
    return summary


def best_checkpoint_line(path: Path) -> str:
    """Which epoch best_loc.pth holds, and why: evaluator.py scores it by default, so its
    numbers are that epoch's, not the last one's."""
    if not path.is_file():
        return f"no {path.name} was written (no evaluation ran)"
    checkpoint = read_checkpoint(path)
    metrics = checkpoint["metrics"]
    return (
        f"{path} holds epoch {checkpoint['epoch']}, the best top-1 loc + GT-known "
        f"({metrics['top1_loc']:.2f} + {metrics['gt_known']:.2f}, thr {metrics['threshold']:g}); "
        "evaluator.py scores it by default"
    )


def checkpoint_for_release(model, args, epoch: int, summary: dict) -> dict:
    """The original release's format ({'model', 'best_thr', 'epoch'}) plus what the
    evaluator needs to rebuild the model without flags."""
    return {
        "model": model.state_dict(),
        "best_thr": summary["threshold"],
        "epoch": epoch,
        "arch": args.arch,
        "method": args.method,
        "num_classes": args.num_classes,
        "root": args.root,
        "metrics": {k: v for k, v in summary.items() if k != "per_threshold"},
    }


def wsol_epoch_line(record: dict) -> str:
    line = epoch_line(record)
    if "test" in record:
        test = record["test"]
        top5 = f"  top-5 loc {test['top5_loc']:.2f}" if "top5_loc" in test else ""
        line += (
            f"\n          {test['images']} test images: cls top-1 {test['cls_top1']:.2f}  top-1 loc "
            f"{test['top1_loc']:.2f}{top5}  GT-known {test['gt_known']:.2f}  (thr {test['threshold']:g})"
        )
    return line


def write_summary(args: argparse.Namespace, records: list[dict]) -> None:
    """A readable summary.txt beside the JSON lines: the settings and every evaluation."""
    lines = [
        f"{args.method} {args.arch} on {args.root}: alpha {args.alpha}, beta {args.beta}, lr {args.lr}, "
        f"batch {args.batch_size}, {args.epochs} epochs (decay every {args.decay_epoch})",
        "",
    ]
    columns = [
        ("cls top-1", "cls_top1"),
        ("top-1 loc", "top1_loc"),
        ("top-5 loc", "top5_loc"),
        ("GT-known", "gt_known"),
    ]
    tested = [record for record in records if "test" in record]
    columns = [(name, key) for name, key in columns if all(key in record["test"] for record in tested)]
    lines.append(f"{'epoch':>5} " + " ".join(f"{name:>9}" for name, _ in columns) + f" {'thr':>5}")
    for record in tested:
        t = record["test"]
        lines.append(
            f"{record['epoch']:>5} " + " ".join(f"{t[key]:9.2f}" for _, key in columns) + f" {t['threshold']:5g}"
        )
    write_text_atomic(args.output_dir / "summary.txt", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    run_main(main)
