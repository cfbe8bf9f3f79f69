"""Batch-parallel CPU inference: the same results as one-by-one, thread and autocast state handled."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from poolattn import EmbeddingModel
from poolattn.workers import balance_tail, default_workers, intra_op_threads, map_in_threads

TEXTS = [f"text number {i} " + "word " * (i % 7) for i in range(40)] + ["", "a"]


def test_map_in_threads_yields_every_result_once_and_uses_threads():
    seen_threads: set[int] = set()
    barrier = threading.Barrier(2, timeout=10)

    def square(x: int) -> int:
        if x < 2:
            barrier.wait()  # the first two jobs only finish when two threads hold them at once
        seen_threads.add(threading.get_ident())
        return x * x

    out = dict(map_in_threads(square, list(range(20)), workers=2))
    assert out == {i: i * i for i in range(20)}
    assert len(seen_threads) == 2 and threading.get_ident() not in seen_threads


def test_workers_run_one_intra_op_thread_with_the_callers_modes_and_restore_the_count():
    before = torch.get_num_threads()
    weight = torch.nn.Parameter(torch.randn(4, 4))

    def state(_: int) -> tuple:
        y = torch.randn(2, 4) @ weight
        return torch.get_num_threads(), torch.is_inference_mode_enabled(), y.dtype

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        results = dict(map_in_threads(state, [0, 1, 2, 3], workers=2))
    assert set(results.values()) == {(1, True, torch.bfloat16)}
    with torch.no_grad():
        plain = dict(map_in_threads(state, [0, 1], workers=2))
    assert set(plain.values()) == {(1, False, torch.float32)}
    assert torch.get_num_threads() == before


def test_an_error_in_a_worker_is_raised_and_stops_the_rest():
    done: list[int] = []

    def fail_on_three(x: int) -> int:
        if x == 3:
            raise ValueError("job 3 failed")
        time.sleep(0.002)
        done.append(x)
        return x

    before = torch.get_num_threads()
    with pytest.raises(ValueError, match="job 3 failed"):
        list(map_in_threads(fail_on_three, list(range(1000)), workers=2))
    assert len(done) < 100 and torch.get_num_threads() == before
    assert not [t for t in threading.enumerate() if t.name.startswith("poolattn-worker")]


def test_one_worker_runs_inline_and_workers_follow_the_device():
    assert list(map_in_threads(lambda x: threading.get_ident(), [0, 1], workers=1)) == [
        (0, threading.get_ident()),
        (1, threading.get_ident()),
    ]
    with intra_op_threads(3):
        assert default_workers(torch.device("cpu"), 10) == 3
        assert default_workers(torch.device("cpu"), 2) == 2
    assert default_workers(torch.device("meta"), 10) == 1


@pytest.mark.parametrize("pooling", ["eos", "latent", "multilayer"])
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_encode_in_threads_equals_one_by_one(tiny_llama, pooling, attention):
    model = EmbeddingModel.from_backbone(tiny_llama, attention=attention, pooling=pooling)
    with intra_op_threads(2):
        serial = model.encode(TEXTS, batch_tokens=24, workers=1)
        threaded = model.encode(TEXTS, batch_tokens=24, workers=2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            serial_bf16 = model.encode(TEXTS, batch_tokens=24, workers=1)
            threaded_bf16 = model.encode(TEXTS, batch_tokens=24, workers=2)
    np.testing.assert_allclose(threaded, serial, rtol=0, atol=1e-6)
    np.testing.assert_allclose(threaded_bf16, serial_bf16, rtol=0, atol=1e-6)
    assert np.abs(serial_bf16 - serial).max() > 1e-6  # autocast really reached the worker threads


def test_encode_layers_in_threads_equals_one_by_one(tiny_llama):
    model = EmbeddingModel.from_backbone(tiny_llama, attention="bidirectional", pooling="mean")
    serial = model.encode_layers(TEXTS, batch_tokens=24, workers=1)
    np.testing.assert_allclose(model.encode_layers(TEXTS, batch_tokens=24, workers=3), serial, rtol=0, atol=1e-6)


def test_the_last_batch_is_split_so_the_threads_finish_together():
    jobs = [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9, 10]]
    balanced = balance_tail(jobs, 2)
    assert balanced == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]
    assert balance_tail(jobs[:2], 2) == jobs[:2]  # already even
    assert balance_tail(jobs, 1) == jobs
    assert balance_tail([[0], [1], [2]], 2) == [[0], [1], [2]]  # a single row cannot be split
    assert [row for job in balance_tail(jobs, 4) for row in job] == list(range(11))
