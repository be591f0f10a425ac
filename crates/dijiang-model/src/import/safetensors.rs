//! Memory-mapped safetensors reading, single file or sharded (`model.safetensors.index.json`).
//!
//! Only the headers are parsed up front; a tensor's bytes are read (and converted to f32 from f32,
//! f16 or bf16) when it is asked for, so peak memory stays near one tensor beyond the model itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::ModelError;
use crate::store::HostTensor;

/// Where one tensor lives.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range in the file.
    start: usize,
    end: usize,
}

/// One or more safetensors files seen as one name -> tensor map.
#[derive(Debug)]
pub struct SafetensorsFiles {
    /// The file or the index, for messages.
    path: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    entries: BTreeMap<String, Entry>,
}

impl SafetensorsFiles {
    /// Opens `model.safetensors`, or the shards listed by a `*.safetensors.index.json`.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let is_index = path.to_string_lossy().ends_with(".index.json");
        let shard_paths: Vec<PathBuf> = if is_index {
            let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
            let index: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Format {
                path: path.into(),
                format: "safetensors index",
                reason: e.to_string(),
            })?;
            let map = index.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| ModelError::Format {
                path: path.into(),
                format: "safetensors index",
                reason: "no `weight_map` object".into(),
            })?;
            let dir = path.parent().unwrap_or(Path::new("."));
            let mut shards: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
            shards.sort();
            shards.dedup();
            shards
        } else {
            vec![path.to_path_buf()]
        };
        let mut files = Vec::with_capacity(shard_paths.len());
        let mut entries = BTreeMap::new();
        for (i, shard) in shard_paths.into_iter().enumerate() {
            if !shard.exists() {
                return Err(ModelError::invalid(
                    &shard,
                    format!("shard listed in {} is missing: download every shard of the checkpoint", path.display()),
                ));
            }
            let mmap = super::map_file(&shard)?;
            let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::Format {
                path: shard.clone(),
                format: "safetensors",
                reason: format!("{e} (truncated or corrupt file?)"),
            })?;
            for (name, info) in metadata.tensors() {
                let base = 8 + header_len;
                entries.insert(
                    name,
                    Entry {
                        file: i,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start: base + info.data_offsets.0,
                        end: base + info.data_offsets.1,
                    },
                );
            }
            files.push((shard, mmap));
        }
        Ok(Self { path: path.to_path_buf(), files, entries })
    }

    /// "N file(s), data types {..}".
    pub fn storage(&self) -> String {
        let dtypes: std::collections::BTreeSet<String> =
            self.entries.values().map(|e| format!("{:?}", e.dtype)).collect();
        let dtypes: Vec<String> = dtypes.into_iter().collect();
        format!("safetensors, {} file(s), {}", self.files.len(), dtypes.join("/"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    /// Values over all tensors (each file's header was checked to describe its data exactly).
    pub fn stored_values(&self) -> usize {
        self.entries.values().fold(0, |n, e| n.saturating_add(e.shape.iter().product()))
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Reads a tensor as f32.
    pub fn read(&self, name: &str) -> Result<HostTensor, ModelError> {
        let entry = self.entries.get(name).ok_or_else(|| ModelError::Missing {
            path: self.path.clone(),
            count: 1,
            names: name.to_string(),
        })?;
        let (path, mmap) = &self.files[entry.file];
        let bytes = &mmap[entry.start..entry.end];
        let data: Vec<f32> = match entry.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => {
                return Err(ModelError::Dtype { path: path.clone(), name: name.into(), dtype: format!("{other:?}") });
            }
        };
        Ok(HostTensor::new(entry.shape.clone(), data))
    }

    /// Reads an integer tensor (i64 or i32), e.g. token ids in test fixtures.
    pub fn read_ints(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>), ModelError> {
        let entry = self.entries.get(name).ok_or_else(|| ModelError::Missing {
            path: self.path.clone(),
            count: 1,
            names: name.to_string(),
        })?;
        let (path, mmap) = &self.files[entry.file];
        let bytes = &mmap[entry.start..entry.end];
        let data = match entry.dtype {
            Dtype::I64 => bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect(),
            Dtype::I32 => {
                bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64).collect()
            }
            other => {
                return Err(ModelError::Dtype { path: path.clone(), name: name.into(), dtype: format!("{other:?}") });
            }
        };
        Ok((entry.shape.clone(), data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    #[test]
    fn half_precision_tensors_are_read_as_f32() {
        let values = [1.5f32, -2.25, 0.0, 4096.0];
        let f16: Vec<u8> = values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        let bf16: Vec<u8> = values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
        let f32: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensors = [
            ("a", TensorView::new(Dtype::F16, vec![2, 2], &f16).unwrap()),
            ("b", TensorView::new(Dtype::BF16, vec![4], &bf16).unwrap()),
            ("c", TensorView::new(Dtype::F32, vec![4, 1], &f32).unwrap()),
        ];
        let path = std::env::temp_dir().join(format!("dijiang-halfs-{}.safetensors", std::process::id()));
        safetensors::serialize_to_file(tensors, None, &path).unwrap();
        let files = SafetensorsFiles::open(&path).unwrap();
        for (name, shape) in [("a", vec![2, 2]), ("b", vec![4]), ("c", vec![4, 1])] {
            let t = files.read(name).unwrap();
            assert_eq!(t.shape, shape);
            assert_eq!(t.data, values, "{name}");
        }
        std::fs::remove_file(&path).ok();
    }
}
