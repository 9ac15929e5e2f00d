//! `/v1/chat` (a chat turn with long-term memory) and `/v1/sessions/{id}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::Tenant;
use super::error::{ApiError, ApiJson, ErrorResponse};
use super::inference::async_stream;
use super::memories::{parse_time, rfc3339, MemoryKind, TimeInput};
use super::AppState;
use crate::memory::chat::{Chat, ChatEvent, ChatOutcome, ChatTurn, PreparedTurn, UsedMemory};
use crate::memory::sessions::ImportedMessage;
use crate::model::generator::TokenLogprob;
use crate::model::sampling::SamplingParams;
use crate::store::records::Session;

/// A chat turn.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    /// Whose memory the turn reads and writes.
    user_id: String,
    message: String,
    /// Continues a session; a new one is started without it.
    #[serde(default)]
    session_id: Option<String>,
    /// Server-sent events: `{"delta": …}` pieces, then a `done` event holding the response.
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    /// The memories of this agent only (and the turn is written back as this agent's).
    #[serde(default)]
    agent_id: Option<String>,
}

/// A memory that went into the prompt.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatMemory {
    pub id: String,
    #[schema(value_type = MemoryKind)]
    pub kind: String,
    pub score: f32,
    pub text: String,
    /// The share of the reply's attention its tokens got (null with attribution off).
    #[schema(required = true)]
    pub attribution: Option<f32>,
    /// Whether the reply used it (all count as used with attribution off).
    pub used: bool,
}

impl From<&UsedMemory> for ChatMemory {
    fn from(m: &UsedMemory) -> Self {
        Self {
            id: m.id.clone(),
            kind: m.kind.clone(),
            score: m.score,
            text: m.text.clone(),
            attribution: m.attribution,
            used: m.used,
        }
    }
}

/// The memories of a turn, as the API shows them.
pub fn chat_memories(outcome: &ChatOutcome) -> Vec<ChatMemory> {
    outcome.memories.iter().map(ChatMemory::from).collect()
}

/// Tokens of a chat turn.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatUsage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose attention cache was kept from the session's previous turn.
    pub cached_tokens: usize,
    /// Prompt tokens per section of the working memory (system, summary, memories, turns…).
    pub sections: BTreeMap<String, usize>,
}

/// Where a turn's time went.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatTimings {
    pub retrieve_ms: u64,
    pub generate_ms: u64,
}

/// A chat turn's reply (also the data of the stream's `done` event).
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatResponse {
    pub session_id: String,
    pub reply: String,
    pub memories: Vec<ChatMemory>,
    pub usage: ChatUsage,
    pub timings: ChatTimings,
}

impl From<&ChatOutcome> for ChatResponse {
    fn from(outcome: &ChatOutcome) -> Self {
        Self {
            session_id: outcome.session_id.clone(),
            reply: outcome.reply.clone(),
            memories: chat_memories(outcome),
            usage: ChatUsage {
                prompt_tokens: outcome.context.prompt_tokens,
                completion_tokens: outcome.generation.completion_tokens,
                cached_tokens: outcome.generation.cached_tokens,
                sections: outcome.context.sections.clone(),
            },
            timings: ChatTimings { retrieve_ms: outcome.retrieve_ms, generate_ms: outcome.generate_ms },
        }
    }
}

/// A piece of a streamed reply.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatDelta<'a> {
    pub delta: &'a str,
}

/// The data of a streamed turn's events (schema only): pieces of text, then the reply
/// (`event: done`) or an error (`event: error`).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum ChatStreamEvent<'a> {
    Delta(ChatDelta<'a>),
    Done(ChatResponse),
    Error(ErrorResponse),
}

/// One chat turn with long-term memory: retrieves the user's memories, answers, and
/// writes the exchange back as a new memory.
#[utoipa::path(post, path = "/v1/chat", tag = "chat", request_body = ChatRequest, responses(
    (status = 200, description = "The reply (JSON), or with `stream: true` server-sent events: `data: {\"delta\": …}` \
        pieces, then `event: done` with the reply object (or `event: error` with an error body)",
        content((ChatResponse = "application/json"), (ChatStreamEvent = "text/event-stream"))),
    (status = 404, description = "No chat model is configured", body = ErrorResponse),
    (status = 429, description = "The model's queue is full; retry after `Retry-After`", body = ErrorResponse),
))]
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
        return Ok(Json(ChatResponse::from(&chat.turn(&tenant, turn).await?)).into_response());
    }
    // Streamed: text deltas as they come, then one `done` event with the metadata.
    let prepared = chat.prepare(&tenant, turn).await?;
    let stream = stream_turn(
        chat,
        prepared,
        |text, _| json_event(&ChatDelta { delta: text }),
        |outcome, _| vec![named_json_event("done", &ChatResponse::from(outcome))],
    )
    .await?;
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// An event whose data is `value` as JSON.
pub fn json_event(value: &impl Serialize) -> Event {
    Event::default().data(serde_json::to_string(value).unwrap_or_default())
}

/// A named event whose data is `value` as JSON. The name is set first so that its line
/// comes before the data (axum writes the fields in the order they are set), as
/// line-by-line readers of the stream expect.
fn named_json_event(name: &str, value: &impl Serialize) -> Event {
    Event::default().event(name).data(serde_json::to_string(value).unwrap_or_default())
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
    named_json_event("error", &e.into_body())
}

/// A turn of a session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionTurn {
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
    #[schema(required = true, format = DateTime)]
    pub created_at: Option<String>,
}

/// A session: its recent turns (short-term memory) and the summary of older ones.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    pub id: String,
    pub user_id: String,
    #[schema(required = true)]
    pub agent_id: Option<String>,
    /// The turns not yet folded into `rolling_summary`.
    pub turns: Vec<SessionTurn>,
    pub summarized_turns: u32,
    pub rolling_summary: String,
    #[schema(required = true, format = DateTime)]
    pub created_at: Option<String>,
    #[schema(required = true, format = DateTime)]
    pub updated_at: Option<String>,
}

impl From<&Session> for SessionView {
    fn from(s: &Session) -> Self {
        let scope = s.scope.clone().unwrap_or_default();
        let recent = s.turns.get(s.summarized_turns as usize..).unwrap_or_default();
        Self {
            id: s.id.clone(),
            user_id: scope.user_id,
            agent_id: (!scope.agent_id.is_empty()).then_some(scope.agent_id),
            turns: recent
                .iter()
                .map(|t| SessionTurn {
                    role: t.role.clone(),
                    content: t.content.clone(),
                    created_at: rfc3339(t.created_at_ms),
                })
                .collect(),
            summarized_turns: s.summarized_turns,
            rolling_summary: s.rolling_summary.clone(),
            created_at: rfc3339(s.created_at_ms),
            updated_at: rfc3339(s.updated_at_ms),
        }
    }
}

/// Reads a session.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "chat", params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The session", body = SessionView),
        (status = 404, description = "No such session in the caller's tenant", body = ErrorResponse),
))]
pub async fn get_session(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let session = state.ready_memory()?.get_session(&tenant, &id).await?;
    session.map(|s| Json(SessionView::from(&s))).ok_or_else(|| ApiError::not_found(format!("session {id}")))
}

/// Deletes a session and the memories written from it.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "chat", params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such session in the caller's tenant", body = ErrorResponse),
))]
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

/// Past conversation to import into a session.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    user_id: String,
    messages: Vec<ImportMessage>,
}

/// One imported message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportMessage {
    /// `user` or `assistant`.
    role: String,
    content: String,
    /// The speaker's name.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<TimeInput>)]
    created_at: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
}

/// What an import stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResult {
    pub session_id: String,
    pub imported: usize,
    /// One episodic memory per message, in order.
    pub memory_ids: Vec<String>,
}

/// Imports past conversation as a session's turns and episodic memories, generating nothing.
#[utoipa::path(post, path = "/v1/sessions/{id}/messages", tag = "chat", params(("id" = String, Path, description = "The session's id")),
    request_body = ImportRequest, responses(
        (status = 201, description = "Imported", body = ImportResult),
))]
pub async fn import_messages(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ImportRequest>,
) -> Result<(StatusCode, Json<ImportResult>), ApiError> {
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
    let memory_ids: Vec<String> = ids.iter().map(|u| u.to_string()).collect();
    Ok((StatusCode::CREATED, Json(ImportResult { session_id: id, imported: memory_ids.len(), memory_ids })))
}
