//! The bench's summary: `summary.md` (tables, the targets and by how much each is met or missed,
//! ratios to PyTorch where `pytorch.json` exists) and the plots `attention.png`, `decode.png` and
//! `state-memory.png`, all from the JSON files the measurements wrote.

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

pub fn run(dir: &Path) -> Result<()> {
    let attention = read(dir, "attention.json")?;
    let decode = read(dir, "decode.json")?;
    let train = read(dir, "train.json")?;
    let pytorch = read(dir, "pytorch.json")?;
    anyhow::ensure!(
        attention.is_some() || decode.is_some() || train.is_some(),
        "{} has no attention.json, decode.json or train.json: run `dijiang bench all` first",
        dir.display()
    );
    let mut md = String::new();
    let mut targets = Vec::new();
    let backend = [&attention, &decode, &train]
        .iter()
        .find_map(|v| v.as_ref().and_then(|v| v["machine"]["backend"].as_str().map(str::to_string)))
        .unwrap_or_default();
    let cpu = [&attention, &decode, &train]
        .iter()
        .find_map(|v| v.as_ref().and_then(|v| v["machine"]["cpu"].as_str().map(str::to_string)))
        .unwrap_or_default();
    writeln!(md, "# Benchmarks\n\n{backend}; CPU: {cpu}.\n")?;

    if let Some(a) = &attention {
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
    }

    if let Some(d) = &decode {
        let torch_decode = |model: &str, context: u64| {
            pytorch.as_ref().and_then(|p| {
                p["models"][model]["decode"]
                    .as_array()?
                    .iter()
                    .find(|r| r["context"].as_u64() == Some(context))
                    .and_then(|r| r["tokens_per_s"].as_f64())
            })
        };
        let mut speed = Vec::new();
        let mut memory = Vec::new();
        for m in rows(d, "models") {
            let name = m["model"].as_str().unwrap_or("?").to_string();
            writeln!(
                md,
                "## Decoding, {name} (tokens/s, one sequence)\n\n| context | softmax + KV cache | DiJiang recurrent | DiJiang / softmax | KV cache | DiJiang state | PyTorch HF + KV cache | DiJiang / PyTorch | attention step, softmax / DiJiang (ms) | ratio |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
            )?;
            let (mut s_series, mut d_series, mut t_series) = (
                Series::new(&format!("{name} softmax")),
                Series::new(&format!("{name} DiJiang")),
                Series::new(&format!("{name} PyTorch")),
            );
            let (mut s_mem, mut d_mem) =
                (Series::new(&format!("{name} KV cache")), Series::new(&format!("{name} DiJiang state")));
            for r in rows(&m, "decode") {
                let c = r["context"].as_u64().unwrap_or(0);
                let (s, dj) = (f(&r["softmax_tokens_per_s"]), f(&r["dijiang_tokens_per_s"]));
                let (sb, db) = (f(&r["softmax_state_bytes"]), f(&r["dijiang_state_bytes"]));
                let torch = torch_decode(&name, c);
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
                let x = c as f64;
                for (series, value) in [
                    (&mut s_series, s),
                    (&mut d_series, dj),
                    (&mut t_series, torch),
                    (&mut s_mem, mib(sb)),
                    (&mut d_mem, mib(db)),
                ] {
                    if let Some(v) = value {
                        series.points.push((x, v));
                    }
                }
                if c == 4096 {
                    targets.push(target(
                        &format!("{name} decoding at 4096 tokens vs softmax + KV cache"),
                        s.zip(dj).map(|(s, d)| d / s),
                        5.0,
                    ));
                    targets.push(target(
                        &format!(
                            "{name} attention layer's decoding step at 4096 tokens vs softmax + KV cache (for scale)"
                        ),
                        sa.zip(da).map(|(s, d)| s / d),
                        5.0,
                    ));
                }
            }
            if let (Some(first), Some(last)) = (d_mem.points.first(), d_mem.points.last()) {
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
            let prefill = rows(&m, "prefill");
            if !prefill.is_empty() {
                writeln!(md, "Prefill (tokens/s): ")?;
                for r in prefill {
                    let len = r["len"].as_u64().unwrap_or(0);
                    let torch = pytorch.as_ref().and_then(|p| {
                        p["models"][name.as_str()]["prefill"]
                            .as_array()?
                            .iter()
                            .find(|x| x["len"].as_u64() == Some(len))
                            .and_then(|x| x["tokens_per_s"].as_f64())
                    });
                    writeln!(
                        md,
                        "{len} tokens: softmax {}, DiJiang {}, PyTorch HF {};",
                        fmt(f(&r["softmax_tokens_per_s"]), 1),
                        fmt(f(&r["dijiang_tokens_per_s"]), 1),
                        fmt(torch, 1)
                    )?;
                }
                writeln!(md)?;
            }
            speed.extend([s_series, d_series]);
            if !t_series.points.is_empty() {
                speed.push(t_series);
            }
            memory.extend([s_mem, d_mem]);
        }
        line_chart(&dir.join("decode.png"), "Decoding speed", "context (tokens)", "tokens/s", &speed, true)?;
        line_chart(&dir.join("state-memory.png"), "Decoding state memory", "context (tokens)", "MiB", &memory, true)?;
        writeln!(md, "![decode](decode.png) ![state memory](state-memory.png)\n")?;
    }

    if let Some(t) = &train {
        let peak = f(&t["matmul_peak"]["flops"]);
        let torch_peak = pytorch.as_ref().and_then(|p| f(&p["matmul_peak"]["flops"]));
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
            let torch = name.contains(" LM").then_some(()).and_then(|_| {
                pytorch.as_ref().and_then(|p| {
                    p["models"][model]["train"]
                        .as_array()?
                        .iter()
                        .find(|x| x["block"].as_u64() == Some(block) && x["batch"].as_u64() == Some(batch))
                        .and_then(|x| x["tokens_per_s"].as_f64())
                })
            });
            writeln!(
                md,
                "| {name} | {block} x {batch} | {} | {} | {} | {} | {} |",
                fmt(f(&r["step_s"]), 3),
                fmt(ours, 0),
                achieved.map_or("-".into(), |a| format!(
                    "{:.1} ({:.0}%)",
                    a / 1e9,
                    100.0 * a / peak.unwrap_or(f64::NAN)
                )),
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
    }
    if let Some(p) = &pytorch {
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
