"""Checkpoint files: written atomically, read safely (tensors and plain containers only),
and loaded into a model with one line naming the file when it does not fit.

``save_atomic`` stays here, beside its reader, rather than with the other atomic writers of
``bas.outputs``: it is the one writer that needs torch, which ``bas.outputs`` does not import."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bas.errors import CheckpointError
from bas.outputs import replace_atomic


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


def load_torch_file(path: str | Path, what: str, mmap: bool = False) -> dict:
    """The dict a torch.save file holds, loaded safely (tensors and plain containers only).
    ``mmap``: a zip-format file's tensors stay in the file until used, so that a large file
    of which little is needed is never read whole.

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
        contents = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and head.startswith(ZIP_HEADER))
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
