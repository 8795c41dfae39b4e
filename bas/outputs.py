"""Where the project may write: never over what a user put on disk.

Every folder the project writes carries a marker file (``.bas-output.json``) that names
its kind of content: a training run, an evaluation, saved maps, a synthetic dataset, a
pipeline stage's outputs. A folder receives outputs only when it is absent, empty, or
marked with that same kind; a whole folder is replaced only when it is marked with that
kind. Anything else stops with an ``OutputError`` that says what was found, before any
work is done. Files are written inside such folders only, so a user's folder handed to
any option by mistake is left byte-identical. One process (or distributed job) writes a
folder at a time: a second one stops with one line (``hold``).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from bas.errors import OutputError

log = logging.getLogger(__name__)

MARKER = ".bas-output.json"
LOCK = ".bas-lock"  # present while a process writes the folder (``hold``)


def read_marker(folder: str | Path) -> dict | None:
    """The marker's content, or None when ``folder`` has no (readable) marker of ours."""
    try:
        content = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) and "kind" in content else None


def _entries(folder: Path) -> list[str]:
    """What ``folder`` holds, less a writer's lock (``hold``) and a marker on its way (the
    temporary file ``replace_atomic`` renames into place, while another process of the same
    run claims the folder): either alone leaves it empty."""
    ours = (LOCK, f".{MARKER}.")
    return sorted(entry.name for entry in folder.iterdir() if not entry.name.startswith(ours))


def _describe(entries: list[str]) -> str:
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    return f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: {shown}"


def _check_can_write(folder: Path) -> None:
    """An ``OutputError`` now, before any work, where writing ``folder`` would fail later: a
    dangling symbolic link, a file on its way, a folder that cannot be written or made."""
    if folder.is_symlink() and not folder.exists():
        raise OutputError(f"{folder} is a symbolic link to {os.readlink(folder)}, which does not exist")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
        if existing.is_symlink() and not existing.exists():
            raise OutputError(f"{folder} cannot be made: {existing} is a symbolic link to a missing folder")
    if not existing.is_dir():
        raise OutputError(f"{folder} cannot be made: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        made = "cannot be written" if existing == folder else f"cannot be made: {existing} is read-only for you"
        raise OutputError(f"{folder} {made}; nothing was written. Choose a folder you can write.")


def check_writable(folder: str | Path, kind: str, hint: str = "") -> Path:
    """Raise an ``OutputError`` unless ``folder`` is absent, an empty folder, or a folder
    marked with ``kind``, and can be written (or made). ``hint`` ends the message (e.g. the
    flag the user probably meant)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder: choose a folder for the outputs")
    if folder.is_dir():
        marker = read_marker(folder)
        if marker is not None and marker["kind"] != kind:
            problem = f"holds a {marker['kind']} written by this project, not a {kind}"
            raise OutputError(f"{folder} {problem}; nothing was written there. {hint}".rstrip())
        entries = _entries(folder)
        if marker is None and entries:
            problem = f"holds files this project did not write ({_describe(entries)})"
            raise OutputError(f"{folder} {problem}; nothing was written there. {hint}".rstrip())
    _check_can_write(folder)
    return folder


def claim(folder: str | Path, kind: str, hint: str = "", **details) -> Path:
    """Check ``folder`` as ``check_writable`` does, create it (with its parents), hold it
    (``hold``) and mark it as holding ``kind``; ``details`` are recorded in the marker.
    Returns the folder."""
    folder = check_writable(folder, kind, hint)
    hold(folder)
    marker = read_marker(folder)
    if marker is None or (details and marker != json.loads(json.dumps({"kind": kind, **details}))):
        write_text_atomic(folder / MARKER, json.dumps({"kind": kind, **details}, sort_keys=True) + "\n")
    return folder


# Folders this process holds (``hold``), each with the first folder the hold made on the way
# to it (itself, a parent, or None when it was there).
_held: dict[str, Path | None] = {}


def _writer() -> dict:
    """Who writes: this process, and the distributed job it belongs to, whose processes
    (torchrun's ranks) write their shares of one folder together."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        names = ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT")
        run, address, port = (os.environ.get(name, "") for name in names)
        job = f"job {run}@{address}:{port}"
    else:
        job = f"process {os.getpid()}"
    return {"job": job, "pid": os.getpid(), "host": socket.gethostname()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def hold(folder: str | Path) -> Path:
    """Make ``folder`` (with its parents) and hold it for this process, or its distributed
    job, until the process ends (``release``): a second writer stops with one line instead
    of interleaving its files with ours. The hold is a lock file, ``LOCK``, naming the
    process; one left by a process that died (kill -9) is taken over. Returns the folder."""
    folder = Path(folder)
    key = os.path.abspath(folder)
    if key in _held:
        return folder
    made = None if folder.exists() else folder  # the first folder the hold makes
    while made is not None and not made.parent.exists():
        made = made.parent
    folder.mkdir(parents=True, exist_ok=True)
    lock, me = folder / LOCK, _writer()
    while True:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{LOCK}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        try:
            os.link(tmp, lock)  # atomic: the lock appears with its content, or not at all
            break
        except FileExistsError:
            holder = _holder(lock)
            if holder.get("job") == me["job"]:
                return folder  # a process of our job holds it; it releases it
            if holder.get("host") == me["host"] and not _alive(holder.get("pid", -1)):
                lock.unlink(missing_ok=True)  # left by a process that is gone
                continue
            raise OutputError(
                f"{folder} is being written by process {holder.get('pid')} on {holder.get('host')}: wait for it to "
                f"finish or choose another folder (if that process is gone, remove {lock})"
            ) from None
        finally:
            os.unlink(tmp)
    if not _held:
        atexit.register(release_all)
    _held[key] = made
    return folder


def _holder(lock: Path) -> dict:
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def release(folder: str | Path) -> None:
    """Give up this process's hold on ``folder``; the folders the hold made and nothing
    filled are removed, so that a run that fails before its first output leaves nothing."""
    folder, key = Path(folder), os.path.abspath(folder)
    if key not in _held:
        return
    made = _held.pop(key)
    lock = folder / LOCK
    if _holder(lock).get("pid") == os.getpid():
        lock.unlink(missing_ok=True)
    for empty in (folder, *folder.parents) if made is not None else ():
        try:
            empty.rmdir()  # only when empty
        except OSError:
            break
        if empty == made:
            break


def release_all() -> None:
    """``release`` every folder this process holds (at exit)."""
    for key in list(_held):
        release(key)


def input_stamp(path: str | Path) -> dict:
    """A file outputs are made from, as a folder's marker records it (``claim``'s details):
    its name, size and time written, so that weights trained again count as other weights,
    while a project folder moved elsewhere (mv, rsync -a, cp -p keep the times) still
    matches its records."""
    path = Path(path)
    status = path.stat()
    return {"name": path.name, "bytes": status.st_size, "written": status.st_mtime_ns}


def differing_record(folder: str | Path, details: dict) -> dict | None:
    """What the marker of ``folder`` records under the keys of ``details``, where that
    differs from ``details`` as a marker holds them (JSON's lists, numbers and strings); None
    when the folder has no marker or records the same. Outputs made otherwise are never
    added to a folder's files: a mixture would pass for one run's."""
    marker = read_marker(folder)
    if marker is None:
        return None
    recorded = {key: marker.get(key) for key in details}
    return None if recorded == json.loads(json.dumps(details, default=str)) else recorded


def recorded_settings(folder: str | Path) -> dict | None:
    """The settings a folder's marker records (``claim``'s ``settings`` detail), if any: what
    a stage reading the folder records in turn, so that outputs name the whole chain of
    settings they come from rather than a folder's path."""
    return (read_marker(folder) or {}).get("settings")


def _files_under(folder: Path) -> list[str]:
    """Every file under ``folder`` but its marker, as sorted relative paths ("a/b.jpg")."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p != folder / MARKER)


def _own_files(folder: Path, kind: str) -> list[str]:
    """The files of an earlier build at ``folder``, as its marker lists them: all that a
    rebuild may remove. Anything else found there (a symbolic link counts as a file, never
    followed) stops with an ``OutputError`` that names it; so does a marker with no list
    (written before markers had one), since the user's files cannot be told from ours."""
    if not folder.exists():
        return []
    marker = read_marker(folder) or {"files": []}  # no marker: check_writable found the folder empty
    if not isinstance(marker.get("files"), list):
        raise OutputError(
            f"{folder} holds a {kind} written before this project listed the files it writes: remove it (rm -r "
            f"{folder}), once anything of yours is moved out of it, to have it written again; nothing was changed"
        )
    listed = set(marker["files"]) | {MARKER}
    folders = {parent.as_posix() for name in listed for parent in Path(name).parents}
    found = []
    for top, subfolders, files in os.walk(folder):  # symbolic links to folders come in subfolders, not followed
        base = Path(top).relative_to(folder)
        for name in list(subfolders):
            path = base / name
            if path.as_posix() not in folders or (Path(top) / name).is_symlink():
                found.append(path.as_posix())
                subfolders.remove(name)  # named as a whole
        found += [(base / name).as_posix() for name in files if (base / name).as_posix() not in listed]
    if found:
        raise OutputError(
            f"{folder} holds files this project did not write ({_describe(sorted(found))}): move them out of the "
            "folder to have it written again; nothing was changed"
        )
    return marker["files"]


def _remove_own(folder: Path, files: list[str]) -> None:
    """Remove the earlier build at ``folder`` (moved aside): its marker, the listed ``files``,
    then the folders they emptied. Anything that appeared between the last check and the move
    stays, with the folder that holds it; a warning names the folder."""
    try:
        for name in [MARKER, *files]:
            (folder / name).unlink(missing_ok=True)
        for top, _, _ in os.walk(folder, topdown=False):
            os.rmdir(top)
        folder.parent.rmdir()  # the temporary folder it was moved into
    except OSError:
        log.warning("kept %s: it holds files that appeared during the rebuild", folder)


def build_folder(folder: str | Path, kind: str, write: Callable[[Path], None], hint: str = "", **details) -> Path:
    """Write a whole folder: ``write(tmp)`` fills a fresh temporary sibling, which is then
    renamed into place, so that an interrupted build never leaves a half-written folder
    under the real name; its folders get the permissions of any folder the process makes
    (0777 less the umask). The marker lists the files written. An existing ``folder`` is
    replaced only when it is empty or marked with ``kind`` (the project's own earlier build)
    and holds nothing but the files its marker lists, checked before the build and again
    right before the swap: only listed files are ever removed (``_remove_own``)."""
    folder = check_writable(folder, kind, hint)
    _own_files(folder, kind)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".partial"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        write(tmp)
        marker = {"kind": kind, **details, "files": _files_under(tmp)}
        write_text_atomic(tmp / MARKER, json.dumps(marker, sort_keys=True) + "\n")
        if folder.exists():
            files = _own_files(folder, kind)  # again: what the user may have put there during the build
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old")) / folder.name
            folder.rename(old)
            tmp.rename(folder)
            _remove_own(old, files)
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
