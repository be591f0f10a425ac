//! llama2.c seeds: tiny checkpoints (shared and separate classifier) and a 512-token tokenizer
//! written here, and stories260K with its tok512.bin from ../shared, read at test time.

use anyhow::Result;

use super::{shared, values};
use crate::input::Input;

/// The f32 values a checkpoint with this header holds (`None` when the header makes no sense or
/// the count overflows): the header is dim, hidden_dim, n_layers, n_heads, n_kv_heads,
/// vocab_size (negative: a separate classifier), seq_len.
pub fn float_count(header: [i32; 7]) -> Option<usize> {
    let [dim, hidden, layers, heads, kv_heads, vocab, seq] = header.map(|v| v.unsigned_abs() as usize);
    let kv_dim = dim.checked_mul(kv_heads)?.checked_div(heads)?;
    let square = dim.checked_mul(dim)?;
    let per_layer = [
        dim.checked_mul(2)?,
        square.checked_mul(2)?,
        kv_dim.checked_mul(dim)?.checked_mul(2)?,
        hidden.checked_mul(dim)?.checked_mul(3)?,
    ];
    let classifier = if header[5] < 0 { vocab.checked_mul(dim)? } else { 0 };
    // Embedding, the layers, the final norm, the two RoPE tables, the classifier.
    let parts = [
        vocab.checked_mul(dim)?,
        layers.checked_mul(per_layer.iter().try_fold(0usize, |a, b| a.checked_add(*b))?)?,
        dim,
        seq.checked_mul(dim / heads)?,
        classifier,
    ];
    parts.iter().try_fold(0usize, |a, b| a.checked_add(*b))
}

/// A checkpoint with `header` and deterministic values.
pub fn checkpoint(header: [i32; 7]) -> Vec<u8> {
    let floats = float_count(header).expect("a valid seed header");
    let mut out: Vec<u8> = header.iter().flat_map(|v| v.to_le_bytes()).collect();
    values(floats, 5).iter().for_each(|v| out.extend(v.to_le_bytes()));
    out
}

/// A llama2.c tokenizer of 512 tokens: `<unk>`, BOS, EOS, the 256 byte tokens, then pieces of
/// a few words (scores favour longer pieces), padded with two-letter pieces.
pub fn tokenizer() -> Vec<u8> {
    let mut pieces: Vec<Vec<u8>> = vec![b"<unk>".to_vec(), b"\n<s>\n".to_vec(), b"\n</s>\n".to_vec()];
    pieces.extend((0..=255u8).map(|b| format!("<0x{b:02X}>").into_bytes()));
    let add = |pieces: &mut Vec<Vec<u8>>, p: String| {
        if !pieces.contains(&p.clone().into_bytes()) {
            pieces.push(p.into_bytes());
        }
    };
    for c in " abcdefghijklmnopqrstuvwxyz.,".chars() {
        add(&mut pieces, c.to_string());
    }
    for word in ["Once", "upon", "time", "there", "was", "little", "girl", "named", "Lily", "happy", "play"] {
        for k in 2..=word.len() {
            add(&mut pieces, format!(" {}", &word[..k]));
        }
    }
    let letters: Vec<char> = "etaoinshrdlu".chars().collect();
    for (a, b) in letters.iter().flat_map(|a| letters.iter().map(move |b| (a, b))) {
        add(&mut pieces, format!("{a}{b}"));
    }
    for k in 0.. {
        if pieces.len() >= 512 {
            break;
        }
        add(&mut pieces, format!(" w{k}"));
    }
    pieces.truncate(512);
    let max_len = pieces.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let mut out = max_len.to_le_bytes().to_vec();
    for (i, piece) in pieces.iter().enumerate() {
        let score = if i < 259 { 0.0 } else { piece.len() as f32 - i as f32 / 1000.0 };
        out.extend(score.to_le_bytes());
        out.extend((piece.len() as i32).to_le_bytes());
        out.extend(piece);
    }
    out
}

/// `model.bin` with `tok512.bin` beside it.
pub fn model_seeds() -> Result<Vec<Input>> {
    let tok = tokenizer();
    let with_tok = |model: Vec<u8>| Input::new(vec![("model.bin".into(), model), ("tok512.bin".into(), tok.clone())]);
    let mut seeds =
        vec![with_tok(checkpoint([8, 16, 2, 2, 1, 512, 16])), with_tok(checkpoint([8, 12, 1, 4, 4, -512, 8]))];
    if let (Some(model), Some(tok)) =
        (shared("models/stories260K/stories260K.bin"), shared("models/stories260K/tok512.bin"))
    {
        seeds.push(Input::new(vec![
            ("model.bin".into(), std::fs::read(model)?),
            ("tok512.bin".into(), std::fs::read(tok)?),
        ]));
    }
    Ok(seeds)
}

/// `tok512.bin` alone.
pub fn tokenizer_seeds() -> Result<Vec<Input>> {
    let mut seeds = vec![Input::single("tok512.bin", tokenizer())];
    if let Some(tok) = shared("models/stories260K/tok512.bin") {
        seeds.push(Input::single("tok512.bin", std::fs::read(tok)?));
    }
    Ok(seeds)
}
