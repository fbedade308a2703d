//! The seed project's loader blocks against the seed's own Python loaders, and NumPy's permutation against ours.
//!
//! Needs the reference venv (`SPLADE_REF_PY`), the seed's pinned `datasets` 4.4.2 (`SPLADE_ST52_PATH`) and the
//! seed project (`SPLADE_SEED_DIR`, else the nearest `shared/seed` above the repository).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use splade_common::data::loaders::{self, nprandom, DirSplitFiles, HubSplitFiles};
use splade_common::data::{load_training_data_from, SeedLoader};
use splade_common::config::Config;
use splade_common::store::StoreOptions;

fn cache() -> PathBuf {
    std::env::var_os("SPLADE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/splade"))
}

fn ref_py() -> PathBuf {
    let p = std::env::var_os("SPLADE_REF_PY").map(PathBuf::from).unwrap_or_else(|| cache().join("ref-venv/bin/python"));
    assert!(p.is_file(), "reference venv not found at {}: run scripts/setup.sh --reference", p.display());
    p
}

/// The workspace root, from the run-time `CARGO_MANIFEST_DIR` (see `splade_tests::tools::repo_root`).
fn repo() -> PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    dir.parent().unwrap().to_path_buf()
}

fn seed_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("SPLADE_SEED_DIR") {
        return PathBuf::from(p);
    }
    repo()
        .ancestors()
        .map(|a| a.join("shared/seed"))
        .find(|p| p.join("train_sparse_multidataset.py").is_file())
        .expect("the seed project: set SPLADE_SEED_DIR to its folder (train_sparse_multidataset.py, utils/)")
}

/// Runs the reference venv's Python with the seed's pinned stack (ST 5.2's `datasets` 4.4.2) and the seed.
fn python(args: &[&str], hf_cache: &Path) -> String {
    let st52 = std::env::var_os("SPLADE_ST52_PATH").map(PathBuf::from).unwrap_or_else(|| cache().join("st52"));
    let out = Command::new(ref_py())
        .args(args)
        .env("PYTHONPATH", format!("{}:{}", st52.display(), seed_dir().display()))
        .env("HF_DATASETS_CACHE", hf_cache)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_DATASETS_OFFLINE", "1")
        .output()
        .expect("run the reference python");
    assert!(
        out.status.success(),
        "python {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn permutation_equals_numpy_default_rng_for_many_seeds_and_sizes() {
    let seeds: [u128; 7] = [0, 1, 42, 7, 123_456_789, (1 << 32) + 5, u64::MAX as u128];
    let sizes = [0usize, 1, 2, 3, 10, 97, 1000, 65_537, 1_000_000];
    let script = r#"
import hashlib, json, sys, numpy as np
seeds = json.loads(sys.argv[1]); sizes = json.loads(sys.argv[2])
out = {}
for s in seeds:
    for n in sizes:
        p = np.random.default_rng(s).permutation(n).astype('<u8')
        out[f"{s}/{n}"] = [hashlib.sha256(p.tobytes()).hexdigest(), p[:20].tolist()]
print(json.dumps(out))
"#;
    let tmp = tempfile::tempdir().unwrap();
    let seeds_json = serde_json::to_string(&seeds.iter().map(|s| s.to_string().parse::<Value>().unwrap()).collect::<Vec<_>>()).unwrap();
    let numpy: BTreeMap<String, (String, Vec<u64>)> =
        serde_json::from_str(&python(&["-c", script, &seeds_json, &serde_json::to_string(&sizes).unwrap()], tmp.path())).unwrap();
    use sha2::Digest;
    for s in seeds {
        for n in sizes {
            let p = nprandom::permutation(s, n);
            let bytes: Vec<u8> = p.iter().flat_map(|v| v.to_le_bytes()).collect();
            let ours = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect::<String>();
            let (theirs, head) = &numpy[&format!("{s}/{n}")];
            assert_eq!(&p[..n.min(20)], &head[..], "seed {s}, n {n}: first rows");
            assert_eq!(&ours, theirs, "seed {s}, n {n}: whole permutation");
        }
    }
}

/// The rows of one split as (anchor, positive, negative) with `negative` absent when the split has no such
/// column.
type Rows = Vec<(String, String, Option<String>)>;

fn python_rows(split: &Value) -> (bool, Rows) {
    let has_negative = split["columns"].as_array().unwrap().iter().any(|c| c == "negative");
    let rows = split["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_else(|| panic!("{k} in {r}")).to_string();
            (s("anchor"), s("positive"), has_negative.then(|| s("negative")))
        })
        .collect();
    (has_negative, rows)
}

fn our_rows(path: &Path) -> (bool, Rows) {
    let text = std::fs::read_to_string(path).unwrap();
    let rows: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let has_negative = rows.first().is_some_and(|r| r.get("negative").is_some());
    let rows = rows
        .iter()
        .map(|r| {
            assert_eq!(r.get("negative").is_some(), has_negative, "{}: every row has the same columns", path.display());
            let s = |k: &str| r[k].as_str().unwrap().to_string();
            (s("anchor"), s("positive"), r.get("negative").map(|v| v.as_str().unwrap().to_string()))
        })
        .collect();
    (has_negative, rows)
}

/// One parsed `datasets:` section of a config (with the file's other sections minimal).
fn datasets_section(yaml_body: &str) -> Config {
    let text = format!("model:\n  base_model: x\ndatasets:\n{yaml_body}");
    let c = Config::from_str(&text, "cfg.yaml").unwrap_or_else(|e| panic!("{e}"));
    c.validate().unwrap_or_else(|e| panic!("{e}"));
    c
}

#[test]
fn seed_loader_blocks_give_the_seeds_rows_in_each_split() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("fx");
    let script = repo().join("scripts/seed_loaders_ref.py");
    python(&[script.to_str().unwrap(), "fixtures", root.to_str().unwrap()], &tmp.path().join("hf"));
    let paws = root.join("paws");
    let paws = paws.to_str().unwrap();

    // Each case: the `datasets:` section as the seed reads it, and as YAML for ours.
    let off = json!({"enabled": false});
    let mut cases: BTreeMap<String, Value> = BTreeMap::new();
    cases.insert("nli_defaults".into(), json!({"nli": {"enabled": true}, "scandi_qa": off, "ddsc": off}));
    cases.insert(
        "scandi_qa_all".into(),
        json!({"nli": off, "scandi_qa": {"enabled": true, "paws_data_dir": paws}, "ddsc": off}),
    );
    for only in ["use_norquad", "use_openbookqa", "use_scandiqa", "use_supervised_da", "use_paws"] {
        let mut block = json!({"enabled": true, "paws_data_dir": paws, "use_norquad": false, "use_openbookqa": false,
            "use_scandiqa": false, "use_supervised_da": false, "use_paws": false});
        block[only] = json!(true);
        if only == "use_scandiqa" {
            block["scandiqa_languages"] = json!(["sv", "no"]);
        }
        cases.insert(format!("scandi_qa_{only}"), json!({"nli": off, "scandi_qa": block, "ddsc": off}));
    }
    cases.insert("ddsc_all".into(), json!({"nli": off, "scandi_qa": off, "ddsc": {"enabled": true, "tasks": null}}));
    cases.insert(
        "ddsc_filtered".into(),
        json!({"nli": off, "scandi_qa": off, "ddsc": {"enabled": true, "languages": ["norwegian", "swedish"],
            "tasks": ["retrieval", "unit-triple"], "split_ratio": [0.8, 0.1, 0.1]}}),
    );
    cases.insert(
        "eti_splits".into(),
        json!({"nli": off, "scandi_qa": off, "ddsc": off, "eti": {"enabled": true}}),
    );
    cases.insert(
        "eti_train_only".into(),
        json!({"nli": off, "scandi_qa": off, "ddsc": off,
            "eti": {"enabled": true, "source": "fix/eti-train-only", "split_ratio": [0.8, 0.1, 0.1]}}),
    );
    let cases_path = tmp.path().join("cases.json");
    std::fs::write(&cases_path, serde_json::to_vec(&cases).unwrap()).unwrap();
    let out_path = tmp.path().join("seed.json");
    python(
        &[script.to_str().unwrap(), "run", root.to_str().unwrap(), cases_path.to_str().unwrap(), out_path.to_str().unwrap()],
        &tmp.path().join("hf"),
    );
    let seed: Value = serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();

    let files = DirSplitFiles { root: root.join("hub") };
    let our_cache = tmp.path().join("cache");
    let mut checked = 0;
    for (case, section) in &cases {
        // The same section through our YAML schema (JSON is YAML).
        let body: String = section
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("  {k}: {v}\n"))
            .collect();
        let config = datasets_section(&body);
        for (name, spec) in config.datasets.enabled() {
            let loader = spec.loader.as_ref().expect("a seed loader block");
            let m = loaders::materialize(name, loader, &files, &our_cache).unwrap_or_else(|e| panic!("{case}: {e}"));
            for (split, path, count) in [("train", &m.train, m.rows[0]), ("dev", &m.dev, m.rows[1]), ("test", &m.test, m.rows[2])] {
                let theirs = python_rows(&seed[case][name][split]);
                let ours = our_rows(path);
                assert!(!theirs.1.is_empty() || split != "train", "{case}/{name}/{split}: the fixture gives rows");
                assert_eq!(ours.1.len(), count, "{case}/{name}/{split}: row count in meta.json");
                if ours.1.is_empty() {
                    assert!(theirs.1.is_empty(), "{case}/{name}/{split}: the seed has rows, we have none");
                } else {
                    assert_eq!(ours.0, theirs.0, "{case}/{name}/{split}: `negative` column present");
                }
                assert_eq!(ours.1.len(), theirs.1.len(), "{case}/{name}/{split}: row count");
                for (i, (a, b)) in ours.1.iter().zip(&theirs.1).enumerate() {
                    assert_eq!(a, b, "{case}/{name}/{split}: row {i}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3 * cases.len(), "every case has one enabled block with three splits");

    // Into training: the seed block's rows are the training rows, its dev split the evaluation rows.
    let config = datasets_section(&format!("  scandi_qa: {{paws_data_dir: {paws}}}\n  nli: {{enabled: true}}\n"));
    let blocks: Vec<_> = config.datasets.enabled().collect();
    assert_eq!(blocks.iter().map(|(n, _)| *n).collect::<Vec<_>>(), ["scandi_qa", "nli"], "config order");
    let data = splade_common::store::block_on(load_training_data_from(
        blocks.iter().copied(),
        7,
        &StoreOptions::default(),
        Some((&files, our_cache.as_path())),
    ))
    .unwrap();
    for (d, case) in data.iter().zip(["scandi_qa_all", "nli_defaults"]) {
        let train = python_rows(&seed[case][&d.name]["train"]).1;
        let dev = python_rows(&seed[case][&d.name]["dev"]).1;
        let as_rows = |v: &[splade_common::data::Example]| -> Rows {
            v.iter().map(|e| (e.anchor.clone(), e.positive.clone(), e.negatives.first().cloned())).collect()
        };
        assert_eq!(as_rows(&d.train), train, "{}: training rows", d.name);
        assert_eq!(as_rows(&d.eval), dev, "{}: evaluation rows are the dev split", d.name);
    }
}

#[test]
fn seed_loader_block_missing_a_column_names_dataset_columns_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("fx");
    let script = repo().join("scripts/seed_loaders_ref.py");
    python(&[script.to_str().unwrap(), "fixtures", root.to_str().unwrap()], &tmp.path().join("hf"));
    let config = datasets_section("  eti:\n    enabled: true\n    source: fix/eti-no-positive\n");
    let (name, spec) = config.datasets.enabled().next().unwrap();
    assert!(matches!(spec.loader, Some(SeedLoader::Eti(_))));
    let files = DirSplitFiles { root: root.join("hub") };
    let cache = tmp.path().join("cache");
    let e = loaders::materialize(name, spec.loader.as_ref().unwrap(), &files, &cache).unwrap_err().to_string();
    assert!(e.starts_with("dataset `eti`: `fix/eti-no-positive` (split `train`) has no column `positive`"), "{e}");
    assert!(e.contains("columns found: anchor, answer"), "{e}");
    assert!(e.contains("set `datasets.eti.source`"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
    // Nothing half-written is left in the cache.
    let left: Vec<_> = std::fs::read_dir(cache.join("seed-data")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn seed_configs_datasets_sections_parse_with_the_seeds_defaults_in_script_order() {
    let mut n = 0;
    for entry in std::fs::read_dir(seed_dir().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // The `datasets:` section as written (other sections are the schema's, parsed elsewhere).
        let body: String = text
            .lines()
            .skip_while(|l| !l.starts_with("datasets:"))
            .skip(1)
            .take_while(|l| l.is_empty() || l.starts_with(' ') || l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = datasets_section(&body);
        let names: Vec<&str> = c.datasets.datasets.iter().map(|(n, _)| n.as_str()).collect();
        // The seed's script builds its dict in the order nli, scandi_qa, ddsc, eti; the files list them so too.
        let script_order: Vec<&str> =
            splade_common::config::SEED_LOADER_NAMES.iter().copied().filter(|n| names.contains(n)).collect();
        assert_eq!(names, script_order, "{}", path.display());
        assert!(names.len() >= 3, "{}: {names:?}", path.display());
        for (name, spec) in &c.datasets.datasets {
            let loader = spec.loader.as_ref().unwrap_or_else(|| panic!("{}: {name} is a loader block", path.display()));
            assert_eq!(loader.block_name(), name);
            match loader {
                SeedLoader::Ddsc(d) => {
                    assert_eq!(d.split_ratio.0, [0.98, 0.01, 0.01]);
                    assert_eq!(d.tasks, None);
                }
                SeedLoader::ScandiQa(q) => assert_eq!(q.scandiqa_languages, ["no", "da", "sv"]),
                SeedLoader::Eti(e) => assert!(!e.enabled, "{}: eti is off in the seed's file", path.display()),
                SeedLoader::Nli(l) => assert_eq!(l.source, "Fremtind/all-nli-norwegian"),
            }
        }
        n += 1;
    }
    assert_eq!(n, 8, "the eight seed configs");
}

#[test]
fn seed_loader_block_reads_its_hub_dataset_from_the_hub_cache_offline() {
    use splade_common::hub::{Hub, RepoKind};
    use splade_tests::hub::{files_of_dir, write_hub_repo};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("fx");
    let script = repo().join("scripts/seed_loaders_ref.py");
    python(&[script.to_str().unwrap(), "fixtures", root.to_str().unwrap()], &tmp.path().join("hf"));
    // The NLI fixture as a Hub dataset repo whose README names its splits (`dev` is not a split name
    // `datasets` infers from folders: it would call it `validation`).
    let mut files = files_of_dir(&root.join("hub/Fremtind/all-nli-norwegian"));
    let readme = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: default/train/*.parquet\n  - split: dev\n    path: default/dev/*.parquet\n  - split: test\n    path: default/test/*.parquet\n---\n";
    files.push(("README.md".into(), readme.as_bytes().to_vec()));
    let hub_cache = tmp.path().join("hub-cache");
    let commit = write_hub_repo(&hub_cache, RepoKind::Dataset, "Fremtind/all-nli-norwegian", &files);
    let hub = HubSplitFiles::new(Hub::from_env().with_cache_dir(hub_cache).with_offline(true));

    let config = datasets_section("  nli: {enabled: true}\n");
    let (name, spec) = config.datasets.enabled().next().unwrap();
    let loader = spec.loader.as_ref().unwrap();
    let from_hub = loaders::materialize(name, loader, &hub, &tmp.path().join("cache-a")).unwrap();
    let from_dir = loaders::materialize(name, loader, &DirSplitFiles { root: root.join("hub") }, &tmp.path().join("cache-b")).unwrap();
    assert!(from_hub.rows[0] > 0 && from_hub.rows[1] > 0 && from_hub.rows[2] > 0, "{:?}", from_hub.rows);
    assert_eq!(from_hub.rows, from_dir.rows);
    for (a, b) in [(&from_hub.train, &from_dir.train), (&from_hub.dev, &from_dir.dev), (&from_hub.test, &from_dir.test)] {
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap(), "{} vs {}", a.display(), b.display());
    }
    // The commit read is recorded (what checkpoints keep); a folder is no Hub dataset.
    let pin = splade_common::data::HubPin { repo_id: "Fremtind/all-nli-norwegian".into(), revision: "main".into(), commit };
    assert_eq!(from_hub.hub, vec![pin]);
    assert!(from_dir.hub.is_empty());
    // A second run finds the materialised folder instead of writing it again.
    let again = loaders::materialize(name, loader, &hub, &tmp.path().join("cache-a")).unwrap();
    assert_eq!(again, from_hub);
    // Missing from the cache while offline: the error names the Hub id.
    let empty = HubSplitFiles::new(Hub::from_env().with_cache_dir(tmp.path().join("empty")).with_offline(true));
    let e = loaders::materialize(name, loader, &empty, &tmp.path().join("cache-c")).unwrap_err().to_string();
    assert!(e.contains("Fremtind/all-nli-norwegian") && e.contains("HF_HUB_OFFLINE"), "{e}");
}
