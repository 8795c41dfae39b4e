"""MATLAB (v5) list files, as the Stanford Dogs and Stanford Cars releases give them (read with
scipy), and their entries checked, each error naming the file and the 1-based entry."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bas.data import leaves_folder
from bas.errors import DatasetError


def read_mat(path: Path, names: tuple[str, ...], layout: str) -> list[np.ndarray]:
    """The named variables of a MATLAB (v5) file, each as a 1-D array (MATLAB's N x 1 and 1 x N
    shapes squeezed): cell arrays of strings become object arrays of str, struct arrays become
    structured arrays with one field per struct field."""
    if not path.is_file():
        raise DatasetError(f"{path}: file missing; expected {layout}")
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DatasetError(f"{path}: reading MATLAB files needs scipy (pip install scipy)") from None
    try:
        content = loadmat(path, squeeze_me=True)
    except Exception as error:  # scipy raises many kinds (MatReadError, ValueError, NotImplementedError for v7.3)
        raise DatasetError(f"{path}: not a MATLAB v5 file scipy can read ({error})") from None
    missing = [name for name in names if name not in content]
    if missing:
        raise DatasetError(f"{path}: no variable {', '.join(map(repr, missing))}; expected {layout}")
    return [np.atleast_1d(content[name]) for name in names]


def mat_text(path: Path, entry: int, value, what: str) -> str:
    """One string of a cell array, checked; ``entry`` is 0-based, shown 1-based as MATLAB counts."""
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{path}: entry {entry + 1}: {what} {_mat_shown(value)} is not a name")
    return value


def mat_path(path: Path, entry: int, value, what: str) -> str:
    """A relative path of a cell array, checked to stay inside the folder it names a file of."""
    name = mat_text(path, entry, value, what)
    problem = leaves_folder(name)
    if problem is not None:
        raise DatasetError(f"{path}: entry {entry + 1}: {what} {name!r} {problem}")
    return name


def mat_int(path: Path, entry: int, value, what: str, low: int = 1) -> int:
    """A whole number >= ``low`` (MATLAB stores labels as doubles or small integer types)."""
    number = float(value) if np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype, np.number) else math.nan
    if not number.is_integer() or number < low:
        raise DatasetError(f"{path}: entry {entry + 1}: {what} {_mat_shown(value)} is not an integer >= {low}")
    return int(number)


def _mat_shown(value) -> str:
    value = value.item() if isinstance(value, np.generic) else value
    return f"{value:g}" if isinstance(value, float) else repr(value)
