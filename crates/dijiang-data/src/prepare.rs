//! `prepare`: text in, packed token shards out. Documents are read in input order, tokenised in
//! parallel batches (rayon) without BOS, each followed by EOS, and appended to the train or
//! validation shards by a seeded per-document rule. Shards are written into a temporary directory
//! that replaces the output only when everything succeeded.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use dijiang_model::tokenizer::Tokenizer;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::DataError;
use crate::manifest::{MANIFEST, Manifest, Shard, Source, SplitInfo, SplitRule, TokenType, TokenizerInfo};
use crate::sources::{Record, file_bytes, input_files, read_file};

#[derive(Debug, Clone)]
pub struct PrepareConfig {
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub split: SplitRule,
    /// Malformed records are errors rather than counted and skipped.
    pub strict: bool,
    /// Tokens per shard file.
    pub shard_tokens: usize,
    pub progress: bool,
}

/// Appends tokens to numbered shard files of one split, hashing as it goes.
struct ShardWriter {
    dir: PathBuf,
    prefix: &'static str,
    dtype: TokenType,
    limit: usize,
    current: Option<(BufWriter<File>, Sha256, usize)>,
    info: SplitInfo,
}

impl ShardWriter {
    fn new(dir: &Path, prefix: &'static str, dtype: TokenType, limit: usize) -> Self {
        Self { dir: dir.into(), prefix, dtype, limit, current: None, info: SplitInfo::default() }
    }

    fn file_name(&self) -> String {
        format!("{}-{:05}.bin", self.prefix, self.info.shards.len())
    }

    fn write(&mut self, tokens: &[u32]) -> Result<(), DataError> {
        let mut rest = tokens;
        while !rest.is_empty() {
            if self.current.is_none() {
                let path = self.dir.join(self.file_name());
                let file = File::create(&path).map_err(|e| DataError::io(&path, e))?;
                self.current = Some((BufWriter::with_capacity(1 << 20, file), Sha256::new(), 0));
            }
            let (writer, hash, count) = self.current.as_mut().expect("open shard");
            let take = rest.len().min(self.limit - *count);
            let bytes: Vec<u8> = match self.dtype {
                TokenType::U16 => rest[..take].iter().flat_map(|t| (*t as u16).to_le_bytes()).collect(),
                TokenType::U32 => rest[..take].iter().flat_map(|t| t.to_le_bytes()).collect(),
            };
            crate::fault::check("prepare", None)
                .and_then(|()| writer.write_all(&bytes))
                .map_err(|e| DataError::io(&self.dir, e))?;
            hash.update(&bytes);
            *count += take;
            rest = &rest[take..];
            if *count == self.limit {
                self.close()?;
            }
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), DataError> {
        if let Some((writer, hash, tokens)) = self.current.take() {
            let file = writer.into_inner().map_err(|e| DataError::io(&self.dir, e.into_error()))?;
            file.sync_all().map_err(|e| DataError::io(&self.dir, e))?;
            let name = self.file_name();
            self.info.shards.push(Shard { file: name, tokens, sha256: format!("{:x}", hash.finalize()) });
            self.info.tokens += tokens;
        }
        Ok(())
    }
}

/// Documents waiting to be tokenised together.
const BATCH_BYTES: usize = 4 << 20;

/// A directory beside the output that becomes it when everything succeeded, and is removed
/// otherwise: an interrupted or failed `prepare` leaves nothing that looks like a dataset.
struct Staging {
    dir: PathBuf,
    committed: bool,
}

impl Staging {
    fn beside(out: &Path) -> Result<Self, DataError> {
        let name =
            out.file_name().ok_or_else(|| DataError::Invalid(format!("{}: not a directory name", out.display())))?;
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
        let dir = parent.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        Ok(Self { dir, committed: false })
    }

    /// Writes the manifest last and moves the directory to `out` (replacing what was there).
    fn commit(mut self, manifest: &Manifest, out: &Path) -> Result<(), DataError> {
        let path = self.dir.join(MANIFEST);
        std::fs::write(&path, serde_json::to_string_pretty(manifest).expect("manifest serialises"))
            .and_then(|()| File::open(&path)?.sync_all())
            .map_err(|e| DataError::io(&path, e))?;
        if out.exists() {
            std::fs::remove_dir_all(out).map_err(|e| DataError::io(out, e))?;
        }
        std::fs::rename(&self.dir, out).map_err(|e| DataError::io(out, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }
}

/// What tokenising the inputs produced.
struct Tokenised {
    train: SplitInfo,
    validation: SplitInfo,
    bad: usize,
    bad_examples: Vec<String>,
}

/// Prepares the dataset; returns its manifest.
pub fn prepare(tokenizer: &Tokenizer, config: &PrepareConfig) -> Result<Manifest, DataError> {
    let eos = tokenizer.eos.ok_or_else(|| {
        DataError::Invalid(format!("tokenizer {} has no EOS token to separate documents", tokenizer.identity))
    })?;
    if !(0.0..1.0).contains(&config.split.validation_fraction) {
        return Err(DataError::Invalid(format!(
            "the validation fraction must be in [0, 1), got {}",
            config.split.validation_fraction
        )));
    }
    let files = input_files(&config.inputs)?;
    let dtype = TokenType::for_vocab(tokenizer.vocab_size());
    let staging = Staging::beside(&config.out)?;
    let Tokenised { train, validation, bad, bad_examples } =
        tokenise(tokenizer, config, &files, dtype, eos, &staging.dir)?;
    if train.tokens + validation.tokens == 0 {
        return Err(DataError::Invalid(format!(
            "the inputs ({}) yield no tokens{}: nothing to prepare",
            config.inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
            if bad > 0 { format!(" ({bad} malformed records skipped)") } else { String::new() }
        )));
    }
    let manifest = Manifest {
        format: crate::manifest::FORMAT.into(),
        version: crate::manifest::VERSION,
        tokenizer: TokenizerInfo {
            identity: tokenizer.identity.clone(),
            fingerprint: tokenizer.fingerprint(),
            vocab_size: tokenizer.vocab_size(),
            eos,
        },
        dtype,
        train,
        validation,
        split: config.split,
        sources: files.iter().map(|f| Source { path: f.display().to_string(), bytes: file_bytes(f) }).collect(),
        bad_records: bad,
        bad_examples,
    };
    staging.commit(&manifest, &config.out)?;
    Ok(manifest)
}

/// A progress bar over `bytes` of input (hidden unless `shown`).
fn progress_bar(bytes: u64, shown: bool) -> ProgressBar {
    let bar = if shown { ProgressBar::new(bytes) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    bar
}

/// Tokenises `files` in parallel batches into train and validation shards in `dir`.
fn tokenise(
    tokenizer: &Tokenizer,
    config: &PrepareConfig,
    files: &[PathBuf],
    dtype: TokenType,
    eos: u32,
    dir: &Path,
) -> Result<Tokenised, DataError> {
    let bar = progress_bar(files.iter().map(|f| file_bytes(f)).sum(), config.progress);
    let mut writers = [
        ShardWriter::new(dir, "train", dtype, config.shard_tokens),
        ShardWriter::new(dir, "val", dtype, config.shard_tokens),
    ];
    let mut batch: Vec<(u64, String)> = Vec::new();
    let (mut batch_bytes, mut next_doc) = (0, 0u64);
    let (mut bad, mut bad_examples) = (0usize, Vec::new());
    let mut failure: Option<DataError> = None;
    let start = std::time::Instant::now();
    let flush = |batch: &mut Vec<(u64, String)>, writers: &mut [ShardWriter; 2]| -> Result<(), DataError> {
        let encoded: Vec<Result<Vec<u32>, DataError>> =
            batch.par_iter().map(|(_, text)| tokenizer.encode_with(text, false).map_err(DataError::from)).collect();
        for ((doc, _), ids) in batch.drain(..).zip(encoded) {
            let mut ids = ids?;
            ids.push(eos);
            let split = usize::from(config.split.is_validation(doc));
            writers[split].info.documents += 1;
            writers[split].write(&ids)?;
        }
        Ok(())
    };
    for file in files {
        read_file(file, |record| {
            if failure.is_some() {
                return;
            }
            match record {
                Record::Doc(text) => {
                    batch_bytes += text.len();
                    batch.push((next_doc, text));
                    next_doc += 1;
                    if batch_bytes >= BATCH_BYTES {
                        bar.inc(batch_bytes as u64);
                        batch_bytes = 0;
                        failure = flush(&mut batch, &mut writers).err();
                        let tokens = writers[0].info.tokens + writers[1].info.tokens;
                        let rate = tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
                        bar.set_message(format!("{next_doc} docs, {:.0}k tokens/s", rate / 1e3));
                    }
                }
                Record::Bad { path, line, reason } => {
                    if config.strict {
                        failure = Some(DataError::BadInput { path, line, reason: format!("{reason} (--strict)") });
                        return;
                    }
                    bad += 1;
                    if bad_examples.len() < 20 {
                        let example = format!("{}:{line}: {reason}", path.display());
                        bar.suspend(|| tracing::warn!("skipped {example}"));
                        bad_examples.push(example);
                    }
                }
            }
        })?;
        if let Some(e) = failure.take() {
            return Err(e);
        }
    }
    flush(&mut batch, &mut writers)?;
    for w in &mut writers {
        w.close()?;
    }
    bar.finish_and_clear();
    let [train, validation] = writers.map(|w| w.info);
    Ok(Tokenised { train, validation, bad, bad_examples })
}
