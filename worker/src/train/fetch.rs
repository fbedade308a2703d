//! A cluster worker's data: only this rank's slice of each global batch, read from the job's published
//! [`DataPlan`] with ranged reads ([`RangedReader`]) on a background thread that stays a few steps ahead of
//! training.
//!
//! Guarantees: [`SliceFetcher::next`] yields, for consecutive steps from the first one asked for, exactly the
//! records `slice_for_rank(batch, rank, world)` names, in order; a read error is returned for the step that
//! needed it (and ends the fetcher); dropping the fetcher stops the thread after at most one more read.
//! Labels of the whole global batch come from the artifact ([`global_labels`]), not from reading other
//! ranks' records.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use splade_common::data::plan::slice_for_rank;
use splade_common::data::{DataError, DataPlan, Example, RangedReader};
use splade_common::store::StoreOptions;
use tch::Tensor;

use super::TrainError;

/// Steps read ahead of the one training.
pub const PREFETCH_STEPS: usize = 3;

/// Reads this rank's slices of consecutive steps in the background.
pub struct SliceFetcher {
    rx: Receiver<(u64, Result<Vec<Example>, DataError>)>,
    bytes: Arc<AtomicU64>,
    _thread: std::thread::JoinHandle<()>,
}

impl SliceFetcher {
    /// Starts reading rank `rank`'s (of `world`) slices of steps `first..=plan.batches.len()`.
    pub fn start(plan: &DataPlan, first: u64, rank: usize, world: usize, options: StoreOptions) -> SliceFetcher {
        let mut reader = RangedReader::new(plan.datasets.clone(), options);
        let bytes = reader.bytes_counter();
        let work: Vec<(u64, String, Vec<usize>)> = plan
            .batches
            .iter()
            .filter(|b| b.step >= first)
            .map(|b| (b.step, b.dataset.clone(), slice_for_rank(b, rank, world).to_vec()))
            .collect();
        let (tx, rx) = sync_channel(PREFETCH_STEPS);
        let thread = std::thread::Builder::new()
            .name("splade-data-prefetch".into())
            .spawn(move || {
                // The process's runtime: the store clients' pooled connections belong to it.
                let rt = splade_common::runtime::runtime();
                for (step, dataset, rows) in work {
                    let got = rt.block_on(reader.read_rows(&dataset, &rows));
                    let failed = got.is_err();
                    if tx.send((step, got)).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("a prefetch thread can be spawned");
        SliceFetcher { rx, bytes, _thread: thread }
    }

    /// This rank's records of `step` (the next step in order), waiting for them if they are not read yet.
    pub fn next(&self, step: u64) -> Result<Vec<Example>, DataError> {
        match self.rx.recv() {
            Ok((s, got)) if s == step => got,
            Ok((s, _)) => Err(DataError::PlanArtifact {
                location: "prefetch".into(),
                problem: format!("step {step} was asked for but step {s} was read; steps must be consumed in order"),
            }),
            Err(_) => Err(DataError::PlanArtifact {
                location: "prefetch".into(),
                problem: format!("no data for step {step}: it is past the plan or an earlier read failed"),
            }),
        }
    }

    /// Bytes fetched from storage so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The labels of a whole global batch (rows `rows` of `dataset`) as `[rows, width]`, from the artifact, when
/// every row has one; `None` otherwise (as `Trainer::labels` does for loaded rows). Rows of different widths
/// are an error, as there.
pub fn global_labels(plan: &DataPlan, dataset: &str, rows: &[usize]) -> Result<Option<Tensor>, TrainError> {
    let Some(index) = plan.dataset(dataset) else { return Ok(None) };
    let labels: Option<Vec<&[f32]>> = rows.iter().map(|&r| index.label(r)).collect();
    super::step::labels_tensor(labels.filter(|l| !l.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use splade_common::config::DataFormat;
    use splade_common::data::{IndexedFile, RecordIndex, RecordLoc};

    fn plan(labels: Vec<Option<Vec<f32>>>) -> DataPlan {
        let n = labels.len();
        DataPlan {
            version: splade_common::data::index::DATA_PLAN_VERSION,
            global_batch_size: n,
            batches: vec![],
            datasets: vec![RecordIndex {
                dataset: "d".into(),
                columns: Default::default(),
                files: vec![IndexedFile { url: "/x.jsonl".into(), format: DataFormat::Jsonl, size: 0 }],
                rows: (0..n).map(|i| RecordLoc(0, i as u64, 1)).collect(),
                labels,
                hub: Vec::new(),
                dev: None,
            }],
        }
    }

    #[test]
    fn global_labels_are_what_the_trainer_builds_from_loaded_rows() {
        let labels = vec![Some(vec![1.0, 2.0]), Some(vec![3.0, 4.0]), Some(vec![5.0, 6.0])];
        let p = plan(labels.clone());
        let rows = [2, 0];
        let examples: Vec<Example> = rows
            .iter()
            .map(|&r| Example { anchor: "a".into(), positive: "p".into(), negatives: vec![], label: labels[r].clone() })
            .collect();
        let refs: Vec<&Example> = examples.iter().collect();
        let want = crate::train::Trainer::labels(&refs).unwrap().unwrap();
        let got = global_labels(&p, "d", &rows).unwrap().unwrap();
        assert_eq!(got.size(), vec![2, 2]);
        assert!(got.equal(&want));
        // A row without a label (or a dataset without labels) gives none, as for loaded rows.
        assert!(global_labels(&plan(vec![Some(vec![1.0]), None]), "d", &[0, 1]).unwrap().is_none());
        assert!(global_labels(&plan(vec![]), "d", &[0]).unwrap().is_none());
    }
}
