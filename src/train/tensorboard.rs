//! TensorBoard event files, so `tensorboard --logdir DIR` shows a run's metrics as they are written.
//!
//! A file `events.out.tfevents.<seconds>.<host>` holds records `[len: u64][masked crc32c(len)]
//! [data][masked crc32c(data)]` (TFRecord framing, little-endian), each `data` one `Event` protocol
//! buffer: the first carries `file_version = "brain.Event:2"`, the others a step, a wall time and a
//! `Summary` of scalar values (or of one text: sample answers at checkpoints). Written here directly (≈ 100 lines: the framing, CRC-32C and the four
//! protobuf field kinds used) rather than through a crate: the Rust TensorBoard writers on crates.io
//! are unmaintained and pull a whole protobuf toolchain for these few bytes.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Appends scalar events to one event file, flushing each step.
pub struct EventWriter {
    file: File,
    pub path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir` (created if needed).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let path = dir.join(format!("events.out.tfevents.{}.{host}.minimind", now() as u64));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut writer = Self { file, path };
        let mut event = Vec::new();
        double_field(&mut event, 1, now());
        bytes_field(&mut event, 3, b"brain.Event:2");
        writer.record(&event)?;
        Ok(writer)
    }

    /// One event of scalars (`tag`, value) at `step`.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, value) in values {
            let mut v = Vec::new();
            bytes_field(&mut v, 1, tag.as_bytes());
            v.push(2 << 3 | 5); // simple_value: float (fixed32)
            v.extend_from_slice(&(*value as f32).to_le_bytes());
            bytes_field(&mut summary, 1, &v);
        }
        let mut event = Vec::new();
        double_field(&mut event, 1, now());
        varint_field(&mut event, 2, step);
        bytes_field(&mut event, 5, &summary);
        self.record(&event)
    }

    /// A text summary (TensorBoard's Text tab renders it as Markdown) at `step`: a `Summary.Value`
    /// whose metadata names the `text` plugin and whose tensor is one string (`DT_STRING`, scalar).
    pub fn text(&mut self, step: u64, tag: &str, text: &str) -> Result<()> {
        let mut plugin = Vec::new();
        bytes_field(&mut plugin, 1, b"text");
        let mut metadata = Vec::new();
        bytes_field(&mut metadata, 1, &plugin);
        let mut tensor = Vec::new();
        varint_field(&mut tensor, 1, 7); // dtype: DT_STRING
        bytes_field(&mut tensor, 2, &[]); // tensor_shape: a scalar
        bytes_field(&mut tensor, 8, text.as_bytes()); // string_val
        let mut value = Vec::new();
        bytes_field(&mut value, 1, tag.as_bytes());
        bytes_field(&mut value, 9, &metadata);
        bytes_field(&mut value, 8, &tensor);
        let mut summary = Vec::new();
        bytes_field(&mut summary, 1, &value);
        let mut event = Vec::new();
        double_field(&mut event, 1, now());
        varint_field(&mut event, 2, step);
        bytes_field(&mut event, 5, &summary);
        self.record(&event)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut out = Vec::with_capacity(data.len() + 16);
        out.extend_from_slice(&len);
        out.extend_from_slice(&masked_crc(&len).to_le_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file
            .write_all(&out)
            .and_then(|_| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

fn double_field(out: &mut Vec<u8>, field: u64, v: f64) {
    varint(out, field << 3 | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit over a 256-entry table.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *slot = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8))
}

/// TFRecord's masked CRC: rotated right by 15 and offset, so a CRC of CRCs is not a fixed point.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}
