//! `--check`: everything a run of a config would need, validated without training, every problem at once.
//!
//! [`check`] reads the config (with `--set` overrides), applies the schema's rules, resolves the model through
//! the caller's resolver (the libtorch side owns model folders), reads every enabled dataset with the data path
//! the trainer uses (rows per split), builds the batch plan the trainer would build (steps), loads the
//! evaluation tasks, probes that `training.output_dir` is writable (a local directory, or an object store:
//! one probe object written and deleted) and resolves the step schedule. It returns the plan as lines to print
//! and the problems, each one line naming where and the fix. Nothing it does leaves a file behind.

use std::path::Path;

use object_store::ObjectStore;

use super::{Config, ConfigError};
use crate::data::{scan_training_data, DataPlan};
use crate::store::{block_on, Location, StoreOptions};

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// The plan, one line each: model, rows per dataset and split, steps, effective batch, schedule.
    pub plan: Vec<String>,
    /// Every problem, one line each (file:line or `--set`, key, value and fix where they apply).
    pub problems: Vec<String>,
    /// The parsed config, when the file was a YAML mapping.
    pub config: Option<Config>,
}

/// How a check is run: the processes that share the global batch and how the model is resolved.
pub struct CheckOptions<'a> {
    /// Data-parallel processes (1 for `splade train`; the coordinator passes `cluster.max_workers`).
    pub world: usize,
    /// Resolves `model.base_model`: `Ok(what was found)` or `Err(the problem)`.
    pub resolve_model: &'a dyn Fn(&Config) -> Result<String, String>,
    /// Object-store credentials.
    pub store: StoreOptions,
}

/// Runs every check on the config at `path` with `sets` applied; see the module doc.
pub fn check(path: &Path, sets: &[String], opts: &CheckOptions) -> CheckReport {
    let mut r = CheckReport::default();
    let origin = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(source) => {
            r.problems.push(ConfigError::Read { path: origin, source }.to_string());
            return r;
        }
    };
    let (cfg, errors) = Config::parse_all(&text, &origin, sets);
    r.problems.extend(errors.iter().map(ToString::to_string));
    let Some(cfg) = cfg else { return r };
    let mut rules = cfg.rule_problems();
    if cfg.datasets.enabled().next().is_none() {
        rules.push(cfg.invalid("datasets", "no enabled dataset", "add a dataset block with a `source` (and `enabled: true`)"));
    }
    r.problems.extend(rules.iter().map(ToString::to_string));

    match (opts.resolve_model)(&cfg) {
        Ok(found) => r.plan.push(format!("model: {} ({found})", cfg.model.base_model)),
        Err(problem) => r.problems.push(format!("{}: `model.base_model`: {problem}", cfg.locate("model.base_model"))),
    }

    // Datasets, each on its own so that every missing one is named.
    let mut loaded = Vec::new();
    let mut all_loaded = true;
    for (name, spec) in cfg.datasets.enabled() {
        // The streaming pass (no rows held): counts and the planner's summaries.
        match block_on(scan_training_data([(name, spec)], cfg.training.seed, &opts.store, false)) {
            Ok(mut d) => {
                let d = d.remove(0);
                r.plan.push(format!(
                    "dataset {name}: {} train rows, {} dev rows (split_ratio {}){}",
                    d.train_len(),
                    d.eval_len,
                    spec.split_ratio,
                    if d.bad_records > 0 { format!(", {} bad records skipped", d.bad_records) } else { String::new() }
                ));
                loaded.push(d);
            }
            Err(e) => {
                all_loaded = false;
                // The data path's errors name the dataset, its source and the key.
                r.problems.push(format!("{}: {e}", cfg.locate(&format!("datasets.{name}.source"))));
            }
        }
    }

    // Steps and schedule, from the plan the trainer would build.
    let t = &cfg.training;
    let per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps.max(1) * opts.world.max(1);
    let global = if opts.world > 1 { cfg.cluster.global_batch_size.unwrap_or(per_step) } else { per_step };
    if all_loaded && !loaded.is_empty() {
        match DataPlan::build(&cfg.plan_spec(global), loaded) {
            Ok(plan) if plan.batches.is_empty() => r.problems.push(format!(
                "{}: the datasets are smaller than one batch of {global} rows; lower training.per_device_train_batch_size",
                cfg.locate("training.per_device_train_batch_size")
            )),
            Ok(plan) => {
                let total = plan.batches.len() as u64;
                r.plan.push(format!(
                    "steps: {total} ({}), effective batch {global} = per_device_train_batch_size {} × gradient_accumulation_steps {} × {} process(es)",
                    match t.max_steps() {
                        Some(m) => format!("max_steps {m}"),
                        None => format!("num_train_epochs {}", t.num_train_epochs),
                    },
                    t.per_device_train_batch_size,
                    t.gradient_accumulation_steps,
                    opts.world.max(1),
                ));
                let iv = cfg.intervals(total);
                let warmup = (total as f64 * t.warmup_ratio).ceil() as u64;
                r.plan.push(format!(
                    "schedule: log every {} steps; {}; {}; warm-up {warmup} steps; final model at {}/final",
                    iv.log_every,
                    match t.eval_strategy {
                        super::IntervalStrategy::Steps => format!("evaluate every {} steps", iv.eval_every),
                        super::IntervalStrategy::Epoch => "evaluate each epoch".into(),
                        super::IntervalStrategy::No => "no evaluation during training".into(),
                    },
                    match t.save_strategy {
                        super::SaveStrategy::Steps => format!("checkpoint every {} steps", iv.save_every),
                        super::SaveStrategy::Epoch => "checkpoint each epoch".into(),
                        super::SaveStrategy::Best => "checkpoint at each best evaluation".into(),
                        super::SaveStrategy::No => "no checkpoints".into(),
                    },
                    t.output_dir.trim_end_matches('/'),
                ));
                if let Some(p) = cfg.best_model_schedule_problem(iv.save_every, iv.eval_every) {
                    r.problems.push(p);
                }
                if iv.save_every > total && t.save_strategy == super::SaveStrategy::Steps {
                    r.plan.push(format!("note: save_steps {} is past the last step {total}: only the final model is saved", iv.save_every));
                }
            }
            Err(e) => r.problems.push(format!("{}: cannot plan batches: {e}", cfg.origin)),
        }
    }

    for (i, task) in cfg.evaluation.tasks.iter().enumerate() {
        match crate::eval::Task::load(&crate::eval::LocalDir::new(&task.source), Some(&task.split), Some(&task.name)) {
            Ok(loaded) => r.plan.push(format!(
                "evaluation task {}: {} queries, {} documents (split {})",
                task.name,
                loaded.queries.len(),
                loaded.corpus.len(),
                task.split
            )),
            Err(e) => r.problems.push(format!("{}: `evaluation.tasks[{i}]` ({}): {e}", cfg.locate("evaluation.tasks"), task.name)),
        }
    }
    // Evaluated at each evaluation and at the end: each must resolve from the Hub (or the hub cache offline).
    let hub = crate::hub::Hub::from_env();
    for name in &cfg.evaluation.mteb_tasks {
        if let Ok(res) = super::mteb::resolve_task(name) {
            match crate::eval::mteb_hub_task(&hub, &res.task) {
                Ok(task) => r.plan.push(format!(
                    "MTEB task {name}: {} ({} queries, {} documents, split {})",
                    res.task.name,
                    task.queries.len(),
                    task.corpus.len(),
                    res.task.eval_split
                )),
                Err(e) => r.problems.push(format!("{}: `evaluation.mteb_tasks` ({name}): {e}", cfg.locate("evaluation.mteb_tasks"))),
            }
        }
    }

    if let Err(problem) = probe_writable(&t.output_dir, &opts.store) {
        r.problems.push(format!("{}: `training.output_dir` {}: {problem}", cfg.locate("training.output_dir"), t.output_dir));
    } else {
        r.plan.push(format!("output: {} is writable", t.output_dir));
    }
    r.config = Some(cfg);
    r
}

/// Proves `output_dir` can be written: for a local path, a probe file in the directory or, when it does not
/// exist yet, in its nearest existing ancestor (training creates the rest); for an object store, a probe object
/// under the prefix. The probe is deleted again.
fn probe_writable(output_dir: &str, store: &StoreOptions) -> Result<(), String> {
    let name = format!(".splade-check-{}", std::process::id());
    if !crate::store::is_url(output_dir) || output_dir.starts_with("file://") {
        let path = Path::new(output_dir.strip_prefix("file://").unwrap_or(output_dir));
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir().map_err(|e| e.to_string())?.join(path)
        };
        let mut dir = abs.as_path();
        while !dir.exists() {
            dir = dir.parent().ok_or("no existing parent directory")?;
        }
        if !dir.is_dir() {
            return Err(format!("{} is a file, not a directory; choose another output_dir", dir.display()));
        }
        let probe = dir.join(&name);
        std::fs::write(&probe, b"probe")
            .map_err(|e| format!("cannot create files in {} ({e}); choose a writable output_dir", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        return Ok(());
    }
    let loc = Location::parse_with(output_dir, store).map_err(|e| e.to_string())?;
    let obj = loc.child(&name);
    block_on(async {
        loc.store()
            .put(&obj, object_store::PutPayload::from_static(b"probe"))
            .await
            .map_err(|e| format!("cannot write a probe object ({e}); check the bucket and the credentials"))?;
        loc.store()
            .delete(&obj)
            .await
            .map_err(|e| format!("wrote a probe object but cannot delete it ({e}); {} is left behind", loc.url_of(&name)))
    })
}
