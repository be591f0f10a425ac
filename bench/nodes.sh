#!/usr/bin/env bash
# Step time of multi-node data parallelism on loopback: 1, 2 and 3 node processes on this machine,
# for one or more `dijiang` binaries side by side in one run (e.g. the retired TCP hub against
# burn-collective). Every run trains the same SmolLM2-135M student end to end (all 134.5 M
# parameters trainable, so every step all-reduces a 538 MB gradient) on the same global batch of
# 6 windows of 32 tokens; the nodes share this machine's cores, so compute is the same for every
# binary at a given node count and the difference between binaries is their communication.
#
#   bench/nodes.sh OUT.json TEXT LABEL=BINARY [LABEL=BINARY ...]
#
# TEXT: a UTF-8 text file to train on. Writes OUT.json: per binary and node count, the median step
# time of steps 2..STEPS (step 1 includes joining) and the per-node logs' last lines on failure.
set -euo pipefail
out=$1; text=$2; shift 2
steps=${STEPS:-5}
model=${MODEL:-models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -f "$model" ] || { echo "missing $model: run \`just fetch-smollm2\`" >&2; exit 2; }
[ -f "$text" ] || { echo "missing text file $text" >&2; exit 2; }
dir=$(mktemp -d)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/raw" "$dir/experiments"
head -c 200000 "$text" > "$dir/raw/text.txt"
first_bin=${1#*=}
"$first_bin" prepare --tokenizer "$model" --input "$dir/raw" --out "$dir/data" --validation-fraction 0.1 --seed 1 >/dev/null
cat > "$dir/experiments/b.toml" <<EOF
description = "bench: SmolLM2-135M distillation, everything trainable"
seed = 0
[teacher]
path = "$(realpath "$model")"
preset = "smollm2-135m"
[student]
feature_map = "reference"
sampling = { kind = "qmc" }
chunk_len = 32
[data]
path = "$dir/data"
block_size = 32
batch_size = 6
grad_accumulation = 1
[[stages]]
name = "distill"
steps = $steps
lr = 1e-4
warmup_steps = 1
trainable = "all"
loss = { kl = 1.0 }
[checkpoint]
every = 0
keep = 1
[eval]
every = 0
batches = 1
EOF

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One run of `nodes` processes of binary $2; prints the median step time in seconds.
run() {
    local label=$1 bin=$2 nodes=$3 runs="$dir/runs-$1-$3" pids=() rank
    # Node r's data service takes the orchestrator's port + 1 + r (the default without
    # distributed.addresses); the hub's binary uses the orchestrator's port only.
    local orchestrator="127.0.0.1:$(port)"
    for ((rank = 0; rank < nodes; rank++)); do
        local dist=()
        ((nodes > 1)) && dist=(distributed.nodes=$nodes distributed.node_rank=$rank distributed.orchestrator=$orchestrator)
        "$bin" train experiment=b --experiments "$dir/experiments" --runs "$runs" "${dist[@]}" \
            >"$dir/$label-$nodes-$rank.log" 2>&1 &
        pids+=($!)
    done
    local failed=0
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    if ((failed)); then
        grep -h -m3 -E "Error|panicked" -A3 "$dir"/$label-$nodes-*.log >&2
        echo null
        return
    fi
    python3 - "$runs/b/metrics.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
tps = {r["step"]: r["value"] for r in rows if r["tag"] == "train/tokens_per_s"}
times = [6 * 32 / tps[s] for s in sorted(tps) if s >= 2]
print(round(statistics.median(times), 3))
PY
}

results="{"
for spec in "$@"; do
    label=${spec%%=*}; bin=${spec#*=}
    results+="\"$label\": {"
    for nodes in 1 2 3; do
        t=$(run "$label" "$bin" "$nodes")
        echo "$label, $nodes node process(es): median step $t s" >&2
        results+="\"$nodes\": $t"
        ((nodes < 3)) && results+=", "
    done
    results+="}, "
done
results="${results%, }}"
python3 - "$out" "$results" "$steps" <<'PY'
import json, os, platform, sys
out, results, steps = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
report = {
    "what": "median step time (s) of steps 2..%d, SmolLM2-135M, all parameters trainable (538 MB gradient), "
            "global batch 6 x 32 tokens, N node processes on loopback sharing this machine" % steps,
    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    "step_s": results,
}
json.dump(report, open(out, "w"), indent=2)
print(json.dumps(report, indent=2))
PY
