//! A fuzz input: the named files a parser reads (one file, or a directory's worth such as an HF
//! model's `config.json` + `model.safetensors`), written into a scratch directory before each run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Named files, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub files: Vec<(String, Vec<u8>)>,
}

impl Input {
    pub fn new(files: Vec<(String, Vec<u8>)>) -> Self {
        Self { files }
    }

    pub fn single(name: &str, bytes: Vec<u8>) -> Self {
        Self { files: vec![(name.to_string(), bytes)] }
    }

    /// The files of `dir` (regular files only, sorted by name): a seed or a saved regression.
    pub fn read_dir(dir: &Path) -> std::io::Result<Self> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                files.push((entry.file_name().to_string_lossy().into_owned(), std::fs::read(entry.path())?));
            }
        }
        files.sort();
        Ok(Self { files })
    }

    /// The files of `dir` named in `names`, under the names the input should carry:
    /// `(name in dir, name in the input)`.
    pub fn read_named(dir: &Path, names: &[(&str, &str)]) -> std::io::Result<Self> {
        let files = names
            .iter()
            .map(|(from, to)| Ok((to.to_string(), std::fs::read(dir.join(from))?)))
            .collect::<std::io::Result<_>>()?;
        Ok(Self { files })
    }

    /// Bytes over all files: what the input's allocation budget is measured against.
    pub fn total_bytes(&self) -> usize {
        self.files.iter().map(|(_, b)| b.len()).sum()
    }

    /// Makes `dir` hold exactly these files. Files equal to `previous`'s are not rewritten (most
    /// mutations touch one file of a multi-file input); anything else in `dir` is removed, so a
    /// target that adds files of its own starts afresh.
    pub fn write(&self, dir: &Path, previous: Option<&Input>) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let keep = |name: &str| self.files.iter().any(|(n, _)| n == name);
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep(&name) {
                remove(&entry.path())?;
            }
        }
        for (name, bytes) in &self.files {
            let unchanged = previous.is_some_and(|p| p.files.iter().any(|(n, b)| n == name && b == bytes));
            let path = dir.join(name);
            if !(unchanged && path.is_file()) {
                std::fs::write(&path, bytes)?;
            }
        }
        Ok(())
    }

    /// A short description for reports: each file's name and size.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self.files.iter().map(|(n, b)| format!("{n} ({} bytes)", b.len())).collect();
        parts.join(", ")
    }
}

fn remove(path: &Path) -> std::io::Result<()> {
    if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) }
}

/// A scratch directory for one campaign, removed on drop. Under `/dev/shm` where it exists (inputs
/// are rewritten thousands of times a second; tmpfs keeps that off the disk), else the temp dir.
#[derive(Debug)]
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> std::io::Result<Self> {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        // Unique within the process too: tests run in parallel threads.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("dijiang-fuzz-{}-{n}-{tag}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.path).ok();
    }
}
