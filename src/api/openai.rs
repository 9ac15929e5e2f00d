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
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::Tenant;
use super::chat::{chat_memories, json_event, stream_turn, ChatMemory};
use super::error::{ApiError, ApiJson, ErrorResponse};
use super::openai_fields::{
    chat_logprobs, is_set, max_tokens, only_one, stop_list, unsupported, ChatLogprobs, OneOrMany, SamplingFields,
    StreamOptions, Usage,
};
use super::AppState;
use crate::memory::chat::{ChatOutcome, ChatTurn};
use crate::model::generator::{FinishReason, TokenLogprob};
use crate::model::sampling::SamplingParams;
use crate::store::records::now_ms;

/// A message of the conversation.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Message {
    /// `system`, `developer`, `user`, `assistant` (`tool` and `function` are skipped).
    role: String,
    /// A string, or OpenAI's list of content parts (text, and refusal for the assistant).
    #[serde(default)]
    #[schema(value_type = Object)]
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
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    messages: Vec<Message>,
    /// Accepted for compatibility: one chat model serves every request.
    #[allow(dead_code)]
    #[schema(value_type = Option<String>)]
    model: Option<IgnoredAny>,
    /// The user whose memory the conversation uses.
    user: Option<String>,
    safety_identifier: Option<String>,
    /// `session_id` here continues a session.
    #[schema(value_type = Option<Object>)]
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
    #[schema(value_type = Option<Object>)]
    tools: Option<Value>,
    #[schema(value_type = Option<Object>)]
    functions: Option<Value>,
    #[schema(value_type = Option<Object>)]
    tool_choice: Option<Value>,
    #[schema(value_type = Option<Object>)]
    function_call: Option<Value>,
    #[schema(value_type = Option<Object>)]
    response_format: Option<Value>,
    modalities: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    audio: Option<Value>,
    #[schema(value_type = Option<Object>)]
    web_search_options: Option<Value>,
    #[schema(value_type = Option<Object>)]
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

/// The assistant's reply.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    pub content: String,
    /// Always null.
    #[schema(required = true)]
    pub refusal: Option<String>,
}

/// The one choice of a chat completion.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    #[schema(required = true)]
    pub logprobs: Option<ChatLogprobs>,
    /// `stop` or `length`.
    #[schema(value_type = String)]
    pub finish_reason: FinishReason,
}

/// OpenAI's chat completion, with the memories the turn used and its session.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    pub memories: Vec<ChatMemory>,
    /// Pass as `metadata.session_id` to continue the session.
    pub session_id: String,
}

/// What a chunk adds to the reply.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ChunkDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// The one choice of a chunk.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: ChunkDelta,
    #[schema(required = true)]
    pub logprobs: Option<ChatLogprobs>,
    /// Null but on the last chunk: `stop` or `length`.
    #[schema(required = true, value_type = Option<String>)]
    pub finish_reason: Option<FinishReason>,
}

/// A chunk of a streamed chat completion (the data of each server-sent event before `[DONE]`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    /// Empty on the usage chunk of `stream_options.include_usage`.
    pub choices: Vec<ChunkChoice>,
    /// With `stream_options.include_usage`: null but on the usage chunk; without it, on
    /// the finish chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Usage>)]
    pub usage: Option<Option<Usage>>,
    /// On the finish chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memories: Option<Vec<ChatMemory>>,
    /// On the finish chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// OpenAI's chat completions API, with long-term memory behind it: the official client
/// libraries work unchanged.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "chat", request_body = ChatCompletionRequest, responses(
    (status = 200, description = "The completion, or with `stream: true` server-sent events each holding a \
        chunk, then `data: [DONE]`", content((ChatCompletion = "application/json"), (ChatCompletionChunk = "text/event-stream"))),
    (status = 404, description = "No chat model is configured", body = ErrorResponse),
    (status = 429, description = "The model's queue is full; retry after `Retry-After`", body = ErrorResponse),
))]
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
        let body = ChatCompletion {
            id: chunks.id,
            object: "chat.completion",
            created: chunks.created,
            model: chunks.model,
            choices: vec![ChatChoice {
                index: 0,
                message: AssistantMessage { role: "assistant", content: outcome.reply.clone(), refusal: None },
                logprobs,
                finish_reason: outcome.generation.finish_reason,
            }],
            usage: usage(&outcome),
            memories: chat_memories(&outcome),
            session_id: outcome.session_id,
        };
        return Ok(Json(body).into_response());
    }
    let prepared = chat.prepare(&tenant, turn).await?;
    let opening_delta = ChunkDelta { role: Some("assistant"), content: Some(String::new()) };
    let first = chunks.chunk(opening_delta, None, Vec::new());
    let chunks = Arc::new(chunks);
    let piece_chunks = chunks.clone();
    let stream = stream_turn(
        chat,
        prepared,
        move |text, logprobs| {
            let delta = ChunkDelta { role: None, content: Some(text.to_owned()) };
            json_event(&piece_chunks.chunk(delta, None, logprobs))
        },
        move |outcome, logprobs| chunks.closing(outcome, logprobs),
    )
    .await?;
    let opening = tokio_stream::once(Ok(json_event(&first)));
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
    /// A chunk with `choices` (with include_usage, `usage: null`).
    fn object(&self, choices: Vec<ChunkChoice>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: self.include_usage.then_some(None),
            memories: None,
            session_id: None,
        }
    }

    fn chunk(
        &self,
        delta: ChunkDelta,
        finish: Option<FinishReason>,
        logprobs: Vec<TokenLogprob>,
    ) -> ChatCompletionChunk {
        let logprobs = self.logprobs.then(|| chat_logprobs(&logprobs));
        self.object(vec![ChunkChoice { index: 0, delta, logprobs, finish_reason: finish }])
    }

    /// The finish chunk (with the memories used and the session), the usage, `[DONE]`.
    fn closing(&self, outcome: &ChatOutcome, logprobs: Vec<TokenLogprob>) -> Vec<Event> {
        let mut last = self.chunk(ChunkDelta::default(), Some(outcome.generation.finish_reason), logprobs);
        last.memories = Some(chat_memories(outcome));
        last.session_id = Some(outcome.session_id.clone());
        let mut events = Vec::with_capacity(3);
        if self.include_usage {
            events.push(json_event(&last));
            let mut usage_chunk = self.object(Vec::new());
            usage_chunk.usage = Some(Some(usage(outcome)));
            events.push(json_event(&usage_chunk));
        } else {
            // engram's own habit before stream_options: usage on the finish chunk.
            last.usage = Some(Some(usage(outcome)));
            events.push(json_event(&last));
        }
        events.push(Event::default().data("[DONE]"));
        events
    }
}
