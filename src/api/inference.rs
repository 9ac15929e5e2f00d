//! The engine's OpenAI-compatible face, no memory involved: `/v1/embeddings` and
//! `/v1/models` (`/v1/completions` is in `completions.rs`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::Event;
use axum::response::Response;
use axum::Json;
use base64::Engine as _;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Tenant;
use super::error::{ApiError, ApiJson, ErrorResponse};
use super::openai_fields::{token_ids, Item, TextOrTokens};
use super::AppState;
use crate::model::embedder::{EmbedInput, EmbedderInfo};
use crate::model::generator::GeneratorInfo;

/// OpenAI's embeddings request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    /// A text, a list of texts, a list of token ids, or a list of such lists (1 to 2048 inputs).
    pub input: TextOrTokens,
    /// `float` (a list of numbers, the default) or `base64` (each vector's f32 values,
    /// little-endian, base64-encoded: what OpenAI's clients ask for by default).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Accepted when it is the model's own dimension: vectors are never shortened.
    #[serde(default)]
    pub dimensions: Option<i64>,
    /// Accepted for OpenAI compatibility; one embedding model serves every request.
    #[serde(default)]
    #[allow(dead_code)]
    #[schema(value_type = Option<String>)]
    pub model: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    #[schema(value_type = Option<String>)]
    pub user: Option<IgnoredAny>,
}

/// A vector: numbers, or with `encoding_format: base64` the f32 values little-endian in base64.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

/// One input's vector.
#[derive(Debug, Serialize, ToSchema)]
pub struct Embedding {
    /// Always `embedding`.
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingVector,
}

/// Tokens read.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// OpenAI's embeddings response, plus which inputs were cut to the model's limit.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingsResponse {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingUsage,
    /// Indices of the inputs cut to the model's token limit (`model.embedder.truncate`).
    pub truncated: Vec<usize>,
}

/// Largest number of inputs in one embeddings request.
const MAX_INPUTS: usize = 2048;

/// Embeds texts with the sentence encoder (OpenAI's embeddings API).
#[utoipa::path(post, path = "/v1/embeddings", tag = "models", request_body = EmbeddingsRequest, responses(
    (status = 200, description = "One unit vector per input, in order", body = EmbeddingsResponse),
    (status = 404, description = "No embedding model is configured", body = ErrorResponse),
    (status = 429, description = "The model's queue is full; retry after `Retry-After`", body = ErrorResponse),
))]
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    _: Tenant,
    ApiJson(req): ApiJson<EmbeddingsRequest>,
) -> Result<Json<EmbeddingsResponse>, ApiError> {
    let engine = state.ready_engine()?;
    let embedder = engine.embedder.as_ref().ok_or_else(|| ApiError::not_found("no embedding model is configured"))?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "encoding_format",
                format_args!("`{other}` is not `float` or `base64`"),
            ))
        }
    };
    let dimension = embedder.info().dimension;
    if let Some(asked) = req.dimensions.filter(|&d| d != dimension as i64) {
        return Err(ApiError::invalid_field(
            "dimensions",
            format_args!("the model's vectors have {dimension} dimensions and are not shortened; {asked} were asked"),
        ));
    }
    let inputs = embed_inputs(req.input, embedder.vocab_size())?;
    let out = embedder.embed_inputs(inputs).await?;
    if !out.truncated.is_empty() && !state.embedder_truncates {
        return Err(ApiError::invalid_field(
            "input",
            format_args!(
                "input(s) {:?} are longer than the embedding model's limit of {} tokens",
                out.truncated,
                embedder.info().max_tokens
            ),
        ));
    }
    let data = out
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding =
                if base64 { EmbeddingVector::Base64(base64_f32(v)) } else { EmbeddingVector::Float(v.to_vec()) };
            Embedding { object: "embedding", index: i, embedding }
        })
        .collect();
    Ok(Json(EmbeddingsResponse {
        object: "list",
        data,
        model: embedder.info().name.clone(),
        usage: EmbeddingUsage { prompt_tokens: out.tokens, total_tokens: out.tokens },
        truncated: out.truncated,
    }))
}

/// The request's inputs, checked: 1 to [`MAX_INPUTS`] of them, none empty, token ids
/// within the vocabulary of `vocab` ids.
fn embed_inputs(input: TextOrTokens, vocab: usize) -> Result<Vec<EmbedInput>, ApiError> {
    let is_list = input.is_list();
    let items = input.into_items();
    if items.is_empty() || items.len() > MAX_INPUTS {
        return Err(ApiError::invalid_field(
            "input",
            format_args!("must hold 1 to {MAX_INPUTS} inputs, got {}", items.len()),
        ));
    }
    let param = |i: usize| if is_list { format!("input[{i}]") } else { "input".to_owned() };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Item::Text(s) if s.trim().is_empty() => Err(ApiError::invalid_field(&param(i), "is empty")),
            Item::Tokens(ids) if ids.is_empty() => Err(ApiError::invalid_field(&param(i), "is empty")),
            Item::Text(s) => Ok(EmbedInput::Text(s)),
            Item::Tokens(ids) => Ok(EmbedInput::Tokens(token_ids(&ids, vocab, &param(i))?)),
        })
        .collect()
}

/// A vector as OpenAI's `base64` encoding has it: its f32 values' little-endian bytes.
fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
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

/// The sentence encoder as loaded.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbedderDetails {
    pub name: String,
    pub dimension: usize,
    /// Longest input in tokens.
    pub max_tokens: usize,
    pub parameters: usize,
    pub device: String,
    /// The compute kind (`Float`, `Half` or `BFloat16`), followed by `, products in
    /// BFloat16` where the dense layers multiply in bf16 (`model.embedder_cpu_dtype`).
    pub dtype: String,
}

impl From<&EmbedderInfo> for EmbedderDetails {
    fn from(i: &EmbedderInfo) -> Self {
        Self {
            name: i.name.clone(),
            dimension: i.dimension,
            max_tokens: i.max_tokens,
            parameters: i.parameters,
            device: i.device.clone(),
            dtype: i.dtype.clone(),
        }
    }
}

/// The chat model as loaded.
#[derive(Debug, Serialize, ToSchema)]
pub struct GeneratorDetails {
    pub name: String,
    pub parameters: usize,
    /// Its context window in tokens.
    pub context_length: usize,
    pub device: String,
    pub dtype: String,
}

impl From<&GeneratorInfo> for GeneratorDetails {
    fn from(i: &GeneratorInfo) -> Self {
        Self {
            name: i.name.clone(),
            parameters: i.parameters,
            context_length: i.context_length,
            device: i.device.clone(),
            dtype: i.dtype.clone(),
        }
    }
}

/// A model's details, by kind.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ModelDetails {
    Embedding(EmbedderDetails),
    Chat(GeneratorDetails),
}

/// A loaded model, as OpenAI lists them.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelEntry {
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    pub owned_by: &'static str,
    /// `embedding` or `chat`.
    pub kind: &'static str,
    pub details: ModelDetails,
}

/// The loaded models.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<ModelEntry>,
}

/// The loaded models (OpenAI's models API).
#[utoipa::path(get, operation_id = "list_models", path = "/v1/models", tag = "models", responses(
    (status = 200, description = "The models", body = ModelList),
))]
pub async fn models(State(state): State<Arc<AppState>>, _: Tenant) -> Result<Json<ModelList>, ApiError> {
    let engine = state.ready_engine()?;
    let entry =
        |id: &str, kind, details| ModelEntry { id: id.to_owned(), object: "model", owned_by: "engram", kind, details };
    let mut data = Vec::new();
    if let Some(e) = &engine.embedder {
        data.push(entry(&e.info().name, "embedding", ModelDetails::Embedding(e.info().into())));
    }
    if let Some(g) = &engine.generator {
        data.push(entry(&g.info().name, "chat", ModelDetails::Chat(g.info().into())));
    }
    Ok(Json(ModelList { object: "list", data }))
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
