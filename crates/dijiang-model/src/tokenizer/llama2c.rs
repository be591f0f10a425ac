//! The llama2.c tokenizer (`tok*.bin`, `../shared/models/stories260K/README.md`): a vocabulary with
//! scores, encoded as llama2.c does it (BOS, a dummy " " prefix, one token per character with byte
//! fallback, then repeatedly merge the adjacent pair whose concatenation is the highest-scoring
//! token). Written by hand: the algorithm is llama2.c's own, which no tokenizer crate reproduces
//! exactly (rank-based BPE differs when scores and merge order disagree).

use std::collections::HashMap;
use std::path::Path;

use crate::error::ModelError;

pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
/// Byte-fallback tokens `<0x00>..<0xFF>` are ids 3..259.
const BYTE_OFFSET: u32 = 3;

#[derive(Debug, Clone)]
pub struct Llama2cTokenizer {
    pieces: Vec<Vec<u8>>,
    scores: Vec<f32>,
    lookup: HashMap<Vec<u8>, u32>,
    /// (left, right) -> the token their concatenation is, for every token that splits in two.
    pairs: HashMap<(u32, u32), u32>,
}

impl Llama2cTokenizer {
    pub fn open(path: &Path, vocab_size: usize) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        let bad = |reason: String| ModelError::Format { path: path.into(), format: "llama2.c tokenizer", reason };
        let mut pos = 4; // max_token_length, unused
        let mut take = |n: usize| -> Result<&[u8], ModelError> {
            let s = bytes.get(pos..pos + n).ok_or_else(|| bad(format!("truncated at byte {pos}")))?;
            pos += n;
            Ok(s)
        };
        // `vocab_size` comes from a file name or a checkpoint header: reserve no more than the file
        // can hold (a token takes at least 8 bytes).
        let capacity = vocab_size.min(bytes.len() / 8);
        let (mut pieces, mut scores) = (Vec::with_capacity(capacity), Vec::with_capacity(capacity));
        for _ in 0..vocab_size {
            let score = f32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
            let len = i32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
            let len = usize::try_from(len).map_err(|_| bad(format!("negative token length {len}")))?;
            pieces.push(take(len)?.to_vec());
            scores.push(score);
        }
        let lookup: HashMap<Vec<u8>, u32> = pieces.iter().enumerate().map(|(i, p)| (p.clone(), i as u32)).collect();
        let mut pairs = HashMap::new();
        for (id, piece) in pieces.iter().enumerate() {
            for cut in 1..piece.len() {
                if let (Some(&a), Some(&b)) = (lookup.get(&piece[..cut]), lookup.get(&piece[cut..])) {
                    pairs.insert((a, b), id as u32);
                }
            }
        }
        Ok(Self { pieces, scores, lookup, pairs })
    }

    /// A token's stored bytes.
    pub fn piece_bytes(&self, id: u32) -> &[u8] {
        &self.pieces[id as usize]
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn encode(&self, text: &str, bos: bool, eos: bool) -> Vec<u32> {
        let mut tokens = Vec::new();
        if bos {
            tokens.push(BOS);
        }
        if !text.is_empty()
            && let Some(space) = self.lookup.get(b" ".as_slice())
        {
            tokens.push(*space);
        }
        for ch in text.chars() {
            let mut buf = [0u8; 4];
            let encoded = ch.encode_utf8(&mut buf).as_bytes();
            match self.lookup.get(encoded) {
                Some(id) => tokens.push(*id),
                None => tokens.extend(encoded.iter().map(|b| *b as u32 + BYTE_OFFSET)),
            }
        }
        // Merge the best-scoring adjacent pair until no pair forms a token.
        let start = usize::from(bos);
        loop {
            let mut best: Option<(f32, usize, u32)> = None;
            for i in start..tokens.len().saturating_sub(1) {
                if let Some(&id) = self.pairs.get(&(tokens[i], tokens[i + 1]))
                    && best.is_none_or(|(score, _, _)| self.scores[id as usize] > score)
                {
                    best = Some((self.scores[id as usize], i, id));
                }
            }
            let Some((_, i, id)) = best else { break };
            tokens[i] = id;
            tokens.remove(i + 1);
        }
        if eos {
            tokens.push(EOS);
        }
        tokens
    }

    /// The bytes of one token after `prev` (llama2.c strips the leading space after BOS).
    fn piece(&self, prev: Option<u32>, id: u32) -> Vec<u8> {
        let Some(piece) = self.pieces.get(id as usize) else {
            return Vec::new();
        };
        if (BYTE_OFFSET..BYTE_OFFSET + 256).contains(&id) {
            return vec![(id - BYTE_OFFSET) as u8];
        }
        if id == BOS || id == EOS {
            return Vec::new();
        }
        match (prev, piece.first()) {
            (Some(BOS), Some(b' ')) => piece[1..].to_vec(),
            _ => piece.clone(),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        let mut prev = None;
        for &id in ids {
            bytes.extend(self.piece(prev, id));
            prev = Some(id);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vocabulary_size_beyond_the_file_is_an_error_not_an_allocation() {
        // As `tok1099511627776.bin` would claim: 2^40 tokens in a 12-byte file.
        let path = std::env::temp_dir().join(format!("dijiang-tok-huge-{}.bin", std::process::id()));
        std::fs::write(&path, [0u8; 12]).unwrap();
        let err = Llama2cTokenizer::open(&path, 1 << 40).unwrap_err().to_string();
        std::fs::remove_file(&path).ok();
        assert!(err.contains("truncated"), "{err}");
    }
}
