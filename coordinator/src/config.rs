//! Reads the coordinator's view ([`ClusterSettings`], [`JobSpec`]) out of a training config file.
//!
//! Interim: the full schema (every section, strict keys with suggestions) belongs to `splade_common::config`; until
//! the binary maps that onto these structs, this reads only the keys the coordinator needs and keeps the rest of the
//! file opaque, handing it verbatim to the workers. Unknown keys *inside* `cluster:` are still refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::Value;

use crate::settings::{ClusterSettings, JobSpec};

/// A config file the coordinator cannot use; names the file, the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path}: {key}: {problem}")]
    Key {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

/// Keys of the `cluster:` section this build understands.
pub const CLUSTER_KEYS: &[&str] = &[
    "min_workers",
    "max_workers",
    "rendezvous_timeout",
    "rendezvous_last_call",
    "heartbeat_interval",
    "heartbeat_timeout",
    "max_restarts",
    "store_port",
    "token_env",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "global_batch_size",
];

/// Reads `path`. Defaults: [`ClusterSettings::default`]; `cluster.global_batch_size` defaults to
/// `training.per_device_train_batch_size` x `training.gradient_accumulation_steps` (default 1) x `max_workers`, i.e.
/// what a full world trains per step. `training.max_steps` is required (epochs need the batch plan).
pub fn load(path: &Path) -> Result<(ClusterSettings, JobSpec), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    parse(path, text)
}

/// [`load`] on text already read; `path` is only used in messages.
pub fn parse(path: &Path, text: String) -> Result<(ClusterSettings, JobSpec), ConfigError> {
    let root: Value = serde_yaml::from_str(&text).map_err(|source| ConfigError::Yaml {
        path: path.into(),
        source,
    })?;
    let err = |key: &str, problem: String| ConfigError::Key {
        path: path.into(),
        key: key.to_owned(),
        problem,
    };

    let mut c = ClusterSettings::default();
    let mut global = None;
    if let Some(cluster) = root.get("cluster") {
        let map = cluster
            .as_mapping()
            .ok_or_else(|| err("cluster", "must be a mapping of settings".into()))?;
        for (k, v) in map {
            let k = k
                .as_str()
                .ok_or_else(|| err("cluster", format!("key {k:?} is not a string")))?;
            let key = format!("cluster.{k}");
            match k {
                "min_workers" => c.min_workers = uint(v).ok_or_else(|| err(&key, not_uint(v)))?,
                "max_workers" => c.max_workers = uint(v).ok_or_else(|| err(&key, not_uint(v)))?,
                "max_restarts" => c.max_restarts = uint(v).ok_or_else(|| err(&key, not_uint(v)))?,
                "global_batch_size" => {
                    global = Some(uint(v).ok_or_else(|| err(&key, not_uint(v)))?)
                }
                "store_port" => {
                    c.store_port = uint(v)
                        .and_then(|p| u16::try_from(p).ok())
                        .ok_or_else(|| err(&key, format!("{v:?} is not a port number (1-65535)")))?
                }
                "rendezvous_timeout" => {
                    c.rendezvous_timeout = duration(v).map_err(|p| err(&key, p))?
                }
                "rendezvous_last_call" => {
                    c.rendezvous_last_call = duration(v).map_err(|p| err(&key, p))?
                }
                "heartbeat_interval" => {
                    c.heartbeat_interval = duration(v).map_err(|p| err(&key, p))?
                }
                "heartbeat_timeout" => {
                    c.heartbeat_timeout = duration(v).map_err(|p| err(&key, p))?
                }
                "token_env" => {
                    c.token_env =
                        string(v).ok_or_else(|| err(&key, format!("{v:?} is not a string")))?
                }
                "tls_cert" | "tls_key" | "tls_ca" => {
                    let p = string(v).ok_or_else(|| err(&key, format!("{v:?} is not a path")))?;
                    // Relative paths are relative to the config file, like every other path in it.
                    let p = path.parent().unwrap_or(Path::new(".")).join(p);
                    match k {
                        "tls_cert" => c.tls_cert = Some(p),
                        "tls_key" => c.tls_key = Some(p),
                        _ => c.tls_ca = Some(p),
                    }
                }
                other => {
                    return Err(err(
                        &key,
                        format!(
                            "unknown key {other:?}; valid keys: {}",
                            CLUSTER_KEYS.join(", ")
                        ),
                    ))
                }
            }
        }
    }

    let training = root.get("training");
    let get = |k: &str| training.and_then(|t| t.get(k));
    let per_device = match get("per_device_train_batch_size") {
        Some(v) => {
            uint(v).ok_or_else(|| err("training.per_device_train_batch_size", not_uint(v)))?
        }
        None => {
            return Err(err(
                "training.per_device_train_batch_size",
                "is missing; cluster training needs it".into(),
            ))
        }
    };
    let accumulation = match get("gradient_accumulation_steps") {
        Some(v) => uint(v)
            .ok_or_else(|| err("training.gradient_accumulation_steps", not_uint(v)))?
            .max(1),
        None => 1,
    };
    let total_steps = match get("max_steps") {
        Some(v) => v.as_u64().filter(|&s| s > 0).ok_or_else(|| {
            err("training.max_steps", format!("{v:?} is not a positive integer"))
        })?,
        None => {
            return Err(err(
                "training.max_steps",
                "is missing; cluster training needs a step count (num_train_epochs is not supported by the \
                 coordinator yet)"
                    .into(),
            ))
        }
    };
    let global_batch_size = match global {
        Some(g) => g,
        None => per_device
            .saturating_mul(accumulation)
            .saturating_mul(c.max_workers),
    };
    let job = JobSpec {
        config_yaml: text,
        global_batch_size,
        per_device_batch_size: per_device,
        total_steps,
    };
    Ok((c, job))
}

fn uint(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

fn not_uint(v: &Value) -> String {
    format!("{v:?} is not a non-negative integer")
}

fn string(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// Seconds as a number, or a string with a unit: `250ms`, `5s`, `10m`, `1h`.
fn duration(v: &Value) -> Result<Duration, String> {
    if let Some(secs) = v.as_f64() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{secs} is not a valid number of seconds"));
    }
    let s = v
        .as_str()
        .ok_or_else(|| format!("{v:?} is not a duration (e.g. 30s, 250ms, 10m)"))?
        .trim();
    let bad = || format!("{s:?} is not a duration (e.g. 30s, 250ms, 10m)");
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "ms" => num / 1000.0,
        "s" => num,
        "m" | "min" => num * 60.0,
        "h" => num * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "
training:
  per_device_train_batch_size: 8
  gradient_accumulation_steps: 2
  max_steps: 40
cluster:
  min_workers: 1
  max_workers: 2
  heartbeat_interval: 250ms
  heartbeat_timeout: 2
  rendezvous_timeout: 1m
  tls_cert: certs/c.pem
";

    #[test]
    fn reads_cluster_and_batch_keys() {
        let (c, j) = parse(Path::new("/cfg/job.yaml"), CFG.into()).unwrap();
        assert_eq!((c.min_workers, c.max_workers), (1, 2));
        assert_eq!(c.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(2));
        assert_eq!(c.rendezvous_timeout, Duration::from_secs(60));
        assert_eq!(c.tls_cert.as_deref(), Some(Path::new("/cfg/certs/c.pem")));
        assert_eq!(
            (j.global_batch_size, j.per_device_batch_size, j.total_steps),
            (32, 8, 40)
        );
        assert_eq!(j.config_yaml, CFG);
    }

    #[test]
    fn unknown_cluster_key_is_named() {
        let e = parse(Path::new("job.yaml"), format!("{CFG}  min_worker: 3\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "job.yaml: cluster.min_worker: unknown key \"min_worker\"; valid keys: min_workers"
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_duration_and_missing_steps_are_named() {
        let e = parse(Path::new("job.yaml"), CFG.replace("250ms", "soon"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "job.yaml: cluster.heartbeat_interval: \"soon\" is not a duration (e.g. 30s, 250ms, 10m)");
        let e = parse(Path::new("job.yaml"), CFG.replace("  max_steps: 40\n", ""))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("job.yaml: training.max_steps: is missing"),
            "{e}"
        );
    }
}
