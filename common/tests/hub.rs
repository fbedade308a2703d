//! The Hugging Face Hub cache against the real `huggingface_hub` and `datasets` (reference venv, offline):
//! the cache we write is the one they read, we read the one they write, and a dataset repo's (config, split)
//! files are the ones `datasets` resolves.

use std::path::{Path, PathBuf};
use std::process::Command;

use splade_common::data::{load_dataset_blocking, DatasetSpec, OnBadRecord};
use splade_common::hub::{resolve_data_files, Hub, HubError, RepoKind};
use splade_common::store::StoreOptions;
use splade_tests::hub::{files_of_dir, write_hub_repo, HostedRepo, LoopbackHub};
use splade_tests::tools::repo_root;

fn ref_py() -> PathBuf {
    let p = std::env::var("SPLADE_REF_PY").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/splade/ref-venv/bin/python")
    });
    assert!(p.exists(), "{} missing: run scripts/setup.sh --reference", p.display());
    p
}

fn st52_path() -> PathBuf {
    std::env::var("SPLADE_ST52_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/splade/st52"))
}

/// Runs `scripts/reference/hub_check.py args` offline (with datasets 4.4.2 / huggingface_hub 0.36 first on
/// the path when `seed_stack`); returns stdout, panics with stderr on failure.
fn hub_check(tmp: &Path, seed_stack: bool, args: &[&str]) -> String {
    let mut cmd = Command::new(ref_py());
    cmd.arg(repo_root().join("scripts/reference/hub_check.py"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_DATASETS_CACHE", tmp.join("datasets-cache"))
        .env("HF_HOME", tmp.join("hf-home"));
    if seed_stack {
        cmd.env("PYTHONPATH", st52_path());
    }
    let out = cmd.output().expect("spawn reference python");
    assert!(out.status.success(), "hub_check.py {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn spec(source: &str, config: Option<&str>, split: Option<&str>) -> DatasetSpec {
    DatasetSpec {
        enabled: true,
        source: source.into(),
        config: config.map(str::to_string),
        split: split.map(str::to_string),
        format: None,
        columns: Default::default(),
        split_ratio: 0.0,
        max_samples: None,
        on_bad_record: OnBadRecord::Error,
        loader: None,
        hub_commits: Default::default(),
    }
}

fn rows(range: std::ops::Range<usize>) -> Vec<serde_json::Value> {
    range
        .map(|i| {
            serde_json::json!({
                "anchor": format!("Hva er svaret på spørsmål {i}?"),
                "positive": format!("Svaret på spørsmål {i} står her."),
                "negative": format!("Dette handler om noe annet enn {i}."),
            })
        })
        .collect()
}

/// A Parquet file of `rows`, written by pyarrow.
fn parquet(tmp: &Path, name: &str, rows: &[serde_json::Value]) -> Vec<u8> {
    let json = tmp.join(format!("{name}.json"));
    std::fs::write(&json, serde_json::to_string(rows).unwrap()).unwrap();
    let out = tmp.join(format!("{name}.parquet"));
    hub_check(tmp, false, &["make-parquet", out.to_str().unwrap(), json.to_str().unwrap()]);
    std::fs::read(out).unwrap()
}

fn jsonl(rows: &[serde_json::Value]) -> Vec<u8> {
    rows.iter().map(|r| format!("{r}\n")).collect::<String>().into_bytes()
}

const README: &str = "---
license: cc0-1.0
configs:
- config_name: pairs
  default: true
  data_files:
  - split: train
    path: data/train-*.parquet
  - split: validation
    path: data/dev-*.parquet
- config_name: extra
  data_files:
  - split: train
    path: extra/*.jsonl
  - split: validation
    path: data/dev.jsonl
---
# A test dataset
";

/// Sets the Hub environment of this test process (nextest runs each test in its own process).
fn offline_env(cache: &Path) {
    std::env::set_var("HF_HUB_CACHE", cache);
    std::env::set_var("HF_HUB_OFFLINE", "1");
}

#[test]
fn hub_cache_we_write_is_read_by_huggingface_hub_and_datasets() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let data: Vec<(String, Vec<u8>)> = vec![
        ("README.md".into(), README.as_bytes().to_vec()),
        ("data/train-00000-of-00002.parquet".into(), parquet(tmp.path(), "t0", &rows(0..5))),
        ("data/train-00001-of-00002.parquet".into(), parquet(tmp.path(), "t1", &rows(5..12))),
        ("data/dev-00000-of-00001.parquet".into(), parquet(tmp.path(), "d", &rows(100..103))),
        ("data/dev.jsonl".into(), jsonl(&rows(300..302))),
        ("extra/more.jsonl".into(), jsonl(&rows(200..204))),
        (".gitattributes".into(), b"*.parquet filter=lfs diff=lfs merge=lfs -text\n".to_vec()),
    ];
    let ds_commit = write_hub_repo(&cache, RepoKind::Dataset, "test-org/nli-mini", &data);
    let tiny = std::env::var("SPLADE_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/splade/models"))
        .join("splade-tiny");
    let model_files = files_of_dir(&tiny);
    assert!(model_files.iter().any(|(p, _)| p == "model.safetensors"), "{} incomplete: run scripts/setup.sh", tiny.display());
    let model_commit = write_hub_repo(&cache, RepoKind::Model, "test-org/splade-tiny", &model_files);

    // Our reader, offline.
    let hub = Hub::from_env().with_cache_dir(cache.clone()).with_offline(true);
    let repo = hub.dataset("test-org/nli-mini", None).unwrap();
    assert_eq!(repo.commit, ds_commit);
    let mut names: Vec<String> = data.iter().map(|(p, _)| p.clone()).collect();
    names.sort();
    assert_eq!(repo.files(), names.as_slice());
    assert_eq!(repo.configs().unwrap(), ["pairs", "extra"]);
    assert_eq!(repo.splits(None).unwrap(), ["train", "validation"]);
    assert_eq!(repo.splits(Some("extra")).unwrap(), ["train", "validation"]);
    let train = repo.split_files(None, "train").unwrap();
    let snap = repo.snapshot_dir();
    assert_eq!(train, [snap.join("data/train-00000-of-00002.parquet"), snap.join("data/train-00001-of-00002.parquet")]);
    assert_eq!(repo.split_files(Some("extra"), "train").unwrap(), [snap.join("extra/more.jsonl")]);
    let e = repo.split_files(None, "test").unwrap_err().to_string();
    assert!(e.contains("no split `test`") && e.contains("train, validation"), "{e}");
    let model = hub.model("test-org/splade-tiny", None).unwrap();
    assert_eq!(model.commit, model_commit);

    // huggingface_hub finds what we wrote: snapshot_download, hf_hub_download per file, scan_cache_dir.
    let check = serde_json::json!([
        {"repo_id": "test-org/nli-mini", "repo_type": "dataset", "snapshot": snap, "files": names},
        {"repo_id": "test-org/splade-tiny", "repo_type": "model", "snapshot": model.snapshot_dir(),
         "files": model_files.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>()},
    ]);
    let spec_path = tmp.path().join("spec.json");
    std::fs::write(&spec_path, check.to_string()).unwrap();
    for seed_stack in [false, true] {
        hub_check(tmp.path(), seed_stack, &["read-cache", cache.to_str().unwrap(), spec_path.to_str().unwrap()]);
    }

    // datasets.load_dataset("parquet") on those files gives the rows our reader gives for the Hub id.
    offline_env(&cache);
    let ours = load_dataset_blocking("nli", &spec("test-org/nli-mini", None, None), &StoreOptions::default()).unwrap();
    assert_eq!(ours.hub.as_ref().unwrap().commit, ds_commit);
    let args: Vec<&str> = std::iter::once("load-parquet").chain(train.iter().map(|p| p.to_str().unwrap())).collect();
    let theirs: Vec<serde_json::Value> = serde_json::from_str(&hub_check(tmp.path(), false, &args)).unwrap();
    assert_eq!(theirs.len(), 12);
    assert_eq!(ours.examples.len(), theirs.len());
    for (o, t) in ours.examples.iter().zip(&theirs) {
        assert_eq!(o.anchor, t["anchor"].as_str().unwrap());
        assert_eq!(o.positive, t["positive"].as_str().unwrap());
        assert_eq!(o.negatives, [t["negative"].as_str().unwrap()]);
    }
    // The JSONL split and the other config through the same source syntax.
    let dev = load_dataset_blocking("nli", &spec("hf://datasets/test-org/nli-mini", None, Some("validation")), &StoreOptions::default()).unwrap();
    assert_eq!(dev.examples.len(), 3);
    let extra_dev = load_dataset_blocking("x", &spec("test-org/nli-mini", Some("extra"), Some("validation")), &StoreOptions::default()).unwrap();
    assert_eq!(extra_dev.examples.len(), 2);
    let extra = load_dataset_blocking("x", &spec("test-org/nli-mini", Some("extra"), None), &StoreOptions::default()).unwrap();
    assert_eq!(extra.examples[0].anchor, rows(200..201)[0]["anchor"].as_str().unwrap());
    let by_path = load_dataset_blocking("p", &spec(&format!("hf://datasets/test-org/nli-mini@{ds_commit}/extra"), None, None), &StoreOptions::default()).unwrap();
    assert_eq!(by_path.examples.len(), 4);
}

#[test]
fn hub_reads_the_cache_huggingface_hub_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::write(src.join("data/train.jsonl"), jsonl(&rows(0..3))).unwrap();
    std::fs::write(src.join("data/test.jsonl"), jsonl(&rows(10..12))).unwrap();
    std::fs::write(src.join("README.md"), "# no configs\n").unwrap();
    let out = hub_check(tmp.path(), false, &["write-cache", cache.to_str().unwrap(), "py-org/written", "dataset", src.to_str().unwrap()]);
    let commit = serde_json::from_str::<serde_json::Value>(&out).unwrap()["commit"].as_str().unwrap().to_string();
    let repo = Hub::from_env().with_cache_dir(cache).with_offline(true).dataset("py-org/written", None).unwrap();
    assert_eq!(repo.commit, commit);
    assert_eq!(repo.files(), ["README.md", "data/test.jsonl", "data/train.jsonl"]);
    assert_eq!(repo.splits(None).unwrap(), ["train", "test"]);
    let test = repo.split_files(None, "test").unwrap();
    assert_eq!(std::fs::read(&test[0]).unwrap(), jsonl(&rows(10..12)));
}

#[test]
fn hub_offline_without_the_repo_names_the_id_the_cache_and_hf_hub_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::from_env().with_cache_dir(tmp.path().to_path_buf()).with_offline(true);
    let e = hub.dataset("Fremtind/all-nli-norwegian", None).unwrap_err();
    assert!(matches!(e, HubError::NotCached { .. }));
    let msg = e.to_string();
    let searched = tmp.path().join("datasets--Fremtind--all-nli-norwegian");
    for want in ["Fremtind/all-nli-norwegian", searched.to_str().unwrap(), "HF_HUB_OFFLINE", "--repo-type dataset"] {
        assert!(msg.contains(want), "{want} missing from: {msg}");
    }
    let e = hub.model("naver/splade-v3", Some("v1")).unwrap_err().to_string();
    assert!(e.contains("model `naver/splade-v3` (revision `v1`)") && e.contains("models--naver--splade-v3"), "{e}");
}

/// One layout: a folder holding `files` (empty; README as given) and what we resolve over the same list.
struct Case {
    dir: PathBuf,
    ours: splade_common::hub::DataFilesSpec,
    readme_configs: bool,
}

fn case(tmp: &Path, name: &str, files: &[&str], readme: Option<&str>) -> Case {
    let dir = tmp.join(name);
    for f in files {
        let p = dir.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"").unwrap();
    }
    if let Some(r) = readme {
        std::fs::write(dir.join("README.md"), r).unwrap();
    }
    let mut listed: Vec<String> = files.iter().map(|f| f.to_string()).collect();
    if readme.is_some() {
        listed.push("README.md".into());
    }
    listed.sort();
    let ours = resolve_data_files("o/n", &listed, readme).unwrap().expect("data files");
    Case { dir, ours, readme_configs: readme.is_some_and(|r| r.contains("configs:")) }
}

/// Every config of every case against `datasets`' own resolution (`load_dataset_builder` on the folder), with
/// datasets 5.2 and the seed's 4.4.2: one Python run per stack.
fn compare_with_datasets(tmp: &Path, cases: &[Case]) {
    let mut asks = Vec::new();
    let mut want = Vec::new();
    for c in cases {
        for config in c.ours.config_names() {
            asks.push(serde_json::json!([c.dir, if c.readme_configs { Some(config.clone()) } else { None }]));
            let mut splits = c.ours.config("o/n", Some(&config)).unwrap();
            splits.sort();
            want.push((c.dir.clone(), config, splits));
        }
    }
    let spec = tmp.join("data-files.json");
    std::fs::write(&spec, serde_json::to_string(&asks).unwrap()).unwrap();
    for seed_stack in [false, true] {
        let theirs: Vec<serde_json::Value> = serde_json::from_str(&hub_check(tmp, seed_stack, &["data-files", spec.to_str().unwrap()])).unwrap();
        for ((dir, config, ours), t) in want.iter().zip(&theirs) {
            let mut t: Vec<(String, Vec<String>)> = t["splits"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(s, fs)| (s.clone(), fs.as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect()))
                .collect();
            t.sort();
            assert_eq!(ours, &t, "{}, config {config}, seed stack {seed_stack}", dir.display());
        }
    }
}

#[test]
fn split_files_resolve_as_datasets_resolves_them() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let cases = [
        case(
            t,
            "sharded",
            &["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet", "data/test-00000-of-00001.parquet", "data/custom-00000-of-00001.parquet"],
            None,
        ),
        case(t, "names", &["train.jsonl", "dev.jsonl", "test.jsonl", "notes.txt.md"], Some("# readme\n")),
        case(t, "folders", &["train/a.parquet", "train/b.parquet", "validation/c.parquet", "other/d.parquet"], None),
        case(t, "nokeyword", &["x.jsonl", "docs/z.jsonl", ".hidden.jsonl", "__pycache__/w.jsonl", "y.jsonl"], None),
        case(t, "mixed", &["a/train-1.parquet", "a/train-2.parquet", "a/train.json", "a/my_test.json", "a/my_test.parquet"], None),
        case(t, "keywords", &["my_train.jsonl", "evaluation-1.jsonl", "x.valid.jsonl", "trainer.jsonl"], None),
        case(
            t,
            "readme",
            &["data/train-a.parquet", "data/train-b.parquet", "data/dev.parquet", "data/dev.jsonl", "extra/one.jsonl", "extra/two.jsonl", "sub/train.jsonl", "sub/test.jsonl"],
            Some(
                "---\nconfigs:\n- config_name: pairs\n  default: true\n  data_files:\n  - split: train\n    path: data/train-*.parquet\n  \
                 - split: validation\n    path: [data/dev.parquet]\n- config_name: extra\n  data_files: extra/*.jsonl\n- config_name: sub\n  \
                 data_dir: sub\n---\n",
            ),
        ),
    ];
    compare_with_datasets(t, &cases);
}

/// Every entry under `dir`: relative path, and for a symlink its target, for a file its bytes.
fn tree(dir: &Path) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                out.push((rel, format!("-> {}", std::fs::read_link(&p).unwrap().display())));
            } else if meta.is_dir() {
                walk(root, &p, out);
            } else if !rel.starts_with(".locks") && !rel.ends_with(".lock") {
                out.push((rel, String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn hub_downloads_write_the_cache_huggingface_hub_writes_from_the_same_server() {
    let tmp = tempfile::tempdir().unwrap();
    let files: Vec<(String, Vec<u8>)> = vec![
        ("README.md".into(), b"# plain\n".to_vec()),
        ("data/train-00000-of-00001.parquet".into(), parquet(tmp.path(), "t", &rows(0..4))),
        ("data/test-00000-of-00001.parquet".into(), parquet(tmp.path(), "s", &rows(4..6))),
    ];
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let hub_server = LoopbackHub::start(vec![HostedRepo::new(RepoKind::Dataset, "test-org/remote", commit, files.clone())]);

    // Ours, online against the loopback endpoint: a repo pinned to the commit, the split's files downloaded.
    let ours = tmp.path().join("ours");
    let hub = Hub::from_env().with_cache_dir(ours.clone()).with_offline(false).with_endpoint(&hub_server.url);
    let repo = hub.dataset("test-org/remote", None).unwrap();
    assert_eq!(repo.commit, commit);
    let train = repo.split_files(None, "train").unwrap();
    assert_eq!(train, [repo.snapshot_dir().join("data/train-00000-of-00001.parquet")]);
    repo.split_files(None, "test").unwrap();

    // Python's huggingface_hub, online against the same endpoint, into its own cache.
    let theirs = tmp.path().join("theirs");
    let out = Command::new(ref_py())
        .args(["-c", "import sys; from huggingface_hub import snapshot_download; print(snapshot_download(sys.argv[1], repo_type='dataset', cache_dir=sys.argv[2]))", "test-org/remote"])
        .arg(&theirs)
        .env("HF_ENDPOINT", &hub_server.url)
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_XET", "1")
        .env("HF_HOME", tmp.path().join("hf-home"))
        .output()
        .unwrap();
    assert!(out.status.success(), "snapshot_download failed:\n{}", String::from_utf8_lossy(&out.stderr));
    // huggingface_hub 1.x+ also writes `CACHEDIR.TAG` and a `trees/<commit>.json` listing, which older clients and
    // ours neither need nor read; blobs, snapshots and refs must be identical.
    let core = |d: &Path| -> Vec<(String, String)> {
        tree(d).into_iter().filter(|(p, _)| p.contains("/blobs/") || p.contains("/snapshots/") || p.contains("/refs/")).collect()
    };
    let (o, t) = (core(&ours), core(&theirs));
    assert_eq!(o.len(), 7, "{o:?}");
    assert!(o == t, "our cache {:?}\ndiffers from huggingface_hub's {:?}", o.iter().map(|e| &e.0).collect::<Vec<_>>(), t.iter().map(|e| &e.0).collect::<Vec<_>>());

    // Offline, ours reads that cache back without the server.
    drop(hub_server);
    let offline = Hub::from_env().with_cache_dir(theirs).with_offline(true).dataset("test-org/remote", None).unwrap();
    assert_eq!(offline.split_files(None, "train").unwrap().len(), 1);
}

#[test]
fn hub_gated_repo_without_a_token_says_to_set_hf_token() {
    let tmp = tempfile::tempdir().unwrap();
    let files = vec![("data/train.jsonl".to_string(), jsonl(&rows(0..2)))];
    let server = LoopbackHub::start(vec![HostedRepo::new(RepoKind::Dataset, "gated-org/data", "89abcdef0123456789abcdef0123456789abcdef", files)]);
    let hub = Hub::from_env().with_cache_dir(tmp.path().to_path_buf()).with_offline(false).with_endpoint(&server.url);
    std::env::remove_var("HF_TOKEN");
    let e = hub.clone().dataset("gated-org/data", None).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, HubError::Gated { status: 401, .. }), "{msg}");
    assert!(msg.contains("HF_TOKEN") && msg.contains(&format!("{}/datasets/gated-org/data", server.url)), "{msg}");
    // With the token (read from HF_TOKEN by from_env) the same repo downloads.
    std::env::set_var("HF_TOKEN", "good-token");
    let hub = Hub::from_env().with_cache_dir(tmp.path().to_path_buf()).with_offline(false).with_endpoint(&server.url);
    let repo = hub.dataset("gated-org/data", None).unwrap();
    assert_eq!(std::fs::read(&repo.split_files(None, "train").unwrap()[0]).unwrap(), jsonl(&rows(0..2)));
    let missing = hub.dataset("test-org/nothing", None).unwrap_err();
    assert!(matches!(missing, HubError::RepoNotFound { .. }), "{missing}");
}

/// Our rows of `files` (a CSV or TSV source) against `datasets.load_dataset("csv", data_files=files)`'s rows: every
/// row `datasets` yields with all four columns present is ours, in order; each row with a missing value there
/// (`None`: an empty field, `NA`, a short row) is a bad record here (skipped under `on_bad_record: skip`), as a JSON
/// `null` is. Returns our dataset.
fn assert_rows_equal_datasets_csv(tmp: &Path, source: &str, files: &[PathBuf]) -> splade_common::data::LoadedDataset {
    let args: Vec<&str> = std::iter::once("load-csv").chain(files.iter().map(|p| p.to_str().unwrap())).collect();
    let theirs: Vec<serde_json::Value> = serde_json::from_str(&hub_check(tmp, false, &args)).unwrap();
    let spec = DatasetSpec { on_bad_record: OnBadRecord::Skip, ..spec(source, None, None) };
    let ours = load_dataset_blocking("csv", &spec, &StoreOptions::default()).unwrap();
    let complete: Vec<&serde_json::Value> =
        theirs.iter().filter(|r| ["anchor", "positive", "negative", "label"].iter().all(|c| !r[c].is_null())).collect();
    assert!(complete.len() >= 3 && complete.len() < theirs.len(), "the fixture has complete and incomplete rows: {theirs:?}");
    assert_eq!(ours.bad_records, theirs.len() - complete.len(), "{source}: rows with a missing value, theirs: {theirs:?}");
    assert_eq!(ours.examples.len(), complete.len(), "{source}: ours {:?}\ntheirs {theirs:?}", ours.examples);
    for (o, t) in ours.examples.iter().zip(&complete) {
        assert_eq!(o.anchor, t["anchor"].as_str().unwrap(), "{source}");
        assert_eq!(o.positive, t["positive"].as_str().unwrap(), "{source}");
        assert_eq!(o.negatives, [t["negative"].as_str().unwrap()], "{source}");
        assert_eq!(o.label, Some(vec![t["label"].as_f64().unwrap() as f32]), "{source}");
    }
    ours
}

/// CSV and TSV data files (quoted commas and doubled quotes, a field spanning lines, CRLF ends, a byte-order
/// mark, a blank line, empty fields, pandas' `NA`, a short row) give the rows `datasets.load_dataset("csv")`
/// gives, as a local source, as a Hub dataset's data files, and again through the ranged reader a cluster
/// worker reads its slices with.
#[test]
fn csv_and_tsv_data_files_give_the_rows_datasets_load_dataset_csv_gives() {
    use splade_common::data::{RangedReader, RecordIndex};
    let tmp = tempfile::tempdir().unwrap();
    let csv = "\u{feff}anchor,positive,negative,label\r\n\
        \"Hva er \"\"NRK\"\"?\",\"Kringkaster, norsk\",Noe annet,0.5\r\n\
        Hvor ligger Bergen?,\"Bergen ligger\r\npå Vestlandet.\",Oslo er hovedstaden,-1.25\r\n\
        \r\n\
        Tom negativ,Et svar,,1\r\n\
        NA,Et svar,En annen,2\r\n\
        Kort rad,Bare to\r\n\
        Blåbær og æøå,Syltetøy,  med mellomrom  ,3e-2\r\n";
    let tsv = "anchor\tpositive\tnegative\tlabel\n\
        spørsmål én\tsvar med, komma\t\"fanget\ttab\"\t7\n\
        spørsmål to\tsvar to\tnull\t8\n\
        spørsmål tre\t\"sitat \"\"x\"\"\"\tannet\t9.5\n\
        spørsmål fire\tsvar fire\tannet fire\t10\n";
    let csv_path = tmp.path().join("pairs.csv");
    let tsv_path = tmp.path().join("pairs.tsv");
    std::fs::write(&csv_path, csv).unwrap();
    std::fs::write(&tsv_path, tsv).unwrap();
    let ours = assert_rows_equal_datasets_csv(tmp.path(), csv_path.to_str().unwrap(), &[csv_path.clone()]);
    assert_rows_equal_datasets_csv(tmp.path(), tsv_path.to_str().unwrap(), &[tsv_path.clone()]);

    // The same file as a Hub dataset's data file.
    let cache = tmp.path().join("hub");
    write_hub_repo(&cache, RepoKind::Dataset, "test-org/csv-mini", &[("data/train.csv".into(), csv.as_bytes().to_vec())]);
    offline_env(&cache);
    let from_hub = load_dataset_blocking("csv", &DatasetSpec { on_bad_record: OnBadRecord::Skip, ..spec("test-org/csv-mini", None, None) }, &StoreOptions::default()).unwrap();
    assert_eq!(from_hub.examples, ours.examples);

    // A worker's ranged reads parse the same records again from their byte ranges.
    let ids: Vec<usize> = (0..ours.examples.len()).collect();
    let index = RecordIndex::new("csv", &spec(csv_path.to_str().unwrap(), None, None), &ours, &ids);
    let mut reader = RangedReader::new([index], StoreOptions::default());
    let rows: Vec<usize> = ids.iter().rev().copied().collect();
    let again = splade_common::store::block_on(reader.read_rows("csv", &rows)).unwrap();
    assert_eq!(again, rows.iter().map(|&i| ours.examples[i].clone()).collect::<Vec<_>>());
}

/// A dataset with a loading script and no data files is read from its `refs/convert/parquet` branch, served by
/// the loopback Hub as a second revision of the repo: configs and splits as the conversion names them
/// (`<config>/<split>/*.parquet`), the rows of its Parquet files, the conversion's commit recorded as the pin,
/// and the downloaded files found again offline.
#[test]
fn script_dataset_reads_its_refs_convert_parquet_branch_from_a_loopback_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, validation, other) = (rows(0..5), rows(5..8), rows(8..10));
    let main_files = vec![
        ("README.md".into(), b"---\nlicense: cc0-1.0\n---\n# A script dataset\n".to_vec()),
        ("scripted.py".into(), b"import datasets\n# a loading script\n".to_vec()),
    ];
    let converted = vec![
        ("default/train/0000.parquet".into(), parquet(tmp.path(), "train", &train)),
        ("default/validation/0000.parquet".into(), parquet(tmp.path(), "validation", &validation)),
        ("other/train/0000.parquet".into(), parquet(tmp.path(), "other", &other)),
    ];
    let (main_commit, conv_commit) = ("1111111111111111111111111111111111111111", "2222222222222222222222222222222222222222");
    let server = LoopbackHub::start(vec![
        HostedRepo::new(RepoKind::Dataset, "test-org/scripted", main_commit, main_files),
        HostedRepo::new(RepoKind::Dataset, "test-org/scripted", conv_commit, converted).at_revision("refs/convert/parquet"),
    ]);
    let cache = tmp.path().join("cache");
    let hub = Hub::from_env().with_cache_dir(cache.clone()).with_offline(false).with_endpoint(&server.url);
    let repo = hub.dataset("test-org/scripted", None).unwrap();
    assert_eq!(repo.commit, main_commit);
    assert_eq!(repo.configs().unwrap(), ["default", "other"]);
    assert_eq!(repo.splits(None).unwrap(), ["train", "validation"]);
    let (from, files) = repo.resolved_split(Some("default"), "validation").unwrap();
    assert_eq!((from.revision.as_str(), from.commit.as_str()), ("refs/convert/parquet", conv_commit));
    assert_eq!(files, ["default/validation/0000.parquet"]);

    // Through a dataset block, online, then offline from what was downloaded.
    std::env::set_var("HF_ENDPOINT", &server.url);
    std::env::set_var("HF_HUB_CACHE", &cache);
    for (split, config, want) in [("validation", None, &validation), ("train", Some("other"), &other), ("train", None, &train)] {
        let got = load_dataset_blocking("s", &spec("test-org/scripted", config, Some(split)), &StoreOptions::default()).unwrap();
        let anchors: Vec<&str> = got.examples.iter().map(|e| e.anchor.as_str()).collect();
        let want: Vec<&str> = want.iter().map(|r| r["anchor"].as_str().unwrap()).collect();
        assert_eq!(anchors, want, "{config:?}/{split}");
        let pin = got.hub.unwrap();
        assert_eq!((pin.revision.as_str(), pin.commit.as_str()), ("refs/convert/parquet", conv_commit));
    }
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let offline = load_dataset_blocking("s", &spec("test-org/scripted", None, Some("validation")), &StoreOptions::default()).unwrap();
    assert_eq!(offline.examples.len(), validation.len());
    // A split the conversion lacks names the ones it has.
    std::env::remove_var("HF_HUB_OFFLINE");
    let e = load_dataset_blocking("s", &spec("test-org/scripted", None, Some("test")), &StoreOptions::default()).unwrap_err().to_string();
    assert!(e.contains("test") && e.contains("train, validation"), "{e}");
}
