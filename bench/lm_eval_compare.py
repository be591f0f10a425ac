"""Agreement of `dijiang evaluate` with lm-evaluation-harness 0.4.13 on the same weights and data.

lm-eval's own HF model (`HFLM`, transformers loading the GGUF file and dequantising it to f32)
scores lm-eval's own requests (`lm-eval-requests/TASK.jsonl.gz`, built by lm-eval's task code) for
the first N documents of each task (of each subject for MMLU); the per-request log-likelihoods and
greedy flags are compared with the records `dijiang evaluate --limit N` wrote (OUT/TASK.jsonl),
and both sides' accuracies are computed with lm-eval's formulas.

Usage (a virtualenv with lm-eval==0.4.13, torch, transformers, gguf, accelerate; see
docs/evaluation.md):
  python bench/lm_eval_compare.py --gguf models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf \
      --data ../shared/evaldata --records runs/evaluate/smollm2-limit --tasks arc_easy,piqa --limit 200 \
      --out runs/evaluate/lm-eval-compare.json
"""

import argparse
import gzip
import json
import math
import time
from pathlib import Path


def lm_eval_scores(lm, requests):
    from lm_eval.api.instance import Instance

    instances = [
        Instance(request_type="loglikelihood", doc={}, arguments=(ctx, cont), idx=i) for i, (ctx, cont) in enumerate(requests)
    ]
    return [(float(ll), bool(greedy)) for ll, greedy in lm.loglikelihood(instances)]


def first_docs(docs, limit):
    """The first `limit` documents, per subject where they have one (MMLU), as lm-eval's `--limit`
    and `dijiang evaluate --limit` cut them."""
    taken, out = {}, []
    for doc in docs:
        subject = doc.get("subject")
        taken[subject] = taken.get(subject, 0) + 1
        if taken[subject] <= limit:
            out.append(doc)
    return out


def ours(records, task, n):
    lines = Path(records, f"{task}.jsonl").read_text().splitlines()[1:]
    docs = {}
    for line in lines:
        record = json.loads(line)
        docs[record["doc"]] = [(s["logprob"], s["greedy"]) for s in record["scores"]]
    return [docs[i] for i in range(n)]


def accuracies(docs, scores):
    """lm-eval's acc and acc_norm (or LAMBADA's greedy acc) over documents."""
    acc, acc_norm = [], []
    for doc, s in zip(docs, scores):
        if "gold" not in doc:
            acc.append(float(s[0][1]))
            continue
        lls = [ll for ll, _ in s]
        normed = [ll / len(c) for ll, c in zip(lls, doc["choices"])]
        acc.append(float(lls.index(max(lls)) == doc["gold"]))
        acc_norm.append(float(normed.index(max(normed)) == doc["gold"]))
    mean = lambda xs: sum(xs) / len(xs) if xs else None
    return mean(acc), mean(acc_norm)


def compare(lm, args, task):
    name = "sciq_val" if task == "sciq" else task
    with gzip.open(Path(args.data, "lm-eval-requests", f"{name}.jsonl.gz"), "rt") as f:
        docs = first_docs((json.loads(line) for line in f), args.limit)
    requests = [tuple(r) for d in docs for r in d["requests"]]
    start = time.time()
    flat = lm_eval_scores(lm, requests)
    seconds = time.time() - start
    theirs, i = [], 0
    for d in docs:
        theirs.append(flat[i : i + len(d["requests"])])
        i += len(d["requests"])
    mine = ours(args.records, task, len(docs))
    diffs = [abs(a[0] - b[0]) for x, y in zip(mine, theirs) for a, b in zip(x, y)]
    greedy = sum(a[1] != b[1] for x, y in zip(mine, theirs) for a, b in zip(x, y))
    picks = sum(
        [ll for ll, _ in x].index(max(ll for ll, _ in x)) != [ll for ll, _ in y].index(max(ll for ll, _ in y))
        for x, y in zip(mine, theirs)
    )
    return {
        "task": task,
        "docs": len(docs),
        "requests": len(requests),
        "lm_eval_seconds": seconds,
        "max_abs_loglik_diff": max(diffs),
        "mean_abs_loglik_diff": sum(diffs) / len(diffs),
        "greedy_flag_mismatches": greedy,
        "argmax_mismatches": picks,
        "ours": dict(zip(["acc", "acc_norm"], accuracies(docs, mine))),
        "lm_eval": dict(zip(["acc", "acc_norm"], accuracies(docs, theirs))),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--records", required=True)
    p.add_argument("--tasks", required=True)
    p.add_argument("--limit", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    from lm_eval.models.huggingface import HFLM

    gguf = Path(args.gguf)
    lm = HFLM(pretrained=str(gguf.parent), gguf_file=gguf.name, device="cpu", dtype="float32", batch_size=args.batch_size)
    results = []
    for task in args.tasks.split(","):
        results.append(compare(lm, args, task))
        print(json.dumps(results[-1]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
