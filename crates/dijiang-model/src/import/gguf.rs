//! GGUF v3 checkpoints of the llama architecture (llama.cpp's format): typed metadata, tensor
//! infos with dims listed innermost first, and block-quantised data, dequantised to f32 here.
//!
//! Supported tensor types: F32, F16, BF16, Q8_0, Q4_0, Q4_1 (what real small GGUF models use).
//! llama.cpp's converter permutes the q and k rows of each head into interleaved-pair RoPE order;
//! they are permuted back to rotate-half on import (as for llama2.c).
//!
//! The format is small and stable and no maintained Rust crate reads it without pulling in a whole
//! inference engine, so it is parsed by hand here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::llama2c::interleaved_to_half;
use crate::config::{Architecture, ModelConfig};
use crate::error::ModelError;
use crate::store::{HostTensor, TensorStore};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml tensor types this reader dequantises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block)
    fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
        }
    }
}

#[derive(Debug, Clone)]
struct TensorInfo {
    /// Row-major shape (outermost first): the GGUF dims reversed.
    shape: Vec<usize>,
    ty: GgmlType,
    start: usize,
    end: usize,
}

/// A memory-mapped GGUF file.
#[derive(Debug)]
pub struct Gguf {
    path: PathBuf,
    mmap: Mmap,
    pub metadata: BTreeMap<String, Value>,
    tensors: BTreeMap<String, TensorInfo>,
    used: BTreeSet<String>,
    config: ModelConfig,
}

/// The deepest nesting of metadata arrays accepted. GGUF allows arrays of arrays and real files
/// nest once at most; unbounded, a file of nested array headers (12 bytes a level) would recurse
/// until the stack overflows, which aborts the process instead of returning an error.
const MAX_ARRAY_DEPTH: usize = 8;

/// A bounds-checked little-endian reader over the file.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("unexpected end of file at byte {} (truncated?)", self.pos))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u64()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    /// One tensor info: name, row-major shape (the file lists dims innermost first), type id,
    /// offset from the start of the data.
    fn tensor_info(&mut self) -> Result<(String, Vec<usize>, u32, usize), String> {
        let name = self.string()?;
        let n_dims = self.u32()?;
        let mut dims = (0..n_dims).map(|_| self.u64().map(|d| d as usize)).collect::<Result<Vec<_>, _>>()?;
        dims.reverse();
        Ok((name, dims, self.u32()?, self.u64()? as usize))
    }

    /// A value of type `ty`, inside `depth` enclosing arrays.
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::Int(self.take(1)?[0] as i64),
            1 => Value::Int(self.take(1)?[0] as i8 as i64),
            2 => Value::Int(u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as i64),
            3 => Value::Int(i16::from_le_bytes(self.take(2)?.try_into().expect("2")) as i64),
            4 => Value::Int(self.u32()? as i64),
            5 => Value::Int(self.u32()? as i32 as i64),
            6 => Value::Float(f32::from_le_bytes(self.take(4)?.try_into().expect("4")) as f64),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 if depth >= MAX_ARRAY_DEPTH => return Err(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}")),
            9 => {
                let (item, n) = (self.u32()?, self.u64()? as usize);
                if n > self.bytes.len() - self.pos {
                    return Err(format!(
                        "unexpected end of file: {n} array items at byte {} cannot fit (truncated?)",
                        self.pos
                    ));
                }
                Value::Array((0..n).map(|_| self.value(item, depth + 1)).collect::<Result<_, _>>()?)
            }
            10 => Value::Int(self.u64()? as i64),
            11 => Value::Int(self.u64()? as i64),
            12 => Value::Float(f64::from_le_bytes(self.take(8)?.try_into().expect("8"))),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let mmap = super::map_file(path)?;
        let bad = |reason: String| ModelError::Format { path: path.into(), format: "GGUF", reason };
        let mut c = Cursor { bytes: &mmap, pos: 0 };
        let (n_tensors, n_kv) = read_preamble(&mut c).map_err(&bad)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string().map_err(&bad)?;
            let ty = c.u32().map_err(&bad)?;
            let value = c.value(ty, 0).map_err(|e| bad(format!("metadata `{key}`: {e}")))?;
            metadata.insert(key, value);
        }
        let mut infos = Vec::new();
        for _ in 0..n_tensors {
            let (name, shape, ty_id, offset) = c.tensor_info().map_err(&bad)?;
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| ModelError::Dtype {
                path: path.into(),
                name: name.clone(),
                dtype: format!("ggml type {ty_id} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)"),
            })?;
            infos.push((name, shape, ty, offset));
        }
        let data_start = data_start(&metadata, c.pos).map_err(&bad)?;
        let mut tensors = BTreeMap::new();
        for (name, shape, ty, offset) in infos {
            let (start, end) = locate(&name, &shape, ty, data_start.checked_add(offset), mmap.len()).map_err(&bad)?;
            tensors.insert(name, TensorInfo { shape, ty, start, end });
        }
        let config = config_from_metadata(&metadata, &tensors).map_err(bad)?;
        Ok(Self { path: path.into(), mmap, metadata, tensors, used: BTreeSet::new(), config })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// "GGUF v3, tensor types {..}".
    pub fn storage(&self) -> String {
        let types: BTreeSet<String> = self.tensors.values().map(|t| format!("{:?}", t.ty)).collect();
        format!("GGUF v3, {}", types.into_iter().collect::<Vec<_>>().join("/"))
    }

    /// A tensor dequantised to f32, row-major.
    fn read(&mut self, name: &str) -> Option<HostTensor> {
        let info = self.tensors.get(name)?.clone();
        self.used.insert(name.to_string());
        Some(HostTensor::new(info.shape, dequantize(info.ty, &self.mmap[info.start..info.end])))
    }
}

/// The magic and version; the tensor and key-value counts.
fn read_preamble(c: &mut Cursor) -> Result<(u64, u64), String> {
    if c.take(4)? != b"GGUF" {
        return Err("missing the GGUF magic".into());
    }
    let version = c.u32()?;
    if version != 3 {
        return Err(format!("version {version}; only GGUF v3 is supported"));
    }
    Ok((c.u64()?, c.u64()?))
}

/// Where tensor data starts: the end of the header rounded up to `general.alignment` (default
/// 32), which must be a power of two, as llama.cpp requires.
fn data_start(metadata: &BTreeMap<String, Value>, header_end: usize) -> Result<usize, String> {
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(v) => v
            .as_i64()
            .and_then(|a| usize::try_from(a).ok())
            .filter(|a| a.is_power_of_two())
            .ok_or_else(|| format!("metadata `general.alignment` = {v:?} is not a power of two"))?,
    };
    header_end
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| format!("metadata `general.alignment` = {alignment} puts the data past any file"))
}

/// The byte range of a tensor of `shape` and type `ty` starting at `start`, checked against the
/// file's `len` with arithmetic that cannot overflow (dims come from the file).
fn locate(
    name: &str,
    shape: &[usize],
    ty: GgmlType,
    start: Option<usize>,
    len: usize,
) -> Result<(usize, usize), String> {
    let n = shape
        .iter()
        .try_fold(1usize, |n, d| n.checked_mul(*d))
        .ok_or_else(|| format!("tensor `{name}`: dims {shape:?} have more elements than any file holds"))?;
    let (per_block, block_bytes) = ty.block();
    if !n.is_multiple_of(per_block) {
        return Err(format!("tensor `{name}`: {n} elements is not a whole number of {ty:?} blocks"));
    }
    let range = start.and_then(|s| Some((s, s.checked_add((n / per_block).checked_mul(block_bytes)?)?)));
    match range {
        Some((start, end)) if end <= len => Ok((start, end)),
        _ => Err(format!("tensor `{name}` ({shape:?} {ty:?}) ends past the end of the file ({len} bytes): truncated?")),
    }
}

fn config_from_metadata(
    m: &BTreeMap<String, Value>,
    tensors: &BTreeMap<String, TensorInfo>,
) -> Result<ModelConfig, String> {
    let arch = m.get("general.architecture").and_then(Value::as_str).unwrap_or("");
    if arch != "llama" {
        return Err(format!("architecture `{arch}`; only `llama` GGUF files are supported"));
    }
    let int = |k: &str| {
        let v = m
            .get(&format!("llama.{k}"))
            .and_then(Value::as_i64)
            .ok_or_else(|| format!("metadata `llama.{k}` is missing"))?;
        usize::try_from(v).map_err(|_| format!("metadata `llama.{k}` = {v} is negative"))
    };
    let num_heads = int("attention.head_count")?;
    let hidden_size = int("embedding_length")?;
    let vocab_size = match m.get("llama.vocab_size") {
        Some(_) => int("vocab_size")?,
        None => {
            tensors.get("token_embd.weight").and_then(|t| t.shape.first().copied()).ok_or("no token_embd.weight")?
        }
    };
    let token = |k: &str| m.get(&format!("tokenizer.ggml.{k}")).and_then(Value::as_i64).map(|v| v as u32);
    Ok(ModelConfig {
        arch: Architecture::Llama,
        vocab_size,
        hidden_size,
        intermediate_size: int("feed_forward_length")?,
        num_layers: int("block_count")?,
        num_heads,
        num_kv_heads: int("attention.head_count_kv").unwrap_or(num_heads),
        // 0 heads: no head size; the config's validation names the field.
        head_dim: hidden_size.checked_div(num_heads).unwrap_or(0),
        rope_theta: m.get("llama.rope.freq_base").and_then(Value::as_f64).unwrap_or(10000.0),
        rotary_pct: 1.0,
        norm_eps: m.get("llama.attention.layer_norm_rms_epsilon").and_then(Value::as_f64).unwrap_or(1e-5),
        tie_embeddings: !tensors.contains_key("output.weight"),
        parallel_residual: false,
        attention_bias: false,
        max_seq_len: int("context_length").unwrap_or(2048),
        bos_token_id: token("bos_token_id"),
        eos_token_id: token("eos_token_id"),
        attention: crate::config::AttentionKernelConfig::Softmax,
        lora: None,
    })
}

/// Dequantises ggml blocks (layouts from ggml's `block_q4_0`, `block_q4_1`, `block_q8_0`).
fn dequantize(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    match ty {
        GgmlType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        GgmlType::F16 => bytes.chunks_exact(2).map(f16).collect(),
        GgmlType::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        GgmlType::Q8_0 => bytes
            .chunks_exact(34)
            .flat_map(|blk| {
                let d = f16(&blk[0..2]);
                blk[2..34].iter().map(move |q| *q as i8 as f32 * d)
            })
            .collect(),
        // Low nibbles are elements 0..16, high nibbles 16..32.
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let block_bytes = if ty == GgmlType::Q4_0 { 18 } else { 20 };
            let mut out = Vec::with_capacity(bytes.len() / block_bytes * 32);
            for blk in bytes.chunks_exact(block_bytes) {
                let d = f16(&blk[0..2]);
                let (min, qs) =
                    if ty == GgmlType::Q4_0 { (-8.0 * d, &blk[2..18]) } else { (f16(&blk[2..4]), &blk[4..20]) };
                out.extend(qs.iter().map(|q| (q & 0x0f) as f32 * d + min));
                out.extend(qs.iter().map(|q| (q >> 4) as f32 * d + min));
            }
            out
        }
    }
}

/// Our name -> GGUF name, and whether the rows need un-permuting from interleaved RoPE order
/// (`Some(heads)`).
fn gguf_name(ours: &str, config: &ModelConfig) -> Option<(String, Option<usize>)> {
    Some(match ours {
        "embed.weight" => ("token_embd.weight".into(), None),
        "final_norm.gamma" => ("output_norm.weight".into(), None),
        "lm_head.weight" => ("output.weight".into(), None),
        _ => {
            let (i, rest) = ours.strip_prefix("layers.")?.split_once('.')?;
            let (name, rope_heads) = match rest {
                "attn_norm.gamma" => ("attn_norm", None),
                "mlp_norm.gamma" => ("ffn_norm", None),
                "attn.q.weight" => ("attn_q", Some(config.num_heads)),
                "attn.k.weight" => ("attn_k", Some(config.num_kv_heads)),
                "attn.v.weight" => ("attn_v", None),
                "attn.o.weight" => ("attn_output", None),
                "mlp.gate.weight" => ("ffn_gate", None),
                "mlp.up.weight" => ("ffn_up", None),
                "mlp.down.weight" => ("ffn_down", None),
                _ => return None,
            };
            (format!("blk.{i}.{name}.weight"), rope_heads)
        }
    })
}

impl TensorStore for Gguf {
    fn path(&self) -> &Path {
        &self.path
    }

    fn fetch(&mut self, ours: &str) -> Result<Option<HostTensor>, ModelError> {
        let Some((name, rope_heads)) = gguf_name(ours, &self.config) else {
            return Ok(None);
        };
        let Some(t) = self.read(&name) else {
            return Ok(None);
        };
        // Matrices are stored [out, in]; ours are [in, out]. The embedding is [vocab, hidden] in both.
        // A tensor of another rank is passed on as it is, for the shape check to name it.
        Ok(Some(match (t.shape.len(), rope_heads) {
            (2, _) if ours == "embed.weight" => t,
            (2, Some(heads)) => interleaved_to_half(&t, heads).transpose(),
            (2, None) => t.transpose(),
            _ => t,
        }))
    }

    fn source_name(&self, ours: &str) -> String {
        gguf_name(ours, &self.config).map_or_else(|| ours.to_string(), |(n, _)| n)
    }

    fn source_shape(&self, ours: &str) -> Vec<usize> {
        gguf_name(ours, &self.config)
            .and_then(|(n, _)| self.tensors.get(&n).map(|t| t.shape.clone()))
            .unwrap_or_default()
    }

    fn unused(&self) -> Vec<String> {
        self.tensors.keys().filter(|n| !self.used.contains(*n) && *n != "rope_freqs.weight").cloned().collect()
    }

    fn stored_values(&self) -> usize {
        self.tensors.values().fold(0, |n, t| n.saturating_add(t.shape.iter().product()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block_dequantises_low_then_high_nibbles() {
        let mut blk = Vec::new();
        blk.extend(half::f16::from_f32(0.5).to_le_bytes()); // d
        blk.extend(half::f16::from_f32(-1.0).to_le_bytes()); // m
        blk.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let x = dequantize(GgmlType::Q4_1, &blk);
        assert_eq!(x.len(), 32);
        assert_eq!(x[0], -1.0);
        assert_eq!(x[3], 0.5);
        assert_eq!(x[16], 15.0 * 0.5 - 1.0);
        assert_eq!(x[31], -1.0);
    }

    #[test]
    fn deeply_nested_arrays_are_an_error_not_a_stack_overflow() {
        // One key whose value nests 100,000 arrays (12 bytes a level): unbounded recursion would
        // overflow the stack, which aborts the process.
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.extend(6u64.to_le_bytes());
        bytes.extend(b"nested");
        bytes.extend(9u32.to_le_bytes());
        for _ in 0..100_000 {
            bytes.extend(9u32.to_le_bytes());
            bytes.extend(1u64.to_le_bytes());
        }
        let path = std::env::temp_dir().join(format!("dijiang-gguf-nested-{}.gguf", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let err = Gguf::open(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).ok();
        assert!(err.contains("`nested`") && err.contains("nested deeper than 8"), "{err}");
    }

    #[test]
    fn q8_0_and_q4_0_blocks() {
        let mut blk = half::f16::from_f32(0.25).to_le_bytes().to_vec();
        blk.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let x = dequantize(GgmlType::Q8_0, &blk);
        assert_eq!((x[0], x[16], x[31]), (-4.0, 0.0, 3.75));
        let mut blk = half::f16::from_f32(2.0).to_le_bytes().to_vec();
        blk.extend([0x8fu8; 16]);
        let x = dequantize(GgmlType::Q4_0, &blk);
        assert_eq!((x[0], x[16]), (14.0, 0.0));
    }
}
