//! The bench's summary: `summary.md` (tables, the targets and by how much each is met or missed,
//! ratios to PyTorch where `pytorch.json` exists) and the plots `attention.png`, `decode.png` and
//! `state-memory.png`, all from the JSON files the measurements wrote; where a CPU peer ran beside
//! the binary's backend (`decode-ndarray.json`, `train-ndarray.json`), a table of both backends
//! and PyTorch side by side.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::plot::{Series, line_chart};

fn read(dir: &Path, name: &str) -> Result<Option<Value>> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?))
}

fn rows(v: &Value, key: &str) -> Vec<Value> {
    v[key].as_array().cloned().unwrap_or_default()
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// "met (x3.2 >= 4)" or "missed: x2.1 < 4 (by 1.9x)".
fn target(label: &str, value: Option<f64>, goal: f64) -> String {
    match value {
        Some(v) if v >= goal => format!("- {label}: **met**, {v:.2}x (target {goal}x)"),
        Some(v) => format!("- {label}: **missed**, {v:.2}x (target {goal}x; short by a factor {:.2})", goal / v),
        None => format!("- {label}: not measured"),
    }
}

/// The JSON files of one bench directory.
struct Results {
    attention: Option<Value>,
    decode: Option<Value>,
    train: Option<Value>,
    pytorch: Option<Value>,
    /// The CPU peer's runs (`decode-PEER.json`, `train-PEER.json`), with its name.
    peer: Option<(String, Option<Value>, Option<Value>)>,
}

impl Results {
    fn read(dir: &Path) -> Result<Self> {
        let (attention, decode, train) =
            (read(dir, "attention.json")?, read(dir, "decode.json")?, read(dir, "train.json")?);
        anyhow::ensure!(
            attention.is_some() || decode.is_some() || train.is_some(),
            "{} has no attention.json, decode.json or train.json: run `dijiang bench all` first",
            dir.display()
        );
        // Only the peer this binary measures: files of an older run with another peer stay out.
        let peer = match crate::backend::CPU_PEER {
            Some(name) => {
                let (d, t) = (read(dir, &format!("decode-{name}.json"))?, read(dir, &format!("train-{name}.json"))?);
                (d.is_some() || t.is_some()).then(|| (name.to_string(), d, t))
            }
            None => None,
        };
        Ok(Self { attention, decode, train, pytorch: read(dir, "pytorch.json")?, peer })
    }

    /// The first measurement's `machine.KEY`.
    fn machine(&self, key: &str) -> String {
        [&self.attention, &self.decode, &self.train]
            .iter()
            .find_map(|v| v.as_ref().and_then(|v| v["machine"][key].as_str().map(str::to_string)))
            .unwrap_or_default()
    }

    /// PyTorch's row of `models.MODEL.KIND` whose `key` is `value`, field `tokens_per_s`.
    fn torch(&self, model: &str, kind: &str, matches: impl Fn(&Value) -> bool) -> Option<f64> {
        self.pytorch.as_ref()?["models"][model][kind].as_array()?.iter().find(|r| matches(r))?["tokens_per_s"].as_f64()
    }

    fn torch_decode(&self, model: &str, context: u64) -> Option<f64> {
        self.torch(model, "decode", |r| r["context"].as_u64() == Some(context))
    }

    fn torch_prefill(&self, model: &str, len: u64) -> Option<f64> {
        self.torch(model, "prefill", |r| r["len"].as_u64() == Some(len))
    }

    fn torch_train(&self, model: &str, block: u64, batch: u64) -> Option<f64> {
        self.torch(model, "train", |r| r["block"].as_u64() == Some(block) && r["batch"].as_u64() == Some(batch))
    }
}

pub fn run(dir: &Path) -> Result<()> {
    let results = Results::read(dir)?;
    let mut md = String::new();
    let mut targets = Vec::new();
    writeln!(md, "# Benchmarks\n\n{}; CPU: {}.\n", results.machine("backend"), results.machine("cpu"))?;
    if let Some(a) = &results.attention {
        attention_section(&mut md, &mut targets, a, dir)?;
    }
    if let Some(d) = &results.decode {
        decode_section(&mut md, &mut targets, d, &results, dir)?;
    }
    if let Some(t) = &results.train {
        train_section(&mut md, &mut targets, t, &results)?;
    }
    if results.peer.is_some() {
        backends_section(&mut md, &results)?;
    }
    if let Some(p) = &results.pytorch {
        writeln!(
            md,
            "PyTorch baseline: torch {}, transformers {}, {} threads (`just bench-pytorch`).\n",
            p["torch"], p["transformers"], p["threads"]
        )?;
    }
    writeln!(md, "## Targets\n\n{}", targets.join("\n"))?;
    let path = dir.join("summary.md");
    dijiang_train::checkpoint::write_atomic(&path, md.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{md}");
    println!("report -> {}", path.display());
    Ok(())
}

fn attention_section(md: &mut String, targets: &mut Vec<String>, a: &Value, dir: &Path) -> Result<()> {
    writeln!(
        md,
        "## Attention forward + backward ({} heads x {}, batch 1)\n\n| tokens | softmax | DiJiang quadratic | DiJiang chunked (best chunk) | hybrid W={} chunked (best chunk) | quadratic / chunked | softmax / chunked | hybrid / chunked |\n| --- | --- | --- | --- | --- | --- | --- | --- |",
        a["heads"], a["head_dim"], a["window"]
    )?;
    let mut series = vec![
        Series::new("softmax"),
        Series::new("DiJiang quadratic"),
        Series::new("DiJiang chunked"),
        Series::new("hybrid chunked"),
    ];
    for r in rows(a, "rows") {
        let t = r["len"].as_u64().unwrap_or(0);
        let (s, q, c) = (f(&r["softmax_s"]), f(&r["quadratic_s"]), f(&r["chunked_s"]));
        let hybrid = f(&r["hybrid_s"]);
        writeln!(
            md,
            "| {t} | {} s | {} s | {} s ({}) | {} s ({}) | {} | {} | {} |",
            fmt(s, 4),
            fmt(q, 4),
            fmt(c, 4),
            r["best_chunk"],
            fmt(hybrid, 4),
            r["hybrid_best_chunk"],
            fmt(q.zip(c).map(|(q, c)| q / c), 2),
            fmt(s.zip(c).map(|(s, c)| s / c), 2),
            fmt(hybrid.zip(c).map(|(h, c)| h / c), 2)
        )?;
        for (series, v) in series.iter_mut().zip([s, q, c, hybrid]) {
            if let Some(v) = v {
                series.points.push((t as f64, v));
            }
        }
        if t == 4096 {
            targets.push(target("chunked vs quadratic fwd+bwd at 4096 tokens", q.zip(c).map(|(q, c)| q / c), 4.0));
        }
        if t >= 2048 {
            targets.push(target(
                &format!("chunked vs softmax fwd+bwd at {t} tokens"),
                s.zip(c).map(|(s, c)| s / c),
                1.0,
            ));
        }
    }
    line_chart(&dir.join("attention.png"), "Attention forward + backward", "tokens", "seconds", &series, true)?;
    writeln!(md, "\n![attention](attention.png)\n")?;
    Ok(())
}

/// A model's decoding curves, for the plots.
struct DecodeSeries {
    speed: Vec<Series>,
    memory: Vec<Series>,
}

fn decode_section(md: &mut String, targets: &mut Vec<String>, d: &Value, results: &Results, dir: &Path) -> Result<()> {
    let (mut speed, mut memory) = (Vec::new(), Vec::new());
    for m in rows(d, "models") {
        let curves = decode_model(md, targets, &m, results)?;
        speed.extend(curves.speed);
        memory.extend(curves.memory);
    }
    line_chart(&dir.join("decode.png"), "Decoding speed", "context (tokens)", "tokens/s", &speed, true)?;
    line_chart(&dir.join("state-memory.png"), "Decoding state memory", "context (tokens)", "MiB", &memory, true)?;
    writeln!(md, "![decode](decode.png) ![state memory](state-memory.png)\n")?;
    Ok(())
}

/// One model's decoding curves as the rows fill them.
struct ModelCurves {
    softmax: Series,
    dijiang: Series,
    torch: Series,
    kv_cache: Series,
    state: Series,
}

/// One model's decoding table, prefill line and targets.
fn decode_model(md: &mut String, targets: &mut Vec<String>, m: &Value, results: &Results) -> Result<DecodeSeries> {
    let name = m["model"].as_str().unwrap_or("?").to_string();
    writeln!(
        md,
        "## Decoding, {name} (tokens/s, one sequence)\n\n| context | softmax + KV cache | DiJiang recurrent | DiJiang / softmax | KV cache | DiJiang state | PyTorch HF + KV cache | DiJiang / PyTorch | attention step, softmax / DiJiang (ms) | ratio |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )?;
    let mut curves = ModelCurves {
        softmax: Series::new(&format!("{name} softmax")),
        dijiang: Series::new(&format!("{name} DiJiang")),
        torch: Series::new(&format!("{name} PyTorch")),
        kv_cache: Series::new(&format!("{name} KV cache")),
        state: Series::new(&format!("{name} DiJiang state")),
    };
    for r in rows(m, "decode") {
        decode_row(md, targets, (&name, &r), results, &mut curves)?;
    }
    if let (Some(first), Some(last)) = (curves.state.points.first(), curves.state.points.last()) {
        let constant = (first.1 - last.1).abs() < 1e-12;
        targets.push(format!(
            "- {name} DiJiang state memory constant in context: **{}** ({:.2} MiB from {} to {} tokens)",
            if constant { "met" } else { "missed" },
            last.1,
            first.0,
            last.0
        ));
    }
    writeln!(md)?;
    prefill_line(md, targets, &name, &rows(m, "prefill"), results)?;
    let mut speed = vec![curves.softmax, curves.dijiang];
    if !curves.torch.points.is_empty() {
        speed.push(curves.torch);
    }
    Ok(DecodeSeries { speed, memory: vec![curves.kv_cache, curves.state] })
}

/// One context's row of a model's decoding table, its points and its targets.
fn decode_row(
    md: &mut String,
    targets: &mut Vec<String>,
    (name, r): (&str, &Value),
    results: &Results,
    curves: &mut ModelCurves,
) -> Result<()> {
    let c = r["context"].as_u64().unwrap_or(0);
    let (s, dj) = (f(&r["softmax_tokens_per_s"]), f(&r["dijiang_tokens_per_s"]));
    let (sb, db) = (f(&r["softmax_state_bytes"]), f(&r["dijiang_state_bytes"]));
    let torch = results.torch_decode(name, c);
    let mib = |b: Option<f64>| b.map(|b| b / (1u64 << 20) as f64);
    let (sa, da) = (f(&r["softmax_attention_step_s"]), f(&r["dijiang_attention_step_s"]));
    let ms = |t: Option<f64>| fmt(t.map(|t| t * 1e3), 2);
    writeln!(
        md,
        "| {c} | {} | {} | {} | {} MiB | {} MiB | {} | {} | {} / {} | {} |",
        fmt(s, 1),
        fmt(dj, 1),
        fmt(s.zip(dj).map(|(s, d)| d / s), 2),
        fmt(mib(sb), 1),
        fmt(mib(db), 2),
        fmt(torch, 1),
        fmt(torch.zip(dj).map(|(t, d)| d / t), 2),
        ms(sa),
        ms(da),
        fmt(sa.zip(da).map(|(s, d)| s / d), 2)
    )?;
    for (series, value) in [
        (&mut curves.softmax, s),
        (&mut curves.dijiang, dj),
        (&mut curves.torch, torch),
        (&mut curves.kv_cache, mib(sb)),
        (&mut curves.state, mib(db)),
    ] {
        if let Some(v) = value {
            series.points.push((c as f64, v));
        }
    }
    if results.pytorch.is_some() {
        targets.push(target(
            &format!("{name} DiJiang decoding at {c} tokens vs PyTorch HF + KV cache"),
            torch.zip(dj).map(|(t, d)| d / t),
            1.0,
        ));
    }
    if c == 4096 {
        targets.push(target(
            &format!("{name} decoding at 4096 tokens vs softmax + KV cache"),
            s.zip(dj).map(|(s, d)| d / s),
            5.0,
        ));
        targets.push(target(
            &format!("{name} attention layer's decoding step at 4096 tokens vs softmax + KV cache (for scale)"),
            sa.zip(da).map(|(s, d)| s / d),
            5.0,
        ));
    }
    Ok(())
}

fn prefill_line(
    md: &mut String,
    targets: &mut Vec<String>,
    name: &str,
    prefill: &[Value],
    results: &Results,
) -> Result<()> {
    if prefill.is_empty() {
        return Ok(());
    }
    writeln!(md, "Prefill (tokens/s): ")?;
    for r in prefill {
        let len = r["len"].as_u64().unwrap_or(0);
        let torch = results.torch_prefill(name, len);
        let dj = f(&r["dijiang_tokens_per_s"]);
        writeln!(
            md,
            "{len} tokens: softmax {}, DiJiang {}, PyTorch HF {};",
            fmt(f(&r["softmax_tokens_per_s"]), 1),
            fmt(dj, 1),
            fmt(torch, 1)
        )?;
        if len == 2048 && results.pytorch.is_some() {
            targets.push(target(
                &format!("{name} DiJiang prefill of 2048 tokens vs PyTorch HF"),
                torch.zip(dj).map(|(t, d)| d / t),
                1.0,
            ));
        }
    }
    writeln!(md)?;
    Ok(())
}

fn train_section(md: &mut String, targets: &mut Vec<String>, t: &Value, results: &Results) -> Result<()> {
    let peak = f(&t["matmul_peak"]["flops"]);
    let torch_peak = results.pytorch.as_ref().and_then(|p| f(&p["matmul_peak"]["flops"]));
    writeln!(
        md,
        "## Training steps\n\nMatmul peak of this backend ({}^3): {} GFLOP/s; PyTorch's on the same CPU: {} GFLOP/s.\n\n| step | tokens | s/step | tokens/s | GFLOP/s (% of matmul peak) | PyTorch HF tokens/s | ours / PyTorch |\n| --- | --- | --- | --- | --- | --- | --- |",
        t["matmul_peak"]["n"],
        fmt(peak.map(|p| p / 1e9), 1),
        fmt(torch_peak.map(|p| p / 1e9), 1)
    )?;
    for r in rows(t, "rows") {
        let name = r["name"].as_str().unwrap_or("?");
        let (block, batch) = (r["block"].as_u64().unwrap_or(0), r["batch"].as_u64().unwrap_or(0));
        let achieved = f(&r["achieved_flops"]);
        let ours = f(&r["tokens_per_s"]);
        let model = r["model"].as_str().unwrap_or_default();
        let torch = if name.contains(" LM") { results.torch_train(model, block, batch) } else { None };
        writeln!(
            md,
            "| {name} | {block} x {batch} | {} | {} | {} | {} | {} |",
            fmt(f(&r["step_s"]), 3),
            fmt(ours, 0),
            achieved.map_or("-".into(), |a| format!("{:.1} ({:.0}%)", a / 1e9, 100.0 * a / peak.unwrap_or(f64::NAN))),
            fmt(torch, 0),
            fmt(ours.zip(torch).map(|(o, t)| o / t), 2)
        )?;
        if model == "pythia-70m" && name.contains(" LM") && block == 2048 {
            targets.push(target(
                "pythia-70m-DiJiang training step at block 2048 vs PyTorch HF GPT-NeoX",
                ours.zip(torch).map(|(o, t)| o / t),
                1.0,
            ));
        }
    }
    writeln!(md)?;
    Ok(())
}

/// One measurement across the backends: its value on the binary's backend, on the peer, and
/// PyTorch's where it has one.
struct SideBySide {
    label: String,
    ours: Option<f64>,
    peer: Option<f64>,
    torch: Option<f64>,
}

/// The binary's backend, its CPU peer and PyTorch in one table (all measured in the same run).
fn backends_section(md: &mut String, results: &Results) -> Result<()> {
    let Some((peer_name, peer_decode, peer_train)) = &results.peer else { return Ok(()) };
    let ours_name = results.machine("backend_name");
    let mut lines = Vec::new();
    if let (Some(t), Some(p)) = (&results.train, peer_train) {
        lines.push(SideBySide {
            label: "matmul peak (GFLOP/s)".into(),
            ours: f(&t["matmul_peak"]["flops"]).map(|x| x / 1e9),
            peer: f(&p["matmul_peak"]["flops"]).map(|x| x / 1e9),
            torch: results.pytorch.as_ref().and_then(|p| f(&p["matmul_peak"]["flops"])).map(|x| x / 1e9),
        });
        for r in rows(t, "rows") {
            let name = r["name"].as_str().unwrap_or("?");
            let (block, batch) = (r["block"].as_u64().unwrap_or(0), r["batch"].as_u64().unwrap_or(0));
            let model = r["model"].as_str().unwrap_or_default();
            let peer = rows(p, "rows").into_iter().find(|x| x["name"] == r["name"] && x["block"] == r["block"]);
            lines.push(SideBySide {
                label: format!("train {name}, {block} x {batch} (tokens/s)"),
                ours: f(&r["tokens_per_s"]),
                peer: peer.and_then(|x| f(&x["tokens_per_s"])),
                torch: if name.contains(" LM") { results.torch_train(model, block, batch) } else { None },
            });
        }
    }
    if let (Some(d), Some(p)) = (&results.decode, peer_decode) {
        for m in rows(d, "models") {
            let model = m["model"].as_str().unwrap_or("?");
            let peer_model = rows(p, "models").into_iter().find(|x| x["model"] == m["model"]);
            let peer_row = |kind: &str, key: &str, value: &Value| {
                peer_model.as_ref().and_then(|pm| rows(pm, kind).into_iter().find(|x| &x[key] == value))
            };
            // (rows, their key, the label's measurement)
            let kinds = [("decode", "context", "decoding at"), ("prefill", "len", "prefill")];
            for (kind, key, what) in kinds {
                for r in rows(&m, kind) {
                    let at = r[key].as_u64().unwrap_or(0);
                    let peer = peer_row(kind, key, &r[key]);
                    lines.push(SideBySide {
                        label: format!("{model} DiJiang {what} {at} (tokens/s)"),
                        ours: f(&r["dijiang_tokens_per_s"]),
                        peer: peer.as_ref().and_then(|x| f(&x["dijiang_tokens_per_s"])),
                        torch: results.torch(model, kind, |x| x[key] == r[key]),
                    });
                }
            }
        }
    }
    writeln!(
        md,
        "## CPU backends side by side (one run)\n\n| measurement | {ours_name} | {peer_name} | PyTorch | {ours_name} / {peer_name} | {ours_name} / PyTorch | {peer_name} / PyTorch |\n| --- | --- | --- | --- | --- | --- | --- |"
    )?;
    let ratio = |a: Option<f64>, b: Option<f64>| fmt(a.zip(b).map(|(a, b)| a / b), 2);
    for l in &lines {
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            l.label,
            fmt(l.ours, 1),
            fmt(l.peer, 1),
            fmt(l.torch, 1),
            ratio(l.ours, l.peer),
            ratio(l.ours, l.torch),
            ratio(l.peer, l.torch)
        )?;
    }
    writeln!(md)?;
    Ok(())
}
