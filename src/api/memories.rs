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
use crate::memory::service::{ListFilter, MemoryPatch, NewMemory, SearchQuery, TimeView, MAX_VERSIONS};
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

fn ids_of(list: &[prost::bytes::Bytes]) -> Vec<String> {
    list.iter().filter_map(|b| ulid_from_bytes(b)).map(|u| u.to_string()).collect()
}

fn optional_time(ms: Option<i64>) -> Value {
    ms.map(rfc3339).unwrap_or(Value::Null)
}

/// `fields` (an object) with whether the memory holds and since when, and which memories
/// replaced it or it replaced: what every view of a memory carries.
fn with_validity(e: &MemoryEntry, mut fields: Value) -> Value {
    fields["current"] = e.is_current().into();
    fields["valid_from"] = rfc3339(e.valid_since_ms());
    fields["valid_to"] = optional_time(e.valid_to_ms);
    fields["superseded_by"] = json!(ulid_from_bytes(&e.superseded_by).map(|u| u.to_string()));
    fields["supersedes"] = json!(ids_of(&e.supersedes));
    fields
}

/// A memory as the API shows it.
pub fn memory_json(e: &MemoryEntry) -> Value {
    let scope = e.scope.clone().unwrap_or_default();
    with_validity(
        e,
        json!({
            "expires_at": optional_time(e.expires_at_ms),
            "version": e.versions.len() + 1,
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
        }),
    )
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
    /// Memories of the same user this one replaces as current.
    #[serde(default)]
    supersedes: Vec<String>,
    /// Find the facts this one updates and supersede them (default: `memories.auto_supersede`).
    #[serde(default)]
    auto_supersede: Option<bool>,
    /// Since when it holds (default: now, or `created_at`).
    #[serde(default)]
    valid_from: Option<Value>,
    #[serde(default)]
    expires_at: Option<Value>,
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
        valid_from_ms: req.valid_from.as_ref().map(|v| parse_time("valid_from", v)).transpose()?,
        expires_at_ms: req.expires_at.as_ref().map(|v| parse_time("expires_at", v)).transpose()?,
        supersedes: req.supersedes,
        auto_supersede: req.auto_supersede,
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
    agent_id: Option<String>,
    #[serde(default)]
    include_superseded: bool,
    as_of: Option<String>,
}

/// `as_of` and `include_superseded` as a [`TimeView`].
fn time_view(as_of: Option<&Value>, include_superseded: bool) -> Result<TimeView, ApiError> {
    Ok(TimeView { as_of_ms: as_of.map(|v| parse_time("as_of", v)).transpose()?, include_superseded })
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
    // A query string carries text only: digits are milliseconds, anything else RFC 3339.
    let as_of = q.as_of.map(|s| s.parse::<i64>().map(Value::from).unwrap_or(Value::String(s)));
    let time = time_view(as_of.as_ref(), q.include_superseded)?;
    let filter = ListFilter { agent_id: q.agent_id.filter(|a| !a.is_empty()), time };
    let page = memory.list(&tenant, &user, kind, filter, limit, q.cursor).await?;
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
    /// A time sets the expiry, `null` removes it, absent leaves it.
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Value>,
}

/// A field that is present, even as `null` (absent stays `None` through `default`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

pub async fn patch(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PatchMemory>,
) -> Result<Json<Value>, ApiError> {
    let expires_at_ms = match &req.expires_at {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v) => Some(Some(parse_time("expires_at", v)?)),
    };
    let patch = MemoryPatch { text: req.text, metadata: req.metadata, importance: req.importance, expires_at_ms };
    Ok(Json(memory_json(&state.ready_memory()?.update(&tenant, &id, patch).await?)))
}

/// `GET /v1/memories/{id}/history`: the memory's versions, oldest first, the current
/// one last, and the memories it superseded or was superseded by.
pub async fn history(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let e = state.ready_memory()?.get(&tenant, &id).await?;
    // Each stored version records what the edit that replaced it changed; shown on the
    // version that edit produced, so each entry says how it came to be.
    // Past MAX_VERSIONS the oldest are dropped, and the first one kept is no longer the
    // memory as it was created.
    let truncated = e.versions.len() >= MAX_VERSIONS;
    let event = |n: usize| match n {
        1 if truncated => "earliest kept",
        1 => "created",
        _ => "edited",
    };
    let version = |n: usize, text: &str, metadata: Value, importance: f32, expires: Option<i64>| {
        let (changed, since) = match n {
            1 => (Vec::new(), e.created_at_ms),
            _ => (e.versions[n - 2].changed.clone(), e.versions[n - 2].replaced_at_ms),
        };
        json!({
            "version": n, "event": event(n), "changed": changed,
            "text": text, "metadata": metadata, "importance": importance,
            "expires_at": optional_time(expires), "since": rfc3339(since),
            "until": e.versions.get(n - 1).map(|v| rfc3339(v.replaced_at_ms)).unwrap_or(Value::Null),
        })
    };
    let mut versions: Vec<Value> = e
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let metadata = serde_json::from_str::<Value>(&v.metadata_json).unwrap_or_else(|_| json!({}));
            version(i + 1, &v.text, metadata, v.importance, v.expires_at_ms)
        })
        .collect();
    versions.push(version(e.versions.len() + 1, &e.text, metadata_of(&e), e.importance, e.expires_at_ms));
    Ok(Json(with_validity(&e, json!({ "id": id, "versions": versions }))))
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
    /// The user's memories of this agent only.
    #[serde(default)]
    agent_id: Option<String>,
    /// Memory as it stood at this time.
    #[serde(default)]
    as_of: Option<Value>,
    /// Superseded memories too.
    #[serde(default)]
    include_superseded: bool,
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
        agent_ids: req.agent_id.filter(|a| !a.is_empty()).into_iter().collect(),
        time: time_view(req.as_of.as_ref(), req.include_superseded)?,
    };
    let found = memory.search(&tenant, query).await?;
    let results: Vec<Value> = found
        .iter()
        .map(|f| {
            with_validity(&f.entry, json!({
                "id": f.entry.ulid().map(|u| u.to_string()), "kind": f.entry.kind().name(), "score": f.score,
                "text": f.entry.text, "metadata": metadata_of(&f.entry), "created_at": rfc3339(f.entry.created_at_ms),
                "source": source_of(&f.entry),
            }))
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}
