#!/usr/bin/env bash
# The GPU check, for a CUDA machine: the CUDA tests, bf16 encode and training throughput with MFU on a 0.5 B model
# (bench/gpu.py), 20 steps of the paper's recipe on Qwen2-0.5B-shaped random weights, and the peak memory of those
# steps against `poolattn train --plan`'s prediction. Nothing else depends on it. Run from the repository root:
#
#     bash bench/gpu_check.sh            # writes runs/gpu-check/{tests.log,bench.log,plan.txt,train.log,summary.txt}
#
# Needs: a CUDA GPU, the project installed (make install), no network (the random weights are built locally).
set -euo pipefail

PY="${PYTHON:-.venv/bin/python}"
OUT="${OUT_DIR:-runs/gpu-check}"
GPU="${GPU_NAME:-h100}"          # the --plan accelerator closest to this machine's
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" \
    | tee "$OUT/summary.txt"

echo "== CUDA tests" | tee -a "$OUT/summary.txt"
"$PY" -m pytest -q tests/test_cuda.py 2>&1 | tee "$OUT/tests.log" | tail -n 3 | tee -a "$OUT/summary.txt"

echo "== bf16 encode and training throughput (bench/gpu.py)" | tee -a "$OUT/summary.txt"
"$PY" bench/gpu.py 2>&1 | tee "$OUT/bench.log" | tail -n 20 | tee -a "$OUT/summary.txt"

echo "== 20 steps of the paper recipe on Qwen2-0.5B-shaped random weights" | tee -a "$OUT/summary.txt"
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

import datasets
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

out = Path(sys.argv[1])
folder = out / "qwen2-0.5b-random"
if not (folder / "config.json").is_file():
    config = AutoConfig.for_model(
        "qwen2", hidden_size=896, num_hidden_layers=24, intermediate_size=4864, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    AutoModel.from_config(config).to(torch.bfloat16).save_pretrained(folder)
    # any byte-level tokenizer will do for random weights: the packaged SmolLM2's, ids < its vocabulary
    from poolattn.assets import resolve_backbone
    AutoTokenizer.from_pretrained(resolve_backbone("default")).save_pretrained(folder)
words = "the of a to in is retrieval embedding pooling attention layer model query passage answer".split()
rows = {"query": [], "postive": [], "negative": []}
for i in range(4096):
    rows["query"].append(" ".join(words[(i + k) % len(words)] for k in range(12)) + f" {i}")
    rows["postive"].append(" ".join(words[(i * 3 + k) % len(words)] for k in range(120)) + f" {i}")
    rows["negative"].append(" ".join(words[(i * 7 + k) % len(words)] for k in range(120)) + f" {i + 1}")
datasets.Dataset.from_dict(rows).to_parquet(str(out / "records.parquet"))
print(json.dumps({"backbone": str(folder), "records": 4096}))
EOF

SET=(--set "model.backbone=$OUT/qwen2-0.5b-random" --set "data.path=$OUT/records.parquet"
     --set recipe.steps=20 --set recipe.batch_size=256 --set recipe.mini_batch=64 --set recipe.warmup_steps=2
     --set recipe.gradient_checkpointing=false --set "output.dir=$OUT/train" --set output.checkpoint_every=0)
"$PY" -m poolattn train configs/train_paper.toml --plan --gpu "$GPU" --tokens 150 \
    --params family=qwen2,hidden=896,layers=24,intermediate=4864,heads=14,kv_heads=2,vocab=151936 "${SET[@]}" \
    | tee "$OUT/plan.txt" | tail -n 6 | tee -a "$OUT/summary.txt"

"$PY" - "$OUT" "${SET[@]}" <<'EOF' 2>&1 | tee "$OUT/train.log" | tail -n 4 | tee -a "$OUT/summary.txt"
import json, sys, time

import torch

from poolattn.training import load_train_config, train

out, overrides = sys.argv[1], [a for a in sys.argv[2:] if a != "--set"]
torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
result = train(load_train_config("configs/train_paper.toml", overrides), progress=False)
seconds = time.perf_counter() - start
peak = torch.cuda.max_memory_allocated() / 1e9
print(json.dumps({"steps": result.steps, "seconds": round(seconds, 1), "s_per_step": round(seconds / result.steps, 2),
                  "peak_allocated_gb": round(peak, 2), "final_loss": round(result.losses[-1], 4)}))
EOF
echo "compare peak_allocated_gb with the plan's peak/dev above (which adds 2 GB of CUDA runtime)" \
    | tee -a "$OUT/summary.txt"
echo "summary: $OUT/summary.txt"
