"""The metric log of a run, one JSON line per epoch, and the running means that fill it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bas.errors import UserError
from bas.outputs import write_text_atomic


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
