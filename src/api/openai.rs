//! `POST /v1/chat/completions`: OpenAI's chat API with long-term memory behind it, so
//! the official client libraries work unchanged. The user whose memory is used is
//! `user`, else `safety_identifier`, else the header `chat.user_header` names;
//! `metadata.session_id` continues a session (without it, each request starts one, seeded
//! with the earlier messages the client sent). The reply is written back as for
//! `/v1/chat`; the memories used come back in an extra `memories` field. The client's
//! system (or developer) messages replace the configured system prompt for that turn.
//!
//! Every standard request field is accepted; sampling, `stop`, `seed`, log-probabilities
//! and `stream_options.include_usage` are honoured; what a tool-less, text-only model
//! with one choice per request cannot do (`n` > 1, tools, JSON modes, audio, images) is
//! refused with a 400 naming the field.

use std::sync::Arc;

use std::collections::HashMap;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Tenant;
use super::chat::stream_turn;
use super::error::{ApiError, ApiJson};
use super::openai_fields::{
    chat_logprobs, is_set, max_tokens, only_one, stop_list, unsupported, OneOrMany, SamplingFields, StreamOptions,
    Usage,
};
use super::AppState;
use crate::memory::chat::{ChatOutcome, ChatTurn};
use crate::model::generator::TokenLogprob;
use crate::model::sampling::SamplingParams;
use crate::store::records::now_ms;

#[derive(Debug, Deserialize)]
pub struct Message {
    role: String,
    /// A string, or OpenAI's list of content parts (text, and refusal for the assistant).
    #[serde(default)]
    content: Value,
}

impl Message {
    /// The text of message `i`; parts the model cannot read (images, audio, files) are
    /// refused rather than dropped.
    fn text(&self, i: usize) -> Result<String, ApiError> {
        match &self.content {
            Value::String(s) => Ok(s.clone()),
            Value::Array(parts) => {
                let mut texts = Vec::with_capacity(parts.len());
                for (j, part) in parts.iter().enumerate() {
                    match (part["type"].as_str(), part["text"].as_str(), part["refusal"].as_str()) {
                        (Some("text"), Some(text), _) | (Some("refusal"), _, Some(text)) => texts.push(text),
                        (kind, ..) => {
                            return Err(unsupported(
                                &format!("messages[{i}].content[{j}]"),
                                &format!("a `{}` part: the model reads text only", kind.unwrap_or("?")),
                            ))
                        }
                    }
                }
                Ok(texts.join("\n"))
            }
            Value::Null => Ok(String::new()),
            _ => Err(ApiError::invalid_field(&format!("messages[{i}].content"), "must be a string or a list of parts")),
        }
    }
}

/// OpenAI's chat completion request: every standard field engram reads or refuses, plus
/// its own `top_k` and `repetition_penalty`. Other fields (`store`, `service_tier`,
/// `reasoning_effort`, `prediction`, `prompt_cache_key`, …) change nothing here and are
/// ignored, as are fields it does not know.
#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    messages: Vec<Message>,
    /// Accepted for compatibility: one chat model serves every request.
    #[allow(dead_code)]
    model: Option<IgnoredAny>,
    user: Option<String>,
    safety_identifier: Option<String>,
    metadata: Option<serde_json::Map<String, Value>>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    logit_bias: Option<HashMap<String, f32>>,
    seed: Option<i64>,
    stop: Option<OneOrMany>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    logprobs: Option<bool>,
    top_logprobs: Option<usize>,
    n: Option<i64>,
    tools: Option<Value>,
    functions: Option<Value>,
    tool_choice: Option<Value>,
    function_call: Option<Value>,
    response_format: Option<Value>,
    modalities: Option<Vec<String>>,
    audio: Option<Value>,
    web_search_options: Option<Value>,
    moderation: Option<Value>,
    top_k: Option<usize>,
    repetition_penalty: Option<f32>,
}

/// OpenAI's largest `top_logprobs`.
const MAX_TOP_LOGPROBS: usize = 20;

impl ChatCompletionRequest {
    /// Refuses what a tool-less, text-only model with one choice per request cannot do.
    fn check_supported(&self) -> Result<(), ApiError> {
        only_one("n", self.n)?;
        for (param, value) in [("tools", &self.tools), ("functions", &self.functions)] {
            if is_set(value) {
                return Err(unsupported(param, "the model has no tool calling"));
            }
        }
        for (param, value) in [("tool_choice", &self.tool_choice), ("function_call", &self.function_call)] {
            match value {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s == "none" || s == "auto" => {}
                Some(_) => {
                    return Err(unsupported(param, "the model has no tool calling (`none` and `auto` are accepted)"))
                }
            }
        }
        if let Some(format) = self.response_format.as_ref().filter(|v| !v.is_null()) {
            if format["type"] != "text" {
                return Err(unsupported("response_format", "only `text`: the model's output cannot be held to JSON"));
            }
        }
        if self.modalities.as_ref().is_some_and(|m| m.iter().any(|m| m != "text")) {
            return Err(unsupported("modalities", "the model writes text only"));
        }
        if self.audio.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(unsupported("audio", "the model writes text only"));
        }
        if self.web_search_options.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(unsupported("web_search_options", "engram does not search the web"));
        }
        if self.moderation.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(unsupported("moderation", "engram runs no moderation model"));
        }
        if self.top_logprobs.is_some() && self.logprobs != Some(true) {
            return Err(ApiError::invalid_field("top_logprobs", "needs `logprobs: true`"));
        }
        if self.top_logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(ApiError::invalid_field("top_logprobs", format_args!("must be within 0..{MAX_TOP_LOGPROBS}")));
        }
        Ok(())
    }

    /// The user whose memory the turn uses: `user`, else `safety_identifier`, else the
    /// configured header.
    fn user_id(&self, headers: &HeaderMap, header: &str) -> Result<String, ApiError> {
        let from_header = || (!header.is_empty()).then(|| headers.get(header)?.to_str().ok()).flatten();
        [self.user.as_deref(), self.safety_identifier.as_deref(), from_header()]
            .into_iter()
            .flatten()
            .map(str::trim)
            .find(|u| !u.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::invalid_field(
                    "user",
                    format_args!(
                        "is required: set `user` or `safety_identifier` (or the `{header}` header) to the user whose \
                         memory the conversation uses"
                    ),
                )
            })
    }

    /// The turn to run for `user_id`, every field checked.
    fn into_turn(self, user_id: String, vocab: usize) -> Result<ChatTurn, ApiError> {
        let last = self.messages.len().checked_sub(1).ok_or_else(|| ApiError::invalid_field("messages", "is empty"))?;
        if self.messages[last].role != "user" {
            return Err(ApiError::invalid_field(
                &format!("messages[{last}].role"),
                "the last message must be `user`'s",
            ));
        }
        let message = self.messages[last].text(last)?;
        let mut prior = Vec::new();
        let mut system = Vec::new();
        for (i, m) in self.messages[..last].iter().enumerate() {
            match m.role.as_str() {
                "user" | "assistant" => prior.push((m.role.clone(), m.text(i)?)),
                // OpenAI renamed the system role "developer" for newer models; both set the
                // instructions, which replace the configured system prompt for this turn.
                "system" | "developer" => system.push(m.text(i)?),
                // Tool results answer tool calls, which this model never makes.
                "tool" | "function" => {}
                other => {
                    return Err(ApiError::invalid_field(
                        &format!("messages[{i}].role"),
                        format_args!("unknown role `{other}`"),
                    ))
                }
            }
        }
        let session_id = match self.metadata.as_ref().and_then(|m| m.get("session_id")) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(ApiError::invalid_field("metadata.session_id", "must be a string")),
        };
        let max_tokens = match max_tokens(self.max_completion_tokens, "max_completion_tokens")? {
            Some(n) => Some(n),
            None => max_tokens(self.max_tokens, "max_tokens")?,
        };
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
        .into_params(SamplingParams::default(), vocab)?;
        Ok(ChatTurn {
            user_id,
            agent_id: String::new(),
            session_id,
            message,
            max_tokens,
            sampling,
            stop: stop_list(self.stop)?,
            logprobs: (self.logprobs == Some(true)).then(|| self.top_logprobs.unwrap_or(0)),
            prior_turns: prior,
            system_prompt: (!system.is_empty()).then(|| system.join("\n\n")),
        })
    }
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let chat = state.ready_chat()?.clone();
    req.check_supported()?;
    let user_id = req.user_id(&headers, &chat.config().user_header)?;
    let stream = req.stream == Some(true);
    let include_usage = StreamOptions::include_usage(&req.stream_options);
    let turn = req.into_turn(user_id, chat.generator().tokenizer().vocab_size())?;
    let wants_logprobs = turn.logprobs.is_some();
    let chunks = Chunks {
        id: format!("chatcmpl-{}", ulid::Ulid::new()),
        created: now_ms() / 1000,
        model: chat.generator().info().name.clone(),
        logprobs: wants_logprobs,
        include_usage,
    };
    if !stream {
        let outcome = chat.turn(&tenant, turn).await?;
        let logprobs = wants_logprobs.then(|| chat_logprobs(&outcome.generation.logprobs));
        let choice = json!({ "index": 0, "message": { "role": "assistant", "content": outcome.reply, "refusal": null },
                             "logprobs": logprobs, "finish_reason": outcome.generation.finish_reason });
        let mut body = chunks.object("chat.completion", choice);
        body["usage"] = json!(usage(&outcome));
        body["memories"] = json!(outcome.memories);
        body["session_id"] = json!(outcome.session_id);
        return Ok(Json(body).into_response());
    }
    let prepared = chat.prepare(&tenant, turn).await?;
    let first = chunks.chunk(json!({ "role": "assistant", "content": "" }), Value::Null, Vec::new());
    let chunks = Arc::new(chunks);
    let piece_chunks = chunks.clone();
    let stream = stream_turn(
        chat,
        prepared,
        move |text, logprobs| {
            Event::default().data(piece_chunks.chunk(json!({ "content": text }), Value::Null, logprobs).to_string())
        },
        move |outcome, logprobs| chunks.closing(outcome, logprobs),
    )
    .await?;
    let opening = tokio_stream::once(Ok(Event::default().data(first.to_string())));
    Ok(Sse::new(tokio_stream::StreamExt::chain(opening, stream)).keep_alive(KeepAlive::default()).into_response())
}

fn usage(o: &ChatOutcome) -> Usage {
    Usage::new(o.context.prompt_tokens, o.generation.completion_tokens, o.generation.cached_tokens)
}

/// The fields every object of one chat completion shares, and how its chunks look.
struct Chunks {
    id: String,
    created: i64,
    model: String,
    /// Whether choices carry log-probabilities (else `logprobs: null`).
    logprobs: bool,
    /// `stream_options.include_usage`: `usage: null` on every chunk, then a last chunk
    /// with `choices: []` and the usage.
    include_usage: bool,
}

impl Chunks {
    fn object(&self, object: &str, choice: Value) -> Value {
        let choices = if choice.is_null() { Vec::new() } else { vec![choice] };
        json!({ "id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices })
    }

    fn chunk(&self, delta: Value, finish: Value, logprobs: Vec<TokenLogprob>) -> Value {
        let logprobs = self.logprobs.then(|| chat_logprobs(&logprobs));
        let mut chunk = self.object(
            "chat.completion.chunk",
            json!({ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish }),
        );
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// The finish chunk (with the memories used and the session), the usage, `[DONE]`.
    fn closing(&self, outcome: &ChatOutcome, logprobs: Vec<TokenLogprob>) -> Vec<Event> {
        let mut last = self.chunk(json!({}), json!(outcome.generation.finish_reason), logprobs);
        last["memories"] = json!(outcome.memories);
        last["session_id"] = json!(outcome.session_id);
        let mut events = Vec::with_capacity(3);
        if self.include_usage {
            events.push(Event::default().data(last.to_string()));
            let mut usage_chunk = self.object("chat.completion.chunk", Value::Null);
            usage_chunk["usage"] = json!(usage(outcome));
            events.push(Event::default().data(usage_chunk.to_string()));
        } else {
            // engram's own habit before stream_options: usage on the finish chunk.
            last["usage"] = json!(usage(outcome));
            events.push(Event::default().data(last.to_string()));
        }
        events.push(Event::default().data("[DONE]"));
        events
    }
}
