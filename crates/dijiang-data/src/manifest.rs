//! The manifest of a prepared dataset (`manifest.json` beside the shards).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DataError;

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: &str = "dijiang-tokens";
pub const VERSION: u32 = 1;

/// One normal path component: no directory, no `..`, not absolute.
fn is_plain_file_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(_)), None))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub tokenizer: TokenizerInfo,
    /// `u16` where the vocabulary fits, else `u32`; little-endian.
    pub dtype: TokenType,
    pub train: SplitInfo,
    pub validation: SplitInfo,
    pub split: SplitRule,
    pub sources: Vec<Source>,
    /// Records skipped as malformed (invalid JSON or UTF-8, truncated streams).
    pub bad_records: usize,
    /// The first few of them, as `file:line: reason`.
    pub bad_examples: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerInfo {
    /// Where it came from (informational).
    pub identity: String,
    /// Content fingerprint: what must match the model's tokenizer.
    pub fingerprint: String,
    pub vocab_size: usize,
    /// Appended after every document.
    pub eos: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    U16,
    U32,
}

impl TokenType {
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 { Self::U16 } else { Self::U32 }
    }

    pub fn bytes(self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitInfo {
    pub documents: usize,
    pub tokens: usize,
    pub shards: Vec<Shard>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    pub file: String,
    pub tokens: usize,
    pub sha256: String,
}

/// Document `i` goes to validation when a hash of (`seed`, `i`) falls below `validation_fraction`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitRule {
    pub validation_fraction: f64,
    pub seed: u64,
}

impl SplitRule {
    /// SplitMix64 of the seed and document index, as a uniform number in [0, 1).
    pub fn is_validation(&self, document: u64) -> bool {
        let mut z = self.seed ^ document.wrapping_mul(0x9e3779b97f4a7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64) < self.validation_fraction
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub path: String,
    pub bytes: u64,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self, DataError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| DataError::Invalid(format!("{}: not a dataset manifest: {e}", path.display())))?;
        if manifest.format != FORMAT || manifest.version != VERSION {
            return Err(DataError::Invalid(format!(
                "{}: format `{}` v{}, expected `{FORMAT}` v{VERSION}: prepare the data again",
                path.display(),
                manifest.format,
                manifest.version
            )));
        }
        // Shards are files beside the manifest: a name reaching elsewhere (`../x`, `/dev/zero`)
        // would make training read a file the dataset does not own.
        let mut shards = manifest.train.shards.iter().chain(&manifest.validation.shards);
        if let Some(shard) = shards.find(|s| !is_plain_file_name(&s.file)) {
            return Err(DataError::Invalid(format!(
                "{}: shard `{}` is not a file name beside the manifest",
                path.display(),
                shard.file
            )));
        }
        Ok(manifest)
    }

    /// Errors unless the data was tokenised by a tokenizer with this fingerprint.
    pub fn check_tokenizer(&self, fingerprint: &str, dir: &Path) -> Result<(), DataError> {
        if self.tokenizer.fingerprint != fingerprint {
            return Err(DataError::Invalid(format!(
                "{}: tokenised with {} ({}), but the model's tokenizer is {fingerprint}: prepare the data \
                 with the model's tokenizer (`dijiang prepare --tokenizer <model> ...`)",
                dir.display(),
                self.tokenizer.identity,
                self.tokenizer.fingerprint
            )));
        }
        Ok(())
    }
}
