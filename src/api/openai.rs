//! `POST /v1/chat/completions`: OpenAI's chat API with long-term memory behind it, so
//! the official client libraries work unchanged. `user` is the user id;
//! `metadata.session_id` continues a session (without it, each request starts one, seeded
//! with the earlier messages the client sent). The reply is written back as for
//! `/v1/chat`; the memories used come back in an extra `memories` field. The client's
//! system (or developer) messages replace the configured system prompt for that turn.

use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Tenant;
use super::chat::stream_turn;
use super::error::{ApiError, ApiJson};
use super::AppState;
use crate::memory::chat::{ChatOutcome, ChatTurn};
use crate::store::records::now_ms;

#[derive(Debug, Deserialize)]
pub struct Message {
    role: String,
    /// A string, or OpenAI's list of content parts (only text parts are read).
    content: Value,
}

impl Message {
    fn text(&self) -> Result<String, ApiError> {
        match &self.content {
            Value::String(s) => Ok(s.clone()),
            Value::Array(parts) => Ok(parts
                .iter()
                .filter(|p| p["type"] == "text")
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")),
            Value::Null => Ok(String::new()),
            _ => Err(ApiError::bad_request("messages[].content must be a string or a list of parts")),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    messages: Vec<Message>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    stream: bool,
    /// Accepted for compatibility: one chat model serves every request.
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<IgnoredAny>,
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let chat = state.ready_chat()?.clone();
    let user_id = req.user.clone().filter(|u| !u.is_empty()).ok_or_else(|| {
        ApiError::bad_request("user is required: it names the user whose memory the conversation uses")
    })?;
    let last = req.messages.last().ok_or_else(|| ApiError::bad_request("messages is empty"))?;
    if last.role != "user" {
        return Err(ApiError::bad_request("the last of messages must have role `user`"));
    }
    let message = last.text()?;
    let mut prior = Vec::new();
    let mut system = Vec::new();
    for m in &req.messages[..req.messages.len() - 1] {
        match m.role.as_str() {
            "user" | "assistant" => prior.push((m.role.clone(), m.text()?)),
            // OpenAI renamed the system role "developer" for newer models; both set the
            // instructions, which replace the configured system prompt for this turn.
            "system" | "developer" => system.push(m.text()?),
            _ => {}
        }
    }
    let session_id = match req.metadata.as_ref().and_then(|m| m.get("session_id")) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad_request("metadata.session_id must be a string")),
    };
    let turn = ChatTurn {
        user_id,
        agent_id: String::new(),
        session_id,
        message,
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        prior_turns: prior,
        system_prompt: (!system.is_empty()).then(|| system.join("\n\n")),
    };
    let id = format!("chatcmpl-{}", ulid::Ulid::new());
    let created = now_ms() / 1000;
    let model = chat.generator().info().name.clone();
    if !req.stream {
        let outcome = chat.turn(&tenant, turn).await?;
        return Ok(Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": outcome.reply },
                          "finish_reason": outcome.generation.finish_reason }],
            "usage": usage(&outcome),
            "memories": outcome.memories,
            "session_id": outcome.session_id,
        }))
        .into_response());
    }
    let prepared = chat.prepare(&tenant, turn).await?;
    let chunk = {
        let (id, model) = (id.clone(), model.clone());
        move |delta: Value, finish: Value| {
            json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] })
        }
    };
    let first = chunk(json!({ "role": "assistant", "content": "" }), Value::Null);
    let piece_chunk = chunk.clone();
    let stream = stream_turn(
        chat,
        prepared,
        move |text| Event::default().data(piece_chunk(json!({ "content": text }), Value::Null).to_string()),
        move |outcome| {
            let mut last = chunk(json!({}), json!(outcome.generation.finish_reason));
            last["usage"] = usage(outcome);
            last["memories"] = json!(outcome.memories);
            last["session_id"] = json!(outcome.session_id);
            vec![Event::default().data(last.to_string()), Event::default().data("[DONE]")]
        },
    )
    .await?;
    let opening = tokio_stream::once(Ok(Event::default().data(first.to_string())));
    Ok(Sse::new(tokio_stream::StreamExt::chain(opening, stream)).keep_alive(KeepAlive::default()).into_response())
}

fn usage(o: &ChatOutcome) -> Value {
    json!({ "prompt_tokens": o.context.prompt_tokens, "completion_tokens": o.generation.completion_tokens,
            "total_tokens": o.context.prompt_tokens + o.generation.completion_tokens })
}
