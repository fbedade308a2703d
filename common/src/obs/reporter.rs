//! The experiment-reporter abstraction (`report_to`), the `metrics.jsonl` reporter and the fan-out.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::ObsError;

/// Where the trainer sends run parameters and scalars: TensorBoard, MLflow, a JSON-lines file.
///
/// Every method is infallible by contract: an implementation that hits an error warns once through
/// `tracing` and stops reporting, because monitoring must never fail training. Calls return
/// quickly; network-bound implementations queue their work.
pub trait Reporter: Send {
    /// Short name for log messages (`tensorboard`, `mlflow`, `jsonl`).
    fn name(&self) -> &str;
    /// Run parameters (the flattened training config), logged once at the start.
    fn log_params(&mut self, params: &[(String, String)]);
    /// Scalars at a global step, e.g. [`super::StepStats::scalars`] or `eval/<task>/ndcg@10`.
    fn log_scalars(&mut self, step: u64, scalars: &[(&str, f64)]);
    /// A free-form text (e.g. the config YAML). Reporters without a text notion ignore it.
    fn log_text(&mut self, _tag: &str, _text: &str) {}
    /// Makes everything logged so far durable (files flushed, queue drained as far as possible).
    fn flush(&mut self) {}
    /// Ends the run: logs the final model folder where the reporter stores artifacts, marks the
    /// run finished and flushes. Bounded in time. Later calls on the reporter do nothing.
    fn finish(&mut self, model_dir: Option<&Path>);
}

/// Sends every call to each of its reporters, in order.
pub struct FanOut {
    reporters: Vec<Box<dyn Reporter>>,
}

impl FanOut {
    /// A fan-out over `reporters` (an empty list is a valid no-op reporter).
    pub fn new(reporters: Vec<Box<dyn Reporter>>) -> Self {
        Self { reporters }
    }

    /// Adds one more reporter.
    pub fn push(&mut self, reporter: Box<dyn Reporter>) {
        self.reporters.push(reporter);
    }

    /// Number of reporters.
    pub fn len(&self) -> usize {
        self.reporters.len()
    }

    /// True when there is no reporter.
    pub fn is_empty(&self) -> bool {
        self.reporters.is_empty()
    }
}

impl Reporter for FanOut {
    fn name(&self) -> &str {
        "fan-out"
    }
    fn log_params(&mut self, params: &[(String, String)]) {
        self.reporters.iter_mut().for_each(|r| r.log_params(params));
    }
    fn log_scalars(&mut self, step: u64, scalars: &[(&str, f64)]) {
        self.reporters
            .iter_mut()
            .for_each(|r| r.log_scalars(step, scalars));
    }
    fn log_text(&mut self, tag: &str, text: &str) {
        self.reporters
            .iter_mut()
            .for_each(|r| r.log_text(tag, text));
    }
    fn flush(&mut self) {
        self.reporters.iter_mut().for_each(|r| r.flush());
    }
    fn finish(&mut self, model_dir: Option<&Path>) {
        self.reporters.iter_mut().for_each(|r| r.finish(model_dir));
    }
}

/// Turns the first error of a reporter into one warning and silences the reporter afterwards.
#[derive(Debug, Default)]
pub(crate) struct WarnOnce {
    failed: bool,
}

impl WarnOnce {
    /// True while the reporter should keep working.
    pub(crate) fn ok(&self) -> bool {
        !self.failed
    }

    /// Records a failure; warns only the first time.
    pub(crate) fn fail(&mut self, reporter: &str, what: impl std::fmt::Display) {
        if !self.failed {
            self.failed = true;
            tracing::warn!(
                "{reporter} reporting failed and is now off for the rest of this run (training continues): {what}"
            );
        }
    }
}

/// Appends one JSON object per line to a file (default `output_dir/metrics.jsonl`):
/// `{"type":"params","params":{..}}`, `{"type":"scalars","step":N,"time":UNIX_S,"values":{..}}`,
/// `{"type":"text","tag":..,"text":..}`, `{"type":"finish","model_dir":..}`. Non-finite values are
/// written as `null`. Each call is flushed, so the file can be tailed during training.
pub struct JsonlReporter {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    warn: WarnOnce,
}

impl JsonlReporter {
    /// Opens `path` for appending, creating it and its parent directories.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, ObsError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| ObsError::io(parent, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| ObsError::io(&path, e))?;
        Ok(Self {
            path,
            out: Some(BufWriter::new(file)),
            warn: WarnOnce::default(),
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, value: serde_json::Value) {
        if !self.warn.ok() {
            return;
        }
        let Some(out) = self.out.as_mut() else { return };
        let result = serde_json::to_writer(&mut *out, &value)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        if let Err(e) = result {
            self.warn.fail(
                "jsonl",
                format!("cannot write '{}': {e}", self.path.display()),
            );
        }
    }
}

impl Reporter for JsonlReporter {
    fn name(&self) -> &str {
        "jsonl"
    }
    fn log_params(&mut self, params: &[(String, String)]) {
        let map: serde_json::Map<String, serde_json::Value> = params
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        self.write(serde_json::json!({"type": "params", "params": map}));
    }
    fn log_scalars(&mut self, step: u64, scalars: &[(&str, f64)]) {
        let values: serde_json::Map<String, serde_json::Value> = scalars
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect();
        let time = super::now_millis() as f64 / 1000.0;
        self.write(
            serde_json::json!({"type": "scalars", "step": step, "time": time, "values": values}),
        );
    }
    fn log_text(&mut self, tag: &str, text: &str) {
        self.write(serde_json::json!({"type": "text", "tag": tag, "text": text}));
    }
    fn flush(&mut self) {}
    fn finish(&mut self, model_dir: Option<&Path>) {
        if self.out.is_none() {
            return;
        }
        let dir = model_dir.map(|p| p.display().to_string());
        self.write(serde_json::json!({"type": "finish", "model_dir": dir}));
        self.out = None;
    }
}

/// Flattens a JSON object (e.g. the serialised training config) into run parameters for
/// [`Reporter::log_params`]: nested keys joined with `.` (`training.learning_rate`), strings as they
/// are, numbers and booleans in JSON notation, arrays as compact JSON, `null`s skipped. Sorted by key.
pub fn flatten_params(value: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Null => {}
            serde_json::Value::Object(map) => {
                for (k, child) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, child, out);
                }
            }
            serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_nested_config() {
        let v = serde_json::json!({
            "training": {"learning_rate": 2e-5, "bf16": true, "report_to": ["mlflow", "tensorboard"], "run_name": null},
            "model": {"base_model": "splade-tiny"}
        });
        assert_eq!(
            flatten_params(&v),
            vec![
                ("model.base_model".to_string(), "splade-tiny".to_string()),
                ("training.bf16".to_string(), "true".to_string()),
                ("training.learning_rate".to_string(), "0.00002".to_string()),
                (
                    "training.report_to".to_string(),
                    "[\"mlflow\",\"tensorboard\"]".to_string()
                ),
            ]
        );
    }
}
