//! Format-aware repairs of mutants: after a mutation, a binary container is made consistent again
//! with its own (mutated) header, so that a changed shape, dtype, dimension or layer count reaches
//! the importer's checks instead of stopping at the first size mismatch, which a byte-level
//! mutation almost always causes.
//!
//! - safetensors: data offsets recomputed from the shapes and dtypes of the JSON header;
//! - GGUF: tensor data laid out again from the tensor infos;
//! - llama2.c: the file resized to what its header implies.

use serde_json::{Map, Value, json};

use crate::seeds;

/// Data a repaired file may hold: mutants stay small.
const MAX_DATA: usize = 4 << 20;

/// `bytes` (a file called `name`) made consistent with its header, if its format is one of the
/// above and its header can still be read.
pub fn repair(name: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    if name.ends_with(".safetensors") {
        safetensors(bytes)
    } else if name.ends_with(".gguf") {
        seeds::gguf::repair(bytes, MAX_DATA)
    } else if name == "model.bin" {
        llama2c(bytes)
    } else {
        None
    }
}

fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "F32" | "I32" | "U32" => 4,
        "F64" | "I64" | "U64" => 8,
        _ => return None,
    })
}

/// Each tensor's bytes: what it had (as far as its new size goes), then zeros; offsets follow the
/// old order.
fn safetensors(bytes: &[u8]) -> Option<Vec<u8>> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let end = n.checked_add(8)?;
    let header: Map<String, Value> = serde_json::from_slice(bytes.get(8..end)?).ok()?;
    let data = &bytes[end..];
    let mut entries: Vec<(String, Value)> = header.into_iter().collect();
    let offset = |v: &Value, i: usize| v.pointer(&format!("/data_offsets/{i}")).and_then(Value::as_u64);
    entries.sort_by_key(|(_, v)| offset(v, 0).unwrap_or(u64::MAX));
    let mut out = Vec::new();
    for (name, v) in &mut entries {
        if name == "__metadata__" {
            continue;
        }
        let size = dtype_size(v.get("dtype")?.as_str()?)?;
        let count = v.get("shape")?.as_array()?.iter().try_fold(1u64, |n, d| n.checked_mul(d.as_u64()?))?;
        let size = usize::try_from(count.checked_mul(size)?)
            .ok()
            .filter(|s| out.len().checked_add(*s).is_some_and(|t| t <= MAX_DATA))?;
        let old = match (offset(v, 0), offset(v, 1)) {
            (Some(s), Some(e)) => data.get(s as usize..(e as usize).min(data.len())).unwrap_or_default(),
            _ => &[],
        };
        let start = out.len();
        out.extend_from_slice(&old[..old.len().min(size)]);
        out.resize(start + size, 0);
        v.as_object_mut()?.insert("data_offsets".into(), json!([start, out.len()]));
    }
    let mut header = serde_json::to_vec(&entries.into_iter().collect::<Map<_, _>>()).ok()?;
    header.resize(header.len().next_multiple_of(8), b' ');
    Some([(header.len() as u64).to_le_bytes().as_slice(), &header, &out].concat())
}

/// The file cut or padded (with zeros) to the size its header implies.
fn llama2c(bytes: &[u8]) -> Option<Vec<u8>> {
    let header: [i32; 7] = std::array::from_fn(|i| {
        bytes.get(4 * i..4 * i + 4).map_or(0, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    });
    let size = seeds::llama2c::float_count(header)?.checked_mul(4)?.checked_add(28)?;
    (size <= MAX_DATA).then(|| {
        let mut out = bytes.to_vec();
        out.resize(size, 0);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mutated_safetensors_shape_is_made_consistent() {
        let data = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let views = [("a", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &data).unwrap())];
        let file = safetensors::serialize(views, None).unwrap();
        // The shape [2] becomes [3]: 12 bytes, the first 8 kept.
        let text = String::from_utf8_lossy(&file).replace("[2]", "[3]");
        let fixed = safetensors(text.as_bytes()).unwrap();
        let (n, meta) = safetensors::SafeTensors::read_metadata(&fixed).unwrap();
        assert_eq!(meta.info("a").unwrap().shape, vec![3]);
        assert_eq!(&fixed[8 + n..], &[1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0]);
    }

    #[test]
    fn a_llama2c_file_takes_the_size_of_its_header() {
        let file = seeds::llama2c::checkpoint([8, 16, 2, 2, 1, 512, 16]);
        let mut bigger = file.clone();
        bigger[8..12].copy_from_slice(&3i32.to_le_bytes()); // 3 layers
        let fixed = llama2c(&bigger).unwrap();
        assert_eq!(fixed.len(), 28 + 4 * seeds::llama2c::float_count([8, 16, 3, 2, 1, 512, 16]).unwrap());
        assert!(llama2c(&file).is_some_and(|f| f == file));
    }
}
