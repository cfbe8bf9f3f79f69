"""Where an output may go, and the temporaries beside it: what is at a path (without following a symlink), the
refusal of a target that is not a regular file or a folder, and temporary names that carry their process id so
the ones a killed run left are recognised and removed."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

#: The infix of every temporary name: ``.<name>.tmp-<pid>-<random>``.
TEMP_INFIX = ".tmp-"
#: A temporary entry: the process that made it, when its name records it.
TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)-[^/]*$")
#: Temporary entries of fixed names (a checkpoint being written), stale whenever the folder's lock is free.
FIXED_TEMP_NAME = re.compile(r"^\.step-\d+\.tmp$")


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
