"""EmbeddingModel: invariances, instructions, truncation, persistence, export, memory."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters
from torch.profiler import ProfilerActivity, profile

from poolattn import EmbeddingModel
from poolattn.backbone import BackboneError
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


def test_an_instruction_that_leaves_no_room_for_the_text_is_refused(make):
    model = make("eos", max_length=24)
    with pytest.raises(ValueError, match=r"the instruction 'Find it' takes \d+ tokens .* max_length=24"):
        model.tokenize_texts(["a cat"], instruction="Find it")
    assert len(model.tokenize_texts(["a cat"])[0].ids) < 24  # without an instruction the text fits


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


# ----------------------------------------------------------------------------------- code in a model folder
EVIL = """import pathlib

pathlib.Path({marker!r}).write_text("remote code ran")
from transformers import LlamaConfig, LlamaModel


class EvilConfig(LlamaConfig):
    model_type = {model_type!r}


class EvilModel(LlamaModel):
    config_class = EvilConfig
"""


def ship_code(folder, marker, config_file="config.json", model_type="llama"):
    """Make a model or tokenizer folder name code of its own that writes ``marker`` when it is imported."""
    path = folder / config_file
    config = json.loads(path.read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    if config_file == "config.json":
        config["model_type"] = model_type
    path.write_text(json.dumps(config))
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker), model_type=model_type))


@pytest.fixture
def crafted(make, tiny_llama, tmp_path):
    """``crafted(where)``: a saved model whose backbone weights, tokenizer, referenced backbone or poolattn.json
    asks for code of its own; returns (folder, marker the code would write)."""

    def build(where):
        marker = tmp_path / f"ran-{where}"
        folder = tmp_path / where
        make("eos").save(folder, backbone_weights=where == "weights")
        meta = json.loads((folder / "poolattn.json").read_text())
        if where == "weights":
            ship_code(folder / "backbone", marker)
        elif where == "tokenizer":
            ship_code(folder / "tokenizer", marker, "tokenizer_config.json")
        elif where == "reference":
            backbone = tmp_path / "backbone-with-code"
            shutil.copytree(tiny_llama, backbone)
            ship_code(backbone, marker)
            (folder / "poolattn.json").write_text(json.dumps({**meta, "backbone": str(backbone)}))
        else:
            (folder / "poolattn.json").write_text(json.dumps({**meta, "trust_remote_code": True}))
        return folder, marker

    return build


@pytest.fixture
def modules_cache(monkeypatch, tmp_path):
    """Code that does run is copied into a private modules cache, not the user's."""
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))


@pytest.mark.parametrize("where", ["weights", "tokenizer", "reference", "declared"])
def test_a_folder_asking_to_run_its_code_is_refused_unless_the_caller_trusts_it(crafted, modules_cache, where):
    folder, marker = crafted(where)
    with pytest.raises(BackboneError, match=r"ships Python code .* refused\. Pass --trust-remote-code"):
        EmbeddingModel.load(folder)
    assert not marker.exists()
    model = EmbeddingModel.load(folder, trust_remote_code=True)  # the caller's word alone allows it
    assert model.encode(["a text"]).shape == (1, 32)
    assert marker.exists() == (where in ("weights", "reference"))  # the tokenizer's code is never imported here


def test_encode_refuses_a_folder_with_code_and_names_the_flag(crafted, modules_cache, tmp_path):
    from typer.testing import CliRunner

    from poolattn.cli import app

    folder, marker = crafted("weights")
    (tmp_path / "texts.txt").write_text("a text\n")
    args = ["encode", str(folder), "-i", str(tmp_path / "texts.txt"), "-o", str(tmp_path / "v.npy")]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "--trust-remote-code" in result.output
    assert not marker.exists() and not (tmp_path / "v.npy").exists()
    assert CliRunner().invoke(app, [*args, "--trust-remote-code"]).exit_code == 0
    assert marker.exists() and np.load(tmp_path / "v.npy").shape == (1, 32)


def test_code_the_folder_check_cannot_see_is_refused_by_transformers(crafted, monkeypatch, tiny_llama, tmp_path):
    """A hub repository's files are not inspected before loading: transformers' own refusal names the flag too."""
    marker = tmp_path / "ran"
    backbone = tmp_path / "hub-like"
    shutil.copytree(tiny_llama, backbone)
    ship_code(backbone, marker, model_type="poolattn_test_evil")  # a family transformers does not know
    monkeypatch.setattr("poolattn.backbone.ships_code", lambda folder: False)
    with pytest.raises(BackboneError, match="--trust-remote-code"):
        EmbeddingModel.from_backbone(backbone)
    assert not marker.exists()


@pytest.mark.parametrize("max_length", [1, 0, -3])
def test_a_saved_model_refuses_a_max_length_below_two(make, tmp_path, max_length):
    from typer.testing import CliRunner

    from poolattn.cli import app

    make("eos").save(tmp_path / "m")
    with pytest.raises(ValueError, match=f"max_length must be at least 2, got {max_length}"):
        EmbeddingModel.load(tmp_path / "m", max_length=max_length)
    assert EmbeddingModel.load(tmp_path / "m", max_length=2).config.max_length == 2
    (tmp_path / "texts.txt").write_text("a text\nanother\n")
    args = ["encode", str(tmp_path / "m"), "-i", str(tmp_path / "texts.txt"), "-o", str(tmp_path / "v.npy")]
    result = CliRunner().invoke(app, [*args, "--max-length", str(max_length)], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and f"max_length must be at least 2, got {max_length}" in result.output
    assert not (tmp_path / "v.npy").exists()


# ------------------------------------------------------------------------------------------- fingerprints
def test_fingerprint_tells_apart_any_change_of_weights_and_is_cached(make, tmp_path, monkeypatch):
    import poolattn.fingerprints

    model, twin = make("latent"), make("latent")
    assert model.fingerprint() == twin.fingerprint()  # same seed, bit-identical weights
    assert make("latent", seed=1).fingerprint() != model.fingerprint()  # another head initialisation
    assert make("latent", dtype="bfloat16").fingerprint() != model.fingerprint()
    hashed = []
    real = poolattn.fingerprints.tensors_fingerprint
    monkeypatch.setattr(poolattn.fingerprints, "tensors_fingerprint", lambda state: hashed.append(1) or real(state))
    first = model.fingerprint()
    assert model.fingerprint() == first and hashed == []  # cached: nothing changed
    with torch.no_grad():
        twin.backbone.norm.weight[0] += 1e-3  # one backbone weight, in place
        next(model.pooler.parameters()).view(-1)[0] += 1e-3  # one head weight
    assert twin.fingerprint() != first
    changed = model.fingerprint()
    assert changed not in (first, twin.fingerprint()) and hashed == [1, 1]
    model.add_lora(r=2, alpha=4, dropout=0.0)  # an adapter that adds nothing yet (B = 0) still counts
    assert model.fingerprint() not in (first, changed)
    model.save(tmp_path / "m")
    assert EmbeddingModel.load(tmp_path / "m").fingerprint() == model.fingerprint()


@pytest.mark.parametrize("pooling", ["eos", "multilayer"])
def test_sentence_transformers_export_gives_same_vectors(make, tmp_path, pooling):
    from sentence_transformers import SentenceTransformer

    from poolattn.st_export import export

    model = make(pooling, "bidirectional")
    export(model, tmp_path / "st", instruction="Find it")
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu", trust_remote_code=True)
    np.testing.assert_allclose(st.encode(TEXTS), model.encode(TEXTS), rtol=0, atol=1e-6)
    # a sentence-transformers prompt is the text's prefix: the instruction in poolattn's template
    query = model.encode(TEXTS, instruction="Find it")
    np.testing.assert_allclose(st.encode_query(TEXTS), query, rtol=0, atol=1e-6)
    np.testing.assert_allclose(st.encode(TEXTS, prompt="Instruct: Find it\nQuery: "), query, rtol=0, atol=1e-6)
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


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
@pytest.mark.parametrize("pooling", ["mean", "multilayer"])
def test_backbone_cut_at_a_layer(tiny_factory, tmp_path, family, pooling):
    """num_layers=k runs the first k layers (the final norm after them) and saves/loads to the same vectors;
    the full model's layer k equals the cut model's last layer before that norm."""
    folder = tiny_factory(family)
    texts = ["a short text", "a somewhat longer text about cats and dogs"]
    full = EmbeddingModel.from_backbone(folder, pooling=pooling, attention="bidirectional")
    cut = EmbeddingModel.from_backbone(folder, pooling=pooling, attention="bidirectional", num_layers=2)
    assert cut.backbone.config.num_hidden_layers == 2 and len(cut.backbone.layers) == 2
    batch = cut.collate(cut.tokenize_texts(texts, None), "right")
    with torch.inference_mode():
        deep = full.backbone(batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        shallow = cut.backbone(batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    torch.testing.assert_close(deep.hidden_states[1], shallow.hidden_states[1], rtol=0, atol=0)
    torch.testing.assert_close(full.backbone.norm(deep.hidden_states[2]), shallow.last_hidden_state)
    cut.save(tmp_path / "cut")
    again = EmbeddingModel.load(tmp_path / "cut")
    assert again.config.num_layers == 2
    np.testing.assert_array_equal(cut.encode(texts), again.encode(texts))
    assert full.config.hash() != cut.config.hash()


def test_backbone_cut_out_of_range(tiny_llama):
    with pytest.raises(BackboneError, match=r"num_layers = 9: .* has 3 decoder layers"):
        EmbeddingModel.from_backbone(tiny_llama, num_layers=9)
    with pytest.raises(ValueError, match="num_layers must be a positive"):
        EmbeddingModel.from_backbone(tiny_llama, num_layers=0)
