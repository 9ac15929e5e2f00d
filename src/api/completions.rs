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
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Tenant;
use super::error::{ApiError, ApiJson};
use super::inference::{async_stream, EventSink};
use super::openai_fields::{
    max_tokens, only_one, stop_list, token_ids, unsupported, CompletionLogprobs, Item, OneOrMany, SamplingFields,
    StreamOptions, TextOrTokens, Usage,
};
use super::AppState;
use crate::model::generator::{FinishReason, GenerateRequest, GenerationEvent, TokenLogprob};
use crate::model::sampling::SamplingParams;
use crate::model::Generator;

/// OpenAI's completion request (every standard field), with engram's `top_k` and
/// `repetition_penalty`. Fields it does not know are ignored.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    prompt: Option<TextOrTokens>,
    /// Accepted for OpenAI compatibility; one chat model serves every request.
    #[allow(dead_code)]
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
        let choice = json!({ "text": answer.echo + &text, "index": 0, "logprobs": logprobs,
                             "finish_reason": summary.finish_reason });
        let mut body = chunks.object("text_completion", vec![choice]);
        body["usage"] = json!(Usage::of(&summary));
        return Ok(Json(body).into_response());
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
    let usage_field =
        |usage: Option<Usage>| if answer.include_usage { Some(json!(usage)) } else { usage.map(|u| json!(u)) };
    let mut choice = |text: &str, finish: Option<FinishReason>, pending: &mut Vec<TokenLogprob>| {
        let logprobs = answer.logprobs.then(|| shape.shape(&std::mem::take(pending)));
        json!({ "text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish })
    };
    let mut out = Vec::new();
    if !answer.echo.is_empty() {
        out.push(chunks.chunk(choice(&answer.echo, None, &mut pending), usage_field(None)));
    }
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Logprob(l) => pending.push(l),
            GenerationEvent::Text(t) => out.push(chunks.chunk(choice(&t, None, &mut pending), usage_field(None))),
            GenerationEvent::Done(summary) => {
                let last = choice("", Some(summary.finish_reason), &mut pending);
                let usage = Usage::of(&summary);
                if answer.include_usage {
                    out.push(chunks.chunk(last, Some(Value::Null)));
                    out.push(chunks.chunk_without_choices(usage));
                } else {
                    // engram's own habit before stream_options: usage on the last chunk.
                    out.push(chunks.chunk(last, Some(json!(usage))));
                }
            }
            GenerationEvent::Failed(reason) => {
                out.push(json!({ "error": { "code": "internal", "type": "server_error", "message": reason } }))
            }
        }
        for data in out.drain(..) {
            if tx.send(Event::default().data(data.to_string())).await.is_err() {
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
    fn object(&self, object: &str, choices: Vec<Value>) -> Value {
        json!({ "id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices })
    }

    /// A streamed chunk with one choice; `usage` is set when present (null included).
    fn chunk(&self, choice: Value, usage: Option<Value>) -> Value {
        let mut chunk = self.object("text_completion", vec![choice]);
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        chunk
    }

    /// `stream_options.include_usage`'s last chunk.
    fn chunk_without_choices(&self, usage: Usage) -> Value {
        let mut chunk = self.object("text_completion", Vec::new());
        chunk["usage"] = json!(usage);
        chunk
    }
}
