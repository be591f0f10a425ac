//! The `dijiang` binary end to end: inspect, convert, generate, eval.

#[path = "../../../tests/support/mod.rs"]
mod support;
use support::{fixture, shared};

use std::path::Path;
use std::process::Command;

/// Runs `dijiang args...`, asserting success; returns stdout.
fn dijiang(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dijiang")).args(args).output().expect("run dijiang");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "dijiang {args:?} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

/// Runs `dijiang args...`, asserting that it fails; returns stderr.
fn dijiang_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dijiang")).args(args).output().expect("run dijiang");
    assert!(!out.status.success(), "dijiang {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stories260K and a TinyStories text (`None` where ../shared is absent, a failure in CI).
fn stories() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    Some((shared("models/stories260K/stories260K.bin")?, shared("corpora/tinystories-fragment.txt")?))
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn inspect_reports_llama2_7b_parameters() {
    let out = dijiang(&["inspect", "llama2-7b"]);
    assert!(out.contains("softmax teacher 6,738,415,616"), "{out}");
    let out = json(&dijiang(&["inspect", "llama2-7b", "--json"]));
    assert_eq!(out["params_softmax"], 6_738_415_616u64);
}

#[test]
fn convert_writes_a_student_that_loads_back() {
    let out_dir = std::env::temp_dir().join(format!("dijiang-cli-convert-{}", std::process::id()));
    let teacher = fixture("llama-gqa-tiny");
    let report = dijiang(&[
        "convert",
        "--teacher",
        teacher.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--seed",
        "3",
    ]);
    assert!(report.contains("new tensors   15:"), "{report}");
    assert!(report.contains("layers.2.attn.kernel.gate"), "{report}");
    let inspected = json(&dijiang(&["inspect", out_dir.to_str().unwrap(), "--json"]));
    assert_eq!(inspected["format"], "Native");
    assert_eq!(inspected["config"]["attention"]["kind"], "dijiang");
    std::fs::remove_dir_all(&out_dir).ok();
}

#[test]
fn eval_reproduces_stories260k_perplexity() {
    let Some((model, text)) = stories() else { return };
    let out = json(&dijiang(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--max-tokens",
        "256",
        "--json",
    ]));
    let ppl = out["perplexity"].as_f64().unwrap();
    eprintln!("stories260K perplexity over 256 tokens: {ppl:.4}");
    assert_eq!(out["tokens"], 256);
    assert!((ppl - 4.66).abs() < 0.01, "perplexity {ppl}");
    // Four windows of 64 tokens, each from an empty context.
    let (m, t) = (model.to_str().unwrap(), text.to_str().unwrap());
    let windowed =
        json(&dijiang(&["eval", "--model", m, "--text", t, "--max-tokens", "256", "--window", "64", "--json"]));
    assert_eq!((windowed["windows"].as_u64(), windowed["tokens"].as_u64()), (Some(4), Some(256)));
    let nll = windowed["nll"].as_f64().unwrap();
    assert!(nll.is_finite() && nll > out["nll"].as_f64().unwrap(), "short contexts predict worse: {nll}");

    // By position: each window predicts 63 tokens, in buckets 0-15, 16-31, 32-47, 48-62; their
    // token-weighted mean is the windows' NLL.
    let args = ["eval", "--model", m, "--text", t, "--max-tokens", "256", "--window", "64", "--json"];
    let by = json(&dijiang(&[&args[..], &["--positions", "16"]].concat()));
    let buckets = by["by_position"].as_array().unwrap();
    let spans: Vec<(u64, u64)> =
        buckets.iter().map(|b| (b["from"].as_u64().unwrap(), b["to"].as_u64().unwrap())).collect();
    assert_eq!(spans, [(0, 15), (16, 31), (32, 47), (48, 62)]);
    let bucket_nll = |i: usize| buckets[i]["nll"].as_f64().unwrap();
    let weighted = (0..4).map(|i| bucket_nll(i) * (spans[i].1 - spans[i].0 + 1) as f64).sum::<f64>() / 63.0;
    let by_nll = by["nll"].as_f64().unwrap();
    assert!((weighted - by_nll).abs() < 1e-9 && (by_nll - nll).abs() < 1e-5, "{weighted} {by_nll} {nll}");
    // The model is causal: the first window's positions 0-31 score as a sequence of 33 tokens.
    let first = ["eval", "--model", m, "--text", t, "--window", "64", "--positions", "32", "--json"];
    let first = json(&dijiang(&[&first[..], &["--max-tokens", "64"]].concat()));
    let alone = json(&dijiang(&["eval", "--model", m, "--text", t, "--max-tokens", "33", "--json"]));
    let (head, alone) = (first["by_position"][0]["nll"].as_f64().unwrap(), alone["nll"].as_f64().unwrap());
    assert!((head - alone).abs() < 1e-4, "positions 0-31 of a 64-token window {head}, the 33 tokens alone {alone}");
    let stderr = dijiang_fails(&[&args[..], &["--positions", "0"]].concat());
    assert!(stderr.contains("a bucket must hold at least one position"), "{stderr}");
}

#[test]
fn generate_streams_stories() {
    let Some(model) = shared("models/stories260K/stories260K.bin") else { return };
    let out = json(&dijiang(&["generate", "--model", model.to_str().unwrap(), "--max-new-tokens", "30", "--json"]));
    let text = out["text"].as_str().unwrap();
    assert!(text.starts_with("Once upon a time, there was a little girl named Lily."), "{text}");
    assert_eq!(out["ids"][0], 1, "BOS first");
    assert!(out["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    let streamed = dijiang(&["generate", "--model", model.to_str().unwrap(), "--max-new-tokens", "30"]);
    assert!(streamed.starts_with(text), "streamed text differs from --json text:\n{streamed}");

    // The repetition penalty: 80 greedy tokens hold 55 distinct ids, with a penalty of 1.3 over
    // the last 64 tokens more (68 measured); a non-positive penalty is refused before loading.
    let distinct = |penalty: &str| {
        let m = model.to_str().unwrap();
        let out = json(&dijiang(&[
            "generate",
            "--model",
            m,
            "--max-new-tokens",
            "80",
            "--repeat-penalty",
            penalty,
            "--json",
        ]));
        let ids: std::collections::HashSet<u64> =
            out["ids"].as_array().unwrap()[1..].iter().map(|v| v.as_u64().unwrap()).collect();
        ids.len()
    };
    let (greedy, penalized) = (distinct("1"), distinct("1.3"));
    assert!(penalized > greedy + 5, "distinct ids: {greedy} greedy, {penalized} with the penalty");
    let stderr = dijiang_fails(&["generate", "--model", model.to_str().unwrap(), "--repeat-penalty", "0"]);
    assert!(stderr.contains("--repeat-penalty must be a positive number"), "{stderr}");
}

#[test]
fn a_hybrids_window_widens_at_inference_to_its_teacher() {
    let Some((teacher, text)) = stories() else { return };
    // stories260K as a hybrid with a 4-key window, no gate and no output norm (the teacher's own
    // weights around its attention): a window holding every key of the text is exact softmax, so
    // the student then scores as its teacher; the window it was built with is far from it.
    let student = std::env::temp_dir().join(format!("dijiang-cli-window-{}", std::process::id()));
    let (m, t, s) = (teacher.to_str().unwrap(), text.to_str().unwrap(), student.to_str().unwrap());
    let convert = ["convert", "--teacher", m, "--out", s, "--normalize", "--window", "4"];
    dijiang(&[&convert[..], &["--gate", "none", "--output-norm", "none"]].concat());
    let nll = |model: &str, extra: &[&str]| {
        let args = ["eval", "--model", model, "--text", t, "--max-tokens", "256", "--json"];
        json(&dijiang(&[&args[..], extra].concat()))["nll"].as_f64().unwrap()
    };
    let (exact, trained, wide) = (nll(m, &[]), nll(s, &[]), nll(s, &["--attention-window", "256"]));
    assert!((wide - exact).abs() < 1e-5, "window of every key {wide}, teacher {exact}");
    assert!(trained > exact + 0.5, "the 4-key window {trained}, teacher {exact}");
    // Only a hybrid's window changes, and not to nothing.
    for (model, window, why) in
        [(m, "256", "softmax attention already reads every key"), (s, "0", "give a window of at least 1 key")]
    {
        let stderr =
            dijiang_fails(&["eval", "--model", model, "--text", t, "--max-tokens", "64", "--attention-window", window]);
        assert!(stderr.contains(why), "{stderr}");
    }
    std::fs::remove_dir_all(&student).ok();
}

#[test]
fn a_dijiang_models_decay_horizon_changes_at_inference() {
    let Some((teacher, text)) = stories() else { return };
    // stories260K converted to pure DiJiang with its decay bounded at 512 tokens: the same bound
    // given at inference changes nothing, a 2-token one binds every head and changes the loss,
    // and the report names the change.
    let student = std::env::temp_dir().join(format!("dijiang-cli-horizon-{}", std::process::id()));
    let (m, t, s) = (teacher.to_str().unwrap(), text.to_str().unwrap(), student.to_str().unwrap());
    dijiang(&["convert", "--teacher", m, "--out", s, "--max-horizon", "512"]);
    let eval = |extra: &[&str]| {
        let args = ["eval", "--model", s, "--text", t, "--max-tokens", "128", "--json"];
        json(&dijiang(&[&args[..], extra].concat()))
    };
    let (stored, same, short) = (eval(&[]), eval(&["--max-horizon", "512"]), eval(&["--max-horizon", "2"]));
    let nll = |report: &serde_json::Value| report["nll"].as_f64().unwrap();
    assert_eq!(nll(&stored), nll(&same), "the stored bound given again");
    assert!((nll(&short) - nll(&stored)).abs() > 1e-3, "a 2-token horizon {} against {}", nll(&short), nll(&stored));
    assert_eq!(same["model_change"], "decay horizon 512");
    assert!(stored.get("model_change").is_none());
    // A softmax model has no decay; a horizon under two tokens is refused.
    for (model, horizon, why) in [(m, "512", "softmax attention has no decay"), (s, "1", "at least 2 tokens")] {
        let stderr =
            dijiang_fails(&["eval", "--model", model, "--text", t, "--max-tokens", "64", "--max-horizon", horizon]);
        assert!(stderr.contains(why), "{stderr}");
    }
    std::fs::remove_dir_all(&student).ok();
}

#[test]
fn fidelity_reports_every_layer_and_draws_a_heatmap() {
    let Some((model, text)) = stories() else { return };
    let dir = std::env::temp_dir().join(format!("dijiang-cli-fidelity-{}", std::process::id()));
    let student = dir.join("student");
    dijiang(&["convert", "--teacher", model.to_str().unwrap(), "--out", student.to_str().unwrap()]);
    let png = dir.join("fidelity.png");
    let out = json(&dijiang(&[
        "fidelity",
        "--teacher",
        model.to_str().unwrap(),
        "--student",
        student.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--max-tokens",
        "64",
        "--png",
        png.to_str().unwrap(),
    ]));
    let layers = out["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 5, "stories260K has 5 layers");
    for layer in layers {
        assert_eq!(layer["tv_per_head"].as_array().unwrap().len(), 8);
        let tv = layer["tv_mean"].as_f64().unwrap();
        assert!(tv > 0.0 && tv < 1.0, "{tv}");
    }
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG file");
    // Width and height from the IHDR chunk: 8 heads and 5 layers of 28-pixel cells plus margins.
    let (w, h) =
        (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()));
    assert_eq!((w, h), (80 + 28 * 8 + 100, 56 + 28 * 5 + 16));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_measures_writes_json_and_plots_and_reports() {
    let dir = std::env::temp_dir().join(format!("dijiang-cli-bench-{}", std::process::id()));
    let out = dir.to_str().unwrap();
    dijiang(&[
        "bench",
        "attention",
        "--lens",
        "32,64",
        "--chunks",
        "8,16",
        "--heads",
        "2",
        "--head-dim",
        "8",
        "--reps",
        "1",
        "--out",
        out,
    ]);
    let attention = json(&std::fs::read_to_string(dir.join("attention.json")).unwrap());
    let rows = attention["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        for key in ["softmax_s", "quadratic_s", "chunked_s"] {
            assert!(row[key].as_f64().unwrap() > 0.0, "{key}: {row}");
        }
        assert_eq!(row["chunked_by_chunk"].as_array().unwrap().len(), 2);
    }
    // stories260K's shape decoding at `contexts`, `extra` options, results in `to`.
    let decode = |contexts: &str, extra: &[&str], to: &Path| {
        let to = to.to_str().unwrap();
        let mut args = vec!["bench", "decode", "--models", "stories260k", "--contexts", contexts, "--prefill", "16"];
        args.extend(["--tokens", "2", "--out", to].iter().chain(extra));
        dijiang(&args);
        json(&std::fs::read_to_string(Path::new(to).join("decode.json")).unwrap())
    };
    let decode_reference = decode("16,32,64", &[], &dir);
    let steps = decode_reference["models"][0]["decode"].as_array().unwrap();
    let bytes = |i: usize, key: &str| steps[i][key].as_u64().unwrap();
    // stories260K: 5 layers, 4 KV heads of 8: the KV cache grows linearly with the context; the
    // DiJiang state (5 layers x 8 heads x 8 features x 8, f32) does not.
    assert_eq!(bytes(0, "softmax_state_bytes"), 5 * 2 * 4 * 16 * 8 * 4);
    assert_eq!(bytes(2, "softmax_state_bytes"), 4 * bytes(0, "softmax_state_bytes"));
    assert_eq!(bytes(0, "dijiang_state_bytes"), 5 * 8 * 8 * 8 * 4);
    assert_eq!(bytes(2, "dijiang_state_bytes"), bytes(0, "dijiang_state_bytes"));
    for step in steps {
        for key in ["softmax_attention_step_s", "dijiang_attention_step_s"] {
            assert!(step[key].as_f64().unwrap() > 0.0, "{key}: {step}");
        }
    }
    // The DiJiang model with the default experiment's student (the hybrid, window 64): its linear
    // state (normalised: one more column) and ring buffer of 64 keys, features and values, the
    // same size at every context.
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/../../experiments/default.toml");
    let decode = decode("16,128", &["--experiment", default], &dir.join("hybrid"));
    assert_eq!(decode["dijiang_options"]["window"], 64, "{decode}");
    let steps = decode["models"][0]["decode"].as_array().unwrap();
    let hybrid = 5 * (8 * 8 * 9 + 3 * 4 * 64 * 8) * 4;
    assert!(steps.iter().all(|s| s["dijiang_state_bytes"].as_u64() == Some(hybrid)), "{decode}");
    assert!(steps.iter().all(|s| s["dijiang_tokens_per_s"].as_f64().unwrap() > 0.0), "{decode}");
    // The training bench on an experiment (the stories260K one, with its teacher's preset).
    let experiment = dir.join("tiny.toml");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../experiments/stories260k.toml"))
        .unwrap()
        .replace("[teacher]", "[teacher]\npreset = \"stories260k\"");
    std::fs::write(&experiment, text).unwrap();
    dijiang(&[
        "bench",
        "train",
        "--model",
        "stories260k",
        "--shapes",
        "16x2",
        "--experiment",
        experiment.to_str().unwrap(),
        "--reps",
        "1",
        "--out",
        out,
    ]);
    let train = json(&std::fs::read_to_string(dir.join("train.json")).unwrap());
    let rows = train["rows"].as_array().unwrap();
    assert!(rows.len() >= 2, "{train}");
    assert!(rows.iter().all(|r| r["tokens_per_s"].as_f64().unwrap() > 0.0));
    assert!(rows[0]["achieved_flops"].as_f64().unwrap() > 0.0);
    // The prepared GPU check's steps (bench/gpu-check.sh) on a small preset: both 7B recipes.
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/../../experiments");
    let both = format!("{repo}/dijiang-7b.toml,{repo}/dijiang-7b-reference.toml");
    dijiang(
        &["bench", "recipes", "--experiments", &both, "--preset", "stories260k", "--block", "32", "--steps", "1"]
            .into_iter()
            .chain(["--half-check-preset", "stories260k", "--out", out])
            .collect::<Vec<_>>(),
    );
    let recipes = json(&std::fs::read_to_string(dir.join("recipes.json")).unwrap());
    let stages: Vec<&serde_json::Value> =
        recipes["experiments"].as_array().unwrap().iter().flat_map(|e| e["stages"].as_array().unwrap()).collect();
    assert_eq!(stages.len(), 3, "transfer and LoRA distillation, then the full fine-tune: {recipes}");
    assert!(
        stages.iter().all(|s| s["tokens_per_s"].as_f64().unwrap() > 0.0 && s["estimate_bytes"].as_u64().unwrap() > 0)
    );
    if cfg!(feature = "flex") {
        assert_eq!(recipes["half_storage_logits_error"].as_f64(), Some(0.0), "{recipes}");
    }
    dijiang(&["bench", "report", "--out", out]);
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(summary.contains("## Attention forward + backward") && summary.contains("## Targets"), "{summary}");
    assert!(summary.contains("attention step, softmax / DiJiang (ms)"), "{summary}");
    // The default (Flex) build measures NdArray beside itself in the same run; the report puts both
    // side by side.
    if cfg!(all(feature = "flex", not(feature = "wgpu"), not(feature = "cuda"))) {
        assert_eq!(decode["machine"]["backend_name"], "flex");
        for name in ["decode-ndarray.json", "train-ndarray.json"] {
            let peer = json(&std::fs::read_to_string(dir.join(name)).unwrap());
            assert_eq!(peer["machine"]["backend_name"], "ndarray", "{name}");
        }
        let side = summary.split("## CPU backends side by side").nth(1).expect("the side-by-side table");
        assert!(side.contains("| flex | ndarray | PyTorch |") && side.contains("stories260k DiJiang decoding at 64"));
    }
    for png in ["attention.png", "decode.png", "state-memory.png"] {
        let bytes = std::fs::read(dir.join(png)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png} is a PNG file");
    }
    std::fs::remove_dir_all(&dir).ok();
}
