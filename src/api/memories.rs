//! `/v1/memories`: add, list, read, edit, delete and search a user's long-term memories,
//! and erase a user. Every call is scoped to the caller's tenant.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::Tenant;
use super::error::{ApiError, ApiJson, ErrorResponse};
use super::AppState;
use crate::memory::ranking::Mode;
use crate::memory::service::{ListFilter, MemoryPatch, NewMemory, SearchQuery, TimeView, MAX_VERSIONS};
use crate::store::records::{memory_entry::Source, ulid_from_bytes, Kind, MemoryEntry};

/// Milliseconds since the epoch as RFC 3339 (UTC); none for a time outside jiff's range
/// (a client may give any millisecond count).
pub fn rfc3339(ms: i64) -> Option<String> {
    jiff::Timestamp::from_millisecond(ms).ok().map(|t| t.to_string())
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

/// A time in a request: RFC 3339 text or milliseconds since the epoch (schema only).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum TimeInput {
    /// RFC 3339, e.g. `2025-03-01T12:00:00Z`.
    Rfc3339(String),
    /// Milliseconds since the epoch.
    Millis(i64),
}

fn parse_kind(field: &str, s: &str) -> Result<Kind, ApiError> {
    s.parse().map_err(|e: String| ApiError::bad_request(format!("{field}: {e}")))
}

/// A memory's kind (schema only: parsed by [`Kind`]'s `FromStr`).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum MemoryKind {
    Fact,
    Episodic,
    Knowledge,
    Summary,
}

/// Metadata as stored (a memory's or a document's): a JSON object.
pub fn metadata_of(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or_else(|_| Value::Object(Default::default()))
}

/// Where a memory came from: a chunk of a document, or a turn of a session.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SourceView {
    Document {
        document_id: Option<String>,
        chunk_index: u32,
        /// The chunk's span in the document's text, in characters.
        char_start: u64,
        char_end: u64,
    },
    Session {
        session_id: String,
        turn_index: u32,
    },
}

fn source_of(e: &MemoryEntry) -> Option<SourceView> {
    match &e.source {
        Some(Source::Document(d)) => Some(SourceView::Document {
            document_id: ulid_from_bytes(&d.document_id).map(|u| u.to_string()),
            chunk_index: d.chunk_index,
            char_start: d.char_start,
            char_end: d.char_end,
        }),
        Some(Source::Session(s)) => {
            Some(SourceView::Session { session_id: s.session_id.clone(), turn_index: s.turn_index })
        }
        None => None,
    }
}

fn ids_of(list: &[prost::bytes::Bytes]) -> Vec<String> {
    list.iter().filter_map(|b| ulid_from_bytes(b)).map(|u| u.to_string()).collect()
}

/// Whether a memory holds and since when, and which memories replaced it or it
/// replaced: what every view of a memory carries.
#[derive(Debug, Serialize, ToSchema)]
pub struct Validity {
    /// Not superseded, and (with `as_of`) valid at that time.
    pub current: bool,
    #[schema(required = true, format = DateTime)]
    pub valid_from: Option<String>,
    /// When a newer memory superseded it; null while it holds.
    #[schema(required = true, format = DateTime)]
    pub valid_to: Option<String>,
    #[schema(required = true)]
    pub superseded_by: Option<String>,
    pub supersedes: Vec<String>,
}

impl Validity {
    fn of(e: &MemoryEntry) -> Self {
        Self {
            current: e.is_current(),
            valid_from: rfc3339(e.valid_since_ms()),
            valid_to: e.valid_to_ms.and_then(rfc3339),
            superseded_by: ulid_from_bytes(&e.superseded_by).map(|u| u.to_string()),
            supersedes: ids_of(&e.supersedes),
        }
    }
}

/// A memory as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryView {
    #[schema(required = true)]
    pub id: Option<String>,
    #[schema(value_type = MemoryKind)]
    pub kind: &'static str,
    pub text: String,
    pub user_id: String,
    #[schema(required = true)]
    pub agent_id: Option<String>,
    #[schema(required = true)]
    pub session_id: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// 0 to 1.
    pub importance: f32,
    /// 1 for a memory never edited; each PATCH adds one.
    pub version: usize,
    #[schema(required = true, format = DateTime)]
    pub created_at: Option<String>,
    #[schema(required = true, format = DateTime)]
    pub updated_at: Option<String>,
    #[schema(required = true, format = DateTime)]
    pub last_accessed_at: Option<String>,
    pub access_count: u64,
    #[schema(required = true, format = DateTime)]
    pub expires_at: Option<String>,
    #[schema(required = true)]
    pub source: Option<SourceView>,
    #[serde(flatten)]
    pub validity: Validity,
}

impl MemoryView {
    pub fn of(e: &MemoryEntry) -> Self {
        let scope = e.scope.clone().unwrap_or_default();
        Self {
            id: e.ulid().map(|u| u.to_string()),
            kind: e.kind().name(),
            text: e.text.clone(),
            user_id: scope.user_id,
            agent_id: (!scope.agent_id.is_empty()).then_some(scope.agent_id),
            session_id: (!scope.session_id.is_empty()).then_some(scope.session_id),
            metadata: metadata_of(&e.metadata_json),
            importance: e.importance,
            version: e.versions.len() + 1,
            created_at: rfc3339(e.created_at_ms),
            updated_at: rfc3339(e.updated_at_ms),
            last_accessed_at: (e.last_accessed_at_ms > 0).then(|| rfc3339(e.last_accessed_at_ms)).flatten(),
            access_count: e.access_count,
            expires_at: e.expires_at_ms.and_then(rfc3339),
            source: source_of(e),
            validity: Validity::of(e),
        }
    }
}

/// A page of memories.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryPage {
    pub data: Vec<MemoryView>,
    /// Pass as `cursor` for the next page; null on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// What erasing a user removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasedUser {
    pub user_id: String,
    pub deleted_memories: usize,
}

/// One version of a memory.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryVersion {
    pub version: usize,
    /// `created`, `edited`, or `earliest kept` (older versions were dropped).
    pub event: &'static str,
    /// The fields the edit that made this version changed.
    pub changed: Vec<String>,
    pub text: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub importance: f32,
    #[schema(required = true, format = DateTime)]
    pub expires_at: Option<String>,
    #[schema(required = true, format = DateTime)]
    pub since: Option<String>,
    /// When the next version replaced it; null for the current one.
    #[schema(required = true, format = DateTime)]
    pub until: Option<String>,
}

/// A memory's versions, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryHistory {
    pub id: String,
    pub versions: Vec<MemoryVersion>,
    #[serde(flatten)]
    pub validity: Validity,
}

/// A search hit.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHit {
    #[schema(required = true)]
    pub id: Option<String>,
    #[schema(value_type = MemoryKind)]
    pub kind: &'static str,
    /// The fused (or single-signal) relevance score; higher is better.
    pub score: f32,
    pub text: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    #[schema(required = true, format = DateTime)]
    pub created_at: Option<String>,
    #[schema(required = true)]
    pub source: Option<SourceView>,
    #[serde(flatten)]
    pub validity: Validity,
}

/// Search results, best first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    pub results: Vec<SearchHit>,
}

/// A memory to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMemory {
    user_id: String,
    text: String,
    /// Default `fact`.
    #[serde(default)]
    #[schema(value_type = Option<MemoryKind>)]
    kind: Option<String>,
    /// A JSON object, searchable with `filters.metadata`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// 0 to 1 (default 0.5).
    #[serde(default)]
    importance: Option<f32>,
    /// When it happened (default: now).
    #[serde(default)]
    #[schema(value_type = Option<TimeInput>)]
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
    #[schema(value_type = Option<TimeInput>)]
    valid_from: Option<Value>,
    /// When it leaves search and is purged.
    #[serde(default)]
    #[schema(value_type = Option<TimeInput>)]
    expires_at: Option<Value>,
}

/// Adds a memory for a user (201), or finds the same text already stored (200).
#[utoipa::path(post, operation_id = "add_memory", path = "/v1/memories", tag = "memories", request_body = AddMemory, responses(
    (status = 201, description = "Stored", body = MemoryView),
    (status = 200, description = "The same memory was already stored", body = MemoryView),
    (status = 413, description = "Text over the configured limit", body = ErrorResponse),
))]
pub async fn add(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    ApiJson(req): ApiJson<AddMemory>,
) -> Result<(StatusCode, Json<MemoryView>), ApiError> {
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
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(MemoryView::of(&entry))))
}

/// Which memories to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[param(required = true)]
    user_id: Option<String>,
    #[param(value_type = Option<MemoryKind>)]
    kind: Option<String>,
    /// 1 to 500 (default 50).
    limit: Option<usize>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
    agent_id: Option<String>,
    /// Superseded memories too.
    #[serde(default)]
    include_superseded: bool,
    /// Memory as it stood then: RFC 3339, or milliseconds since the epoch.
    as_of: Option<String>,
}

/// `as_of` and `include_superseded` as a [`TimeView`].
fn time_view(as_of: Option<&Value>, include_superseded: bool) -> Result<TimeView, ApiError> {
    Ok(TimeView { as_of_ms: as_of.map(|v| parse_time("as_of", v)).transpose()?, include_superseded })
}

/// Lists a user's memories, newest first, a page at a time.
#[utoipa::path(get, operation_id = "list_memories", path = "/v1/memories", tag = "memories", params(ListQuery), responses(
    (status = 200, description = "A page", body = MemoryPage),
))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Query(q): Query<ListQuery>,
) -> Result<Json<MemoryPage>, ApiError> {
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
    Ok(Json(MemoryPage { data: page.items.iter().map(MemoryView::of).collect(), next_cursor: page.next_cursor }))
}

/// The user to erase.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EraseQuery {
    #[param(required = true)]
    user_id: Option<String>,
}

/// Erases a user: every memory, session and document of theirs, for good.
#[utoipa::path(delete, operation_id = "erase_user", path = "/v1/memories", tag = "memories", params(EraseQuery), responses(
    (status = 200, description = "Erased", body = ErasedUser),
))]
pub async fn erase_user(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Query(q): Query<EraseQuery>,
) -> Result<Json<ErasedUser>, ApiError> {
    let memory = state.ready_memory()?;
    let user = q.user_id.filter(|u| !u.is_empty()).ok_or_else(|| ApiError::bad_request("user_id is required"))?;
    let deleted = memory.erase_user(&tenant, &user).await?;
    // The user's sessions' attention caches go with them before the answer (the commit's
    // observers do it too, but on a shared store only when its change feed arrives). The
    // caches are keyed by session, not user: the tenant's are dropped, a cost in speed only.
    if let Some(generator) = state.engine().and_then(|e| e.generator.as_ref()) {
        generator.forget_scope(&tenant);
    }
    Ok(Json(ErasedUser { user_id: user, deleted_memories: deleted }))
}

/// Reads one memory.
#[utoipa::path(get, operation_id = "get_memory", path = "/v1/memories/{id}", tag = "memories", params(("id" = String, Path, description = "The memory's id")),
    responses(
        (status = 200, description = "The memory", body = MemoryView),
        (status = 404, description = "No such memory in the caller's tenant", body = ErrorResponse),
))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<MemoryView>, ApiError> {
    Ok(Json(MemoryView::of(&state.ready_memory()?.get(&tenant, &id).await?)))
}

/// An edit: absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchMemory {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    #[serde(default)]
    importance: Option<f32>,
    /// A time sets the expiry, `null` removes it, absent leaves it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<TimeInput>)]
    expires_at: Option<Value>,
}

/// A field that is present, even as `null` (absent stays `None` through `default`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Edits a memory, keeping the previous version in its history.
#[utoipa::path(patch, operation_id = "edit_memory", path = "/v1/memories/{id}", tag = "memories", params(("id" = String, Path, description = "The memory's id")),
    request_body = PatchMemory, responses(
        (status = 200, description = "The edited memory", body = MemoryView),
        (status = 404, description = "No such memory in the caller's tenant", body = ErrorResponse),
        (status = 409, description = "Edited concurrently too many times; try again", body = ErrorResponse),
))]
pub async fn patch(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PatchMemory>,
) -> Result<Json<MemoryView>, ApiError> {
    let expires_at_ms = match &req.expires_at {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v) => Some(Some(parse_time("expires_at", v)?)),
    };
    let patch = MemoryPatch { text: req.text, metadata: req.metadata, importance: req.importance, expires_at_ms };
    Ok(Json(MemoryView::of(&state.ready_memory()?.update(&tenant, &id, patch).await?)))
}

/// The memory's versions, oldest first, the current one last, and the memories it
/// superseded or was superseded by.
#[utoipa::path(get, operation_id = "memory_history", path = "/v1/memories/{id}/history", tag = "memories", params(("id" = String, Path, description = "The memory's id")),
    responses(
        (status = 200, description = "The versions", body = MemoryHistory),
        (status = 404, description = "No such memory in the caller's tenant", body = ErrorResponse),
))]
pub async fn history(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<MemoryHistory>, ApiError> {
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
        MemoryVersion {
            version: n,
            event: event(n),
            changed,
            text: text.to_owned(),
            metadata,
            importance,
            expires_at: expires.and_then(rfc3339),
            since: rfc3339(since),
            until: e.versions.get(n - 1).and_then(|v| rfc3339(v.replaced_at_ms)),
        }
    };
    let mut versions: Vec<MemoryVersion> = e
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| version(i + 1, &v.text, metadata_of(&v.metadata_json), v.importance, v.expires_at_ms))
        .collect();
    versions.push(version(e.versions.len() + 1, &e.text, metadata_of(&e.metadata_json), e.importance, e.expires_at_ms));
    Ok(Json(MemoryHistory { id, versions, validity: Validity::of(&e) }))
}

/// Deletes a memory (a memory it superseded becomes current again).
#[utoipa::path(delete, operation_id = "delete_memory", path = "/v1/memories/{id}", tag = "memories", params(("id" = String, Path, description = "The memory's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such memory in the caller's tenant", body = ErrorResponse),
))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.ready_memory()?.delete(&tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A search of the tenant's memories.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    query: String,
    /// One user's memories (and the tenant's shared knowledge); all users' when absent.
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<MemoryKind>>)]
    kinds: Option<Vec<String>>,
    /// How many results (default 10).
    #[serde(default)]
    k: Option<usize>,
    #[serde(default)]
    min_score: Option<f32>,
    #[serde(default)]
    filters: Option<SearchFilters>,
    /// `hybrid` (default: dense and lexical fused), `dense` or `lexical`.
    #[serde(default)]
    #[schema(value_type = SearchMode)]
    mode: Mode,
    /// The user's memories of this agent only.
    #[serde(default)]
    agent_id: Option<String>,
    /// Memory as it stood at this time.
    #[serde(default)]
    #[schema(value_type = Option<TimeInput>)]
    as_of: Option<Value>,
    /// Superseded memories too.
    #[serde(default)]
    include_superseded: bool,
}

/// Which signals a search uses (schema only: parsed into [`Mode`]).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum SearchMode {
    Hybrid,
    Dense,
    Lexical,
}

/// Narrowing a search.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchFilters {
    /// Metadata fields that must equal these values.
    #[serde(default)]
    #[schema(value_type = Object)]
    metadata: serde_json::Map<String, Value>,
    #[serde(default)]
    #[schema(value_type = Option<TimeInput>)]
    created_after: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<TimeInput>)]
    created_before: Option<Value>,
}

/// Searches memories by meaning and by words, fused.
#[utoipa::path(post, operation_id = "search_memories", path = "/v1/memories/search", tag = "memories", request_body = SearchRequest, responses(
    (status = 200, description = "Results, best first", body = SearchResults),
))]
pub async fn search(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    ApiJson(req): ApiJson<SearchRequest>,
) -> Result<Json<SearchResults>, ApiError> {
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
    let results = found
        .iter()
        .map(|f| SearchHit {
            id: f.entry.ulid().map(|u| u.to_string()),
            kind: f.entry.kind().name(),
            score: f.score,
            text: f.entry.text.clone(),
            metadata: metadata_of(&f.entry.metadata_json),
            created_at: rfc3339(f.entry.created_at_ms),
            source: source_of(&f.entry),
            validity: Validity::of(&f.entry),
        })
        .collect();
    Ok(Json(SearchResults { results }))
}
