"""The per-image stages (make_cam, cam_to_ir_label, make_sem_seg_labels, eval_seg) over
several processes: rank 0 claims the output folder before any work (the scoring stages
claim their report's folder so too), each process takes every world-th image whose output
is missing, so a re-run finishes an interrupted one, loads them one at a time through a
loader's worker processes, and the counts of files written are summed over the processes
at the end."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bas.distributed import gather_objects
from bas.errors import OutputError, UserError
from bas.outputs import check_writable, claim, differing_record


def claim_output(folder: Path, kind: str, rank: int, hint: str = "", settings: dict | None = None) -> None:
    """Rank 0 claims ``folder`` for ``kind`` (``bas.outputs.claim``) before any work; when
    it may not, every process stops with its message, so that none waits for the others.
    ``settings``, the choices its per-image files are made with, are recorded in the
    folder's marker: a folder of files made otherwise is refused, since a re-run only adds
    the missing files and would mix the two."""
    error = None
    if settings is not None:  # as the marker will hold them: JSON's lists, numbers and strings
        settings = json.loads(json.dumps(settings, default=str))
    if rank == 0:
        try:
            check_writable(folder, kind, hint)
            recorded = differing_record(folder, {"settings": settings}) if settings is not None else None
            if recorded is not None and recorded["settings"] is not None:  # a marker of none: an older folder
                raise OutputError(
                    f"{folder} holds files made with {recorded['settings']}, not {settings}: remove it or {hint}"
                )
            claim(folder, kind, hint, **({} if settings is None else {"settings": settings}))
        except UserError as caught:
            error = caught
    error = gather_objects(error)[0]
    if error is not None:
        raise error


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
