//! The coordinator's view ([`ClusterSettings`], [`JobSpec`]) of a training config read with the project's one
//! schema, `splade_common::config::Config` (strict keys, located errors, `${VAR}` expansion).
//!
//! Workers receive the parsed config as [`Config::to_json`] (environment already expanded, so every worker trains
//! exactly what the coordinator validated); they read it back with `Config::from_json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use splade_common::config::Config;

use crate::settings::{ClusterSettings, JobSpec};

/// A config file the coordinator cannot use; names the file, the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Schema(#[from] splade_common::config::ConfigError),
    #[error("{path}: {key}: {problem}")]
    Key { path: String, key: String, problem: String },
    /// An enabled dataset whose source lists no file (or whose store cannot be listed), or that cannot be read.
    #[error("{path}: {source}")]
    Dataset { path: String, source: splade_common::data::DataError },
    /// The datasets cannot be planned into global batches.
    #[error("{path}: {source}")]
    Plan { path: String, source: splade_common::data::plan::PlanError },
}

/// Reads and validates `path`, returning the parsed config with the coordinator's settings derived from it.
/// `cluster.global_batch_size` defaults to `training.per_device_train_batch_size` x
/// `training.gradient_accumulation_steps` x `cluster.max_workers`, i.e. what a full world trains per step.
/// With `training.max_steps: -1` the job's step count comes from the plan (`num_train_epochs`): see [`plan_job`].
pub fn load(path: &Path) -> Result<(Config, ClusterSettings, JobSpec), ConfigError> {
    load_with(path, &[])
}

/// [`load`] with `--set key=value` overrides applied to the file (see `Config::parse_all`).
pub fn load_with(path: &Path, sets: &[String]) -> Result<(Config, ClusterSettings, JobSpec), ConfigError> {
    let cfg = Config::from_path_with(path, sets)?;
    let (cluster, job) = from_config(&cfg)?;
    Ok((cfg, cluster, job))
}

fn secs(key: &str, v: f64, origin: &str) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(v).map_err(|_| ConfigError::Key {
        path: origin.into(),
        key: key.into(),
        problem: format!("{v} is not a number of seconds; write e.g. 5 or 0.5"),
    })
}

fn count(key: &str, v: usize, origin: &str) -> Result<u32, ConfigError> {
    u32::try_from(v).map_err(|_| ConfigError::Key {
        path: origin.into(),
        key: key.into(),
        problem: format!("{v} is too large"),
    })
}

/// Lists every enabled dataset's source (local path or object store, credentials from `options` and
/// the environment) and fails on the first that matches no file, so a job whose data is missing stops
/// at start-up with the config file, the dataset, its source and the key to fix, instead of every
/// worker failing its first generation. Returns the number of files found per dataset, in config order.
pub async fn check_datasets(
    cfg: &Config,
    options: &splade_common::store::StoreOptions,
) -> Result<Vec<(String, usize)>, ConfigError> {
    let mut found = Vec::new();
    let dataset = |source| ConfigError::Dataset { path: cfg.origin.clone(), source };
    let mut hub = None;
    for (name, spec) in cfg.datasets.enabled() {
        let n = match &spec.loader {
            // A seed loader block: its Hub datasets' files (and PAWS-X folder), read at planning.
            Some(loader) => {
                if hub.is_none() {
                    hub = Some(splade_common::data::loaders::hub_split_files(Default::default()).map_err(dataset)?);
                }
                let files = hub.as_deref().expect("set above");
                splade_common::data::loaders::input_files(name, loader, files).map_err(dataset)?.len()
            }
            None => splade_common::data::list_dataset_files(name, spec, options).await.map_err(dataset)?.len(),
        };
        found.push((name.to_string(), n));
    }
    Ok(found)
}

/// Streams the training data once ([`splade_common::data::scan_training_data`]: a few bytes per row, no text
/// held), builds the job's batch plan for `job.global_batch_size` (independent of the number of workers) with
/// the index of where each planned record lives, and publishes both as one content-addressed artifact: the
/// manifest `<training.output_dir>/data-plan/<sha256>.json` and chunks of `cluster.data_plan_chunk_steps`
/// steps (`splade_common::data::artifact`). Workers then fetch the chunks of the steps they train and read
/// only their slice of each global batch.
/// Errors name the config file and the dataset, or the reason no plan of `job.total_steps` steps exists.
pub async fn publish_data_plan(
    cfg: &Config,
    job: &JobSpec,
    options: &splade_common::store::StoreOptions,
) -> Result<(splade_common::data::DataPlan, splade_proto::domain::DataPlanRef), ConfigError> {
    use splade_common::data::{scan_training_data, DataPlan};
    let dataset = |source| ConfigError::Dataset { path: cfg.origin.clone(), source };
    let data = scan_training_data(cfg.datasets.enabled(), cfg.training.seed, options, false).await.map_err(dataset)?;
    let plan = DataPlan::build(&cfg.plan_spec(job.global_batch_size as usize), data)
        .map_err(|source| ConfigError::Plan { path: cfg.origin.clone(), source })?;
    // With `num_train_epochs` the plan decides the step count ([`plan_job`]); `max_steps` must be met.
    if cfg.training.max_steps().is_some() && plan.batches.len() as u64 != job.total_steps {
        return Err(ConfigError::Key {
            path: cfg.origin.clone(),
            key: "training.max_steps".into(),
            problem: format!(
                "the datasets give {} global batches of {} but the job has {} steps; add data or lower max_steps",
                plan.batches.len(),
                job.global_batch_size,
                job.total_steps
            ),
        });
    }
    let output = splade_common::store::Location::parse_with(&cfg.training.output_dir, options)
        .map_err(|e| dataset(e.into()))?;
    // Seed loader blocks were materialised on this machine: the workers read the copies under output_dir.
    let mut plan = plan;
    splade_common::data::loaders::publish_seed_data(&mut plan.datasets, &output, &splade_common::data::loaders::cache_root())
        .await
        .map_err(dataset)?;
    let r = plan.publish(&output, cfg.cluster.data_plan_chunk_steps).await.map_err(dataset)?;
    Ok((plan, splade_proto::domain::DataPlanRef { location: r.location, sha256: r.sha256 }))
}

/// Publishes the data plan ([`publish_data_plan`]) and completes `job` with it: the plan's location and, when
/// the config trains for `num_train_epochs` (`max_steps: -1`), the step count the plan has.
pub async fn plan_job(
    cfg: &Config,
    job: &mut JobSpec,
    options: &splade_common::store::StoreOptions,
) -> Result<splade_common::data::DataPlan, ConfigError> {
    let (plan, r) = publish_data_plan(cfg, job, options).await?;
    job.total_steps = plan.batches.len() as u64;
    job.data_plan = Some(r);
    Ok(plan)
}

/// Derives the coordinator's settings from a parsed config (validated here). Without `training.max_steps` the
/// job's `total_steps` is 0 until [`plan_job`] sets it from the plan.
pub fn from_config(cfg: &Config) -> Result<(ClusterSettings, JobSpec), ConfigError> {
    cfg.validate()?;
    let o = cfg.origin.as_str();
    let c = &cfg.cluster;
    let rel = |p: &Option<String>| -> Option<PathBuf> {
        // Relative paths are relative to the config file, like every other path in it.
        p.as_ref().map(|p| Path::new(o).parent().unwrap_or(Path::new(".")).join(p))
    };
    let cluster = ClusterSettings {
        min_workers: count("cluster.min_workers", c.min_workers, o)?,
        max_workers: count("cluster.max_workers", c.max_workers(), o)?,
        rendezvous_timeout: secs("cluster.rendezvous_timeout", c.rendezvous_timeout, o)?,
        rendezvous_last_call: secs("cluster.rendezvous_last_call", c.rendezvous_last_call, o)?,
        heartbeat_interval: secs("cluster.heartbeat_interval", c.heartbeat_interval, o)?,
        heartbeat_timeout: secs("cluster.heartbeat_timeout", c.heartbeat_timeout, o)?,
        max_restarts: count("cluster.max_restarts", c.max_restarts, o)?,
        store_port: c.store_port,
        token_env: c.token_env.clone(),
        tls_cert: rel(&c.tls_cert),
        tls_key: rel(&c.tls_key),
        tls_ca: rel(&c.tls_ca),
    };
    let t = &cfg.training;
    let per_device = count("training.per_device_train_batch_size", t.per_device_train_batch_size, o)?;
    let accumulation = count("training.gradient_accumulation_steps", t.gradient_accumulation_steps.max(1), o)?;
    // `num_train_epochs`: the plan gives the count (`plan_job`).
    let total_steps = t.max_steps().unwrap_or(0);
    let global_batch_size = match c.global_batch_size {
        Some(g) => count("cluster.global_batch_size", g, o)?,
        None => per_device.saturating_mul(accumulation).saturating_mul(cluster.max_workers),
    };
    let job = JobSpec {
        config_json: cfg.to_json(),
        global_batch_size,
        per_device_batch_size: per_device,
        total_steps,
        data_plan: None,
    };
    Ok((cluster, job))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "
model:
  base_model: some/model
training:
  per_device_train_batch_size: 4
  gradient_accumulation_steps: 2
  max_steps: 7
cluster:
  min_workers: 1
  max_workers: 2
  heartbeat_interval: 0.05
  heartbeat_timeout: 0.2
  rendezvous_last_call: 0.1
  store_port: 29555
";

    #[test]
    fn reads_cluster_and_batch_keys() {
        let cfg = Config::from_str(CFG, "job.yaml").unwrap();
        let (c, j) = from_config(&cfg).unwrap();
        assert_eq!((c.min_workers, c.max_workers, c.store_port), (1, 2, 29555));
        assert_eq!(c.heartbeat_interval, Duration::from_millis(50));
        assert_eq!(c.rendezvous_last_call, Duration::from_millis(100));
        assert_eq!((j.global_batch_size, j.per_device_batch_size, j.total_steps), (16, 4, 7));
        let shipped = Config::from_json(&j.config_json, "<assignment>").unwrap();
        assert_eq!(shipped.training.max_steps, 7);
    }

    #[test]
    fn unknown_cluster_key_is_named() {
        let e = Config::from_str(&CFG.replace("max_workers", "max_worker"), "job.yaml").unwrap_err().to_string();
        assert!(e.contains("job.yaml") && e.contains("cluster.max_worker"), "{e}");
    }

    #[tokio::test]
    async fn the_data_plan_is_published_once_per_content_and_too_little_data_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d.jsonl");
        let lines: String = (0..40).map(|i| format!("{{\"anchor\": \"q{i}\", \"positive\": \"p{i}\"}}\n")).collect();
        std::fs::write(&data, lines).unwrap();
        let text = CFG.replace("  max_steps: 7\n", &format!("  max_steps: 7\n  output_dir: {}/out\n", dir.path().display()))
            + &format!("datasets:\n  d:\n    source: {}\n", data.display());
        let cfg = Config::from_str(&text, "job.yaml").unwrap();
        let (_, job) = from_config(&cfg).unwrap();
        let opts = splade_common::store::StoreOptions::default();
        let (plan, r) = publish_data_plan(&cfg, &job, &opts).await.unwrap();
        assert_eq!(plan.batches.len(), 7);
        assert!(plan.batches.iter().all(|b| b.rows.len() == 16));
        assert!(std::path::Path::new(&r.location).is_file(), "{}", r.location);
        // The same inputs give the same artifact (a restarted coordinator points workers at the same plan).
        let (_, again) = publish_data_plan(&cfg, &job, &opts).await.unwrap();
        assert_eq!(again, r);
        // 40 records cannot fill one global batch of 48.
        let big = JobSpec { global_batch_size: 48, ..job };
        let e = publish_data_plan(&cfg, &big, &opts).await.unwrap_err().to_string();
        assert!(e.starts_with("job.yaml: cannot plan batches") && e.contains("48"), "{e}");
    }

    #[tokio::test]
    async fn num_train_epochs_without_max_steps_takes_the_step_count_from_the_plan() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d.jsonl");
        let lines: String = (0..40).map(|i| format!("{{\"anchor\": \"q{i}\", \"positive\": \"p{i}\"}}\n")).collect();
        std::fs::write(&data, lines).unwrap();
        // As the seed configs write it: epochs, and max_steps -1.
        let text = CFG.replace("  max_steps: 7\n", &format!("  max_steps: -1\n  num_train_epochs: 2\n  output_dir: {}/out\n", dir.path().display()))
            + &format!("datasets:\n  d:\n    source: {}\n", data.display());
        let cfg = Config::from_str(&text, "job.yaml").unwrap();
        let (_, mut job) = from_config(&cfg).unwrap();
        let plan = plan_job(&cfg, &mut job, &splade_common::store::StoreOptions::default()).await.unwrap();
        // 40 rows make 2 global batches of 16 per epoch (the last, incomplete one dropped): 4 steps in 2 epochs.
        assert_eq!((plan.batches.len(), job.total_steps), (4, 4));
        assert_eq!(plan.batches.iter().map(|b| b.epoch).collect::<Vec<_>>(), vec![0, 0, 1, 1]);
        assert!(job.data_plan.is_some());
    }
}
