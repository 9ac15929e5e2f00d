//! `/v1/memories`: add, list, read, edit, delete and search a user's long-term memories,
//! and erase a user. Every call is scoped to the caller's tenant.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Tenant;
use super::error::{ApiError, ApiJson};
use super::AppState;
use crate::memory::ranking::Mode;
use crate::memory::service::{MemoryPatch, NewMemory, SearchQuery};
use crate::store::records::{memory_entry::Source, ulid_from_bytes, Kind, MemoryEntry};

/// Milliseconds since the epoch as RFC 3339 (UTC).
pub fn rfc3339(ms: i64) -> Value {
    jiff::Timestamp::from_millisecond(ms).map(|t| Value::String(t.to_string())).unwrap_or(Value::Null)
}

/// A timestamp given as RFC 3339 text or as milliseconds since the epoch.
pub fn parse_time(field: &str, v: &Value) -> Result<i64, ApiError> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| ApiError::bad_request(format!("{field}: not an integer"))),
        Value::String(s) => s
            .parse::<jiff::Timestamp>()
            .map(|t| t.as_millisecond())
            .map_err(|e| ApiError::bad_request(format!("{field}: `{s}` is not an RFC 3339 time ({e})"))),
        _ => Err(ApiError::bad_request(format!("{field}: expected RFC 3339 text or milliseconds"))),
    }
}

fn parse_kind(field: &str, s: &str) -> Result<Kind, ApiError> {
    s.parse().map_err(|e: String| ApiError::bad_request(format!("{field}: {e}")))
}

fn metadata_of(e: &MemoryEntry) -> Value {
    serde_json::from_str(&e.metadata_json).unwrap_or_else(|_| json!({}))
}

fn source_of(e: &MemoryEntry) -> Value {
    match &e.source {
        Some(Source::Document(d)) => json!({
            "document_id": ulid_from_bytes(&d.document_id).map(|u| u.to_string()),
            "chunk_index": d.chunk_index, "char_start": d.char_start, "char_end": d.char_end,
        }),
        Some(Source::Session(s)) => json!({ "session_id": s.session_id, "turn_index": s.turn_index }),
        None => Value::Null,
    }
}

/// A memory as the API shows it.
pub fn memory_json(e: &MemoryEntry) -> Value {
    let scope = e.scope.clone().unwrap_or_default();
    json!({
        "id": e.ulid().map(|u| u.to_string()),
        "kind": e.kind().name(),
        "text": e.text,
        "user_id": scope.user_id,
        "agent_id": (!scope.agent_id.is_empty()).then_some(scope.agent_id),
        "session_id": (!scope.session_id.is_empty()).then_some(scope.session_id),
        "metadata": metadata_of(e),
        "importance": e.importance,
        "created_at": rfc3339(e.created_at_ms),
        "updated_at": rfc3339(e.updated_at_ms),
        "last_accessed_at": (e.last_accessed_at_ms > 0).then(|| rfc3339(e.last_accessed_at_ms)),
        "access_count": e.access_count,
        "source": source_of(e),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMemory {
    user_id: String,
    text: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    importance: Option<f32>,
    #[serde(default)]
    created_at: Option<Value>,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    session_id: Option<String>,
}

pub async fn add(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    ApiJson(req): ApiJson<AddMemory>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let memory = state.ready_memory()?;
    let new = NewMemory {
        user_id: req.user_id,
        agent_id: req.agent_id.unwrap_or_default(),
        session_id: req.session_id.unwrap_or_default(),
        text: req.text,
        kind: req.kind.as_deref().map(|k| parse_kind("kind", k)).transpose()?,
        metadata: req.metadata.unwrap_or(Value::Null),
        importance: req.importance,
        created_at_ms: req.created_at.as_ref().map(|v| parse_time("created_at", v)).transpose()?,
    };
    let (entry, created) = memory.add(&tenant, new).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(memory_json(&entry))))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    user_id: Option<String>,
    kind: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let memory = state.ready_memory()?;
    let user = q.user_id.ok_or_else(|| ApiError::bad_request("user_id is required"))?;
    let kind = q.kind.as_deref().map(|k| parse_kind("kind", k)).transpose()?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 500 {
        return Err(ApiError::bad_request(format!("limit must be within 1..500, got {limit}")));
    }
    let page = memory.list(&tenant, &user, kind, limit, q.cursor).await?;
    Ok(Json(json!({ "data": page.items.iter().map(memory_json).collect::<Vec<_>>(), "next_cursor": page.next_cursor })))
}

#[derive(Debug, Deserialize)]
pub struct EraseQuery {
    user_id: Option<String>,
}

/// `DELETE /v1/memories?user_id=…`: erases the user.
pub async fn erase_user(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Query(q): Query<EraseQuery>,
) -> Result<Json<Value>, ApiError> {
    let memory = state.ready_memory()?;
    let user = q.user_id.filter(|u| !u.is_empty()).ok_or_else(|| ApiError::bad_request("user_id is required"))?;
    let deleted = memory.erase_user(&tenant, &user).await?;
    // The user's sessions' attention caches go with them before the answer (the commit's
    // observers do it too, but on a shared store only when its change feed arrives). The
    // caches are keyed by session, not user: the tenant's are dropped, a cost in speed only.
    if let Some(generator) = state.engine().and_then(|e| e.generator.as_ref()) {
        generator.forget_scope(&tenant);
    }
    Ok(Json(json!({ "user_id": user, "deleted_memories": deleted })))
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(memory_json(&state.ready_memory()?.get(&tenant, &id).await?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchMemory {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    importance: Option<f32>,
}

pub async fn patch(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PatchMemory>,
) -> Result<Json<Value>, ApiError> {
    let patch = MemoryPatch { text: req.text, metadata: req.metadata, importance: req.importance };
    Ok(Json(memory_json(&state.ready_memory()?.update(&tenant, &id, patch).await?)))
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.ready_memory()?.delete(&tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    query: String,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    kinds: Option<Vec<String>>,
    #[serde(default)]
    k: Option<usize>,
    #[serde(default)]
    min_score: Option<f32>,
    #[serde(default)]
    filters: Option<SearchFilters>,
    /// `hybrid` (default), `dense` or `lexical`.
    #[serde(default)]
    mode: Mode,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchFilters {
    #[serde(default)]
    metadata: serde_json::Map<String, Value>,
    #[serde(default)]
    created_after: Option<Value>,
    #[serde(default)]
    created_before: Option<Value>,
}

pub async fn search(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    ApiJson(req): ApiJson<SearchRequest>,
) -> Result<Json<Value>, ApiError> {
    let memory = state.ready_memory()?;
    let filters = req.filters.unwrap_or_default();
    let kinds = req
        .kinds
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, k)| parse_kind(&format!("kinds[{i}]"), k))
        .collect::<Result<Vec<_>, _>>()?;
    let query = SearchQuery {
        query: req.query,
        user_id: req.user_id,
        session_id: req.session_id,
        kinds,
        k: req.k.unwrap_or(10),
        min_score: req.min_score.unwrap_or(f32::MIN),
        metadata: filters.metadata,
        created_after_ms: filters.created_after.as_ref().map(|v| parse_time("filters.created_after", v)).transpose()?,
        created_before_ms: filters
            .created_before
            .as_ref()
            .map(|v| parse_time("filters.created_before", v))
            .transpose()?,
        mode: req.mode,
    };
    let found = memory.search(&tenant, query).await?;
    let results: Vec<Value> = found
        .iter()
        .map(|f| {
            json!({
                "id": f.entry.ulid().map(|u| u.to_string()), "kind": f.entry.kind().name(), "score": f.score,
                "text": f.entry.text, "metadata": metadata_of(&f.entry), "created_at": rfc3339(f.entry.created_at_ms),
                "source": source_of(&f.entry),
            })
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}
