//! GGUF seeds: tiny llama models with a byte-level BPE tokenizer written here (every metadata value
//! type, every supported tensor type, tied and untied heads, another alignment), and consistent
//! truncations of the real SmolLM2 GGUF generated at test time: its whole header (metadata and
//! tokenizer included) with a handful of its small tensors, so that every offset stays valid.

use std::io::{Read, Seek, SeekFrom};

use anyhow::{Context, Result, bail};

use super::values;
use crate::input::Input;

// Metadata value types.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STR: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

// Tensor types (ggml ids).
pub const F32: u32 = 0;
pub const F16: u32 = 1;
pub const Q4_0: u32 = 2;
pub const Q4_1: u32 = 3;
pub const Q8_0: u32 = 8;
pub const BF16: u32 = 30;

/// A GGUF v3 file under construction.
#[derive(Debug)]
pub struct GgufWriter {
    alignment: usize,
    kv: Vec<u8>,
    n_kv: u64,
    /// (name, dims innermost first, type, data)
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

impl GgufWriter {
    pub fn new(alignment: usize) -> Self {
        Self { alignment, kv: Vec::new(), n_kv: 0, tensors: Vec::new() }
    }

    /// A key with a value already encoded as `ty`.
    pub fn raw(&mut self, key: &str, ty: u32, value: &[u8]) {
        self.kv.extend(string(key.as_bytes()));
        self.kv.extend(ty.to_le_bytes());
        self.kv.extend_from_slice(value);
        self.n_kv += 1;
    }

    pub fn u32(&mut self, key: &str, v: u32) {
        self.raw(key, T_U32, &v.to_le_bytes());
    }

    pub fn f32(&mut self, key: &str, v: f32) {
        self.raw(key, T_F32, &v.to_le_bytes());
    }

    pub fn str(&mut self, key: &str, v: &str) {
        self.raw(key, T_STR, &string(v.as_bytes()));
    }

    /// An array of `items`, each already encoded as `ty`.
    pub fn array(&mut self, key: &str, ty: u32, items: &[Vec<u8>]) {
        let mut value = ty.to_le_bytes().to_vec();
        value.extend((items.len() as u64).to_le_bytes());
        items.iter().for_each(|i| value.extend(i));
        self.raw(key, T_ARRAY, &value);
    }

    /// A tensor of `values` with GGUF dims (innermost first) stored as `ty`.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, values: &[f32]) {
        self.tensor_bytes(name, dims, ty, encode(ty, values));
    }

    pub fn tensor_bytes(&mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) {
        self.tensors.push((name.to_string(), dims.to_vec(), ty, data));
    }

    pub fn finish(self) -> Vec<u8> {
        let align = |n: usize| n.div_ceil(self.alignment) * self.alignment;
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        let mut offset = 0;
        for (name, dims, ty, data) in &self.tensors {
            out.extend(string(name.as_bytes()));
            out.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(ty.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset = align(offset + data.len());
        }
        for (_, _, _, data) in &self.tensors {
            out.resize(align(out.len()), 0);
            out.extend(data);
        }
        out
    }
}

/// `values` stored as ggml type `ty` (block layouts of ggml's `block_q8_0`, `block_q4_0`,
/// `block_q4_1`; quantised types need a multiple of 32 values).
pub fn encode(ty: u32, values: &[f32]) -> Vec<u8> {
    let f16 = |x: f32| half::f16::from_f32(x).to_le_bytes();
    let mut out = Vec::new();
    match ty {
        F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
        F16 => values.iter().for_each(|v| out.extend(f16(*v))),
        BF16 => values.iter().for_each(|v| out.extend(half::bf16::from_f32(*v).to_le_bytes())),
        Q8_0 => {
            for block in values.chunks(32) {
                let d = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0 + 1e-6;
                out.extend(f16(d));
                out.extend(block.iter().map(|v| (v / d).round() as i8 as u8));
            }
        }
        Q4_0 | Q4_1 => {
            for block in values.chunks(32) {
                let (lo, hi) = block.iter().fold((f32::MAX, f32::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
                let (d, min) = if ty == Q4_0 {
                    (hi.abs().max(lo.abs()) / 7.0 + 1e-6, -8.0)
                } else {
                    ((hi - lo) / 15.0 + 1e-6, lo)
                };
                out.extend(f16(d));
                if ty == Q4_1 {
                    out.extend(f16(min));
                }
                let q = |v: f32| {
                    if ty == Q4_0 {
                        ((v / d).round() + 8.0).clamp(0.0, 15.0) as u8
                    } else {
                        ((v - min) / d).round().clamp(0.0, 15.0) as u8
                    }
                };
                out.extend((0..16).map(|i| q(block[i]) | (q(block[i + 16]) << 4)));
            }
        }
        other => panic!("no encoder for ggml type {other}"),
    }
    out
}

/// GPT-2's byte -> printable character map, which byte-level BPE vocabularies are written in.
fn byte_chars() -> Vec<char> {
    let mut bytes: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xa1..=0xac).chain(0xae..=0xff).collect();
    let mut chars = bytes.clone();
    for b in 0..256 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + chars.len() as u32 - 188);
        }
    }
    let mut map = vec![' '; 256];
    for (b, c) in bytes.iter().zip(chars) {
        map[*b as usize] = char::from_u32(c).expect("a valid char");
    }
    map
}

/// A byte-level BPE vocabulary (every byte, merges building a few words, three special tokens)
/// and its merges.
pub fn bpe_vocab() -> (Vec<String>, Vec<String>) {
    let chars = byte_chars();
    let mut tokens: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    let mut merges = Vec::new();
    for word in ["the", "and", "Once", "upon", "time", "cat", "123", "hello", "world"] {
        let word: Vec<char> = std::iter::once(chars[b' ' as usize]).chain(word.chars()).collect();
        for k in 1..word.len() {
            let (left, right): (String, String) = (word[..k].iter().collect(), word[k].to_string());
            let merged = format!("{left}{right}");
            if !tokens.contains(&merged) {
                tokens.push(merged);
                merges.push(format!("{left} {right}"));
            }
        }
    }
    tokens.extend(["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from));
    (tokens, merges)
}

/// The tokenizer's metadata: vocabulary, token types (3: control), merges, special ids.
fn tokenizer_metadata(w: &mut GgufWriter, pre: &str, add_bos: bool) -> usize {
    let (tokens, merges) = bpe_vocab();
    let n = tokens.len();
    w.str("tokenizer.ggml.model", "gpt2");
    w.str("tokenizer.ggml.pre", pre);
    w.array("tokenizer.ggml.tokens", T_STR, &tokens.iter().map(|t| string(t.as_bytes())).collect::<Vec<_>>());
    let types: Vec<Vec<u8>> = (0..n).map(|i| (if i + 3 >= n { 3i32 } else { 1 }).to_le_bytes().to_vec()).collect();
    w.array("tokenizer.ggml.token_type", T_I32, &types);
    w.array("tokenizer.ggml.merges", T_STR, &merges.iter().map(|m| string(m.as_bytes())).collect::<Vec<_>>());
    w.u32("tokenizer.ggml.bos_token_id", (n - 2) as u32);
    w.u32("tokenizer.ggml.eos_token_id", (n - 3) as u32);
    w.raw("tokenizer.ggml.add_bos_token", T_BOOL, &[u8::from(add_bos)]);
    n
}

/// Keys of every other value type, nested arrays included (read and kept, never used).
fn other_value_types(w: &mut GgufWriter) {
    w.raw("general.fuzz.u8", T_U8, &[7]);
    w.raw("general.fuzz.i8", T_I8, &[0xf9]);
    w.raw("general.fuzz.u16", T_U16, &7u16.to_le_bytes());
    w.raw("general.fuzz.i16", T_I16, &(-7i16).to_le_bytes());
    w.raw("general.fuzz.u64", T_U64, &7u64.to_le_bytes());
    w.raw("general.fuzz.i64", T_I64, &(-7i64).to_le_bytes());
    w.raw("general.fuzz.f64", T_F64, &0.5f64.to_le_bytes());
    let inner = |v: u8| [T_U8.to_le_bytes().to_vec(), 2u64.to_le_bytes().to_vec(), vec![v, v]].concat();
    w.array("general.fuzz.nested", T_ARRAY, &[inner(1), inner(2)]);
}

/// The shapes of a tiny llama (hidden 32, 4 heads of 8, 2 KV heads, MLP 64) and the type of each
/// tensor: `types(name)`.
fn tiny_llama(layers: usize, tied: bool, types: fn(&str) -> u32, alignment: usize, pre: &str) -> Vec<u8> {
    let mut w = GgufWriter::new(alignment);
    w.str("general.architecture", "llama");
    w.str("general.name", "tiny fuzz seed");
    if alignment != 32 {
        w.u32("general.alignment", alignment as u32);
    }
    for (key, value) in [
        ("block_count", layers as u32),
        ("context_length", 64),
        ("embedding_length", 32),
        ("feed_forward_length", 64),
        ("attention.head_count", 4),
        ("attention.head_count_kv", 2),
    ] {
        w.u32(&format!("llama.{key}"), value);
    }
    w.f32("llama.rope.freq_base", 10000.0);
    w.f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    other_value_types(&mut w);
    let vocab = tokenizer_metadata(&mut w, pre, tied) as u64;
    let mut tensor = |name: &str, dims: &[u64], salt: u32| {
        let n = dims.iter().product::<u64>() as usize;
        w.tensor(name, dims, types(name), &values(n, salt));
    };
    tensor("token_embd.weight", &[32, vocab], 1);
    for l in 0..layers {
        for (i, (name, dims)) in [
            ("attn_norm", [32, 1]),
            ("attn_q", [32, 32]),
            ("attn_k", [32, 16]),
            ("attn_v", [32, 16]),
            ("attn_output", [32, 32]),
            ("ffn_norm", [32, 1]),
            ("ffn_gate", [32, 64]),
            ("ffn_up", [32, 64]),
            ("ffn_down", [64, 32]),
        ]
        .into_iter()
        .enumerate()
        {
            let dims: &[u64] = if dims[1] == 1 { &dims[..1] } else { &dims };
            tensor(&format!("blk.{l}.{name}.weight"), dims, (10 * l + i) as u32);
        }
    }
    tensor("output_norm.weight", &[32], 2);
    if !tied {
        tensor("output.weight", &[32, vocab], 3);
    }
    w.finish()
}

fn all_f32(_: &str) -> u32 {
    F32
}

/// Every supported type: norms stay F32, as in real files.
fn mixed(name: &str) -> u32 {
    let kinds = [("token_embd", Q8_0), ("attn_q", Q4_0), ("attn_k", Q4_0), ("attn_v", Q4_1), ("attn_output", Q4_1)];
    let more = [("ffn_gate", F16), ("ffn_up", F16), ("ffn_down", BF16)];
    kinds.iter().chain(&more).find(|(k, _)| name.contains(k)).map_or(F32, |(_, t)| *t)
}

/// The GGUF seeds (`model.gguf`).
pub fn seeds() -> Result<Vec<Input>> {
    let mut seeds = vec![
        Input::single("model.gguf", tiny_llama(2, false, all_f32, 32, "default")),
        Input::single("model.gguf", tiny_llama(1, true, mixed, 64, "smollm")),
    ];
    if let Some(path) = super::smollm2_gguf() {
        for keep_tokenizer in [true, false] {
            seeds.push(Input::single("model.gguf", smollm2_truncated(&path, keep_tokenizer)?));
        }
    }
    Ok(seeds)
}

/// A tensor info as stored.
pub struct RawTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub offset: u64,
}

/// A GGUF file's header as stored: each key with its type and encoded value, the tensor infos,
/// and where the data starts.
pub struct RawGguf {
    pub kvs: Vec<(String, u32, Vec<u8>)>,
    pub tensors: Vec<RawTensor>,
    pub alignment: usize,
    pub data_start: usize,
}

/// A little-endian reader over a GGUF header (this seed generator's own, independent of the
/// parser under test).
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len()).context("GGUF header past the prefix")?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u64()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    /// Skips a value of type `ty` (arrays nest at most 16 deep: mutants are parsed here too).
    fn skip(&mut self, ty: u32, depth: usize) -> Result<()> {
        let size = match ty {
            T_U8 | T_I8 | T_BOOL => 1,
            T_U16 | T_I16 => 2,
            T_U32 | T_I32 | T_F32 => 4,
            T_U64 | T_I64 | T_F64 => 8,
            T_STR => self.u64()? as usize,
            T_ARRAY if depth < 16 => {
                let (item, n) = (self.u32()?, self.u64()?);
                return (0..n).try_for_each(|_| self.skip(item, depth + 1));
            }
            T_ARRAY => bail!("GGUF arrays nested too deep"),
            other => bail!("unknown GGUF value type {other}"),
        };
        self.take(size).map(drop)
    }
}

/// Bytes of a tensor of `n` values of type `ty`.
fn tensor_bytes(ty: u32, n: u64) -> Option<u64> {
    match ty {
        F32 => n.checked_mul(4),
        F16 | BF16 => n.checked_mul(2),
        Q8_0 => Some(n / 32 * 34),
        Q4_0 => Some(n / 32 * 18),
        Q4_1 => Some(n / 32 * 20),
        _ => None,
    }
}

/// Parses the header of a GGUF file (or of its first bytes).
pub fn parse_raw(bytes: &[u8]) -> Result<RawGguf> {
    let mut r = Reader { bytes, pos: 4 };
    anyhow::ensure!(bytes.starts_with(b"GGUF"), "not a GGUF file");
    let (version, n_tensors, n_kv) = (r.u32()?, r.u64()?, r.u64()?);
    anyhow::ensure!(version == 3, "GGUF version {version}");
    let mut kvs = Vec::new();
    for _ in 0..n_kv {
        let key = r.string()?;
        let ty = r.u32()?;
        let start = r.pos;
        r.skip(ty, 0)?;
        kvs.push((key, ty, bytes[start..r.pos].to_vec()));
    }
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()?;
        let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
        tensors.push(RawTensor { name, dims, ty: r.u32()?, offset: r.u64()? });
    }
    let alignment = kvs
        .iter()
        .find(|(k, ty, v)| k == "general.alignment" && *ty == T_U32 && v.len() == 4)
        .map_or(32, |(_, _, v)| u32::from_le_bytes([v[0], v[1], v[2], v[3]]) as usize);
    anyhow::ensure!(alignment.is_power_of_two(), "alignment {alignment}");
    Ok(RawGguf { kvs, tensors, alignment, data_start: r.pos.div_ceil(alignment) * alignment })
}

/// Bytes of a tensor of `dims` of type `ty`, if the type is known and the size sane.
fn data_size(ty: u32, dims: &[u64]) -> Option<usize> {
    let n = dims.iter().try_fold(1u64, |n, d| n.checked_mul(*d))?;
    usize::try_from(tensor_bytes(ty, n)?).ok()
}

/// `bytes` rewritten so that every tensor's data is where its info says and as long as its dims
/// and type make it (copied from where it was, cut or padded with zeros), at most `max` bytes of
/// data in all: a mutated dim or type then reaches the importer instead of "past the end".
pub fn repair(bytes: &[u8], max: usize) -> Option<Vec<u8>> {
    let raw = parse_raw(bytes).ok()?;
    let mut w = GgufWriter::new(raw.alignment);
    raw.kvs.iter().for_each(|(key, ty, value)| w.raw(key, *ty, value));
    let mut total = 0usize;
    for t in &raw.tensors {
        let size = data_size(t.ty, &t.dims)?;
        total = total.checked_add(size).filter(|n| *n <= max)?;
        let from = raw.data_start.checked_add(usize::try_from(t.offset).ok()?)?;
        let old = bytes.get(from..).unwrap_or_default();
        let mut data = old[..old.len().min(size)].to_vec();
        data.resize(size, 0);
        w.tensor_bytes(&t.name, &t.dims, t.ty, data);
    }
    Some(w.finish())
}

/// The real file's header (all metadata, or all but the tokenizer's three large arrays) with a few
/// small tensors of layer 0, their data copied and their offsets rewritten.
fn smollm2_truncated(path: &std::path::Path, keep_tokenizer: bool) -> Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let mut head = Vec::new();
    file.by_ref().take(4 << 20).read_to_end(&mut head)?;
    let raw = parse_raw(&head)?;
    let mut w = GgufWriter::new(raw.alignment);
    let big = ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"];
    for (key, ty, value) in raw.kvs.iter().filter(|(k, _, _)| keep_tokenizer || !big.contains(&k.as_str())) {
        w.raw(key, *ty, value);
    }
    let wanted = ["blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "blk.0.attn_k.weight", "output_norm.weight"];
    for info in raw.tensors.iter().filter(|t| wanted.contains(&t.name.as_str())) {
        let mut data = vec![0; data_size(info.ty, &info.dims).context("tensor type")?];
        file.seek(SeekFrom::Start(raw.data_start as u64 + info.offset))?;
        file.read_exact(&mut data)?;
        w.tensor_bytes(&info.name, &info.dims, info.ty, data);
    }
    Ok(w.finish())
}
