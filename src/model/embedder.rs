//! The embedding service: a sentence encoder owned by one OS thread, fed by a bounded
//! queue. Requests waiting in the queue are micro-batched together up to a token budget,
//! sorted by length so that padding stays small.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::bert::BertEncoder;
use super::engine_error::EngineError;
use super::model_thread::{self, Liveness};
use super::tokenizer::TextTokenizer;
use super::ResolvedDevice;

/// What was loaded, for logs, `/v1/models` and `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct EmbedderInfo {
    pub name: String,
    pub dimension: usize,
    pub max_tokens: usize,
    pub parameters: usize,
    pub device: String,
    pub dtype: String,
}

/// Tuning of the embedding worker (`[model.embedder]`).
#[derive(Debug, Clone)]
pub struct EmbedderOptions {
    pub queue_capacity: usize,
    /// Upper bound on padded tokens (longest input × batch size) per forward pass.
    pub max_batch_tokens: usize,
    pub threads: usize,
    /// The kind the encoder's dense layers multiply in (see
    /// [`BertEncoder::with_matmuls_in`]); the rest computes in the `kind` given to
    /// [`Embedder::start`].
    pub matmul_kind: tch::Kind,
}

/// The result of one request.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// One unit vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens the model saw, over all inputs (after truncation).
    pub tokens: usize,
    /// Indices of inputs longer than the model's limit, which were cut to it.
    pub truncated: Vec<usize>,
}

/// One input to embed.
#[derive(Debug, Clone)]
pub enum EmbedInput {
    Text(String),
    /// Token ids of the model's vocabulary, without its framing tokens ([CLS]/[SEP]):
    /// they are added as for a text, so a text's ids embed as the text does.
    Tokens(Vec<u32>),
}

struct Job {
    inputs: Vec<EmbedInput>,
    reply: oneshot::Sender<Result<Embeddings, EngineError>>,
    span: tracing::Span,
}

/// A cheap-to-clone handle to the embedding thread.
#[derive(Clone)]
pub struct Embedder {
    jobs: mpsc::Sender<Job>,
    tokenizer: Arc<TextTokenizer>,
    info: Arc<EmbedderInfo>,
    capacity: usize,
    liveness: Liveness,
}

impl Embedder {
    /// Loads the model from a Hugging Face-style folder on a new thread and waits until
    /// it is ready (or failed).
    pub fn start(
        dir: &Path,
        device: ResolvedDevice,
        kind: tch::Kind,
        opts: EmbedderOptions,
    ) -> Result<Self, EngineError> {
        let load_err = |e: String| EngineError::Load { what: dir.display().to_string(), reason: e };
        let tokenizer =
            Arc::new(TextTokenizer::from_hf_file(&dir.join("tokenizer.json")).map_err(|e| load_err(e.to_string()))?);
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(opts.queue_capacity.max(1));
        let dir_owned = dir.to_path_buf();
        let worker_tokenizer = tokenizer.clone();
        let max_batch_tokens = opts.max_batch_tokens.max(1);
        let matmul_kind = opts.matmul_kind;
        // Called again to reload the model after its thread crashed.
        let load = move || {
            fail::fail_point!("embedder::load", |reason: Option<String>| Err(reason.unwrap_or_default()));
            let encoder = BertEncoder::load(&dir_owned, device.0, kind)
                .and_then(|e| e.with_matmuls_in(matmul_kind))
                .map_err(|e| e.to_string())?;
            let info = EmbedderInfo {
                name: model_name(&dir_owned),
                dimension: encoder.dimension(),
                max_tokens: encoder.max_seq_length(),
                parameters: encoder.parameter_count(),
                device: device.to_string(),
                dtype: if matmul_kind == kind {
                    format!("{kind:?}")
                } else {
                    format!("{kind:?}, products in {matmul_kind:?}")
                },
            };
            Ok((encoder, info))
        };
        let serve = move |encoder, jobs: &mut mpsc::Receiver<Job>| {
            Worker { encoder, tokenizer: worker_tokenizer.clone(), max_batch_tokens }.run(jobs)
        };
        let (info, took, liveness) =
            model_thread::spawn("engram-embedder", "embedder", opts.threads, jobs_rx, load, serve).map_err(load_err)?;
        tracing::info!(
            model = %info.name, parameters = info.parameters, dtype = %info.dtype, device = %info.device,
            load_ms = took.as_millis() as u64, "embedding model loaded"
        );
        Ok(Self { jobs: jobs_tx, tokenizer, info: Arc::new(info), capacity: opts.queue_capacity, liveness })
    }

    /// Requests waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    pub fn info(&self) -> &EmbedderInfo {
        &self.info
    }

    /// False while the model is being reloaded after its thread crashed.
    pub fn is_running(&self) -> bool {
        self.liveness.is_running()
    }

    /// Tokens `text` takes, special tokens included (as the model will see it, before
    /// truncation).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.tokenizer.encode(text, true).map(|ids| ids.len()).unwrap_or(0)
    }

    /// Size of the vocabulary that token-id inputs index.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }

    /// Embeds `texts`; waits its turn in the queue, or fails fast with `Overloaded` when
    /// the queue is full.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Embeddings, EngineError> {
        self.embed_inputs(texts.into_iter().map(EmbedInput::Text).collect()).await
    }

    /// [`Self::embed`] for inputs that may be token ids; they are cut to the model's
    /// limit as texts are.
    pub async fn embed_inputs(&self, inputs: Vec<EmbedInput>) -> Result<Embeddings, EngineError> {
        if inputs.is_empty() {
            return Ok(Embeddings { vectors: Vec::new(), tokens: 0, truncated: Vec::new() });
        }
        if !self.is_running() {
            return Err(EngineError::Stopped("embedder"));
        }
        let (reply, answer) = oneshot::channel();
        let job = Job { inputs, reply, span: tracing::Span::current() };
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                EngineError::Overloaded { model: "embedder", capacity: self.capacity }
            }
            mpsc::error::TrySendError::Closed(_) => EngineError::Stopped("embedder"),
        })?;
        answer.await.map_err(|_| EngineError::Stopped("embedder"))?
    }
}

fn model_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

/// The thread that owns the encoder.
struct Worker {
    encoder: BertEncoder,
    tokenizer: Arc<TextTokenizer>,
    max_batch_tokens: usize,
}

/// One input of one job, tokenised.
struct Item {
    job: usize,
    index: usize,
    ids: Vec<u32>,
}

/// The padded length of a chunk whose longest input has `len` tokens on a GPU: a power of
/// two from 16, so that a few shapes serve every request.
fn length_bucket(len: usize) -> usize {
    len.next_power_of_two().max(16)
}

/// Splits inputs sorted by length (`lengths`) into forward passes: each a range of inputs
/// and the width to pad them to (0: the longest one's).
///
/// On the CPU a chunk ends at the token budget, or where the next input is over a quarter
/// (and 2 tokens) longer than the chunk's first: past that, padding wastes more than
/// smaller matrix products lose (measured with `engram bench embed`). On a GPU padding is
/// nearly free while every forward pass pays a launch cost per kernel, so a chunk ends at
/// the token budget only and is padded to a length bucket, so that shapes repeat (measured
/// on an H200: mixed lengths split the CPU's way ran 50x slower than one repeated shape).
fn chunks(lengths: &[usize], max_batch_tokens: usize, on_gpu: bool) -> Vec<(std::ops::Range<usize>, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < lengths.len() {
        let shortest = lengths[start];
        let mut end = start + 1;
        while end < lengths.len() {
            let width = if on_gpu { length_bucket(lengths[end]) } else { lengths[end] };
            let fits = width * (end + 1 - start) <= max_batch_tokens;
            let close = on_gpu || lengths[end] * 4 <= shortest * 5 + 8;
            if !(fits && close) {
                break;
            }
            end += 1;
        }
        out.push((start..end, if on_gpu { length_bucket(lengths[end - 1]) } else { 0 }));
        start = end;
    }
    out
}

impl Worker {
    fn run(&self, jobs: &mut mpsc::Receiver<Job>) {
        while let Some(first) = jobs.blocking_recv() {
            // A fault outside the per-batch guard below: the supervisor restarts the thread.
            fail::fail_point!("embedder::worker");
            // Whatever queued up while the last batch ran goes into this one. Texts are
            // counted at a typical 16 tokens here; the chunking in `serve` enforces the
            // real token budget per forward pass.
            let mut batch = vec![first];
            let mut queued_texts: usize = batch[0].inputs.len();
            while queued_texts * 16 < self.max_batch_tokens {
                match jobs.try_recv() {
                    Ok(job) => {
                        queued_texts += job.inputs.len();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            metrics::histogram!("engram_embedder_batch_texts").record(queued_texts as f64);
            // A panic answers this batch's jobs with an error; the thread carries on.
            let results = model_thread::catch(|| self.serve(&batch)).unwrap_or_else(|reason| {
                tracing::error!(jobs = batch.len(), "embedding panicked: {reason}");
                batch.iter().map(|_| Err(EngineError::Runtime { model: "embedder", reason: reason.clone() })).collect()
            });
            for (job, result) in batch.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
    }

    /// The answers to a batch of jobs, in order.
    fn serve(&self, jobs: &[Job]) -> Vec<Result<Embeddings, EngineError>> {
        let limit = self.encoder.max_seq_length();
        let mut items = Vec::new();
        let mut results: Vec<Result<Embeddings, EngineError>> = Vec::with_capacity(jobs.len());
        for (j, job) in jobs.iter().enumerate() {
            let _enter = job.span.enter();
            let mut truncated = Vec::new();
            let mut tokens = 0;
            let mut failed = None;
            for (i, input) in job.inputs.iter().enumerate() {
                let encoded = match input {
                    EmbedInput::Text(text) => self.tokenizer.encode(text, true),
                    EmbedInput::Tokens(ids) => self.tokenizer.frame_ids(ids),
                };
                match encoded {
                    Ok(mut ids) => {
                        if let Some(&last) = ids.last().filter(|_| ids.len() > limit) {
                            // Keep the final [SEP]: the model was trained with it.
                            ids.truncate(limit.saturating_sub(1));
                            ids.push(last);
                            truncated.push(i);
                        }
                        tokens += ids.len();
                        items.push(Item { job: j, index: i, ids });
                    }
                    Err(e) => failed = Some(EngineError::Invalid(format!("input {i}: {e}"))),
                }
            }
            results.push(match failed {
                Some(e) => Err(e),
                None => Ok(Embeddings { vectors: vec![Vec::new(); job.inputs.len()], tokens, truncated }),
            });
        }
        items.retain(|it| results[it.job].is_ok());
        items.sort_by_key(|it| it.ids.len());
        let lengths: Vec<usize> = items.iter().map(|it| it.ids.len()).collect();
        for (range, width) in chunks(&lengths, self.max_batch_tokens, self.encoder.device().is_cuda()) {
            let (start, end) = (range.start, range.end);
            let chunk: Vec<Vec<u32>> = items[start..end].iter().map(|it| it.ids.clone()).collect();
            match self.encoder.embed_padded(&chunk, width) {
                Ok(vectors) => {
                    for (it, v) in items[start..end].iter().zip(vectors) {
                        if let Ok(r) = &mut results[it.job] {
                            r.vectors[it.index] = v;
                        }
                    }
                }
                Err(e) => {
                    let reason = e.to_string();
                    tracing::error!("embedding failed: {reason}");
                    for it in &items[start..end] {
                        results[it.job] = Err(EngineError::Runtime { model: "embedder", reason: reason.clone() });
                    }
                }
            }
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_splits_by_length_and_a_gpu_by_budget_into_few_shapes() {
        let lengths = [5, 6, 9, 12, 20, 31, 40, 64, 100];
        let cpu = chunks(&lengths, 8192, false);
        assert!(cpu.len() > 3, "{cpu:?}");
        assert!(cpu.iter().all(|(_, w)| *w == 0));
        // Every input in exactly one chunk, in order.
        let covered: Vec<usize> = cpu.iter().flat_map(|(r, _)| r.clone()).collect();
        assert_eq!(covered, (0..lengths.len()).collect::<Vec<_>>());
        // On a GPU: one pass, padded to the bucket of the longest.
        assert_eq!(chunks(&lengths, 8192, true), vec![(0..9, 128)]);
        // The budget still holds on a GPU: 100 inputs of 30 tokens pad to 32; 8192 / 32 = 256
        // per pass, 64 with a budget of 2048.
        let many = vec![30; 100];
        let gpu = chunks(&many, 2048, true);
        assert_eq!(gpu.iter().map(|(r, _)| r.len()).collect::<Vec<_>>(), vec![64, 36]);
        assert!(gpu.iter().all(|(_, w)| *w == 32));
        assert_eq!(length_bucket(1), 16);
        assert_eq!(length_bucket(17), 32);
        assert_eq!(length_bucket(256), 256);
    }
}
