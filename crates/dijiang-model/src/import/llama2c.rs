//! llama2.c "legacy" checkpoints (Karpathy's tinyllamas; `../shared/models/stories260K/README.md`):
//! a 7 x i32 header, then f32 arrays in a fixed order, matrices `[out, in]`.
//!
//! llama2.c's RoPE rotates interleaved pairs `(x[2i], x[2i+1])`; our model (like HF) rotates halves
//! `(x[i], x[i + d/2])`. The q and k rows are therefore permuted within each head on import
//! ([`interleaved_to_half`]), which makes the two conventions compute the same attention.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::store::{HostTensor, TensorStore};

/// The header's seven fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    /// A positive vocab_size in the file means the classifier is the token embedding.
    pub shared_classifier: bool,
}

/// How one of our tensors is stored: byte offset, shape as stored, and the fix to apply.
#[derive(Debug, Clone)]
struct Slot {
    offset: usize,
    stored: [usize; 2],
    fix: Fix,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fix {
    None,
    /// A norm's gains: stored as one row, read as a vector. (Not inferred from a single row: a
    /// matrix with one row, e.g. `w1` when `hidden_dim` is 1, is still a matrix.)
    Vector,
    Transpose,
    /// q/k: permute rows per head from interleaved to rotate-half, then transpose.
    RopeRowsThenTranspose {
        heads: usize,
    },
}

/// Rows of a `[heads * d, in]` q/k matrix permuted within each head so that interleaved pairs
/// `(2i, 2i+1)` become halves `(i, i + d/2)`: new row `j*(d/2) + i` is old row `2i + j`.
pub fn interleaved_to_half(w: &HostTensor, heads: usize) -> HostTensor {
    let (rows, cols) = (w.shape[0], w.shape[1]);
    let d = rows / heads;
    let mut out = vec![0.0; rows * cols];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let (new, old) = (h * d + j * (d / 2) + i, h * d + 2 * i + j);
                out[new * cols..(new + 1) * cols].copy_from_slice(&w.data[old * cols..(old + 1) * cols]);
            }
        }
    }
    HostTensor::new(w.shape.clone(), out)
}

/// A memory-mapped llama2.c checkpoint.
#[derive(Debug)]
pub struct Llama2c {
    path: PathBuf,
    mmap: Mmap,
    header: Header,
    slots: BTreeMap<String, Slot>,
    used: BTreeSet<String>,
}

const HEADER_BYTES: usize = 7 * 4;

impl Llama2c {
    /// Reads the header and checks the file size against it.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let mmap = super::map_file(path)?;
        let bad = |reason: String| ModelError::Format { path: path.into(), format: "llama2.c checkpoint", reason };
        if mmap.len() < HEADER_BYTES {
            return Err(bad(format!("{} bytes is shorter than the 28-byte header", mmap.len())));
        }
        let field = |i: usize| i32::from_le_bytes(mmap[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        let raw: Vec<i32> = (0..7).map(field).collect();
        if raw.iter().enumerate().any(|(i, v)| if i == 5 { *v == 0 } else { *v <= 0 })
            || raw[3] % raw[4] != 0
            || raw[0] % raw[3] != 0
        {
            return Err(bad(format!(
                "implausible header {raw:?} (dim, hidden, layers, heads, kv_heads, vocab, seq_len)"
            )));
        }
        let header = Header {
            dim: raw[0] as usize,
            hidden_dim: raw[1] as usize,
            n_layers: raw[2] as usize,
            n_heads: raw[3] as usize,
            n_kv_heads: raw[4] as usize,
            vocab_size: raw[5].unsigned_abs() as usize,
            seq_len: raw[6] as usize,
            shared_classifier: raw[5] > 0,
        };
        // Sizes first, from the header alone: a header claiming millions of layers must fail here,
        // not be laid out tensor by tensor.
        check_sizes(&header, mmap.len()).map_err(&bad)?;
        let (slots, end) = layout(&header);
        if mmap.len() != end {
            return Err(bad(format!(
                "{} bytes, but the header {raw:?} implies {end} (truncated, or not a legacy llama2.c file)",
                mmap.len()
            )));
        }
        Ok(Self { path: path.into(), mmap, header, slots, used: BTreeSet::new() })
    }

    pub fn header(&self) -> Header {
        self.header
    }

    /// The model the header describes (RoPE theta 10000, RMSNorm eps 1e-5, as llama2.c runs it).
    pub fn config(&self) -> ModelConfig {
        let h = self.header;
        ModelConfig {
            vocab_size: h.vocab_size,
            hidden_size: h.dim,
            intermediate_size: h.hidden_dim,
            num_layers: h.n_layers,
            num_heads: h.n_heads,
            num_kv_heads: h.n_kv_heads,
            head_dim: h.dim / h.n_heads,
            tie_embeddings: h.shared_classifier,
            max_seq_len: h.seq_len,
            ..ModelConfig::stories260k()
        }
    }
}

/// Checks that each header field, times the fewest bytes one unit of it takes in the file, fits in
/// the file's `len` bytes, before anything is computed from them; names the field that claims the
/// most (a corrupt layer count, not the vocabulary of a merely truncated file).
fn check_sizes(h: &Header, len: usize) -> Result<(), String> {
    let floats = |n: Option<usize>| n.and_then(|n| n.checked_mul(4));
    let dim = h.dim;
    let kv_dim = dim / h.n_heads * h.n_kv_heads;
    // A layer: two norms, q and o (dim x dim), k and v (kv_dim x dim), w1, w2, w3 (hidden x dim).
    let layer = (|| {
        let q_k_v_o = dim.checked_mul(dim)?.checked_mul(2)?.checked_add(kv_dim.checked_mul(dim)?.checked_mul(2)?)?;
        q_k_v_o.checked_add(h.hidden_dim.checked_mul(dim)?.checked_mul(3)?)?.checked_add(2 * dim)
    })();
    let claims = [
        ("dim", dim, "the final norm", Some(4)),
        ("vocab_size", h.vocab_size, "an embedding row", floats(Some(dim))),
        ("hidden_dim", h.hidden_dim, "rows of w1, w2 and w3", floats(dim.checked_mul(3))),
        ("seq_len", h.seq_len, "RoPE table rows", floats(Some(dim / h.n_heads))),
        ("n_layers", h.n_layers, "a layer", floats(layer)),
    ];
    // Bytes each field implies on its own (saturated: "more than any file").
    let implied =
        |(_, count, _, unit): &(&str, usize, &str, Option<usize>)| unit.map_or(usize::MAX, |u| count.saturating_mul(u));
    match claims.iter().filter(|c| implied(c) > len).max_by_key(|c| implied(c)) {
        None => Ok(()),
        Some(claim @ (field, count, what, unit)) => Err(format!(
            "header field `{field}` = {count} implies at least {} bytes ({count} x {} for {what}), more than the \
             file's {len} bytes (truncated, or not a legacy llama2.c file)",
            implied(claim),
            unit.map_or("too many".into(), |u| u.to_string()),
        )),
    }
}

/// Our names -> where they are, in the file's order; and the file's expected size.
fn layout(h: &Header) -> (BTreeMap<String, Slot>, usize) {
    let kv_dim = h.dim * h.n_kv_heads / h.n_heads;
    let mut slots = BTreeMap::new();
    let mut offset = HEADER_BYTES;
    let mut push = |name: String, stored: [usize; 2], fix: Fix, offset: &mut usize| {
        slots.insert(name, Slot { offset: *offset, stored, fix });
        *offset += stored[0] * stored[1] * 4;
    };
    push("embed.weight".into(), [h.vocab_size, h.dim], Fix::None, &mut offset);
    // Per-kind arrays, each holding every layer in turn.
    let per_layer: [(&str, [usize; 2], Fix); 9] = [
        ("attn_norm.gamma", [1, h.dim], Fix::Vector),
        ("attn.q.weight", [h.dim, h.dim], Fix::RopeRowsThenTranspose { heads: h.n_heads }),
        ("attn.k.weight", [kv_dim, h.dim], Fix::RopeRowsThenTranspose { heads: h.n_kv_heads }),
        ("attn.v.weight", [kv_dim, h.dim], Fix::Transpose),
        ("attn.o.weight", [h.dim, h.dim], Fix::Transpose),
        ("mlp_norm.gamma", [1, h.dim], Fix::Vector),
        ("mlp.gate.weight", [h.hidden_dim, h.dim], Fix::Transpose), // w1
        ("mlp.down.weight", [h.dim, h.hidden_dim], Fix::Transpose), // w2
        ("mlp.up.weight", [h.hidden_dim, h.dim], Fix::Transpose),   // w3
    ];
    for (name, stored, fix) in per_layer {
        for layer in 0..h.n_layers {
            push(format!("layers.{layer}.{name}"), stored, fix, &mut offset);
        }
    }
    push("final_norm.gamma".into(), [1, h.dim], Fix::Vector, &mut offset);
    // freq_cis_real and freq_cis_imag: precomputed RoPE tables, unused.
    offset += 2 * h.seq_len * (h.dim / h.n_heads / 2) * 4;
    if !h.shared_classifier {
        push("lm_head.weight".into(), [h.vocab_size, h.dim], Fix::Transpose, &mut offset);
    }
    (slots, offset)
}

impl TensorStore for Llama2c {
    fn path(&self) -> &Path {
        &self.path
    }

    fn fetch(&mut self, ours: &str) -> Result<Option<HostTensor>, ModelError> {
        let Some(slot) = self.slots.get(ours) else {
            return Ok(None);
        };
        self.used.insert(ours.to_string());
        let [rows, cols] = slot.stored;
        let bytes = &self.mmap[slot.offset..slot.offset + rows * cols * 4];
        let data = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let stored = HostTensor::new(if slot.fix == Fix::Vector { vec![cols] } else { vec![rows, cols] }, data);
        Ok(Some(match slot.fix {
            Fix::None | Fix::Vector => stored,
            Fix::Transpose => stored.transpose(),
            Fix::RopeRowsThenTranspose { heads } => interleaved_to_half(&stored, heads).transpose(),
        }))
    }

    fn source_name(&self, ours: &str) -> String {
        ours.to_string()
    }

    fn source_shape(&self, ours: &str) -> Vec<usize> {
        self.slots.get(ours).map(|s| s.stored.to_vec()).unwrap_or_default()
    }

    fn unused(&self) -> Vec<String> {
        self.slots.keys().filter(|n| !self.used.contains(*n)).cloned().collect()
    }

    fn stored_values(&self) -> usize {
        self.slots.values().fold(0, |n, s| n.saturating_add(s.stored[0] * s.stored[1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_rows_become_halves() {
        // One head of d = 4 with rows r0..r3 (pairs (r0, r1), (r2, r3)) -> [r0, r2, r1, r3].
        let w = HostTensor::new(vec![4, 1], vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(interleaved_to_half(&w, 1).data, vec![0.0, 2.0, 1.0, 3.0]);
        let two_heads = HostTensor::new(vec![8, 1], (0..8).map(|x| x as f32).collect());
        assert_eq!(interleaved_to_half(&two_heads, 2).data, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    }
}
