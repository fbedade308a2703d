//! The step: forward, backward, gradient sync, optimizer. [`Trainer::step`] is the one place these are put
//! together, for `splade train` (the trainer's loaded rows, no sync) and for a cluster rank (its slice of the
//! published data plan, c10d all-reduce); the collective forward/backward is in [`super::distributed`].

use std::time::Instant;

use splade_common::data::plan::{slice_for_rank, PlannedBatch};
use splade_common::data::{Example, PublishedPlan};
use tch::{Kind, Tensor};

use super::fetch::{global_labels, SliceFetcher};
use super::{loss, other, windows, StepStats, TrainError, Trainer};
use crate::dist::ProcessGroup;
use crate::model::{PrefetchedBatch, TextKind};

/// Where a step's rows come from.
pub enum BatchSource {
    /// The trainer's loaded datasets ([`Trainer::new`]).
    Loaded,
    /// This rank's slice of each global batch, read through the job's published data plan on a prefetch
    /// thread, with the batch and the global batch's labels from the plan's chunk.
    Slices { fetcher: SliceFetcher },
}

impl BatchSource {
    /// Reads rank `rank`'s (of `world`) slices of `plan` from step `first` on.
    pub fn slices(
        plan: std::sync::Arc<PublishedPlan>,
        first: u64,
        rank: usize,
        world: usize,
        options: splade_common::store::StoreOptions,
    ) -> Self {
        BatchSource::Slices { fetcher: SliceFetcher::start(plan, first, rank, world, options) }
    }

    /// Bytes of training records read from storage so far (`None` for loaded datasets).
    pub fn bytes_read(&self) -> Option<u64> {
        match self {
            BatchSource::Loaded => None,
            BatchSource::Slices { fetcher } => Some(fetcher.bytes_read()),
        }
    }

    /// Bytes of data-plan chunks read from storage so far (`None` for loaded datasets).
    pub fn plan_bytes_read(&self) -> Option<u64> {
        match self {
            BatchSource::Loaded => None,
            BatchSource::Slices { fetcher } => Some(fetcher.plan_bytes_read()),
        }
    }
}

/// How a step's gradients become the global batch's.
pub enum GradSync<'a> {
    /// One process computes the whole global batch.
    None,
    /// Each rank computes its slice; embeddings are gathered for the loss and gradients SUM all-reduced.
    AllReduce(&'a mut ProcessGroup),
}

/// One finished step.
#[derive(Debug, Clone)]
pub struct StepDone {
    pub stats: StepStats,
    /// The planned batch.
    pub batch: PlannedBatch,
    /// The rows of it this process computed (all of them without a sync).
    pub rows: Vec<usize>,
    /// Seconds spent waiting for the rows.
    pub data_wait: f64,
    /// Seconds in the gradient all-reduce (with [`GradSync::AllReduce`]).
    pub allreduce_seconds: Option<f64>,
    /// Training data read from storage so far ([`BatchSource::bytes_read`]).
    pub bytes_read: Option<u64>,
    /// Data-plan chunks read from storage so far ([`BatchSource::plan_bytes_read`]).
    pub plan_bytes_read: Option<u64>,
}


/// The texts a step embeds for rows `ex`: the anchors (queries), and the candidates column by column
/// (all positives, then each negative column), the layout the losses expect. `None` when the rows have
/// different numbers of negatives.
fn batch_texts<'a>(ex: &[&'a Example]) -> Option<(Vec<&'a str>, Vec<&'a str>)> {
    let anchors: Vec<&str> = ex.iter().map(|e| e.anchor.as_str()).collect();
    let negs = ex.first().map(|e| e.negatives.len()).unwrap_or(0);
    if ex.iter().any(|e| e.negatives.len() != negs) {
        return None;
    }
    let mut cands: Vec<&str> = ex.iter().map(|e| e.positive.as_str()).collect();
    for k in 0..negs {
        cands.extend(ex.iter().map(|e| e.negatives[k].as_str()));
    }
    Some((anchors, cands))
}

/// One planned step's texts tokenized ahead of time on the tokenizer thread, laid out as
/// [`Trainer::forward_backward_with`] embeds them: per micro-batch chunk, its queries and (unless documents are
/// windowed) its candidates. Made while the step before computes, then handed to the step it was made for.
#[derive(Default)]
pub struct StepTokens {
    /// The planned step (1-based) these are for.
    step: u64,
    chunks: Vec<ChunkTokens>,
}

/// One micro-batch chunk's queries and candidates, tokenized ahead.
#[derive(Default)]
pub(crate) struct ChunkTokens {
    query: Option<PrefetchedBatch>,
    document: Option<PrefetchedBatch>,
}

impl ChunkTokens {
    /// The batch of `kind` when it was tokenized ahead for exactly `rows` texts.
    fn get(&self, kind: TextKind, rows: usize) -> Option<&PrefetchedBatch> {
        let b = match kind {
            TextKind::Query => self.query.as_ref(),
            TextKind::Document => self.document.as_ref(),
        }?;
        (b.kind() == kind && b.rows() == rows).then_some(b)
    }
}

impl Trainer {
    /// How many batches steps took from the tokenizer thread's work so far, instead of tokenizing them.
    pub fn pretokenized_batches(&self) -> u64 {
        self.pretokenized.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Embeds queries and candidates (positives, then each negative column) of `ex`.
    pub(crate) fn embed(&self, ex: &[&Example], train: bool) -> Result<(Tensor, Tensor, usize), TrainError> {
        self.embed_with(ex, train, None)
    }

    /// [`Trainer::embed`], taking the texts' token ids from `pre` where the tokenizer thread made them.
    fn embed_with(&self, ex: &[&Example], train: bool, pre: Option<&ChunkTokens>) -> Result<(Tensor, Tensor, usize), TrainError> {
        let dev = self.model.device();
        // Autocast (bf16 or fp16) covers the encoder forwards only; the loss and the backward run
        // outside the scope, as `torch.autocast` is meant to be used.
        let amp = self.amp.and_then(|kind| crate::amp::Autocast::new(dev, kind));
        let (anchors, cands) = batch_texts(ex).ok_or_else(|| {
            other("rows of one batch have different numbers of negatives; give every row the same negative columns")
        })?;
        // The batch the tokenizer thread made for these texts, if it made one.
        let pretokenized = |rows: usize, kind: TextKind| {
            let b = pre.and_then(|p| p.get(kind, rows))?;
            self.pretokenized.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some(self.model.batch_from(b))
        };
        let batch_of = |texts: &[&str], kind: TextKind| -> Result<crate::model::Batch, TrainError> {
            match pretokenized(texts.len(), kind) {
                Some(b) => Ok(b),
                None => Ok(self.model.tokenize(texts, kind)?),
            }
        };
        let qb = batch_of(&anchors, TextKind::Query)?.to(dev);
        let q = self.model.loss_input(&qb, TextKind::Query, train);
        if self.model.csr().is_some() {
            // CSR: dense sentence embeddings, which the loss passes through the autoencoder.
            let db = batch_of(&cands, TextKind::Document)?.to(dev);
            let d = self.model.loss_input(&db, TextKind::Document, train);
            let tokens = qb.lengths.iter().sum::<usize>() + db.lengths.iter().sum::<usize>();
            drop(amp);
            return Ok((q.to_kind(Kind::Float), d.to_kind(Kind::Float), tokens));
        }
        let tw = self.windows;
        // Windowed documents are tokenized per window by `embed_documents`, never ahead.
        let pre_docs = if tw.is_none() { pretokenized(cands.len(), TextKind::Document) } else { None };
        let docs = windows::embed_documents(&self.model, &cands, tw.as_ref(), pre_docs, self.seed, self.state.global_step, train)?;
        if tw.is_some() && train {
            self.window_cost.add(cands.len(), &docs);
        }
        let tokens = qb.lengths.iter().sum::<usize>() + docs.tokens;
        drop(amp);
        Ok((q.to_kind(Kind::Float), docs.embeddings.to_kind(Kind::Float), tokens))
    }

    /// Back-propagates `loss`, multiplied by the loss scale with fp16 (`scaler.scale(loss).backward()`).
    /// Every backward of a step's loss goes through here; gradient cache's surrogate backward does
    /// not, since the embedding gradients it carries already hold the scale.
    pub(crate) fn backward(&self, loss: &Tensor) {
        match &self.scaler {
            Some(s) => s.scale_loss(loss).backward(),
            None => loss.backward(),
        }
    }

    /// The rows' labels as `[rows, width]` when every row has one (`None` otherwise); rows of
    /// different widths are a [`TrainError::Labels`].
    pub(crate) fn labels(ex: &[&Example]) -> Result<Option<Tensor>, TrainError> {
        let labels: Option<Vec<&[f32]>> = ex.iter().map(|e| e.label.as_deref()).collect();
        labels_tensor(labels.filter(|l| !l.is_empty()))
    }

    /// Seeds libtorch's generator from (seed, step, micro-batch) so dropout masks are a function of
    /// the position in the run: resume replays them, and gradient cache's second pass sees the
    /// first pass's masks.
    pub(crate) fn seed_for(&self, micro: usize) {
        tch::manual_seed((self.seed as i64).wrapping_mul(1_000_003) ^ ((self.state.global_step as i64) << 12) ^ micro as i64);
    }

    /// Forward + backward for this process's rows of one step; gradients accumulate in the
    /// parameters. Returns the stats of the loss (on this process's rows).
    pub fn forward_backward(&self, ex: &[&Example]) -> Result<StepStats, TrainError> {
        self.forward_backward_with(ex, None)
    }

    /// [`Trainer::forward_backward`] with the texts' token ids from `tokens` where the tokenizer thread made
    /// them for this step.
    pub(crate) fn forward_backward_with(&self, ex: &[&Example], tokens: Option<&StepTokens>) -> Result<StepStats, TrainError> {
        let chunk_tokens = |i: usize| tokens.and_then(|t| t.chunks.get(i));
        let step = self.state.global_step;
        let total = self.state.total_steps;
        let mb = (ex.len() / self.micro_batches.max(1)).max(1);
        let mut stats = StepStats { step: step + 1, samples: ex.len(), ..Default::default() };
        if self.gradient_cache && self.micro_batches > 1 {
            // Gradient cache: embed every micro-batch without a graph, take the loss over the whole
            // batch, then re-run each micro-batch with a graph and back-propagate the cached
            // embedding gradients through it. Exact, since the loss sees every in-batch negative.
            let chunks: Vec<&[&Example]> = ex.chunks(mb).collect();
            let mut qs = Vec::new();
            let mut ds = Vec::new();
            tch::no_grad(|| -> Result<(), TrainError> {
                for (i, c) in chunks.iter().enumerate() {
                    self.seed_for(i);
                    let (q, d, tokens) = self.embed_with(c, true, chunk_tokens(i))?;
                    stats.tokens += tokens;
                    qs.push(q);
                    ds.push(d);
                }
                Ok(())
            })?;
            let negs = ex[0].negatives.len() as i64 + 1;
            let q_all = Tensor::cat(&qs, 0).detach().set_requires_grad(true);
            // Candidates are laid out column-major over the whole batch: all positives, then all
            // first negatives, …; each micro-batch's block is [positives; negatives] of its rows.
            let d_cols: Vec<Tensor> = (0..negs)
                .map(|c| {
                    let parts: Vec<Tensor> = ds.iter().zip(&chunks).map(|(d, ch)| d.narrow(0, c * ch.len() as i64, ch.len() as i64)).collect();
                    Tensor::cat(&parts, 0)
                })
                .collect();
            let d_all = Tensor::cat(&d_cols, 0).detach().set_requires_grad(true);
            let labels = Self::labels(ex)?;
            let parts = self.compute_loss(&q_all, &d_all, labels.as_ref(), step, total)?;
            self.backward(&parts.total);
            fill_loss_stats(&mut stats, &parts, &q_all, &d_all);
            let gq = q_all.grad();
            let gd = d_all.grad();
            let n = ex.len() as i64;
            let mut offset = 0i64;
            for (i, c) in chunks.iter().enumerate() {
                self.seed_for(i);
                let (q, d, _) = self.embed_with(c, true, chunk_tokens(i))?;
                let len = c.len() as i64;
                let gq_i = gq.narrow(0, offset, len);
                let gd_i = Tensor::cat(&(0..negs).map(|col| gd.narrow(0, col * n + offset, len)).collect::<Vec<_>>(), 0);
                let surrogate = (q * gq_i).sum(Kind::Float) + (d * gd_i).sum(Kind::Float);
                surrogate.backward();
                offset += len;
            }
        } else {
            // Plain accumulation: each micro-batch is its own loss (negatives within it), averaged.
            let chunks: Vec<&[&Example]> = ex.chunks(mb).collect();
            let k = chunks.len() as f64;
            for (i, c) in chunks.iter().enumerate() {
                self.seed_for(i);
                let (q, d, tokens) = self.embed_with(c, true, chunk_tokens(i))?;
                stats.tokens += tokens;
                let labels = Self::labels(c)?;
                let parts = self.compute_loss(&q, &d, labels.as_ref(), step, total)?;
                self.backward(&(&parts.total / k));
                let mut s = StepStats::default();
                fill_loss_stats(&mut s, &parts, &q, &d);
                stats.loss += s.loss / k;
                stats.ranking_loss += s.ranking_loss / k;
                stats.flops_query += s.flops_query / k;
                stats.flops_document += s.flops_document / k;
                stats.query_active_dims += s.query_active_dims / k;
                stats.document_active_dims += s.document_active_dims / k;
                stats.query_regularizer_weight = s.query_regularizer_weight;
                stats.document_regularizer_weight = s.document_regularizer_weight;
                if let Some(c) = s.csr {
                    let acc = stats.csr.get_or_insert_with(Default::default);
                    acc.reconstruction_k += c.reconstruction_k / k;
                    acc.reconstruction_4k += c.reconstruction_4k / k;
                    acc.reconstruction_aux += c.reconstruction_aux / k;
                    acc.dead_latents = c.dead_latents;
                    acc.stats_sum = c.stats_sum;
                }
            }
        }
        stats.windows_per_doc = self.window_cost.take();
        Ok(stats)
    }

    /// One full optimizer step on planned batch `self.state.global_step + 1` of the loaded datasets, no sync.
    pub fn train_step(&mut self) -> Result<StepStats, TrainError> {
        Ok(self.step(&BatchSource::Loaded, &mut GradSync::None, &mut |_| Ok(()))?.stats)
    }

    /// The step: the next planned batch's rows from `source`, forward and backward, `sync`, then the optimizer
    /// ([`Trainer::finish_step`]). `after_sync` sees the synced gradients before the optimizer consumes them.
    pub fn step(
        &mut self,
        source: &BatchSource,
        sync: &mut GradSync,
        after_sync: &mut dyn FnMut(&Trainer) -> Result<(), TrainError>,
    ) -> Result<StepDone, TrainError> {
        let t0 = Instant::now();
        let step = self.state.global_step + 1;
        // The tokenizer thread's batches for this step, made while the step before computed.
        let tokens = self.next_tokens.take().filter(|t| t.step == step);
        let mut next_tokens = None;
        let past = || other(format!("step {step} is past the plan's {} steps", self.plan.len()));
        let fetched = match source {
            BatchSource::Loaded => None,
            BatchSource::Slices { fetcher } => Some(fetcher.next(step).map_err(|e| other(format!("step {step}: {e}")))?),
        };
        let batch = match &fetched {
            None => self.plan.step(step).cloned().ok_or_else(past)?,
            Some(f) => f.batch.clone(),
        };
        let lr = self.learning_rate();
        let (rank, world) = match sync {
            GradSync::None => (0, 1),
            GradSync::AllReduce(pg) => (pg.rank(), pg.world_size()),
        };
        let rows = slice_for_rank(&batch, rank, world).to_vec();
        let (local, global, labels): (Vec<&Example>, Option<Vec<&Example>>, Option<Tensor>) = match &fetched {
            None => {
                let global = self.examples(&batch, &batch.rows);
                (self.examples(&batch, &rows), Some(global), None)
            }
            Some(f) => {
                let labels = global_labels(&f.labels)?;
                if labels.is_none() && self.loss.inner.needs_labels() {
                    return Err(TrainError::Labels(format!(
                        "step {step}: a row of dataset `{}` has no `label` in the data plan, but the loss needs teacher scores on every row; add the label column and start a new job",
                        batch.dataset
                    )));
                }
                (f.examples.iter().collect(), None, labels)
            }
        };
        let data_wait = t0.elapsed().as_secs_f64();
        let (mut stats, allreduce_seconds) = match sync {
            GradSync::None => {
                // The next step's rows: the trainer's own, or received ahead from the data plan's reader.
                let next_rows = match source {
                    BatchSource::Loaded => None,
                    BatchSource::Slices { fetcher } => Some(fetcher.peek_examples(step + 1).unwrap_or_default()),
                };
                let (stats, next) = self.forward_backward_prefetching(&local, next_rows, tokens.as_ref())?;
                next_tokens = next;
                (stats, None)
            }
            GradSync::AllReduce(pg) => {
                let labels = match &global {
                    Some(g) => Self::labels(g)?,
                    None => labels,
                };
                let (stats, ar) = self.forward_backward_slice(&local, labels, batch.rows.len(), pg)?;
                (stats, Some(ar.seconds))
            }
        };
        drop(local);
        drop(global);
        self.next_tokens = next_tokens;
        after_sync(self)?;
        self.finish_step(&mut stats, &batch, lr, t0);
        Ok(StepDone {
            stats,
            batch,
            rows,
            data_wait,
            allreduce_seconds,
            bytes_read: source.bytes_read(),
            plan_bytes_read: source.plan_bytes_read(),
        })
    }

    /// [`Trainer::forward_backward_with`] on this step's `tokens`, with the next planned step's texts tokenized on
    /// another thread meanwhile: `next_rows` when given (read ahead through a data plan; empty past it), else
    /// the trainer's own rows of that step; returns those.
    fn forward_backward_prefetching(
        &self,
        ex: &[&Example],
        next_rows: Option<Vec<Example>>,
        tokens: Option<&StepTokens>,
    ) -> Result<(StepStats, Option<StepTokens>), TrainError> {
        let next_step = self.state.global_step + 2;
        let next = match &next_rows {
            Some(rows) => self.chunk_texts(&rows.iter().collect::<Vec<_>>()),
            None => self.texts_to_tokenize(next_step),
        };
        let pre = (!next.is_empty()).then(|| self.model.pretokenizer());
        let (stats, made) = std::thread::scope(|s| {
            let worker = s.spawn(move || {
                let Some(pre) = pre else { return Vec::new() };
                next.iter()
                    .map(|chunk| {
                        let tokenize = |texts: &Option<Vec<String>>, kind| {
                            let refs: Vec<&str> = texts.as_ref()?.iter().map(String::as_str).collect();
                            pre.pretokenize(&refs, kind)
                        };
                        ChunkTokens { query: tokenize(&chunk.0, TextKind::Query), document: tokenize(&chunk.1, TextKind::Document) }
                    })
                    .collect::<Vec<_>>()
            });
            let stats = self.forward_backward_with(ex, tokens);
            (stats, worker.join())
        });
        let stats = stats?;
        let chunks = prefetch_result(made, next_step)?;
        Ok((stats, Some(StepTokens { step: next_step, chunks })))
    }

    /// What [`Trainer::forward_backward`] will tokenize for planned step `step`, per micro-batch chunk (the
    /// same chunks it embeds): the anchors (queries) and, unless documents are windowed, the candidates
    /// (positives, then each negative column). Empty past the plan.
    fn texts_to_tokenize(&self, step: u64) -> Vec<(Option<Vec<String>>, Option<Vec<String>>)> {
        let Some(batch) = self.plan.step(step) else { return Vec::new() };
        self.chunk_texts(&self.examples(batch, &batch.rows))
    }

    /// [`Trainer::texts_to_tokenize`] of the rows `ex` of a step.
    fn chunk_texts(&self, ex: &[&Example]) -> Vec<(Option<Vec<String>>, Option<Vec<String>>)> {
        let mb = (ex.len() / self.micro_batches.max(1)).max(1);
        let windowed = self.windows.is_some();
        let mut out = Vec::new();
        for chunk in ex.chunks(mb) {
            // A batch `embed` refuses is not prefetched (an empty chunk keeps the positions); the step reports it.
            let Some((anchors, cands)) = batch_texts(chunk) else {
                out.push((None, None));
                continue;
            };
            let owned = |t: Vec<&str>| t.into_iter().map(String::from).collect::<Vec<_>>();
            out.push((Some(owned(anchors)), (!windowed).then(|| owned(cands))));
        }
        out
    }
}

/// The tokenizer thread's batches for step `step`, or, when it panicked, an error that says so (the
/// panic is not swallowed: the step would otherwise silently tokenize again, or hide a bad input).
pub(crate) fn prefetch_result<T>(joined: std::thread::Result<T>, step: u64) -> Result<T, TrainError> {
    joined.map_err(|panic| {
        other(format!("the tokenizer thread failed while preparing step {step}: {}", panic_message(panic.as_ref())))
    })
}

/// The message of a panic payload (`panic!` with a string or a format), for errors.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// `[rows, width]` of equally long label rows; `None` stays `None`.
pub(crate) fn labels_tensor(labels: Option<Vec<&[f32]>>) -> Result<Option<Tensor>, TrainError> {
    let Some(labels) = labels else { return Ok(None) };
    let w = labels[0].len();
    if let Some(bad) = labels.iter().find(|l| l.len() != w) {
        return Err(TrainError::Labels(format!(
            "rows of one batch have labels of {w} and {} values; give every row the same number of teacher scores",
            bad.len()
        )));
    }
    let flat: Vec<f32> = labels.iter().flat_map(|l| l.iter().copied()).collect();
    Ok(Some(Tensor::from_slice(&flat).view([labels.len() as i64, w as i64])))
}

fn active_dims(emb: &Tensor) -> f64 {
    emb.detach().gt(0.0).to_kind(Kind::Float).sum_dim_intlist([1i64].as_slice(), false, Kind::Float).mean(Kind::Float).double_value(&[])
}

pub(crate) fn fill_loss_stats(s: &mut StepStats, parts: &loss::LossParts, q: &Tensor, d: &Tensor) {
    s.loss = parts.ranking + parts.flops_query + parts.flops_document;
    s.ranking_loss = parts.ranking;
    s.flops_query = parts.flops_query;
    s.flops_document = parts.flops_document;
    s.query_regularizer_weight = parts.query_weight;
    s.document_regularizer_weight = parts.document_weight;
    match &parts.csr {
        Some(c) => {
            s.loss += c.reconstruction_k + c.reconstruction_4k + c.reconstruction_aux;
            s.query_active_dims = active_dims(&c.query_latents);
            s.document_active_dims = active_dims(&c.document_latents);
            s.csr = Some(super::CsrStepStats {
                reconstruction_k: c.reconstruction_k,
                reconstruction_4k: c.reconstruction_4k,
                reconstruction_aux: c.reconstruction_aux,
                dead_latents: c.dead_latents,
                stats_sum: c.stats_sum,
            });
        }
        None => {
            s.query_active_dims = active_dims(q);
            s.document_active_dims = active_dims(d);
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue #17): a panic in the tokenizer thread was swallowed (`unwrap_or_default`).
    #[test]
    fn a_panic_in_the_tokenizer_thread_is_an_error_naming_the_step_and_the_panic() {
        let joined = std::thread::spawn(|| -> Vec<u32> { panic!("tokenizer exploded on row 3") }).join();
        let e = prefetch_result(joined, 7).unwrap_err().to_string();
        assert_eq!(e, "the tokenizer thread failed while preparing step 7: tokenizer exploded on row 3");
        let ok = std::thread::spawn(|| vec![1u32]).join();
        assert_eq!(prefetch_result(ok, 7).unwrap(), vec![1]);
    }

    /// Regression (issue #17): ragged label widths reached `view` and panicked.
    #[test]
    fn ragged_labels_are_an_error_not_a_panic() {
        let ex = |label: Vec<f32>| Example { anchor: "a".into(), positive: "p".into(), negatives: vec![], label: Some(label) };
        let rows = [ex(vec![1.0, 2.0]), ex(vec![3.0])];
        let refs: Vec<&Example> = rows.iter().collect();
        let e = Trainer::labels(&refs).unwrap_err().to_string();
        assert_eq!(e, "rows of one batch have labels of 2 and 1 values; give every row the same number of teacher scores");
        let t = Trainer::labels(&refs[..1]).unwrap().unwrap();
        assert_eq!(t.size(), vec![1, 2]);
    }
}
