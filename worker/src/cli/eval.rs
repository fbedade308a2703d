//! `splade eval`: MTEB-format retrieval results for one or more tasks.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde_json::{json, Map};
use splade_common::eval::{
    bm25_run, delta_table, evaluate_ranked, fuse, most_active, read_baseline, stemmer_algorithm, summary_table, Bm25Flavor,
    Bm25Params, Fusion, LocalDir, Run, Task,
};

use super::encode::{top_tokens, ModelArgs, WindowArgs};
use crate::evaluate::evaluate_model_windowed;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub windows: WindowArgs,
    /// Task directories (BEIR layout or MTEB Parquet layout), or MTEB retrieval task names
    /// (`NorQuadRetrieval`, the seed's `NorQuAD`), read from their Hub datasets through the HF cache.
    #[arg(long = "task", required = true)]
    pub tasks: Vec<PathBuf>,
    /// Languages the results carry (ISO 639-3 + script, e.g. nob-Latn; repeatable). Default: the MTEB task's
    /// languages when the task name is an MTEB task, else `und`.
    #[arg(long = "language")]
    pub languages: Vec<String>,
    /// Split to evaluate; defaults to the only split present.
    #[arg(long)]
    pub split: Option<String>,
    /// Write `<task_name>.json` (MTEB TaskResult) here.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// An earlier result (MTEB v2 or the old flat form) to print deltas against.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Print the active-dims distribution, most frequent tokens and FLOPS.
    #[arg(long)]
    pub analyze_sparsity: bool,
    /// Show N queries and N documents as their top tokens.
    #[arg(long, default_value_t = 0)]
    pub decode: usize,
    /// Also evaluate BM25 on the same task.
    #[arg(long)]
    pub bm25: bool,
    /// Fuse the SPLADE run with BM25 (`bm25`) by reciprocal rank fusion.
    #[arg(long)]
    pub hybrid: Option<String>,
    /// Fuse with an external TREC run file (e.g. a dense model's).
    #[arg(long)]
    pub fuse: Option<PathBuf>,
    /// Fusion method: rrf (default, k=60) or minmax.
    #[arg(long, default_value = "rrf")]
    pub fusion: String,
    /// RRF constant.
    #[arg(long, default_value_t = 60.0)]
    pub rrf_k: f64,
    /// Snowball stemmer for BM25 and hybrid runs (e.g. norwegian, as PyStemmer stems); none by default.
    #[arg(long = "bm25-stemmer", alias = "stemmer", value_name = "LANGUAGE")]
    pub bm25_stemmer: Option<String>,
    /// BM25 tokenizer and defaults: bm25s (the default: as the bm25s package, words of two or more
    /// characters, k1 1.5, b 0.75) or anserini (UAX #29 words, k1 0.9, b 0.4).
    #[arg(long, value_name = "FLAVOR")]
    pub bm25_flavor: Option<Bm25Flavor>,
    /// Write the SPLADE run as a TREC file here.
    #[arg(long)]
    pub save_run: Option<PathBuf>,
}

fn task_name(dir: &std::path::Path) -> String {
    dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "task".into())
}

/// Runs `splade eval`.
pub fn run_eval(a: EvalArgs) -> anyhow::Result<()> {
    let fusion = match a.fusion.as_str() {
        "rrf" => Fusion::Rrf { k: a.rrf_k },
        "minmax" => Fusion::MinMax,
        other => anyhow::bail!("--fusion '{other}': expected rrf or minmax"),
    };
    if let Some(h) = &a.hybrid {
        anyhow::ensure!(h == "bm25", "--hybrid '{h}': only `bm25` is built in; use --fuse RUN.trec for other runs");
    }
    let need_bm25 = a.bm25 || a.hybrid.is_some();
    // Checked before the model loads, so a misspelt language fails at once rather than after encoding.
    if let Some(s) = &a.bm25_stemmer {
        stemmer_algorithm(s).with_context(|| format!("--bm25-stemmer '{s}'"))?;
    }
    anyhow::ensure!(
        need_bm25 || (a.bm25_stemmer.is_none() && a.bm25_flavor.is_none()),
        "--bm25-stemmer and --bm25-flavor configure BM25, which runs only with --bm25 or --hybrid bm25; add one of those"
    );
    let bm25_params =
        Bm25Params { flavor: a.bm25_flavor.unwrap_or_default(), stemmer: a.bm25_stemmer.clone(), ..Bm25Params::default() };
    let model = a.model.load()?;
    let windows = a.windows.checked(&model)?;
    let baseline = a.baseline.as_ref().map(|p| read_baseline(p)).transpose()?;
    // Read before encoding so a malformed run file fails in a second, not after the corpus is encoded.
    let external = a.fuse.as_ref().map(|p| Run::load_trec(p).map(|r| (p.display().to_string(), r))).transpose()?;
    let mut rows = Vec::new();
    for dir in &a.tasks {
        let t0 = Instant::now();
        let (name, task) = match splade_common::config::mteb::resolve_task(&dir.to_string_lossy()) {
            Ok(r) if !dir.exists() => {
                if r.from_short_name {
                    eprintln!("{}: the seed's short name for MTEB's {}", dir.display(), r.task.name);
                }
                let hub = splade_common::hub::Hub::from_env();
                let task = splade_common::eval::mteb_hub_task(&hub, &r.task)
                    .with_context(|| format!("--task {}", dir.display()))?;
                (r.task.name.to_string(), task)
            }
            _ => {
                let name = task_name(dir);
                let task = Task::load(&LocalDir::new(dir), a.split.as_deref(), Some(&name))?;
                (name, task)
            }
        };
        for w in &task.warnings {
            tracing::warn!(task = name, "{w}");
        }
        let total = (task.corpus.len() + task.queries.len()) as u64;
        let progress = std::sync::Arc::new(splade_common::cli::Progress::new(&format!("eval {name}"), total, "texts"));
        model.set_progress(Some(progress.clone()));
        let (scores, enc) = evaluate_model_windowed(&model, &task, windows.as_ref(), a.model.batch_size)?;
        model.set_progress(None);
        progress.finish();
        let elapsed = t0.elapsed().as_secs_f64();
        eprintln!(
            "{name}: encoded {} documents in {:.2}s, {} queries in {:.2}s; index {:.3}s, search {:.3}s",
            task.corpus.len(),
            enc.encode_docs_seconds,
            task.queries.len(),
            enc.encode_queries_seconds,
            scores.index_seconds,
            scores.search_seconds
        );
        let mut extra = Map::new();
        extra.insert("model".into(), json!(a.model.model));
        if let (Some(spec), Some(ws)) = (&windows, &enc.windows) {
            eprintln!(
                "{name}: windows {spec}: {} windows for {} documents ({:.2} per document, at most {}; {} tokens past MAX dropped)",
                ws.windows,
                ws.documents,
                ws.windows_per_doc(),
                ws.max_windows_per_doc,
                ws.tokens_dropped
            );
            extra.insert(
                "document_windows".into(),
                json!({
                    "size": spec.size, "stride": spec.stride, "max_windows": spec.max_windows,
                    "documents": ws.documents, "windows": ws.windows,
                    "windows_per_document": ws.windows_per_doc(), "max_windows_per_document": ws.max_windows_per_doc,
                    "tokens_dropped": ws.tokens_dropped, "encode_documents_seconds": enc.encode_docs_seconds,
                }),
            );
        }
        rows.push((format!("{name} (splade)"), scores.metrics.clone()));
        if let Some(p) = &a.save_run {
            scores.run.save_trec(p, "splade")?;
        }
        let languages = splade_common::eval::task_languages(&name, &a.languages);
        let result = scores.to_task_result(languages.clone(), "local", elapsed, extra.clone());
        if let Some(out) = &a.output {
            let p = result.write_to_dir(out)?;
            eprintln!("wrote {}", p.display());
        }
        let bm25 = if need_bm25 {
            Some(bm25_run(&task, &bm25_params, 1000)?)
        } else {
            None
        };
        if let Some(run) = &bm25 {
            if a.bm25 {
                rows.push((format!("{name} (bm25)"), evaluate_ranked(&task, run, &Default::default()).metrics));
            }
        }
        let mut to_fuse: Vec<(String, Run)> = Vec::new();
        if a.hybrid.is_some() {
            to_fuse.push(("bm25".into(), bm25.clone().expect("computed above")));
        }
        if let Some((label, run)) = &external {
            to_fuse.push((label.clone(), run.clone()));
        }
        if !to_fuse.is_empty() {
            let mut runs: Vec<(&Run, f64)> = vec![(&scores.run, 1.0)];
            runs.extend(to_fuse.iter().map(|(_, r)| (r, 1.0)));
            let fused = fuse(&runs, &fusion);
            let fs = evaluate_ranked(&task, &fused, &Default::default());
            let label = format!("{name} (splade+{})", to_fuse.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join("+"));
            rows.push((label, fs.metrics.clone()));
            if let Some(out) = &a.output {
                let mut ex = extra.clone();
                ex.insert(
                    "fusion".into(),
                    json!({"method": a.fusion, "k": a.rrf_k, "runs": std::iter::once("splade".to_string()).chain(to_fuse.iter().map(|(n, _)| n.clone())).collect::<Vec<_>>()}),
                );
                if a.hybrid.is_some() {
                    let (k1, b) = bm25_params.k1_b();
                    ex.insert(
                        "bm25".into(),
                        json!({"flavor": bm25_params.flavor.name(), "k1": k1, "b": b, "stemmer": bm25_params.stemmer}),
                    );
                }
                let mut r = fs.to_task_result(languages, "local", elapsed, ex);
                r.task_name = format!("{name}-hybrid");
                let p = r.write_to_dir(out)?;
                eprintln!("wrote {}", p.display());
            }
        }
        if let Some(b) = &baseline {
            let split = b.get(&scores.split).or_else(|| b.values().next()).context("baseline has no scores")?;
            println!("{name}: against baseline {}\n{}", a.baseline.as_ref().unwrap().display(), delta_table(split, &scores.metrics));
        }
        if a.analyze_sparsity {
            if let Some(s) = &scores.sparsity {
                println!("{name}: sparsity (vocabulary {})", s.vocab_size);
                for (label, d) in [("queries", &s.query), ("documents", &s.corpus)] {
                    println!(
                        "  {label:<10} active dims mean {:.1} median {:.1} p95 {:.1} min {} max {} sparsity {:.4}",
                        d.mean, d.median, d.p95, d.min, d.max, d.sparsity_ratio
                    );
                }
                println!("  avg_flops {:.3}; index {} bytes", s.avg_flops, scores.index_size_bytes.unwrap_or(0));
                for (label, vecs) in [("queries", &enc.queries), ("documents", &enc.docs)] {
                    let top: Vec<String> = most_active(vecs, s.vocab_size, 15)
                        .into_iter()
                        .map(|(id, n)| format!("{}({n})", model.tokenizer.id_to_token(id).unwrap_or_default()))
                        .collect();
                    println!("  most active in {label}: {}", top.join(" "));
                }
            }
        }
        for (label, vecs, texts) in [
            ("query", &enc.queries, task.queries.iter().map(|q| q.text.clone()).collect::<Vec<_>>()),
            ("document", &enc.docs, task.corpus.iter().map(|d| d.text()).collect::<Vec<_>>()),
        ] {
            for (v, t) in vecs.iter().zip(texts).take(a.decode) {
                let head: String = t.chars().take(80).collect();
                let toks = top_tokens(&model, v.indices(), v.values(), 12);
                println!("{label}: {head}\n  {}", toks.iter().map(|(t, w)| format!("{t}:{w:.2}")).collect::<Vec<_>>().join(" "));
            }
        }
    }
    println!("{}", summary_table(&rows));
    Ok(())
}
