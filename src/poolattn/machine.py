"""What this machine is and how fast it computes: CPU flags, measured matmul rates, the precision that pays, and
the environment (versions, hardware, command line) a result was made in.

bfloat16 pays on a CPU only where its matrix products really run faster than float32's: several times on a
CPU with AMX, about as fast (autocast's casts then make it slower) on many CPUs whose flags still say
``avx512_bf16``. So ``precision = "auto"`` and ``mixed_precision = "auto"`` choose by a measured matmul rate
(:func:`bf16_pays`), not by a flag. ``ONEDNN_MAX_CPU_ISA`` (e.g. ``AVX512_CORE_BF16``) caps oneDNN's
instruction set, so a machine with AMX can be measured as one without; the rates record it.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from contextlib import suppress
from functools import lru_cache
from pathlib import Path
from typing import Any

from .io import package_versions, write_json_atomic

#: CPU flags that decide how fast embedding models run.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
#: bfloat16 autocast must beat float32 matmuls by this factor to be chosen (its casts cost the rest).
BF16_MARGIN = 1.3
#: The shape of the measured product: a batch of 1,024 token vectors through a SmolLM2-sized MLP weight.
MATMUL_SHAPE = (1024, 576, 1536)


def cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where unknown)."""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def speed_flags() -> list[str]:
    flags = cpu_flags()
    return [flag for flag in SPEED_FLAGS if flag in flags]


def _rate(dtype: Any, threads: int, seconds: float = 0.15) -> float:
    """GFLOP/s of :data:`MATMUL_SHAPE` products in ``dtype`` on ``threads`` intra-op threads."""
    import torch

    m, k, n = MATMUL_SHAPE
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator).to(dtype)
    b = torch.randn(k, n, generator=generator).to(dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(2):
                a @ b
            best, deadline = float("inf"), time.perf_counter() + seconds
            while True:
                start = time.perf_counter()
                a @ b
                best = min(best, time.perf_counter() - start)
                if time.perf_counter() > deadline:
                    break
    finally:
        torch.set_num_threads(previous)
    return 2 * m * k * n / best / 1e9


def _cache_file() -> Path:
    from .assets import cache_dir

    return cache_dir() / "machine" / "matmul.json"


def _cache_key(threads: int) -> str:
    import torch

    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    return "|".join([cpu_model(), ",".join(speed_flags()), torch.__version__, str(threads), isa])


@lru_cache(maxsize=8)
def matmul_rates(threads: int | None = None) -> dict[str, float]:
    """Measured float32 and bfloat16 matmul GFLOP/s on ``threads`` (default: torch's) intra-op threads; kept on
    disk per CPU, flags, torch version, threads and ``ONEDNN_MAX_CPU_ISA`` (about 0.3 s the first time)."""
    import torch

    threads = threads or torch.get_num_threads()
    key = _cache_key(threads)
    path = _cache_file()
    stored: dict[str, Any] = {}
    with suppress(OSError, ValueError):
        stored = json.loads(path.read_text())
        if isinstance(stored.get(key), dict):
            return dict(stored[key])
    rates = {"fp32": round(_rate(torch.float32, threads), 1), "bf16": round(_rate(torch.bfloat16, threads), 1)}
    with suppress(OSError, ValueError, TypeError):
        stored = stored if isinstance(stored, dict) else {}
        write_json_atomic(path, {**stored, key: rates})
    return rates


def bf16_pays(device: Any = "cpu") -> bool:
    """Whether bfloat16 autocast is the faster choice on ``device``: on CUDA where the device supports it, on a
    CPU where measured bfloat16 matmuls beat float32 ones by :data:`BF16_MARGIN`."""
    import torch

    kind = torch.device(device).type if not isinstance(device, torch.device) else device.type
    if kind == "cuda" or (kind != "cpu" and torch.cuda.is_available()):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind != "cpu":
        return False
    rates = matmul_rates()
    return rates["bf16"] >= BF16_MARGIN * rates["fp32"]


def describe() -> dict[str, Any]:
    """This machine for a report or a log line: CPU, flags, the cores this process may use, its thread budget and
    the measured matmul rates."""
    import torch

    from .threads import thread_budget, usable_cores

    return {
        "cpu": cpu_model(),
        "cpu_flags": speed_flags(),
        "amx": "amx_bf16" in cpu_flags(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "usable_cores": usable_cores(),
        "thread_budget": thread_budget(register=False),
        "matmul_gflops": matmul_rates(torch.get_num_threads()),
        "bf16_pays": bf16_pays("cpu"),
    }


def summary_line(info: dict[str, Any] | None = None) -> str:
    """One line: ``AMD EPYC · 2 cores (budget 2) · avx512_bf16, no AMX · matmul fp32 45 / bf16 125 GFLOP/s → bf16``."""
    info = info or describe()
    rates = info["matmul_gflops"]
    bf16_flag = "avx512_bf16" if "avx512_bf16" in info["cpu_flags"] else "no avx512_bf16"
    cap = f" (oneDNN capped at {info['onednn_max_cpu_isa']})" if info.get("onednn_max_cpu_isa") else ""
    return (
        f"{info['cpu']} · {info['usable_cores']} cores (thread budget {info['thread_budget']}) · {bf16_flag}, "
        f"{'AMX' if info['amx'] else 'no AMX'}{cap} · matmul fp32 {rates['fp32']:.0f} / bf16 {rates['bf16']:.0f} "
        f"GFLOP/s → {'bf16' if info['bf16_pays'] else 'fp32'}"
    )


def environment() -> dict[str, Any]:
    """Versions, hardware (CPU flags, usable cores, thread budget, measured matmul rates) and command line, so
    anyone can rerun what produced a result and see what it ran on."""
    import torch

    machine = describe()
    memory = None
    with suppress(OSError, ValueError, AttributeError):
        memory = int(re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text()).group(1)) * 1024
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "versions": {"python": platform.python_version(), **package_versions()},
        "hardware": {
            "platform": platform.platform(),
            "cpu_cores": os.cpu_count(),
            **machine,
            "torch_threads": torch.get_num_threads(),
            "memory_bytes": memory,
            "gpus": gpus,
        },
        "command": " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv)),
    }
