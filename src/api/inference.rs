//! The engine's OpenAI-compatible face, no memory involved: `/v1/embeddings`,
//! `/v1/completions` (streamed as server-sent events on request) and `/v1/models`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::Tenant;
use super::error::{ApiError, ApiJson};
use super::AppState;
use crate::model::generator::{FinishReason, GenerateRequest, GenerationEvent, GenerationSummary};
use crate::model::sampling::SamplingParams;

/// A string or a list of strings, as OpenAI's `input`, `prompt` and `stop` accept.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    pub input: OneOrMany,
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Accepted for OpenAI compatibility; one embedding model serves every request.
    #[serde(default)]
    #[allow(dead_code)]
    pub model: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    pub user: Option<IgnoredAny>,
}

/// Largest number of inputs in one embeddings request.
const MAX_INPUTS: usize = 2048;

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    _: Tenant,
    ApiJson(req): ApiJson<EmbeddingsRequest>,
) -> Result<Json<Value>, ApiError> {
    let engine = state.ready_engine()?;
    let embedder = engine.embedder.as_ref().ok_or_else(|| ApiError::not_found("no embedding model is configured"))?;
    if let Some(format) = req.encoding_format.as_deref().filter(|f| *f != "float") {
        return Err(ApiError::bad_request(format!("encoding_format `{format}` is not supported; use `float`")));
    }
    let inputs = req.input.into_vec();
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Err(ApiError::bad_request(format!("input must hold 1 to {MAX_INPUTS} strings, got {}", inputs.len())));
    }
    if let Some(i) = inputs.iter().position(|s| s.trim().is_empty()) {
        return Err(ApiError::bad_request(format!("input[{i}] is empty")));
    }
    let out = embedder.embed(inputs).await?;
    if !out.truncated.is_empty() && !state.embedder_truncates {
        return Err(ApiError::bad_request(format!(
            "input(s) {:?} are longer than the embedding model's limit of {} tokens",
            out.truncated,
            embedder.info().max_tokens
        )));
    }
    let data: Vec<Value> = out
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| json!({ "object": "embedding", "index": i, "embedding": v }))
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": embedder.info().name,
        "usage": { "prompt_tokens": out.tokens, "total_tokens": out.tokens },
        "truncated": out.truncated,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub prompt: String,
    /// Accepted for OpenAI compatibility; one chat model serves every request.
    #[serde(default)]
    #[allow(dead_code)]
    pub model: Option<IgnoredAny>,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default = "one")]
    pub temperature: f32,
    #[serde(default = "one")]
    pub top_p: f32,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub stop: Option<OneOrMany>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    #[allow(dead_code)]
    pub user: Option<IgnoredAny>,
}

fn default_max_tokens() -> usize {
    16
}

fn one() -> f32 {
    1.0
}

/// At most four stop strings, as OpenAI allows.
fn stop_list(stop: Option<OneOrMany>) -> Result<Vec<String>, ApiError> {
    let stop = stop.map(OneOrMany::into_vec).unwrap_or_default();
    if stop.len() > 4 {
        return Err(ApiError::bad_request("stop takes at most 4 strings"));
    }
    Ok(stop)
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    _: Tenant,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let engine = state.ready_engine()?;
    let generator = engine.generator.as_ref().ok_or_else(|| ApiError::not_found("no chat model is configured"))?;
    let sampling = SamplingParams {
        temperature: req.temperature,
        top_k: req.top_k.unwrap_or(0),
        top_p: req.top_p,
        repetition_penalty: req.repetition_penalty.unwrap_or(1.0),
        seed: req.seed,
    };
    let request =
        GenerateRequest { prompt: req.prompt, max_tokens: req.max_tokens, sampling, stop: stop_list(req.stop)? };
    let id = format!("cmpl-{}", ulid::Ulid::new());
    let model = generator.info().name.clone();
    let created = crate::store::records::now_ms() / 1000;
    if !req.stream {
        let (text, summary) = generator.generate_text(request).await?;
        return Ok(Json(json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{ "text": text, "index": 0, "logprobs": null, "finish_reason": summary.finish_reason }],
            "usage": usage(&summary),
        }))
        .into_response());
    }
    let mut events = generator.generate(request).await?;
    let chunk = move |text: &str, finish: Option<FinishReason>| CompletionChunk {
        id: id.clone(),
        object: "text_completion",
        created,
        model: model.clone(),
        choices: [ChunkChoice { text: text.to_owned(), index: 0, logprobs: None, finish_reason: finish }],
    };
    let stream = async_stream(move |tx| async move {
        while let Some(event) = events.recv().await {
            let data = match event {
                GenerationEvent::Text(t) => serde_json::to_string(&chunk(&t, None)),
                GenerationEvent::Done(summary) => {
                    let mut last = serde_json::to_value(chunk("", Some(summary.finish_reason))).unwrap_or_default();
                    last["usage"] = usage(&summary);
                    Ok(last.to_string())
                }
                GenerationEvent::Failed(reason) => {
                    Ok(json!({ "error": { "code": "internal", "message": reason } }).to_string())
                }
            };
            if tx.send(Event::default().data(data.unwrap_or_default())).await.is_err() {
                return; // the client left; dropping `events` stops the generation
            }
        }
        let _ = tx.send(Event::default().data("[DONE]")).await;
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

fn usage(s: &GenerationSummary) -> Value {
    json!({ "prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens,
            "total_tokens": s.prompt_tokens + s.completion_tokens })
}

#[derive(Serialize)]
struct CompletionChunk {
    id: String,
    object: &'static str,
    created: i64,
    model: String,
    choices: [ChunkChoice; 1],
}

#[derive(Serialize)]
struct ChunkChoice {
    text: String,
    index: usize,
    logprobs: Option<()>,
    finish_reason: Option<FinishReason>,
}

/// Runs `produce` as a task feeding a channel, and exposes the channel as the stream
/// an SSE response wants. Every streamed endpoint goes through here, and so through the
/// stall timeout of [`EventSink::send`]: the task ends when the client disconnects or
/// stops reading, and a generation it forwards is dropped with it.
pub fn async_stream<F, Fut>(produce: F) -> impl tokio_stream::Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(EventSink) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let stall = STREAM_STALL_TIMEOUT.try_with(|t| *t).unwrap_or(DEFAULT_STREAM_STALL_TIMEOUT);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let sink = EventSink { tx, stall, gone: AtomicBool::new(false) };
    tokio::spawn(tracing::Instrument::in_current_span(produce(sink)));
    tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}

/// The producing end of a streamed response.
pub struct EventSink {
    tx: tokio::sync::mpsc::Sender<Event>,
    stall: Duration,
    /// Set once the client left or stalled: later sends fail at once.
    gone: AtomicBool,
}

/// The client of a streamed response left, or stopped reading.
#[derive(Debug)]
pub struct StreamGone;

impl EventSink {
    /// Queues `event` for the client. The queue is short, so this waits while the
    /// client reads slowly, but not longer than `server.stream_stall_timeout_secs` with
    /// nothing read: past that the stream is given up (the caller then returns, which
    /// drops the generation it forwards).
    pub async fn send(&self, event: Event) -> Result<(), StreamGone> {
        if self.gone.load(Ordering::Relaxed) {
            return Err(StreamGone);
        }
        let sent = match tokio::time::timeout(self.stall, self.tx.send(event)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                tracing::warn!(stall_secs = self.stall.as_secs(), "the client stopped reading its stream; dropping it");
                false
            }
        };
        self.gone.store(!sent, Ordering::Relaxed);
        if sent {
            Ok(())
        } else {
            Err(StreamGone)
        }
    }
}

/// Used outside a request (unit tests); requests get the configured value.
const DEFAULT_STREAM_STALL_TIMEOUT: Duration = Duration::from_secs(30);

tokio::task_local! {
    /// The stall timeout for streams made while serving the current request. A task-local
    /// set by a layer around every route (see [`stream_stall_timeout_scope`]), so that the
    /// handlers that stream need not carry the setting to [`async_stream`].
    static STREAM_STALL_TIMEOUT: Duration;
}

/// Middleware: runs the request with `server.stream_stall_timeout_secs` in scope.
pub async fn stream_stall_timeout_scope(
    State(timeout): State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    STREAM_STALL_TIMEOUT.scope(timeout, next.run(request)).await
}

pub async fn models(State(state): State<Arc<AppState>>, _: Tenant) -> Result<Json<Value>, ApiError> {
    let engine = state.ready_engine()?;
    let mut data = Vec::new();
    if let Some(e) = &engine.embedder {
        data.push(json!({ "id": e.info().name, "object": "model", "owned_by": "engram", "kind": "embedding", "details": e.info() }));
    }
    if let Some(g) = &engine.generator {
        data.push(json!({ "id": g.info().name, "object": "model", "owned_by": "engram", "kind": "chat", "details": g.info() }));
    }
    Ok(Json(json!({ "object": "list", "data": data })))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    /// A stream made while serving a request configured with a 5 s stall timeout.
    async fn stream_with_stall_timeout<F, Fut>(
        produce: F,
    ) -> impl tokio_stream::Stream<Item = Result<Event, Infallible>>
    where
        F: FnOnce(EventSink) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        STREAM_STALL_TIMEOUT.scope(Duration::from_secs(5), async { async_stream(produce) }).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_nobody_reads_is_given_up_after_the_stall_timeout() {
        let (done, sent) = tokio::sync::oneshot::channel();
        let started = tokio::time::Instant::now();
        let _unread = stream_with_stall_timeout(move |sink| async move {
            let mut count = 0;
            while sink.send(Event::default().data("x")).await.is_ok() {
                count += 1;
            }
            // Once given up, a send fails at once rather than waiting again.
            assert!(sink.send(Event::default().data("y")).await.is_err());
            let _ = done.send(count);
        })
        .await;
        assert_eq!(sent.await.unwrap(), 16, "the queue filled, then nothing more was taken");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_keeps_its_stream() {
        let mut stream = stream_with_stall_timeout(|sink| async move {
            for i in 0..40 {
                if sink.send(Event::default().data(i.to_string())).await.is_err() {
                    return;
                }
            }
        })
        .await;
        let mut read = 0;
        while stream.next().await.is_some() {
            read += 1;
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
        assert_eq!(read, 40);
    }
}
