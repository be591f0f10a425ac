"""What users would otherwise run: HF transformers' GPT-NeoX (pythia-70m) and LLaMA (smollm2-135m)
in PyTorch on this CPU, timed on the shapes `dijiang bench` measures, so that its table shows
ratios. Randomly initialised weights (speed does not depend on the values).

Not part of CI: `just bench-pytorch` makes a virtualenv with PyTorch (PyPI's build, which also
carries CUDA libraries; run here on the CPU) and transformers and runs this; it writes runs/bench/pytorch.json, which `dijiang bench report` merges into the table.

Measured, with all cores (torch.set_num_threads(os.cpu_count())):
- train: one AdamW step (forward, LM loss, backward, update) at block 512 x batch 4 and 2048 x 1;
- prefill: a forward pass over 512 and 2048 tokens, tokens/s;
- decode: one token at a time with the KV cache after a prefill of 256..8192 tokens, tokens/s;
- the FLOP/s of a 4096^3 matrix product (PyTorch's BLAS), against `dijiang bench train`'s own.
"""

import argparse
import json
import os
import statistics
import time

import torch
import transformers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM


def pythia_70m(max_len):
    return GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
            intermediate_size=2048, rotary_pct=0.25, max_position_embeddings=max_len,
            use_parallel_residual=True, tie_word_embeddings=False,
        )
    )


def smollm2_135m(max_len):
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0,
            max_position_embeddings=max_len, tie_word_embeddings=True,
        )
    )


MODELS = {"pythia-70m": pythia_70m, "smollm2-135m": smollm2_135m}


def timed(fn, reps):
    """Median seconds of `reps` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(n, reps):
    """FLOP/s of one n x n x n f32 matrix product: the CPU's practical peak through PyTorch's BLAS."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return {"n": n, "flops": 2 * n**3 / timed(lambda: a @ b, reps)}


def bench_train(model, vocab, block, batch, reps):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    tokens = torch.randint(0, vocab, (batch, block))
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=tokens, labels=tokens, use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    seconds = timed(step, reps)
    return {"block": block, "batch": batch, "step_s": seconds, "tokens_per_s": block * batch / seconds}


@torch.no_grad()
def bench_prefill(model, vocab, length, reps):
    model.eval()
    tokens = torch.randint(0, vocab, (1, length))
    seconds = timed(lambda: model(input_ids=tokens, use_cache=True), reps)
    return {"len": length, "seconds": seconds, "tokens_per_s": length / seconds}


@torch.no_grad()
def bench_decode(model, vocab, context, steps):
    model.eval()
    out = model(input_ids=torch.randint(0, vocab, (1, context)), use_cache=True)
    cache = out.past_key_values
    token = out.logits[:, -1:].argmax(-1)
    # One untimed step, then `steps` timed ones.
    out = model(input_ids=token, past_key_values=cache, use_cache=True)
    start = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values, use_cache=True)
    seconds = time.perf_counter() - start
    return {"context": context, "tokens_per_s": steps / seconds}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/bench/pytorch.json")
    parser.add_argument("--contexts", default="256,512,1024,2048,4096,8192")
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    contexts = [int(c) for c in args.contexts.split(",")]
    result = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "matmul_peak": matmul_peak(4096, args.reps),
        "models": {},
    }
    print("matmul peak (4096^3):", round(result["matmul_peak"]["flops"] / 1e9, 1), "GFLOP/s", flush=True)
    for name, build in MODELS.items():
        model = build(max(contexts) + args.decode_steps + 2)
        vocab = model.config.vocab_size
        entry = {"params": sum(p.numel() for p in model.parameters())}
        entry["train"] = [bench_train(model, vocab, 512, 4, args.reps), bench_train(model, vocab, 2048, 1, args.reps)]
        entry["prefill"] = [bench_prefill(model, vocab, n, args.reps) for n in (512, 2048)]
        entry["decode"] = []
        for context in contexts:
            entry["decode"].append(bench_decode(model, vocab, context, args.decode_steps))
            print(name, entry["decode"][-1], flush=True)
        print(name, entry["train"], entry["prefill"], flush=True)
        result["models"][name] = entry
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
