"""An OpenAI-compatible embeddings server (FastAPI + uvicorn) with dynamic batching, for every design.

``POST /v1/embeddings`` takes OpenAI's request (``input``: a string or a list of strings; ``model``;
``encoding_format``: ``float`` | ``base64``; ``dimensions``: truncate and re-normalise) plus an ``instruction``
extension field, passed to :meth:`EmbeddingModel.encode`. ``GET /health``, ``GET /v1/models`` and ``GET /metrics``
(Prometheus text format) complete it.

One worker thread owns the model. Requests put their texts in a bounded queue; the worker waits up to
``max_wait_ms`` after the oldest waiting request arrived, takes everything waiting (up to ``max_batch_texts``),
groups it by instruction and runs one ``encode`` per group, which sorts the texts by length into token-budgeted
batches spread over the CPU threads, exactly as offline encoding does. A full queue answers 503, a request
still unanswered after ``timeout_s`` answers 504, and SIGTERM stops accepting connections, answers the requests
already admitted, then exits.

Empty strings are embedded as ``encode`` embeds them (from the EOS token alone); an empty list is refused.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .backbone import autocast_precision, resolve_precision
from .model import EmbeddingModel
from .quantize import for_precision
from .workers import default_workers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching of the server."""

    max_wait_ms: float = 5.0  # how long the worker waits for more requests after the oldest one arrived
    max_batch_texts: int = 1024  # texts per encode call, at most (one larger request still goes whole)
    max_queue_texts: int = 8192  # texts admitted and not yet answered; beyond it, 503
    max_inputs: int = 2048  # texts per request (OpenAI's limit)
    max_text_chars: int = 32768  # characters per text
    max_body_bytes: int = 32 * 2**20  # request body size; beyond it, 413
    timeout_s: float = 60.0  # per request, queueing included; then 504
    batch_tokens: int | None = None  # encode's token budget per batch (default: default_batch_tokens)
    precision: str = "auto"  # auto | fp32 | bf16 | int8, as the CLI's --precision
    model_name: str | None = None  # the id /v1/models lists and responses name (default: EmbeddingModel.name)

    def __post_init__(self) -> None:
        if self.max_queue_texts < self.max_inputs:
            raise ValueError(f"max_queue_texts ({self.max_queue_texts}) must hold one request of max_inputs")
        if min(self.max_batch_texts, self.max_inputs, self.max_text_chars, self.max_body_bytes) < 1:
            raise ValueError("the batch, input, text and body limits must be positive")
        if self.max_wait_ms < 0 or self.timeout_s <= 0:
            raise ValueError("max_wait_ms must be >= 0 and timeout_s > 0")


class APIError(Exception):
    """An error answered as OpenAI does: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


# ---------------------------------------------------------------------- requests
@dataclass(frozen=True)
class EmbeddingRequest:
    """A checked ``POST /v1/embeddings`` body."""

    texts: list[str]
    single: bool  # input was one string
    encoding_format: str = "float"
    dimensions: int | None = None
    instruction: str | None = None


def parse_request(body: bytes, settings: ServeSettings, dim: int) -> EmbeddingRequest:
    """Check a request body; the first problem raises a 400 :class:`APIError` naming its field."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON: {err}") from None
    if not isinstance(payload, dict):
        raise APIError(400, f"the request body must be a JSON object, not {json_type(payload)}")
    if "input" not in payload:
        raise APIError(400, "'input' is required: a string or a list of strings", "input")
    raw = payload["input"]
    single = isinstance(raw, str)
    texts = [raw] if single else raw
    if not isinstance(texts, list):
        raise APIError(400, f"'input' must be a string or a list of strings, not {json_type(raw)}", "input")
    if not texts:
        raise APIError(400, "'input' must not be an empty list", "input")
    if len(texts) > settings.max_inputs:
        raise APIError(400, f"'input' has {len(texts)} texts; at most {settings.max_inputs} per request", "input")
    for i, text in enumerate(texts):
        where = "'input'" if single else f"'input[{i}]'"
        if not isinstance(text, str):
            hint = " (token arrays are not supported: send text)" if isinstance(text, int | list) else ""
            raise APIError(400, f"{where} must be a string, not {json_type(text)}{hint}", "input")
        if len(text) > settings.max_text_chars:
            raise APIError(
                400, f"{where} has {len(text)} characters; at most {settings.max_text_chars} per text", "input"
            )
    for name in ("model", "instruction", "user"):
        if payload.get(name) is not None and not isinstance(payload[name], str):
            raise APIError(400, f"'{name}' must be a string, not {json_type(payload[name])}", name)
    encoding = payload.get("encoding_format")
    encoding = "float" if encoding is None else encoding
    if encoding not in ("float", "base64"):
        raise APIError(400, f"'encoding_format' must be 'float' or 'base64', not {encoding!r}", "encoding_format")
    dimensions = payload.get("dimensions")
    if dimensions is not None and (
        isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions <= dim
    ):
        raise APIError(400, f"'dimensions' must be an integer from 1 to {dim} (this model's), not {dimensions!r}",
                       "dimensions")  # fmt: skip
    return EmbeddingRequest(texts, single, encoding, dimensions, payload.get("instruction") or None)


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def render(vectors: np.ndarray, tokens: int, request: EmbeddingRequest, model_name: str) -> bytes:
    """The response body: vectors (truncated to ``dimensions`` and re-normalised) as floats or base64."""
    if request.dimensions is not None and request.dimensions < vectors.shape[1]:
        vectors = vectors[:, : request.dimensions]
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    vectors = vectors.astype("<f4", copy=False)
    if request.encoding_format == "base64":
        rows: list[Any] = [base64.b64encode(v.tobytes()).decode("ascii") for v in vectors]
    else:
        rows = vectors.tolist()
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json.dumps({"object": "list", "data": data, "model": model_name, "usage": usage}).encode()


# ---------------------------------------------------------------------- batching
class QueueFull(Exception):
    """The queue holds ``max_queue_texts`` texts already (or the server is stopping)."""


@dataclass
class Encoded:
    """A request's vectors and the number of tokens the model embedded for it."""

    vectors: np.ndarray
    tokens: int


@dataclass
class Job:
    texts: list[str]
    instruction: str | None
    arrived: float = field(default_factory=time.monotonic)
    future: Future[Encoded] = field(default_factory=Future)


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("poolattn_requests", "HTTP requests answered", ["path", "status"], registry=r)
        self.latency = Histogram(
            "poolattn_request_latency_seconds",
            "time from an embeddings request's arrival to its answer",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        powers = tuple(float(2**k) for k in range(13))
        self.batch_texts = Histogram("poolattn_batch_texts", "texts per encode call", buckets=powers, registry=r)
        self.batch_requests = Histogram(
            "poolattn_batch_requests", "requests merged into one encode call", buckets=powers, registry=r
        )
        self.queue_texts = Gauge("poolattn_queue_texts", "texts waiting for the worker", registry=r)
        self.inflight_texts = Gauge("poolattn_admitted_texts", "texts admitted and not yet answered", registry=r)
        self.texts = Counter("poolattn_texts", "texts embedded", registry=r)
        self.tokens = Counter("poolattn_tokens", "tokens embedded (instruction and EOS included)", registry=r)
        self.tokens_per_second = Gauge(
            "poolattn_tokens_per_second", "tokens per second of the latest encode call", registry=r
        )
        self.rejected = Counter("poolattn_rejected", "requests refused because the queue was full", registry=r)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class Batcher:
    """One thread that owns the model: merges waiting requests and encodes them, grouped by instruction."""

    def __init__(self, model: EmbeddingModel, settings: ServeSettings, metrics: Metrics) -> None:
        self.precision = resolve_precision(settings.precision)
        self.model, self.settings, self.metrics = for_precision(model, self.precision), settings, metrics
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._waiting_texts = 0
        self._admitted_texts = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="poolattn-serve", daemon=True)
        metrics.queue_texts.set_function(lambda: self._waiting_texts)
        metrics.inflight_texts.set_function(lambda: self._admitted_texts)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Refuse new requests, answer the admitted ones, stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    @property
    def closing(self) -> bool:
        return self._closing

    def submit(self, texts: list[str], instruction: str | None) -> Future[Encoded]:
        """Queue a request's texts; :class:`QueueFull` when they do not fit."""
        job = Job(texts, instruction)
        with self._cond:
            if self._closing:
                raise QueueFull("the server is shutting down")
            if self._admitted_texts + len(texts) > self.settings.max_queue_texts:
                raise QueueFull(
                    f"the queue is full ({self._admitted_texts} of {self.settings.max_queue_texts} texts admitted); "
                    "retry later"
                )
            self._waiting.append(job)
            self._waiting_texts += len(texts)
            self._admitted_texts += len(texts)
            self._cond.notify()
        return job.future

    def _take(self) -> list[Job] | None:
        """The next jobs to encode (None once closing with nothing left)."""
        wait = self.settings.max_wait_ms / 1000
        with self._cond:
            while not self._waiting:
                if self._closing:
                    return None
                self._cond.wait()
            deadline = self._waiting[0].arrived + wait
            while not self._closing and self._waiting_texts < self.settings.max_batch_texts:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            jobs, texts = [], 0
            while self._waiting and (not jobs or texts + len(self._waiting[0].texts) <= self.settings.max_batch_texts):
                job = self._waiting.popleft()
                jobs.append(job)
                texts += len(job.texts)
            self._waiting_texts -= texts
            return jobs

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            live = [job for job in jobs if job.future.set_running_or_notify_cancel()]  # timed-out ones drop out
            groups: dict[str | None, list[Job]] = defaultdict(list)
            for job in live:
                groups[job.instruction].append(job)
            try:
                for instruction, group in groups.items():
                    self._encode(instruction, group)
            finally:
                with self._cond:
                    self._admitted_texts -= sum(len(job.texts) for job in jobs)

    def _encode(self, instruction: str | None, jobs: list[Job]) -> None:
        """One encode call for jobs sharing an instruction; resolves their futures."""
        texts = [text for job in jobs for text in job.texts]
        model = self.model
        start = time.perf_counter()
        try:
            counts = [len(item.ids) for item in model.tokenize_texts(texts, instruction)]
            with autocast_precision(self.precision, model.device):
                vectors = model.encode(
                    texts,
                    instruction,
                    batch_tokens=self.settings.batch_tokens,
                    show_progress=False,
                    workers=default_workers(model.device, len(texts)),  # one text's batch too spreads over cores
                )
        except Exception as err:
            log.exception("encoding %d texts failed", len(texts))
            for job in jobs:
                job.future.set_exception(err)
            return
        seconds = time.perf_counter() - start
        tokens = sum(counts)
        self.metrics.batch_texts.observe(len(texts))
        self.metrics.batch_requests.observe(len(jobs))
        self.metrics.texts.inc(len(texts))
        self.metrics.tokens.inc(tokens)
        self.metrics.tokens_per_second.set(tokens / max(seconds, 1e-9))
        offset = 0
        for job in jobs:
            n = len(job.texts)
            job.future.set_result(Encoded(vectors[offset : offset + n], sum(counts[offset : offset + n])))
            offset += n


# ---------------------------------------------------------------------- the app
def create_app(model: EmbeddingModel, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``model``; its lifespan starts and drains the batching thread."""
    settings = settings or ServeSettings()
    metrics = Metrics()
    batcher = Batcher(model.eval(), settings, metrics)
    name = settings.model_name or model.name
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        log.info("serving %s (dim %d, precision %s)", name, model.dim, batcher.precision)
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.close)
            log.info("batching worker stopped; every admitted request was answered")

    app = FastAPI(title="poolattn embeddings", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(APIError)
    async def api_error(_request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        return APIError(err.status_code, str(err.detail), kind="invalid_request_error").response()

    @app.exception_handler(Exception)
    async def server_error(_request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=err)
        return APIError(500, f"internal error: {err}", kind="server_error").response()

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        path = request.url.path if request.url.path in KNOWN_PATHS else "other"
        metrics.requests.labels(path, str(response.status_code)).inc()
        return response

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        arrived = time.perf_counter()
        body = await read_body(request, settings.max_body_bytes)
        parsed = await run_in_threadpool(parse_request, body, settings, model.dim)
        try:
            future = batcher.submit(parsed.texts, parsed.instruction)
        except QueueFull as err:
            metrics.rejected.inc()
            raise APIError(503, str(err), kind="server_error", code="overloaded") from None
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), settings.timeout_s)
        except TimeoutError:
            raise APIError(
                504, f"no answer within {settings.timeout_s:g} s; retry later", kind="server_error", code="timeout"
            ) from None
        except Exception as err:
            raise APIError(500, f"encoding failed: {err}", kind="server_error") from None
        content = await run_in_threadpool(render, result.vectors, result.tokens, parsed, name)
        metrics.latency.observe(time.perf_counter() - arrived)
        return Response(content, media_type="application/json")

    @app.get("/health")
    async def health() -> JSONResponse:
        if batcher.closing:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        info = {"dim": model.dim, "attention": model.config.attention, "pooling": model.config.pooling,
                "max_length": model.config.max_length}  # fmt: skip
        card = {"id": name, "object": "model", "created": created, "owned_by": "poolattn", "poolattn": info}
        return JSONResponse({"object": "list", "data": [card]})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    return app


KNOWN_PATHS = {"/v1/embeddings", "/health", "/v1/models", "/metrics"}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body has {declared} bytes; at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def serve(
    model: EmbeddingModel,
    settings: ServeSettings | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> None:
    """Serve ``model`` until SIGINT / SIGTERM, which finish the admitted requests first."""
    import uvicorn

    settings = settings or ServeSettings()
    config = uvicorn.Config(
        create_app(model, settings),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=int(settings.timeout_s) + 5,  # every admitted request is answered by then
    )
    uvicorn.Server(config).run()
