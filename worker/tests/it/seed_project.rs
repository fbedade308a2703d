//! The seed project brought over unchanged: its eight YAML files, read in place from `shared/seed/configs`, against
//! an offline Hugging Face cache in `huggingface_hub`'s layout that holds small stand-ins under every Hub id the
//! files name (the seed's datasets with their real column schemas, NanoBEIR, and tiny models of each base's
//! architecture: NorBERT3 and GPT-BERT from the reference code, MiniLM for the dense CSR base).

use std::path::{Path, PathBuf};
use std::process::Command;

use splade_tests::hub::{files_of_dir, write_hub_repo, RepoKind};

use crate::parity::{assert_all_close, ours, theirs_on};
use crate::support::*;

fn seed_configs() -> Vec<PathBuf> {
    let dir = repo().join("../shared/seed/configs");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (shared/ lies beside the repository)", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert_eq!(v.len(), 8, "the seed's eight configs in {}", dir.display());
    v
}

/// A README whose `configs:` name each `<config>/<split>/` folder of a fixture repository, as the Hub's dataset
/// cards do (`dev` is no split name `datasets` infers from folders).
fn readme_for(dir: &Path) -> String {
    let mut out = String::from("---\nconfigs:\n");
    let mut configs: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    configs.sort();
    for c in configs {
        let name = c.file_name().unwrap().to_str().unwrap().to_string();
        out.push_str(&format!("- config_name: {name}\n  data_files:\n"));
        let mut splits: Vec<PathBuf> = std::fs::read_dir(&c).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
        splits.sort();
        for s in splits {
            let split = s.file_name().unwrap().to_str().unwrap();
            out.push_str(&format!("  - split: {split}\n    path: {name}/{split}/*.parquet\n"));
        }
    }
    out.push_str("---\n");
    out
}

/// The model ids of the seed's configs and the tiny stand-in of the same architecture for each.
fn model_stand_ins() -> Vec<(&'static str, PathBuf)> {
    let rc = repo().join("../shared/reference/remote-code");
    vec![
        ("ltg/norbert3-base", rc.join("tiny-norbert3")),
        ("ltg/norbert4-base", rc.join("tiny-gptbert-v1")),
        ("ltg/norbert4-large", rc.join("tiny-gptbert-v1")),
        // The CSR configs' base is a dense sentence-transformers model (NorBERT4 fine-tuned for embeddings).
        ("thivy/norbert4-base-scandinavian-embedding", model("minilm")),
    ]
}

/// Builds the offline hub cache under `root/hub-cache` and a working directory `root/work` holding the PAWS-X
/// files at the seed's `paws_data_dir` (`data/paws-x/x-final`). Returns (hub cache, working directory).
fn seed_world(root: &Path) -> (PathBuf, PathBuf) {
    let fixtures = root.join("fixtures");
    let out = Command::new(ref_python())
        .arg(repo().join("scripts/seed_loaders_ref.py"))
        .args(["fixtures", fixtures.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "seed_loaders_ref.py fixtures:\n{}", String::from_utf8_lossy(&out.stderr));
    let cache = root.join("hub-cache");
    for owner in std::fs::read_dir(fixtures.join("hub")).unwrap() {
        let owner = owner.unwrap().path();
        for repo_dir in std::fs::read_dir(&owner).unwrap() {
            let repo_dir = repo_dir.unwrap().path();
            let id = format!("{}/{}", owner.file_name().unwrap().to_str().unwrap(), repo_dir.file_name().unwrap().to_str().unwrap());
            let mut files = files_of_dir(&repo_dir);
            files.push(("README.md".into(), readme_for(&repo_dir).into_bytes()));
            write_hub_repo(&cache, RepoKind::Dataset, &id, &files);
        }
    }
    let nano = root.join("nanobeir");
    let out = Command::new(ref_python())
        .arg(repo().join("scripts/reference/st_nanobeir.py"))
        .args(["make-fixture", "--norquad", repo().join("data/norquad").to_str().unwrap(), "--out", nano.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "st_nanobeir.py make-fixture:\n{}", String::from_utf8_lossy(&out.stderr));
    write_hub_repo(&cache, RepoKind::Dataset, "sentence-transformers/NanoBEIR-en", &files_of_dir(&nano));
    // The seed configs' `mteb_tasks: ["NorQuAD", "SNL"]`, evaluated during training: stand-ins in MTEB's retrieval
    // layout at the revisions MTEB pins.
    let mteb = root.join("mteb-task");
    let out = Command::new(ref_python())
        .arg(repo().join("scripts/reference/mteb_fixture.py"))
        .args(["--norquad", repo().join("data/norquad").to_str().unwrap(), "--repo", mteb.to_str().unwrap(), "--beir"])
        .arg(root.join("mteb-beir"))
        .output()
        .unwrap();
    assert!(out.status.success(), "mteb_fixture.py:
{}", String::from_utf8_lossy(&out.stderr));
    for name in ["NorQuadRetrieval", "SNLRetrieval"] {
        let task = splade_common::config::mteb::resolve_task(name).unwrap().task;
        splade_tests::hub::write_hub_repo_at(&cache, RepoKind::Dataset, task.dataset, task.revision, &files_of_dir(&mteb));
    }
    for (id, dir) in model_stand_ins() {
        write_hub_repo(&cache, RepoKind::Model, id, &files_of_dir(&dir));
    }
    let work = root.join("work");
    let paws = work.join("data/paws-x/x-final");
    std::fs::create_dir_all(&paws).unwrap();
    for entry in std::fs::read_dir(fixtures.join("paws")).unwrap() {
        let lang = entry.unwrap().path();
        let dest = paws.join(lang.file_name().unwrap());
        std::fs::create_dir_all(&dest).unwrap();
        for f in std::fs::read_dir(&lang).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dest.join(f.file_name().unwrap())).unwrap();
        }
    }
    (cache, work)
}

/// `splade train ARGS` in `cwd`, offline against `hub_cache`: (success, stdout, stderr).
fn splade_train(args: &[&str], cwd: &Path, hub_cache: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_splade"))
        .arg("train")
        .args(args)
        .current_dir(cwd)
        .env("HF_HUB_CACHE", hub_cache)
        .env("HF_HUB_OFFLINE", "1")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Every seed config passes `--check` against the stand-in cache, unchanged; with an empty cache offline the
/// same run exits 1 naming every Hub id the file needs, in one run, and no key as unknown. The stand-in datasets
/// hold 78 to 267 rows, fewer than one of `training_config_csr_h100.yaml`'s batches of 128 per dataset
/// (round-robin): `--check` rightly refuses that plan, so that file is checked with `--set` batch 32. And
/// both `training_config_splade_large*.yaml` save every 1000 steps but evaluates every 2000 with
/// `load_best_model_at_end`, which transformers' `TrainingArguments` refuses as we do: checked with `--set
/// training.eval_steps=1000` after the refusal.
#[test]
fn check_passes_on_every_seed_config_against_a_hub_cache_of_stand_ins() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, work) = seed_world(tmp.path());
    let empty = tmp.path().join("empty-cache");
    std::fs::create_dir_all(&empty).unwrap();
    for path in seed_configs() {
        let file = path.display().to_string();
        let mut args = vec!["--config", file.as_str(), "--check"];
        if file.ends_with("training_config_csr_h100.yaml") {
            let (_, _, stderr) = splade_train(&args, &work, &cache);
            assert!(stderr.contains("no full batch of 128"), "{file}: the batch of 128 against the small stand-ins:\n{stderr}");
            args.extend(["--set", "training.per_device_train_batch_size=32"]);
        }
        if file.ends_with("training_config_splade_large.yaml") || file.ends_with("training_config_splade_large_h100.yaml") {
            // save_steps 1000 with eval_steps 2000 and load_best_model_at_end: transformers' TrainingArguments
            // refuses this too ("requires the saving steps to be a round multiple of the evaluation steps").
            let (ok, _, stderr) = splade_train(&args, &work, &cache);
            assert!(!ok && stderr.contains("save_steps (1000) to be a multiple of eval_steps (2000)"), "{file}:\n{stderr}");
            args.extend(["--set", "training.eval_steps=1000"]);
        }
        let (ok, stdout, stderr) = splade_train(&args, &work, &cache);
        assert!(ok, "{file}: --check failed against the stand-in cache:\n{stdout}\n{stderr}");
        assert!(stdout.contains("steps") && stdout.contains("effective batch"), "{file}: no plan printed:\n{stdout}");

        let (ok, stdout, stderr) = splade_train(&["--config", &file, "--check"], &work, &empty);
        assert!(!ok, "{file}: --check passed with an empty cache offline:\n{stdout}");
        assert!(!stderr.contains("unknown key"), "{file}: a key reported unknown:\n{stderr}");
        let text = std::fs::read_to_string(&path).unwrap();
        let base = text.lines().find_map(|l| l.trim().strip_prefix("base_model:")).unwrap();
        let base = base.split('#').next().unwrap().trim().trim_matches('"');
        assert!(stderr.contains(base), "{file}: the missing model {base} is not named:\n{stderr}");
        assert!(stderr.contains("HF_HUB_OFFLINE"), "{file}: the error does not name HF_HUB_OFFLINE:\n{stderr}");
        if text.contains("source: \"Fremtind/all-nli-norwegian\"") && !text.contains("nli:\n    enabled: false") {
            assert!(stderr.contains("Fremtind/all-nli-norwegian"), "{file}: the missing NLI dataset is not named:\n{stderr}");
        }
    }
}

/// Trains the seed's `file` to the end, changed only through `--set` (output_dir, max_steps 4, device cpu) and the
/// stand-in hub cache; returns its `final/` folder.
fn train_seed_config(root: &Path, file: &str) -> PathBuf {
    let (cache, work) = seed_world(root);
    let config = repo().join("../shared/seed/configs").join(file);
    let out = root.join("out");
    let output_dir = format!("training.output_dir={}", out.display());
    let args = ["--config", config.to_str().unwrap(), "--set", &output_dir, "--set", "training.max_steps=4", "--set", "hardware.device=cpu"];
    let (ok, stdout, stderr) = splade_train(&args, &work, &cache);
    assert!(ok, "splade train on the seed's {file} failed:\n{stdout}\n{stderr}");
    out.join("final")
}

/// The seed's `training_config_splade_regular.yaml` (NorBERT3, the nli + scandi_qa + ddsc loader blocks,
/// NanoBEIR and MTEB evaluation, TensorBoard and MLflow) trains to the end, changed only through `--set` and the
/// hub cache; `final/` carries a model card and loads in the seed's sentence-transformers 5.2 and in 6.2 (remote
/// code) with our embeddings.
#[test]
fn seed_regular_config_trains_to_the_end_and_loads_in_sentence_transformers_5_2_and_6_2() {
    let tmp = tempfile::tempdir().unwrap();
    let final_dir = train_seed_config(tmp.path(), "training_config_splade_regular.yaml");
    let card = std::fs::read_to_string(final_dir.join("README.md")).expect("final/ has a model card");
    assert!(card.contains("ltg/norbert3-base") && card.contains("SpladeLoss"), "model card:\n{card}");
    let texts: Vec<(String, bool)> = parity_texts().into_iter().filter(|(s, _)| s.len() < 400).take(6).collect();
    let mine = ours(&final_dir, &Default::default(), &texts);
    // NorBERT3's reference head makes padded rows NaN in sentence-transformers (see architectures.rs): one text
    // a batch there.
    for stack in [Stack::St52, Stack::St62] {
        let (theirs, _) = theirs_on(stack, &final_dir, &texts, true, 1);
        assert_all_close(&mine, &theirs, &texts, &format!("the seed's regular config, final/ on sentence-transformers {}", stack.version()));
    }
    // The config's `mteb_tasks: ["NorQuAD", "SNL"]` were evaluated (at the end: eval_steps 1000 > max_steps).
    let metrics = std::fs::read_to_string(final_dir.parent().unwrap().join("metrics.jsonl")).unwrap();
    for key in ["eval_NorQuadRetrieval_ndcg@10", "eval_SNLRetrieval_ndcg@10", "eval_NanoBEIR_mean_dot_ndcg@10"] {
        assert!(metrics.contains(&format!("\"{key}\"")), "{key} not logged:\n{metrics}");
    }
}

/// The seed's `training_config_csr.yaml` (a dense base, its pooling and a top-k sparse autoencoder trained with
/// `CSRLoss`, on the nli + scandi_qa + ddsc blocks) trains to the end with MiniLM under the base model's id,
/// changed only through `--set` and the hub cache; `final/` loads in sentence-transformers 6.2 and the seed's 5.2
/// with our embeddings.
#[test]
fn seed_csr_config_trains_to_the_end_and_loads_in_sentence_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let final_dir = train_seed_config(tmp.path(), "training_config_csr.yaml");
    assert!(final_dir.join("README.md").is_file(), "final/ has a model card");
    let texts: Vec<(String, bool)> = parity_texts().into_iter().filter(|(s, _)| s.len() < 400).take(6).collect();
    let mine = ours(&final_dir, &Default::default(), &texts);
    assert!(mine.iter().all(|e| !e.0.is_empty()), "every CSR embedding has active latents");
    for stack in [Stack::St62, Stack::St52] {
        let (theirs, _) = theirs_on(stack, &final_dir, &texts, false, 8);
        assert_all_close(&mine, &theirs, &texts, &format!("the seed's CSR config, final/ on sentence-transformers {}", stack.version()));
    }
}
