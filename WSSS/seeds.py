"""The seed file format: one file per image holding its class keys and their maps.

Ours is ``<id>.npz``, written by ``np.savez``: plain arrays, ``keys`` (K class indices,
0-based, int64), ``cam`` (K x h4 x w4, stride 4) and ``high_res`` (K x H x W), float32;
uncompressed (zlib made a make_cam seed 17% smaller but its writing 18 times slower).
Reading it runs no code.

The original's is ``<id>.npy``: ``np.save`` of the dict ``{"keys", "cam", "high_res"}``, a
pickle whose values are numpy arrays or CPU torch tensors. A pickle can call anything it
names, so it is rebuilt by an unpickler that admits only what such a dict needs: numpy's
array and dtype, torch's tensor rebuild, an empty OrderedDict of hooks; a tensor's storage
is itself a pickle, read by torch's weights-only unpickler. Any other name stops the read.

A folder may hold either format; ``<id>.npz`` is read first.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npy_format

from bas.errors import DatasetError
from bas.outputs import replace_atomic

SUFFIX = ".npz"
ORIGINAL_SUFFIX = ".npy"
DTYPES = {"keys": np.int64, "cam": np.float32, "high_res": np.float32}
HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
REBUILD_ARRAY = np.empty(0).__reduce__()[0]  # numpy's _reconstruct, wherever this numpy keeps it


def seed_path(folder: str | Path, image_id: str) -> Path:
    """The seed file of ``image_id`` in ``folder``: ``<id>.npz``, else the original's
    ``<id>.npy`` when only that exists; ``<id>.npz`` (where make_cam writes it) when neither does."""
    ours, original = Path(folder) / f"{image_id}{SUFFIX}", Path(folder) / f"{image_id}{ORIGINAL_SUFFIX}"
    return original if not ours.exists() and original.exists() else ours


def write_seed(folder: str | Path, image_id: str, seed: Mapping[str, np.ndarray]) -> None:
    """``<folder>/<id>.npz`` of ``seed``'s keys, cam and high_res, written then renamed."""
    arrays = {name: np.ascontiguousarray(seed[name], dtype) for name, dtype in DTYPES.items()}

    def write(fd: int) -> None:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)

    replace_atomic(write, Path(folder) / f"{image_id}{SUFFIX}")


def read_seed(path: str | Path, maps: str = "high_res") -> tuple[np.ndarray, np.ndarray]:
    """The class keys (K, 0-based) and the ``maps`` of a seed file, ours (.npz) or the
    original's (.npy): "high_res" (K x H x W, the full-size maps) or "cam" (K x h x w, stride 4)."""
    path = Path(path)
    try:
        seed = read_arrays(path) if path.suffix == SUFFIX else read_pickled(path)
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: no seed for this id; make the seeds first (stage make_cam) or point --cam_out_dir at them"
        ) from None
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DatasetError(f"{path}: not a seed file ({error})") from None
    if not isinstance(seed, dict) or not {"keys", maps} <= seed.keys():
        found = sorted(seed) if isinstance(seed, dict) else type(seed).__name__
        raise DatasetError(f"{path}: a seed is a dict with 'keys' and {maps!r}; found {found}")
    return as_array(seed["keys"]).reshape(-1).astype(np.int64), as_array(seed[maps])


def as_array(value: object) -> np.ndarray:
    return value.detach().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def read_arrays(path: Path) -> object:
    """The arrays of an .npz file by name (an .npy file's one array), no pickle allowed."""
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        return loaded
    with loaded:
        return dict(loaded)


def read_pickled(path: Path) -> object:
    """What ``np.save`` pickled into an .npy file (the original's seed dict), rebuilt by
    ``SeedUnpickler``; the header is numpy's, read by numpy's own functions."""
    with open(path, "rb") as f:
        version = npy_format.read_magic(f)
        if version not in HEADER_READERS:
            raise DatasetError(f"{path}: .npy format {version[0]}.{version[1]}; np.save writes a seed in 1.0 or 2.0")
        shape, _, dtype = HEADER_READERS[version](f)
        if not dtype.hasobject:
            raise DatasetError(f"{path}: an array of {dtype} {shape}, not a seed (the original's pickled dict)")
        try:
            value = SeedUnpickler(f, path).load()
        except DatasetError:
            raise
        except Exception as error:  # a crafted pickle fails in whatever its admitted calls raise
            raise DatasetError(f"{path}: not a seed file ({type(error).__name__}: {error})") from None
    return value[()] if isinstance(value, np.ndarray) and value.shape == () else value


class SeedUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and CPU torch tensors, and refuses every other global a pickle
    names: a pickle calls the globals it names, so only harmless ones may be found."""

    def __init__(self, file: io.BufferedReader, path: Path):
        super().__init__(file)
        self.path = path
        self.admitted = {
            ("numpy.core.multiarray", "_reconstruct"): REBUILD_ARRAY,  # as numpy 1 names it
            ("numpy._core.multiarray", "_reconstruct"): REBUILD_ARRAY,  # as numpy 2 does
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
            ("torch.storage", "_load_from_bytes"): self.load_storage,
            ("collections", "OrderedDict"): collections.OrderedDict,  # a tensor's (empty) backward hooks
        }

    def find_class(self, module: str, name: str) -> object:
        found = self.admitted.get((module, name))
        if found is None:
            raise DatasetError(
                f"{self.path}: refused {module}.{name} in its pickle; a seed holds only numpy arrays and torch tensors"
            )
        return found

    def load_storage(self, data: bytes) -> torch.storage.TypedStorage:
        """A tensor's storage from the bytes ``torch.save`` made of it, which are a pickle
        too: read by torch's weights-only unpickler onto the CPU."""
        try:
            storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise DatasetError(f"{self.path}: refused a tensor storage whose pickle holds more than data") from None
        if not isinstance(storage, torch.storage.TypedStorage):
            raise DatasetError(f"{self.path}: a tensor's storage holds a {type(storage).__name__}")
        return storage
