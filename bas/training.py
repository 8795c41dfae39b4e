"""One training run, as every trainer of the project runs it (WSOL/train.py, WSSS/training.py
for the seed nets, the WSSS stages train_irn and train_seg): processes, data order, the
model's placement, resume, one epoch of optimization, the learning rate per step, the
bookkeeping after each epoch and the finished net. The trainers keep only what is theirs
(data, model, loss, schedule, evaluation) and read top to bottom::

    run = TrainingRun(args.output_dir, RUN_KIND, args.batch_size, args.seed, args.device, args.local_rank)
    loader = run.loader(dataset, args.workers)
    model = run.place(build_model(...), args.sync_bn, args.channels_last)
    optimizer, scaler = sgd(model, ...), run.scaler(args.amp)
    start_epoch = run.resume(model, optimizer, scaler)["epoch"] if args.resume else 0
    trained = run.distribute(model)
    for epoch in run.epochs(start_epoch, args.epochs):
        lr = set_step_lr(optimizer, args.lr, epoch, args.decay_epoch)  # or per step: PolySchedule
        stats = run.train_one_epoch(trained, loader, optimizer, scaler, compute_loss, epoch, args.epochs)
        run.save(model, optimizer, scaler, epoch + 1, {"epoch": epoch + 1, "lr": lr, "train": stats})
    run.finish(jsonable_args(args), weights, {"model": model.state_dict(), ...})  # and close

A resumed run repeats an uninterrupted one exactly: every epoch reseeds the generators
from (seed, epoch, rank), and the data order and each image's augmentation depend on
(seed, epoch, index) only (``ShuffledShards``, ``SeededItems``), so a checkpoint needs no
generator state: the model, optimizer, scaler and epoch are the whole state.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from bas.checkpoints import load_state_dict_checked, read_checkpoint, save_atomic
from bas.curves import draw_curves, scalars
from bas.devices import autocast, memory_format
from bas.distributed import JOIN_TIMEOUT_S, finish_distributed, gather_objects, init_distributed
from bas.errors import ArgumentError, CheckpointError, OutputError, UserError, set_interrupt_note
from bas.logs import Average, JsonLines
from bas.optim import set_poly_lr
from bas.outputs import LOCK, MARKER, check_writable, claim, hold, release, write_text_atomic
from bas.sampling import SeededItems, ShuffledShards, epoch_seed, loader_options, seed_everything

log = logging.getLogger(__name__)

# compute_loss(model, images, labels, step) -> (loss, parts): the forward pass and loss of
# one batch (run under autocast); ``step`` counts the epoch's batches from 0; the parts
# (scalar tensors) are averaged over the epoch for the log.
LossFunction = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class TrainingRun:
    """The plumbing of one training run in this process.

    Joins the processes (torchrun, the legacy launcher, or a plain single process; a
    process that joined already, e.g. in a pipeline, stays joined at ``close``), splits
    the global ``batch_size`` over them and checks ``output_dir`` before any work.
    ``output_dir`` receives ``<prefix>last.pth`` (rewritten atomically after every epoch,
    by rank 0), ``<prefix>log.jsonl`` (one JSON line per epoch) and ``<prefix>log.png``
    (its curves, redrawn from it after every epoch: ``bas.curves``); with ``tensorboard``,
    the same numbers go to ``tensorboard/`` too (``tensorboard/bas`` under the prefix ``bas_``,
    so that each net is a run of its own there). The folder is claimed for ``kind``
    (``bas.outputs``) only once the first epoch has trained, so a run that fails earlier
    leaves nothing behind. ``prefix`` lets runs of several nets share a folder.
    """

    def __init__(
        self,
        output_dir: str | Path,
        kind: str,
        batch_size: int,
        seed: int,
        device: str | torch.device | None = None,
        local_rank: int | None = None,
        prefix: str = "",
        progress: bool = True,
        tensorboard: bool = False,
        resume: bool = False,
        epochs: int | None = None,
        join_timeout: float = JOIN_TIMEOUT_S,
    ) -> None:
        self.output_dir, self.kind, self.seed, self.prefix = Path(output_dir), kind, seed, prefix
        check_writable(self.output_dir, kind, "Choose another --output-dir.")
        self._summary_writer = summary_writer_class() if tensorboard else None
        self._board_dir = self.output_dir / "tensorboard" / prefix.rstrip("_")
        self._board = None  # opened with the first epoch saved (see save)
        self._joined_here = not torch.distributed.is_initialized()
        self.device, self.rank, self.world = init_distributed(device, local_rank, join_timeout)
        self.main = self.rank == 0
        self.last = self.output_dir / f"{prefix}last.pth"
        self.history = JsonLines(self.output_dir / f"{prefix}log.jsonl")
        self.resuming = resume
        error = None
        if self.main:
            try:
                hold(self.output_dir)  # one writer at a time, from now on
                if not resume:
                    self._refuse_earlier_run(epochs)
            except UserError as caught:
                error = caught
        if batch_size % self.world:
            error = ArgumentError(f"--batch-size {batch_size} (global) does not split over {self.world} processes")
        error = gather_objects(error)[0]
        if error is not None:
            self.close()
            raise error
        self.batch_size = batch_size // self.world  # per process
        self.progress = progress and self.main
        self.start_epoch = 0
        self.sampler: ShuffledShards | None = None
        self._claimed = False
        seed_everything(seed)

    def _refuse_earlier_run(self, epochs: int | None) -> None:
        """A fresh run never writes over an earlier one in its folder: a finished run is
        final, an unfinished one continues only with --resume."""
        earlier = sorted(
            entry.name
            for entry in self.output_dir.iterdir()
            if entry.name.startswith(self.prefix) and entry.name != MARKER and not entry.name.startswith(LOCK)
        )
        if not earlier:
            return
        records = self.history.records()
        done = records[-1]["epoch"] if records else 0
        if records and epochs is not None and done >= epochs:
            raise OutputError(
                f"{self.output_dir} holds a finished run ({done} epochs, {self.history.path.name}); a finished run is "
                "final: its results are there. Choose another --output-dir."
            )
        if records or self.last.is_file():
            planned = f" of {epochs}" if epochs is not None else ""
            raise OutputError(
                f"{self.output_dir} holds an unfinished run ({done}{planned} epochs in {self.last.name}): add "
                "--resume to continue it, or choose another --output-dir."
            )
        shown = ", ".join(earlier[:3]) + (", ..." if len(earlier) > 3 else "")
        raise OutputError(
            f"{self.output_dir} holds files of an earlier run ({shown}); nothing was written. Choose another --output-dir."
        )

    # ------------------------------------------------------------------------ set-up
    def loader(
        self, dataset: Dataset, workers: int, drop_last: bool = False, batch_flag: str = "--batch-size"
    ) -> DataLoader:
        """This process's share of ``dataset`` in per-process batches, reshuffled each epoch
        (``epochs`` sets the epoch). ``dataset[i]`` may draw random augmentations from
        torch's generator: each sample's draw depends on (seed, epoch, index) only, whatever
        the number of loader workers. ``drop_last`` drops a last incomplete batch; when that
        leaves no batch at all, the run stops, naming ``batch_flag``, the caller's flag of
        the global batch size."""
        self.sampler = ShuffledShards(len(dataset), self.rank, self.world, self.seed)
        loader = DataLoader(
            SeededItems(dataset),
            batch_size=self.batch_size,
            sampler=self.sampler,
            drop_last=drop_last,
            **loader_options(workers, self.device),
        )
        if len(loader) == 0:
            self.close()
            processes = f" over {self.world} processes" if self.world > 1 else ""
            raise ArgumentError(
                f"{batch_flag} {self.batch_size * self.world}: no full batch in {len(dataset)} images{processes}"
            )
        return loader

    def place(self, model: nn.Module, sync_bn: bool = False, channels_last: bool = False) -> nn.Module:
        """``model`` on this process's device (NHWC when asked); under several processes
        with ``sync_bn``, its BatchNorm layers normalize with the statistics of the global
        batch (SyncBatchNorm, same state-dict keys), where torch has it: not on the CPU,
        whose processes then normalize with their own batches."""
        model = model.to(self.device, memory_format=memory_format(channels_last))
        if self.world > 1 and sync_bn and self.device.type == "cpu":
            log.warning("SyncBatchNorm needs an accelerator: on the CPU each process normalizes its own batch")
        elif self.world > 1 and sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def scaler(self, amp: str | None) -> torch.amp.GradScaler:
        """Loss scaling for fp16 (bf16 and fp32 need none: the scaler is then a no-op)."""
        return torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")

    def resume(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        settings: dict | None = None,
    ) -> dict:
        """Load ``last.pth`` into the model, optimizer and scaler; returns the checkpoint's
        other entries (``epoch`` and whatever the script saved with it). Without one, the
        run starts afresh: ``{"epoch": 0}``. ``settings``: what a resumed run must share with
        the run it continues, or it would not repeat it (saved with ``save(..., settings=)``);
        a checkpoint of other settings stops, naming the first that differs. A checkpoint
        written before settings were saved is checked against the flags it saved (``args``);
        a setting the checkpoint does not record is not checked."""
        if not self.last.is_file():
            log.info("nothing to resume in %s: starting afresh", self.output_dir)
            return {"epoch": 0}
        checkpoint = read_checkpoint(self.last)
        missing = [key for key in ("optimizer", "scaler", "epoch") if key not in checkpoint]
        if missing:
            raise CheckpointError(f"{self.last}: not a checkpoint to resume from (no {', '.join(missing)})")
        recorded = checkpoint.get("settings") or checkpoint.get("args") or {}
        for name in sorted(recorded.keys() & (settings or {}).keys()):
            if recorded[name] != settings[name]:
                raise CheckpointError(
                    f"{self.last} was trained with {name} {recorded[name]}, not {settings[name]}: resume "
                    "with the same flags, or remove it to start afresh"
                )
        load_state_dict_checked(model, checkpoint["model"], str(self.last))
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        self.start_epoch = checkpoint["epoch"]
        log.info("resumed from %s at epoch %d", self.last, self.start_epoch)
        return {k: v for k, v in checkpoint.items() if k not in ("model", "optimizer", "scaler")}

    def distribute(self, model: nn.Module, compile: bool = False) -> nn.Module:
        """The module to train: ``model`` under DistributedDataParallel when there are
        several processes (its parameters and buffers stay ``model``'s), compiled when asked."""
        if self.world > 1:
            model = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        return torch.compile(model) if compile else model

    # -------------------------------------------------------------------------- loop
    def epochs(self, start: int, end: int) -> Iterator[int]:
        """Epochs ``start`` .. ``end - 1``, each begun by reseeding every generator from
        (seed, epoch, rank) and setting the loader's epoch."""
        for epoch in range(start, end):
            saved = f"{self.last} holds epoch {epoch}" if epoch else "no epoch was saved"
            again = "rerun the same command" if self.resuming else "rerun with --resume"
            set_interrupt_note(f"at epoch {epoch + 1} of {end} ({saved}): {again} to continue")
            seed_everything(epoch_seed(self.seed, epoch) + self.rank)
            if self.sampler is not None:
                self.sampler.set_epoch(epoch)
            yield epoch

    def train_one_epoch(
        self,
        model: nn.Module,
        loader: DataLoader,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        compute_loss: LossFunction,
        epoch: int,
        epochs: int,
        amp: str | None = None,
        channels_last: bool = False,
        before_step: Callable[[int], object] | None = None,
        accumulation: int = 1,
    ) -> dict[str, float]:
        """One pass over this process's share of the data; returns the means of the loss
        parts over it (this process's). ``before_step(step)``, when given, runs before each
        optimizer step's first batch (e.g. a per-step learning-rate schedule); ``step``
        counts the steps from 0 in the epoch. ``accumulation`` k: each step takes the
        gradients of k batches, each loss divided by k (a batch k times larger, for a loss
        that is a mean over its batch, where nothing else mixes the images: no training-mode
        BatchNorm); the batches after the epoch's last full group of k are left out."""
        model.train()
        meters: dict[str, Average] = {}
        progress = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=None if self.progress else True)
        layout = memory_format(channels_last)
        steps = len(loader) // accumulation
        for batch, (images, labels, _) in enumerate(progress):
            step, part = divmod(batch, accumulation)
            if step == steps:
                break
            if part == 0:
                if before_step is not None:
                    before_step(step)
                optimizer.zero_grad(set_to_none=True)
            images = images.to(self.device, non_blocking=True, memory_format=layout)
            labels = labels.to(self.device, non_blocking=True)
            with autocast(self.device, amp):
                loss, parts = compute_loss(model, images, labels, batch)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step}")
            scaler.scale(loss / accumulation).backward()
            if part == accumulation - 1:
                scaler.step(optimizer)
                scaler.update()
            for name, value in parts.items():
                meters.setdefault(name, Average()).update(value.item(), len(labels))
        return {name: meter.mean for name, meter in meters.items()}

    def claim(self) -> None:
        """Rank 0 marks the output folder as this run's, once; called after the first epoch
        has trained (``save`` calls it too). A fresh run starts a fresh log; a resumed one
        keeps the lines of the epochs it resumed from."""
        if self.main and not self._claimed:
            claim(self.output_dir, self.kind)
            self.history.keep(lambda record: record["epoch"] <= self.start_epoch)
            self._claimed = True

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        epoch: int,
        record: dict,
        **extra,
    ) -> None:
        """Rank 0 appends ``record`` to the log, rewrites ``last.pth`` atomically (model,
        optimizer, scaler, the number of epochs done, and ``extra``), redraws the log's curves
        and, with TensorBoard, logs the record's numbers at step ``epoch``. The log line comes
        first: a crash between the two leaves a line the resumed run drops and writes again,
        never a checkpoint whose epoch has no line."""
        if not self.main:
            return
        self.claim()
        self.history.write(record)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}
        save_atomic({**state, "epoch": epoch, **extra}, self.last)
        draw_curves(self.history.path)
        if self._summary_writer is not None:
            if self._board is None:
                # purge_step: TensorBoard hides what an earlier session logged from this epoch
                # on, as the log dropped it (a resumed run, or a fresh run in the same folder).
                self._board = self._summary_writer(self._board_dir, purge_step=epoch)
            for name, value in scalars(record).items():
                self._board.add_scalar(name, value, epoch)
            self._board.flush()

    def finish(self, args_record: dict, weights: Path | None = None, net: dict | None = None) -> None:
        """The end of the run: rank 0 claims the folder (a run resumed when already finished
        trains nothing, but still writes its results), saves ``net`` (the finished net's file:
        its state dict and what a reader needs to rebuild it) atomically at ``weights`` when
        given, and writes ``args_record`` to ``<prefix>args.json``; then ``close``."""
        if self.main:
            self.claim()
            if weights is not None:
                save_atomic(net, weights)
            text = json.dumps(args_record, indent=2, default=str) + "\n"
            write_text_atomic(self.output_dir / f"{self.prefix}args.json", text)
        self.close()

    def close(self) -> None:
        """Wait for the other processes, so that what rank 0 wrote last is there for all
        (a pipeline's next stage reads it), and leave the process group if this run joined it."""
        if self._board is not None:
            self._board.close()
        set_interrupt_note("")
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        if self.main:
            release(self.output_dir)
        if self._joined_here:
            finish_distributed()


class PolySchedule:
    """The poly learning rate of the WSSS nets' original optimizers, set before every step:
    base_lr x (1 - step / max_step) ** power at the run's step ``step`` (``set_poly_lr``),
    the steps counted over the epochs of ``steps_per_epoch`` steps. Computed from the
    epoch and step alone, so a resumed run gets the same rates. ``every``: the rate changes
    every that many steps only (DeepLabv2's Caffe recipe: 10), each step taking the rate of
    the last multiple of ``every``."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        max_step: int,
        power: float,
        steps_per_epoch: int,
        every: int = 1,
    ) -> None:
        self.optimizer, self.base_lr, self.max_step, self.power = optimizer, base_lr, max_step, power
        self.steps_per_epoch, self.every = steps_per_epoch, every
        self.lr = base_lr  # the base group's rate of the last step

    def before_step(self, epoch: int) -> Callable[[int], float]:
        """``train_one_epoch``'s ``before_step`` for ``epoch``: sets the rate of its step
        ``step`` (counted from 0 in the epoch)."""
        first_step = epoch * self.steps_per_epoch
        return lambda step: self._set(first_step + step)

    def _set(self, step: int) -> float:
        self.lr = set_poly_lr(self.optimizer, self.base_lr, step - step % self.every, self.max_step, self.power)
        return self.lr


def summary_writer_class() -> type:
    """TensorBoard's SummaryWriter; without the package (an option, not a requirement) the
    run stops before any work rather than after its first epoch."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ArgumentError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter


def add_tensorboard_flag(group: argparse._ArgumentGroup) -> None:
    """The training scripts' --tensorboard (TrainingRun's ``tensorboard``)."""
    group.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log each epoch's numbers to <output-dir>/tensorboard/ (needs: pip install tensorboard); "
        "the PNG of the curves beside the JSON log is drawn either way",
    )


def flag_values(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    """The values of the flags ``names``: a script's resume settings (``TrainingRun.resume``)."""
    return {name: getattr(args, name) for name in names}


def jsonable_args(args: argparse.Namespace) -> dict:
    """The flags as JSON values (paths as strings), for checkpoints and args.json."""
    return {k: str(v) if isinstance(v, (Path, torch.device)) else v for k, v in vars(args).items()}


def epoch_line(record: dict) -> str:
    """One log line of an epoch's record: epoch, lr, and the means of the loss parts."""
    parts = "  ".join(f"{k} {v:.4f}" for k, v in record["train"].items())
    return f"epoch {record['epoch']:3d}  lr {record['lr']:.2e}  {parts}"
