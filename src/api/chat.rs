//! `/v1/chat` (a chat turn with long-term memory) and `/v1/sessions/{id}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Tenant;
use super::error::{ApiError, ApiJson};
use super::inference::async_stream;
use super::memories::{parse_time, rfc3339};
use super::AppState;
use crate::memory::chat::{Chat, ChatEvent, ChatOutcome, ChatTurn, PreparedTurn};
use crate::memory::sessions::ImportedMessage;
use crate::model::generator::TokenLogprob;
use crate::model::sampling::SamplingParams;
use crate::store::records::Session;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    user_id: String,
    message: String,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    agent_id: Option<String>,
}

pub async fn chat(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let chat = state.ready_chat()?.clone();
    let defaults = SamplingParams::default();
    let turn = ChatTurn {
        user_id: req.user_id,
        agent_id: req.agent_id.unwrap_or_default(),
        session_id: req.session_id,
        message: req.message,
        max_tokens: req.max_tokens,
        sampling: SamplingParams { temperature: req.temperature.unwrap_or(defaults.temperature), ..defaults },
        ..Default::default()
    };
    if !req.stream {
        return Ok(Json(outcome_json(&chat.turn(&tenant, turn).await?)).into_response());
    }
    // Streamed: text deltas as they come, then one `done` event with the metadata.
    let prepared = chat.prepare(&tenant, turn).await?;
    let stream = stream_turn(
        chat,
        prepared,
        |text, _| Event::default().data(json!({ "delta": text }).to_string()),
        |outcome, _| vec![Event::default().event("done").data(outcome_json(outcome).to_string())],
    )
    .await?;
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

fn outcome_json(outcome: &ChatOutcome) -> Value {
    json!({
        "session_id": outcome.session_id,
        "reply": outcome.reply,
        "memories": outcome.memories,
        "usage": {
            "prompt_tokens": outcome.context.prompt_tokens,
            "completion_tokens": outcome.generation.completion_tokens,
            "cached_tokens": outcome.generation.cached_tokens,
            "sections": outcome.context.sections,
        },
        "timings": { "retrieve_ms": outcome.retrieve_ms, "generate_ms": outcome.generate_ms },
    })
}

/// Streams a prepared turn: `piece` makes the event for each text delta, `last` the
/// closing events once the exchange is written back. A client that disconnects drops
/// the turn (and nothing is written back for a reply it never got).
pub async fn stream_turn(
    chat: Chat,
    prepared: PreparedTurn,
    piece: impl Fn(&str, Vec<TokenLogprob>) -> Event + Send + 'static,
    last: impl Fn(&ChatOutcome, Vec<TokenLogprob>) -> Vec<Event> + Send + 'static,
) -> Result<impl tokio_stream::Stream<Item = Result<Event, std::convert::Infallible>>, ApiError> {
    let mut events = chat.stream(prepared).await?;
    Ok(async_stream(move |tx| async move {
        while let Some(event) = events.recv().await {
            let out = match event {
                ChatEvent::Delta(t, logprobs) => vec![piece(&t, logprobs)],
                ChatEvent::Done(outcome, logprobs) => last(&outcome, logprobs),
                ChatEvent::Failed(e) => vec![error_event(ApiError::from(e))],
            };
            for event in out {
                if tx.send(event).await.is_err() {
                    return; // the client left; dropping `events` cancels the turn
                }
            }
        }
    }))
}

/// An error after the stream began, in the API's error shape.
fn error_event(e: ApiError) -> Event {
    let body = json!({ "error": { "code": e.code, "message": e.message, "param": e.param } });
    Event::default().event("error").data(body.to_string())
}

fn session_json(s: &Session) -> Value {
    let scope = s.scope.clone().unwrap_or_default();
    json!({
        "id": s.id,
        "user_id": scope.user_id,
        "agent_id": (!scope.agent_id.is_empty()).then_some(scope.agent_id),
        "turns": s.turns[s.summarized_turns as usize..].iter().map(|t| json!({
            "role": t.role, "content": t.content, "created_at": rfc3339(t.created_at_ms),
        })).collect::<Vec<_>>(),
        "summarized_turns": s.summarized_turns,
        "rolling_summary": s.rolling_summary,
        "created_at": rfc3339(s.created_at_ms),
        "updated_at": rfc3339(s.updated_at_ms),
    })
}

pub async fn get_session(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let session = state.ready_memory()?.get_session(&tenant, &id).await?;
    session.map(|s| Json(session_json(&s))).ok_or_else(|| ApiError::not_found(format!("session {id}")))
}

/// Deletes a session and the memories written from it.
pub async fn delete_session(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let memory = state.ready_memory()?.clone();
    let existed = memory.delete_session(&tenant, &id).await?;
    // Also done when the deletion's commit reaches the store's observers; here it holds
    // before the answer even where that takes a moment (a shared store's change feed).
    if let Some(generator) = state.engine().and_then(|e| e.generator.as_ref()) {
        generator.forget_session(&tenant, &id);
    }
    if existed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("session {id}")))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    user_id: String,
    messages: Vec<ImportMessage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportMessage {
    role: String,
    content: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    created_at: Option<Value>,
    #[serde(default)]
    metadata: Option<Value>,
}

/// `POST /v1/sessions/{id}/messages`: imports past conversation without generating.
pub async fn import_messages(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ImportRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let memory = state.ready_memory()?.clone();
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        let created_at_ms =
            m.created_at.as_ref().map(|v| parse_time(&format!("messages[{i}].created_at"), v)).transpose()?;
        messages.push(ImportedMessage {
            role: m.role,
            content: m.content,
            name: m.name,
            created_at_ms,
            metadata: m.metadata.unwrap_or(Value::Null),
        });
    }
    let ids = memory.import_messages(&tenant, &req.user_id, &id, messages).await?;
    let ids: Vec<String> = ids.iter().map(|u| u.to_string()).collect();
    Ok((StatusCode::CREATED, Json(json!({ "session_id": id, "imported": ids.len(), "memory_ids": ids }))))
}
