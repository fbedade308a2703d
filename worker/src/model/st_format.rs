//! The sentence-transformers SparseEncoder folder: what 5.x and 6.x write, read back, and what we
//! write so that `SparseEncoder(path)` 6.2 loads it without missing or unexpected weights.
//!
//! Layout written: the 5.x one (mirroring `shared/reference/st5-splade-folder`), because the seed's
//! users pin sentence-transformers 5.2, which cannot import 6.x module paths nor take 6.x-only keys
//! (`modality_config`, the Router's `route_mappings`), while 6.2 loads the 5.x paths and keys:
//! `modules.json` with `sentence_transformers.sparse_encoder.models.*` types,
//! `config_sentence_transformers.json`, `sentence_bert_config.json` (`max_seq_length`), the
//! transformer (`config.json`, `model.safetensors`, tokenizer files with `model_max_length` = the max
//! length, and for remote-code architectures the base folder's `.py` files) in the root, and
//! `1_SpladePooling/config.json` (`word_embedding_dimension`). Separate query/document max lengths,
//! which sentence-transformers has no field for, go to `splade_encoder.json` (ignored by Python).
//!
//! Inference-free models use the Router layout both versions read (6.2's own `save` writes the same
//! shape with 6.x paths): a root
//! `modules.json` with one `Router` module at path "", `router_config.json` (module types, the
//! `query`/`document` routes, `default_route: "document"`), and one sub-folder per routed module:
//! `query_0_SparseStaticEmbedding/` (`config.json` with `frozen`, `model.safetensors` with
//! `weight`, tokenizer files), `document_0_MLMTransformer/` (the transformer files above) and
//! `document_1_SpladePooling/config.json`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::pooling::PoolingConfig;
use super::ModelError;

/// What a folder says about the encoder around the transformer weights.
#[derive(Debug, Clone)]
pub struct FolderSpec {
    /// Folder holding `config.json`, the weights and the tokenizer.
    pub transformer_dir: PathBuf,
    pub pooling: PoolingConfig,
    /// Max sequence length, special tokens included.
    pub max_seq_length: Option<usize>,
    pub query_max_length: Option<usize>,
    pub document_max_length: Option<usize>,
    pub query_prompt: String,
    pub document_prompt: String,
    /// True when the folder was a sentence-transformers folder (not a bare Hugging Face one).
    pub is_sentence_transformers: bool,
    /// `tokenizer_config.json`'s padding side ("right" unless it says otherwise).
    pub padding_side: String,
    /// `tokenizer_config.json`'s `model_max_length`, when present and sane.
    pub tokenizer_max_length: Option<usize>,
    /// Inference-free (Router) folders: the query route's `SparseStaticEmbedding` folder.
    pub query_static_dir: Option<PathBuf>,
    /// Dense folders and CSR: the `Pooling` module's mode (`None` without one).
    pub dense_pooling: Option<super::csr::DensePooling>,
    /// Dense folders and CSR: a `Normalize` module follows the pooling.
    pub dense_normalize: bool,
    /// CSR folders: the `SparseAutoEncoder` module's folder.
    pub sparse_auto_encoder_dir: Option<PathBuf>,
    /// `config_sentence_transformers.json`'s `max_active_dims` (CSR folders save the autoencoder's k).
    pub max_active_dims: Option<i64>,
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| ModelError::file(path, format!("invalid JSON: {e}")))
}

fn read_json_opt(path: &Path) -> Result<Option<Value>, ModelError> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

const TRANSFORMER_TYPES: &[&str] = &[
    "sentence_transformers.sparse_encoder.models.MLMTransformer",
    "sentence_transformers.sparse_encoder.models.MLMTransformer.MLMTransformer",
    "sentence_transformers.sparse_encoder.modules.mlm_transformer.MLMTransformer",
    "sentence_transformers.sparse_encoder.modules.MLMTransformer",
    "sentence_transformers.base.modules.transformer.Transformer",
    "sentence_transformers.base.modules.Transformer",
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Transformer.Transformer",
];

/// Reads `dir` as either a sentence-transformers SparseEncoder folder (5.x or 6.x) or a bare
/// Hugging Face masked-LM folder (pooled with SPLADE max/relu, as `SparseEncoder(dir)` does).
pub fn read_folder(dir: &Path) -> Result<FolderSpec, ModelError> {
    if !dir.is_dir() {
        return Err(ModelError::file(dir, "is not a directory; pass a model folder (config.json, model.safetensors, tokenizer.json)"));
    }
    let mut spec = FolderSpec {
        transformer_dir: dir.to_path_buf(),
        pooling: PoolingConfig::default(),
        max_seq_length: None,
        query_max_length: None,
        document_max_length: None,
        query_prompt: String::new(),
        document_prompt: String::new(),
        is_sentence_transformers: false,
        padding_side: "right".into(),
        tokenizer_max_length: None,
        query_static_dir: None,
        dense_pooling: None,
        dense_normalize: false,
        sparse_auto_encoder_dir: None,
        max_active_dims: None,
    };
    let modules_path = dir.join("modules.json");
    if let Some(modules) = read_json_opt(&modules_path)? {
        spec.is_sentence_transformers = true;
        let list = modules
            .as_array()
            .ok_or_else(|| ModelError::file(&modules_path, "expected a JSON list of modules"))?;
        for m in list {
            let ty = m["type"].as_str().unwrap_or_default();
            let sub = dir.join(m["path"].as_str().unwrap_or_default());
            if TRANSFORMER_TYPES.contains(&ty) {
                spec.transformer_dir = sub.clone();
                if let Some(sb) = read_json_opt(&sub.join("sentence_bert_config.json"))? {
                    spec.max_seq_length = sb["max_seq_length"].as_u64().map(|v| v as usize);
                    if let Some(task) = sb["transformer_task"].as_str() {
                        // feature-extraction: a dense base (6.x writes it for `Transformer`), read for CSR.
                        if task != "fill-mask" && task != "feature-extraction" {
                            return Err(ModelError::file(
                                &sub.join("sentence_bert_config.json"),
                                format!("transformer_task '{task}' is not a SPLADE encoder (expected \"fill-mask\")"),
                            ));
                        }
                    }
                }
            } else if ty.ends_with("SpladePooling") {
                let p = sub.join("config.json");
                let v = read_json(&p)?;
                spec.pooling = serde_json::from_value(v).map_err(|e| ModelError::file(&p, format!("bad pooling config: {e}")))?;
            } else if ty.ends_with("SparseAutoEncoder") {
                spec.sparse_auto_encoder_dir = Some(sub.clone());
            } else if ty.ends_with(".Pooling") || ty.ends_with(".Normalize") || ty.ends_with(".Dense") {
                if ty.ends_with(".Pooling") {
                    let p = sub.join("config.json");
                    // An unsupported mode only matters to CSR, which then reports the missing pooling.
                    match super::csr::DensePooling::from_config(&read_json(&p)?, &p) {
                        Ok(mode) => spec.dense_pooling = Some(mode),
                        Err(e) => tracing::warn!("{e}"),
                    }
                } else if ty.ends_with(".Normalize") {
                    spec.dense_normalize = true;
                }
                // A dense sentence-transformers model (e.g. all-MiniLM): SPLADE starts from its
                // transformer and puts an MLM head on top; the dense-only modules do not apply.
                tracing::info!(module = ty, "ignoring dense-embedding module of {}", modules_path.display());
                spec.is_sentence_transformers = false;
            } else if ty.ends_with(".Router") || ty.ends_with(".Asym") {
                if list.len() != 1 {
                    return Err(ModelError::file(
                        &modules_path,
                        "a Router followed or preceded by other modules is not supported; an inference-free SPLADE folder \
                         has exactly one module, the Router",
                    ));
                }
                read_router(&sub, &mut spec)?;
            } else {
                return Err(ModelError::file(
                    &modules_path,
                    format!("module type '{ty}' is not supported; a SPLADE folder has an MLMTransformer and a SpladePooling"),
                ));
            }
        }
        if spec.sparse_auto_encoder_dir.is_some() {
            spec.is_sentence_transformers = true;
        }
        if let Some(cfg) = read_json_opt(&dir.join("config_sentence_transformers.json"))? {
            spec.max_active_dims = cfg["max_active_dims"].as_i64();
            if let Some(p) = cfg["prompts"]["query"].as_str() {
                spec.query_prompt = p.to_string();
            }
            if let Some(p) = cfg["prompts"]["document"].as_str() {
                spec.document_prompt = p.to_string();
            }
        }
    }
    if let Some(tc) = read_json_opt(&spec.transformer_dir.join("tokenizer_config.json"))? {
        if let Some(side) = tc["padding_side"].as_str() {
            spec.padding_side = side.to_string();
        }
        // transformers writes a huge sentinel (1e30) when the length is unknown.
        spec.tokenizer_max_length = tc["model_max_length"].as_f64().filter(|&v| v > 0.0 && v < 1e9).map(|v| v as usize);
    }
    if let Some(extra) = read_json_opt(&dir.join(EXTRA_FILE))? {
        spec.query_max_length = extra["query_max_length"].as_u64().map(|v| v as usize);
        spec.document_max_length = extra["document_max_length"].as_u64().map(|v| v as usize);
    }
    Ok(spec)
}

/// The route ids of the Router layout, as sentence-transformers names them (`{route}_{idx}_{Class}`).
pub const QUERY_STATIC_ID: &str = "query_0_SparseStaticEmbedding";
pub const DOCUMENT_MLM_ID: &str = "document_0_MLMTransformer";
pub const DOCUMENT_POOLING_ID: &str = "document_1_SpladePooling";

// 5.x module paths as 5.2 writes them: 5.2 imports only these, 6.2 maps them onto its own modules.
// `modules.json` names the package's re-export, the Router's `types` the defining module
// (`{type(m).__module__}.{type(m).__name__}`).
const ROUTER_TYPE: &str = "sentence_transformers.models.Router";
const MLM_TYPE: &str = "sentence_transformers.sparse_encoder.models.MLMTransformer";
const POOLING_TYPE: &str = "sentence_transformers.sparse_encoder.models.SpladePooling";
const ROUTED_STATIC_TYPE: &str = "sentence_transformers.sparse_encoder.models.SparseStaticEmbedding.SparseStaticEmbedding";
const ROUTED_MLM_TYPE: &str = "sentence_transformers.sparse_encoder.models.MLMTransformer.MLMTransformer";
const ROUTED_POOLING_TYPE: &str = "sentence_transformers.sparse_encoder.models.SpladePooling.SpladePooling";

/// Reads a Router module at `rdir` (its `router_config.json`, or the legacy `config.json`) into
/// `spec`: the query route must be one `SparseStaticEmbedding`, the document route a transformer
/// then `SpladePooling` — the inference-free SPLADE shape.
fn read_router(rdir: &Path, spec: &mut FolderSpec) -> Result<(), ModelError> {
    let mut cfg_path = rdir.join("router_config.json");
    if !cfg_path.exists() {
        cfg_path = rdir.join("config.json");
    }
    let cfg = read_json(&cfg_path)?;
    let bad = |m: String| ModelError::file(&cfg_path, m);
    let types = cfg["types"].as_object().ok_or_else(|| bad("no `types` object; not a sentence-transformers Router config".into()))?;
    let route = |name: &str| -> Result<Vec<(String, String)>, ModelError> {
        let ids = cfg["structure"][name].as_array().ok_or_else(|| {
            bad(format!("no `structure.{name}` route; an inference-free SPLADE Router has a `query` and a `document` route"))
        })?;
        ids.iter()
            .map(|id| {
                let id = id.as_str().ok_or_else(|| bad(format!("`structure.{name}` holds a non-string module id")))?;
                if id.contains("..") || id.starts_with('/') {
                    return Err(bad(format!("module id '{id}' escapes the model folder")));
                }
                let ty = types.get(id).and_then(|t| t.as_str()).ok_or_else(|| bad(format!("module '{id}' has no entry in `types`")))?;
                Ok((id.to_string(), ty.to_string()))
            })
            .collect()
    };
    let query = route("query")?;
    let document = route("document")?;
    match query.as_slice() {
        [(id, ty)] if ty.ends_with("SparseStaticEmbedding") => spec.query_static_dir = Some(rdir.join(id)),
        _ => {
            return Err(bad(format!(
                "query route {:?} is not supported; inference-free SPLADE has exactly one SparseStaticEmbedding on the query route",
                query.iter().map(|q| &q.1).collect::<Vec<_>>()
            )))
        }
    }
    match document.as_slice() {
        [(tid, tty), (pid, pty)] if TRANSFORMER_TYPES.contains(&tty.as_str()) && pty.ends_with("SpladePooling") => {
            let sub = rdir.join(tid);
            if let Some(sb) = read_json_opt(&sub.join("sentence_bert_config.json"))? {
                spec.max_seq_length = sb["max_seq_length"].as_u64().map(|v| v as usize);
            }
            spec.transformer_dir = sub;
            let p = rdir.join(pid).join("config.json");
            let v = read_json(&p)?;
            spec.pooling = serde_json::from_value(v).map_err(|e| ModelError::file(&p, format!("bad pooling config: {e}")))?;
        }
        _ => {
            return Err(bad(format!(
                "document route {:?} is not supported; inference-free SPLADE has an MLMTransformer then a SpladePooling on the document route",
                document.iter().map(|d| &d.1).collect::<Vec<_>>()
            )))
        }
    }
    Ok(())
}

/// Side file for settings sentence-transformers has no place for.
pub const EXTRA_FILE: &str = "splade_encoder.json";

/// Tokenizer files copied verbatim from the source folder when present.
const TOKENIZER_FILES: &[&str] = &["tokenizer.json", "special_tokens_map.json", "vocab.txt"];

/// Writes everything but `config.json` and `model.safetensors` (the caller writes those) for a
/// folder (the 5.x layout both 5.2 and 6.2 load) at `out`, taking tokenizer files from `tokenizer_src`.
pub fn write_folder_metadata(out: &Path, tokenizer_src: &Path, spec: &FolderSpec, max_seq_length: usize) -> Result<(), ModelError> {
    write_json(
        out,
        "modules.json",
        &json!([
            {"idx": 0, "name": "0", "path": "", "type": MLM_TYPE},
            {"idx": 1, "name": "1", "path": "1_SpladePooling", "type": POOLING_TYPE}
        ]),
    )?;
    write_root_files(out, spec)?;
    write_transformer_files(out, tokenizer_src, spec, max_seq_length)?;
    write_pooling(&out.join("1_SpladePooling"), spec)
}

// CSR modules, 5.x paths (6.2 maps them onto its own modules).
const DENSE_TRANSFORMER_TYPE: &str = "sentence_transformers.models.Transformer";
const DENSE_POOLING_TYPE: &str = "sentence_transformers.models.Pooling";
const NORMALIZE_TYPE: &str = "sentence_transformers.models.Normalize";
const SAE_TYPE: &str = "sentence_transformers.sparse_encoder.models.SparseAutoEncoder";

/// Writes everything but the transformer's `config.json` / `model.safetensors` and the
/// autoencoder's weights of a CSR folder: `modules.json` (Transformer, Pooling, [Normalize,]
/// SparseAutoEncoder), root files (with `max_active_dims` = k, as sentence-transformers saves it),
/// the transformer's metadata, `1_Pooling/config.json`, and the autoencoder's `config.json`.
/// Returns the autoencoder's folder.
pub fn write_csr_metadata(
    out: &Path,
    spec: &FolderSpec,
    max_seq_length: usize,
    pooling: &Value,
    normalize: bool,
    sae_config: &Value,
    k: i64,
) -> Result<PathBuf, ModelError> {
    let mut modules = vec![
        json!({"idx": 0, "name": "0", "path": "", "type": DENSE_TRANSFORMER_TYPE}),
        json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": DENSE_POOLING_TYPE}),
    ];
    if normalize {
        modules.push(json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": NORMALIZE_TYPE}));
    }
    let idx = modules.len();
    let sae_path = format!("{idx}_SparseAutoEncoder");
    modules.push(json!({"idx": idx, "name": idx.to_string(), "path": sae_path, "type": SAE_TYPE}));
    write_json(out, "modules.json", &Value::Array(modules))?;
    write_root_files(out, spec)?;
    let cp = out.join("config_sentence_transformers.json");
    let mut cfg = read_json(&cp)?;
    cfg["max_active_dims"] = json!(k);
    write_json(out, "config_sentence_transformers.json", &cfg)?;
    write_transformer_files(out, &spec.transformer_dir, spec, max_seq_length)?;
    write_json(&out.join("1_Pooling"), "config.json", pooling)?;
    if normalize {
        write_json(&out.join("2_Normalize"), "config.json", &json!({}))?;
    }
    let sae_dir = out.join(sae_path);
    write_json(&sae_dir, "config.json", sae_config)?;
    Ok(sae_dir)
}

/// Writes everything but the two weight files and the transformer's `config.json` of a Router
/// (inference-free) folder at `out`: root files, `router_config.json`, the static embedding's
/// config and tokenizer (with `model_max_length` = `query_max_length`, where sentence-transformers
/// truncates queries), the transformer's metadata and the pooling config.
pub fn write_router_metadata(
    out: &Path,
    spec: &FolderSpec,
    max_seq_length: usize,
    query_tokenizer_src: &Path,
    query_max_length: usize,
    frozen: bool,
) -> Result<(), ModelError> {
    write_json(out, "modules.json", &json!([{"idx": 0, "name": "0", "path": "", "type": ROUTER_TYPE}]))?;
    write_root_files(out, spec)?;
    // Written by hand: key order matters to sentence-transformers (the first route gives the
    // embedding dimension) and serde_json's map would sort the keys.
    let router = format!(
        r#"{{
    "types": {{
        "{QUERY_STATIC_ID}": "{ROUTED_STATIC_TYPE}",
        "{DOCUMENT_MLM_ID}": "{ROUTED_MLM_TYPE}",
        "{DOCUMENT_POOLING_ID}": "{ROUTED_POOLING_TYPE}"
    }},
    "structure": {{
        "query": [
            "{QUERY_STATIC_ID}"
        ],
        "document": [
            "{DOCUMENT_MLM_ID}",
            "{DOCUMENT_POOLING_ID}"
        ]
    }},
    "parameters": {{
        "default_route": "document",
        "allow_empty_key": true
    }}
}}"#
    );
    let rp = out.join("router_config.json");
    std::fs::write(&rp, router).map_err(|e| ModelError::file(&rp, format!("cannot write: {e}")))?;
    let qdir = out.join(QUERY_STATIC_ID);
    write_json(&qdir, "config.json", &json!({"frozen": frozen}))?;
    write_tokenizer_files(&qdir, query_tokenizer_src, spec, query_max_length)?;
    write_transformer_files(&out.join(DOCUMENT_MLM_ID), &spec.transformer_dir, spec, max_seq_length)?;
    write_pooling(&out.join(DOCUMENT_POOLING_ID), spec)
}

fn write_json(dir: &Path, name: &str, v: &Value) -> Result<(), ModelError> {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ModelError::file(parent, e.to_string()))?;
    }
    let text = serde_json::to_string_pretty(v).expect("JSON values serialise");
    std::fs::write(&p, text).map_err(|e| ModelError::file(&p, format!("cannot write: {e}")))
}

/// `config_sentence_transformers.json` and the side file with per-side max lengths.
fn write_root_files(out: &Path, spec: &FolderSpec) -> Result<(), ModelError> {
    let write = |name: &str, v: &Value| write_json(out, name, v);
    write(
        "config_sentence_transformers.json",
        &json!({
            "__version__": {"sentence_transformers": "5.2.0", "splade_rs": env!("CARGO_PKG_VERSION")},
            "model_type": "SparseEncoder",
            "prompts": {"query": spec.query_prompt, "document": spec.document_prompt},
            "default_prompt_name": null,
            "similarity_fn_name": "dot"
        }),
    )?;
    if spec.query_max_length.is_some() || spec.document_max_length.is_some() {
        write(EXTRA_FILE, &json!({"query_max_length": spec.query_max_length, "document_max_length": spec.document_max_length}))?;
    }
    Ok(())
}

/// The MLM transformer's `sentence_bert_config.json` (5.x keys) and tokenizer files in `dir`.
fn write_transformer_files(dir: &Path, tokenizer_src: &Path, spec: &FolderSpec, max_seq_length: usize) -> Result<(), ModelError> {
    write_json(dir, "sentence_bert_config.json", &json!({"max_seq_length": max_seq_length, "do_lower_case": false}))?;
    write_tokenizer_files(dir, tokenizer_src, spec, max_seq_length)
}

fn write_pooling(dir: &Path, spec: &FolderSpec) -> Result<(), ModelError> {
    write_json(
        dir,
        "config.json",
        &json!({
            "pooling_strategy": spec.pooling.pooling_strategy,
            "activation_function": spec.pooling.activation_function,
            "word_embedding_dimension": spec.pooling.embedding_dimension
        }),
    )
}

/// Tokenizer files copied from `tokenizer_src` and a `tokenizer_config.json` whose
/// `model_max_length` is `max_length`.
fn write_tokenizer_files(out: &Path, tokenizer_src: &Path, spec: &FolderSpec, max_length: usize) -> Result<(), ModelError> {
    std::fs::create_dir_all(out).map_err(|e| ModelError::file(out, e.to_string()))?;
    for name in TOKENIZER_FILES {
        let src = tokenizer_src.join(name);
        if src.exists() {
            std::fs::copy(&src, out.join(name)).map_err(|e| ModelError::file(&src, format!("cannot copy: {e}")))?;
        }
    }
    let mut tc = read_json_opt(&tokenizer_src.join("tokenizer_config.json"))?.unwrap_or_else(|| {
        json!({"tokenizer_class": "BertTokenizer", "do_lower_case": true, "cls_token": "[CLS]", "sep_token": "[SEP]",
               "pad_token": "[PAD]", "mask_token": "[MASK]", "unk_token": "[UNK]"})
    });
    tc["model_max_length"] = json!(max_length);
    tc["padding_side"] = json!(spec.padding_side);
    write_json(out, "tokenizer_config.json", &tc)
}
