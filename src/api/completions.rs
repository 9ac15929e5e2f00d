//! `POST /v1/completions`: OpenAI's raw (legacy) completion API on the chat model, no
//! memory involved. Plain, or streamed as server-sent events: one chunk per piece of
//! text, a last one with the finish reason, with `stream_options.include_usage` a usage
//! chunk with `choices: []`, then `[DONE]`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Tenant;
use super::chat::json_event;
use super::error::{ApiError, ApiJson, ErrorResponse};
use super::inference::{async_stream, EventSink};
use super::openai_fields::{
    max_tokens, only_one, stop_list, token_ids, unsupported, CompletionLogprobs, Item, OneOrMany, SamplingFields,
    StreamOptions, TextLogprobs, TextOrTokens, Usage,
};
use super::AppState;
use crate::model::generator::{FinishReason, GenerateRequest, GenerationEvent, TokenLogprob};
use crate::model::sampling::SamplingParams;
use crate::model::Generator;

/// OpenAI's completion request (every standard field), with engram's `top_k` and
/// `repetition_penalty`. Fields it does not know are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// One prompt: a text or token ids.
    prompt: Option<TextOrTokens>,
    /// Accepted for OpenAI compatibility; one chat model serves every request.
    #[allow(dead_code)]
    #[schema(value_type = Option<String>)]
    model: Option<IgnoredAny>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    logit_bias: Option<HashMap<String, f32>>,
    seed: Option<i64>,
    stop: Option<OneOrMany>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    /// The prompt's text before the completion's.
    echo: Option<bool>,
    /// Log-probabilities of each token and of this many alternatives (at most 5).
    logprobs: Option<usize>,
    n: Option<i64>,
    best_of: Option<i64>,
    suffix: Option<String>,
    #[allow(dead_code)]
    #[schema(value_type = Option<String>)]
    user: Option<IgnoredAny>,
    top_k: Option<usize>,
    repetition_penalty: Option<f32>,
}

/// OpenAI's largest `logprobs` for completions.
const MAX_LOGPROBS: usize = 5;

/// How to answer a checked request.
struct Answer {
    /// The prompt's text, when `echo` asks for it in front of the completion.
    echo: String,
    stream: bool,
    logprobs: bool,
    include_usage: bool,
}

impl CompletionRequest {
    /// Refuses what one local model cannot honour, naming the field.
    fn check_supported(&self) -> Result<(), ApiError> {
        only_one("n", self.n)?;
        only_one("best_of", self.best_of)?;
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(unsupported("suffix", "the model writes after the prompt only (no insertion)"));
        }
        if self.logprobs.is_some_and(|n| n > MAX_LOGPROBS) {
            return Err(ApiError::invalid_field("logprobs", format_args!("must be within 0..{MAX_LOGPROBS}")));
        }
        if self.logprobs.is_some() && self.echo == Some(true) {
            return Err(unsupported("logprobs", "log-probabilities of an echoed prompt"));
        }
        Ok(())
    }

    /// The generation to run, and how to answer.
    fn into_plan(self, generator: &Generator) -> Result<(GenerateRequest, Answer), ApiError> {
        self.check_supported()?;
        let vocab = generator.tokenizer().vocab_size();
        let (text, ids) = prompt(self.prompt, generator)?;
        let sampling = SamplingFields {
            temperature: self.temperature,
            top_p: self.top_p,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            logit_bias: self.logit_bias,
            seed: self.seed,
            top_k: self.top_k,
            repetition_penalty: self.repetition_penalty,
        }
        // OpenAI's defaults for this endpoint: temperature 1, nothing cut.
        .into_params(SamplingParams { temperature: 1.0, ..SamplingParams::default() }, vocab)?;
        let request = GenerateRequest {
            prompt: text.clone(),
            prompt_ids: ids,
            max_tokens: max_tokens(self.max_tokens, "max_tokens")?.unwrap_or(16),
            sampling,
            stop: stop_list(self.stop)?,
            logprobs: self.logprobs,
            // Raw completions belong to no session: nothing to continue or keep.
            cache_key: None,
            attend_spans: Vec::new(),
        };
        let answer = Answer {
            echo: if self.echo == Some(true) { text } else { String::new() },
            stream: self.stream == Some(true),
            logprobs: self.logprobs.is_some(),
            include_usage: StreamOptions::include_usage(&self.stream_options),
        };
        Ok((request, answer))
    }
}

/// The one prompt, as text, and as token ids when it was sent as ids (the text is then
/// their decoding, for `echo`). Several prompts would be several choices: refused.
fn prompt(prompt: Option<TextOrTokens>, generator: &Generator) -> Result<(String, Option<Vec<u32>>), ApiError> {
    let items = prompt.ok_or_else(|| ApiError::invalid_field("prompt", "is required"))?.into_items();
    let [item] = <[Item; 1]>::try_from(items).map_err(|items| {
        ApiError::invalid_field(
            "prompt",
            format_args!("engram completes one prompt per request; {} were sent", items.len()),
        )
    })?;
    match item {
        Item::Text(text) => Ok((text, None)),
        Item::Tokens(ids) => {
            let tokenizer = generator.tokenizer();
            let ids = token_ids(&ids, tokenizer.vocab_size(), "prompt")?;
            let text = tokenizer.decode(&ids, false).map_err(|e| ApiError::invalid_field("prompt", e))?;
            Ok((text, Some(ids)))
        }
    }
}

/// A completion's choice.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub text: String,
    pub index: usize,
    #[schema(required = true)]
    pub logprobs: Option<TextLogprobs>,
    /// `stop` or `length`; null on a stream's chunks but the last.
    #[schema(required = true, value_type = Option<String>)]
    pub finish_reason: Option<FinishReason>,
}

/// OpenAI's completion object (also each chunk of a stream).
#[derive(Debug, Serialize, ToSchema)]
pub struct Completion {
    pub id: String,
    /// Always `text_completion`.
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    /// Absent on a stream's chunks unless `stream_options.include_usage` (then null but on
    /// the last).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Usage>)]
    pub usage: Option<Option<Usage>>,
}

/// Completes a prompt with the chat model, no memory involved (OpenAI's legacy completions API).
#[utoipa::path(post, path = "/v1/completions", tag = "models", request_body = CompletionRequest, responses(
    (status = 200, description = "The completion, or with `stream: true` server-sent events each holding a \
        completion chunk, then `data: [DONE]`", content((Completion = "application/json"), (Completion = "text/event-stream"))),
    (status = 404, description = "No chat model is configured", body = ErrorResponse),
    (status = 429, description = "The model's queue is full; retry after `Retry-After`", body = ErrorResponse),
))]
pub async fn completions(
    State(state): State<Arc<AppState>>,
    _: Tenant,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let engine = state.ready_engine()?;
    let generator = engine.generator.as_ref().ok_or_else(|| ApiError::not_found("no chat model is configured"))?;
    let (request, answer) = req.into_plan(generator)?;
    let chunks = Chunks {
        id: format!("cmpl-{}", ulid::Ulid::new()),
        created: crate::store::records::now_ms() / 1000,
        model: generator.info().name.clone(),
    };
    if !answer.stream {
        let (text, summary) = generator.generate_text(request).await?;
        let logprobs = answer.logprobs.then(|| CompletionLogprobs::after(&answer.echo).shape(&summary.logprobs));
        let choice = CompletionChoice {
            text: answer.echo + &text,
            index: 0,
            logprobs,
            finish_reason: Some(summary.finish_reason),
        };
        return Ok(Json(chunks.object(vec![choice], Some(Some(Usage::of(&summary))))).into_response());
    }
    let events = generator.generate(request).await?;
    let stream = async_stream(move |tx| stream_completion(chunks, answer, events, tx));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// Forwards a generation as completion chunks; ends when it does or the client leaves
/// (dropping `events` then stops the generation).
async fn stream_completion(
    chunks: Chunks,
    answer: Answer,
    mut events: tokio::sync::mpsc::UnboundedReceiver<GenerationEvent>,
    tx: EventSink,
) {
    let mut shape = CompletionLogprobs::after(&answer.echo);
    let mut pending: Vec<TokenLogprob> = Vec::new();
    // With include_usage, every chunk carries `usage: null` but the last one.
    let no_usage = answer.include_usage.then_some(None);
    let mut choice = |text: &str, finish: Option<FinishReason>, pending: &mut Vec<TokenLogprob>| {
        let logprobs = answer.logprobs.then(|| shape.shape(&std::mem::take(pending)));
        CompletionChoice { text: text.to_owned(), index: 0, logprobs, finish_reason: finish }
    };
    let mut out = Vec::new();
    if !answer.echo.is_empty() {
        out.push(json_event(&chunks.object(vec![choice(&answer.echo, None, &mut pending)], no_usage)));
    }
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Logprob(l) => pending.push(l),
            GenerationEvent::Text(t) => {
                out.push(json_event(&chunks.object(vec![choice(&t, None, &mut pending)], no_usage)))
            }
            GenerationEvent::Done(summary) => {
                let last = choice("", Some(summary.finish_reason), &mut pending);
                let usage = Usage::of(&summary);
                if answer.include_usage {
                    out.push(json_event(&chunks.object(vec![last], Some(None))));
                    out.push(json_event(&chunks.object(Vec::new(), Some(Some(usage)))));
                } else {
                    // engram's own habit before stream_options: usage on the last chunk.
                    out.push(json_event(&chunks.object(vec![last], Some(Some(usage)))));
                }
            }
            GenerationEvent::Failed(reason) => out.push(json_event(&ApiError::internal(reason).into_body())),
        }
        for event in out.drain(..) {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }
    let _ = tx.send(Event::default().data("[DONE]")).await;
}

/// The fields every object of one completion shares.
struct Chunks {
    id: String,
    created: i64,
    model: String,
}

impl Chunks {
    /// The completion (or a chunk of it); `usage` is set when present (null included).
    fn object(&self, choices: Vec<CompletionChoice>, usage: Option<Option<Usage>>) -> Completion {
        Completion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }
}
