"""GPU throughput: encode and training of a random-initialised ~0.5 B decoder (bf16 + SDPA), with MFU.

The model has Qwen2.5-0.5B's shape (24 layers, hidden 896, 14 heads / 2 KV heads, MLP 4,864, vocabulary
151,936), random weights and a byte-level BPE tokenizer trained on the fly: throughput depends on shapes and
token counts, not on what the weights know. Texts are random word sequences of mixed lengths.

* encode: poolattn (``eos`` and ``multilayer`` pooling, bfloat16 weights, SDPA, token-budgeted length-sorted
  batches) against sentence-transformers (``Transformer`` + ``Pooling("lasttoken")``) at its defaults
  (float32, batch 32) and with bfloat16 weights; texts/s, tokens/s, MFU.
* training: ``poolattn.training.train`` (InfoNCE over in-batch and hard negatives, bf16 autocast) with LoRA and
  with full fine-tuning; examples/s, tokens/s, MFU over the steps after the first (from the run's step log).

MFU counts, per real token, 2 (encode), 4 (LoRA training: no gradients of the frozen weights) or 6 (full
fine-tuning) x (non-embedding parameters + attention's 2 x layers x hidden x length), against ``--peak``
TFLOP/s (default: 989, the dense bf16 figure of an H100 / H200 SXM).

    python bench/gpu.py [--texts 4096] [--steps 12] [--batch-size 64] [--max-length 256] [--peak 989]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from common import flops_per_token, lasttoken_sentence_transformer

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro", "si", "tu", "va", "ze") for b in "aeiouxyz"]


def save_random_qwen2(folder: Path, small: bool) -> Path:
    """Write a random Qwen2 (0.5 B shape, or a tiny one for a CPU dry run) and a BPE tokenizer into ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast

    shape = (
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        if small
        else dict(
            hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2
        )
    )
    config = AutoConfig.for_model(
        "qwen2",
        vocab_size=151936,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **shape,
    )
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([" ".join(random.choices(WORDS, k=200)) for _ in range(200)], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(
        folder
    )
    return folder


def random_texts(n: int, max_words: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choices(WORDS, k=rng.randint(4, max_words))) for _ in range(n)]


def synchronized_time() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=4096)
    parser.add_argument("--max-words", type=int, default=200, help="text lengths are uniform in [4, max-words] words")
    parser.add_argument("--steps", type=int, default=12, help="training steps per run (the first is warm-up)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--peak", type=float, default=989.0, help="the accelerator's dense bf16 TFLOP/s")
    parser.add_argument("--small", action="store_true", help="a tiny model and CPU allowed: a dry run of the script")
    args = parser.parse_args()

    from poolattn import EmbeddingModel
    from poolattn.data import TrainRecord
    from poolattn.training import TrainConfig, train

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.small:
        raise SystemExit("no CUDA device: run with --small for a dry run on a CPU")
    timer = synchronized_time if device == "cuda" else time.perf_counter
    peak = args.peak * 1e12
    rng = random.Random(0)
    work = Path(tempfile.mkdtemp(prefix="poolattn-gpu-bench-"))
    folder = save_random_qwen2(work / "qwen2", args.small)
    if device == "cuda":
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    texts = random_texts(args.texts, args.max_words, rng)

    # ---------------------------------------------------------------- encode
    for pooling in ("eos", "multilayer"):
        model = EmbeddingModel.from_backbone(
            folder, pooling=pooling, dtype="bfloat16", attn_implementation="sdpa", max_length=args.max_length
        ).to(device)
        tokens = sum(len(item.ids) for item in model.tokenize_texts(texts))
        model.encode(texts, show_progress=False)  # warm-up: every batch shape once (kernel choice, allocator)
        start = timer()
        model.encode(texts, show_progress=False)
        seconds = timer() - start
        fpt = flops_per_token(model.backbone, tokens / len(texts), 2)
        print(
            f"encode poolattn {pooling:10s} bf16 sdpa: {len(texts) / seconds:8.0f} texts/s {tokens / seconds:10.0f} "
            f"tok/s  MFU {tokens * fpt / seconds / peak:.1%}"
        )
        del model
    for label, kwargs in (("fp32 (defaults)", {}), ("bf16 weights", {"dtype": torch.bfloat16})):
        st = lasttoken_sentence_transformer(str(folder), args.max_length, device=device, model_kwargs=kwargs)
        st_tokens = int(sum(st.preprocess([t])["attention_mask"].sum() for t in texts))
        st.encode(texts)  # warm-up
        start = timer()
        st.encode(texts)
        seconds = timer() - start
        print(
            f"encode sentence-transformers {label:16s}: {len(texts) / seconds:8.0f} texts/s "
            f"{st_tokens / seconds:10.0f} tok/s"
        )
        del st

    # ---------------------------------------------------------------- training
    records = [
        TrainRecord(query=q, positive=p, negatives=[n])
        for q, p, n in zip(
            random_texts(args.batch_size * args.steps, 40, rng),
            random_texts(args.batch_size * args.steps, args.max_words, rng),
            random_texts(args.batch_size * args.steps, args.max_words, rng),
            strict=True,
        )
    ]
    counter = EmbeddingModel.from_backbone(folder, max_length=args.max_length)  # real tokens per text, parameters
    sample = [t for r in records[: args.batch_size * 4] for t in (r.query, r.positive, *r.negatives)]
    tokens_per_text = sum(len(i.ids) for i in counter.tokenize_texts(sample)) / len(sample)
    tokens_per_example = 3 * tokens_per_text  # query, positive, one hard negative
    train_flops = {m: flops_per_token(counter.backbone, tokens_per_text, f) for m, f in (("lora", 4), ("full", 6))}
    del counter
    for finetune in ("warm-up", "lora", "full"):
        config = TrainConfig()
        config.model.backbone, config.model.pooling = str(folder), "multilayer"
        config.model.max_length = args.max_length
        config.data.hard_negatives = "none"
        config.recipe.steps, config.recipe.batch_size = args.steps, args.batch_size
        config.recipe.finetune, config.recipe.mixed_precision = finetune.replace("warm-up", "lora"), "bf16"
        if finetune == "warm-up":  # CUDA context, kernel choice, allocator: not timed
            config.recipe.steps = 2
        config.recipe.forward_tokens = 65536 if device == "cuda" else 2048
        config.output.dir = str(work / f"train-{finetune}")
        result = train(config, records=records, progress=False)
        if finetune == "warm-up":
            continue
        steps = [json.loads(line) for line in result.log_path.read_text().splitlines()][1:]  # after the first
        examples_per_second = len(steps) * args.batch_size / sum(r["step_seconds"] for r in steps)
        tok_s = examples_per_second * tokens_per_example
        print(
            f"train poolattn multilayer bidirectional {finetune:4s} bf16: {examples_per_second:8.1f} examples/s "
            f"{tok_s:10.0f} tok/s  MFU {tok_s * train_flops[finetune] / peak:.1%}  peak memory "
            f"{result.peak_memory_bytes / 2**30:.1f} GiB  final loss {result.final_loss:.3f}"
        )


if __name__ == "__main__":
    main()
