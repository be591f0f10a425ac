#!/usr/bin/env bash
# The CUDA bench as one short script for a GPU machine (about 10 minutes with the binary built):
# `dijiang bench all` built with `--features cuda` (Burn 0.21 loads CUDA at run time), into
# runs/bench-cuda/ (summary.md, JSON, plots). DIJIANG_BIN=path uses an already built binary.
# Autotuning (the `cuda` feature) times every candidate kernel of each new shape on a fresh machine
# (10-30 s per matmul shape on an H200, cached on disk afterwards): run it twice, or build
# `cuda-untuned` (DIJIANG_BIN) where the machine's time is short (docs/gpu.md).
# Usage, from the repository root: bench/cuda.sh [OUT_DIR]
set -euo pipefail
out="${1:-runs/bench-cuda}"
bin="${DIJIANG_BIN:-}"
if [ -z "$bin" ]; then
    cargo build --release --no-default-features --features cuda
    bin="${CARGO_TARGET_DIR:-target}/release/dijiang"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$bin" backend
timeout 600 "$bin" bench all --out "$out"
