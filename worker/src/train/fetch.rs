//! A cluster worker's data: only this rank's slice of each global batch, read through the job's published
//! data plan ([`PublishedPlan`]) on a background thread that stays a few steps ahead of training. The thread
//! fetches the plan's chunks lazily: the chunk of the step it reads and the next one, dropping chunks whose
//! steps are done, so a worker fetches and holds only the chunks of the steps it trains.
//!
//! Guarantees: [`SliceFetcher::next`] yields, for consecutive steps from the first one asked for, the planned
//! batch and exactly the records `slice_for_rank(batch, rank, world)` names, in order, with the labels of the
//! whole global batch from the chunk (not from reading other ranks' records); a read error is returned for the
//! step that needed it (and ends the fetcher); dropping the fetcher stops the thread after at most one more
//! read. [`SliceFetcher::plan_bytes_read`] counts every chunk byte fetched, [`SliceFetcher::bytes_read`] every
//! record byte.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use splade_common::data::plan::rank_range;
use splade_common::data::{DataError, Example, PlanChunk, PlannedBatch, PublishedPlan, RangedReader};
use splade_common::store::StoreOptions;
use tch::Tensor;

use super::TrainError;

/// Steps read ahead of the one training.
pub const PREFETCH_STEPS: usize = 3;

/// One step as the fetcher delivers it.
#[derive(Debug)]
pub struct SliceStep {
    /// The planned global batch.
    pub batch: PlannedBatch,
    /// This rank's records of it.
    pub examples: Vec<Example>,
    /// Every row's label of the whole global batch; empty when the dataset has no labels.
    pub labels: Vec<Option<Vec<f32>>>,
}

/// Reads this rank's slices of consecutive steps in the background.
pub struct SliceFetcher {
    rx: Receiver<(u64, Result<SliceStep, DataError>)>,
    /// A step received ahead of its turn by [`SliceFetcher::peek_examples`], handed out by the next `next`.
    ahead: std::sync::Mutex<Option<(u64, Result<SliceStep, DataError>)>>,
    bytes: Arc<AtomicU64>,
    plan_bytes: Arc<AtomicU64>,
    _thread: std::thread::JoinHandle<()>,
}

/// The chunks the prefetch thread holds: the one it reads from and the next, each with its index.
struct Chunks {
    plan: Arc<PublishedPlan>,
    held: VecDeque<(usize, PlanChunk)>,
    options: StoreOptions,
    bytes: Arc<AtomicU64>,
}

impl Chunks {
    async fn fetch(&mut self, i: usize) -> Result<(), DataError> {
        let (c, n) = self.plan.fetch_chunk(i, &self.options).await?;
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.held.push_back((i, c));
        Ok(())
    }

    /// The batch of `step` with its locations and labels, fetching its chunk (and the next one) if needed and
    /// dropping chunks before it.
    async fn batch(&mut self, step: u64) -> Result<&splade_common::data::ChunkBatch, DataError> {
        let i = self.plan.chunk_of(step).ok_or_else(|| DataError::PlanArtifact {
            location: self.plan.reference.location.clone(),
            problem: format!("has no step {step} (it plans {} steps)", self.plan.manifest.total_steps),
        })?;
        while self.held.front().is_some_and(|(j, _)| *j < i) {
            self.held.pop_front();
        }
        if self.held.front().is_none_or(|(j, _)| *j != i) {
            self.held.clear();
            self.fetch(i).await?;
        }
        // A chunk ahead, so the first steps of the next chunk do not wait for its download. A failure here is
        // not this step's: that chunk is fetched again when its first step comes, and fails there.
        if self.held.len() < 2 && i + 1 < self.plan.manifest.chunks.len() {
            if let Err(e) = self.fetch(i + 1).await {
                tracing::warn!(error = %e, "fetching the next data-plan chunk ahead failed; retrying when it is needed");
            }
        }
        let first = self.plan.manifest.chunks[i].first_step;
        Ok(&self.held[0].1.batches[(step - first) as usize])
    }
}

impl SliceFetcher {
    /// Starts reading rank `rank`'s (of `world`) slices of steps `first..=total_steps` of `plan`.
    pub fn start(plan: Arc<PublishedPlan>, first: u64, rank: usize, world: usize, options: StoreOptions) -> SliceFetcher {
        let mut reader = RangedReader::new(plan.manifest.datasets.iter().map(|d| d.reader_index()), options.clone());
        let bytes = reader.bytes_counter();
        let plan_bytes = Arc::new(AtomicU64::new(0));
        let total = plan.manifest.total_steps;
        let mut chunks = Chunks { plan, held: VecDeque::new(), options, bytes: plan_bytes.clone() };
        let (tx, rx) = sync_channel(PREFETCH_STEPS);
        let thread = std::thread::Builder::new()
            .name("splade-data-prefetch".into())
            .spawn(move || {
                // The process's runtime: the store clients' pooled connections belong to it.
                let rt = splade_common::runtime::runtime();
                for step in first..=total {
                    let got = rt.block_on(async {
                        let b = chunks.batch(step).await?.clone();
                        let range = rank_range(b.batch.rows.len(), rank, world);
                        let examples = reader.read_locs(&b.batch.dataset, &b.locs[range]).await?;
                        Ok(SliceStep { batch: b.batch, examples, labels: b.labels })
                    });
                    let failed = got.is_err();
                    if tx.send((step, got)).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("a prefetch thread can be spawned");
        SliceFetcher { rx, ahead: Default::default(), bytes, plan_bytes, _thread: thread }
    }

    /// This rank's step `step` (the next step in order), waiting for it if it is not read yet.
    pub fn next(&self, step: u64) -> Result<SliceStep, DataError> {
        let ahead = self.ahead.lock().expect("not poisoned").take();
        match ahead.map(Ok).unwrap_or_else(|| self.rx.recv()) {
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

    /// The records of `step`, the step after the one training, received now and kept for its
    /// [`SliceFetcher::next`]: what a single process tokenizes on another thread while the current step
    /// computes. `None` past the plan or when that read failed (its `next` reports it).
    pub fn peek_examples(&self, step: u64) -> Option<Vec<Example>> {
        let mut ahead = self.ahead.lock().expect("not poisoned");
        if ahead.is_none() {
            *ahead = Some(self.rx.recv().ok()?);
        }
        match ahead.as_ref() {
            Some((s, Ok(f))) if *s == step => Some(f.examples.clone()),
            _ => None,
        }
    }

    /// Bytes of records fetched from storage so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Bytes of data-plan chunks fetched from storage so far.
    pub fn plan_bytes_read(&self) -> u64 {
        self.plan_bytes.load(Ordering::Relaxed)
    }
}

/// The labels of a whole global batch (`labels`, one per row, from the plan's chunk) as `[rows, width]` when
/// every row has one; `None` otherwise (as `Trainer::labels` does for loaded rows). Rows of different widths
/// are an error, as there.
pub fn global_labels(labels: &[Option<Vec<f32>>]) -> Result<Option<Tensor>, TrainError> {
    let labels: Option<Vec<&[f32]>> = labels.iter().map(|l| l.as_deref()).collect();
    super::step::labels_tensor(labels.filter(|l| !l.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_labels_are_what_the_trainer_builds_from_loaded_rows() {
        let labels = vec![Some(vec![1.0, 2.0]), Some(vec![3.0, 4.0]), Some(vec![5.0, 6.0])];
        let rows = [2, 0];
        let examples: Vec<Example> = rows
            .iter()
            .map(|&r| Example { anchor: "a".into(), positive: "p".into(), negatives: vec![], label: labels[r].clone() })
            .collect();
        let refs: Vec<&Example> = examples.iter().collect();
        let want = crate::train::Trainer::labels(&refs).unwrap().unwrap();
        let batch_labels: Vec<Option<Vec<f32>>> = rows.iter().map(|&r| labels[r].clone()).collect();
        let got = global_labels(&batch_labels).unwrap().unwrap();
        assert_eq!(got.size(), vec![2, 2]);
        assert!(got.equal(&want));
        // A row without a label (or a dataset without labels) gives none, as for loaded rows.
        assert!(global_labels(&[Some(vec![1.0]), None]).unwrap().is_none());
        assert!(global_labels(&[]).unwrap().is_none());
    }

    /// A published plan of 10 steps of 4 labelled rows in chunks of 2, under `dir`; with the loaded rows.
    fn published(dir: &std::path::Path) -> (splade_common::data::DataPlan, Vec<splade_common::data::SplitDataset>, Arc<PublishedPlan>) {
        use splade_common::store::{block_on, Location};
        let mut text = String::new();
        for i in 0..48 {
            text.push_str(&format!("{{\"anchor\": \"q{i}\", \"positive\": \"p{i}\", \"label\": [{i}, 1]}}\n"));
        }
        std::fs::write(dir.join("d.jsonl"), text).unwrap();
        let yaml = format!(
            "model:\n  base_model: x\ntraining:\n  max_steps: 10\n  per_device_train_batch_size: 4\n  output_dir: {d}/out\ndatasets:\n  d:\n    source: {d}/d.jsonl\n",
            d = dir.display()
        );
        let cfg = splade_common::config::Config::from_str(&yaml, "inline").unwrap();
        let split = block_on(splade_common::data::load_training_data(cfg.datasets.enabled(), 7, &StoreOptions::default())).unwrap();
        let plan = splade_common::data::DataPlan::build(&cfg.plan_spec(4), split.iter().map(splade_common::data::ScannedDataset::from_split).collect()).unwrap();
        let out = Location::parse(&format!("{}/out", dir.display())).unwrap();
        let r = block_on(plan.publish(&out, 2)).unwrap();
        let p = block_on(PublishedPlan::fetch(&r, &StoreOptions::default())).unwrap();
        (plan, split, Arc::new(p))
    }

    #[test]
    fn a_fetcher_starting_mid_plan_fetches_only_the_chunks_from_its_step_on_and_yields_its_slices() {
        let dir = tempfile::tempdir().unwrap();
        let (plan, split, p) = published(dir.path());
        assert_eq!(p.manifest.chunks.len(), 5);
        // Rank 1 of 2, resuming after step 4: steps 5..=10, chunks 2..=4 (steps 5-6, 7-8, 9-10).
        let f = SliceFetcher::start(p.clone(), 5, 1, 2, StoreOptions::default());
        for step in 5..=10u64 {
            let got = f.next(step).unwrap();
            let want = &plan.batches[step as usize - 1];
            assert_eq!(&got.batch, want);
            let rows = splade_common::data::slice_for_rank(want, 1, 2);
            assert_eq!(got.examples, rows.iter().map(|&r| split[0].train[r].clone()).collect::<Vec<_>>());
            assert_eq!(got.labels, want.rows.iter().map(|&r| split[0].train[r].label.clone()).collect::<Vec<_>>());
        }
        assert!(f.next(11).is_err(), "past the plan");
        let want: u64 = p.manifest.chunks[2..].iter().map(|c| c.bytes).sum();
        assert_eq!(f.plan_bytes_read(), want, "chunks 2..=4 only");
    }

    #[test]
    fn a_chunk_whose_sha256_differs_fails_the_first_step_that_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        let (plan, _, p) = published(dir.path());
        // Chunk 2 (steps 5-6) tampered: steps 3-4 still train (its fetch ahead fails quietly), step 5 fails.
        let path = dir.path().join("out/data-plan").join(&p.manifest.chunks[2].location);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let f = SliceFetcher::start(p.clone(), 3, 0, 1, StoreOptions::default());
        for step in 3..=4u64 {
            assert_eq!(f.next(step).unwrap().batch, plan.batches[step as usize - 1]);
        }
        let e = f.next(5).unwrap_err().to_string();
        assert!(e.starts_with(&format!("data plan `{}`: its sha256 is ", p.chunk_url(2))) && e.contains("re-plan"), "{e}");
    }
}
