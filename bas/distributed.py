"""One code path for 1..N processes: joining the process group (torchrun, the legacy
launcher, or processes started by hand), gathering results, work done by rank 0 first, and
the buffers every process must share."""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from bas.devices import pick_device
from bas.errors import UserError

T = TypeVar("T")

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
