"""The per-image stages (make_cam, cam_to_ir_label, make_sem_seg_labels, eval_seg) over
several processes: each process takes every world-th image whose output is missing, so a
re-run finishes an interrupted one, loads them one at a time through a loader's worker
processes, and the counts of files written are summed over the processes at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from tqdm import tqdm

from bas.engine import gather_objects


def my_share(count: int, rank: int, world: int, missing: Callable[[int], bool]) -> list[int]:
    """This process's indices of ``count`` items whose output is ``missing``: sharded
    first, so that a file another process writes meanwhile does not shift the shares."""
    return [index for index in range(rank, count, world) if missing(index)]


def each_item(
    dataset: torch.utils.data.Dataset,
    indices: list[int],
    workers: int,
    desc: str,
    progress: bool,
    pin_memory: bool = False,
) -> Iterator[tuple[int, Any]]:
    """(index, ``dataset[index]``) for each of ``indices``, one item at a time (an image's
    scales differ in size), loaded by ``workers`` processes, under a progress bar."""
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=None, num_workers=workers, pin_memory=pin_memory
    )
    yield from zip(indices, tqdm(loader, total=len(indices), desc=desc, disable=None if progress else True))


def total(count: int) -> int:
    """``count`` summed over the processes; also waits for every process, since the next
    stage reads every file."""
    return sum(gather_objects(count))
