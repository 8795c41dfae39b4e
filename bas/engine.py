"""Training plumbing shared by the WSOL and WSSS scripts.

Optimizer groups, the step schedule of the WSOL paper and the poly schedule of the WSSS
code, device and precision choice, seeding that makes a resumed run repeat an
uninterrupted one, atomic checkpoints, a JSON-lines log, and the process group. The
training run built from these pieces, the same for every script, is ``bas.training``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import pickle
import random
import zipfile
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from bas.errors import CheckpointError, UserError
from bas.outputs import replace_atomic, write_text_atomic

T = TypeVar("T")


# ----------------------------------------------------------------------- optimization
# Learning-rate multiplier per (classifier?, weight or bias) part of a model: the WSOL
# paper's four groups. A part missing from a table is never given to the optimizer.
Multipliers = dict[tuple[bool, str], float]
WSOL_MULTIPLIERS: Multipliers = {(False, "weight"): 1, (False, "bias"): 2, (True, "weight"): 10, (True, "bias"): 20}


def param_groups(model: nn.Module, lr: float, multipliers: Multipliers = WSOL_MULTIPLIERS) -> list[dict]:
    """Trainable parameters grouped by ``multipliers``: a parameter whose name holds
    "classifier" is a classifier part, one whose name ends in "bias" a bias. The default
    is the original WSOL code's: backbone weights 1x, backbone biases 2x, ``classifier*``
    weights 10x, ``classifier*`` biases 20x the base learning rate."""
    groups: dict[tuple[bool, str], list] = {key: [] for key in multipliers}
    for name, param in model.named_parameters():
        key = ("classifier" in name, "bias" if name.endswith("bias") else "weight")
        if param.requires_grad and key in groups:
            groups[key].append(param)
    return [
        {"params": params, "lr": lr * multipliers[key], "lr_multiplier": multipliers[key]}
        for key, params in groups.items()
        if params
    ]


def sgd(
    model: nn.Module,
    lr: float,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    nesterov: bool = True,
    multipliers: Multipliers = WSOL_MULTIPLIERS,
) -> torch.optim.SGD:
    """SGD over the learning-rate groups of ``param_groups`` (by default the WSOL paper's:
    Nesterov momentum, four groups)."""
    groups = param_groups(model, lr, multipliers)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def set_step_lr(
    optimizer: torch.optim.Optimizer, base_lr: float, epoch: int, decay_epoch: int, rate: float = 0.1
) -> float:
    """lr x ``rate`` at every multiple of ``decay_epoch`` (epochs counted from 0); returns
    the base group's lr. Computed from the epoch, not accumulated, so that a resumed run
    gets the same rate."""
    lr = base_lr * rate ** (epoch // decay_epoch) if decay_epoch > 0 else base_lr
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_multiplier"]
    return lr


def poly_max_step(dataset_size: int, batch_size: int, epochs: int, steps_factor: int = 1) -> int:
    """The length of a poly schedule: ``epochs`` x the steps of an epoch at ``batch_size``,
    times ``steps_factor``. The original WSSS code computes it from the per-process batch
    (its global 16 over 4 GPUs) while each step takes the global batch: factor 4, and the
    schedule spans four times the steps taken."""
    return dataset_size * steps_factor // batch_size * epochs


def set_poly_lr(
    optimizer: torch.optim.Optimizer, base_lr: float, step: int, max_step: int, power: float = 0.9
) -> float:
    """lr x (1 - step / max_step) ** power for step ``step`` (counted from 0 over the whole
    run); returns the base group's lr. As the original's poly optimizer, the rate stops
    changing after step max_step - 1. Computed from the step, so a resumed run gets the
    same rates."""
    lr = base_lr * (1 - min(step, max_step - 1) / max_step) ** power
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_multiplier"]
    return lr


# ------------------------------------------------------------------ device, precision
def pick_device(name: str | None = None) -> torch.device:
    """The device asked for, else CUDA when present, else the CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str | None):
    """Mixed precision for the forward pass; ``None`` keeps fp32 (exact reproduction)."""
    if amp is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def memory_format(channels_last: bool) -> torch.memory_format:
    """NHWC when asked (faster convolutions on recent GPUs), else the tensors' own layout;
    for ``module.to(memory_format=...)`` and ``tensor.to(memory_format=...)`` alike."""
    return torch.channels_last if channels_last else torch.preserve_format


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed per epoch: shuffling and augmentation of epoch e do not depend on what ran
    before it, so a run resumed at epoch e repeats the uninterrupted run exactly."""
    return seed * 10_000 + epoch


def keyed_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from ``keys`` alone (e.g. seed, epoch, rank, step): what is
    drawn from it does not depend on what ran before, so a resumed run draws the same."""
    high, low = np.random.SeedSequence([int(key) for key in keys]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(high) << 32 | int(low))


# ---------------------------------------------------------------------------- data
def loader_options(workers: int, device: torch.device) -> dict:
    """DataLoader settings every script uses: worker processes kept alive across epochs,
    pinned memory for a CUDA device."""
    return {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": workers > 0}


class ShuffledShards(torch.utils.data.Sampler):
    """This process's share of each epoch's shuffle, as (index, seed) pairs for
    ``SeededItems``.

    The order and each sample's augmentation depend on (seed, epoch, index) only: a
    resumed run repeats an uninterrupted one, and loader workers can live across epochs
    (``persistent_workers``) with any number of them giving the same batches. Call
    ``set_epoch`` before each epoch.
    """

    def __init__(self, size: int, rank: int = 0, world: int = 1, seed: int = 0) -> None:
        self.order = torch.utils.data.DistributedSampler(range(size), world, rank, shuffle=True, seed=seed)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order.set_epoch(epoch)

    def __iter__(self):
        first = epoch_seed(self.seed, self.epoch) * 10**8  # distinct per sample for datasets under 10^8 images
        return ((index, first + index) for index in self.order)

    def __len__(self) -> int:
        return len(self.order)


class SeededItems(torch.utils.data.Dataset):
    """``dataset[index]`` with torch's random generator seeded by the seed that comes with
    the index (from ``ShuffledShards``), so random transforms do not depend on which
    worker runs them or on what it ran before. The caller's generator state is kept."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


# ------------------------------------------------------------------------ checkpoints
def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save into a temporary file beside ``path``, then rename: a crash never
    leaves a half-written checkpoint under the real name."""

    def write(fd: int) -> None:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)

    replace_atomic(write, path)


# How a file torch.save wrote begins: a zip archive, or (before torch 1.6) the pickled
# magic number torch.load checks first. Any other pickle is not one torch.load can read.
ZIP_HEADER = b"PK\x03\x04"
LEGACY_HEADERS = tuple(
    pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=p) for p in range(2, pickle.HIGHEST_PROTOCOL + 1)
)


def load_torch_file(path: str | Path, what: str) -> dict:
    """The dict a torch.save file holds, loaded safely (tensors and plain containers only).

    Any other file stops with one line, ``<path>: not <what> (<why>)``, why being: an empty
    file, not a PyTorch file, truncated or corrupt, objects other than tensors, not a dict.
    Unsafe loading is never the way out.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")

    def refused(reason: str) -> CheckpointError:
        return CheckpointError(f"{path}: not {what} ({reason})")

    try:
        with path.open("rb") as f:
            head = f.read(64)  # longer than the headers above
    except OSError as error:
        raise refused(f"unreadable: {error.strerror}") from None
    if not head:
        raise refused("empty file")
    if not head.startswith((ZIP_HEADER, b"\x80")):
        raise refused("not a PyTorch file: no zip archive or pickle header")
    if not head.startswith((ZIP_HEADER, *LEGACY_HEADERS)):
        raise refused("not a PyTorch file: a plain pickle, not written by torch.save")
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load fails on a damaged archive or pickle with errors of any kind
        raise refused(_why_unloadable(path, error)) from None
    if not isinstance(contents, dict) or not all(isinstance(k, str) for k in contents):
        raise refused(f"it holds a {type(contents).__name__}, not a state dict")
    return contents


def _why_unloadable(path: Path, error: Exception) -> str:
    """Why torch.load failed on a file that begins as torch.save's files do."""
    if "Weights only load failed" in str(error):
        return "it holds objects other than tensors and plain containers"
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                return "not a PyTorch file: a zip archive without torch.save's data.pkl"
    except (zipfile.BadZipFile, OSError):
        pass  # a legacy pickle, or an archive cut short
    return "truncated or corrupt PyTorch file"


class Checkpoint(dict):
    """A checkpoint's entries, and the file they were read from (``path``): what does not
    fit the model is reported with the file named."""

    def __init__(self, entries: dict, path: Path) -> None:
        super().__init__(entries)
        self.path = path


def read_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint file as a dict, ``{'model': state_dict, ...}`` (a bare state dict is
    wrapped), read by ``load_torch_file``."""
    contents = load_torch_file(path, "a checkpoint of this project or of the original BAS release")
    return Checkpoint(contents if isinstance(contents.get("model"), dict) else {"model": contents}, Path(path))


def load_state_dict_checked(
    model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, what: str = "the model built here"
) -> None:
    """``model.load_state_dict`` that fails with one line naming ``source`` when keys are
    missing, unexpected, of another shape or not tensors (instead of torch's list of every
    mismatch)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    present = [k for k in own if k in state_dict]
    not_tensors = [k for k in present if not isinstance(state_dict[k], torch.Tensor)]
    reshaped = [k for k in present if k not in not_tensors and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    problems = []
    if not_tensors:
        k = not_tensors[0]
        problems.append(f"{len(not_tensors)} of another type (e.g. {k}: {type(state_dict[k]).__name__}, not a tensor)")
    if reshaped:
        k = reshaped[0]
        shapes = f"{tuple(state_dict[k].shape)} in the file, {tuple(own[k].shape)} in the model"
        problems.append(f"{len(reshaped)} tensors of another shape (e.g. {k}: {shapes})")
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if problems:
        raise CheckpointError(f"{source} does not fit {what}: {'; '.join(problems)}")
    model.load_state_dict(state_dict)


# ---------------------------------------------------------------------------- logging
class JsonLines:
    """One JSON object per line (one per epoch). Every write replaces the file atomically with
    its lines so far and the new one, so a crash never leaves half a line for a resumed run
    (or the curves drawn from the log) to trip over."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        before = self.path.read_text() if self.path.exists() else ""
        write_text_atomic(self.path, before + json.dumps(record, default=_jsonable) + "\n")

    def keep(self, predicate) -> None:
        """Drop the records ``predicate`` rejects (e.g. epochs after the one resumed from)."""
        kept = [record for record in self.records() if predicate(record)]
        if not kept and not self.path.exists():
            return
        write_text_atomic(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        records = []
        for lineno, line in enumerate(self.path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise UserError(
                        f"{self.path}, line {lineno}: not a JSON line ({error.msg}); mend or remove it"
                    ) from None
        return records


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.tolist() if getattr(value, "ndim", 0) else value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


class Average:
    """Running mean of a scalar, weighted by the number of samples."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, value: float, n: int = 1) -> None:
        self.total += float(value) * n
        self.count += n

    @property
    def mean(self) -> float:
        return self.total / max(self.count, 1)


# ------------------------------------------------------------------------ distributed
JOIN_TIMEOUT_S = 1800  # torch's own default for gloo: long enough for a slow node to start


def init_distributed(
    device_name: str | None = None, local_rank: int | None = None, timeout: float = JOIN_TIMEOUT_S
) -> tuple[torch.device, int, int]:
    """One code path for 1..N processes: under torchrun (or the legacy launcher, whose
    ``--local-rank`` flag is ``local_rank``) join the process group, nccl on CUDA and
    gloo on the CPU; processes other than rank 0 log warnings only. A process that waits
    ``timeout`` seconds for the others stops with one line. Returns (device, rank, world
    size); a plain ``python train.py`` gets rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return pick_device(device_name), 0, 1
    local_rank = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():  # a pipeline stage calls it again: join once
        join_process_group("nccl" if device.type == "cuda" else "gloo", world, timeout)
    rank = torch.distributed.get_rank()
    if rank > 0:
        logging.getLogger().setLevel(logging.WARNING)
    return device, rank, world


def join_process_group(backend: str, world: int, timeout: float) -> None:
    """``init_process_group`` for the processes RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT
    describe. Under torchrun its agent watches the processes; started by hand, each process
    first checks in with rank 0's store, so that rank 0 can name the ranks that never came."""
    wait = datetime.timedelta(seconds=timeout)
    if "TORCHELASTIC_RUN_ID" in os.environ:
        torch.distributed.init_process_group(backend, timeout=wait)
        return
    rank = int(os.environ.get("RANK", 0))
    address, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", 29500))
    try:
        store = torch.distributed.TCPStore(address, port, world, rank == 0, wait, wait_for_workers=False)
    except torch.distributed.DistError as error:
        raise UserError(
            f"rank {rank} of {world}: no rank 0 at {address}:{port} within {timeout:g} s "
            f"({str(error).splitlines()[0]}); start rank 0 first, or raise --dist-timeout"
        ) from None
    store.set(f"joined/{rank}", "1")
    try:
        store.wait([f"joined/{r}" for r in range(world)], wait)
    except torch.distributed.DistError:
        missing = [r for r in range(world) if not store.check([f"joined/{r}"])]
        raise UserError(
            f"rank {rank} of {world}: rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} did not "
            f"join within {timeout:g} s (--dist-timeout); start every process with the same MASTER_ADDR:MASTER_PORT"
        ) from None
    torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=wait)


def finish_distributed() -> None:
    """Leaves the process group, if this process joined one."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def gather_objects(obj: Any) -> list:
    """Every process's ``obj``, in rank order (just ``[obj]`` in a single process)."""
    if not torch.distributed.is_initialized():
        return [obj]
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def first_on_rank_zero(work: Callable[[], T]) -> T:
    """``work()`` on rank 0, then on the other processes, e.g. building a dataset that
    every process reads: the others find it built. When rank 0 fails with a ``UserError``,
    every process raises it, so that none waits for the others."""
    error = None
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        try:
            result = work()
        except UserError as caught:
            error = caught
    error = gather_objects(error)[0]
    if error is not None:
        raise error
    if torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
        result = work()
    return result


def share_buffers(model: nn.Module, source: int = 0) -> None:
    """Give every process rank ``source``'s buffers (BatchNorm running statistics).

    Without SyncBatchNorm each process's last training batch leaves its own statistics
    (DDP copies rank 0's only at the start of each forward), while rank 0's are the ones
    saved: evaluating with rank 0's on every process scores exactly the saved model.
    """
    if not torch.distributed.is_initialized():
        return
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer, source)
