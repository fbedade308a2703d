//! The model card (`README.md`) of every folder training saves (`checkpoint-<n>/`, `final/`), in the layout of
//! sentence-transformers' sparse-encoder card (`sparse_encoder/model_card_template.md`): YAML metadata (language,
//! license, tags, base model, datasets), model details, a usage snippet, the evaluation table of the last
//! evaluation, the training datasets with their sizes and the loss with its parameters, the hyperparameters (the
//! non-default ones, then all), and the training logs (one row per evaluation). `model_card:` in the config fills
//! the name, languages, license, tags and extra dataset ids; the rest comes from the run.
//!
//! Written by hand rather than through a template engine: the layout is fixed and small, and every value is
//! ours (no user template), so a Jinja crate would add a dependency for string concatenation.

use std::fmt::Write as _;
use std::path::Path;

use splade_common::config::{Config, TrainingConfig};

use super::{other, TrainError, Trainer};

/// One evaluation of the run, for the training-logs table.
#[derive(Debug, Clone)]
pub struct EvalLine {
    pub step: u64,
    pub epoch: u64,
    pub train_loss: f64,
    /// Logged scalars (`eval_loss`, `eval_<task>_ndcg@10`, ...).
    pub scalars: Vec<(String, f64)>,
}

/// One training dataset as the card shows it.
#[derive(Debug, Clone)]
pub struct CardDataset {
    pub name: String,
    pub source: String,
    pub train_rows: usize,
    pub dev_rows: usize,
}

/// Everything the card shows.
#[derive(Debug, Clone)]
pub struct CardInfo {
    pub model_type: String,
    pub output_dimensionality: i64,
    pub max_seq_length: usize,
    pub datasets: Vec<CardDataset>,
    /// Per task, (metric, value) of the last evaluation, in logged order.
    pub evaluation: Vec<(String, Vec<(String, f64)>)>,
    pub logs: Vec<EvalLine>,
    pub global_step: u64,
}

/// A YAML double-quoted scalar (so `no` stays the language code, not a boolean).
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// Whether `s` reads as a Hugging Face Hub id (`owner/name`), not a local path or URL.
fn is_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && !s.contains("://")
        && !s.starts_with('.')
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        && !Path::new(s).exists()
}

/// The loss's sentence-transformers class names and parameters.
fn loss_description(cfg: &Config) -> (String, String, Vec<(String, String)>) {
    let l = &cfg.loss;
    let value = serde_json::to_value(&l.inner_loss).unwrap_or_default();
    let inner = match value.as_str().unwrap_or_default() {
        "sparse_margin_mse_loss" => "SparseMarginMSELoss",
        "sparse_distill_kldiv" | "sparse_distill_kl_div_loss" => "SparseDistillKLDivLoss",
        _ => "SparseMultipleNegativesRankingLoss",
    };
    let is_csr = serde_json::to_value(&l.kind).ok().and_then(|v| v.as_str().map(|s| s == "csr_loss")).unwrap_or(false);
    if is_csr {
        let params = vec![
            ("beta".into(), l.aux_loss_weight.to_string()),
            ("gamma".into(), l.gamma.to_string()),
            ("loss".into(), format!("{inner}(scale={})", l.scale)),
        ];
        return ("CSRLoss".into(), inner.into(), params);
    }
    let mut params = vec![("loss".into(), format!("{inner}(scale={}, similarity_fct='dot_score')", l.scale))];
    params.push(("document_regularizer_weight".into(), l.document_regularizer_weight.to_string()));
    params.push(("query_regularizer_weight".into(), l.query_regularizer_weight.to_string()));
    params.push(("regularizer_warmup_ratio".into(), l.regularizer_warmup_ratio.to_string()));
    ("SpladeLoss".into(), inner.into(), params)
}

/// `training:` as (key, value) rows, all and those that differ from the defaults.
fn hyperparameters(t: &TrainingConfig) -> (Vec<(String, String)>, Vec<(String, String)>) {
    let rows = |v: serde_json::Value| -> Vec<(String, String)> {
        match v {
            serde_json::Value::Object(m) => m
                .into_iter()
                .map(|(k, v)| (k, match v {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Null => "None".into(),
                    other => other.to_string(),
                }))
                .collect(),
            _ => Vec::new(),
        }
    };
    let all = rows(serde_json::to_value(t).unwrap_or_default());
    let defaults = rows(serde_json::to_value(TrainingConfig::default()).unwrap_or_default());
    let non_default = all.iter().filter(|(k, v)| defaults.iter().find(|(dk, _)| dk == k).map(|(_, dv)| dv) != Some(v)).cloned().collect();
    (all, non_default)
}

/// The card's text.
pub fn render(cfg: &Config, info: &CardInfo) -> String {
    let mc = &cfg.model_card;
    let base = cfg.model.base_model.trim();
    let base_is_hub = is_hub_id(base);
    let (loss, inner, loss_params) = loss_description(cfg);
    let total_rows: usize = info.datasets.iter().map(|d| d.train_rows).sum();
    let mut dataset_ids: Vec<String> = info.datasets.iter().filter(|d| is_hub_id(&d.source)).map(|d| d.source.clone()).collect();
    for d in &mc.datasets_used {
        if !dataset_ids.contains(d) {
            dataset_ids.push(d.clone());
        }
    }
    let mut s = String::new();
    // --- metadata
    s.push_str("---\n");
    if !mc.language.is_empty() {
        s.push_str("language:\n");
        for l in &mc.language {
            let _ = writeln!(s, "- {}", q(l));
        }
    }
    if let Some(l) = &mc.license {
        let _ = writeln!(s, "license: {}", q(l));
    }
    s.push_str("tags:\n");
    let mut tags: Vec<String> =
        ["sentence-transformers", "sparse-encoder", "sparse", "splade", "generated_from_trainer"].iter().map(|t| t.to_string()).collect();
    tags.push(format!("dataset_size:{total_rows}"));
    tags.push(format!("loss:{loss}"));
    tags.push(format!("loss:{inner}"));
    tags.extend(mc.tags.iter().cloned());
    for t in &tags {
        let _ = writeln!(s, "- {}", q(t));
    }
    if base_is_hub {
        let _ = writeln!(s, "base_model: {}", q(base));
    }
    if !dataset_ids.is_empty() {
        s.push_str("datasets:\n");
        for d in &dataset_ids {
            let _ = writeln!(s, "- {}", q(d));
        }
    }
    s.push_str("pipeline_tag: feature-extraction\nlibrary_name: sentence-transformers\n---\n\n");
    // --- title and description
    let title = mc.model_name.clone().unwrap_or_else(|| format!("{} model", info.model_type));
    let _ = writeln!(s, "# {title}\n");
    let base_text = if base_is_hub { format!("finetuned from [{base}](https://huggingface.co/{base})") } else { format!("finetuned from `{base}`") };
    let names: Vec<&str> = info.datasets.iter().map(|d| d.name.as_str()).collect();
    let _ = writeln!(
        s,
        "This is a [{}](https://www.sbert.net/docs/sparse_encoder/usage/usage.html) model {base_text} on the {} dataset{} trained with splade-rs (the sentence-transformers `SparseEncoderTrainer` recipe in libtorch). It maps sentences & paragraphs to a {}-dimensional sparse vector space and can be used for semantic search and sparse retrieval.",
        info.model_type,
        names.join(", "),
        if names.len() > 1 { "s" } else { "" },
        info.output_dimensionality
    );
    s.push_str("## Model Details\n\n### Model Description\n");
    let _ = writeln!(s, "- **Model Type:** {}", info.model_type);
    let _ = writeln!(s, "- **Base model:** {}", if base_is_hub { format!("[{base}](https://huggingface.co/{base})") } else { format!("`{base}`") });
    let _ = writeln!(s, "- **Maximum Sequence Length:** {} tokens", info.max_seq_length);
    let _ = writeln!(s, "- **Output Dimensionality:** {} dimensions", info.output_dimensionality);
    s.push_str("- **Similarity Function:** Dot Product\n");
    let _ = writeln!(s, "- **Training Dataset{}:**", if names.len() > 1 { "s" } else { "" });
    for d in &info.datasets {
        if is_hub_id(&d.source) {
            let _ = writeln!(s, "    - [{}](https://huggingface.co/datasets/{})", d.name, d.source);
        } else {
            let _ = writeln!(s, "    - {}", d.name);
        }
    }
    match mc.language.len() {
        0 => s.push_str("<!-- - **Language:** Unknown -->\n"),
        1 => {
            let _ = writeln!(s, "- **Language:** {}", mc.language[0]);
        }
        _ => {
            let _ = writeln!(s, "- **Languages:** {}", mc.language.join(", "));
        }
    }
    match &mc.license {
        Some(l) => {
            let _ = writeln!(s, "- **License:** {l}");
        }
        None => s.push_str("<!-- - **License:** Unknown -->\n"),
    }
    // --- usage
    s.push_str("\n## Usage\n\n### Direct Usage (Sentence Transformers)\n\nFirst install the Sentence Transformers library:\n\n```bash\npip install -U sentence-transformers\n```\nThen you can load this model and run inference.\n");
    let id = "path/to/this/model";
    let _ = write!(
        s,
        "```python\nfrom sentence_transformers import SparseEncoder\n\n# Download from the 🤗 Hub or load the folder\nmodel = SparseEncoder({})\n# Run inference\nqueries = [\"Hva er hovedstaden i Norge?\"]\ndocuments = [\"Oslo er hovedstaden i Norge.\", \"Bergen ligger på Vestlandet.\"]\nquery_embeddings = model.encode_query(queries)\ndocument_embeddings = model.encode_document(documents)\nprint(query_embeddings.shape, document_embeddings.shape)\n# [1, {dim}] [2, {dim}]\n\n# Get the similarity scores for the embeddings\nsimilarities = model.similarity(query_embeddings, document_embeddings)\nprint(similarities)\n```\n",
        q(id),
        dim = info.output_dimensionality
    );
    // --- evaluation
    if !info.evaluation.is_empty() {
        s.push_str("\n## Evaluation\n\n### Metrics\n");
        for (task, metrics) in &info.evaluation {
            let _ = writeln!(s, "\n#### Sparse Information Retrieval\n\n* Dataset: `{task}`\n* Evaluated with `splade eval` (the metrics of `SparseInformationRetrievalEvaluator`)\n");
            s.push_str("| Metric | Value |\n|:--|:--|\n");
            for (k, v) in metrics {
                let _ = writeln!(s, "| {} | {v:.4} |", k.replace("_at_", "@"));
            }
        }
    }
    // --- training details
    s.push_str("\n## Training Details\n\n");
    let _ = writeln!(s, "### Training Dataset{}\n", if info.datasets.len() > 1 { "s" } else { "" });
    for d in &info.datasets {
        let _ = writeln!(s, "#### {}\n", d.name);
        if is_hub_id(&d.source) {
            let _ = writeln!(s, "* Dataset: [{}](https://huggingface.co/datasets/{})", d.name, d.source);
        } else {
            let _ = writeln!(s, "* Dataset: {} (`{}`)", d.name, d.source);
        }
        let _ = writeln!(s, "* Size: {} training samples", group(d.train_rows));
        if d.dev_rows > 0 {
            let _ = writeln!(s, "* Evaluation size: {} samples held out (`split_ratio`)", group(d.dev_rows));
        }
        let _ = writeln!(s, "* Loss: `{loss}` with these parameters:\n  ```json\n  {{");
        let n = loss_params.len();
        for (i, (k, v)) in loss_params.iter().enumerate() {
            let _ = writeln!(s, "      {}: {}{}", q(k), q(v), if i + 1 < n { "," } else { "" });
        }
        s.push_str("  }\n  ```\n\n");
    }
    let (all, non_default) = hyperparameters(&cfg.training);
    s.push_str("### Training Hyperparameters\n#### Non-Default Hyperparameters\n\n");
    for (k, v) in &non_default {
        let _ = writeln!(s, "- `{k}`: {v}");
    }
    s.push_str("\n#### All Hyperparameters\n<details><summary>Click to expand</summary>\n\n");
    for (k, v) in &all {
        let _ = writeln!(s, "- `{k}`: {v}");
    }
    s.push_str("\n</details>\n");
    if !info.logs.is_empty() {
        let mut cols: Vec<String> = Vec::new();
        for l in &info.logs {
            for (k, _) in &l.scalars {
                let shown = k == "eval_loss" || k.ends_with("ndcg@10") || k.ends_with("_loss");
                if shown && !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
        s.push_str("\n### Training Logs\n| Epoch | Step | Training Loss |");
        for c in &cols {
            let _ = write!(s, " {c} |");
        }
        s.push_str("\n|:--|:--|:--|");
        s.push_str(&":--|".repeat(cols.len()));
        s.push('\n');
        for l in &info.logs {
            let _ = write!(s, "| {} | {} | {:.4} |", l.epoch, l.step, l.train_loss);
            for c in &cols {
                match l.scalars.iter().find(|(k, _)| k == c) {
                    Some((_, v)) => {
                        let _ = write!(s, " {v:.4} |");
                    }
                    None => s.push_str(" - |"),
                }
            }
            s.push('\n');
        }
    }
    let _ = writeln!(
        s,
        "\n### Framework Versions\n- splade-rs: {}\n- libtorch: 2.11 (through tch 0.24)\n- Saved step: {}\n- Folder layout: sentence-transformers 5.x (loads in 5.2 and 6.x)",
        env!("CARGO_PKG_VERSION"),
        info.global_step
    );
    s
}

/// `n` with thousands separators, as the template's `"{:,}".format`.
fn group(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Trainer {
    /// What the card of this trainer's current model shows.
    pub fn card_info(&self) -> CardInfo {
        let mut datasets: Vec<CardDataset> = Vec::new();
        for (name, spec) in self.cfg.datasets.enabled() {
            let (train_rows, dev_rows) = match self.facts.iter().find(|d| d.name == name) {
                Some(d) => (d.train_rows, d.eval.len()),
                // A trainer on a published plan holds no rows: its manifest has the training-split size.
                None => match &self.plan {
                    super::trainer::TrainPlan::Published(p) => {
                        let rows = p.manifest.datasets.iter().find(|d| d.dataset == name).map_or(0, |d| d.train_rows);
                        (rows as usize, 0)
                    }
                    super::trainer::TrainPlan::Whole(p) => {
                        let mut rows: Vec<usize> =
                            p.batches.iter().filter(|b| b.dataset == name).flat_map(|b| b.rows.iter().copied()).collect();
                        rows.sort_unstable();
                        rows.dedup();
                        (rows.len(), 0)
                    }
                },
            };
            datasets.push(CardDataset { name: name.to_string(), source: spec.source.clone(), train_rows, dev_rows });
        }
        let model_type = if self.model.csr().is_some() {
            "CSR Sparse Encoder"
        } else if self.cfg.model.use_router || self.model.query_static.is_some() {
            "Inference-free SPLADE Sparse Encoder"
        } else {
            "SPLADE Sparse Encoder"
        };
        CardInfo {
            model_type: model_type.into(),
            output_dimensionality: self.model.vocab_size(),
            max_seq_length: self.model.max_seq_length,
            datasets,
            evaluation: self.card_evaluation.clone(),
            logs: self.card_logs.clone(),
            global_step: self.state.global_step,
        }
    }

    /// Writes `README.md` into the saved folder `dir`.
    pub fn write_model_card(&self, dir: &Path) -> Result<(), TrainError> {
        let text = render(&self.cfg, &self.card_info());
        std::fs::write(dir.join("README.md"), text).map_err(|e| other(format!("{}: cannot write the model card: {e}", dir.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_quotes_language_codes_and_groups_sizes() {
        let cfg = Config::from_str(
            "model:\n  base_model: ltg/norbert3-base\nmodel_card:\n  language: [\"no\", da]\n  license: mit\n  model_name: Test SPLADE\ntraining:\n  learning_rate: 2.0e-5\n",
            "cfg.yaml",
        )
        .unwrap();
        let info = CardInfo {
            model_type: "SPLADE Sparse Encoder".into(),
            output_dimensionality: 30522,
            max_seq_length: 128,
            datasets: vec![CardDataset { name: "nli".into(), source: "Fremtind/all-nli-norwegian".into(), train_rows: 12345, dev_rows: 7 }],
            evaluation: vec![("norquad".into(), vec![("ndcg_at_10".into(), 0.5)])],
            logs: vec![EvalLine { step: 2, epoch: 0, train_loss: 1.5, scalars: vec![("eval_loss".into(), 1.25)] }],
            global_step: 2,
        };
        let text = render(&cfg, &info);
        assert!(text.contains("language:\n- \"no\"\n- \"da\"\n"), "{text}");
        assert!(text.contains("license: \"mit\""), "{text}");
        assert!(text.contains("base_model: \"ltg/norbert3-base\""), "{text}");
        assert!(text.contains("- \"Fremtind/all-nli-norwegian\""), "{text}");
        assert!(text.contains("* Size: 12,345 training samples"), "{text}");
        assert!(text.contains("| ndcg@10 | 0.5000 |"), "{text}");
        assert!(text.contains("| 0 | 2 | 1.5000 | 1.2500 |"), "{text}");
        assert!(text.contains("- `learning_rate`: 2e-5") || text.contains("- `learning_rate`: 0.00002"), "{text}");
        assert!(text.contains("# Test SPLADE"), "{text}");
    }
}
