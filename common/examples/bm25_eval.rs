//! BM25 baseline on a task: `bm25_eval TASK_DIR [SPLIT] [STEMMER]` prints the summary table and writes
//! nothing. Both flavours (bm25s, anserini); without STEMMER both unstemmed and Norwegian-stemmed.

use splade_common::eval::{
    bm25_run, evaluate_ranked, summary_table, Bm25Flavor, Bm25Params, LocalDir, MetricsConfig, Task,
};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).map(String::as_str).unwrap_or("data/norquad");
    let task = Task::load(&LocalDir::new(dir), args.get(2).map(String::as_str), None)?;
    for w in &task.warnings {
        eprintln!("warning: {w}");
    }
    let stemmers: Vec<Option<String>> = match args.get(3) {
        Some(s) => vec![Some(s.clone())],
        None => vec![None, Some("norwegian".into())],
    };
    let mut rows = Vec::new();
    for (flavor, stemmer) in [Bm25Flavor::Bm25s, Bm25Flavor::Anserini]
        .into_iter()
        .flat_map(|f| stemmers.iter().map(move |s| (f, s.clone())))
    {
        let label = format!(
            "{} bm25 {flavor} {}",
            task.name,
            stemmer.as_deref().unwrap_or("unstemmed")
        );
        let params = Bm25Params {
            flavor,
            stemmer,
            ..Default::default()
        };
        let t = std::time::Instant::now();
        let run = bm25_run(&task, &params, 100)?;
        eprintln!("{label}: {:.3}s", t.elapsed().as_secs_f64());
        rows.push((
            label,
            evaluate_ranked(&task, &run, &MetricsConfig::default()).metrics,
        ));
    }
    print!("{}", summary_table(&rows));
    Ok(())
}
