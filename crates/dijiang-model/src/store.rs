//! What a checkpoint format provides: host tensors under our parameter names. Formats
//! ([`crate::import`]) implement [`TensorStore`]; model building ([`crate::weights`]) reads it. It
//! sits apart from both so that neither depends on the other.

use std::path::Path;

use crate::error::ModelError;

/// A tensor in host memory: f32 values, row-major, with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// The transpose of a 2-D tensor (`[r, c]` -> `[c, r]`).
    pub fn transpose(&self) -> Self {
        let [r, c] = [self.shape[0], self.shape[1]];
        let mut data = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                data[j * r + i] = self.data[i * c + j];
            }
        }
        Self::new(vec![c, r], data)
    }

    /// Rows `[start, start + len)` of a 2-D (or the entries of a 1-D) tensor.
    pub fn rows(&self, start: usize, len: usize) -> Self {
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = len;
        Self::new(shape, self.data[start * row..(start + len) * row].to_vec())
    }

    /// Concatenation along the first dimension.
    pub fn cat_rows(parts: &[HostTensor]) -> Self {
        let mut shape = parts[0].shape.clone();
        shape[0] = parts.iter().map(|p| p.shape[0]).sum();
        Self::new(shape, parts.iter().flat_map(|p| p.data.iter().copied()).collect())
    }
}

/// A checkpoint seen through our parameter names.
pub trait TensorStore {
    /// The checkpoint's path, for messages.
    fn path(&self) -> &Path;
    /// Our parameter `name` in our layout, as f32; `None` when the checkpoint has no such tensor.
    fn fetch(&mut self, name: &str) -> Result<Option<HostTensor>, ModelError>;
    /// The checkpoint's own name(s) for one of ours, for messages.
    fn source_name(&self, name: &str) -> String;
    /// The stored shape of the (first) checkpoint tensor behind one of ours, for messages.
    fn source_shape(&self, name: &str) -> Vec<usize>;
    /// Checkpoint tensors not fetched so far (buffers known to be ignorable excepted).
    fn unused(&self) -> Vec<String>;
    /// Values held by all the checkpoint's tensors (saturating): no model built from it can read
    /// more parameters than that.
    fn stored_values(&self) -> usize;
}
