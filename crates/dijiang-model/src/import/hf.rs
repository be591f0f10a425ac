//! HF checkpoints (LLaMA, GPT-NeoX, and the reference DiJiang fork of GPT-NeoX): the explicit
//! table from our parameter names to HF tensor names, and the layout fixes on the way:
//! `[out, in]` -> `[in, out]` transposes, GPT-NeoX's fused per-head `query_key_value` split, and
//! the reference's `D1`/`D2` decay tensors turned into one `ln(gamma)` per head.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::safetensors::SafetensorsFiles;
use crate::config::{Architecture, AttentionKernelConfig, DiJiangConfig, ModelConfig};
use crate::error::ModelError;
use crate::store::{HostTensor, TensorStore};

/// How one of our parameters is read from HF tensors.
#[derive(Debug, Clone, PartialEq)]
enum Rule {
    /// Same layout.
    Plain(String),
    /// A Linear weight: HF `[out, in]` -> ours `[in, out]`.
    Transposed(String),
    /// q, k or v (`part` 0, 1, 2) of GPT-NeoX's fused `query_key_value`, laid out per head as
    /// `[q | k | v]` blocks of `head_dim` rows.
    FusedQkv { name: String, part: usize, bias: bool },
    /// `ln(gamma)` per head from the reference's `D1 = gamma^n`, `D2 = gamma^-n`.
    Decay { d1: String, d2: String },
}

impl Rule {
    fn sources(&self) -> Vec<&str> {
        match self {
            Rule::Plain(n) | Rule::Transposed(n) | Rule::FusedQkv { name: n, .. } => vec![n],
            Rule::Decay { d1, d2 } => vec![d1, d2],
        }
    }
}

/// Buffers HF checkpoints may carry that are not parameters.
fn ignorable(name: &str) -> bool {
    name.ends_with(".rotary_emb.inv_freq")
        || name.ends_with(".attention.bias")
        || name.ends_with(".attention.masked_bias")
}

/// The table: our name -> rule, per architecture. `None`: HF checkpoints have no such tensor.
fn rule(arch: Architecture, ours: &str) -> Option<Rule> {
    use Rule::*;
    let (layer, rest) = match ours.strip_prefix("layers.") {
        Some(r) => {
            let (i, rest) = r.split_once('.')?;
            (Some(i), rest)
        }
        None => (None, ours),
    };
    match (arch, layer) {
        (Architecture::Llama, None) => Some(match rest {
            "embed.weight" => Plain("model.embed_tokens.weight".into()),
            "final_norm.gamma" => Plain("model.norm.weight".into()),
            "lm_head.weight" => Transposed("lm_head.weight".into()),
            _ => return None,
        }),
        (Architecture::Llama, Some(i)) => {
            let p = format!("model.layers.{i}");
            Some(match rest {
                "attn_norm.gamma" => Plain(format!("{p}.input_layernorm.weight")),
                "mlp_norm.gamma" => Plain(format!("{p}.post_attention_layernorm.weight")),
                "attn.q.weight" | "attn.k.weight" | "attn.v.weight" | "attn.o.weight" => {
                    Transposed(format!("{p}.self_attn.{}_proj.weight", &rest[5..6]))
                }
                "attn.q.bias" | "attn.k.bias" | "attn.v.bias" | "attn.o.bias" => {
                    Plain(format!("{p}.self_attn.{}_proj.bias", &rest[5..6]))
                }
                "mlp.gate.weight" => Transposed(format!("{p}.mlp.gate_proj.weight")),
                "mlp.up.weight" => Transposed(format!("{p}.mlp.up_proj.weight")),
                "mlp.down.weight" => Transposed(format!("{p}.mlp.down_proj.weight")),
                _ => return None,
            })
        }
        (Architecture::GptNeox, None) => Some(match rest {
            "embed.weight" => Plain("gpt_neox.embed_in.weight".into()),
            "final_norm.gamma" => Plain("gpt_neox.final_layer_norm.weight".into()),
            "final_norm.beta" => Plain("gpt_neox.final_layer_norm.bias".into()),
            "lm_head.weight" => Transposed("embed_out.weight".into()),
            _ => return None,
        }),
        (Architecture::GptNeox, Some(i)) => {
            let p = format!("gpt_neox.layers.{i}");
            let a = format!("{p}.attention");
            let qkv = |part, bias| FusedQkv {
                name: format!("{a}.query_key_value.{}", if bias { "bias" } else { "weight" }),
                part,
                bias,
            };
            Some(match rest {
                "attn_norm.gamma" => Plain(format!("{p}.input_layernorm.weight")),
                "attn_norm.beta" => Plain(format!("{p}.input_layernorm.bias")),
                "mlp_norm.gamma" => Plain(format!("{p}.post_attention_layernorm.weight")),
                "mlp_norm.beta" => Plain(format!("{p}.post_attention_layernorm.bias")),
                "attn.q.weight" => qkv(0, false),
                "attn.k.weight" => qkv(1, false),
                "attn.v.weight" => qkv(2, false),
                "attn.q.bias" => qkv(0, true),
                "attn.k.bias" => qkv(1, true),
                "attn.v.bias" => qkv(2, true),
                "attn.o.weight" => Transposed(format!("{a}.dense.weight")),
                "attn.o.bias" => Plain(format!("{a}.dense.bias")),
                "mlp.up.weight" => Transposed(format!("{p}.mlp.dense_h_to_4h.weight")),
                "mlp.up.bias" => Plain(format!("{p}.mlp.dense_h_to_4h.bias")),
                "mlp.down.weight" => Transposed(format!("{p}.mlp.dense_4h_to_h.weight")),
                "mlp.down.bias" => Plain(format!("{p}.mlp.dense_4h_to_h.bias")),
                // The reference DiJiang attention's own parameters.
                "attn.kernel.proj" => Plain(format!("{a}.proj_matrix")),
                "attn.kernel.gate" => Plain(format!("{a}.W_G")),
                "attn.kernel.group_norm.gamma" => Plain(format!("{a}.group_norm.weight")),
                "attn.kernel.group_norm.beta" => Plain(format!("{a}.group_norm.bias")),
                "attn.kernel.log_decay" => Decay { d1: format!("{a}.D1"), d2: format!("{a}.D2") },
                _ => return None,
            })
        }
    }
}

/// Splits GPT-NeoX's fused qkv: rows `[h*3d + part*d, h*3d + (part+1)*d)` of every head `h`.
pub fn split_fused_qkv(fused: &HostTensor, heads: usize, head_dim: usize, part: usize) -> HostTensor {
    let per_head: Vec<HostTensor> =
        (0..heads).map(|h| fused.rows(h * 3 * head_dim + part * head_dim, head_dim)).collect();
    HostTensor::cat_rows(&per_head)
}

/// `ln(gamma_h)` from the reference's `D1[0, h, n, 0] = gamma_h^n` and `D2[0, h, n, 0] = gamma_h^-n`,
/// or an error naming the head and position where they stop following that form.
pub fn decay_from_reference(
    d1: &HostTensor,
    d2: &HostTensor,
    path: &Path,
    layer_name: &str,
) -> Result<HostTensor, ModelError> {
    let (heads, n) = match d1.shape[..] {
        [_, heads, n, _] => (heads, n),
        _ => (0, 0),
    };
    if d1.shape != d2.shape || d1.shape.len() != 4 || n < 2 {
        return Err(ModelError::invalid(
            path,
            format!("{layer_name}: D1 {:?} and D2 {:?} must both be [1, heads, positions >= 2, 1]", d1.shape, d2.shape),
        ));
    }
    let mut log_gamma = Vec::with_capacity(heads);
    for h in 0..heads {
        let row = |t: &HostTensor, i: usize| t.data[h * n + i] as f64;
        let gamma = row(d1, 1) / row(d1, 0);
        if !(gamma > 0.0 && gamma <= 1.0) {
            return Err(ModelError::invalid(
                path,
                format!("{layer_name}: head {h}: D1 gives gamma = {gamma}, not in (0, 1]"),
            ));
        }
        let lg = gamma.ln();
        for i in 0..n {
            let (want1, want2) = ((lg * i as f64).exp(), (-lg * i as f64).exp());
            let (got1, got2) = (row(d1, i), row(d2, i));
            if (got1 - want1).abs() > 1e-3 * want1 || (got2 - want2).abs() > 1e-3 * want2 {
                return Err(ModelError::invalid(
                    path,
                    format!(
                        "{layer_name}: head {h}, position {i}: D1 = {got1:e}, D2 = {got2:e} do not follow \
                         gamma^n = {want1:e}, gamma^-n = {want2:e} (gamma = {gamma}); this importer only \
                         accepts the reference's decay form"
                    ),
                ));
            }
        }
        log_gamma.push(lg as f32);
    }
    Ok(HostTensor::new(vec![heads], log_gamma))
}

/// An HF checkpoint directory (or file) read through the table above.
#[derive(Debug)]
pub struct HfCheckpoint {
    files: SafetensorsFiles,
    config: ModelConfig,
    used: BTreeSet<String>,
}

impl HfCheckpoint {
    /// Opens the weights and reads `config.json` beside them. A GPT-NeoX checkpoint that carries
    /// `proj_matrix` tensors is the reference DiJiang fork: its config gets the DiJiang kernel.
    pub fn open(weights: &Path, config_json: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(config_json).map_err(|e| ModelError::io(config_json, e))?;
        let mut config = ModelConfig::from_hf_config(&text).map_err(|e| match e {
            ModelError::Config(m) => ModelError::invalid(config_json, m),
            other => other,
        })?;
        let files = SafetensorsFiles::open(weights)?;
        if config.arch == Architecture::GptNeox && files.names().any(|n| n.ends_with(".attention.proj_matrix")) {
            config.attention = AttentionKernelConfig::Dijiang(DiJiangConfig::default());
        }
        Ok(Self { files, config, used: BTreeSet::new() })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn storage(&self) -> String {
        self.files.storage()
    }

    fn read(&mut self, name: &str) -> Result<HostTensor, ModelError> {
        self.used.insert(name.to_string());
        self.files.read(name)
    }
}

impl TensorStore for HfCheckpoint {
    fn path(&self) -> &Path {
        self.files.path()
    }

    fn fetch(&mut self, ours: &str) -> Result<Option<HostTensor>, ModelError> {
        let Some(rule) = rule(self.config.arch, ours) else {
            return Ok(None);
        };
        if !rule.sources().iter().all(|s| self.files.contains(s)) {
            return Ok(None);
        }
        let (heads, d) = (self.config.num_heads, self.config.head_dim);
        Ok(Some(match rule {
            Rule::Plain(n) => self.read(&n)?,
            Rule::Transposed(n) => {
                let t = self.read(&n)?;
                if t.shape.len() != 2 {
                    return Err(ModelError::Shape {
                        path: self.path().to_path_buf(),
                        name: n,
                        stored: t.shape.clone(),
                        got: t.shape,
                        want: vec![0, 0],
                    });
                }
                t.transpose()
            }
            Rule::FusedQkv { name, part, bias } => {
                let t = self.read(&name)?;
                if t.shape.len() != if bias { 1 } else { 2 } || t.shape[0] != 3 * heads * d {
                    return Err(ModelError::Shape {
                        path: self.path().to_path_buf(),
                        name,
                        stored: t.shape.clone(),
                        got: t.shape,
                        want: vec![3 * heads * d],
                    });
                }
                let split = split_fused_qkv(&t, heads, d, part);
                if bias { split } else { split.transpose() }
            }
            Rule::Decay { d1, d2 } => {
                let (t1, t2) = (self.read(&d1)?, self.read(&d2)?);
                let layer = d1.trim_end_matches(".D1").to_string();
                decay_from_reference(&t1, &t2, self.files.path(), &layer)?
            }
        }))
    }

    fn source_name(&self, ours: &str) -> String {
        match rule(self.config.arch, ours) {
            Some(r) => r.sources().join(" + "),
            None => ours.to_string(),
        }
    }

    fn source_shape(&self, ours: &str) -> Vec<usize> {
        rule(self.config.arch, ours)
            .and_then(|r| r.sources().first().and_then(|s| self.files.shape(s)).map(<[usize]>::to_vec))
            .unwrap_or_default()
    }

    fn unused(&self) -> Vec<String> {
        self.files.names().filter(|n| !self.used.contains(*n) && !ignorable(n)).cloned().collect()
    }

    fn stored_values(&self) -> usize {
        self.files.stored_values()
    }
}

/// Finds the weights and config of an HF checkpoint at `path` (a directory, a `.safetensors` file
/// or an index): `(weights, config.json)`.
pub fn locate(path: &Path) -> Option<(PathBuf, PathBuf)> {
    let dir = if path.is_dir() { path } else { path.parent()? };
    let config = dir.join("config.json");
    if !config.is_file() {
        return None;
    }
    if path.is_file() {
        return Some((path.to_path_buf(), config));
    }
    ["model.safetensors.index.json", "model.safetensors"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .map(|w| (w, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_qkv_split_takes_each_heads_block() {
        // 2 heads, head_dim 2, in-dim 1: rows are [q0 q0 k0 k0 v0 v0 q1 q1 k1 k1 v1 v1].
        let fused = HostTensor::new(vec![12, 1], (0..12).map(|x| x as f32).collect());
        assert_eq!(split_fused_qkv(&fused, 2, 2, 0).data, vec![0.0, 1.0, 6.0, 7.0]);
        assert_eq!(split_fused_qkv(&fused, 2, 2, 1).data, vec![2.0, 3.0, 8.0, 9.0]);
        assert_eq!(split_fused_qkv(&fused, 2, 2, 2).data, vec![4.0, 5.0, 10.0, 11.0]);
    }

    #[test]
    fn decay_is_recovered_and_bad_forms_are_refused() {
        let (heads, n) = (2, 64);
        let gammas = [0.96875f64, 0.998];
        let make = |sign: f64| {
            let data = gammas.iter().flat_map(|g| (0..n).map(move |i| g.powf(sign * i as f64) as f32)).collect();
            HostTensor::new(vec![1, heads, n, 1], data)
        };
        let (d1, d2) = (make(1.0), make(-1.0));
        let lg = decay_from_reference(&d1, &d2, Path::new("x"), "layer").unwrap();
        for (got, g) in lg.data.iter().zip(gammas) {
            assert!((*got as f64 - g.ln()).abs() < 1e-6);
        }
        let mut bad = d2.clone();
        bad.data[n + 10] *= 1.5;
        let err = decay_from_reference(&d1, &bad, Path::new("x"), "layer").unwrap_err().to_string();
        assert!(err.contains("head 1, position 10"), "{err}");
    }

    #[test]
    fn decay_tensors_of_another_rank_are_an_error() {
        let flat = HostTensor::new(vec![4], vec![1.0, 0.5, 0.25, 0.125]);
        let err = decay_from_reference(&flat, &flat, Path::new("x"), "layer").unwrap_err().to_string();
        assert!(err.contains("must both be [1, heads, positions >= 2, 1]"), "{err}");
    }

    #[test]
    fn every_llama_parameter_has_a_rule() {
        for name in ["embed.weight", "layers.3.attn.k.weight", "layers.0.mlp.down.weight", "final_norm.gamma"] {
            assert!(rule(Architecture::Llama, name).is_some(), "{name}");
        }
        assert_eq!(rule(Architecture::Llama, "layers.0.attn.kernel.gate"), None);
    }
}
