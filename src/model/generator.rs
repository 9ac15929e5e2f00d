//! The generation service: a chat model owned by one OS thread, fed by a bounded queue.
//! It serves one sequence at a time (what a CPU can do); requests carry everything a
//! batched decoder would need, so batching can come later without changing callers.
//!
//! Text streams back through a channel as it is generated. The channel is unbounded (a
//! generation is bounded by its `max_tokens` anyway), so the model never waits on a
//! caller that reads slowly or not at all; a caller that goes away (a dropped receiver)
//! stops its generation at the next token.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;

use super::attention_probe::{attribution_layers, AttentionProbe};
use super::chat_template::{ChatMessage, ChatTemplate};
use super::engine_error::EngineError;
use super::gguf::GgufFile;
use super::llama::{KvCache, Llama};
use super::llama_loader::WeightFormat;
use super::model_thread::{self, Liveness};
use super::prompt_cache::{CacheKey, CacheStats, PromptCache};
use super::sampling::{log_probs, Sampler, SamplingParams};
use super::text_stream::TextStream;
use super::tokenizer::TextTokenizer;
use super::ResolvedDevice;

/// What was loaded, for logs, `/v1/models` and `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct GeneratorInfo {
    pub name: String,
    pub parameters: usize,
    pub context_length: usize,
    pub device: String,
    pub dtype: String,
}

/// Tuning of the generation worker (`[model.generator]`).
#[derive(Debug, Clone)]
pub struct GeneratorOptions {
    pub queue_capacity: usize,
    pub threads: usize,
    /// Bytes of attention caches kept between a session's turns (0: none kept); see
    /// [`super::prompt_cache`].
    pub session_cache_bytes: usize,
    /// How the weights are held: the file's quantised blocks (CPU) or dequantised.
    pub weights: WeightFormat,
}

/// One generation request.
#[derive(Debug, Clone, Default)]
pub struct GenerateRequest {
    /// The prompt, already rendered (see [`Generator::render_chat`]).
    pub prompt: String,
    /// The prompt as token ids of the model's vocabulary, used instead of `prompt` when
    /// set (taken as they are: no framing token is added).
    pub prompt_ids: Option<Vec<u32>>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends before any of these; they are never part of the text.
    pub stop: Vec<String>,
    /// Report each generated token's log-probability, with this many most likely
    /// alternatives (as [`GenerationEvent::Logprob`]); `None` reports nothing.
    pub logprobs: Option<usize>,
    /// The session this prompt continues: its attention cache is reused for the prefix
    /// the prompt shares with the session's previous one, and kept for the next.
    pub cache_key: Option<CacheKey>,
    /// Byte ranges of `prompt` whose share of the reply's attention to report, as
    /// [`GenerationSummary::attention_shares`] (see [`AttentionProbe`]); empty: nothing
    /// is probed and generation runs at full speed. Ignored with `prompt_ids`.
    pub attend_spans: Vec<Range<usize>>,
}

/// One generated token with its log-probability under the model (the log-softmax of its
/// raw logits, before sampling adjusts them), and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: TokenChoice,
    /// The most likely tokens at that step, best first.
    pub top: Vec<TokenChoice>,
}

/// A token's bytes (a token may hold part of a character; a special token gives its
/// literal text) and its log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenChoice {
    pub id: u32,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its answer, or a stop string was reached.
    Stop,
    /// `max_tokens`, or the context window, was reached.
    Length,
}

/// Counts and timings of a finished generation.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationSummary {
    pub prompt_tokens: usize,
    /// Prompt tokens whose attention state came from the session's cache, not computed.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    /// Per [`GenerateRequest::attend_spans`] entry, in order, the attention its tokens got.
    #[serde(skip)]
    pub attention: Vec<SpanAttention>,
    /// Per generated token, when the request asked for log-probabilities: filled by
    /// [`Generator::generate_text`] (a stream carries them as events instead).
    #[serde(skip)]
    pub logprobs: Vec<TokenLogprob>,
    #[serde(skip)]
    pub prefill: Duration,
    #[serde(skip)]
    pub decode: Duration,
}

/// How much of a reply's attention a stretch of its prompt got.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanAttention {
    /// The share of the attention, 0 to 1 (see [`AttentionProbe`]).
    pub share: f32,
    /// The prompt tokens the stretch covers.
    pub tokens: usize,
}

impl SpanAttention {
    /// The attention per token against an even spread over the prompt's `prompt_tokens`
    /// (1: as much as an average stretch of the prompt of the same length).
    pub fn lift(&self, prompt_tokens: usize) -> f32 {
        if self.tokens == 0 {
            return 0.0;
        }
        self.share * prompt_tokens as f32 / self.tokens as f32
    }
}

/// What the stream carries: text pieces, then exactly one `Done` or `Failed`. When asked
/// for, each generated token's `Logprob` comes before the text it released (text held
/// back, as a part of a character or of a possible stop string, comes later), and the
/// tokens that ended in a stop string still have theirs.
#[derive(Debug, Clone)]
pub enum GenerationEvent {
    Text(String),
    Logprob(TokenLogprob),
    Done(GenerationSummary),
    Failed(String),
}

struct Job {
    prompt_ids: Vec<u32>,
    max_tokens: usize,
    sampling: SamplingParams,
    stop: Vec<String>,
    logprobs: Option<usize>,
    cache_key: Option<CacheKey>,
    /// Token ranges of the prompt to attribute the reply to (see `attend_spans`).
    spans: Vec<Range<usize>>,
    events: mpsc::UnboundedSender<GenerationEvent>,
    span: tracing::Span,
}

/// How decoding ended, when it did not fail.
enum Decoded {
    Finished { generated: usize, finish: FinishReason, decode: Duration },
    Cancelled { completion_tokens: usize },
}

/// How a job ended, when it did not fail.
enum Outcome {
    Finished(GenerationSummary),
    /// Its caller went away after this many tokens.
    Cancelled {
        completion_tokens: usize,
    },
}

/// A cheap-to-clone handle to the generation thread.
#[derive(Clone)]
pub struct Generator {
    jobs: mpsc::Sender<Job>,
    tokenizer: Arc<TextTokenizer>,
    template: Arc<ChatTemplate>,
    info: Arc<GeneratorInfo>,
    capacity: usize,
    liveness: Liveness,
    prompt_cache: Arc<Mutex<PromptCache>>,
}

impl Generator {
    /// Loads a GGUF file on a new thread and waits until it is ready (or failed).
    pub fn start(
        path: &Path,
        device: ResolvedDevice,
        kind: tch::Kind,
        opts: GeneratorOptions,
    ) -> Result<Self, EngineError> {
        let load_err = |e: String| EngineError::Load { what: path.display().to_string(), reason: e };
        let file = GgufFile::open(path).map_err(|e| load_err(e.to_string()))?;
        let tokenizer = Arc::new(TextTokenizer::from_gguf(&file).map_err(|e| load_err(e.to_string()))?);
        let template = chat_template_of(&file, &tokenizer).map_err(load_err)?;
        drop(file);
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(opts.queue_capacity.max(1));
        let path_owned = path.to_path_buf();
        let worker_tokenizer = tokenizer.clone();
        let prompt_cache = Arc::new(Mutex::new(PromptCache::new(opts.session_cache_bytes)));
        let worker_cache = prompt_cache.clone();
        // Called again to reload the model after its thread crashed.
        let load = move || {
            fail::fail_point!("generator::load", |reason: Option<String>| Err(reason.unwrap_or_default()));
            let model = super::llama_loader::load_gguf_as(&path_owned, device.0, kind, opts.weights)
                .map_err(|e| e.to_string())?;
            let info = GeneratorInfo {
                name: path_owned.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
                parameters: model.parameter_count(),
                context_length: model.config().max_position_embeddings,
                device: device.to_string(),
                dtype: if model.is_quantized() { "gguf blocks".into() } else { format!("{kind:?}") },
            };
            Ok((model, info))
        };
        let serve = move |model, jobs: &mut mpsc::Receiver<Job>| {
            Worker { model, tokenizer: worker_tokenizer.clone(), prompt_cache: worker_cache.clone() }.run(jobs)
        };
        let (info, took, liveness) =
            model_thread::spawn("engram-generator", "chat model", opts.threads, jobs_rx, load, serve)
                .map_err(load_err)?;
        tracing::info!(
            model = %info.name, parameters = info.parameters, context = info.context_length,
            dtype = %info.dtype, device = %info.device, load_ms = took.as_millis() as u64, "chat model loaded"
        );
        Ok(Self {
            jobs: jobs_tx,
            tokenizer,
            template: Arc::new(template),
            info: Arc::new(info),
            capacity: opts.queue_capacity,
            liveness,
            prompt_cache,
        })
    }

    /// Requests waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    pub fn info(&self) -> &GeneratorInfo {
        &self.info
    }

    /// Drops the attention cache kept for a session (its next turn computes its prompt
    /// afresh, or from a prefix another session of the scope shares).
    pub fn forget_session(&self, scope: &str, session: &str) {
        self.prompt_cache.lock().forget_session(scope, session);
    }

    /// Drops every attention cache kept for the scope.
    pub fn forget_scope(&self, scope: &str) {
        self.prompt_cache.lock().forget_scope(scope);
    }

    /// What the session caches hold now.
    pub fn prompt_cache_stats(&self) -> CacheStats {
        self.prompt_cache.lock().stats()
    }

    /// False while the model is being reloaded after its thread crashed.
    pub fn is_running(&self) -> bool {
        self.liveness.is_running()
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Tokens `text` takes in this model's vocabulary (no special tokens added).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.tokenizer.encode(text, false).map(|ids| ids.len()).unwrap_or(0)
    }

    /// Renders chat messages into a prompt with the model's own chat template.
    pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, EngineError> {
        self.template.render(messages, add_generation_prompt).map_err(|e| EngineError::Invalid(e.to_string()))
    }

    /// Queues a generation and returns its event stream. Fails at once when the prompt
    /// does not fit the context window, or with `Overloaded` when the queue is full.
    pub async fn generate(
        &self,
        req: GenerateRequest,
    ) -> Result<mpsc::UnboundedReceiver<GenerationEvent>, EngineError> {
        req.sampling.validate().map_err(|e| EngineError::Invalid(e.to_string()))?;
        if req.max_tokens == 0 {
            return Err(EngineError::Invalid("max_tokens must be at least 1".into()));
        }
        let vocab = self.tokenizer.vocab_size();
        if let Some((id, _)) = req.sampling.logit_bias.iter().find(|(id, _)| *id as usize >= vocab) {
            return Err(EngineError::Invalid(format!("logit_bias: token {id} is outside the vocabulary of {vocab}")));
        }
        let (prompt_ids, spans, req) = self.tokenize_prompt(req).await?;
        if let Some(id) = prompt_ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(EngineError::Invalid(format!("prompt: token {id} is outside the vocabulary of {vocab}")));
        }
        let context = self.info.context_length;
        if prompt_ids.is_empty() {
            return Err(EngineError::Invalid("the prompt is empty".into()));
        }
        if prompt_ids.len() >= context {
            return Err(EngineError::Invalid(format!(
                "the prompt is {} tokens; the model's context window is {context} tokens",
                prompt_ids.len()
            )));
        }
        if !self.is_running() {
            return Err(EngineError::Stopped("chat model"));
        }
        let max_tokens = req.max_tokens.min(context - prompt_ids.len());
        let (events, stream) = mpsc::unbounded_channel();
        let job = Job {
            prompt_ids,
            max_tokens,
            sampling: req.sampling,
            stop: req.stop,
            logprobs: req.logprobs,
            cache_key: req.cache_key,
            spans,
            events,
            span: tracing::Span::current(),
        };
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                EngineError::Overloaded { model: "chat model", capacity: self.capacity }
            }
            mpsc::error::TrySendError::Closed(_) => EngineError::Stopped("chat model"),
        })?;
        Ok(stream)
    }

    /// The prompt's token ids: as given, or the prompt text tokenised; and the token
    /// ranges of `attend_spans`. Tokenising a long prompt takes milliseconds of CPU, so it
    /// runs on the blocking pool rather than on the async worker that called. The
    /// request comes back for the rest of its fields.
    async fn tokenize_prompt(
        &self,
        mut req: GenerateRequest,
    ) -> Result<(Vec<u32>, Vec<Range<usize>>, GenerateRequest), EngineError> {
        if let Some(ids) = req.prompt_ids.take() {
            return Ok((ids, Vec::new(), req));
        }
        let tokenizer = self.tokenizer.clone();
        let (encoded, req) = tokio::task::spawn_blocking(move || {
            // The template already wrote any BOS it wants, so no special tokens are added.
            let encoded = tokenizer.encode(&req.prompt, false).map(|ids| {
                let lens = ids.iter().map(|&id| tokenizer.token_bytes(id).len());
                let spans = token_spans(lens, req.prompt.len(), &req.attend_spans);
                (ids, spans)
            });
            (encoded, req)
        })
        .await
        .map_err(|e| EngineError::Runtime { model: "chat model", reason: format!("tokenising the prompt: {e}") })?;
        let (ids, spans) = encoded.map_err(|e| EngineError::Invalid(e.to_string()))?;
        Ok((ids, spans, req))
    }

    /// Generates to the end and returns the whole text with its summary.
    pub async fn generate_text(&self, req: GenerateRequest) -> Result<(String, GenerationSummary), EngineError> {
        let mut events = self.generate(req).await?;
        let mut text = String::new();
        let mut logprobs = Vec::new();
        while let Some(event) = events.recv().await {
            match event {
                GenerationEvent::Text(t) => text.push_str(&t),
                GenerationEvent::Logprob(l) => logprobs.push(l),
                GenerationEvent::Done(summary) => return Ok((text, GenerationSummary { logprobs, ..summary })),
                GenerationEvent::Failed(reason) => return Err(EngineError::Runtime { model: "chat model", reason }),
            }
        }
        Err(EngineError::Stopped("chat model"))
    }
}

/// The token ranges covering byte ranges `spans` of a prompt of `prompt_len` bytes
/// whose tokens are `token_lens` bytes long: a token belongs to a span when any of its
/// bytes does. Token bytes laid end to end give the prompt back (byte-level BPE); if they
/// do not, attribution cannot be placed and every range is empty.
fn token_spans(
    token_lens: impl Iterator<Item = usize>,
    prompt_len: usize,
    spans: &[Range<usize>],
) -> Vec<Range<usize>> {
    if spans.is_empty() {
        return Vec::new();
    }
    let mut ends = Vec::new();
    let mut at = 0;
    for len in token_lens {
        at += len;
        ends.push(at);
    }
    if at != prompt_len {
        tracing::warn!(tokens_bytes = at, prompt_len, "the prompt's tokens do not spell it; no attribution");
        return spans.iter().map(|_| 0..0).collect();
    }
    spans
        .iter()
        .map(|s| {
            // First token ending after the span starts; first token starting at or after its end.
            let first = ends.partition_point(|&e| e <= s.start);
            let last = ends.partition_point(|&e| e < s.end) + 1;
            if s.is_empty() {
                first..first
            } else {
                first..last.min(ends.len())
            }
        })
        .collect()
}

/// The model's chat template, or ChatML when the file has none.
fn chat_template_of(file: &GgufFile, tokenizer: &TextTokenizer) -> Result<ChatTemplate, String> {
    let token_text = |id: Option<u32>| id.and_then(|id| tokenizer.token_text(id)).unwrap_or_default();
    let (bos, eos) = (token_text(tokenizer.bos_id()), token_text(tokenizer.eos_id()));
    let source = file.get_str("tokenizer.chat_template").unwrap_or(super::chat_template::CHATML_TEMPLATE);
    ChatTemplate::new(source, &bos, &eos).map_err(|e| format!("its chat template: {e}"))
}

/// The thread that owns the model.
struct Worker {
    model: Llama,
    tokenizer: Arc<TextTokenizer>,
    prompt_cache: Arc<Mutex<PromptCache>>,
}

impl Worker {
    fn run(&self, jobs: &mut mpsc::Receiver<Job>) {
        while let Some(job) = jobs.blocking_recv() {
            // A fault outside the per-job guard below: the supervisor restarts the thread.
            fail::fail_point!("generator::worker");
            let span = job.span.clone();
            let _enter = span.enter();
            if job.events.is_closed() {
                continue; // its caller left while it waited
            }
            let events = job.events.clone();
            // A panic answers this job with an error; the thread carries on.
            let outcome = model_thread::catch(|| self.generate(job)).unwrap_or_else(Err);
            let event = match outcome {
                Ok(Outcome::Finished(summary)) => {
                    tracing::info!(
                        prompt_tokens = summary.prompt_tokens, completion_tokens = summary.completion_tokens,
                        finish_reason = ?summary.finish_reason, decode_ms = summary.decode.as_millis() as u64,
                        "generation finished"
                    );
                    GenerationEvent::Done(summary)
                }
                Ok(Outcome::Cancelled { completion_tokens }) => {
                    tracing::info!(completion_tokens, "generation cancelled: its caller went away");
                    continue;
                }
                Err(e) => {
                    tracing::error!("generation failed: {e}");
                    GenerationEvent::Failed(e)
                }
            };
            let _ = events.send(event);
        }
    }

    /// Runs one job.
    fn generate(&self, job: Job) -> Result<Outcome, String> {
        let started = Instant::now();
        let mut lease = self
            .prompt_cache
            .lock()
            .check_out(job.cache_key.as_ref(), &job.prompt_ids, self.model.reuse_granularity(), || {
                self.model.new_cache()
            })
            .map_err(|e| format!("copying a cached prefix: {e}"))?;
        let cached_tokens = lease.reused;
        let mut probe = match job.spans.is_empty() {
            true => None,
            false => Some(
                AttentionProbe::new(
                    attribution_layers(self.model.config().num_layers),
                    job.prompt_ids.len() + job.max_tokens,
                    self.model.device(),
                )
                .map_err(|e| format!("setting up attribution: {e}"))?,
            ),
        };
        let mut logits = self
            .model
            .forward_probed(&job.prompt_ids[cached_tokens..], &mut lease.kv, probe.as_mut())
            .map_err(|e| e.to_string())?;
        let prefill = started.elapsed();
        // From here on the cache is handed back however the generation ends (a panic
        // drops it instead). It is kept for the prompt's positions only: the generated
        // tokens' keys and values were computed one at a time, which gives numbers a hair
        // apart from a prefill's, and the next turn's prompt holds the reply as text that
        // a turn without the cache would prefill — replies must not depend on the cache.
        let mut history = job.prompt_ids.clone();
        let result = self.decode(&job, &mut lease.kv, &mut logits, &mut history, probe.as_mut());
        self.prompt_cache.lock().check_in(lease, job.prompt_ids.clone());
        let (generated, finish, decode) = match result? {
            Decoded::Cancelled { completion_tokens } => return Ok(Outcome::Cancelled { completion_tokens }),
            Decoded::Finished { generated, finish, decode } => (generated, finish, decode),
        };
        // Time to first token as the model sees it: the prefill, after the queue.
        metrics::histogram!("engram_generation_first_token_seconds").record(prefill.as_secs_f64());
        metrics::counter!("engram_generation_prompt_tokens_total").increment(job.prompt_ids.len() as u64);
        metrics::counter!("engram_generation_cached_tokens_total").increment(cached_tokens as u64);
        metrics::counter!("engram_generation_tokens_total").increment(generated as u64);
        metrics::histogram!("engram_generation_decode_tokens_per_second")
            .record(generated as f64 / decode.as_secs_f64().max(1e-9));
        let attention = match &probe {
            Some(p) => {
                let shares = p.shares(&job.spans).map_err(|e| format!("reading attribution: {e}"))?;
                shares.into_iter().zip(&job.spans).map(|(share, s)| SpanAttention { share, tokens: s.len() }).collect()
            }
            None => Vec::new(),
        };
        Ok(Outcome::Finished(GenerationSummary {
            prompt_tokens: job.prompt_ids.len(),
            cached_tokens,
            completion_tokens: generated,
            finish_reason: finish,
            attention,
            logprobs: Vec::new(),
            prefill,
            decode,
        }))
    }

    /// Samples and feeds tokens until the job ends; `history` gains each sampled token.
    fn decode(
        &self,
        job: &Job,
        cache: &mut KvCache,
        logits: &mut Vec<f32>,
        history: &mut Vec<u32>,
        mut probe: Option<&mut AttentionProbe>,
    ) -> Result<Decoded, String> {
        let eos = self.tokenizer.eos_id();
        let mut sampler = Sampler::new(job.sampling.clone());
        let mut stream = TextStream::new(job.stop.clone());
        let mut generated = 0;
        let mut finish = FinishReason::Length;
        let decode_started = Instant::now();
        while generated < job.max_tokens {
            // The model's own distribution, before the sampler adjusts the logits.
            let raw = job.logprobs.map(|_| logits.clone());
            let token = sampler.sample(logits, history);
            generated += 1;
            if Some(token) == eos {
                finish = FinishReason::Stop;
                break;
            }
            history.push(token);
            if let (Some(raw), Some(top)) = (raw, job.logprobs) {
                let entry = self.logprob_of(&raw, token, top);
                if job.events.send(GenerationEvent::Logprob(entry)).is_err() {
                    return Ok(Decoded::Cancelled { completion_tokens: generated });
                }
            }
            // Control tokens (<|im_start|>, <|endoftext|>…) are markup, not text.
            let bytes = if self.tokenizer.is_special(token) { Vec::new() } else { self.tokenizer.token_bytes(token) };
            let released = stream.push(&bytes);
            if !released.text.is_empty() && job.events.send(GenerationEvent::Text(released.text)).is_err() {
                return Ok(Decoded::Cancelled { completion_tokens: generated });
            }
            if released.stopped {
                finish = FinishReason::Stop;
                break;
            }
            if generated == job.max_tokens {
                break;
            }
            if job.events.is_closed() {
                return Ok(Decoded::Cancelled { completion_tokens: generated });
            }
            // Where a fault in libtorch would strike (tests inject panics and errors here).
            fail::fail_point!("generator::decode", |reason: Option<String>| Err(reason.unwrap_or_default()));
            *logits = self.model.forward_probed(&[token], cache, probe.as_deref_mut()).map_err(|e| e.to_string())?;
        }
        let tail = stream.finish();
        if !tail.is_empty() && job.events.send(GenerationEvent::Text(tail)).is_err() {
            return Ok(Decoded::Cancelled { completion_tokens: generated });
        }
        Ok(Decoded::Finished { generated, finish, decode: decode_started.elapsed() })
    }

    /// `token`'s log-probability under `logits`, with the `top` most likely tokens.
    fn logprob_of(&self, logits: &[f32], token: u32, top: usize) -> TokenLogprob {
        let (logprob, best) = log_probs(logits, token, top);
        let choice = |id: u32, logprob: f32| TokenChoice { id, bytes: self.tokenizer.token_bytes(id), logprob };
        TokenLogprob { token: choice(token, logprob), top: best.into_iter().map(|(id, l)| choice(id, l)).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::token_spans;

    #[test]
    fn byte_spans_become_the_tokens_that_overlap_them() {
        // Tokens of 3, 2, 4 and 1 bytes: [0,3) [3,5) [5,9) [9,10).
        let lens = || [3, 2, 4, 1].into_iter();
        assert_eq!(token_spans(lens(), 10, &[3..5, 0..10, 4..6, 9..10, 5..5]), [1..2, 0..4, 1..3, 3..4, 2..2]);
        assert!(token_spans(lens(), 10, &[]).is_empty());
        // Tokens that do not spell the prompt place nothing.
        assert_eq!(token_spans(lens(), 11, &[0..3]), [0..0]);
    }
}
