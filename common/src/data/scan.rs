//! The streaming pass: one read of every file of every dataset builds what planning needs, a fixed, small
//! number of bytes per row whatever the length of its texts ([`PlanDataset`]'s text hashes and lengths, the
//! [`RecordIndex`]'s location and label), without holding the texts.
//!
//! - JSONL: line by line through a buffered reader (local files through `std::fs::File`, object-store files
//!   in ranged GETs of [`READ_CHUNK`] bytes), never the whole file in memory; a record is its line's byte
//!   range.
//! - Parquet: row group by row group, only the mapped columns (the `parquet` crate over the local file, or
//!   over ranged GETs of the object).
//! - gzip JSONL, member by member with `flate2`'s `bufread::GzDecoder` (chosen over `noodles-bgzf` because it
//!   reads any multi-member gzip, `bgzip` output and concatenated `gzip` files alike, and `flate2` is already
//!   here). A file of several members is recorded as [`DataFormat::JsonlBgzf`]: a record's
//!   [`RecordLoc`] is `(file, compressed offset of the member its line starts in, offset in that member's
//!   output << 32 | line length)`, so a ranged read fetches and decompresses only that member (and the next
//!   ones while the line goes on). A single-member file stays [`DataFormat::JsonlGz`] with offsets in the
//!   decompressed stream (read whole, once, by a worker), and so any member larger than
//!   [`ScanLimits::gzip_member_bytes`] (256 MiB) is refused with the fix.
//! - CSV/TSV: streamed into the summaries as well (the rows are summarised as parsed, no texts kept), but
//!   each file's bytes are read whole, one file at a time, because `csv_reader` parses records (quoted fields
//!   may span lines) against the header from bytes in memory; a record is its byte range, as a worker reads it.
//!
//! The split needs only the row count (the seeded permutation, [`super::eval_mask`]); held-out rows, few by
//! design, are read back by their locations when asked for ([`scan_training_data`]'s `read_eval`).
//!
//! Guarantees: for any input, [`scan_training_data`] gives the summaries, index and held-out rows that
//! [`ScannedDataset::from_split`] gives from [`super::load_training_data`]'s fully loaded rows (the same
//! readers parse the records; the summaries come from the same [`PlanDataset::push`]), so the plans are equal.

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;
use parquet::file::reader::{ChunkReader, Length, SerializedFileReader};

use super::index::{IndexedFile, RecordIndex, RecordLoc};
use super::plan::{retain_by, PlanDataset};
use super::source::SourceFile;
use super::spec::{DataFormat, DatasetSpec};
use super::{format_of, jsonl, loaders, parquet_reader, source, Collector, ColumnMap, DataError, Example, HubPin, SplitDataset};
use crate::store::StoreOptions;

/// Bytes fetched per GET when an object-store file is streamed.
pub const READ_CHUNK: u64 = 8 * 1024 * 1024;

/// Limits of the streaming pass.
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    /// The largest gzip member (compressed bytes) accepted: a worker would fetch and decompress a member this
    /// large for any one record of it. 256 MiB.
    pub gzip_member_bytes: u64,
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits { gzip_member_bytes: 256 * 1024 * 1024 }
    }
}

/// Per-row summaries taken while reading ([`Collector::summaries`]): the planner's inputs and the labels.
#[derive(Debug)]
pub(crate) struct Summaries {
    pub plan: PlanDataset,
    /// One per row once any row had a label (earlier rows filled with `None`); empty before.
    pub labels: Vec<Option<Vec<f32>>>,
}

impl Summaries {
    fn new(name: &str) -> Summaries {
        Summaries { plan: PlanDataset::new(name), labels: Vec::new() }
    }

    /// Takes one record's summary; the record's texts are dropped here.
    pub(crate) fn push(&mut self, e: Example) {
        self.plan.push(&e);
        if e.label.is_some() && self.labels.is_empty() {
            self.labels.resize(self.plan.len - 1, None);
        }
        if e.label.is_some() || !self.labels.is_empty() {
            self.labels.push(e.label);
        }
    }
}

/// One dataset after the streaming pass and the split: everything planning and training need, at a fixed
/// few bytes per training row, plus the held-out rows when they were read.
#[derive(Debug, Clone, PartialEq)]
pub struct ScannedDataset {
    /// Config name.
    pub name: String,
    /// The planner's summary of each training row.
    pub summary: PlanDataset,
    /// Where each training row lives, and its label.
    pub index: RecordIndex,
    /// Held-out rows (`split_ratio`, or a seed loader block's dev split) when read, else empty.
    pub eval: Vec<Example>,
    /// How many rows are held out (also when they were not read).
    pub eval_len: usize,
    /// Bad records skipped.
    pub bad_records: usize,
    /// The Hub commits its rows come from (the source's for a file block, every dataset a seed loader block
    /// read; also in [`RecordIndex::hub`]). Empty for local and object-store data.
    pub hub: Vec<HubPin>,
}

impl ScannedDataset {
    /// The same from fully loaded rows (the in-memory path): summaries through [`PlanDataset::push`].
    pub fn from_split(d: &SplitDataset) -> ScannedDataset {
        ScannedDataset {
            name: d.name.clone(),
            summary: PlanDataset::from_examples(&d.name, &d.train),
            index: d.index.clone(),
            eval: d.eval.clone(),
            eval_len: d.eval.len(),
            bad_records: d.bad_records,
            hub: d.hub.clone(),
        }
    }

    /// Training rows.
    pub fn train_len(&self) -> usize {
        self.summary.len
    }
}

/// One dataset's records, summarised, before the split.
struct Scanned {
    summaries: Summaries,
    locs: Vec<RecordLoc>,
    files: Vec<IndexedFile>,
    bad: usize,
    hub: Vec<HubPin>,
}

/// Streams every file of dataset `name` once (see the module docs).
async fn scan_dataset(name: &str, spec: &DatasetSpec, options: &StoreOptions, limits: &ScanLimits) -> Result<Scanned, DataError> {
    let columns =
        ColumnMap::from_config(&spec.columns).map_err(|problem| DataError::Columns { dataset: name.into(), problem })?;
    let resolved = source::resolve(name, &spec.source, spec.config.as_deref(), spec.split.as_deref(), options).await?;
    let mut sink = Collector::new(name, spec.on_bad_record, spec.max_samples);
    sink.summaries = Some(Summaries::new(name));
    let mut files = Vec::new();
    for file in &resolved.files {
        if sink.full() {
            break;
        }
        let display = file.display();
        let format = format_of(name, &display, spec.format)?;
        sink.file = files.len() as u32;
        // The fingerprint (size, last-modified, ETag) before the read: a file that changes meanwhile is refused
        // at its first ranged read, never indexed with a newer fingerprint than its rows.
        let meta = file.head().await?;
        let format = match file {
            SourceFile::Local(p) => {
                let open = std::fs::File::open(p).map_err(|e| DataError::Read { file: display.clone(), message: e.to_string() })?;
                match format {
                    DataFormat::Parquet => {
                        let reader = SerializedFileReader::new(open).map_err(|e| parquet_reader::read_err(&display, e))?;
                        parquet_reader::read_groups(&display, &reader, &columns, None, &mut sink)?;
                        format
                    }
                    DataFormat::Csv | DataFormat::Tsv => read_csv_file(&display, format, file, &columns, &mut sink).await?,
                    _ => read_jsonl_file(&display, format, open, &columns, &mut sink, limits)?,
                }
            }
            SourceFile::Remote { location, key, url } => {
                let remote = RemoteFile { store: location.store().clone(), key: key.clone(), url: url.clone(), size: meta.size };
                match format {
                    DataFormat::Parquet => {
                        let reader = SerializedFileReader::new(remote).map_err(|e| parquet_reader::read_err(&display, e))?;
                        parquet_reader::read_groups(&display, &reader, &columns, None, &mut sink)?;
                        format
                    }
                    DataFormat::Csv | DataFormat::Tsv => read_csv_file(&display, format, file, &columns, &mut sink).await?,
                    _ => read_jsonl_file(&display, format, remote.reader_from(0), &columns, &mut sink, limits)?,
                }
            }
        };
        files.push(IndexedFile::from_meta(display, format, &meta));
    }
    if sink.locs.is_empty() {
        return Err(DataError::Empty { dataset: name.into(), source_path: spec.source.clone(), skipped: sink.bad });
    }
    if sink.bad > 0 {
        tracing::warn!(dataset = name, skipped = sink.bad, "bad records skipped (on_bad_record: skip)");
    }
    let summaries = sink.summaries.take().expect("set above");
    Ok(Scanned { summaries, locs: sink.locs, files, bad: sink.bad, hub: resolved.hub.into_iter().collect() })
}

/// [`super::load_training_data`] without loading: streams and splits `datasets` (name and spec, in the order
/// given) with `seed`; with `read_eval` the held-out rows are read back by location (a seed loader block's
/// dev split is read whole: it is small). Seed loader blocks are materialised first, as there.
pub async fn scan_training_data<'a>(
    datasets: impl IntoIterator<Item = (&'a str, &'a DatasetSpec)>,
    seed: u64,
    options: &StoreOptions,
    read_eval: bool,
) -> Result<Vec<ScannedDataset>, DataError> {
    let datasets: Vec<(&str, &DatasetSpec)> = datasets.into_iter().collect();
    let pins = datasets.iter().flat_map(|(_, s)| s.hub_commits.clone()).collect();
    let hub = if datasets.iter().any(|(_, s)| s.loader.is_some()) { Some(loaders::hub_split_files(pins)?) } else { None };
    let files = hub.as_deref().map(|h| (h, loaders::cache_root()));
    scan_training_data_from(datasets, seed, options, files.as_ref().map(|(h, c)| (*h, c.as_path())), read_eval, &ScanLimits::default())
        .await
}

/// [`scan_training_data`] with the seed loader blocks' Hub files and cache root given, and the limits.
pub async fn scan_training_data_from<'a>(
    datasets: impl IntoIterator<Item = (&'a str, &'a DatasetSpec)>,
    seed: u64,
    options: &StoreOptions,
    seed_files: Option<(&dyn loaders::SplitFiles, &std::path::Path)>,
    read_eval: bool,
    limits: &ScanLimits,
) -> Result<Vec<ScannedDataset>, DataError> {
    let mut out = Vec::new();
    for (name, spec) in datasets {
        let (scanned, spec, dev, dev_file) = match &spec.loader {
            Some(loader) => {
                let m = loaders::materialize_block(name, loader, seed_files)?;
                let train_spec = loaders::Materialized::file_spec(&m.train);
                let scanned = scan_dataset(name, &train_spec, options, limits).await?;
                let dev_file = (m.rows[1] > 0).then(|| m.dev.display().to_string());
                let dev = if m.rows[1] == 0 {
                    (Vec::new(), 0)
                } else if read_eval {
                    let d = super::load_dataset(name, &loaders::Materialized::file_spec(&m.dev), options).await?.examples;
                    let n = d.len();
                    (d, n)
                } else {
                    (Vec::new(), m.rows[1])
                };
                let scanned = Scanned { hub: m.hub, ..scanned };
                (scanned, train_spec, Some(dev), dev_file)
            }
            None => (scan_dataset(name, spec, options, limits).await?, spec.clone(), None, None),
        };
        let Scanned { summaries: Summaries { plan: mut summary, labels: mut train_labels }, mut locs, files, bad, hub } = scanned;
        let n = locs.len();
        let is_eval = super::eval_mask(name, n, spec.split_ratio, seed);
        let keep: Vec<bool> = is_eval.iter().map(|e| !e).collect();
        let eval_locs: Vec<RecordLoc> = locs.iter().zip(&is_eval).filter(|(_, e)| **e).map(|(l, _)| *l).collect();
        summary.retain_rows(&keep);
        retain_by(&mut locs, &keep);
        if !train_labels.is_empty() {
            retain_by(&mut train_labels, &keep);
            if train_labels.iter().all(Option::is_none) {
                train_labels = Vec::new();
            }
        }
        drop(keep);
        drop(is_eval);
        let index = RecordIndex {
            dataset: name.into(),
            columns: spec.columns.clone(),
            files,
            rows: locs,
            labels: train_labels,
            hub: hub.clone(),
            dev: dev_file,
        };
        let (eval, eval_len) = match dev {
            Some(d) => d,
            None if read_eval && !eval_locs.is_empty() => {
                let held_out = RecordIndex { rows: eval_locs, labels: Vec::new(), ..index.clone_without_rows() };
                let n = held_out.rows.len();
                let mut reader = super::RangedReader::new([held_out], options.clone());
                let rows: Vec<usize> = (0..n).collect();
                (reader.read_rows(name, &rows).await?, n)
            }
            None => (Vec::new(), eval_locs.len()),
        };
        out.push(ScannedDataset { name: name.to_string(), summary, index, eval, eval_len, bad_records: bad, hub });
    }
    Ok(out)
}

impl RecordIndex {
    /// The same dataset, files and columns with no rows (to index another set of its rows).
    fn clone_without_rows(&self) -> RecordIndex {
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

/// Reads one CSV or TSV file into `sink`. Its rows are summarised as they are parsed (the sink holds no
/// texts), but the file itself is read whole, one file at a time: `csv_reader` parses a record with the
/// header and quoted fields that may span lines, from bytes in memory. CSV/TSV is the seed's small-data format;
/// large datasets belong in JSONL, BGZF or Parquet, which this pass streams.
async fn read_csv_file(
    display: &str,
    format: DataFormat,
    file: &SourceFile,
    columns: &ColumnMap,
    sink: &mut Collector<'_>,
) -> Result<DataFormat, DataError> {
    let bytes = file.read().await?;
    super::csv_reader::read(display, &bytes, format.delimiter().expect("csv"), columns, sink)?;
    Ok(format)
}

/// Reads one JSONL file (plain, or gzip member by member) into `sink`; returns the format to record for it
/// ([`DataFormat::JsonlBgzf`] for a gzip file of several members, whose locations then point into members).
pub(crate) fn read_jsonl_file<R: Read>(
    file: &str,
    format: DataFormat,
    input: R,
    columns: &ColumnMap,
    sink: &mut Collector,
    limits: &ScanLimits,
) -> Result<DataFormat, DataError> {
    if format == DataFormat::Jsonl {
        jsonl::read(file, input, columns, sink)?;
        return Ok(format);
    }
    let first = sink.locs.len();
    let mut members = Members::new(BufReader::with_capacity(1 << 20, input), limits.gzip_member_bytes);
    let read = jsonl::read(file, &mut members, columns, sink);
    if let Some(at) = members.too_big {
        return Err(DataError::Read {
            file: file.into(),
            message: format!(
                "the gzip member at byte {at} is larger than {} MiB: a worker would fetch and decompress all of it for any \
                 one record; compress the file with `bgzip` (gzip members of 64 KiB, each readable on its own), split it \
                 into files under {} MiB, or convert it to Parquet",
                limits.gzip_member_bytes >> 20,
                limits.gzip_member_bytes >> 20
            ),
        });
    }
    read?;
    if members.starts.len() <= 1 {
        return Ok(DataFormat::JsonlGz);
    }
    // Stream offsets → (member, offset in it): the last member starting at or before the line (an empty
    // member shares its start with the next one, which is the one holding the line).
    for loc in &mut sink.locs[first..] {
        let m = members.starts.partition_point(|&(_, out)| out <= loc.1) - 1;
        let (at, out) = members.starts[m];
        let inner = loc.1 - out;
        if inner >= 1 << 32 || loc.2 >= 1 << 32 {
            return Err(DataError::Read {
                file: file.into(),
                message: format!(
                    "a gzip member decompresses to more than 4 GiB or a line is longer than 4 GiB (at byte {at}); \
                     compress it with `bgzip`, split it, or convert it to Parquet"
                ),
            });
        }
        *loc = RecordLoc(loc.0, at, inner << 32 | loc.2);
    }
    Ok(DataFormat::JsonlBgzf)
}

/// Counts the bytes consumed from a buffered reader (the compressed offset a gzip member starts at).
struct Counting<R> {
    inner: R,
    pos: u64,
}

impl<R: BufRead> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counting<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.pos += amt as u64;
        self.inner.consume(amt);
    }
}

/// The decompressed stream of a gzip file, member after member, recording where each member starts in the
/// file and in the stream (`flate2::bufread::GzDecoder` consumes exactly one member from a `BufRead`).
struct Members<R: BufRead> {
    input: Option<Counting<R>>,
    decoder: Option<flate2::bufread::GzDecoder<Counting<R>>>,
    /// (compressed offset, stream offset) of each member, in order.
    starts: Vec<(u64, u64)>,
    out: u64,
    limit: u64,
    /// The compressed offset of a member over the limit, when one was met.
    too_big: Option<u64>,
}

impl<R: BufRead> Members<R> {
    fn new(input: R, limit: u64) -> Self {
        Members { input: Some(Counting { inner: input, pos: 0 }), decoder: None, starts: Vec::new(), out: 0, limit, too_big: None }
    }
}

impl<R: BufRead> Read for Members<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(d) = &mut self.decoder {
                let n = d.read(buf)?;
                let start = self.starts.last().expect("a member is open").0;
                if d.get_ref().pos - start > self.limit {
                    self.too_big = Some(start);
                    return Err(std::io::Error::other("gzip member too large"));
                }
                if n > 0 {
                    self.out += n as u64;
                    return Ok(n);
                }
                self.input = Some(self.decoder.take().expect("open").into_inner());
            }
            let input = self.input.as_mut().expect("between members");
            if input.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.starts.push((input.pos, self.out));
            self.decoder = Some(flate2::bufread::GzDecoder::new(self.input.take().expect("between members")));
        }
    }
}

/// Decompresses `compressed` (bytes from the start of a member on) member after member until `end` bytes of
/// output exist; returns them, or `None` when `compressed` ends first (fetch more).
pub(crate) fn members_prefix(compressed: &[u8], end: usize) -> Result<Option<Vec<u8>>, std::io::Error> {
    let mut dec = flate2::bufread::MultiGzDecoder::new(compressed);
    let mut out = vec![0u8; end];
    let mut got = 0;
    while got < end {
        match dec.read(&mut out[got..]) {
            Ok(0) => return Ok(None),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(out))
}

/// An object-store file read through ranged GETs: a Parquet [`ChunkReader`], or a stream from an offset.
#[derive(Clone)]
struct RemoteFile {
    store: Arc<dyn ObjectStore>,
    key: ObjPath,
    url: String,
    size: u64,
}

impl RemoteFile {
    fn get(&self, range: std::ops::Range<u64>) -> std::io::Result<Bytes> {
        let (store, key) = (self.store.clone(), self.key.clone());
        crate::runtime::block_on(async move { store.get_range(&key, range).await })
            .map_err(|e| std::io::Error::other(format!("{}: {e}", self.url)))
    }

    fn reader_from(&self, pos: u64) -> RemoteReader {
        RemoteReader { file: self.clone(), pos, buf: Bytes::new(), end: self.size }
    }
}

/// Reads a [`RemoteFile`] from `pos` to `end` in [`READ_CHUNK`] GETs.
struct RemoteReader {
    file: RemoteFile,
    pos: u64,
    buf: Bytes,
    end: u64,
}

impl Read for RemoteReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buf.is_empty() {
            if self.pos >= self.end {
                return Ok(0);
            }
            let to = (self.pos + READ_CHUNK).min(self.end);
            self.buf = self.file.get(self.pos..to)?;
            if self.buf.is_empty() {
                return Ok(0);
            }
            self.pos += self.buf.len() as u64;
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        bytes::Buf::advance(&mut self.buf, n);
        Ok(n)
    }
}

impl Length for RemoteFile {
    fn len(&self) -> u64 {
        self.size
    }
}

impl ChunkReader for RemoteFile {
    type T = RemoteReader;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(self.reader_from(start))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.get(start..start + length as u64).map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
    }
}

/// Gives the heap memory freed so far back to the system. glibc keeps freed heap pages for reuse, so after a
/// plan is built the process would stay as large as the build's peak, and a container memory limit counts
/// that all the same; `malloc_trim(0)` releases them. Called after planning (coordinator, `splade train`).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; it takes no pointer from us.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use object_store::PutPayload;

    use super::*;
    use crate::data::plan::{BatchPlan, PlanSpec, PlanStop};
    use crate::data::spec::{BatchSamplerKind, OnBadRecord, SamplingStrategy};
    use crate::data::tests::{write_parquet, Col};
    use crate::data::{load_training_data_from, DataPlan, RangedReader};
    use crate::store::Location;

    /// One BGZF block as `bgzip` writes it: a gzip member whose header carries the `BC` extra field with the
    /// member's size (SAM/BAM specification, section 4.1).
    fn bgzf_block(data: &[u8]) -> Vec<u8> {
        let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        d.write_all(data).unwrap();
        let cdata = d.finish().unwrap();
        let bsize = (18 + cdata.len() + 8 - 1) as u16;
        let mut out = vec![31, 139, 8, 4, 0, 0, 0, 0, 0, 255, 6, 0, b'B', b'C', 2, 0];
        out.extend(bsize.to_le_bytes());
        out.extend(cdata);
        let mut crc = flate2::Crc::new();
        crc.update(data);
        out.extend(crc.sum().to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out
    }

    /// `data` as BGZF: blocks of `block` input bytes (cut mid-line, as bgzip does) and the empty EOF block.
    fn bgzf(data: &[u8], block: usize) -> Vec<u8> {
        let mut out: Vec<u8> = data.chunks(block).flat_map(bgzf_block).collect();
        out.extend(bgzf_block(&[]));
        out
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Texts of varied length (for `group_by_length`) with repeats (for `no_duplicates`).
    fn text(kind: &str, i: usize) -> String {
        format!("{kind} {} {}", i % 37, "lorem ipsum ".repeat(1 + (i * 7919) % 23))
    }

    fn jsonl_lines(kind: &str, n: usize, labels: bool) -> String {
        let mut s = String::new();
        for i in 0..n {
            let label = if labels { format!(", \"label\": [{i}.5, 1]") } else { String::new() };
            s.push_str(&format!(
                "{{\"anchor\": \"{}\", \"positive\": \"{}\", \"negative\": \"{}\"{label}}}\n",
                text(&format!("{kind}q"), i),
                text(&format!("{kind}p"), i / 2),
                text("shared negative", i % 40)
            ));
        }
        s
    }

    /// Dataset `a`: plain JSONL (BOM, CRLF, a blank line, a bad record skipped), BGZF, single-member gzip, a
    /// Parquet file of several row groups with an unmapped column, CSV (quoted fields holding commas, quotes and
    /// line breaks) and TSV; dataset `b`: BGZF only, with labels.
    fn files() -> Vec<(String, Vec<u8>)> {
        let mut plain = String::from("\u{feff}");
        for (i, line) in jsonl_lines("a", 120, false).lines().enumerate() {
            plain.push_str(line);
            plain.push_str("\r\n");
            if i == 10 {
                plain.push_str("\n{\"anchor\": 3}\n");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let pq = dir.path().join("d.parquet");
        let anchors: Vec<String> = (0..90).map(|i| text("cq", i)).collect();
        let positives: Vec<String> = (0..90).map(|i| text("cp", i / 3)).collect();
        let other: Vec<String> = (0..90).map(|i| text("unmapped", i)).collect();
        write_parquet(
            &pq,
            &[
                Col::Str("anchor", anchors.iter().map(|s| Some(s.as_str())).collect()),
                Col::Str("positive", positives.iter().map(|s| Some(s.as_str())).collect()),
                Col::Str("other", other.iter().map(|s| Some(s.as_str())).collect()),
            ],
            16,
        );
        vec![
            ("a/a.jsonl".into(), plain.into_bytes()),
            ("a/b.jsonl.gz".into(), bgzf(jsonl_lines("b", 150, false).as_bytes(), 4000)),
            ("a/c.jsonl.gz".into(), gzip(jsonl_lines("c", 80, false).as_bytes())),
            ("a/d.parquet".into(), std::fs::read(&pq).unwrap()),
            ("a/f.csv".into(), csv_rows(30, ',').into_bytes()),
            ("a/g.tsv".into(), csv_rows(25, '\t').into_bytes()),
            ("b/e.jsonl.gz".into(), bgzf(jsonl_lines("e", 1500, true).as_bytes(), 3000)),
        ]
    }

    /// A header and `n` rows of anchor, positive, negative; with `,` some fields are quoted (a comma, a doubled
    /// quote, a line break inside).
    fn csv_rows(n: usize, sep: char) -> String {
        let mut s = format!("anchor{sep}positive{sep}negative\n");
        for i in 0..n {
            let (q, p, g) = (text("fq", i), text("fp", i / 2), text("shared negative", i % 40));
            if sep == ',' && i % 3 == 0 {
                s.push_str(&format!("\"{q}, \"\"quoted\"\"\nline\",{p},{g}\n"));
            } else {
                s.push_str(&format!("{q}{sep}{p}{sep}{g}\n"));
            }
        }
        s
    }

    fn dataset(source: &str) -> DatasetSpec {
        DatasetSpec { split_ratio: 0.15, on_bad_record: OnBadRecord::Skip, ..crate::data::tests::spec(source) }
    }

    /// Streams and loads datasets `a` and `b` under `root`; checks that summaries, indexes and held-out rows are
    /// equal, and that every sampler plans alike from both; returns the streamed datasets.
    async fn streamed_equals_loaded(root: &str, options: &StoreOptions) -> Vec<ScannedDataset> {
        let (a, b) = (dataset(&format!("{root}/a/*")), dataset(&format!("{root}/b/*")));
        let specs = [("a", &a), ("b", &b)];
        let streamed = scan_training_data_from(specs, 7, options, None, true, &ScanLimits::default()).await.unwrap();
        let loaded = load_training_data_from(specs, 7, options, None).await.unwrap();
        let reference: Vec<ScannedDataset> = loaded.iter().map(ScannedDataset::from_split).collect();
        assert_eq!(streamed, reference);
        assert_eq!(streamed[0].index.files.iter().map(|f| f.format).collect::<Vec<_>>(), [
            DataFormat::Jsonl,
            DataFormat::JsonlBgzf,
            DataFormat::JsonlGz,
            DataFormat::Parquet,
            DataFormat::Csv,
            DataFormat::Tsv
        ]);
        assert_eq!((streamed[0].train_len() + streamed[0].eval_len, streamed[0].bad_records), (120 + 150 + 80 + 90 + 30 + 25, 1));
        assert!(!streamed[1].index.labels.is_empty() && streamed[0].index.labels.is_empty());
        for sampling in [SamplingStrategy::RoundRobin, SamplingStrategy::Proportional] {
            for batch_sampler in [BatchSamplerKind::BatchSampler, BatchSamplerKind::NoDuplicates] {
                for group_by_length in [false, true] {
                    let spec = PlanSpec { batch_size: 8, sampling, batch_sampler, seed: 3, group_by_length, stop: PlanStop::Epochs(2.0) };
                    let from_stream = DataPlan::build(&spec, streamed.clone()).unwrap();
                    let from_rows = DataPlan::build(&spec, reference.clone()).unwrap();
                    assert_eq!(from_stream, from_rows, "{spec:?}");
                    // And the plan the sampler code makes from the loaded rows themselves.
                    assert_eq!(from_stream.plan(), BatchPlan::build(&crate::data::plan_inputs(&loaded), &spec).unwrap(), "{spec:?}");
                    assert!(from_stream.batches.len() > 20, "{spec:?}");
                }
            }
        }
        // Every training row reads back through the streamed index as the loaded row.
        let mut reader = RangedReader::new(streamed.iter().map(|d| d.index.clone()), options.clone());
        for d in &loaded {
            let rows: Vec<usize> = (0..d.train.len()).collect();
            assert_eq!(reader.read_rows(&d.name, &rows).await.unwrap(), d.train, "{}", d.name);
        }
        streamed
    }

    #[tokio::test]
    async fn streaming_index_and_plan_equal_the_loaded_ones_for_every_sampler_local_files() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files() {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        streamed_equals_loaded(&dir.path().display().to_string(), &StoreOptions::default()).await;
    }

    #[tokio::test]
    async fn streaming_index_and_plan_equal_the_loaded_ones_on_s3_and_a_bgzf_row_reads_one_member() {
        let moto = splade_tests::MotoServer::start();
        moto.create_bucket("data");
        let opts = StoreOptions { overrides: moto.store_overrides() };
        let loc = Location::parse_with("s3://data", &opts).unwrap();
        for (name, bytes) in files() {
            loc.store().put(&loc.child(&name), PutPayload::from(bytes)).await.unwrap();
        }
        let streamed = streamed_equals_loaded("s3://data", &opts).await;
        // One row of the BGZF file `b/e.jsonl.gz` fetches its member(s), not the file.
        let index = streamed[1].index.clone();
        let size = index.files[0].size;
        for row in [0, 57, index.rows.len() - 1] {
            let mut reader = RangedReader::new([index.clone()], opts.clone());
            reader.read_rows("b", &[row]).await.unwrap();
            assert!(reader.bytes_read() * 4 < size, "row {row}: read {} of {size} bytes", reader.bytes_read());
        }
    }

    #[tokio::test]
    async fn a_gzip_member_over_the_limit_is_refused_with_the_fix_and_bgzf_blocks_are_not() {
        let dir = tempfile::tempdir().unwrap();
        // Texts that do not compress much (hex of a counter hash): about 3.2 MB, over 1 MiB as one gzip member.
        let mut data = String::new();
        let mut x: u64 = 1;
        for i in 0..400 {
            let mut t = String::new();
            for _ in 0..500 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                t.push_str(&format!("{x:016x}"));
            }
            data.push_str(&format!("{{\"anchor\": \"q{i}\", \"positive\": \"{t}\"}}\n"));
        }
        let one = dir.path().join("one.jsonl.gz");
        std::fs::write(&one, gzip(data.as_bytes())).unwrap();
        let blocks = dir.path().join("blocks.jsonl.gz");
        std::fs::write(&blocks, bgzf(data.as_bytes(), 65280)).unwrap();
        let limits = ScanLimits { gzip_member_bytes: 1 << 20 };
        assert!(std::fs::metadata(&one).unwrap().len() > 1 << 20);
        let spec = dataset(&one.display().to_string());
        let e = scan_training_data_from([("g", &spec)], 1, &StoreOptions::default(), None, false, &limits).await.unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: the gzip member at byte 0 is larger than 1 MiB: a worker would fetch and decompress all of it for any one \
                 record; compress the file with `bgzip` (gzip members of 64 KiB, each readable on its own), split it into files \
                 under 1 MiB, or convert it to Parquet",
                one.display()
            )
        );
        let spec = dataset(&blocks.display().to_string());
        let d = scan_training_data_from([("g", &spec)], 1, &StoreOptions::default(), None, false, &limits).await.unwrap();
        assert_eq!(d[0].train_len() + d[0].eval_len, 400);
        assert_eq!(d[0].index.files[0].format, DataFormat::JsonlBgzf);
    }
}
