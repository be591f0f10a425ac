#!/usr/bin/env bash
# Does CUDA compute what the CPU computes? The same commands, run by a CPU build (Flex) and a CUDA
# build of `dijiang` on the same machine, on the real stories260K (llama2.c) and TinyStories text:
# perplexity of the softmax teacher and of two converted students (the reference DiJiang and the
# default experiment's hybrid, window 64, which use the chunked form), greedy generation (chunked
# prefill then recurrent decoding), and 8 real trainer steps of two recipes (the reference LM
# fine-tune; the default experiment's attention transfer then KL distillation) with their logged
# losses. Students and data batches are seeded on the host, so both runs start from the same
# numbers; the report says how far they end apart. One JSON file, OUT/parity.json.
# CUDA_BIN: built with --features cuda-untuned (with autotuning, a fresh machine spends 10-30 s on
# each new matmul shape and every command here outran its limit: docs/gpu.md); CPU_BIN: the default
# build (Flex). Takes about 70 s on an H200 machine with 16 cores.
# Usage, from the repository root: bench/cuda-parity.sh CPU_BIN CUDA_BIN [OUT_DIR] (SHARED=../shared)
set -euo pipefail
cpu="$1"
cuda="$2"
out="${3:-runs/cuda-parity}"
shared="${SHARED:-../shared}"
teacher="$shared/models/stories260K/stories260K.bin"
text="$shared/corpora/tinystories-fragment.txt"
for f in "$teacher" "$text"; do [ -f "$f" ] || { echo "missing $f (set SHARED=DIR)" >&2; exit 1; }; done
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Inputs, made once by the CPU build: the students and the tokenised text.
"$cpu" convert --teacher "$teacher" --out "$work/reference" > "$out/setup.log" 2>&1
"$cpu" convert --teacher "$teacher" --out "$work/hybrid" --normalize --window 64 --gate none --output-norm none \
    >> "$out/setup.log" 2>&1
mkdir -p "$work/raw" && sed G "$text" > "$work/raw/tinystories.txt"
"$cpu" prepare --tokenizer "$teacher" --input "$work/raw" --out "$work/tokens" >> "$out/setup.log" 2>&1

# Two recipes at 128 tokens: the stories260k experiment (LM fine-tune) and the default one's stages.
common=(teacher.path="$teacher" data.path="$work/tokens" data.block_size=128 resume=false checkpoint.every=1000
    eval.every=4 eval.batches=2)
for backend in cpu cuda; do
    bin="${!backend}"
    log="$out/$backend.log"
    : > "$log"
    for model in "$teacher" "$work/reference" "$work/hybrid"; do
        timeout 30 "$bin" eval --model "$model" --text "$text" --max-tokens 1024 --json \
            > "$work/eval-$(basename "$model").$backend.json" 2>> "$log" || echo "eval $model: failed" >> "$log"
    done
    timeout 30 "$bin" generate --model "$work/hybrid" --prompt "Once upon a time" --max-new-tokens 48 --json \
        > "$work/generate.$backend.json" 2>> "$log" || echo "generate: failed" >> "$log"
    timeout 50 "$bin" train experiment=stories260k run="parity/lm.$backend" --runs "$work/runs" "${common[@]}" \
        stages.0.steps=8 stages.0.warmup_steps=2 >> "$log" 2>&1 || echo "train lm: failed" >> "$log"
    timeout 70 "$bin" train experiment=default run="parity/hybrid.$backend" --runs "$work/runs" "${common[@]}" \
        teacher.preset=stories260k data.batch_size=4 stages.0.steps=4 stages.1.steps=4 stages.0.warmup_steps=1 \
        stages.1.warmup_steps=1 >> "$log" 2>&1 || echo "train hybrid: failed" >> "$log"
done

python3 - "$work" "$out" <<'PY'
import json, pathlib, sys
work, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])

def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

def metrics(run):
    path = work / "runs" / "parity" / run / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    return {f"{r['tag']}@{r['step']}": r["value"] for r in rows if isinstance(r.get("value"), (int, float))}

def rel(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-12)

report = {"eval": {}, "generate": {}, "train": {}}
for model in ["stories260K.bin", "reference", "hybrid"]:
    a, b = load(work / f"eval-{model}.cpu.json"), load(work / f"eval-{model}.cuda.json")
    report["eval"][model] = {"cpu": a, "cuda": b,
                             "nll_rel_diff": rel(a["nll"], b["nll"]) if a and b else None}
a, b = load(work / "generate.cpu.json"), load(work / "generate.cuda.json")
report["generate"] = {"cpu": a, "cuda": b, "same_text": (a or {}).get("text") == (b or {}).get("text") if a and b else None}
for run in ["lm", "hybrid"]:
    a, b = metrics(f"{run}.cpu"), metrics(f"{run}.cuda")
    entry = {"cpu": a, "cuda": b}
    if a and b:
        shared = sorted(set(a) & set(b))
        diffs = {k: rel(a[k], b[k]) for k in shared if not k.startswith(("train/tokens_per_s", "train/tokens_seen", "train/lr", "time"))}
        entry["compared"] = len(diffs)
        entry["max_rel_diff"] = max(diffs.values()) if diffs else None
        entry["worst"] = sorted(diffs.items(), key=lambda kv: -kv[1])[:5]
    report["train"][run] = entry
(out / "parity.json").write_text(json.dumps(report, indent=2))
for model, e in report["eval"].items():
    print(f"eval {model}: nll cpu {(e['cpu'] or {}).get('nll')} cuda {(e['cuda'] or {}).get('nll')} rel {e['nll_rel_diff']}")
print(f"generate: same text {report['generate']['same_text']}")
for run, e in report["train"].items():
    print(f"train {run}: compared {e.get('compared')} values, max rel diff {e.get('max_rel_diff')}, worst {e.get('worst')}")
PY
