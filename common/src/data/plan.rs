//! The batch plan: which rows of which dataset make up every global batch, decided up front from the seed.
//!
//! Semantics follow sentence-transformers' multi-dataset samplers:
//! - every batch comes from one dataset;
//! - `round_robin` cycles the datasets in config order and ends the epoch as soon as one runs out of batches
//!   (so the smallest dataset bounds it); `proportional` shuffles the batch slots of all datasets together so
//!   every full batch of every dataset is used once per epoch;
//! - `batch_sampler` takes a seeded permutation in chunks; `no_duplicates` fills a batch from the permutation
//!   skipping rows that share a text (anchor, positive or a negative; labels are ignored) with a row already in
//!   the batch, and leaves the skipped rows at the front for the next batch (sentence-transformers'
//!   `NoDuplicatesBatchSampler`);
//! - incomplete batches are dropped (`drop_last`);
//! - `group_by_length` reorders each dataset's permutation as transformers' `LengthGroupedSampler` does
//!   before the batch sampler cuts it: chunks of 50 batches' rows, each sorted longest first, with the
//!   longest row of the epoch moved to the very front (an out-of-memory shows on the first step). Batches
//!   then hold rows of similar length, so dynamic padding pads less. A row's length is the characters of
//!   all its texts, a tokenizer-free stand-in for transformers' token count.
//!
//! The plan depends only on the datasets (names, sizes, texts), the global batch size, the strategies, the seed
//! and the stop rule: never on the number of workers. Randomness is ChaCha8 seeded explicitly from
//! (seed, epoch, dataset-name hash, purpose) with its own Fisher-Yates shuffle, so a plan is reproducible across
//! crate versions and machines.

use std::collections::{HashSet, VecDeque};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use super::Example;
use super::spec::{BatchSamplerKind, SamplingStrategy};

pub(crate) const PURPOSE_SPLIT: u64 = 1;
const PURPOSE_SAMPLER: u64 = 2;
const PURPOSE_PROPORTIONAL: u64 = 3;

/// 64-bit FNV-1a: a stable hash (unlike `std`'s `DefaultHasher`) for texts and names.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A ChaCha8 stream for one purpose.
pub(crate) fn rng(seed: u64, a: u64, b: u64, purpose: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (i, w) in [seed, a, b, purpose].iter().enumerate() {
        key[i * 8..(i + 1) * 8].copy_from_slice(&w.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// Uniform in `0..n` by rejection (no modulo bias).
fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    let n = n as u64;
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return (x % n) as usize;
        }
    }
}

/// Fisher-Yates.
pub(crate) fn shuffle<T>(items: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..items.len()).rev() {
        let j = below(rng, i + 1);
        items.swap(i, j);
    }
}

/// What the planner needs to know about one dataset's training rows: a fixed, small number of bytes per row
/// whatever the length of its texts (a 64-bit hash per text and a 32-bit length), so millions of rows plan
/// in memory that does not grow with their text. [`PlanDataset::push`] is the one place a row becomes its
/// summary: the streaming pass ([`super::scan`]) and loaded rows ([`PlanDataset::from_examples`]) both go
/// through it, so both plan alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanDataset {
    /// Its config name (seeds its shuffles, so reordering datasets in the config keeps each one's order).
    pub name: String,
    /// Row count (the training split).
    pub len: usize,
    /// Per row, hashes of its texts; required for `no_duplicates`.
    pub texts: Option<TextHashes>,
    /// Per row, the characters of its texts (saturating at `u32::MAX`); required for `group_by_length`.
    pub lengths: Option<Vec<u32>>,
}

/// Every row's text hashes in one flat vector: row `i`'s are `hashes[ends[i - 1]..ends[i]]` (from 0 for the
/// first row). A row has a few texts, so this is a few words per row with no allocation of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextHashes {
    hashes: Vec<u64>,
    ends: Vec<u64>,
}

impl TextHashes {
    /// The hashes of row `i`'s texts (anchor, positive, negatives).
    pub fn row(&self, i: usize) -> &[u64] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.hashes[start..self.ends[i] as usize]
    }

    fn push(&mut self, hashes: impl Iterator<Item = u64>) {
        self.hashes.extend(hashes);
        self.ends.push(self.hashes.len() as u64);
    }
}

impl PlanDataset {
    /// A dataset with no rows yet, which [`PlanDataset::push`] fills (with text hashes and lengths).
    pub fn new(name: &str) -> PlanDataset {
        PlanDataset { name: name.into(), len: 0, texts: Some(TextHashes::default()), lengths: Some(Vec::new()) }
    }

    /// Appends one row's summary: its texts' FNV-1a hashes and their total length in characters.
    pub fn push(&mut self, e: &Example) {
        if let Some(t) = &mut self.texts {
            t.push(e.texts().map(|t| fnv1a(t.as_bytes())));
        }
        if let Some(l) = &mut self.lengths {
            let n: usize = e.texts().map(|t| t.chars().count()).sum();
            l.push(u32::try_from(n).unwrap_or(u32::MAX));
        }
        self.len += 1;
    }

    /// From loaded rows (keeps text hashes and lengths, so `no_duplicates` and `group_by_length` work).
    pub fn from_examples(name: &str, examples: &[Example]) -> PlanDataset {
        let mut d = PlanDataset::new(name);
        for e in examples {
            d.push(e);
        }
        d
    }

    /// Size only (enough for `batch_sampler` without `group_by_length`).
    pub fn sized(name: &str, len: usize) -> PlanDataset {
        PlanDataset { name: name.into(), len, texts: None, lengths: None }
    }

    /// Keeps the rows whose `keep` is true, in order, compacting in place (no second copy of the summaries).
    /// `keep` has one entry per row.
    pub fn retain_rows(&mut self, keep: &[bool]) {
        assert_eq!(keep.len(), self.len, "one keep flag per row");
        if let Some(t) = &mut self.texts {
            let (mut w, mut start) = (0usize, 0usize);
            let mut kept = 0usize;
            for (i, &k) in keep.iter().enumerate() {
                let end = t.ends[i] as usize;
                if k {
                    t.hashes.copy_within(start..end, w);
                    w += end - start;
                    t.ends[kept] = w as u64;
                    kept += 1;
                }
                start = end;
            }
            t.hashes.truncate(w);
            t.ends.truncate(kept);
            t.hashes.shrink_to_fit();
            t.ends.shrink_to_fit();
        }
        if let Some(l) = &mut self.lengths {
            retain_by(l, keep);
        }
        self.len = keep.iter().filter(|&&k| k).count();
    }
}

/// Keeps `v[i]` where `keep[i]`, in order, in place; frees the rest.
pub(crate) fn retain_by<T>(v: &mut Vec<T>, keep: &[bool]) {
    let mut i = 0;
    v.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    v.shrink_to_fit();
}

/// When the plan ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PlanStop {
    /// This many epochs; a fraction takes the first part of the last epoch (rounded up to whole batches).
    Epochs(f64),
    /// Exactly this many batches, running as many epochs as needed.
    MaxSteps(u64),
}

/// Everything besides the datasets that decides a plan.
#[derive(Debug, Clone)]
pub struct PlanSpec {
    /// Rows per planned batch (the global batch: per-device size × world size × accumulation).
    pub batch_size: usize,
    /// How batches alternate between datasets.
    pub sampling: SamplingStrategy,
    /// How rows are grouped into batches.
    pub batch_sampler: BatchSamplerKind,
    /// `training.seed`.
    pub seed: u64,
    /// `training.group_by_length`: batches of rows of similar length (see the module docs).
    pub group_by_length: bool,
    /// When to stop.
    pub stop: PlanStop,
}

/// One global batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedBatch {
    /// 1-based: optimizer step `k` consumes the batch with `step == k` (so `checkpoint-N` has consumed steps ≤ N).
    pub step: u64,
    /// 0-based epoch.
    pub epoch: u64,
    /// The dataset's config name.
    pub dataset: String,
    /// Row indices into that dataset's training split.
    pub rows: Vec<usize>,
}

/// Why no plan can be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// No datasets, a zero batch size or a zero stop.
    #[error("cannot plan batches: {0}")]
    Invalid(String),
    /// An epoch would have no batch.
    #[error("cannot plan batches: {0}")]
    NoBatches(String),
}

/// The whole training run's batches, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    /// `batches[k - 1].step == k`.
    pub batches: Vec<PlannedBatch>,
}

impl BatchPlan {
    /// Builds the plan. Errors when there is nothing to plan or an epoch yields no batch (e.g. every dataset is
    /// smaller than one batch, or round-robin with one such dataset), naming the culprit and the fix.
    pub fn build(datasets: &[PlanDataset], spec: &PlanSpec) -> Result<BatchPlan, PlanError> {
        if datasets.is_empty() {
            return Err(PlanError::Invalid("no datasets; enable at least one under `datasets:`".into()));
        }
        if spec.batch_size == 0 {
            return Err(PlanError::Invalid("batch size is 0; set per_device_train_batch_size ≥ 1".into()));
        }
        if spec.batch_sampler == BatchSamplerKind::NoDuplicates {
            if let Some(d) = datasets.iter().find(|d| d.texts.is_none()) {
                return Err(PlanError::Invalid(format!(
                    "dataset `{}` has no texts; no_duplicates needs PlanDataset::from_examples",
                    d.name
                )));
            }
        }
        if spec.group_by_length {
            if let Some(d) = datasets.iter().find(|d| d.lengths.is_none()) {
                return Err(PlanError::Invalid(format!(
                    "dataset `{}` has no text lengths; group_by_length needs PlanDataset::from_examples",
                    d.name
                )));
            }
        }
        let mut batches = Vec::new();
        let (full_epochs, limit) = match spec.stop {
            PlanStop::MaxSteps(0) => return Err(PlanError::Invalid("max_steps is 0".into())),
            PlanStop::MaxSteps(m) => (u64::MAX, Some(m as usize)),
            PlanStop::Epochs(e) if !(e > 0.0 && e.is_finite()) => {
                return Err(PlanError::Invalid(format!("num_train_epochs is {e}; it must be positive")))
            }
            PlanStop::Epochs(e) => (e.floor() as u64, None),
        };
        let mut epoch = 0u64;
        loop {
            let frac = match spec.stop {
                PlanStop::Epochs(e) if epoch == full_epochs => e - e.floor(),
                _ => 1.0,
            };
            if epoch > full_epochs || (epoch == full_epochs && frac <= 0.0) {
                break;
            }
            let mut these = epoch_batches(datasets, spec, epoch);
            if these.is_empty() {
                let sizes = datasets.iter().map(|d| format!("`{}` {} rows", d.name, d.len)).collect::<Vec<_>>().join(", ");
                return Err(PlanError::NoBatches(format!(
                    "epoch {epoch} has no full batch of {} ({sizes}); lower per_device_train_batch_size or add data",
                    spec.batch_size
                )));
            }
            if frac < 1.0 {
                these.truncate(((these.len() as f64) * frac).ceil() as usize);
            }
            for (d, rows) in these {
                if limit.is_some_and(|m| batches.len() >= m) {
                    break;
                }
                let step = batches.len() as u64 + 1;
                batches.push(PlannedBatch { step, epoch, dataset: datasets[d].name.clone(), rows });
            }
            if limit.is_some_and(|m| batches.len() >= m) {
                break;
            }
            epoch += 1;
        }
        Ok(BatchPlan { batches })
    }

    /// Number of batches (= optimizer steps).
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// True when the plan has no batch.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The batch of 1-based `step`.
    pub fn step(&self, step: u64) -> Option<&PlannedBatch> {
        step.checked_sub(1).and_then(|i| self.batches.get(i as usize))
    }

    /// The plan as JSONL for `--dump-batches`: one `{"step","epoch","dataset","rows"}` object per line.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for b in &self.batches {
            out.push_str(&serde_json::to_string(b).expect("batch serializes"));
            out.push('\n');
        }
        out
    }

    /// Reads [`BatchPlan::to_jsonl`] output; the error names the bad line.
    pub fn from_jsonl(text: &str) -> Result<BatchPlan, String> {
        let mut batches = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let b: PlannedBatch = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            batches.push(b);
        }
        Ok(BatchPlan { batches })
    }
}

/// Rank `rank`'s contiguous share of a global batch among `world` ranks; shares differ in size by at most one
/// row and concatenate (rank order) to the whole batch. Panics if `rank >= world`.
pub fn slice_for_rank(batch: &PlannedBatch, rank: usize, world: usize) -> &[usize] {
    &batch.rows[rank_range(batch.rows.len(), rank, world)]
}

/// The positions of rank `rank`'s share of a global batch of `n` rows ([`slice_for_rank`]). Panics if
/// `rank >= world`.
pub fn rank_range(n: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    assert!(rank < world, "rank {rank} out of world size {world}");
    n * rank / world..n * (rank + 1) / world
}

/// One epoch's batches as (dataset index, rows).
fn epoch_batches(datasets: &[PlanDataset], spec: &PlanSpec, epoch: u64) -> Vec<(usize, Vec<usize>)> {
    let per: Vec<Vec<Vec<usize>>> = datasets.iter().map(|d| dataset_batches(d, spec, epoch)).collect();
    let mut out = Vec::new();
    match spec.sampling {
        SamplingStrategy::RoundRobin => {
            let mut iters: Vec<_> = per.into_iter().map(Vec::into_iter).collect();
            'outer: loop {
                for (d, it) in iters.iter_mut().enumerate() {
                    match it.next() {
                        Some(rows) => out.push((d, rows)),
                        None => break 'outer,
                    }
                }
            }
        }
        SamplingStrategy::Proportional => {
            let mut slots: Vec<usize> = per.iter().enumerate().flat_map(|(d, b)| std::iter::repeat_n(d, b.len())).collect();
            shuffle(&mut slots, &mut rng(spec.seed, epoch, 0, PURPOSE_PROPORTIONAL));
            let mut iters: Vec<_> = per.into_iter().map(Vec::into_iter).collect();
            for d in slots {
                let rows = iters[d].next().expect("one slot per batch");
                out.push((d, rows));
            }
        }
    }
    out
}

/// One dataset's full batches for one epoch.
fn dataset_batches(d: &PlanDataset, spec: &PlanSpec, epoch: u64) -> Vec<Vec<usize>> {
    let mut perm: Vec<usize> = (0..d.len).collect();
    shuffle(&mut perm, &mut rng(spec.seed, epoch, fnv1a(d.name.as_bytes()), PURPOSE_SAMPLER));
    let bs = spec.batch_size;
    if spec.group_by_length {
        group_by_length(&mut perm, d.lengths.as_ref().expect("checked in build"), bs);
    }
    match spec.batch_sampler {
        BatchSamplerKind::BatchSampler => perm.chunks_exact(bs).map(<[usize]>::to_vec).collect(),
        BatchSamplerKind::NoDuplicates => {
            let texts = d.texts.as_ref().expect("checked in build");
            let mut remaining: VecDeque<usize> = perm.into();
            let mut out = Vec::new();
            while !remaining.is_empty() {
                let mut seen: HashSet<u64> = HashSet::new();
                let mut batch = Vec::with_capacity(bs);
                let mut skipped = Vec::new();
                let mut full = false;
                while let Some(i) = remaining.pop_front() {
                    let row = texts.row(i);
                    if row.iter().any(|t| seen.contains(t)) {
                        skipped.push(i);
                        continue;
                    }
                    batch.push(i);
                    seen.extend(row.iter().copied());
                    if batch.len() == bs {
                        full = true;
                        break;
                    }
                }
                for i in skipped.into_iter().rev() {
                    remaining.push_front(i);
                }
                // An incomplete batch is dropped, but its rows are still consumed (as sentence-transformers).
                if full {
                    out.push(batch);
                }
            }
            out
        }
    }
}

/// Rows per length-sorted chunk in batches: transformers' `LengthGroupedSampler` uses 50.
const MEGABATCH_BATCHES: usize = 50;

/// `LengthGroupedSampler`'s order: `perm` (already shuffled) in chunks of [`MEGABATCH_BATCHES`] batches, each
/// sorted by length, longest first (stable, so ties keep the shuffled order); then the first chunk's head
/// swaps with the head of the chunk holding the longest row.
fn group_by_length(perm: &mut [usize], lengths: &[u32], batch_size: usize) {
    let mega = (MEGABATCH_BATCHES * batch_size).max(1);
    for chunk in perm.chunks_mut(mega) {
        chunk.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    }
    // The first chunk with the largest head (`max_by_key` would return the last).
    let longest = perm.chunks(mega).enumerate().fold((0, 0), |best, (c, ch)| if lengths[ch[0]] > best.1 { (c, lengths[ch[0]]) } else { best }).0;
    perm.swap(0, longest * mega);
}
