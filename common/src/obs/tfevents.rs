//! TensorBoard event files (`report_to: tensorboard`), written without TensorFlow.
//!
//! An event file is a TFRecord stream: each record is `u64 length (LE)`, `u32 masked CRC-32C of
//! the length bytes`, the payload, `u32 masked CRC-32C of the payload`. Each payload is an `Event`
//! protobuf; the first one carries `file_version = "brain.Event:2"`, the rest carry a `Summary`
//! with scalar (`simple_value`) or text (plugin `text`, string tensor) values. The message structs
//! below are the subset of TensorFlow's `event.proto` / `summary.proto` / `tensor.proto` with the
//! same field numbers, so TensorBoard's own reader decodes them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use super::reporter::{Reporter, WarnOnce};
use super::ObsError;

/// `tensorflow.Event` (subset).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// Global step.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// What the event carries.
    #[prost(oneof = "EventWhat", tags = "3, 5")]
    pub what: Option<EventWhat>,
}

/// `Event.what` (subset).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EventWhat {
    /// File header, `brain.Event:2`.
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// Summary values.
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` (subset).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    /// Series name, e.g. `train/loss`.
    #[prost(string, tag = "1")]
    pub tag: String,
    /// Plugin metadata (needed for text summaries).
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
    /// The value.
    #[prost(oneof = "SummaryValueKind", tags = "2, 8")]
    pub value: Option<SummaryValueKind>,
}

/// `Summary.Value.value` (subset).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum SummaryValueKind {
    /// A scalar.
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    /// A tensor (used for text).
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

/// `tensorflow.SummaryMetadata` (subset).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    /// Which TensorBoard plugin renders the value.
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `tensorflow.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    /// Plugin name, e.g. `text`.
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    /// Plugin-specific content.
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `tensorflow.TensorProto` (subset: string tensors).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// `DataType`; 7 is `DT_STRING`.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// Shape; empty for a scalar.
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    /// String values.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

/// `tensorflow.TensorShapeProto` (scalar only: no dims).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {}

const DT_STRING: i32 = 7;

/// TFRecord's masked CRC-32C.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord frame around `payload`.
pub fn tfrecord_frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc32c(payload).to_le_bytes());
    out
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Writes one TensorBoard event file `events.out.tfevents.<unix-seconds>.<host>.<pid>` in a log
/// directory. Each `log_*` call is one flushed record, so TensorBoard sees it at once. Parameters
/// are written as one text summary (`params`), since TensorBoard has no parameter notion outside
/// its HParams plugin. An I/O error is warned about once and ends the writer's output.
pub struct TensorBoardWriter {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    warn: WarnOnce,
}

impl TensorBoardWriter {
    /// Creates `log_dir` (and parents) and a new event file in it, headed by the file-version event.
    pub fn create(log_dir: impl AsRef<Path>) -> Result<Self, ObsError> {
        let dir = log_dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| ObsError::io(dir, e))?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let name = format!(
            "events.out.tfevents.{secs}.{}.{}",
            super::hostname(),
            std::process::id()
        );
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| ObsError::io(&path, e))?;
        let mut w = Self {
            path,
            out: Some(BufWriter::new(file)),
            warn: WarnOnce::default(),
        };
        let header = Event {
            wall_time: wall_time(),
            step: 0,
            what: Some(EventWhat::FileVersion("brain.Event:2".into())),
        };
        w.write_event(&header)
            .map_err(|e| ObsError::io(&w.path, e))?;
        Ok(w)
    }

    /// The event file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&mut self, event: &Event) -> std::io::Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        out.write_all(&tfrecord_frame(&event.encode_to_vec()))?;
        out.flush()
    }

    fn write_summary(&mut self, step: u64, values: Vec<SummaryValue>) {
        if !self.warn.ok() || values.is_empty() {
            return;
        }
        let event = Event {
            wall_time: wall_time(),
            step: i64::try_from(step).unwrap_or(i64::MAX),
            what: Some(EventWhat::Summary(Summary { value: values })),
        };
        if let Err(e) = self.write_event(&event) {
            let msg = format!("cannot write '{}': {e}", self.path.display());
            self.warn.fail("tensorboard", msg);
        }
    }

    fn text_value(tag: &str, text: &str) -> SummaryValue {
        SummaryValue {
            tag: tag.to_string(),
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData {
                    plugin_name: "text".into(),
                    content: Vec::new(),
                }),
            }),
            value: Some(SummaryValueKind::Tensor(TensorProto {
                dtype: DT_STRING,
                tensor_shape: Some(TensorShapeProto {}),
                string_val: vec![text.as_bytes().to_vec()],
            })),
        }
    }
}

impl Reporter for TensorBoardWriter {
    fn name(&self) -> &str {
        "tensorboard"
    }

    fn log_params(&mut self, params: &[(String, String)]) {
        if params.is_empty() {
            return;
        }
        // A markdown table renders nicely in TensorBoard's text tab.
        let mut table = String::from("| parameter | value |\n|---|---|\n");
        for (k, v) in params {
            table.push_str(&format!(
                "| {} | {} |\n",
                k.replace('|', "\\|"),
                v.replace('|', "\\|")
            ));
        }
        self.write_summary(0, vec![Self::text_value("params", &table)]);
    }

    fn log_scalars(&mut self, step: u64, scalars: &[(&str, f64)]) {
        let values = scalars
            .iter()
            .map(|(tag, v)| SummaryValue {
                tag: (*tag).to_string(),
                metadata: None,
                value: Some(SummaryValueKind::SimpleValue(*v as f32)),
            })
            .collect();
        self.write_summary(step, values);
    }

    fn log_text(&mut self, tag: &str, text: &str) {
        self.write_summary(0, vec![Self::text_value(tag, text)]);
    }

    fn finish(&mut self, _model_dir: Option<&Path>) {
        if let Some(mut out) = self.out.take() {
            if let Err(e) = out.flush() {
                let msg = format!("cannot write '{}': {e}", self.path.display());
                self.warn.fail("tensorboard", msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // The empty string masks to the constant alone; the CRC-32C check value pins the polynomial.
        assert_eq!(crc32c::crc32c(b""), 0);
        assert_eq!(masked_crc32c(b""), 0xa282_ead8);
        // crc32c("123456789") is the standard check value 0xE3069283.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn frame_layout() {
        let f = tfrecord_frame(b"abc");
        assert_eq!(f.len(), 8 + 4 + 3 + 4);
        assert_eq!(u64::from_le_bytes(f[..8].try_into().unwrap()), 3);
        assert_eq!(&f[12..15], b"abc");
    }
}
