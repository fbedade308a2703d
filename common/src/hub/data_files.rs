//! Which files of a dataset repo make up each (config, split), as `datasets` (4.x/5.x, `data_files.py` and
//! `load.py`) decides it for a repo without a loading script:
//! - the README's YAML `configs:` (`config_name`, `data_files` as a pattern, a list of patterns or a list of
//!   `{split, path}`, `data_dir`, `default: true`);
//! - else `datasets`' default patterns, first match wins: the sharded `data/{split}-NNNNN-of-NNNNN*.*`, then
//!   split keywords in folder names, then in file names (`train`/`training`, `validation`/`valid`/`dev`/`val`,
//!   `test`/`testing`/`eval`/`evaluation`, separated by `-._ 0-9`), else every file is `train`;
//! - files are matched with fsspec's glob semantics (`**` spans folders, `*` does not), skipping hidden files,
//!   `__special__` folders and `README.md`/`config.json`/`dataset_info(s).json`/`dataset_dict.json`; then only the
//!   files of the most common data format are kept (Parquet wins a draw).
//!
//! Tested against `datasets`' own resolver on the same file lists (`common/tests/hub.rs`).

use regex::Regex;

use super::HubError;

/// The (config, split) → files layout of a dataset repo at one commit.
#[derive(Debug, Clone, PartialEq)]
pub struct DataFilesSpec {
    configs: Vec<ConfigFiles>,
}

#[derive(Debug, Clone, PartialEq)]
struct ConfigFiles {
    name: String,
    default: bool,
    /// Split name → repo-relative files, in `datasets`' split order and file order.
    splits: Vec<(String, Vec<String>)>,
}

impl DataFilesSpec {
    /// Config names, in README order (`default` for a repo without `configs:`).
    pub fn config_names(&self) -> Vec<String> {
        self.configs.iter().map(|c| c.name.clone()).collect()
    }

    /// The name of the config `config` selects (`None`: the default one), if any.
    pub fn config_name(&self, config: Option<&str>) -> Option<String> {
        self.pick(config).map(|c| c.name.clone())
    }

    fn pick(&self, config: Option<&str>) -> Option<&ConfigFiles> {
        match config {
            Some(name) => self.configs.iter().find(|c| c.name == name),
            None => self
                .configs
                .iter()
                .find(|c| c.default)
                .or_else(|| self.configs.iter().find(|c| c.name == "default"))
                .or_else(|| (self.configs.len() == 1).then(|| &self.configs[0])),
        }
    }

    /// The splits of `config` (`None`: the default config) with their files.
    pub fn config(&self, repo_id: &str, config: Option<&str>) -> Result<Vec<(String, Vec<String>)>, HubError> {
        match self.pick(config) {
            Some(c) => Ok(c.splits.clone()),
            None => {
                let available = self.config_names().join(", ");
                Err(match config {
                    Some(name) => HubError::NoConfig { repo_id: repo_id.into(), config: name.into(), available },
                    None => HubError::ConfigNeeded { repo_id: repo_id.into(), available },
                })
            }
        }
    }
}

const SPLIT_KEYWORDS: [(&str, &[&str]); 3] = [
    ("train", &["train", "training"]),
    ("validation", &["validation", "valid", "dev", "val"]),
    ("test", &["test", "testing", "eval", "evaluation"]),
];
const SEP: &str = "-._ 0-9";
const FILES_TO_IGNORE: [&str; 6] =
    ["README.md", "config.json", "dataset_info.json", "dataset_infos.json", "dummy_data.zip", "dataset_dict.json"];

/// File extensions `datasets` has a builder for, and that builder (`packaged_modules._EXTENSION_TO_MODULE`,
/// the text and table formats; media folders are not training data here).
const EXTENSION_TO_MODULE: [(&str, &str); 14] = [
    (".csv", "csv"),
    (".tsv", "csv"),
    (".json", "json"),
    (".jsonl", "json"),
    (".ndjson", "json"),
    (".parquet", "parquet"),
    (".geoparquet", "parquet"),
    (".gpq", "parquet"),
    (".arrow", "arrow"),
    (".txt", "text"),
    (".tar", "webdataset"),
    (".xml", "xml"),
    (".hdf5", "hdf5"),
    (".h5", "hdf5"),
];

fn module_of(ext: &str) -> Option<&'static str> {
    EXTENSION_TO_MODULE.iter().find(|(e, _)| *e == ext).map(|(_, m)| *m)
}

/// fsspec's glob (2023.12+) as a regex over repo-relative paths.
fn glob_regex(pattern: &str) -> Regex {
    let mut re = String::from("^");
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '*' if chars.get(i + 1) == Some(&'*') => {
                let at_segment_start = i == 0 || chars[i - 1] == '/';
                if at_segment_start && chars.get(i + 2) == Some(&'/') {
                    re.push_str("(?:.*/)?");
                    i += 3;
                } else {
                    re.push_str(".*");
                    i += 2;
                }
                continue;
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '[' => {
                if let Some(end) = chars[i + 1..].iter().position(|&c| c == ']').map(|p| p + i + 1) {
                    let mut body: String = chars[i + 1..end].iter().collect();
                    if let Some(rest) = body.strip_prefix('!') {
                        body = format!("^{rest}");
                    }
                    re.push('[');
                    re.push_str(&body.replace('\\', "\\\\").replace('[', "\\["));
                    re.push(']');
                    i = end + 1;
                    continue;
                }
                re.push_str("\\[");
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
        i += 1;
    }
    re.push('$');
    Regex::new(&re).unwrap_or_else(|_| Regex::new("^$").expect("valid"))
}

fn hidden_parts(path: &str) -> usize {
    path.split('/').filter(|p| p.starts_with('.') && !p.chars().all(|c| c == '.')).count()
}

fn special_parent_parts(path: &str) -> usize {
    let parts: Vec<&str> = path.split('/').collect();
    parts[..parts.len().saturating_sub(1)].iter().filter(|p| p.starts_with("__")).count()
}

/// `datasets.data_files.resolve_pattern` over a file list (relative to `base`, a folder of the repo or "").
fn resolve_pattern(files: &[String], base: &str, pattern: &str, allowed: bool) -> Vec<String> {
    let full = if base.is_empty() { pattern.to_string() } else { format!("{}/{pattern}", base.trim_end_matches('/')) };
    let re = glob_regex(&full);
    let basename_of_pattern = full.rsplit('/').next().unwrap_or("");
    let mut out: Vec<String> = files
        .iter()
        .filter(|f| re.is_match(f))
        .filter(|f| {
            let name = f.rsplit('/').next().unwrap_or("");
            !(FILES_TO_IGNORE.contains(&name) && name != basename_of_pattern)
        })
        .filter(|f| special_parent_parts(f) == special_parent_parts(&full))
        .filter(|f| hidden_parts(f) == hidden_parts(&full))
        .filter(|f| !allowed || suffixes(f).any(|s| module_of(&s).is_some() || s == ".zip"))
        .cloned()
        .collect();
    out.sort();
    out
}

fn suffixes(path: &str) -> impl Iterator<Item = String> + '_ {
    let name = path.rsplit('/').next().unwrap_or("");
    name.split('.').skip(1).map(|s| format!(".{s}"))
}

/// `datasets.data_files._get_data_files_patterns` over a file list: split → patterns, or `None`.
fn default_patterns(files: &[String], base: &str) -> Option<Vec<(String, Vec<String>)>> {
    let sharded = "data/{split}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]*.*";
    let matched = resolve_pattern(files, base, &sharded.replace("{split}", "*"), false);
    if !matched.is_empty() {
        let shard = Regex::new(r"^(.+)-[0-9]{5}-of-[0-9]{5}").expect("valid");
        let mut splits: Vec<String> = matched
            .iter()
            .filter_map(|f| shard.captures(f.rsplit('/').next().unwrap_or("")).map(|c| c[1].to_string()))
            .collect();
        splits.sort();
        splits.dedup();
        let mut ordered: Vec<String> =
            SPLIT_KEYWORDS.iter().map(|(s, _)| s.to_string()).filter(|s| splits.contains(s)).collect();
        ordered.extend(splits.into_iter().filter(|s| !SPLIT_KEYWORDS.iter().any(|(d, _)| d == s)));
        return Some(ordered.into_iter().map(|s| { let p = sharded.replace("{split}", &s); (s, vec![p]) }).collect());
    }
    let in_dir = ["**/{k}/**", "**/{k}[{sep}]*/**", "**/*[{sep}]{k}/**", "**/*[{sep}]{k}[{sep}]*/**"];
    let in_name = ["**/{k}[{sep}]*", "**/*[{sep}]{k}[{sep}]*"];
    for bases in [&in_dir[..], &in_name[..]] {
        let dict: Vec<(String, Vec<String>)> = SPLIT_KEYWORDS
            .iter()
            .map(|(split, keywords)| {
                let patterns = keywords
                    .iter()
                    .flat_map(|k| bases.iter().map(move |b| b.replace("{k}", k).replace("{sep}", SEP)))
                    .collect();
                (split.to_string(), patterns)
            })
            .collect();
        let found: Vec<(String, Vec<String>)> = dict
            .into_iter()
            .filter(|(_, patterns)| patterns.iter().any(|p| !resolve_pattern(files, base, p, false).is_empty()))
            .collect();
        if !found.is_empty() {
            return Some(found);
        }
    }
    (!resolve_pattern(files, base, "**", false).is_empty()).then(|| vec![("train".to_string(), vec!["**".to_string()])])
}

/// `infer_module_for_data_files_list`: the builder of the most common extension (Parquet, then JSONL, JSON,
/// CSV win draws, then the larger extension string).
fn infer_module(files: &[String]) -> Option<&'static str> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for f in files {
        for s in suffixes(f) {
            let s = s.to_lowercase();
            match counts.iter_mut().find(|(e, _)| *e == s) {
                Some((_, n)) => *n += 1,
                None => counts.push((s, 1)),
            }
        }
    }
    let key = |(e, n): &(String, usize)| {
        (*n, e == ".parquet", e == ".arrow", e == ".jsonl", e == ".json", e == ".csv", e.clone())
    };
    counts.sort_by_key(|c| std::cmp::Reverse(key(c)));
    counts.iter().find_map(|(e, _)| module_of(e))
}

/// The data files of every (config, split) of a dataset repo with `files` (repo-relative) and `readme` (the
/// README.md text, if any); `Ok(None)` when `datasets` would find no data files (a script-only repo).
pub fn resolve_data_files(repo_id: &str, files: &[String], readme: Option<&str>) -> Result<Option<DataFilesSpec>, HubError> {
    let yaml_configs = match readme {
        Some(text) => readme_configs(repo_id, text)?,
        None => Vec::new(),
    };
    let mut configs = Vec::new();
    if yaml_configs.is_empty() {
        let Some(patterns) = default_patterns(files, "") else { return Ok(None) };
        match resolve_config(files, "", &patterns) {
            Some(splits) => configs.push(ConfigFiles { name: "default".into(), default: true, splits }),
            None => return Ok(None),
        }
    } else {
        for y in yaml_configs {
            let base = y.data_dir.clone().unwrap_or_default();
            let patterns = match y.data_files {
                Some(p) => p,
                None => default_patterns(files, &base).unwrap_or_default(),
            };
            let splits = resolve_config(files, &base, &patterns).unwrap_or_default();
            configs.push(ConfigFiles { name: y.name, default: y.default, splits });
        }
    }
    Ok(Some(DataFilesSpec { configs }))
}

/// Patterns → files per split (`DataFilesDict.from_patterns` with all data extensions, then the inferred
/// module's files only).
fn resolve_config(files: &[String], base: &str, patterns: &[(String, Vec<String>)]) -> Option<Vec<(String, Vec<String>)>> {
    let resolved: Vec<(String, Vec<String>)> = patterns
        .iter()
        .map(|(split, ps)| (split.clone(), ps.iter().flat_map(|p| resolve_pattern(files, base, p, true)).collect()))
        .collect();
    let module = resolved.first().and_then(|(_, fs)| infer_module(fs))?;
    Some(
        resolved
            .into_iter()
            .map(|(split, fs)| {
                let kept = fs.into_iter().filter(|f| suffixes(f).any(|s| module_of(&s) == Some(module) || s == ".zip")).collect();
                (split, kept)
            })
            .collect(),
    )
}

struct YamlConfig {
    name: String,
    default: bool,
    data_dir: Option<String>,
    data_files: Option<Vec<(String, Vec<String>)>>,
}

/// The README's YAML front matter `configs:` list.
fn readme_configs(repo_id: &str, text: &str) -> Result<Vec<YamlConfig>, HubError> {
    use yaml_rust2::Yaml;
    let bad = |problem: String| HubError::Readme { repo_id: repo_id.into(), problem };
    let text = text.trim_start_matches('\u{feff}');
    let Some(rest) = text.strip_prefix("---") else { return Ok(Vec::new()) };
    let Some(end) = rest.find("\n---") else { return Ok(Vec::new()) };
    let docs = yaml_rust2::YamlLoader::load_from_str(&rest[..end]).map_err(|e| bad(format!("front matter is not YAML ({e})")))?;
    let Some(doc) = docs.first() else { return Ok(Vec::new()) };
    let configs = match &doc["configs"] {
        Yaml::BadValue | Yaml::Null => return Ok(Vec::new()),
        Yaml::Array(a) => a,
        _ => return Err(bad("is not a list".into())),
    };
    let strings = |y: &Yaml| -> Option<Vec<String>> {
        match y {
            Yaml::String(s) => Some(vec![s.clone()]),
            Yaml::Array(a) => a.iter().map(|v| v.as_str().map(str::to_string)).collect(),
            _ => None,
        }
    };
    let mut out = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let name = c["config_name"].as_str().unwrap_or("default").to_string();
        let data_files = match &c["data_files"] {
            Yaml::BadValue | Yaml::Null => None,
            Yaml::String(s) => Some(vec![("train".to_string(), vec![s.clone()])]),
            Yaml::Array(items) if items.iter().all(|v| v.as_str().is_some()) => {
                Some(vec![("train".to_string(), items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())])
            }
            Yaml::Array(items) => {
                let mut splits = Vec::new();
                for item in items {
                    let split = item["split"].as_str().map(str::to_string);
                    let paths = strings(&item["path"]);
                    match (split, paths) {
                        (Some(s), Some(p)) => splits.push((s, p)),
                        _ => {
                            return Err(bad(format!(
                                "entry {} (`{name}`): each `data_files` item needs `split:` and `path:` (a pattern or list)",
                                i + 1
                            )))
                        }
                    }
                }
                Some(splits)
            }
            Yaml::Hash(h) => {
                let mut splits = Vec::new();
                for (k, v) in h {
                    match (k.as_str(), strings(v)) {
                        (Some(s), Some(p)) => splits.push((s.to_string(), p)),
                        _ => return Err(bad(format!("entry {} (`{name}`): `data_files` maps split names to patterns", i + 1))),
                    }
                }
                Some(splits)
            }
            _ => return Err(bad(format!("entry {} (`{name}`): `data_files` is not a pattern, list or mapping", i + 1))),
        };
        out.push(YamlConfig {
            name,
            default: c["default"].as_bool().unwrap_or(false),
            data_dir: c["data_dir"].as_str().map(str::to_string),
            data_files,
        });
    }
    Ok(out)
}

/// `{config}/{split}/*.parquet` of a `refs/convert/parquet` file list.
pub(super) fn converted_split(files: &[String], config: &str, split: &str) -> Vec<String> {
    let prefix = format!("{config}/{split}/");
    let mut out: Vec<String> =
        files.iter().filter(|f| f.starts_with(&prefix) && f.ends_with(".parquet") && !f[prefix.len()..].contains('/')).cloned().collect();
    out.sort();
    out
}

/// The configs of a `refs/convert/parquet` file list.
pub(super) fn converted_configs(files: &[String]) -> Vec<String> {
    let mut out: Vec<String> = files
        .iter()
        .filter(|f| f.ends_with(".parquet") && f.matches('/').count() == 2)
        .filter_map(|f| f.split('/').next().map(str::to_string))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The splits of `config` in a `refs/convert/parquet` file list (train, validation, test first).
pub(super) fn converted_splits(files: &[String], config: &str) -> Vec<String> {
    let prefix = format!("{config}/");
    let mut splits: Vec<String> = files
        .iter()
        .filter(|f| f.ends_with(".parquet") && f.starts_with(&prefix))
        .filter_map(|f| {
            let rest = &f[prefix.len()..];
            let (split, file) = rest.split_once('/')?;
            (!file.contains('/')).then(|| split.to_string())
        })
        .collect();
    splits.sort();
    splits.dedup();
    let mut ordered: Vec<String> = SPLIT_KEYWORDS.iter().map(|(s, _)| s.to_string()).filter(|s| splits.contains(s)).collect();
    ordered.extend(splits.into_iter().filter(|s| !SPLIT_KEYWORDS.iter().any(|(d, _)| d == s)));
    ordered
}

/// For tests: `datasets`' default split → files of a plain file list (the layout without a README).
pub fn default_split_files(files: &[String]) -> Vec<(String, Vec<String>)> {
    default_patterns(files, "").and_then(|p| resolve_config(files, "", &p)).unwrap_or_default()
}
