"""One thread budget per process, shared fairly between the poolattn processes of one machine.

torch's OpenMP threads spin while they wait for work. Two processes that each run one thread per core on the
same cores spin against each other: on 2 cores a training step went from 0.6 s alone to 4.0 s with a second
such process beside it (6.5x, where sharing explains 2x). So every poolattn process that computes

- takes as its budget the cores it may really use: its CPU affinity, its cgroup's CPU quota, and
  ``POOLATTN_THREADS`` or ``OMP_NUM_THREADS`` where set (:func:`usable_cores`);
- registers itself in a folder of live processes (a file it holds locked; a killed process's lock goes with
  it), and divides the budget by the number of live poolattn processes whose cores overlap its own
  (:func:`thread_budget`), re-read at every encode call (:func:`apply_budget`); a training run takes its
  share once, when it starts, and keeps it (its checkpoints record it, so a resumed run computes as the
  uninterrupted one: the number of threads changes the rounding of sums);
- gives torch's intra-op pool, the encode workers and the tokenizers that one number.

``POOLATTN_THREADS`` fixes the budget (no sharing); ``POOLATTN_SHARE_THREADS=0`` keeps the cores' count
without dividing it.
"""

from __future__ import annotations

import atexit
import fcntl
import math
import os
import tempfile
import time
from contextlib import suppress
from pathlib import Path

#: How often (seconds) the live processes are counted again; between counts the last budget is reused.
RECOUNT_SECONDS = 2.0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number > 0 else None


def affinity_cores() -> set[int]:
    """The CPUs this process may run on (all of ``os.cpu_count()`` where affinity is unknown)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def cgroup_quota(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs' worth of time this process's cgroup may use (cgroup v2 ``cpu.max`` or v1 CFS quota), or None."""
    candidates: list[Path] = []
    with suppress(OSError):
        for line in proc_cgroup.read_text().splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3 and (parts[0] == "0" or "cpu" in parts[1].split(",")):
                candidates.append(Path(parts[2].lstrip("/")))
    quotas = []
    for relative in [*candidates, Path("")]:
        for folder in (root / relative, root / "cpu" / relative, root / "cpu,cpuacct" / relative):
            with suppress(OSError, ValueError):
                quota, period = (folder / "cpu.max").read_text().split()[:2]
                if quota != "max":
                    quotas.append(int(quota) / int(period))
            with suppress(OSError, ValueError):
                quota_us = int((folder / "cpu.cfs_quota_us").read_text())
                period_us = int((folder / "cpu.cfs_period_us").read_text())
                if quota_us > 0 and period_us > 0:
                    quotas.append(quota_us / period_us)
    return min(quotas) if quotas else None


def usable_cores() -> int:
    """Threads this process should run: ``POOLATTN_THREADS``, else the least of its affinity, its cgroup quota
    (rounded up) and ``OMP_NUM_THREADS``."""
    fixed = _env_int("POOLATTN_THREADS")
    if fixed:
        return fixed
    cores = len(affinity_cores())
    quota = cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota - 1e-6)))
    omp = _env_int("OMP_NUM_THREADS")
    if omp:
        cores = min(cores, omp)
    return max(1, cores)


def registry_dir() -> Path:
    """The folder of live poolattn processes (one per user, on local storage)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"poolattn-{os.getuid()}" / "live"


class LiveProcesses:
    """This process's entry among the live poolattn processes: ``<pid>.lock``, held under an exclusive lock that
    the kernel drops when the process dies; its text names the CPUs the process may use."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or registry_dir()
        self.handle: int | None = None
        self.pid = -1

    def register(self) -> None:
        if self.handle is not None and self.pid == os.getpid():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()
        path = self.folder / f"{self.pid}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, ",".join(map(str, sorted(affinity_cores()))).encode())
        self.handle = fd
        atexit.register(self.unregister)

    def unregister(self) -> None:
        if self.handle is None or self.pid != os.getpid():  # a forked child does not own its parent's entry
            return
        with suppress(OSError):
            (self.folder / f"{self.pid}.lock").unlink()
        with suppress(OSError):
            os.close(self.handle)
        self.handle = None

    def count_sharing(self) -> int:
        """Live registered processes (this one included) whose CPUs overlap this process's; stale entries of
        killed processes are removed."""
        mine = affinity_cores()
        count = 1
        with suppress(OSError):
            for entry in self.folder.iterdir():
                if entry.suffix != ".lock" or entry.stem == str(self.pid):
                    continue
                try:
                    fd = os.open(entry, os.O_RDONLY)
                except OSError:
                    continue
                try:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    except BlockingIOError:  # held: a live process
                        cores = {int(c) for c in os.read(fd, 65536).decode().split(",") if c.strip().isdigit()}
                        count += bool(not cores or cores & mine)
                    else:  # nobody holds it: its process is gone
                        with suppress(OSError):
                            entry.unlink()
                finally:
                    os.close(fd)
        return count


_live = LiveProcesses()
_last: tuple[float, int] | None = None


def thread_budget(*, register: bool = True) -> int:
    """This process's share of :func:`usable_cores` among the live poolattn processes on the same CPUs."""
    global _last
    cores = usable_cores()
    if _env_int("POOLATTN_THREADS") or os.environ.get("POOLATTN_SHARE_THREADS", "1") == "0":
        return cores
    if _last is not None and time.monotonic() - _last[0] < RECOUNT_SECONDS:
        return max(1, cores // _last[1])
    sharing = 1
    try:
        if register:
            _live.register()
        sharing = _live.count_sharing()
    except OSError:  # no writable runtime folder: fall back to the cores alone
        sharing = 1
    _last = (time.monotonic(), sharing)
    return max(1, cores // sharing)


def apply_budget() -> int:
    """Set torch's intra-op threads to :func:`thread_budget` (when it changed) and return it."""
    import torch

    budget = thread_budget()
    if torch.get_num_threads() != budget:
        torch.set_num_threads(budget)
    return budget


def pin_threads(n: int) -> None:
    """Run torch's intra-op pool on ``n`` threads (a training run keeps the count it started with)."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def configure_environment() -> None:
    """Before torch and tokenizers load: bound OpenMP's spinning and the tokenizers' pool by the budget. Values
    the user set are kept."""
    cores = usable_cores()
    os.environ.setdefault("RAYON_NUM_THREADS", str(cores))
    if "OMP_WAIT_POLICY" not in os.environ:
        # a waiting OpenMP thread spins this many times before it sleeps (libgomp's default: 300,000)
        os.environ.setdefault("GOMP_SPINCOUNT", "10000")
