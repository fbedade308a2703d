//! The published form of a [`DataPlan`]: a small JSON manifest plus binary chunks of consecutive steps, so a
//! worker fetches and holds only the steps it trains.
//!
//! Layout under `<training.output_dir>/data-plan/`:
//! - `<sha256>.json`: the [`PlanManifest`]: version, global batch, step count, the first step of each epoch,
//!   every dataset's files (with their fingerprints, see [`IndexedFile`]), columns and training-row count, and
//!   the chunk list (step range, sha256, size and location of each chunk). It stays small (no rows) and
//!   readable; the job's [`DataPlanRef`] points at it and carries its sha256.
//! - `chunks/<sha256>.bin`: the planned batches of one step range, with per row its dataset row index, its
//!   [`RecordLoc`] and its label: everything a rank needs for those steps. Encoded with `postcard` (serde, a
//!   documented stable wire format, varints: a row index and a record location take a few bytes each) and
//!   compressed with zstd (level 3). `postcard` rather than bincode (its 3.x line is unmaintained), rkyv
//!   (zero-copy would need its own derives on every plan type, for data read once) or Arrow IPC (a large
//!   dependency for three integer columns and a ragged float column).
//!
//! Both are content-addressed: a chunk's name is the sha256 of its bytes, recorded in the manifest, whose own
//! sha256 is in the reference, so one verified manifest pins every chunk. A reader checks each sha256 before
//! decoding and refuses a manifest of another [`DATA_PLAN_VERSION`] with the version it found (a version-1
//! artifact, the whole plan as one JSON file, is refused the same way).
//!
//! Chunks hold [`DEFAULT_CHUNK_STEPS`] steps unless `cluster.data_plan_chunk_steps` says otherwise.

use indexmap::IndexMap;
use object_store::PutPayload;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::index::{DataPlan, DataPlanRef, IndexedFile, RecordIndex, RecordLoc};
use super::plan::{BatchPlan, PlannedBatch};
use super::DataError;
use crate::store::{Location, StoreError, StoreOptions};

/// Version of the published plan layout; a reader refuses other versions. Version 1 was one JSON file.
pub const DATA_PLAN_VERSION: u32 = 2;

/// Steps per chunk by default. 1000 steps of a global batch of 32 rows are 32,000 rows, about 0.24 MB
/// (measured once on 200,000 synthetic JSONL pairs, global batch 32: 7.4 bytes a row after zstd, 9.0 before,
/// against 24 in the version-1 JSON): a worker starting anywhere fetches at most one such chunk more than it
/// needs, holds two (the one training and the next), and a 10 M-row epoch is about 300 requests, not tens
/// of thousands.
pub const DEFAULT_CHUNK_STEPS: u64 = 1000;

/// zstd level of chunks: the default level, fast to write, most of the gain.
const ZSTD_LEVEL: i32 = 3;

/// The published plan's table of contents (`data-plan/<sha256>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanManifest {
    /// [`DATA_PLAN_VERSION`].
    pub version: u32,
    /// Rows per planned batch (the global batch).
    pub global_batch_size: usize,
    /// Planned steps (batches); step `k` is `1..=total_steps`.
    pub total_steps: u64,
    /// Steps per chunk (the last chunk may hold fewer).
    pub chunk_steps: u64,
    /// The first step of each epoch, ascending (`epoch_starts[e]` is the first step of epoch `e`).
    pub epoch_starts: Vec<u64>,
    /// One entry per enabled dataset, in config order; batches name datasets by position here.
    pub datasets: Vec<ManifestDataset>,
    /// The chunks, in step order, covering `1..=total_steps` without gaps.
    pub chunks: Vec<ChunkRef>,
}

/// What a worker needs to read one dataset's records, besides their locations (which travel in the chunks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestDataset {
    /// The dataset's config name.
    pub dataset: String,
    /// `datasets.<name>.columns` as configured.
    pub columns: IndexMap<String, String>,
    /// The files the rows point into, with the fingerprints a reader checks before reading them.
    pub files: Vec<IndexedFile>,
    /// Rows of its training split (what `splade train` reports as the dataset's training rows).
    pub train_rows: u64,
    /// Whether its rows carry labels.
    pub labelled: bool,
    /// The Hub commits its rows come from ([`RecordIndex::hub`]): what a cluster's checkpoints record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hub: Vec<super::HubPin>,
    /// A seed loader block's dev split as published under `output_dir` ([`RecordIndex::dev`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

impl ManifestDataset {
    /// A [`RecordIndex`] with the files and columns but no rows: what a [`super::RangedReader`] needs to read
    /// records by location ([`super::RangedReader::read_locs`]).
    pub fn reader_index(&self) -> RecordIndex {
        RecordIndex {
            dataset: self.dataset.clone(),
            columns: self.columns.clone(),
            files: self.files.clone(),
            rows: Vec::new(),
            labels: Vec::new(),
            hub: self.hub.clone(),
            dev: self.dev.clone(),
        }
    }
}

/// One chunk of the published plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Its first step.
    pub first_step: u64,
    /// Its last step (inclusive).
    pub last_step: u64,
    /// Lower-case hex sha256 of its bytes.
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Where it is, relative to the manifest's folder (`chunks/<sha256>.bin`).
    pub location: String,
}

/// A chunk's batches, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanChunk {
    /// One per step of the chunk, in step order.
    pub batches: Vec<ChunkBatch>,
}

/// One planned batch with what a rank needs to read its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkBatch {
    /// The batch as the planner made it (step, epoch, dataset, row indices).
    pub batch: PlannedBatch,
    /// Where each row's record lives, parallel to `batch.rows`.
    pub locs: Vec<RecordLoc>,
    /// Each row's label, parallel to `batch.rows`; empty when the dataset has no labels.
    pub labels: Vec<Option<Vec<f32>>>,
}

/// A chunk on the wire.
#[derive(Serialize, Deserialize)]
struct WireChunk {
    version: u32,
    first_step: u64,
    batches: Vec<WireBatch>,
}

#[derive(Serialize, Deserialize)]
struct WireBatch {
    epoch: u64,
    /// Position in [`PlanManifest::datasets`].
    dataset: u32,
    /// Dataset row indices.
    rows: Vec<u64>,
    locs: Vec<RecordLoc>,
    /// Empty when the dataset has no labels.
    labels: Vec<Option<Vec<f32>>>,
}

/// A plan ready to publish: the manifest's bytes and every chunk's, each named by its sha256.
pub struct PlanArtifact {
    /// The manifest.
    pub manifest: PlanManifest,
    /// Its JSON bytes.
    pub manifest_bytes: Vec<u8>,
    /// Their sha256 (hex).
    pub manifest_sha256: String,
    /// `(location relative to the manifest's folder, bytes)` per chunk, in step order.
    pub chunks: Vec<(String, Vec<u8>)>,
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

impl DataPlan {
    /// The published form of this plan with `chunk_steps` steps per chunk (at least 1). Deterministic: the
    /// same plan gives the same bytes.
    pub fn to_artifact(&self, chunk_steps: u64) -> PlanArtifact {
        let chunk_steps = chunk_steps.max(1);
        let position: std::collections::HashMap<&str, u32> =
            self.datasets.iter().enumerate().map(|(i, d)| (d.dataset.as_str(), i as u32)).collect();
        let mut chunks = Vec::new();
        let mut refs = Vec::new();
        for part in self.batches.chunks(chunk_steps as usize) {
            let wire = WireChunk {
                version: DATA_PLAN_VERSION,
                first_step: part[0].step,
                batches: part
                    .iter()
                    .map(|b| {
                        let d = position[b.dataset.as_str()];
                        let index = &self.datasets[d as usize];
                        WireBatch {
                            epoch: b.epoch,
                            dataset: d,
                            rows: b.rows.iter().map(|&r| r as u64).collect(),
                            locs: b.rows.iter().map(|&r| index.rows[r]).collect(),
                            labels: if index.labels.is_empty() {
                                Vec::new()
                            } else {
                                b.rows.iter().map(|&r| index.labels[r].clone()).collect()
                            },
                        }
                    })
                    .collect(),
            };
            let raw = postcard::to_stdvec(&wire).expect("a plan chunk serializes");
            let bytes = zstd::bulk::compress(&raw, ZSTD_LEVEL).expect("zstd compresses in memory");
            let sha = sha256_hex(&bytes);
            let location = format!("chunks/{sha}.bin");
            refs.push(ChunkRef {
                first_step: part[0].step,
                last_step: part[part.len() - 1].step,
                sha256: sha,
                bytes: bytes.len() as u64,
                location: location.clone(),
            });
            chunks.push((location, bytes));
        }
        let mut epoch_starts = Vec::new();
        for b in &self.batches {
            while epoch_starts.len() as u64 <= b.epoch {
                epoch_starts.push(b.step);
            }
        }
        let manifest = PlanManifest {
            version: DATA_PLAN_VERSION,
            global_batch_size: self.global_batch_size,
            total_steps: self.batches.len() as u64,
            chunk_steps,
            epoch_starts,
            datasets: self
                .datasets
                .iter()
                .map(|d| ManifestDataset {
                    dataset: d.dataset.clone(),
                    columns: d.columns.clone(),
                    files: d.files.clone(),
                    train_rows: d.rows.len() as u64,
                    labelled: !d.labels.is_empty(),
                    hub: d.hub.clone(),
                    dev: d.dev.clone(),
                })
                .collect(),
            chunks: refs,
        };
        let manifest_bytes = serde_json::to_vec(&manifest).expect("a plan manifest serializes");
        let manifest_sha256 = sha256_hex(&manifest_bytes);
        PlanArtifact { manifest, manifest_bytes, manifest_sha256, chunks }
    }

    /// Writes the plan under `<output>/data-plan/`: the chunks first, then the manifest
    /// `<sha256>.json`, so a published manifest never names a missing chunk. Content-addressed: publishing
    /// the same plan again rewrites the same objects, a changed plan never overwrites an old one.
    pub async fn publish(&self, output: &Location, chunk_steps: u64) -> Result<DataPlanRef, DataError> {
        let a = self.to_artifact(chunk_steps);
        let put = |rel: String, bytes: Vec<u8>| async move {
            output
                .store()
                .put(&output.child(&rel), PutPayload::from(bytes))
                .await
                .map_err(|source| DataError::Store(StoreError::ObjectStore { location: output.url_of(&rel), source }))
        };
        for (rel, bytes) in a.chunks {
            put(format!("data-plan/{rel}"), bytes).await?;
        }
        let rel = format!("data-plan/{}.json", a.manifest_sha256);
        put(rel.clone(), a.manifest_bytes).await?;
        Ok(DataPlanRef { location: output.url_of(&rel), sha256: a.manifest_sha256 })
    }
}

/// A published plan's manifest, verified, with where it was read from (chunk locations are relative to it).
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedPlan {
    /// What the job's assignment points at.
    pub reference: DataPlanRef,
    /// The verified manifest.
    pub manifest: PlanManifest,
    /// Bytes of the manifest as fetched.
    pub manifest_bytes: u64,
}

async fn get_bytes(url: &str, options: &StoreOptions) -> Result<bytes::Bytes, DataError> {
    let loc = Location::parse_with(url, options)?;
    let err = |source| DataError::Store(StoreError::ObjectStore { location: url.to_string(), source });
    let got = loc.store().get(loc.prefix()).await.map_err(err)?;
    got.bytes().await.map_err(err)
}

fn check_sha(location: &str, bytes: &[u8], sha256: &str, points: &str) -> Result<(), DataError> {
    let actual = sha256_hex(bytes);
    if !actual.eq_ignore_ascii_case(sha256) {
        return Err(DataError::PlanArtifact {
            location: location.into(),
            problem: format!(
                "its sha256 is {actual} but {points} says {sha256} (changed or truncated since it was published); re-plan: start a new job, or delete the job's data-plan/ so the coordinator publishes it again"
            ),
        });
    }
    Ok(())
}

impl PublishedPlan {
    /// Reads the manifest `r` points at and checks it: its sha256 must match and its version be
    /// [`DATA_PLAN_VERSION`]. Errors name the location, what differs and what to do.
    pub async fn fetch(r: &DataPlanRef, options: &StoreOptions) -> Result<PublishedPlan, DataError> {
        let bytes = get_bytes(&r.location, options).await?;
        Self::from_bytes(r, &bytes)
    }

    /// [`PublishedPlan::fetch`] on bytes already read from `r.location`.
    pub fn from_bytes(r: &DataPlanRef, bytes: &[u8]) -> Result<PublishedPlan, DataError> {
        let bad = |problem: String| DataError::PlanArtifact { location: r.location.clone(), problem };
        check_sha(&r.location, bytes, &r.sha256, "the assignment")?;
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        // The version alone first: another version's layout would not parse as this one.
        let v: Version = serde_json::from_slice(bytes).map_err(|e| bad(format!("not a data plan manifest ({e})")))?;
        if v.version != DATA_PLAN_VERSION {
            return Err(bad(format!(
                "version {} but this build reads version {DATA_PLAN_VERSION}; run the coordinator and workers of one release (a new job re-plans)",
                v.version
            )));
        }
        let manifest: PlanManifest =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a data plan manifest ({e})")))?;
        let mut next = 1;
        for c in &manifest.chunks {
            if c.first_step != next || c.last_step < c.first_step {
                next = 0;
                break;
            }
            next = c.last_step + 1;
        }
        if next != manifest.total_steps + 1 {
            return Err(bad(format!("its chunks do not cover steps 1..={} in order", manifest.total_steps)));
        }
        Ok(PublishedPlan { reference: r.clone(), manifest, manifest_bytes: bytes.len() as u64 })
    }

    /// The URL of chunk `i`.
    pub fn chunk_url(&self, i: usize) -> String {
        let base = self.reference.location.rsplit_once('/').map_or("", |(b, _)| b);
        format!("{base}/{}", self.manifest.chunks[i].location)
    }

    /// The chunk holding `step`, if the plan has that step.
    pub fn chunk_of(&self, step: u64) -> Option<usize> {
        let i = self.manifest.chunks.partition_point(|c| c.last_step < step);
        (i < self.manifest.chunks.len() && self.manifest.chunks[i].first_step <= step).then_some(i)
    }

    /// The epoch of `step`, if the plan has that step.
    pub fn epoch_of(&self, step: u64) -> Option<u64> {
        if step == 0 || step > self.manifest.total_steps {
            return None;
        }
        Some(self.manifest.epoch_starts.partition_point(|&s| s <= step).saturating_sub(1) as u64)
    }

    /// Fetches chunk `i` and checks it against the manifest (sha256, step range, datasets, batch size);
    /// returns it and the bytes fetched.
    pub async fn fetch_chunk(&self, i: usize, options: &StoreOptions) -> Result<(PlanChunk, u64), DataError> {
        let url = self.chunk_url(i);
        let bytes = get_bytes(&url, options).await?;
        Ok((self.decode_chunk(i, &url, &bytes)?, bytes.len() as u64))
    }

    /// Decodes chunk `i`'s bytes read from `url`, checking them against the manifest.
    pub fn decode_chunk(&self, i: usize, url: &str, bytes: &[u8]) -> Result<PlanChunk, DataError> {
        let c = &self.manifest.chunks[i];
        let bad = |problem: String| DataError::PlanArtifact { location: url.to_string(), problem };
        check_sha(url, bytes, &c.sha256, &format!("the manifest {}", self.reference.location))?;
        let raw = zstd::stream::decode_all(bytes).map_err(|e| bad(format!("not a zstd plan chunk ({e})")))?;
        let wire: WireChunk = postcard::from_bytes(&raw).map_err(|e| bad(format!("not a plan chunk ({e})")))?;
        if wire.version != DATA_PLAN_VERSION {
            return Err(bad(format!("version {} but this build reads version {DATA_PLAN_VERSION}", wire.version)));
        }
        let n = c.last_step + 1 - c.first_step;
        if wire.first_step != c.first_step || wire.batches.len() as u64 != n {
            return Err(bad(format!(
                "holds {} steps from step {} but the manifest says steps {}..={}",
                wire.batches.len(),
                wire.first_step,
                c.first_step,
                c.last_step
            )));
        }
        let mut batches = Vec::with_capacity(wire.batches.len());
        for (k, b) in wire.batches.into_iter().enumerate() {
            let step = c.first_step + k as u64;
            let d = self.manifest.datasets.get(b.dataset as usize).ok_or_else(|| {
                bad(format!("step {step} names dataset {} of {}", b.dataset, self.manifest.datasets.len()))
            })?;
            let rows_ok = b.rows.len() == self.manifest.global_batch_size && b.locs.len() == b.rows.len();
            let labels_ok = if d.labelled { b.labels.len() == b.rows.len() } else { b.labels.is_empty() };
            if !rows_ok || !labels_ok || b.locs.iter().any(|l| l.file() >= d.files.len()) {
                return Err(bad(format!(
                    "step {step} has {} rows, {} locations and {} labels for a global batch of {} (dataset `{}`, {} files)",
                    b.rows.len(),
                    b.locs.len(),
                    b.labels.len(),
                    self.manifest.global_batch_size,
                    d.dataset,
                    d.files.len()
                )));
            }
            batches.push(ChunkBatch {
                batch: PlannedBatch {
                    step,
                    epoch: b.epoch,
                    dataset: d.dataset.clone(),
                    rows: b.rows.into_iter().map(|r| r as usize).collect(),
                },
                locs: b.locs,
                labels: b.labels,
            });
        }
        Ok(PlanChunk { batches })
    }

    /// Every chunk's batches: the whole plan (for `--dump-batches` and tests; a worker fetches chunks as it
    /// trains instead). Returns the plan and the bytes fetched.
    pub async fn fetch_batch_plan(&self, options: &StoreOptions) -> Result<(BatchPlan, u64), DataError> {
        let mut batches = Vec::new();
        let mut read = 0;
        for i in 0..self.manifest.chunks.len() {
            let (c, n) = self.fetch_chunk(i, options).await?;
            read += n;
            batches.extend(c.batches.into_iter().map(|b| b.batch));
        }
        Ok((BatchPlan { batches }, read))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{load_training_data, plan_inputs, Example, RangedReader};

    /// Two datasets with labels (JSONL and gzip JSONL), round-robin, 10 steps of 4 rows over two epochs.
    async fn plan_of_two_datasets(dir: &std::path::Path) -> (DataPlan, Vec<crate::data::SplitDataset>) {
        let mut a = String::new();
        for i in 0..12 {
            a.push_str(&format!("{{\"anchor\": \"qa{i}\", \"positive\": \"pa{i}\", \"label\": [{i}.5, 1]}}\n"));
        }
        std::fs::write(dir.join("a.jsonl"), a).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        for i in 0..30 {
            std::io::Write::write_all(&mut gz, format!("{{\"anchor\": \"qb{i}\", \"positive\": \"pb{i}\", \"label\": [{i}, 2]}}\n").as_bytes()).unwrap();
        }
        std::fs::write(dir.join("b.jsonl.gz"), gz.finish().unwrap()).unwrap();
        let yaml = format!(
            "model:\n  base_model: x\ntraining:\n  max_steps: 10\n  per_device_train_batch_size: 4\n  batch_sampler: no_duplicates\n  output_dir: {d}/out\ndatasets:\n  sampling_strategy: round_robin\n  b:\n    source: {d}/b.jsonl.gz\n    split_ratio: 0.1\n  a:\n    source: {d}/a.jsonl\n",
            d = dir.display()
        );
        let config = crate::config::Config::from_str(&yaml, "inline").unwrap();
        let split = load_training_data(config.datasets.enabled(), config.training.seed, &StoreOptions::default()).await.unwrap();
        let plan = DataPlan::build(&config.plan_spec(4), split.iter().map(crate::data::ScannedDataset::from_split).collect()).unwrap();
        assert_eq!(plan.plan(), BatchPlan::build(&plan_inputs(&split), &config.plan_spec(4)).unwrap());
        (plan, split)
    }

    #[tokio::test]
    async fn published_plan_round_trips_chunk_by_chunk_and_reads_the_planned_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (plan, split) = plan_of_two_datasets(dir.path()).await;
        assert_eq!(plan.batches.len(), 10);
        assert!(plan.batches.iter().any(|b| b.epoch > 0), "the plan spans epochs");
        let out = Location::parse(&format!("{}/out", dir.path().display())).unwrap();
        let r = plan.publish(&out, 4).await.unwrap();
        assert!(r.location.ends_with(&format!("/out/data-plan/{}.json", r.sha256)), "{}", r.location);
        // Publishing is deterministic: the same plan, the same manifest.
        assert_eq!(plan.publish(&out, 4).await.unwrap(), r);

        let p = PublishedPlan::fetch(&r, &StoreOptions::default()).await.unwrap();
        let m = &p.manifest;
        assert_eq!((m.version, m.global_batch_size, m.total_steps, m.chunk_steps), (DATA_PLAN_VERSION, 4, 10, 4));
        let ranges: Vec<(u64, u64)> = m.chunks.iter().map(|c| (c.first_step, c.last_step)).collect();
        assert_eq!(ranges, vec![(1, 4), (5, 8), (9, 10)]);
        for (d, want) in m.datasets.iter().zip(&plan.datasets) {
            assert_eq!((&d.dataset, &d.columns, &d.files), (&want.dataset, &want.columns, &want.files));
            assert_eq!((d.train_rows, d.labelled), (want.rows.len() as u64, true));
        }
        // Every chunk holds its steps' batches, each row's location and label: what the in-memory plan says.
        let mut reader = RangedReader::new(m.datasets.iter().map(ManifestDataset::reader_index), StoreOptions::default());
        let mut total_bytes = 0;
        for (i, c) in m.chunks.iter().enumerate() {
            let (chunk, n) = p.fetch_chunk(i, &StoreOptions::default()).await.unwrap();
            assert_eq!(n, c.bytes);
            total_bytes += n;
            for (k, got) in chunk.batches.iter().enumerate() {
                let step = c.first_step + k as u64;
                assert_eq!(p.chunk_of(step), Some(i));
                let want = &plan.batches[step as usize - 1];
                assert_eq!(&got.batch, want, "step {step}");
                assert_eq!(p.epoch_of(step), Some(want.epoch));
                let index = plan.dataset(&want.dataset).unwrap();
                assert_eq!(got.locs, want.rows.iter().map(|&r| index.rows[r]).collect::<Vec<_>>());
                assert_eq!(got.labels, want.rows.iter().map(|&r| index.labels[r].clone()).collect::<Vec<_>>());
                // The locations read back as the loaded training rows.
                let loaded = split.iter().find(|d| d.name == want.dataset).unwrap();
                let records = reader.read_locs(&want.dataset, &got.locs).await.unwrap();
                assert_eq!(records, want.rows.iter().map(|&r| loaded.train[r].clone()).collect::<Vec<Example>>());
            }
        }
        assert_eq!((p.chunk_of(0), p.chunk_of(11), p.epoch_of(11)), (None, None, None));
        assert_eq!(p.fetch_batch_plan(&StoreOptions::default()).await.unwrap(), (plan.plan(), total_bytes));
        let json = serde_json::to_vec(&plan).unwrap().len();
        eprintln!("plan: {json} bytes as version-1 JSON; manifest {} bytes + chunks {total_bytes} bytes", p.manifest_bytes);
    }

    #[tokio::test]
    async fn a_tampered_chunk_or_manifest_and_another_version_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (plan, _) = plan_of_two_datasets(dir.path()).await;
        let out = Location::parse(&format!("{}/out", dir.path().display())).unwrap();
        let r = plan.publish(&out, 4).await.unwrap();
        let p = PublishedPlan::fetch(&r, &StoreOptions::default()).await.unwrap();

        // A chunk whose bytes are not the ones the manifest names.
        let chunk_path = dir.path().join("out/data-plan").join(&p.manifest.chunks[1].location);
        let good = std::fs::read(&chunk_path).unwrap();
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        std::fs::write(&chunk_path, &bad).unwrap();
        let e = p.fetch_chunk(1, &StoreOptions::default()).await.unwrap_err().to_string();
        let sha = &p.manifest.chunks[1].sha256;
        assert!(
            e.starts_with(&format!("data plan `{}`: its sha256 is ", p.chunk_url(1)))
                && e.contains(&format!("but the manifest {} says {sha}", r.location))
                && e.contains("re-plan"),
            "{e}"
        );
        // The other chunks still verify.
        p.fetch_chunk(0, &StoreOptions::default()).await.unwrap();
        std::fs::write(&chunk_path, &good).unwrap();
        p.fetch_chunk(1, &StoreOptions::default()).await.unwrap();

        // A reference with another sha256, and a missing manifest.
        let wrong = DataPlanRef { sha256: "0".repeat(64), ..r.clone() };
        let e = PublishedPlan::fetch(&wrong, &StoreOptions::default()).await.unwrap_err().to_string();
        assert!(e.starts_with(&format!("data plan `{}`: its sha256 is {} but the assignment says 0000", r.location, r.sha256)), "{e}");
        let missing = DataPlanRef { location: format!("{}/out/data-plan/none.json", dir.path().display()), ..r.clone() };
        let e = PublishedPlan::fetch(&missing, &StoreOptions::default()).await.unwrap_err().to_string();
        assert!(e.contains("none.json"), "{e}");

        // A version-1 artifact (the whole plan as one JSON file), verified by its sha256, is refused by version.
        let mut v1 = serde_json::to_value(&plan).unwrap();
        v1["version"] = 1.into();
        let bytes = serde_json::to_vec(&v1).unwrap();
        let v1_ref = DataPlanRef { location: "old.json".into(), sha256: sha256_hex(&bytes) };
        let e = PublishedPlan::from_bytes(&v1_ref, &bytes).unwrap_err().to_string();
        assert_eq!(
            e,
            "data plan `old.json`: version 1 but this build reads version 2; run the coordinator and workers of one release (a new job re-plans)"
        );
    }
}
