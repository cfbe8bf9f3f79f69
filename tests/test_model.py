"""EmbeddingModel: invariances, instructions, truncation, persistence, export, memory."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters
from torch.profiler import ProfilerActivity, profile

from poolattn import EmbeddingModel
from poolattn.model import cpp_compiler, plan_batches

TEXTS = [
    "hi",
    "The quick brown fox jumps over the lazy dog.",
    "Pooling and attention decide how a decoder becomes an embedding model, and this text is longer.",
    "",
    "   ",
    "a b",
]
DESIGNS = ["eos", "mean", "weighted_mean", "latent", "trainable", "multilayer"]


@pytest.fixture(scope="module")
def make(tiny_factory):
    def build(pooling="eos", attention="causal", family="llama", **kw):
        return EmbeddingModel.from_backbone(tiny_factory(family), attention=attention, pooling=pooling, **kw)

    return build


@pytest.mark.parametrize("pooling", DESIGNS)
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_padding_and_batch_invariance(make, pooling, attention):
    model = make(pooling, attention)
    right = model.encode(TEXTS)
    left = model.encode(TEXTS, padding_side="left")
    alone = np.stack([model.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(left, right, rtol=0, atol=1e-5)
    np.testing.assert_allclose(alone, right, rtol=0, atol=1e-5)
    assert np.isfinite(right).all()


@pytest.mark.parametrize("family", ["qwen2", "gpt2", "gemma3_text"])
def test_invariance_other_families(make, family):
    model = make("mean", "bidirectional", family=family)
    right = model.encode(TEXTS)
    np.testing.assert_allclose(model.encode(TEXTS, padding_side="left"), right, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.stack([model.encode([t])[0] for t in TEXTS]), right, rtol=0, atol=1e-5)


def test_order_is_restored_and_batching_is_token_budgeted(make):
    model = make("eos")
    full = model.encode(TEXTS)
    tiny_batches = model.encode(TEXTS, batch_tokens=8, max_batch_size=2)
    np.testing.assert_allclose(tiny_batches, full, rtol=0, atol=1e-5)
    shuffled = [TEXTS[i] for i in (3, 0, 5, 1, 4, 2)]
    np.testing.assert_allclose(model.encode(shuffled), full[[3, 0, 5, 1, 4, 2]], rtol=0, atol=1e-5)
    assert plan_batches([10, 10, 5, 5, 2], batch_tokens=20, max_batch_size=8) == [(0, 2), (2, 5)]
    assert plan_batches([50], batch_tokens=20, max_batch_size=8) == [(0, 1)]


def test_instruction_format_and_exclusion_exact_under_padding(make):
    model = make("mean", "bidirectional", pool_instruction=False)
    text, n_prefix = model.format("what is a cat?", "Find it")
    assert text == "Instruct: Find it\nQuery: what is a cat?" and text[n_prefix:] == "what is a cat?"
    batch = model.tokenize(["what is a cat?"], instruction="Find it")
    n_real = int(batch.attention_mask.sum())
    n_pooled = int(batch.pool_mask.sum())
    assert 1 < n_pooled < n_real
    right = model.encode(TEXTS, instruction="Find it")
    left = model.encode(TEXTS, instruction="Find it", padding_side="left")
    np.testing.assert_allclose(left, right, rtol=0, atol=1e-5)
    included = make("mean", "bidirectional").encode(TEXTS, instruction="Find it")
    assert np.abs(included - right).max() > 1e-3  # excluding the instruction tokens changes mean pooling
    with pytest.raises(ValueError, match="instruction_template"):
        make("mean", instruction_template="no placeholders")


def test_truncation_keeps_eos_and_warns_once(make, caplog):
    model = make("eos", max_length=16)
    long_text = "the quick brown fox " * 40
    with caplog.at_level(logging.WARNING, logger="poolattn.model"):
        items = model.tokenize_texts([long_text, long_text])
    assert [len(it.ids) for it in items] == [16, 16]
    assert all(it.ids[-1] == model.tokenizer.eos_token_id for it in items)
    assert sum("truncated" in r.message for r in caplog.records) == 1


def test_empty_and_whitespace_texts_are_embedded_from_eos(make):
    model = make("eos")
    items = model.tokenize_texts(["", "   "])
    assert items[0].ids[-1] == model.tokenizer.eos_token_id
    vecs = model.encode(["", "   "])
    assert np.isfinite(vecs).all() and vecs.shape == (2, 32)
    assert model.encode([]).shape == (0, 32)


def test_bad_inputs_are_clear_errors(make):
    model = make("eos")
    with pytest.raises(TypeError, match="not a single string"):
        model.encode("a lone string")
    with pytest.raises(TypeError, match="text 1 is int"):
        model.encode(["ok", 3])
    with pytest.raises(ValueError, match="unknown pooling 'cls'"):
        make("cls")
    with pytest.raises(TypeError, match="unknown option"):
        make("eos", colour="blue")
    with pytest.raises(FileNotFoundError, match="not a poolattn model folder"):
        EmbeddingModel.load("/nonexistent/folder")


@pytest.mark.parametrize("pooling", ["eos", "multilayer"])
def test_save_load_identical(make, tmp_path, pooling):
    model = make(pooling, "bidirectional")
    before = model.encode(TEXTS)
    model.save(tmp_path / "m")
    again = EmbeddingModel.load(tmp_path / "m")
    np.testing.assert_array_equal(again.encode(TEXTS), before)
    assert again.config == model.config
    model.save(tmp_path / "m")  # overwriting an existing folder is safe
    np.testing.assert_array_equal(EmbeddingModel.load(tmp_path / "m").encode(TEXTS), before)


def test_save_load_lora_and_full_weights(make, tmp_path):
    model = make("trainable", "bidirectional")
    model.add_lora(r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # make the adapter matter
    before = model.encode(TEXTS)
    model.save(tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter").is_dir()
    np.testing.assert_array_equal(EmbeddingModel.load(tmp_path / "lora").encode(TEXTS), before)
    model.merge_adapter()
    np.testing.assert_allclose(model.encode(TEXTS), before, rtol=0, atol=1e-5)
    model.backbone_trained = True
    model.save(tmp_path / "full")
    assert (tmp_path / "full" / "backbone" / "config.json").is_file()
    np.testing.assert_array_equal(EmbeddingModel.load(tmp_path / "full").encode(TEXTS), model.encode(TEXTS))


@pytest.mark.parametrize("pooling", ["eos", "multilayer"])
def test_sentence_transformers_export_gives_same_vectors(make, tmp_path, pooling):
    from sentence_transformers import SentenceTransformer

    from poolattn.st_export import export

    model = make(pooling, "bidirectional")
    export(model, tmp_path / "st")
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu", trust_remote_code=True)
    np.testing.assert_allclose(st.encode(TEXTS), model.encode(TEXTS), rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        st.encode(TEXTS, prompt="Find it"), model.encode(TEXTS, instruction="Find it"), rtol=0, atol=1e-6
    )
    assert st.get_embedding_dimension() == 32


def peak_allocated_bytes(fn) -> int:
    """Peak of live tensor bytes during ``fn`` (profiler allocation events in time order)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


def test_multilayer_peak_memory_near_last_layer_poolers(tiny_factory):
    folder = tiny_factory(
        "llama",
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
    )
    peaks = {}
    text = "The quick brown fox jumps over the lazy dog. " * 40
    for pooling in ("eos", "multilayer"):
        model = EmbeddingModel.from_backbone(folder, attention="bidirectional", pooling=pooling, max_length=1024)
        batch = model.tokenize([text, text])

        def forward(model=model, batch=batch):
            with torch.inference_mode():
                model(batch)

        peaks[pooling] = peak_allocated_bytes(forward)

    def keep_all_layers():
        with torch.inference_mode():
            model.backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)

    assert peaks["multilayer"] <= 1.2 * peaks["eos"], peaks
    assert peak_allocated_bytes(keep_all_layers) > 1.5 * peaks["eos"]  # the measure can tell the difference


needs_cpp = pytest.mark.skipif(cpp_compiler() is None, reason="torch.compile on a CPU needs a C++ compiler")


@needs_cpp
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_compiled_backbone_encodes_like_the_eager_one(tiny_llama, attention):
    texts = ["a short one", "a somewhat longer text of several more words", "x", "mid length text here"]
    model = EmbeddingModel.from_backbone(tiny_llama, attention=attention, pooling="mean")
    eager = model.encode(texts, batch_tokens=24)
    keys = set(model.state_dict())
    model.compile_backbone()
    assert set(model.state_dict()) == keys  # the compiled module is not part of the model's state
    counters.clear()
    np.testing.assert_allclose(model.encode(texts, batch_tokens=24), eager, atol=1e-5)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo really traced the backbone
    np.testing.assert_allclose(model.encode(texts[::-1], batch_tokens=1000), eager[::-1], atol=1e-5)
    batch = model.tokenize(texts[:2])
    loss = model(batch).sum()  # gradients run the eager backbone
    loss.backward()
    assert any(p.grad is not None for p in model.backbone.parameters())


@needs_cpp
def test_compiled_weights_are_frozen_in_even_when_worker_threads_compile(tiny_llama):
    """inductor's freezing (weights folded in, cast to bf16 once) must hold in the worker thread that compiles:
    its config overrides are thread-local. Frozen weights show as a graph that no longer sees in-place edits."""
    texts = ["one text", "another, a little longer, text", "third", "and a fourth one here"]
    model = EmbeddingModel.from_backbone(tiny_llama, pooling="eos").compile_backbone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model.encode(texts, batch_tokens=16, workers=2)  # several batches: compiled in a worker thread
        with torch.no_grad():
            model.backbone.layers[0].mlp.down_proj.weight.mul_(-3.0)
        after = model.encode(texts, batch_tokens=16, workers=2)
        model._compiled = None  # the eager backbone sees the edit
        edited = model.encode(texts, batch_tokens=16, workers=2)
    np.testing.assert_array_equal(after, before)
    assert np.abs(edited - before).max() > 1e-3


def test_compile_without_a_cpp_compiler_is_a_clear_error(tiny_llama, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler"):
        EmbeddingModel.from_backbone(tiny_llama).compile_backbone()


@needs_cpp
def test_compile_warns_when_the_pooler_reads_every_layer(tiny_llama, caplog):
    def make():
        return EmbeddingModel.from_backbone(tiny_llama, pooling="multilayer", attention="bidirectional")

    model = make()
    with caplog.at_level(logging.WARNING):
        model.compile_backbone()
    assert "runs the eager backbone" in caplog.text
    texts = ["one text", "another, longer text"]
    np.testing.assert_array_equal(model.encode(texts), make().encode(texts))
