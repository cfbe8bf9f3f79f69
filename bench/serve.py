"""Serving throughput and latency: `poolattn serve` on the embedded SmolLM2-135M against offline `encode`.

The server runs in its own process (``python -m poolattn serve``, eos pooling, ``--precision``) on 127.0.0.1;
this process runs the clients: at each concurrency level, N asyncio clients (httpx) share the same
``--texts`` short questions (TREC), ``--per-request`` texts per request, base64 vectors (the openai client's
default), each client sending its next request when the last is answered. Before each level, offline
``encode`` embeds the same texts in one call, in this process, while the server idles; the level's share is
its texts/s over that pass's (next to each other: on a shared machine the speed drifts). Latency is per
request, measured by the client. The server's peak memory is its resident-set high-water mark (VmHWM). Every
level's vectors are checked against offline's (cosine). The benchmark sends a bounded number of requests and
stops the server (SIGTERM) at the end.

    python bench/serve.py [--clients 1,8,32] [--texts 512] [--per-request 8] [--precision auto] [--max-wait-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from poolattn import EmbeddingModel, assets
from poolattn.backbone import autocast_precision, resolve_precision
from poolattn.corpora import trec_questions


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(path: str, port: int, precision: str, max_wait_ms: float) -> subprocess.Popen:
    """``poolattn serve`` in a subprocess; returns once /health answers."""
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = ["serve", path, "--port", str(port), "--precision", precision, "--max-wait-ms", str(max_wait_ms)]
    proc = subprocess.Popen([sys.executable, "-m", "poolattn", *args], env=env)
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the server did not start")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)


async def run_level(url: str, requests: list[list[str]], clients: int) -> tuple[float, list[float], int, list]:
    """Send ``requests`` from ``clients`` concurrent clients: wall seconds, latencies, errors, vectors."""
    todo = iter(range(len(requests)))
    latencies: list[float] = []
    results: list[np.ndarray | None] = [None] * len(requests)
    errors = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        for index in todo:
            start = time.perf_counter()
            try:
                response = await http.post(
                    "/v1/embeddings", json={"input": requests[index], "encoding_format": "base64"}
                )
                response.raise_for_status()
            except httpx.HTTPError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)
            data = response.json()["data"]
            results[index] = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return time.perf_counter() - start, latencies, errors, results


def min_cosine(results: list, reference: np.ndarray, per_request: int) -> float:
    """The lowest cosine of a served vector to the offline one of the same text."""
    cosines = (
        float((r * reference[i * per_request : i * per_request + len(r)]).sum(axis=1).min())
        for i, r in enumerate(results)
        if r is not None
    )
    return min(cosines, default=float("nan"))


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,8,32", help="comma-separated concurrency levels")
    parser.add_argument("--texts", type=int, default=512, help="texts sent at each level (TREC questions)")
    parser.add_argument("--per-request", type=int, default=8, help="texts per request")
    parser.add_argument("--precision", default="auto", help="auto | fp32 | bf16, for the server and offline")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the server's batching wait")
    args = parser.parse_args()

    path = str(assets.model_path("smollm2"))
    texts = [q.text for q in trec_questions()][: args.texts]
    requests = [texts[i : i + args.per_request] for i in range(0, len(texts), args.per_request)]
    precision = resolve_precision(args.precision)
    model = EmbeddingModel.from_backbone(path, pooling="eos")

    def offline() -> tuple[float, np.ndarray]:
        with autocast_precision(precision, "cpu"):
            model.encode(texts[:32], show_progress=False)  # warm-up
            start = time.perf_counter()
            vectors = model.encode(texts, show_progress=False)
        return len(texts) / (time.perf_counter() - start), vectors

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(path, port, precision, args.max_wait_ms)
    try:
        asyncio.run(run_level(url, requests[:4], 2))  # warm-up
        rows = []
        for clients in (int(c) for c in args.clients.split(",")):
            offline_rate, reference = offline()  # next to the level: the machine's speed drifts
            seconds, latencies, errors, results = asyncio.run(run_level(url, requests, clients))
            answered = sum(len(r) for r in results if r is not None)
            cosine = min_cosine(results, reference, args.per_request)
            rows.append(
                (clients, len(latencies) / seconds, answered / seconds, offline_rate, latencies, errors, cosine)
            )
        peak = peak_rss_mb(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    print(f"\nSmolLM2-135M, eos pooling, {precision}; {len(texts)} TREC questions, {args.per_request} per request, "
          f"base64; max wait {args.max_wait_ms:g} ms; {os.cpu_count()} CPUs")  # fmt: skip
    print(f"server peak memory (VmHWM): {peak:.0f} MB\n")
    print("| clients | requests/s | texts/s | offline texts/s | share | p50 ms | p99 ms | errors | min cosine |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for clients, rps, tps, offline_rate, latencies, errors, cosine in rows:
        p50, p99 = (np.percentile(latencies, q) * 1000 for q in (50, 99))
        print(f"| {clients} | {rps:.1f} | {tps:.1f} | {offline_rate:.1f} | {tps / offline_rate:.2f} | {p50:.0f} "
              f"| {p99:.0f} | {errors} | {cosine:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
