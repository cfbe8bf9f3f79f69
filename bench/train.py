"""Training throughput and memory: poolattn vs sentence-transformers, side by side in one run.

Same model (the packaged SmolLM2-135M, float32 weights; ``--bf16``: bfloat16 autocast in both trainers), same
LoRA (r 16, alpha 32, dropout 0.1, all linear layers), same global batch, maximum length, learning rate, data
(default movie-dialogue pairs with one random hard negative, the instruction on the query side) and loss (InfoNCE
with scale 20 over in-batch positives and hard negatives).
sentence-transformers runs ``SentenceTransformerTrainer`` + ``MultipleNegativesRankingLoss`` over
``Transformer`` (plain text modality, no chat template) + ``Pooling("mean")`` (causal attention), so poolattn
runs mean pooling with causal attention for the like-for-like ratio; the default design (bidirectional,
multi-layer head) is timed too. Texts are the same; poolattn appends an EOS token to each.

Each trainer runs in its own process, one after the other. Throughput is examples per second over the steps
after the first (warm-up); a step is timed end to end (tokenisation, forward, backward, optimiser). Memory is
the resident set (RSS) of the process: its high-water mark (``VmHWM``, reset when training starts) minus the
RSS at that moment, i.e. what training adds on top of the loaded model.

    python bench/train.py [--steps 6] [--batch-size 16] [--max-length 64] [--threads N] [--bf16]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

INSTRUCTION_TEMPLATE = "Instruct: {instruction}\nQuery: "


def rss_bytes(field: str = "VmRSS") -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) * 1024


def reset_peak() -> int:
    """Reset the RSS high-water mark to the current RSS and return it."""
    Path("/proc/self/clear_refs").write_text("5")
    return rss_bytes()


def records(args: argparse.Namespace):
    from poolattn.data import default_training_set

    return default_training_set(args.pairs, seed=0, hard_negatives="random")


def run_poolattn(args: argparse.Namespace, design: str) -> dict[str, Any]:
    from poolattn.training import Trainer, load_train_config

    attention, pooling = design.split(":")
    with tempfile.TemporaryDirectory() as out:
        config = load_train_config(
            None,
            [
                "model.backbone=default",
                f"model.attention={attention}",
                f"model.pooling={pooling}",
                f"model.max_length={args.max_length}",
                f"recipe.steps={args.steps}",
                f"recipe.batch_size={args.batch_size}",
                "recipe.lr=1e-4",
                "recipe.max_grad_norm=none",
                "lora.r=16",
                "lora.alpha=32",
                "lora.dropout=0.1",
                f"recipe.mixed_precision={'bf16' if args.bf16 else 'no'}",
                f"output.dir={out}",
                "output.resume=false",
            ],
        )
        trainer = Trainer(config, records(args), progress=False)
        baseline = rss_bytes()
        result = trainer.run()
        seconds = [json.loads(line)["step_seconds"] for line in result.log_path.read_text().splitlines()]
    return {
        "examples_per_second": args.batch_size * (len(seconds) - 1) / sum(seconds[1:]),
        "step_seconds": seconds,
        "peak_rss": result.peak_memory_bytes,
        "added_rss": result.peak_memory_bytes - baseline,
        "loss_first": result.losses[0],
    }


def run_sentence_transformers(args: argparse.Namespace) -> dict[str, Any]:
    import datasets
    from peft import LoraConfig, TaskType, get_peft_model
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Arguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import TrainerCallback

    from poolattn import assets

    data = records(args)
    instruction = data[0].instruction
    dataset = datasets.Dataset.from_dict(
        {
            "anchor": [r.query for r in data],
            "positive": [r.positive for r in data],
            "negative": [r.negatives[0] for r in data],
        }
    )
    path = str(assets.model_path("smollm2"))
    # sentence-transformers 6 renders every text through the model's chat template when there is one (the
    # converted SmolLM2 folder has one): pin the plain text modality so both trainers see the same tokens.
    transformer = Transformer(path, max_seq_length=args.max_length)
    text_only = {k: v for k, v in transformer.modality_config.items() if k == "text"}
    transformer = Transformer(
        path, max_seq_length=args.max_length, modality_config=text_only, module_output_name="token_embeddings"
    )
    if transformer.tokenizer.pad_token is None:
        transformer.tokenizer.pad_token = transformer.tokenizer.eos_token
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.1, target_modules="all-linear", task_type=TaskType.FEATURE_EXTRACTION
    )
    # peft directly: SentenceTransformer.add_adapter goes through transformers, which wants a newer peft
    transformer.model = get_peft_model(transformer.model, lora)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")])
    marks: dict[str, Any] = {"ends": []}

    class Timer(TrainerCallback):
        def on_train_begin(self, *_: Any, **__: Any) -> None:
            marks["baseline"] = reset_peak()
            marks["begin"] = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            marks["ends"].append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        arguments = Arguments(
            output_dir=out,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps,
            learning_rate=1e-4,
            lr_scheduler_type="linear",
            weight_decay=0.01,
            max_grad_norm=0.0,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            seed=0,
            use_cpu=True,
            bf16=args.bf16,
            dataloader_drop_last=True,
            prompts={"anchor": INSTRUCTION_TEMPLATE.format(instruction=instruction)},
        )
        loss = MultipleNegativesRankingLoss(model, scale=20.0)
        trainer = SentenceTransformerTrainer(
            model=model, args=arguments, train_dataset=dataset, loss=loss, callbacks=[Timer()]
        )
        trainer.train()
    peak = rss_bytes("VmHWM")
    ends = marks["ends"]
    seconds = [ends[0] - marks["begin"], *(b - a for a, b in itertools.pairwise(ends))]
    first_loss = next((h["loss"] for h in trainer.state.log_history if "loss" in h), float("nan"))
    return {
        "examples_per_second": args.batch_size * (len(seconds) - 1) / sum(seconds[1:]),
        "step_seconds": seconds,
        "peak_rss": peak,
        "added_rss": peak - marks["baseline"],
        "loss_first": first_loss,
    }


def padding_report(args: argparse.Namespace) -> dict[str, int]:
    """Padded tokens per step: one padded batch per column (sentence-transformers) vs length-sorted chunks."""
    from poolattn import EmbeddingModel, assets
    from poolattn.data import DataOrder
    from poolattn.training import RecipeSection
    from poolattn.training.contrastive import chunk_overhead, plan_chunks
    from poolattn.training.records import tokenize_shard

    model = EmbeddingModel.from_backbone(assets.model_path("smollm2"), max_length=args.max_length)
    data = records(args)
    order = DataOrder(len(data), args.batch_size, 0)
    real = columns = chunked = 0
    for step in range(min(order.steps_per_epoch, 8)):
        items = tokenize_shard(model, [data[i] for i in order.batch(step)])
        b = args.batch_size
        real += sum(len(it.ids) for it in items)
        columns += sum(
            len(col) * max(len(it.ids) for it in col) for col in (items[:b], items[b : 2 * b], items[2 * b :])
        )
        recipe = RecipeSection()
        for chunk in plan_chunks(items, recipe.mini_batch, recipe.forward_tokens, chunk_overhead(model.device)):
            chunked += len(chunk) * len(items[chunk[0]].ids)
    steps = min(order.steps_per_epoch, 8)
    return {"real": real // steps, "per_column": columns // steps, "length_sorted": chunked // steps}


RUNNERS = {
    "sentence-transformers (mean, causal)": lambda a: run_sentence_transformers(a),
    "poolattn (mean, causal)": lambda a: run_poolattn(a, "causal:mean"),
    "poolattn (multilayer, bidirectional)": lambda a: run_poolattn(a, "bidirectional:multilayer"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast in both trainers (default: float32)")
    parser.add_argument("--worker", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print("RESULT " + json.dumps(RUNNERS[args.worker](args)))
        return

    print(
        f"torch threads: {args.threads or torch.get_num_threads()}, batch {args.batch_size}, "
        f"max_length {args.max_length}, {args.steps} steps (first one not timed), "
        f"{'bfloat16 autocast' if args.bf16 else 'float32'}"
    )
    pad = padding_report(args)
    print(
        f"tokens per step: {pad['real']} real; padded {pad['per_column']} (one batch per column), "
        f"{pad['length_sorted']} (length-sorted chunks)"
    )
    results = {}
    for name in RUNNERS:
        command = [sys.executable, __file__, "--worker", name, *sys.argv[1:]]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if done.returncode or line is None:
            print(f"{name}: failed\n{done.stderr[-3000:]}")
            continue
        results[name] = json.loads(line.removeprefix("RESULT "))
        r = results[name]
        print(
            f"{name:40s} {r['examples_per_second']:7.2f} examples/s   peak RSS {r['peak_rss'] / 2**20:7.0f} MiB "
            f"(+{r['added_rss'] / 2**20:5.0f} MiB in training)   first loss {r['loss_first']:.3f}   "
            f"steps {[round(s, 1) for s in r['step_seconds']]}"
        )
    ref, ours = "sentence-transformers (mean, causal)", "poolattn (mean, causal)"
    if ref in results and ours in results:
        speed = results[ours]["examples_per_second"] / results[ref]["examples_per_second"]
        memory = results[ours]["added_rss"] / results[ref]["added_rss"]
        print(f"poolattn / sentence-transformers, same design: {speed:.2f}x throughput, {memory:.2f}x training memory")


if __name__ == "__main__":
    main()
