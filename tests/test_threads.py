"""The thread budget: the cores a process may use, shared between live poolattn processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from poolattn import threads


def test_cgroup_v2_quota(tmp_path):
    (tmp_path / "proc").write_text("0::/job\n")
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_quota(tmp_path, tmp_path / "proc") == 1.5


def test_cgroup_v1_quota_and_no_limit(tmp_path):
    (tmp_path / "proc").write_text("4:cpu,cpuacct:/job\n")
    folder = tmp_path / "cpu,cpuacct" / "job"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("-1\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_quota(tmp_path, tmp_path / "proc") is None
    (folder / "cpu.cfs_quota_us").write_text("300000\n")
    assert threads.cgroup_quota(tmp_path, tmp_path / "proc") == 3.0


def test_usable_cores_obeys_the_environment(monkeypatch):
    cores = len(threads.affinity_cores())
    monkeypatch.delenv("POOLATTN_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.usable_cores() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "999")
    assert threads.usable_cores() <= cores
    monkeypatch.setenv("POOLATTN_THREADS", "7")
    assert threads.usable_cores() == 7  # an explicit budget wins


def test_live_processes_share_the_cores(tmp_path):
    """A second registered process halves the count; a killed one's entry is cleared at the next count."""
    me = threads.LiveProcesses(tmp_path)
    me.register()
    assert me.count_sharing() == 1
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from poolattn.threads import LiveProcesses
                LiveProcesses(Path({str(tmp_path)!r})).register()
                print("ready", flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert me.count_sharing() == 2
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / f"{holder.pid}.lock").exists()  # killed: nobody removed it
    assert me.count_sharing() == 1
    assert not (tmp_path / f"{holder.pid}.lock").exists()
    me.unregister()
    assert list(tmp_path.iterdir()) == []


def test_processes_on_other_cores_do_not_count(tmp_path):
    me = threads.LiveProcesses(tmp_path)
    me.register()
    other = tmp_path / "999999.lock"
    fd = os.open(other, os.O_RDWR | os.O_CREAT)
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by this process: counts as live
    os.write(fd, b"100000,100001")  # CPUs this process cannot use
    try:
        assert me.count_sharing() == 1
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, ",".join(map(str, threads.affinity_cores())).encode())
        assert me.count_sharing() == 2
    finally:
        os.close(fd)
        me.unregister()


@pytest.mark.skipif(len(threads.affinity_cores()) < 2, reason="needs two cores to share")
def test_two_processes_take_one_thread_each(tmp_path):
    """Two poolattn processes started together end with half the cores each; alone, one takes them all."""
    script = textwrap.dedent(
        """
        import sys, time
        import poolattn.threads as threads
        threads.RECOUNT_SECONDS = 0.0
        cores, budgets = threads.usable_cores(), [threads.apply_budget()]
        deadline = time.monotonic() + float(sys.argv[1])
        while time.monotonic() < deadline and min(budgets) == cores:  # until a partner shows up
            time.sleep(0.05)
            budgets.append(threads.apply_budget())
        time.sleep(1.0)  # stay registered while the partner counts
        print(min(budgets), flush=True)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("POOLATTN_SHARE_THREADS", "POOLATTN_THREADS")}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    env.pop("OMP_NUM_THREADS", None)

    def start(seconds: float) -> subprocess.Popen:
        command = [sys.executable, "-c", script, str(seconds)]
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)

    pair = [start(60.0), start(60.0)]
    ends = [int(p.communicate(timeout=120)[0]) for p in pair]
    cores = threads.usable_cores()
    assert ends == [max(1, cores // 2)] * 2
    alone = start(0.5)
    assert int(alone.communicate(timeout=120)[0]) == cores
    assert not list(Path(tmp_path, f"poolattn-{os.getuid()}", "live").iterdir())  # each removed at exit
