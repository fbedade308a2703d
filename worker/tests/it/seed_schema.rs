//! The seed project's configs as users bring them: `splade train --check` on each of them names every problem
//! in one run and no key as unknown; `router.learning_rate_patterns` give the optimizer groups
//! sentence-transformers' trainer builds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use splade_common::config::Config;
use splade_worker::train::trainer::st_parameter_name;
use splade_worker::train::Trainer;
use tch::Device;

use crate::support::*;
use crate::train::{small_pairs, tiny_config};

fn seed_configs() -> Vec<PathBuf> {
    // The seed project's own files, read in place (shared/ lies beside the repository, in CI too).
    let dir = repo().join("../shared/seed/configs");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert_eq!(v.len(), 8, "the seed's eight configs in {}", dir.display());
    v
}

/// Runs `splade train --check` in `cwd` offline against the empty hub cache `hf_home`.
fn check(config: &Path, cwd: &Path, hf_home: &Path, sets: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_splade"));
    cmd.arg("train").arg("--config").arg(config).arg("--check");
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.current_dir(cwd).env("HF_HOME", hf_home).env_remove("HF_HUB_CACHE").env("HF_HUB_OFFLINE", "1").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Every seed config: one `--check` run names all its problems, no key outside the dataset loader blocks
/// (`datasets.nli|scandi_qa|ddsc|eti`, whose schema comes with the loaders) is unknown, and the only problems
/// outside those blocks are the Hub ids the file names for its model and its `evaluation.mteb_tasks`' datasets,
/// which an empty offline cache lacks.
#[test]
fn check_every_seed_config_names_only_the_uncached_hub_model_and_no_unknown_key() {
    let tmp = tempfile::tempdir().unwrap();
    let hf_home = tmp.path().join("hf");
    std::fs::create_dir_all(&hf_home).unwrap();
    for path in seed_configs() {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let base_model = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("base_model:"))
            .map(|v| v.split('#').next().unwrap().trim().trim_matches('"').to_string())
            .unwrap();
        let (ok, stdout, stderr) = check(&path, tmp.path(), &hf_home, &[]);
        assert!(!ok, "{file}: --check passed without the Hub model {base_model} cached:\n{stdout}");
        let problems: Vec<&str> = stderr.lines().filter_map(|l| l.strip_prefix("problem: ")).collect();
        assert!(stderr.contains(&format!("{} problem(s) found by --check", problems.len())), "{file}: {stderr}");
        for p in &problems {
            assert!(p.starts_with(&file), "{file}: a problem that does not name the file: {p}");
        }
        let mteb: Vec<&str> = problems.iter().copied().filter(|p| p.contains("`evaluation.mteb_tasks` (")).collect();
        for p in &mteb {
            assert!(p.contains("is not in the Hugging Face cache") && p.contains("HF_HUB_OFFLINE"), "{file}: {p}");
        }
        let outside: Vec<&str> = problems
            .iter()
            .copied()
            .filter(|p| !p.contains("`datasets.") && !p.contains("dataset `") && !mteb.contains(p))
            .collect();
        for p in &problems {
            assert!(!p.contains("unknown key") || p.contains("`datasets."), "{file}: unknown key outside the loader blocks: {p}");
        }
        let line = text.lines().position(|l| l.trim_start().starts_with("base_model:")).unwrap() + 1;
        assert_eq!(outside.len(), 1, "{file}: problems outside the loader blocks:\n{}", outside.join("\n"));
        let p = outside[0];
        assert!(
            p.starts_with(&format!("{file}:{line}: `model.base_model`: model '{base_model}'"))
                && p.contains("is not in the Hugging Face cache")
                && p.contains("HF_HUB_OFFLINE"),
            "{file}: {p}"
        );
        // The plan and the notes still come: every key set but not acted on is listed with its reason, the seed's
        // MTEB short names are mapped, and each of those tasks (its Hub dataset not cached here) is a problem.
        assert!(stdout.contains("note: ") && stdout.contains("`training.push_to_hub` is parsed but not acted on: "), "{file}:\n{stdout}");
        if text.contains("mteb_tasks: [\"NorQuAD\", \"SNL\"]") {
            assert!(stdout.contains("`NorQuAD` is the MTEB task `NorQuadRetrieval`") && stdout.contains("`SNL` is the MTEB task `SNLRetrieval`"), "{file}:\n{stdout}");
            assert_eq!(mteb.len(), 2, "{file}: {mteb:?}");
            assert!(mteb.iter().any(|p| p.contains("(NorQuAD)")) && mteb.iter().any(|p| p.contains("(SNL)")), "{file}: {mteb:?}");
        }
    }
}

/// `--check` on a config this machine can run: the plan (rows, steps, effective batch, schedule) and exit 0;
/// `--set` changes what is checked; broken pieces are all named in one run, each with its fix.
#[test]
fn check_prints_the_plan_and_names_every_problem_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_pairs(tmp.path(), 40);
    let text = tiny_config(&tmp.path().join("out"), &data, "  max_steps: 6\n  per_device_train_batch_size: 4\n  gradient_accumulation_steps: 2\n  logging_steps: 2\n  save_steps: 3", "");
    let cfg = tmp.path().join("ok.yaml");
    std::fs::write(&cfg, &text).unwrap();
    let hf = tmp.path().join("hf");
    let (ok, stdout, stderr) = check(&cfg, tmp.path(), &hf, &[]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("dataset norquad: 40 train rows, 0 dev rows"), "{stdout}");
    assert!(stdout.contains("steps: 6 (max_steps 6), effective batch 8 = per_device_train_batch_size 4 × gradient_accumulation_steps 2"), "{stdout}");
    assert!(stdout.contains("schedule: log every 2 steps; no evaluation during training; checkpoint every 3 steps"), "{stdout}");
    assert!(stdout.contains("is writable") && stdout.ends_with("check passed\n"), "{stdout}");
    assert!(!tmp.path().join("out").exists(), "--check created the output folder");

    // --set: more steps than... the same file, other values; a broken value by --set is named by its argument.
    let (ok, stdout, _) = check(&cfg, tmp.path(), &hf, &["training.max_steps=3", "training.logging_steps=1"]);
    assert!(ok && stdout.contains("steps: 3 (max_steps 3)") && stdout.contains("log every 1 steps"), "{stdout}");

    // Every problem in one run: a missing dataset, a missing model folder, an unwritable output, a schedule
    // that cannot keep the best model, a bad --set value, a bad evaluation task, an unknown MTEB task and a known
    // one whose Hub dataset the empty offline cache lacks.
    let ro = tmp.path().join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("file"), "x").unwrap();
    let (ok, _, stderr) = check(
        &cfg,
        tmp.path(),
        &hf,
        &[
            "datasets.norquad.source=/nonexistent/pairs.jsonl",
            "model.base_model=/nonexistent/model",
            &format!("training.output_dir={}", ro.join("file").join("out").display()),
            "training.seed=many",
            "evaluation.tasks=[{name: dev, source: /nonexistent/task}]",
            "evaluation.mteb_tasks=[NorQuAD, Nope]",
        ],
    );
    assert!(!ok);
    let problems: Vec<&str> = stderr.lines().filter_map(|l| l.strip_prefix("problem: ")).collect();
    let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
    assert!(has("--set training.seed=many: `training.seed` is `many` but must be a non-negative integer"), "{stderr}");
    assert!(has("`evaluation.mteb_tasks` is `Nope`"), "{stderr}");
    assert!(has("--set model.base_model=/nonexistent/model: `model.base_model`: model '/nonexistent/model': no such directory"), "{stderr}");
    assert!(has("--set datasets.norquad.source=/nonexistent/pairs.jsonl: dataset `norquad`"), "{stderr}");
    assert!(has("`evaluation.tasks[0]` (dev)"), "{stderr}");
    assert!(has("`training.output_dir`") && has("is a file, not a directory"), "{stderr}");
    assert!(has("`evaluation.mteb_tasks` (NorQuAD)") && has("is not in the Hugging Face cache"), "{stderr}");
    assert_eq!(problems.len(), 7, "{stderr}");
    assert!(stderr.contains("7 problem(s) found by --check"), "{stderr}");
}

/// The seed's `router.learning_rate_patterns` on an inference-free SPLADE-tiny: every parameter's learning rate
/// and weight decay equal those of the groups sentence-transformers 6.2's trainer builds from
/// `learning_rate_mapping` (names of its loss module's parameters).
#[test]
fn router_learning_rate_patterns_give_sentence_transformers_parameter_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_pairs(tmp.path(), 16);
    let patterns = [(r".*\.query\..*", 1e-3), (r"LayerNorm", 3e-4)];
    let yaml_patterns: String = patterns.iter().map(|(p, lr)| format!("    '{p}': {lr:e}\n")).collect();
    let text = tiny_config(&tmp.path().join("o"), &data, "  max_steps: 1\n  per_device_train_batch_size: 4\n  learning_rate: 2.0e-5\n  weight_decay: 0.01", "")
        .replace("  dropout: 0.0\n", "  dropout: 0.0\n  architecture: inference-free-splade\n  use_router: true\n")
        + &format!("router:\n  mapping:\n    anchor: query\n    positive: document\n    negative: document\n  learning_rate_patterns:\n{yaml_patterns}");
    let cfg = Config::from_str(&text, "router.yaml").unwrap();
    cfg.validate().unwrap();
    let t = Trainer::new(cfg, Device::Cpu, 4, 1).unwrap();
    let mut ours: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for g in &t.opt.groups {
        for n in &g.names {
            let prev = ours.insert(st_parameter_name(&t.model, n), (2e-5 * g.lr_scale, g.weight_decay));
            assert!(prev.is_none(), "{n} in two groups");
        }
    }

    let out = tmp.path().join("groups.json");
    let json_patterns = serde_json::to_string(&patterns.iter().map(|(p, lr)| (p.to_string(), *lr)).collect::<BTreeMap<_, _>>()).unwrap();
    let status = Command::new(ref_python())
        .arg(repo().join("scripts/reference/st_param_groups.py"))
        .args(["--model", model("splade-tiny").to_str().unwrap(), "--patterns", &json_patterns, "--lr", "2e-5", "--weight-decay", "0.01"])
        .arg("--out")
        .arg(&out)
        .env("HF_HUB_OFFLINE", "1")
        .status()
        .unwrap();
    assert!(status.success(), "st_param_groups.py failed");
    let theirs: BTreeMap<String, (f64, f64)> = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>(), "parameter names");
    for (name, (lr, wd)) in &theirs {
        let (our_lr, our_wd) = ours[name];
        assert!((our_lr - lr).abs() <= 1e-12 * lr.abs(), "{name}: lr {our_lr} vs {lr}");
        assert_eq!(our_wd, *wd, "{name}: weight decay");
    }
    // Both patterns did something: the static table at 1e-3, LayerNorms at 3e-4 without decay.
    assert_eq!(theirs["model.0.sub_modules.query.0.weight"], (1e-3, 0.01));
    assert!(theirs.iter().any(|(n, v)| n.contains("LayerNorm") && *v == (3e-4, 0.0)));
}
