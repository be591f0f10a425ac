//! The project's own checkpoint format: a directory holding `dijiang.json` (format tag, version, the
//! full [`ModelConfig`], provenance) and `model.safetensors` with every parameter under our names
//! (Burn's module paths without enum variants), in our layout, in the run's float type.
//!
//! Written atomically: into a temporary sibling directory, fsynced, then renamed over the target,
//! so an interrupted save never leaves a half-written model where a good one was.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use serde::{Deserialize, Serialize};

use super::safetensors::SafetensorsFiles;
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::store::{HostTensor, TensorStore};
use crate::transformer::Transformer;

pub const MANIFEST: &str = "dijiang.json";
pub const WEIGHTS: &str = "model.safetensors";
const FORMAT: &str = "dijiang-model";
const VERSION: u32 = 1;

/// The manifest of a saved model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub config: ModelConfig,
    /// Where the weights came from (e.g. the teacher a student was converted from).
    #[serde(default)]
    pub source: Option<String>,
    /// Parameters initialised rather than copied when the model was made.
    #[serde(default)]
    pub new_parameters: Vec<String>,
}

impl Manifest {
    pub fn new(config: ModelConfig) -> Self {
        Self { format: FORMAT.into(), version: VERSION, config, source: None, new_parameters: Vec::new() }
    }
}

/// Whether `dir` is a saved model of ours.
pub fn is_native(dir: &Path) -> bool {
    dir.join(MANIFEST).is_file()
}

fn fsync_dir(dir: &Path) -> Result<(), ModelError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| ModelError::io(dir, e))
}

/// Saves `model` with `manifest` to `dir`, atomically replacing whatever was there.
pub fn save<B: Backend>(model: &Transformer<B>, manifest: &Manifest, dir: &Path) -> Result<(), ModelError> {
    let name = dir.file_name().ok_or_else(|| ModelError::invalid(dir, "not a directory name"))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| ModelError::io(&parent, e))?;
    let tmp = parent.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;

    let weights = tmp.join(WEIGHTS);
    let mut store = SafetensorsStore::from_file(&weights).skip_enum_variants(true).overwrite(true);
    model.save_into(&mut store).map_err(|e| ModelError::invalid(&weights, format!("saving weights: {e}")))?;
    let json = serde_json::to_string_pretty(manifest).expect("manifest serialises");
    std::fs::write(tmp.join(MANIFEST), json).map_err(|e| ModelError::io(tmp.join(MANIFEST), e))?;
    for file in [&weights, &tmp.join(MANIFEST)] {
        File::open(file).and_then(|f| f.sync_all()).map_err(|e| ModelError::io(file, e))?;
    }
    fsync_dir(&tmp)?;

    // Swap in: move any old model aside first, so a failure leaves one complete copy in place.
    let old = parent.join(format!(".{}.old-{}", name.to_string_lossy(), std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| ModelError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| ModelError::io(dir, e))?;
    fsync_dir(&parent)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| ModelError::io(&old, e))?;
    }
    Ok(())
}

/// A saved model, read through the same strict path as any other checkpoint.
#[derive(Debug)]
pub struct NativeCheckpoint {
    pub manifest: Manifest,
    files: SafetensorsFiles,
    used: BTreeSet<String>,
}

impl NativeCheckpoint {
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| ModelError::Format {
            path: path.clone(),
            format: "dijiang model manifest",
            reason: e.to_string(),
        })?;
        if manifest.format != FORMAT || manifest.version != VERSION {
            return Err(ModelError::invalid(
                &path,
                format!(
                    "format `{}` version {}; this build reads `{FORMAT}` version {VERSION}",
                    manifest.format, manifest.version
                ),
            ));
        }
        Ok(Self { manifest, files: SafetensorsFiles::open(&dir.join(WEIGHTS))?, used: BTreeSet::new() })
    }
}

impl NativeCheckpoint {
    pub fn storage(&self) -> String {
        self.files.storage()
    }
}

impl TensorStore for NativeCheckpoint {
    fn path(&self) -> &Path {
        self.files.path()
    }

    fn fetch(&mut self, name: &str) -> Result<Option<HostTensor>, ModelError> {
        if !self.files.contains(name) {
            return Ok(None);
        }
        self.used.insert(name.to_string());
        self.files.read(name).map(Some)
    }

    fn source_name(&self, name: &str) -> String {
        name.to_string()
    }

    fn source_shape(&self, name: &str) -> Vec<usize> {
        self.files.shape(name).map(<[usize]>::to_vec).unwrap_or_default()
    }

    fn unused(&self) -> Vec<String> {
        self.files.names().filter(|n| !self.used.contains(*n)).cloned().collect()
    }

    fn stored_values(&self) -> usize {
        self.files.stored_values()
    }
}
