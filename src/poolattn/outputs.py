"""Outputs that never destroy what a user owns.

Every command that writes follows one discipline:

* a file is written only where nothing is, or over a regular file; a FIFO, a device, a symlink or a folder at
  the path is refused (:func:`~poolattn.targets.check_file_target`);
* a folder is written only when it is new (or empty), or holds a marker (:data:`MARKER`) saying the same command
  made it (:func:`claim`); an earlier version's output is recognised by its own files;
* one run at a time per folder: an exclusive lock on :data:`LOCK_FILE` (:func:`locked`); a second run fails at
  once, naming the holder's process id;
* temporary files and folders carry their process id in their name (:func:`~poolattn.targets.make_temp`), so the
  ones a killed run left are recognised and removed when the next run starts
  (:func:`~poolattn.targets.remove_stale`);
* names that become path components (designs, cells) are plain words (:data:`COMPONENT`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .io import write_json_atomic
from .targets import TEMP_NAME, OutputError, check_folder_target, kind_of, make_temp, remove, remove_stale

#: In a folder a command made: which command, and the top-level entries it wrote.
MARKER = ".poolattn-output.json"
#: The lock a running command holds on its folder (it holds the holder's process id).
LOCK_FILE = ".poolattn.lock"
#: What a path component may be: a word of letters, digits, ``_ . + -`` not starting with a dot.
COMPONENT = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]*")
#: Bookkeeping entries that do not make a folder anyone's.
OWN_ENTRIES = {MARKER, LOCK_FILE}


# ============================================================================================ locks
@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) while the block runs; another holder makes this
    fail at once with an :class:`OutputError` naming its process id. Stale temporaries are removed once held."""
    folder = Path(folder)
    check_folder_target(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"{folder} is in use by another poolattn run (pid {lock_holder(fd)}); wait for it or choose another "
                "folder"
            ) from None
        pid = f"{os.getpid()}\n".encode()
        if os.pread(fd, 32, 0) != pid:
            os.ftruncate(fd, 0)
            os.pwrite(fd, pid, 0)
        remove_stale(folder, locked=True)
        yield
    finally:
        os.close(fd)  # releases the lock


def lock_holder(fd: int, wait: float = 1.0) -> str:
    """The process id the lock's holder wrote; one that has only just taken the lock (its file still empty) gets
    ``wait`` seconds to write it."""
    deadline = time.monotonic() + wait
    while True:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if holder or time.monotonic() > deadline:
            return holder or "unknown"
        time.sleep(0.01)


# ============================================================================================ ownership
def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_marker(folder: Path, command: str, files: Sequence[str] | None = None) -> None:
    payload: dict[str, Any] = {"command": command}
    if files is not None:
        payload["files"] = sorted(files)
    write_json_atomic(Path(folder) / MARKER, payload)


def user_entries(folder: Path) -> list[str]:
    """The entries of ``folder`` other than poolattn's bookkeeping and temporaries."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name not in OWN_ENTRIES and not TEMP_NAME.match(p.name))


def claim(folder: Path, command: str, *, recognise: Sequence[str] = (), mark: bool = True) -> None:
    """Make ``folder`` the output of ``command`` (``train``, ``adapt``...), or refuse with an :class:`OutputError`.

    Accepted: a missing or empty folder (created, marked), one marked by ``command``, and one holding any of
    ``recognise`` (glob patterns of the files an earlier version of ``command`` wrote; it is marked now).
    ``mark=False`` only checks, creating and writing nothing."""
    folder = Path(folder)
    check_folder_target(folder)
    marker = read_marker(folder)
    if marker is not None:
        if marker.get("command") == command:
            return
        raise OutputError(
            f"{folder} was written by poolattn {marker.get('command')}, not {command}; choose another folder"
        )
    if folder.is_dir():
        entries = user_entries(folder)
        if entries and not any(next(folder.glob(pattern), None) for pattern in recognise):
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise OutputError(
                f"{folder} already holds files poolattn {command} did not write ({shown}); choose a new folder"
            )
    if mark:
        folder.mkdir(parents=True, exist_ok=True)
        write_marker(folder, command)


@contextmanager
def owned_run(folder: Path, command: str, *, recognise: Sequence[str] = ()) -> Iterator[None]:
    """Run the block as ``command``'s run in ``folder``: refused (nothing written) unless :func:`claim` accepts it,
    then locked (:func:`locked`, stale temporaries removed) and marked."""
    claim(folder, command, recognise=recognise, mark=False)
    with locked(folder):
        claim(folder, command, recognise=recognise)
        yield


def install(source: Path, folder: Path, command: str) -> None:
    """Move every entry of the finished folder ``source`` into ``folder`` (marked as ``command``'s, with the list
    of its entries), replacing only what ``command`` wrote there before and removing those of its entries the new
    output lacks; anything else in ``folder`` stays. ``source`` is removed."""
    folder = Path(folder)
    marker = read_marker(folder) or {}
    owned = set(marker.get("files") or []) if marker.get("command") == command else set()
    new = sorted(p.name for p in Path(source).iterdir())
    if clash := [n for n in new if n not in owned and kind_of(folder / n) is not None]:
        raise OutputError(f"{folder / clash[0]} was not written by poolattn {command}; it is left as it is")
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(owned - set(new)):
        remove(folder / name)
    for name in sorted(new, key=lambda n: n == "config.json"):  # a model folder's config.json last
        target = folder / name
        if kind_of(target) == "folder":
            old = make_temp(target, folder=True)
            os.replace(target, old)
            os.replace(Path(source) / name, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(Path(source) / name, target)
    write_marker(folder, command, new)
    shutil.rmtree(source, ignore_errors=True)


# ============================================================================================ space
def check_free_space(path: Path, needed: int, what: str = "the output") -> None:
    """Refuse, up front, to write ``needed`` bytes under ``path``'s nearest existing folder when it has less free."""
    existing = next((p for p in (Path(path), *Path(path).parents) if p.is_dir()), Path("."))
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise OutputError(
            f"{existing}: not enough free space for {what} ({needed / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free)"
        )


def save_failure(err: Exception, path: Path) -> str:
    """One line for a failed save of ``path`` by any library: which path is full on a full disk, else the error."""
    if isinstance(err, OSError):
        return write_error(err, path)
    full = "No space left" in str(err) or "os error 28" in str(err)
    return f"{path}: {'no space left on the device' if full else f'could not be saved ({err})'}"


def write_error(err: OSError, path: Path) -> str:
    """One line for a failed write of ``path``: which path is full on a full disk or quota, else the error."""
    where = getattr(err, "filename", None) or path
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}: no space left on the device (writing {path})"
    return f"{where}: {err.strerror or err} (writing {path})"


def replace_dir(src: Path, target: Path) -> None:
    """Move a finished folder into place; an existing target is swapped out only after the new one is complete
    (a target that is not a folder, a symlink included, is refused)."""
    check_folder_target(target)
    if target.exists():
        old = make_temp(target, folder=True)  # unique to this run
        os.replace(target, old)
        os.replace(src, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, target)
