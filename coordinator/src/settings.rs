//! What the coordinator needs from the training config: cluster settings, the job's batch arithmetic, the join
//! token and TLS material. The YAML schema lives in `splade-common`; these structs are the coordinator's view of
//! it, filled by whoever parses the config (see `config.rs` for the interim loader of the binary).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A config value the coordinator cannot run with. Every message names the config key, the bad value and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{key}: {problem}")]
    Invalid { key: &'static str, problem: String },
    #[error("{key}: cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// The `cluster:` section: membership bounds, timing, restarts, security.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSettings {
    /// Fewest workers a generation may have (`cluster.min_workers`).
    pub min_workers: u32,
    /// Most workers a generation may have; joins beyond it are refused (`cluster.max_workers`).
    pub max_workers: u32,
    /// How long a rendezvous may wait for `min_workers` before the job fails (`cluster.rendezvous_timeout`).
    pub rendezvous_timeout: Duration,
    /// Once `min_workers` are there, how long to wait for more (up to `max_workers`) before forming the generation
    /// (torchrun's "last call"; `cluster.rendezvous_last_call`).
    pub rendezvous_last_call: Duration,
    /// How often workers heartbeat (`cluster.heartbeat_interval`).
    pub heartbeat_interval: Duration,
    /// Silence after which a worker is dropped and its generation ends (`cluster.heartbeat_timeout`).
    pub heartbeat_timeout: Duration,
    /// How many times a failed generation may be re-formed before the job fails (`cluster.max_restarts`).
    pub max_restarts: u32,
    /// Port rank 0 hosts the c10d store on when its worker did not name one (`cluster.store_port`).
    pub store_port: u16,
    /// Environment variable holding the join token (`cluster.token_env`).
    pub token_env: String,
    /// PEM certificate chain and key of the coordinator; TLS is on when both are set (`cluster.tls_cert`/`tls_key`).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA that must have signed the workers' client certificates (mutual TLS; `cluster.tls_ca`).
    pub tls_ca: Option<PathBuf>,
}

/// Name of the environment variable holding the join token unless `cluster.token_env` says otherwise.
pub const DEFAULT_TOKEN_ENV: &str = "SPLADE_CLUSTER_TOKEN";

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            min_workers: 1,
            max_workers: 1,
            rendezvous_timeout: Duration::from_secs(600),
            rendezvous_last_call: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(30),
            max_restarts: 3,
            store_port: 29500,
            token_env: DEFAULT_TOKEN_ENV.to_owned(),
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
        }
    }
}

impl ClusterSettings {
    /// Checks the bounds and timings against each other.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.min_workers == 0 {
            return Err(invalid(
                "cluster.min_workers",
                "is 0; a job needs at least 1 worker",
            ));
        }
        if self.max_workers < self.min_workers {
            return Err(invalid(
                "cluster.max_workers",
                format!(
                    "{} is below cluster.min_workers {}; set max_workers >= min_workers",
                    self.max_workers, self.min_workers
                ),
            ));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(invalid("cluster.heartbeat_interval", "is 0; use e.g. 5s"));
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(invalid(
                "cluster.heartbeat_timeout",
                format!(
                    "{:?} is not above cluster.heartbeat_interval {:?}; use several intervals (e.g. 6x)",
                    self.heartbeat_timeout, self.heartbeat_interval
                ),
            ));
        }
        if self.rendezvous_timeout.is_zero() {
            return Err(invalid("cluster.rendezvous_timeout", "is 0; use e.g. 10m"));
        }
        if self.store_port == 0 {
            return Err(invalid(
                "cluster.store_port",
                "is 0; use a fixed port such as 29500",
            ));
        }
        if self.token_env.is_empty() {
            return Err(invalid(
                "cluster.token_env",
                format!("is empty; leave it out to use {DEFAULT_TOKEN_ENV}"),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                "cluster.tls_cert",
                "and cluster.tls_key must be set together (or neither)",
            ));
        }
        if self.tls_ca.is_some() && self.tls_cert.is_none() {
            return Err(invalid(
                "cluster.tls_ca",
                "needs cluster.tls_cert and cluster.tls_key (the coordinator's identity)",
            ));
        }
        Ok(())
    }

    /// How often the coordinator's loop wakes to check timeouts: fine enough to notice a missed heartbeat within a
    /// fraction of `heartbeat_timeout`.
    pub(crate) fn tick(&self) -> Duration {
        let t = (self.heartbeat_timeout / 8)
            .min(self.heartbeat_interval)
            .min(self.rendezvous_last_call.max(Duration::from_millis(10)));
        t.clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// What the coordinator knows of the training job itself.
#[derive(Clone, PartialEq)]
pub struct JobSpec {
    /// The training config as JSON (`Config::to_json`), handed verbatim to every worker.
    pub config_json: String,
    /// Samples per optimizer step across the whole world; fixed for the job whatever the world size.
    pub global_batch_size: u32,
    /// Samples one rank processes per forward pass (`training.per_device_train_batch_size`).
    pub per_device_batch_size: u32,
    /// Optimizer steps of the whole job; the job completes when a rank reports this step.
    pub total_steps: u64,
    /// The published data plan every assignment points at (the same artifact for every generation, so
    /// resumes and re-formed worlds read the same batches); `None`: workers plan from the datasets themselves.
    pub data_plan: Option<splade_proto::domain::DataPlanRef>,
}

impl fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobSpec")
            .field(
                "config_json",
                &format_args!("<{} bytes>", self.config_json.len()),
            )
            .field("global_batch_size", &self.global_batch_size)
            .field("per_device_batch_size", &self.per_device_batch_size)
            .field("total_steps", &self.total_steps)
            .field("data_plan", &self.data_plan)
            .finish()
    }
}

impl JobSpec {
    /// Micro-batches each rank runs per step at `world` ranks, or `None` when the global batch does not split
    /// evenly into `world` x `per_device_batch_size` pieces.
    pub fn micro_batches(&self, world: u32) -> Option<u32> {
        let per_step = world.checked_mul(self.per_device_batch_size)?;
        (per_step != 0 && self.global_batch_size.is_multiple_of(per_step))
            .then(|| self.global_batch_size / per_step)
    }

    /// World sizes in `min..=max` that keep the global batch exact.
    pub fn valid_world_sizes(&self, min: u32, max: u32) -> Vec<u32> {
        (min..=max)
            .filter(|&n| self.micro_batches(n).is_some())
            .collect()
    }

    /// Checks the batch arithmetic against the cluster's world-size bounds: at least one world size must keep the
    /// global batch exact. World sizes that cannot are logged; a rendezvous never forms one.
    pub fn validate(&self, cluster: &ClusterSettings) -> Result<(), SettingsError> {
        if self.per_device_batch_size == 0 {
            return Err(invalid("training.per_device_train_batch_size", "is 0"));
        }
        if self.global_batch_size == 0 {
            return Err(invalid("cluster.global_batch_size", "is 0"));
        }
        if self.total_steps == 0 {
            return Err(invalid(
                "training.max_steps",
                "is 0; the job needs a positive number of steps",
            ));
        }
        let (min, max) = (cluster.min_workers, cluster.max_workers);
        let valid = self.valid_world_sizes(min, max);
        if valid.is_empty() {
            let divisors: Vec<String> = (1..=self.global_batch_size / self.per_device_batch_size)
                .filter(|&n| self.micro_batches(n).is_some())
                .map(|n| n.to_string())
                .collect();
            return Err(invalid(
                "cluster.global_batch_size",
                format!(
                    "{} cannot be split evenly for any world size in {min}..={max}: world size x \
                     per_device_train_batch_size {} must divide it (world sizes that work: {}); change \
                     cluster.min_workers/max_workers or the batch sizes",
                    self.global_batch_size,
                    self.per_device_batch_size,
                    if divisors.is_empty() { "none".to_owned() } else { divisors.join(", ") }
                ),
            ));
        }
        let skipped: Vec<u32> = (min..=max).filter(|n| !valid.contains(n)).collect();
        if !skipped.is_empty() {
            tracing::warn!(
                ?skipped,
                ?valid,
                global_batch_size = self.global_batch_size,
                per_device_batch_size = self.per_device_batch_size,
                "these world sizes do not split the global batch evenly; generations will use only the valid ones"
            );
        }
        Ok(())
    }
}

/// The shared secret workers present to join. Its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(String);

impl JoinToken {
    /// Wraps a token; it must be non-empty printable ASCII without spaces (it travels in a gRPC header).
    pub fn new(token: impl Into<String>) -> Result<Self, SettingsError> {
        let token = token.into();
        if token.is_empty() {
            return Err(invalid(
                "cluster.token_env",
                "the join token is empty; set it to a long random string",
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "cluster.token_env",
                "the join token has spaces or non-ASCII characters; use printable ASCII (e.g. hex)",
            ));
        }
        Ok(Self(token))
    }

    /// Reads the token from environment variable `var` (the value of `cluster.token_env`).
    pub fn from_env(var: &str) -> Result<Self, SettingsError> {
        match std::env::var(var) {
            Ok(t) => Self::new(t.trim().to_owned()).map_err(|_| {
                invalid("cluster.token_env", format!("environment variable {var} is empty or not printable ASCII; set it to the job's join token"))
            }),
            Err(_) => Err(invalid(
                "cluster.token_env",
                format!("environment variable {var} is not set; set it to the job's join token (the same value on every worker)"),
            )),
        }
    }

    /// The token text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinToken(<redacted>)")
    }
}

/// PEM material of the coordinator's TLS endpoint.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// When set, workers must present a client certificate signed by this CA.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the files named by `tls_cert`, `tls_key` and `tls_ca`; `None` when TLS is not configured.
    pub fn from_settings(s: &ClusterSettings) -> Result<Option<Self>, SettingsError> {
        let read = |key: &'static str, p: &PathBuf| {
            std::fs::read(p).map_err(|source| SettingsError::Read {
                key,
                path: p.clone(),
                source,
            })
        };
        match (&s.tls_cert, &s.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(Self {
                cert_pem: read("cluster.tls_cert", cert)?,
                key_pem: read("cluster.tls_key", key)?,
                client_ca_pem: s
                    .tls_ca
                    .as_ref()
                    .map(|ca| read("cluster.tls_ca", ca))
                    .transpose()?,
            })),
            (None, None) => Ok(None),
            _ => Err(invalid(
                "cluster.tls_cert",
                "and cluster.tls_key must be set together (or neither)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(global: u32, per_device: u32) -> JobSpec {
        JobSpec {
            config_json: String::new(),
            global_batch_size: global,
            per_device_batch_size: per_device,
            total_steps: 10,
            data_plan: None,
        }
    }

    #[test]
    fn micro_batches_keep_the_global_batch() {
        let j = job(32, 8);
        assert_eq!(j.micro_batches(1), Some(4));
        assert_eq!(j.micro_batches(2), Some(2));
        assert_eq!(j.micro_batches(3), None);
        assert_eq!(j.micro_batches(4), Some(1));
        assert_eq!(j.micro_batches(8), None);
        assert_eq!(j.valid_world_sizes(1, 8), vec![1, 2, 4]);
    }

    #[test]
    fn no_valid_world_size_is_refused_with_the_sizes_that_work() {
        let c = ClusterSettings {
            min_workers: 3,
            max_workers: 3,
            ..Default::default()
        };
        let e = job(32, 8).validate(&c).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "cluster.global_batch_size: 32 cannot be split evenly for any world size in 3..=3"
            ),
            "{e}"
        );
        assert!(e.contains("world sizes that work: 1, 2, 4"), "{e}");
    }

    #[test]
    fn settings_are_checked_against_each_other() {
        let s = ClusterSettings {
            min_workers: 2,
            max_workers: 1,
            ..Default::default()
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("cluster.max_workers: 1 is below cluster.min_workers 2"));
        let s = ClusterSettings {
            heartbeat_timeout: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(1),
            ..Default::default()
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("cluster.heartbeat_timeout"));
        let s = ClusterSettings {
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("cluster.tls_cert"));
        ClusterSettings::default().validate().unwrap();
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = JoinToken::new("s3cr3t").unwrap();
        assert!(!format!("{t:?}").contains("s3cr3t"));
        assert!(JoinToken::new("has space").is_err());
        assert!(JoinToken::new("").is_err());
    }
}
