//! Mutations of seed inputs, driven by a seeded generator so that every campaign is reproducible
//! from its seed: bit flips, byte overwrites, insertions, deletions, duplications, splices from
//! other seeds, "interesting" integers written over binary length / count / shape fields and over
//! numbers in text (JSON, TOML), and truncations. One to eight of them are stacked per input.
//!
//! A third of the mutations of JSON, TOML and safetensors headers are made on the parsed tree
//! ([`tree`]), and half the mutated safetensors, GGUF and llama2.c files are then repaired
//! ([`structure`]).
//!
//! Positions favour the start of a file, where headers are: a header field hit by a uniform
//! position in a 1 MB checkpoint would be a rare event.

use crate::input::Input;
use crate::{structure, tree};

/// SplitMix64: small, fast, and enough for choosing mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// A position in `0..len` (`len > 0`), half the time within the first 64 or 4096 bytes.
    pub fn position(&mut self, len: usize) -> usize {
        let window = match self.below(4) {
            0 => 64,
            1 => 4096,
            _ => len,
        };
        self.below(len.min(window))
    }

    /// A chunk length of at most `max` (`max > 0`), mostly short.
    pub fn chunk(&mut self, max: usize) -> usize {
        let scale = 1usize << self.below(13);
        1 + self.below(max.min(scale))
    }
}

/// Values that break size arithmetic: zero, one, all ones, and powers of two around 32- and 64-bit
/// limits (as u64; written as 4 or 8 little-endian bytes).
pub const INTERESTING: [u64; 12] = [
    0,
    1,
    u64::MAX, // -1
    0x7fff_ffff,
    1 << 31,
    0xffff_ffff,
    1 << 32,
    1 << 16,
    1 << 40,
    1 << 60,
    1 << 63,
    u64::MAX - 1,
];

/// The same idea for numbers written as text.
const INTERESTING_TEXT: [&str; 14] = [
    "0",
    "1",
    "-1",
    "2147483648",
    "4294967295",
    "4294967296",
    "1152921504606846976",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "1e308",
    "0.5",
    "65537",
];

/// A mutant of `seed`: one to eight stacked mutations of its files. `pool` provides splice donors.
pub fn mutate(seed: &Input, pool: &[Input], rng: &mut Rng) -> Input {
    let mut out = seed.clone();
    let mut mutated = vec![false; out.files.len()];
    let count = 1 + (rng.below(8).min(rng.below(8))); // mostly 1-3
    for _ in 0..count {
        let f = rng.below(out.files.len());
        let name = out.files[f].0.clone();
        let donor = pool[rng.below(pool.len())].files.iter().find(|(n, _)| *n == name).map(|(_, b)| b.clone());
        // A third of the mutations of a JSON / TOML file or a safetensors header keep its syntax.
        let bytes = &mut out.files[f].1;
        match rng.one_in(3).then(|| tree::mutate(&name, bytes, rng)).flatten() {
            Some(mutant) => *bytes = mutant,
            None => mutate_bytes(bytes, donor.as_deref().unwrap_or(&[]), rng),
        }
        mutated[f] = true;
    }
    // Half the mutated containers are made consistent with their mutated headers again.
    for ((name, bytes), _) in out.files.iter_mut().zip(mutated).filter(|(_, m)| *m) {
        if rng.one_in(2)
            && let Some(repaired) = structure::repair(name, bytes)
        {
            *bytes = repaired;
        }
    }
    out
}

/// One mutation of `bytes`.
pub fn mutate_bytes(bytes: &mut Vec<u8>, donor: &[u8], rng: &mut Rng) {
    if bytes.is_empty() {
        insert_random(bytes, rng);
        return;
    }
    match rng.below(12) {
        0 | 1 => {
            let p = rng.position(bytes.len());
            bytes[p] ^= 1 << rng.below(8);
        }
        2 => {
            let p = rng.position(bytes.len());
            bytes[p] = rng.next_u64() as u8;
        }
        3 => insert_random(bytes, rng),
        4 => {
            let p = rng.position(bytes.len());
            let n = rng.chunk(bytes.len() - p);
            bytes.drain(p..p + n);
        }
        5 => duplicate(bytes, rng),
        6 => splice(bytes, donor, rng),
        7 | 8 => interesting_binary(bytes, rng),
        9 | 10 => interesting_text(bytes, rng),
        _ => {
            let cut = rng.position(bytes.len());
            bytes.truncate(cut);
        }
    }
}

fn insert_random(bytes: &mut Vec<u8>, rng: &mut Rng) {
    let p = if bytes.is_empty() { 0 } else { rng.position(bytes.len() + 1) };
    let n = rng.chunk(16);
    let fill: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
    bytes.splice(p..p, fill);
}

/// Repeats a chunk of the file in place (grows arrays, repeats records and keys).
fn duplicate(bytes: &mut Vec<u8>, rng: &mut Rng) {
    let p = rng.position(bytes.len());
    let n = rng.chunk(bytes.len() - p);
    let chunk = bytes[p..p + n].to_vec();
    let at = rng.position(bytes.len() + 1);
    bytes.splice(at..at, chunk);
}

/// Overwrites or inserts a chunk of another seed's file of the same name.
fn splice(bytes: &mut Vec<u8>, donor: &[u8], rng: &mut Rng) {
    if donor.is_empty() {
        return duplicate(bytes, rng);
    }
    let from = rng.position(donor.len());
    let chunk = &donor[from..from + rng.chunk(donor.len() - from)];
    let at = rng.position(bytes.len());
    if rng.one_in(2) {
        let end = (at + chunk.len()).min(bytes.len());
        bytes.splice(at..end, chunk.iter().copied());
    } else {
        bytes.splice(at..at, chunk.iter().copied());
    }
}

/// Writes an interesting integer (4 or 8 bytes, little-endian) over a place that holds a small
/// one: length prefixes, counts, dimensions and offsets are small numbers, weights are not.
fn interesting_binary(bytes: &mut [u8], rng: &mut Rng) {
    let width = if rng.one_in(2) { 4 } else { 8 };
    if bytes.len() < width {
        return;
    }
    let span = bytes.len() - width + 1;
    let small = |b: &[u8]| {
        let v = b.iter().rev().fold(0u64, |acc, x| (acc << 8) | *x as u64);
        (1..1 << 24).contains(&v)
    };
    // The first small value at or after a random position, else in the first 4 KB (the header).
    let from = rng.position(span);
    let at = (from..span.min(from + 4096)).chain(0..span.min(4096)).find(|&i| small(&bytes[i..i + width]));
    let at = at.unwrap_or(from);
    let mut value = INTERESTING[rng.below(INTERESTING.len())];
    if rng.one_in(4) {
        // Near the old value: off-by-one and doubled sizes.
        let old = bytes[at..at + width].iter().rev().fold(0u64, |acc, x| (acc << 8) | *x as u64);
        value = match rng.below(3) {
            0 => old.wrapping_add(1),
            1 => old.wrapping_sub(1),
            _ => old.wrapping_mul(2),
        };
    }
    bytes[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
}

/// Replaces a run of ASCII digits (with its sign) by an interesting number.
fn interesting_text(bytes: &mut Vec<u8>, rng: &mut Rng) {
    // Look in a window (large files are mostly binary data) for the starts of digit runs.
    let start = rng.position(bytes.len()).saturating_sub(2048);
    let end = (start + 4096).min(bytes.len());
    let starts: Vec<usize> =
        (start..end).filter(|&i| bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit())).collect();
    // Numbers standing alone (`"tokens": 16`, `steps = 5`) rather than digits inside a word or a
    // string (a sha256 in a manifest has dozens of digit runs, none of them a count).
    let standalone: Vec<usize> = starts.iter().copied().filter(|&i| is_standalone(bytes, i)).collect();
    let runs = if standalone.is_empty() || rng.one_in(8) { starts } else { standalone };
    if runs.is_empty() {
        return interesting_binary(bytes, rng);
    }
    let mut from = runs[rng.below(runs.len())];
    let mut to = from;
    while to < bytes.len() && (bytes[to].is_ascii_digit() || bytes[to] == b'.') {
        to += 1;
    }
    if from > 0 && bytes[from - 1] == b'-' {
        from -= 1;
    }
    let text = INTERESTING_TEXT[rng.below(INTERESTING_TEXT.len())];
    bytes.splice(from..to, text.bytes());
}

/// Whether the digit run starting at `i` is a token of its own: not inside a word or a quoted
/// string.
fn is_standalone(bytes: &[u8], i: usize) -> bool {
    let word = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'"' | b'\'' | b'_');
    let end = bytes[i..].iter().position(|b| !b.is_ascii_digit() && *b != b'.').map_or(bytes.len(), |n| i + n);
    // The byte before the number, past a minus sign.
    let sign = usize::from(i > 0 && bytes[i - 1] == b'-');
    let before = i.checked_sub(1 + sign).map(|p| &bytes[p]);
    !before.is_some_and(word) && !bytes.get(end).is_some_and(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_mutants() {
        let seed = Input::single("a.json", br#"{"shape": [12, 34], "offset": 5}"#.to_vec());
        let run = |s| {
            let mut rng = Rng::new(s);
            (0..50).map(|_| mutate(&seed, std::slice::from_ref(&seed), &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn text_numbers_are_replaced_whole() {
        let mut rng = Rng::new(1);
        for _ in 0..100 {
            let mut bytes = b"x = 123\n".to_vec();
            interesting_text(&mut bytes, &mut rng);
            let text = String::from_utf8(bytes).unwrap();
            let value = text.trim_start_matches("x = ").trim_end();
            assert!(INTERESTING_TEXT.contains(&value), "{text}");
        }
    }

    #[test]
    fn numbers_in_strings_are_not_standalone() {
        let text = br#"{"tokens": 16, "sha256": "7fa3", "x": [-2, 3.5]}"#;
        let standalone: Vec<usize> = (0..text.len())
            .filter(|&i| text[i].is_ascii_digit() && !text[i - 1].is_ascii_digit() && text[i - 1] != b'.')
            .filter(|&i| is_standalone(text, i))
            .collect();
        assert_eq!(standalone.iter().map(|&i| text[i]).collect::<Vec<_>>(), b"123");
    }

    #[test]
    fn small_binary_fields_are_found() {
        // A 4-byte count of 3 among 4 KB of large "weights": random writes would hit it about
        // once in 1000 tries, the search for small values far more often.
        let mut rng = Rng::new(3);
        let mut hits = 0;
        for _ in 0..100 {
            let mut bytes = [0xffu8; 4096].to_vec();
            bytes[20..24].copy_from_slice(&3u32.to_le_bytes());
            interesting_binary(&mut bytes, &mut rng);
            hits += usize::from(bytes[20..24] != 3u32.to_le_bytes());
        }
        assert!(hits >= 10, "{hits}");
    }
}
