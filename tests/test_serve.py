"""`poolattn serve`: a real uvicorn server on 127.0.0.1, queried with the openai client and httpx."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from openai import OpenAI
from typer.testing import CliRunner

from poolattn import EmbeddingModel
from poolattn.cli import app as cli_app
from poolattn.pooling import POOLERS
from poolattn.serve import ServeSettings, create_app

TEXTS = ["hi", "The quick brown fox jumps over the lazy dog.", "a b", "Pooling and attention decide a lot."]
INSTRUCTION = "Retrieve semantically similar text."
SMALL = ServeSettings(precision="fp32", max_inputs=16, max_text_chars=200, max_body_bytes=4096, max_queue_texts=64)


@contextmanager
def serving(model: EmbeddingModel, settings: ServeSettings = SMALL) -> Iterator[str]:
    """A uvicorn server for ``model`` in a thread, on a free loopback port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(model, settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def vectors(response) -> np.ndarray:
    return np.array([item.embedding for item in response.data], dtype=np.float32)


def metric(url: str, name: str) -> float:
    """One sample of the server's /metrics."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise KeyError(name)


@pytest.fixture(scope="module")
def build(tiny_factory):
    def make(pooling: str = "eos", attention: str = "causal") -> EmbeddingModel:
        return EmbeddingModel.from_backbone(tiny_factory("llama"), attention=attention, pooling=pooling)

    return make


@pytest.fixture(scope="module")
def server(build) -> Iterator[tuple[str, EmbeddingModel]]:
    model = build("mean", "bidirectional")
    with serving(model) as url:
        yield url, model


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("pooling", sorted(POOLERS))
def test_vectors_equal_encode_for_every_design(build, pooling, attention):
    model = build(pooling, attention)
    plain, instructed = model.encode(TEXTS), model.encode(TEXTS, instruction=INSTRUCTION)
    with serving(model) as url:
        c = client(url)
        as_base64 = c.embeddings.create(input=TEXTS, model="any")  # the client asks for base64 and decodes it
        as_float = c.embeddings.create(input=TEXTS, model="any", encoding_format="float")
        with_instruction = c.embeddings.create(input=TEXTS, model="any", extra_body={"instruction": INSTRUCTION})
    np.testing.assert_allclose(vectors(as_base64), plain, rtol=0, atol=1e-4)
    np.testing.assert_allclose(vectors(as_float), plain, rtol=0, atol=1e-4)
    np.testing.assert_allclose(vectors(with_instruction), instructed, rtol=0, atol=1e-4)
    assert [item.index for item in as_float.data] == list(range(len(TEXTS)))
    assert as_float.model == model.name


def test_base64_usage_dimensions_and_empty_text(server):
    url, model = server
    texts = [*TEXTS, ""]
    expected = model.encode(texts)
    raw = httpx.post(f"{url}/v1/embeddings", json={"input": texts, "encoding_format": "base64"}).json()
    decoded = np.stack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in raw["data"]])
    np.testing.assert_allclose(decoded, expected, rtol=0, atol=1e-4)
    tokens = sum(len(item.ids) for item in model.tokenize_texts(texts))
    assert raw["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}

    short = client(url).embeddings.create(input=texts, model="any", dimensions=8)
    cut = expected[:, :8] / np.linalg.norm(expected[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(vectors(short), cut, rtol=0, atol=1e-4)
    one = client(url).embeddings.create(input="hi", model="any", encoding_format="float")
    np.testing.assert_allclose(vectors(one), model.encode(["hi"]), rtol=0, atol=1e-4)


def test_health_models_and_metrics(server):
    url, model = server
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    card = client(url).models.list().data[0]
    assert card.id == model.name and card.owned_by == "poolattn"
    httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS})
    text = httpx.get(f"{url}/metrics").text
    names = ["requests_total", "batch_texts_bucket", "queue_texts", "request_latency_seconds_bucket", "tokens_total"]
    for name in names:
        assert f"poolattn_{name}" in text, name
    assert metric(url, "poolattn_tokens_per_second") > 0


BAD_INPUTS = [
    (b"{not json", 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "must be a JSON object, not a list"),
    ({"model": "m"}, 400, "input", "'input' is required"),
    ({"input": 5}, 400, "input", "a string or a list of strings, not a number"),
    ({"input": None}, 400, "input", "a string or a list of strings, not null"),
    ({"input": []}, 400, "input", "must not be an empty list"),
    ({"input": ["ok", 3]}, 400, "input", "'input[1]' must be a string, not a number"),
    ({"input": [[1, 2, 3]]}, 400, "input", "token arrays are not supported"),
    ({"input": "x" * 201}, 400, "input", "201 characters; at most 200"),
    ({"input": ["a"] * 17}, 400, "input", "17 texts; at most 16"),
    ({"input": "a", "encoding_format": "xml"}, 400, "encoding_format", "'float' or 'base64'"),
    ({"input": "a", "dimensions": 0}, 400, "dimensions", "from 1 to 32"),
    ({"input": "a", "dimensions": 33}, 400, "dimensions", "from 1 to 32"),
    ({"input": "a", "dimensions": "8"}, 400, "dimensions", "from 1 to 32"),
    ({"input": "a", "dimensions": True}, 400, "dimensions", "from 1 to 32"),
    ({"input": "a", "instruction": 3}, 400, "instruction", "'instruction' must be a string"),
    ({"input": "a", "model": ["m"]}, 400, "model", "'model' must be a string, not a list"),
    ({"input": "a", "user": "x" * 5000}, 413, None, "at most 4096"),
]


@pytest.mark.parametrize(("body", "status", "param", "message"), BAD_INPUTS)
def test_bad_input_is_a_4xx_naming_the_field(server, body, status, param, message):
    url, _ = server
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{url}/v1/embeddings", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"], error
    assert error["type"] == "invalid_request_error"
    assert httpx.post(f"{url}/v1/embeddings", json={"input": "still serving"}).status_code == 200


def test_unknown_routes_answer_json_errors(server):
    url, _ = server
    assert httpx.get(f"{url}/v1/embeddings").status_code == 405
    missing = httpx.get(f"{url}/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "Not Found"


def test_64_concurrent_requests_are_answered_and_batched(build):
    model = build("latent", "bidirectional")
    texts = [f"request {i}: " + " ".join(["word"] * (i % 7)) for i in range(64)]
    expected = model.encode(texts)

    async def ask_all(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            jobs = [http.post("/v1/embeddings", json={"input": [text, "shared"]}) for text in texts]
            return await asyncio.gather(*jobs)

    with serving(model, ServeSettings(precision="fp32", max_wait_ms=20)) as url:
        responses = asyncio.run(ask_all(url))
        calls = metric(url, "poolattn_batch_requests_count")
    assert [r.status_code for r in responses] == [200] * 64
    got = np.array([r.json()["data"][0]["embedding"] for r in responses], dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert calls < 64  # requests were merged into shared encode calls


def test_full_queue_answers_503_and_a_slow_request_504(build, monkeypatch):
    model = build("eos", "causal")
    gate = threading.Event()
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda *a, **k: (gate.wait(10), encode(*a, **k))[1])
    settings = ServeSettings(precision="fp32", max_inputs=4, max_queue_texts=4, timeout_s=1.0)
    with serving(model, settings) as url:
        slow: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: slow.append(httpx.post(f"{url}/v1/embeddings", json={"input": ["a"] * 4}))
        )
        thread.start()
        deadline = time.monotonic() + 10
        while metric(url, "poolattn_admitted_texts") < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        full = httpx.post(f"{url}/v1/embeddings", json={"input": "one more"})
        thread.join(10)
        gate.set()
        after = httpx.post(f"{url}/v1/embeddings", json={"input": "later"})
    assert full.status_code == 503 and "queue is full" in full.json()["error"]["message"], full.text
    assert slow[0].status_code == 504 and "no answer within 1 s" in slow[0].json()["error"]["message"]
    assert after.status_code == 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_server_drains_in_flight_requests_on_sigterm(tiny_llama):
    port, url = free_port(), None
    args = ["serve", str(tiny_llama), "--port", str(port), "--attention", "bidirectional", "--pooling", "mean"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "poolattn", *args, "--precision", "fp32", "--max-wait-ms", "1500"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        answer: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: answer.append(httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS}, timeout=30))
        )
        thread.start()
        while metric(url, "poolattn_admitted_texts") < len(TEXTS):  # admitted, waiting out the 1.5 s batching wait
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        thread.join(30)
        output = proc.communicate(timeout=30)[0]
    finally:
        proc.kill()
    assert answer and answer[0].status_code == 200, output
    got = np.array([item["embedding"] for item in answer[0].json()["data"]], dtype=np.float32)
    expected = EmbeddingModel.from_backbone(tiny_llama, attention="bidirectional", pooling="mean").encode(TEXTS)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "every admitted request was answered" in output, output
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health")


def test_serve_help_has_examples_and_bad_limits_are_one_line_errors(tiny_llama):
    result = CliRunner().invoke(cli_app, ["serve", "--help"])
    assert result.exit_code == 0 and "Example" in result.output and "curl" in result.output
    result = CliRunner().invoke(cli_app, ["serve", str(tiny_llama), "--max-queue", "0"])
    assert result.exit_code == 2 and "must be positive" in result.output, result.output
