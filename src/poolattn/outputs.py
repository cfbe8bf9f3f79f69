"""Outputs that never destroy what a user owns.

Every command that writes follows one discipline:

* a file is written only where nothing is, or over a regular file; a FIFO, a device, a symlink or a folder at
  the path is refused (:func:`check_file_target`);
* a folder is written only when it is new (or empty), or holds a marker (:data:`MARKER`) saying the same command
  made it (:func:`claim`); an earlier version's output is recognised by its own files;
* one run at a time per folder: an exclusive lock on :data:`LOCK_FILE` (:func:`locked`); a second run fails at
  once, naming the holder's process id;
* temporary files and folders carry their process id in their name (:func:`make_temp`), so the ones a killed run
  left are recognised and removed when the next run starts (:func:`remove_stale`);
* names that become path components (designs, cells) are plain words (:data:`COMPONENT`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: In a folder a command made: which command, and the top-level entries it wrote.
MARKER = ".poolattn-output.json"
#: The lock a running command holds on its folder (it holds the holder's process id).
LOCK_FILE = ".poolattn.lock"
#: The infix of every temporary name: ``.<name>.tmp-<pid>-<random>``.
TEMP_INFIX = ".tmp-"
#: A temporary entry: the process that made it, when its name records it.
TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)-[^/]*$")
#: Temporary entries of fixed names (a checkpoint being written), stale whenever the folder's lock is free.
FIXED_TEMP_NAME = re.compile(r"^\.step-\d+\.tmp$")
#: What a path component may be: a word of letters, digits, ``_ . + -`` not starting with a dot.
COMPONENT = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]*")
#: Bookkeeping entries that do not make a folder anyone's.
OWN_ENTRIES = {MARKER, LOCK_FILE}


class OutputError(ValueError):
    """An output that cannot be written without destroying something, or a folder another run holds."""


# ============================================================================================ paths
def kind_of(path: Path) -> str | None:
    """What is at ``path`` without following a symlink: ``None`` (nothing), ``file``, ``folder``, ``symlink``,
    ``FIFO``, ``character device``, ``block device`` or ``socket``."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def check_file_target(path: Path) -> None:
    """Refuse a file output path holding anything but a regular file (a symlink is refused too, even to a regular
    file: renaming over it would replace the link, not write where it points)."""
    kind = kind_of(Path(path))
    if kind not in (None, "file"):
        raise OutputError(f"{path} is a {kind}, not a regular file; poolattn writes only to new or regular files")


def check_folder_target(path: Path) -> None:
    """Refuse a folder output path holding anything but a folder (a symlink included)."""
    kind = kind_of(Path(path))
    if kind not in (None, "folder"):
        raise OutputError(f"{path} is a {kind}, not a folder; choose a new folder")


# ============================================================================================ temporaries
def make_temp(target: Path, *, folder: bool = False) -> Path:
    """A new, empty temporary file (or folder) beside ``target``, named after it and this process."""
    target = Path(target)
    prefix = f".{target.name}{TEMP_INFIX}{os.getpid()}-"
    if folder:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
    os.close(fd)
    return Path(name)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(name: str, *, locked: bool) -> bool:
    """Whether an entry named ``name`` is a temporary of a run that is gone: its process is dead, or (``locked``:
    the caller holds the folder's lock, so no other run writes there) it is any poolattn temporary."""
    if FIXED_TEMP_NAME.match(name):
        return locked
    match = TEMP_NAME.match(name)
    return bool(match) and (locked or not pid_alive(int(match.group(1))))


def remove(path: Path) -> None:
    """Delete a file, link or folder tree (never following a link)."""
    if kind_of(path) == "folder":
        shutil.rmtree(path, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)


def remove_stale(folder: Path, *, locked: bool, names: Iterable[str] | None = None) -> list[Path]:
    """Remove the temporaries killed runs left in ``folder`` and its subfolders (only those named after ``names``
    when given); returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    wanted = None if names is None else tuple(f".{n}{TEMP_INFIX}" for n in names)
    removed = []
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            if (wanted is None or name.startswith(wanted)) and is_stale(name, locked=locked):
                remove(Path(root) / name)
                removed.append(Path(root) / name)
        dirs[:] = [d for d in dirs if Path(root, d) not in removed and names is None]
    return removed


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
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise OutputError(
                f"{folder} is in use by another poolattn run (pid {holder}); wait for it or choose another folder"
            ) from None
        pid = f"{os.getpid()}\n".encode()
        if os.pread(fd, 32, 0) != pid:
            os.ftruncate(fd, 0)
            os.pwrite(fd, pid, 0)
        remove_stale(folder, locked=True)
        yield
    finally:
        os.close(fd)  # releases the lock


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
    from .io import write_json_atomic

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
