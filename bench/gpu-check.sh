#!/usr/bin/env bash
# The prepared GPU check of the 7B recipes (one script, no downloads; docs/gpu.md says what its first run found):
# `dijiang bench recipes` (built with --features cuda-untuned) takes 2 real trainer steps of every stage of
# experiments/dijiang-7b.toml (hybrid attention transfer, then LoRA distillation on an f16 base) and
# experiments/dijiang-7b-reference.toml (the full fine-tune; its optimizer sharding needs several
# devices, so here one 141 GB H200-class device must hold it: ~109 GiB planned) on random LLaMA-2-7B weights (drawn on the GPU) at
# 2048 tokens, records tokens/s and the memory model's estimate per stage, checks that f16 storage
# of frozen weights gives the f32 logits, while nvidia-smi samples the device memory every 100 ms.
# Everything lands in OUT/gpu-check.json (and the per-experiment recipes-*.json, logs, samples).
# DIJIANG_BIN=path uses an already built binary; DIJIANG_TIMEOUT=SECONDS bounds each experiment (270). CI runs the same steps on a small preset on
# Flex and wgpu (crates/dijiang-train/tests/recipes.rs).
# Usage, from the repository root: bench/gpu-check.sh [OUT_DIR]
set -euo pipefail
out="${1:-runs/gpu-check}"
mkdir -p "$out"
bin="${DIJIANG_BIN:-}"
limit="${DIJIANG_TIMEOUT:-270}"
if [ -z "$bin" ]; then
    # Without autotuning: on a fresh machine it timed every candidate kernel of each new matmul
    # shape (10-30 s each on an H200), more than the check's whole budget (docs/gpu.md).
    cargo build --release --no-default-features --features cuda-untuned
    bin="${CARGO_TARGET_DIR:-target}/release/dijiang"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv"
for name in dijiang-7b dijiang-7b-reference; do
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$out/$name.memory-mib" &
    sampler=$!
    status=0
    timeout "$limit" "$bin" bench recipes --experiments "experiments/$name.toml" --steps 2 --out "$out/$name" \
        > "$out/$name.log" 2>&1 || status=$?
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    peak=$(sort -n "$out/$name.memory-mib" | tail -n 1)
    echo "$name: exit $status, peak device memory ${peak:-?} MiB"
    printf '{"experiment": "%s", "exit_status": %s, "peak_device_memory_mib": %s}\n' \
        "$name" "$status" "${peak:-null}" > "$out/$name.peak.json"
done
python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
runs = []
for name in ["dijiang-7b", "dijiang-7b-reference"]:
    run = json.loads((out / f"{name}.peak.json").read_text())
    recipes = out / name / "recipes.json"
    run["recipes"] = json.loads(recipes.read_text()) if recipes.exists() else None
    runs.append(run)
gpu = (out / "gpu.csv").read_text().strip().splitlines()[-1]
(out / "gpu-check.json").write_text(json.dumps({"gpu": gpu, "runs": runs}, indent=2))
print(f"gpu-check -> {out / 'gpu-check.json'}")
PY
