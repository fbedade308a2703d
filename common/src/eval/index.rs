//! Exact sparse retrieval: an inverted index over document [`SparseVec`]s (one posting list per vocabulary
//! id), scored by dot product into a dense per-query accumulator, ranked by (score descending, `_id`
//! ascending): the total order sentence-transformers' evaluator ranks by. No pruning, no approximation.
//!
//! On disk ([`InvertedIndex::save`]) the index is a directory of little-endian arrays plus `index.json`,
//! memory-mapped by [`InvertedIndex::load`]. The header records the vocabulary size and a fingerprint of
//! the vocabulary's tokens ([`vocab_fingerprint`]), so querying an index with another model's vocabulary
//! fails with an error instead of returning meaningless scores.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::marker::PhantomData;
use std::ops::Deref;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{EvalError, SparseVec};

/// The vocabulary an index (and the vectors it is queried with) is defined over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VocabInfo {
    /// Number of dimensions; every vector index must be below it.
    pub size: usize,
    /// [`vocab_fingerprint`] of the tokens, or any stable string naming the vocabulary.
    pub fingerprint: String,
}

impl VocabInfo {
    /// Size and fingerprint of a token list (position = vocabulary id).
    pub fn from_tokens<S: AsRef<str>>(tokens: &[S]) -> Self {
        Self {
            size: tokens.len(),
            fingerprint: vocab_fingerprint(tokens),
        }
    }
}

/// `sha256:<hex>` over the tokens in id order (each length-prefixed, so no separator can collide).
/// Two vocabularies get the same fingerprint only if they map every id to the same token.
pub fn vocab_fingerprint<S: AsRef<str>>(tokens: &[S]) -> String {
    let mut h = Sha256::new();
    h.update((tokens.len() as u64).to_le_bytes());
    for t in tokens {
        let b = t.as_ref().as_bytes();
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    }
    let digest = h.finalize();
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for byte in digest {
        s.push_str(&format!("{byte:02x}"));
    }
    s
}

/// One retrieved document: its position in the index's document list and its score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// Index into [`InvertedIndex::doc_ids`].
    pub doc: u32,
    /// Dot product of the query and document vectors (`f32` accumulation).
    pub score: f32,
}

/// Element types that may be reinterpreted from little-endian bytes of a memory map.
trait Plain: Copy + Send + Sync + 'static {}
impl Plain for u32 {}
impl Plain for u64 {}
impl Plain for f32 {}

/// An array either owned or borrowed from a memory map; derefs to a slice either way.
enum Buf<T: Plain> {
    Owned(Vec<T>),
    Mapped {
        map: memmap2::Mmap,
        len: usize,
        _t: PhantomData<T>,
    },
}

impl<T: Plain> Deref for Buf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Buf::Owned(v) => v,
            // SAFETY: `map_file` checked that the map is aligned for T and holds exactly `len` elements; the
            // element types are plain numbers for which every bit pattern is valid, and the map lives as
            // long as self. The file is not expected to change while mapped (documented on `load`).
            Buf::Mapped { map, len, .. } => unsafe {
                std::slice::from_raw_parts(map.as_ptr() as *const T, *len)
            },
        }
    }
}

/// The on-disk header, `index.json`.
#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    byte_order: String,
    vocab: VocabInfo,
    n_docs: usize,
    n_postings: usize,
}

const FORMAT: &str = "splade-inverted-index";
const VERSION: u32 = 1;
const FILES: [&str; 5] = [
    "offsets.u64",
    "postings_doc.u32",
    "postings_val.f32",
    "id_rank.u32",
    "by_rank.u32",
];

/// Inverted index over document vectors. Immutable once built; `search` is safe to call from many
/// threads.
pub struct InvertedIndex {
    vocab: VocabInfo,
    doc_ids: Vec<String>,
    /// Posting list of term t = `postings_*[offsets[t]..offsets[t + 1]]`, documents ascending.
    offsets: Buf<u64>,
    postings_doc: Buf<u32>,
    postings_val: Buf<f32>,
    /// Position of each document in ascending `_id` order (tie-breaks without string compares).
    id_rank: Buf<u32>,
    /// Inverse of `id_rank`: documents in ascending `_id` order.
    by_rank: Buf<u32>,
}

impl std::fmt::Debug for InvertedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvertedIndex")
            .field("vocab", &self.vocab)
            .field("n_docs", &self.doc_ids.len())
            .field("n_postings", &self.postings_doc.len())
            .finish()
    }
}

impl InvertedIndex {
    /// Builds the index. `doc_ids[i]` names `docs[i]`; ids must be unique and every vector index below
    /// `vocab.size`.
    pub fn build(
        doc_ids: Vec<String>,
        docs: &[SparseVec],
        vocab: VocabInfo,
    ) -> Result<Self, EvalError> {
        if doc_ids.len() != docs.len() {
            return Err(EvalError::Index(format!(
                "{} document ids but {} vectors",
                doc_ids.len(),
                docs.len()
            )));
        }
        if u32::try_from(docs.len()).is_err() {
            return Err(EvalError::Index(format!(
                "{} documents exceed the u32 limit",
                docs.len()
            )));
        }
        let v = vocab.size;
        let mut counts = vec![0u64; v + 1];
        for (i, d) in docs.iter().enumerate() {
            if d.dim_lower_bound() > v {
                return Err(EvalError::Index(format!(
                    "document '{}' has dimension {} but the vocabulary has {v} entries; vectors and vocabulary \
                     come from different models",
                    doc_ids[i],
                    d.dim_lower_bound() - 1
                )));
            }
            for &t in d.indices() {
                counts[t as usize + 1] += 1;
            }
        }
        for t in 0..v {
            counts[t + 1] += counts[t];
        }
        let n_postings = counts[v] as usize;
        let mut postings_doc = vec![0u32; n_postings];
        let mut postings_val = vec![0f32; n_postings];
        let mut cursor: Vec<u64> = counts[..v].to_vec();
        for (i, d) in docs.iter().enumerate() {
            for (t, x) in d.iter() {
                let c = &mut cursor[t as usize];
                postings_doc[*c as usize] = i as u32;
                postings_val[*c as usize] = x;
                *c += 1;
            }
        }
        let (id_rank, by_rank) = rank_ids(&doc_ids)?;
        Ok(Self {
            vocab,
            doc_ids,
            offsets: Buf::Owned(counts),
            postings_doc: Buf::Owned(postings_doc),
            postings_val: Buf::Owned(postings_val),
            id_rank: Buf::Owned(id_rank),
            by_rank: Buf::Owned(by_rank),
        })
    }

    /// The vocabulary the index was built over.
    pub fn vocab(&self) -> &VocabInfo {
        &self.vocab
    }

    /// Document ids in index order (a [`Hit::doc`] indexes this).
    pub fn doc_ids(&self) -> &[String] {
        &self.doc_ids
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.doc_ids.len()
    }

    /// True for an index without documents.
    pub fn is_empty(&self) -> bool {
        self.doc_ids.is_empty()
    }

    /// Number of stored (term, document) postings.
    pub fn n_postings(&self) -> usize {
        self.postings_doc.len()
    }

    /// Bytes of the index's binary arrays (offsets, posting ids and values, id-order maps), which is what
    /// [`InvertedIndex::save`] writes apart from the small header and the id list.
    pub fn size_bytes(&self) -> u64 {
        (self.offsets.len() * 8
            + self.postings_doc.len() * 8
            + self.id_rank.len() * 4
            + self.by_rank.len() * 4) as u64
    }

    /// Length of the posting list of vocabulary id `t` (0 when out of range): its document frequency.
    pub fn doc_freq(&self, t: u32) -> usize {
        let t = t as usize;
        if t >= self.vocab.size {
            return 0;
        }
        (self.offsets[t + 1] - self.offsets[t]) as usize
    }

    /// The document vectors back out of the postings, in index order (e.g. to export a saved index).
    pub fn document_vectors(&self) -> Vec<SparseVec> {
        let mut pairs: Vec<Vec<(u32, f32)>> = vec![Vec::new(); self.len()];
        for t in 0..self.vocab.size {
            let (lo, hi) = (self.offsets[t] as usize, self.offsets[t + 1] as usize);
            for (&d, &x) in self.postings_doc[lo..hi]
                .iter()
                .zip(&self.postings_val[lo..hi])
            {
                pairs[d as usize].push((t as u32, x));
            }
        }
        // Terms were visited in ascending order, so each list is already sorted and unique.
        pairs
            .into_iter()
            .map(|p| {
                let (i, v) = p.into_iter().unzip();
                SparseVec::new(i, v).expect("postings hold valid vectors")
            })
            .collect()
    }

    /// Exact top-`k` for every query, in parallel over queries. Each list holds `min(k, len())` hits
    /// ordered by (score descending, `_id` ascending). Documents sharing no term with the query score 0
    /// and fill the list in `_id` order, exactly as a dense top-k over all documents would.
    pub fn search(&self, queries: &[SparseVec], k: usize) -> Result<Vec<Vec<Hit>>, EvalError> {
        for (i, q) in queries.iter().enumerate() {
            if q.dim_lower_bound() > self.vocab.size {
                return Err(EvalError::Index(format!(
                    "query {i} has dimension {} but the index vocabulary has {} entries; encode queries with the \
                     model the index was built with",
                    q.dim_lower_bound() - 1,
                    self.vocab.size
                )));
            }
        }
        let n = self.len();
        Ok(queries
            .par_iter()
            .map_init(
                || Scratch {
                    scores: vec![0.0; n],
                    seen: vec![false; n],
                    touched: Vec::new(),
                },
                |s, q| self.search_one(s, q, k),
            )
            .collect())
    }

    fn cmp_hits(&self, a: &Hit, b: &Hit) -> Ordering {
        b.score
            .total_cmp(&a.score)
            .then_with(|| self.id_rank[a.doc as usize].cmp(&self.id_rank[b.doc as usize]))
    }

    fn search_one(&self, s: &mut Scratch, q: &SparseVec, k: usize) -> Vec<Hit> {
        let k = k.min(self.len());
        if k == 0 {
            return Vec::new();
        }
        for (t, w) in q.iter() {
            let (lo, hi) = (
                self.offsets[t as usize] as usize,
                self.offsets[t as usize + 1] as usize,
            );
            for (&d, &x) in self.postings_doc[lo..hi]
                .iter()
                .zip(&self.postings_val[lo..hi])
            {
                let d = d as usize;
                if !s.seen[d] {
                    s.seen[d] = true;
                    s.touched.push(d as u32);
                }
                s.scores[d] += w * x;
            }
        }
        let mut hits: Vec<Hit> = s
            .touched
            .iter()
            .map(|&d| Hit {
                doc: d,
                score: s.scores[d as usize],
            })
            .collect();
        if hits.len() > k {
            hits.select_nth_unstable_by(k - 1, |a, b| self.cmp_hits(a, b));
            hits.truncate(k);
        }
        hits.sort_unstable_by(|a, b| self.cmp_hits(a, b));
        // Untouched documents score exactly 0; they belong in the list when it is short or when its tail
        // is not above 0 (ties with 0 are broken by id, so they may outrank touched zero-score documents).
        if hits.len() < k || hits.last().is_some_and(|h| h.score <= 0.0) {
            let zeros: Vec<Hit> = self
                .by_rank
                .iter()
                .filter(|&&d| !s.seen[d as usize])
                .take(k)
                .map(|&d| Hit { doc: d, score: 0.0 })
                .collect();
            let mut merged = Vec::with_capacity(k);
            let (mut i, mut j) = (0, 0);
            while merged.len() < k && (i < hits.len() || j < zeros.len()) {
                let take_hit = j >= zeros.len()
                    || (i < hits.len() && self.cmp_hits(&hits[i], &zeros[j]).is_le());
                if take_hit {
                    merged.push(hits[i]);
                    i += 1;
                } else {
                    merged.push(zeros[j]);
                    j += 1;
                }
            }
            hits = merged;
        }
        for &d in &s.touched {
            s.scores[d as usize] = 0.0;
            s.seen[d as usize] = false;
        }
        s.touched.clear();
        hits
    }

    /// Writes the index into `dir` (created if missing; existing index files are replaced).
    pub fn save(&self, dir: &Path) -> Result<(), EvalError> {
        std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
        write_array(&dir.join(FILES[0]), &self.offsets, |x, w| {
            w.write_all(&x.to_le_bytes())
        })?;
        write_array(&dir.join(FILES[1]), &self.postings_doc, |x, w| {
            w.write_all(&x.to_le_bytes())
        })?;
        write_array(&dir.join(FILES[2]), &self.postings_val, |x, w| {
            w.write_all(&x.to_le_bytes())
        })?;
        write_array(&dir.join(FILES[3]), &self.id_rank, |x, w| {
            w.write_all(&x.to_le_bytes())
        })?;
        write_array(&dir.join(FILES[4]), &self.by_rank, |x, w| {
            w.write_all(&x.to_le_bytes())
        })?;
        let ids_path = dir.join("doc_ids.jsonl");
        let mut w =
            BufWriter::new(File::create(&ids_path).map_err(|e| EvalError::io(&ids_path, e))?);
        for id in &self.doc_ids {
            serde_json::to_writer(&mut w, id).map_err(|e| EvalError::Index(e.to_string()))?;
            w.write_all(b"\n")
                .map_err(|e| EvalError::io(&ids_path, e))?;
        }
        w.flush().map_err(|e| EvalError::io(&ids_path, e))?;
        // The header goes last: a directory without it is an incomplete write, not an index.
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            byte_order: "little".into(),
            vocab: self.vocab.clone(),
            n_docs: self.len(),
            n_postings: self.n_postings(),
        };
        let hp = dir.join("index.json");
        let text =
            serde_json::to_string_pretty(&header).map_err(|e| EvalError::Index(e.to_string()))?;
        std::fs::write(&hp, text).map_err(|e| EvalError::io(&hp, e))
    }

    /// Opens an index written by [`InvertedIndex::save`], memory-mapping its arrays. With `expected`
    /// set, an index built over a different vocabulary (size or fingerprint) is refused. The files
    /// must not be modified while the index is open.
    pub fn load(dir: &Path, expected: Option<&VocabInfo>) -> Result<Self, EvalError> {
        if cfg!(target_endian = "big") {
            return Err(EvalError::Index(
                "memory-mapped indexes are little-endian; this machine is big-endian".into(),
            ));
        }
        let hp = dir.join("index.json");
        let text = std::fs::read_to_string(&hp).map_err(|e| EvalError::io(&hp, e))?;
        let h: Header = serde_json::from_str(&text)
            .map_err(|e| EvalError::Index(format!("{}: not an index header: {e}", hp.display())))?;
        if h.format != FORMAT || h.version != VERSION || h.byte_order != "little" {
            return Err(EvalError::Index(format!(
                "{}: format '{}' version {} ({}) is not {FORMAT} version {VERSION} (little); rebuild the index",
                hp.display(),
                h.format,
                h.version,
                h.byte_order
            )));
        }
        if let Some(exp) = expected {
            if exp != &h.vocab {
                return Err(EvalError::VocabMismatch(format!(
                    "index {} was built over a vocabulary of {} tokens ({}) but the model has {} tokens ({}); \
                     rebuild the index with this model or query it with the model that built it",
                    dir.display(),
                    h.vocab.size,
                    h.vocab.fingerprint,
                    exp.size,
                    exp.fingerprint
                )));
            }
        }
        let offsets: Buf<u64> = map_file(&dir.join(FILES[0]), h.vocab.size + 1)?;
        let postings_doc: Buf<u32> = map_file(&dir.join(FILES[1]), h.n_postings)?;
        let postings_val: Buf<f32> = map_file(&dir.join(FILES[2]), h.n_postings)?;
        let id_rank: Buf<u32> = map_file(&dir.join(FILES[3]), h.n_docs)?;
        let by_rank: Buf<u32> = map_file(&dir.join(FILES[4]), h.n_docs)?;
        // Cheap structural checks so a corrupt file errors here rather than panicking inside a search.
        let corrupt = |what: &str| {
            EvalError::Index(format!(
                "{}: corrupt index ({what}); rebuild it",
                dir.display()
            ))
        };
        if offsets[0] != 0
            || offsets[h.vocab.size] as usize != h.n_postings
            || offsets.windows(2).any(|w| w[0] > w[1])
        {
            return Err(corrupt("posting offsets"));
        }
        if id_rank
            .iter()
            .chain(by_rank.iter())
            .any(|&r| r as usize >= h.n_docs)
        {
            return Err(corrupt("id order maps"));
        }
        let ids_path = dir.join("doc_ids.jsonl");
        let ids_text =
            std::fs::read_to_string(&ids_path).map_err(|e| EvalError::io(&ids_path, e))?;
        let doc_ids = ids_text
            .lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str::<String>(l)
                    .map_err(|e| EvalError::Index(format!("{}:{}: {e}", ids_path.display(), i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if doc_ids.len() != h.n_docs {
            return Err(corrupt("document id count"));
        }
        if postings_doc.iter().any(|&d| d as usize >= h.n_docs) {
            return Err(corrupt("posting document ids"));
        }
        Ok(Self {
            vocab: h.vocab,
            doc_ids,
            offsets,
            postings_doc,
            postings_val,
            id_rank,
            by_rank,
        })
    }
}

struct Scratch {
    scores: Vec<f32>,
    seen: Vec<bool>,
    touched: Vec<u32>,
}

/// (rank of each doc in ascending id order, docs in that order); errors on a duplicate id.
fn rank_ids(ids: &[String]) -> Result<(Vec<u32>, Vec<u32>), EvalError> {
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| ids[a as usize].cmp(&ids[b as usize]));
    if let Some(w) = order
        .windows(2)
        .find(|w| ids[w[0] as usize] == ids[w[1] as usize])
    {
        return Err(EvalError::Index(format!(
            "duplicate document id '{}'",
            ids[w[0] as usize]
        )));
    }
    let mut rank = vec![0u32; ids.len()];
    for (r, &d) in order.iter().enumerate() {
        rank[d as usize] = r as u32;
    }
    Ok((rank, order))
}

fn write_array<T: Plain>(
    path: &Path,
    data: &[T],
    put: impl Fn(&T, &mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), EvalError> {
    let mut w = BufWriter::new(File::create(path).map_err(|e| EvalError::io(path, e))?);
    for x in data {
        put(x, &mut w).map_err(|e| EvalError::io(path, e))?;
    }
    w.flush().map_err(|e| EvalError::io(path, e))
}

fn map_file<T: Plain>(path: &Path, len: usize) -> Result<Buf<T>, EvalError> {
    let size = std::mem::size_of::<T>();
    let file = File::open(path).map_err(|e| EvalError::io(path, e))?;
    let actual = file.metadata().map_err(|e| EvalError::io(path, e))?.len();
    if actual != (len * size) as u64 {
        return Err(EvalError::Index(format!(
            "{}: {actual} bytes, the header implies {}; the index is incomplete or corrupt, rebuild it",
            path.display(),
            len * size
        )));
    }
    if len == 0 {
        return Ok(Buf::Owned(Vec::new()));
    }
    // SAFETY: read-only map of a file the caller promises not to modify while the index is open.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| EvalError::io(path, e))?;
    if map.as_ptr().align_offset(std::mem::align_of::<T>()) != 0 {
        return Err(EvalError::Index(format!(
            "{}: memory map is not aligned",
            path.display()
        )));
    }
    Ok(Buf::Mapped {
        map,
        len,
        _t: PhantomData,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(pairs: &[(u32, f32)]) -> SparseVec {
        SparseVec::from_pairs(pairs.to_vec()).unwrap()
    }

    /// Brute force over all documents with the same total order.
    fn brute(ids: &[String], docs: &[SparseVec], q: &SparseVec, k: usize) -> Vec<(String, f32)> {
        let mut all: Vec<(String, f32)> = ids
            .iter()
            .cloned()
            .zip(docs.iter().map(|d| d.dot(q)))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    fn synthetic(n_docs: usize, vocab: u32, seed: u64) -> (Vec<String>, Vec<SparseVec>) {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let ids: Vec<String> = (0..n_docs)
            .map(|i| format!("d{}", (i * 7919) % n_docs))
            .collect();
        let docs = (0..n_docs)
            .map(|_| {
                let n = (next() % 6) as usize;
                // Small integer-valued weights make exact ties (including at zero) common.
                v(&(0..n)
                    .map(|_| ((next() % vocab as u64) as u32, ((next() % 5) as f32) - 1.0))
                    .collect::<Vec<_>>())
            })
            .collect();
        (ids, docs)
    }

    #[test]
    fn search_equals_brute_force_with_ties_and_negatives() {
        let (ids, docs) = synthetic(300, 40, 7);
        let vocab = VocabInfo {
            size: 40,
            fingerprint: "t".into(),
        };
        let index = InvertedIndex::build(ids.clone(), &docs, vocab).unwrap();
        let (_, queries) = synthetic(50, 40, 99);
        for k in [1, 10, 100, 300, 500] {
            let res = index.search(&queries, k).unwrap();
            for (q, hits) in queries.iter().zip(&res) {
                let got: Vec<(String, f32)> = hits
                    .iter()
                    .map(|h| (ids[h.doc as usize].clone(), h.score))
                    .collect();
                assert_eq!(got, brute(&ids, &docs, q, k), "k={k}");
            }
        }
    }

    #[test]
    fn save_load_round_trip_and_vocab_check() {
        let (ids, docs) = synthetic(120, 30, 3);
        let tokens: Vec<String> = (0..30).map(|i| format!("tok{i}")).collect();
        let vocab = VocabInfo::from_tokens(&tokens);
        let index = InvertedIndex::build(ids.clone(), &docs, vocab.clone()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        index.save(dir.path()).unwrap();
        let loaded = InvertedIndex::load(dir.path(), Some(&vocab)).unwrap();
        assert_eq!(loaded.doc_ids(), index.doc_ids());
        assert_eq!(loaded.size_bytes(), index.size_bytes());
        assert_eq!(loaded.document_vectors(), docs);
        let (_, queries) = synthetic(20, 30, 5);
        assert_eq!(
            loaded.search(&queries, 25).unwrap(),
            index.search(&queries, 25).unwrap()
        );

        let mut other_tokens = tokens.clone();
        other_tokens[3] = "different".into();
        let err = InvertedIndex::load(dir.path(), Some(&VocabInfo::from_tokens(&other_tokens)))
            .unwrap_err();
        assert!(matches!(err, EvalError::VocabMismatch(_)), "{err}");
        assert!(err.to_string().contains("rebuild the index"), "{err}");

        std::fs::write(dir.path().join("postings_val.f32"), b"xx").unwrap();
        let err = InvertedIndex::load(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("postings_val.f32"), "{err}");
    }

    #[test]
    fn rejects_out_of_vocab_and_duplicate_ids() {
        let vocab = VocabInfo {
            size: 4,
            fingerprint: "t".into(),
        };
        let e =
            InvertedIndex::build(vec!["a".into()], &[v(&[(4, 1.0)])], vocab.clone()).unwrap_err();
        assert!(e.to_string().contains("different models"), "{e}");
        let e = InvertedIndex::build(
            vec!["a".into(), "a".into()],
            &[v(&[(1, 1.0)]), v(&[(2, 1.0)])],
            vocab.clone(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("duplicate document id 'a'"), "{e}");
        let idx = InvertedIndex::build(vec!["a".into()], &[v(&[(1, 1.0)])], vocab).unwrap();
        assert!(idx.search(&[v(&[(9, 1.0)])], 1).is_err());
    }

    #[test]
    fn fingerprint_distinguishes_token_boundaries() {
        assert_ne!(
            vocab_fingerprint(&["ab", "c"]),
            vocab_fingerprint(&["a", "bc"])
        );
        assert_eq!(
            vocab_fingerprint(&["a", "b"]),
            vocab_fingerprint(&["a".to_string(), "b".to_string()])
        );
    }
}
