//! The engine's OpenAI-compatible face, no memory involved: `/v1/embeddings` and
//! `/v1/models` (`/v1/completions` is in `completions.rs`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::Event;
use axum::Json;
use base64::Engine as _;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Tenant;
use super::error::{ApiError, ApiJson};
use super::openai_fields::{token_ids, Item, TextOrTokens};
use super::AppState;
use crate::model::embedder::EmbedInput;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
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
    let data: Vec<Value> = out
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 { json!(base64_f32(v)) } else { json!(v) };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": embedder.info().name,
        "usage": { "prompt_tokens": out.tokens, "total_tokens": out.tokens },
        "truncated": out.truncated,
    })))
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
/// an SSE response wants. The task ends when the client disconnects.
pub fn async_stream<F, Fut>(produce: F) -> impl tokio_stream::Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(produce(tx));
    tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
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
