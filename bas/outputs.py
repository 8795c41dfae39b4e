"""Where the project may write: never over what a user put on disk.

Every folder the project writes carries a marker file (``.bas-output.json``) that names
its kind of content: a training run, an evaluation, saved maps, a synthetic dataset, a
pipeline stage's outputs. A folder receives outputs only when it is absent, empty, or
marked with that same kind; a whole folder is replaced only when it is marked with that
kind. Anything else stops with an ``OutputError`` that says what was found, before any
work is done. Files are written inside such folders only, so a user's folder handed to
any option by mistake is left byte-identical.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from bas.errors import OutputError

MARKER = ".bas-output.json"


def read_marker(folder: str | Path) -> dict | None:
    """The marker's content, or None when ``folder`` has no (readable) marker of ours."""
    try:
        content = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) and "kind" in content else None


def _describe(folder: Path) -> str:
    entries = sorted(entry.name for entry in folder.iterdir())
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    return f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: {shown}"


def check_writable(folder: str | Path, kind: str, hint: str = "") -> Path:
    """Raise an ``OutputError`` unless ``folder`` is absent, an empty folder, or a folder
    marked with ``kind``. ``hint`` ends the message (e.g. the flag the user probably meant)."""
    folder = Path(folder)
    if not folder.exists():
        return folder
    if not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder: choose a folder for the outputs")
    marker = read_marker(folder)
    if marker is not None and marker["kind"] == kind:
        return folder
    if marker is not None:
        problem = f"holds a {marker['kind']} written by this project, not a {kind}"
    elif any(folder.iterdir()):
        problem = f"holds files this project did not write ({_describe(folder)})"
    else:
        return folder
    raise OutputError(f"{folder} {problem}; nothing was written there. {hint}".rstrip())


def claim(folder: str | Path, kind: str, hint: str = "", **details) -> Path:
    """Check ``folder`` as ``check_writable`` does, create it (with its parents) and mark it
    as holding ``kind``; ``details`` are recorded in the marker. Returns the folder."""
    folder = check_writable(folder, kind, hint)
    folder.mkdir(parents=True, exist_ok=True)
    marker = read_marker(folder)
    if marker is None or (details and marker != json.loads(json.dumps({"kind": kind, **details}))):
        write_text_atomic(folder / MARKER, json.dumps({"kind": kind, **details}, sort_keys=True) + "\n")
    return folder


def input_stamp(path: str | Path) -> dict:
    """A file outputs are made from, as a folder's marker records it (``claim``'s details):
    its name, size and time written, so that weights trained again count as other weights,
    while a project folder moved elsewhere (mv, rsync -a, cp -p keep the times) still
    matches its records."""
    path = Path(path)
    status = path.stat()
    return {"name": path.name, "bytes": status.st_size, "written": status.st_mtime_ns}


def recorded_settings(folder: str | Path) -> dict | None:
    """The settings a folder's marker records (``claim``'s ``settings`` detail), if any: what
    a stage reading the folder records in turn, so that outputs name the whole chain of
    settings they come from rather than a folder's path."""
    return (read_marker(folder) or {}).get("settings")


def build_folder(folder: str | Path, kind: str, write: Callable[[Path], None], hint: str = "", **details) -> Path:
    """Write a whole folder: ``write(tmp)`` fills a fresh temporary sibling, which is then
    renamed into place, so that an interrupted build never leaves a half-written folder
    under the real name. An existing ``folder`` is replaced only when it is empty or marked
    with ``kind`` (the project's own earlier build)."""
    folder = check_writable(folder, kind, hint)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".partial"))
    try:
        write(tmp)
        write_text_atomic(tmp / MARKER, json.dumps({"kind": kind, **details}, sort_keys=True) + "\n")
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old"))
            folder.rename(old / folder.name)
            tmp.rename(folder)
            shutil.rmtree(old)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder, made by mkdtemp above
        raise
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_atomic(write: Callable[[int], None], path: str | Path) -> None:
    """``write(fd)`` into a temporary file beside ``path``, then rename it over ``path``: a
    crash never leaves a half-written file under the real name. The file gets the
    permissions of any other file the process creates (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        write(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    def write(fd: int) -> None:
        with os.fdopen(fd, "w") as f:
            f.write(text)

    replace_atomic(write, path)
