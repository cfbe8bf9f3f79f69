"""Two poolattn processes on one machine: each one's training-step rate beside the other, as a share of its rate
alone, with the shared thread budget (default) and without it (``POOLATTN_SHARE_THREADS=0``).

    python bench/threads.py                 # a small llama-shaped model, 12 steps per process
    python bench/threads.py --steps 30 --spincount 300000

The workload is a real forward and backward pass (bf16 autocast where it is faster here) whose process calls
:func:`poolattn.threads.apply_budget` before every step, as the trainer does.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

WORKER = r"""
import sys, time
import poolattn.threads as threads
threads.configure_environment()
import torch
from transformers import LlamaConfig, LlamaModel
torch.manual_seed(0)
config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=9,
                     num_key_value_heads=3, vocab_size=2000)
model = LlamaModel(config)
ids = torch.randint(0, 2000, (16, 64))
def step():
    threads.apply_budget()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids).last_hidden_state
    out.float().pow(2).mean().backward()
step()
steps, times = int(sys.argv[1]), []
start = time.perf_counter()
for _ in range(steps):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
times.sort()
print(f"{times[len(times) // 2]:.4f} {torch.get_num_threads()}", flush=True)
"""


def run(n: int, steps: int, env: dict[str, str]) -> list[tuple[float, int]]:
    """Start ``n`` workers at once; each one's median step time and final thread count."""
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(steps)], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    out = []
    for proc in procs:
        text, _ = proc.communicate(timeout=1800)
        if proc.returncode:
            raise SystemExit(f"worker failed with exit code {proc.returncode}")
        seconds, threads = text.split()
        out.append((float(seconds), int(threads)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--spincount", help="GOMP_SPINCOUNT for the workers (default: poolattn's)")
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "POOLATTN_THREADS")}
    if args.spincount:
        base["GOMP_SPINCOUNT"] = args.spincount
    print(f"cores {os.cpu_count()}, affinity {len(os.sched_getaffinity(0))}; median step time of each process")
    for label, extra in (("shared budget", {}), ("no sharing", {"POOLATTN_SHARE_THREADS": "0"})):
        env = {**base, **extra}
        alone = run(1, args.steps, env)[0]
        started = time.perf_counter()
        pair = run(2, args.steps, env)
        shares = [alone[0] / seconds for seconds, _ in pair]
        print(
            f"{label:14s} alone {alone[0]:.3f} s/step ({alone[1]} threads) · two at once "
            + ", ".join(f"{s:.3f} s/step ({t} threads)" for s, t in pair)
            + f" · each keeps {min(shares):.0%}–{max(shares):.0%} of its alone rate"
            + f" ({time.perf_counter() - started:.0f} s)"
        )


if __name__ == "__main__":
    main()
