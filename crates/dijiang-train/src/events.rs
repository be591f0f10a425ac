//! TensorBoard event files: scalars written as TFRecords of `Event` protocol buffers, the format
//! TensorBoard's `EventAccumulator` reads (`events.out.tfevents.*` in the log directory).
//!
//! Written here rather than with `tensorboard-rs` because that crate writes from a background
//! thread that panics on any I/O error (a full disk ends the run with an empty panic message, and
//! its `Drop` panics again) and has no way to report one; here every write returns its error, so
//! the trainer stops with a message and the last checkpoint intact. The format is small: each
//! record is `len: u64 | masked_crc32c(len): u32 | data | masked_crc32c(data): u32`, and an event
//! with a scalar is four protobuf fields.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

/// An open event file.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates a new event file in `dir` (one per process, as TensorBoard expects).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let name = format!("events.out.tfevents.{:010}.dijiang.{}.0", now.as_secs(), std::process::id());
        let path = dir.join(name);
        let file = File::create(&path).map_err(|e| TrainError::io(&path, e))?;
        let mut writer = Self { path, out: BufWriter::new(file) };
        let mut event = event_header(now.as_secs_f64(), 0);
        string_field(&mut event, 3, "brain.Event:2"); // file_version
        writer.record(&event)?;
        writer.flush()?;
        Ok(writer)
    }

    /// Appends the scalar `value` of `tag` at `step`.
    pub fn scalar(&mut self, tag: &str, value: f32, step: usize) -> Result<()> {
        let mut summary_value = Vec::new();
        string_field(&mut summary_value, 1, tag); // Summary.Value.tag
        summary_value.push(0x15); // Summary.Value.simple_value: field 2, 32-bit
        summary_value.extend(value.to_le_bytes());
        let mut summary = Vec::new();
        bytes_field(&mut summary, 1, &summary_value); // Summary.value
        let wall_time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut event = event_header(wall_time.as_secs_f64(), step as u64);
        bytes_field(&mut event, 5, &summary); // Event.summary
        self.record(&event)
    }

    /// Pushes what was written to the disk.
    pub fn flush(&mut self) -> Result<()> {
        let path = &self.path;
        self.out.flush().and_then(|()| self.out.get_ref().sync_data()).map_err(|e| TrainError::io(path, e))
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend(len);
        record.extend(masked_crc32c(&len).to_le_bytes());
        record.extend(data);
        record.extend(masked_crc32c(data).to_le_bytes());
        dijiang_data::fault::check("metrics", None)
            .and_then(|()| self.out.write_all(&record))
            .map_err(|e| TrainError::io(&self.path, e))
    }
}

/// An `Event` with its wall time (field 1, double) and step (field 2, varint).
fn event_header(wall_time: f64, step: u64) -> Vec<u8> {
    let mut event = vec![0x09];
    event.extend(wall_time.to_le_bytes());
    event.push(0x10);
    varint(&mut event, step);
    event
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2).
fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend(bytes);
}

fn string_field(out: &mut Vec<u8>, field: u64, s: &str) {
    bytes_field(out, field, s.as_bytes());
}

/// CRC-32C (Castagnoli), masked as TFRecord does: rotated right by 15 bits plus a constant.
fn masked_crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    let crc = !crc;
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // CRC-32C("123456789") = 0xe3069283 (RFC 3720); masked as TFRecord does.
        let crc = 0xe306_9283u32;
        assert_eq!(masked_crc32c(b"123456789"), crc.rotate_right(15).wrapping_add(0xa282_ead8));
    }

    #[test]
    fn varints_are_little_endian_base_128() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
    }
}
