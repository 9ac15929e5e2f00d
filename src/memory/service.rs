//! Long-term memories as the API sees them: adding (embedded on the way in), reading,
//! editing, deleting and searching a user's memories, always within one tenant.
//!
//! The store is synchronous; every call into it runs on tokio's blocking pool so the
//! async workers never wait on disk.
//!
//! Writes on behalf of a user are guarded by the user's erase epoch, read before any
//! slow work (embedding): a write that began before an erase fails instead of bringing
//! the user's data back. The lexical index follows every commit of the store (see
//! [`LexicalFollower`]), so no write path has to remember to update it.

use std::sync::Arc;

use parking_lot::RwLock;
use serde::Deserialize;
use ulid::Ulid;

use super::ingest_jobs::JobBook;
use super::keyed_lock::KeyedLocks;
use super::lexical::TenantLexicon;
use super::limits::Limits;
use super::ranking::{fuse, Candidate, Mode, RankingWeights};
use super::supersede::Rules;
use super::turn_context::TurnContext;
use crate::model::{Embedder, EngineError};
use crate::store::records::{now_ms, Kind, MemoryEntry, MemoryVersion, Scope};
use crate::store::{
    CommitObserver, Committed, MemoryStore, NewEntry, Page, Precondition, ScopeClause, SearchFilter, StoreError,
    WriteBatch, WriteOutcome,
};

/// Everything that can go wrong here, mapped to HTTP statuses by the API layer.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Invalid(String),
    /// A 400 about one request field, which the API names in `param`.
    #[error("{field}: {message}")]
    InvalidField { field: String, message: String },
    /// A field over one of the configured limits (HTTP 413).
    #[error("{message}")]
    TooLarge { field: &'static str, message: String },
    #[error("{0} not found")]
    NotFound(String),
    /// The request raced a delete or erase that wins: nothing was written (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    #[error("no embedding model is configured")]
    NoEmbedder,
    /// A bug or a failed background task (HTTP 500).
    #[error("{0}")]
    Internal(String),
}

/// A memory to add.
#[derive(Debug, Clone, Default)]
pub struct NewMemory {
    pub user_id: String,
    pub agent_id: String,
    pub session_id: String,
    pub text: String,
    pub kind: Option<Kind>,
    pub metadata: serde_json::Value,
    pub importance: Option<f32>,
    pub created_at_ms: Option<i64>,
    /// Since when the memory holds (default: when it was created).
    pub valid_from_ms: Option<i64>,
    /// Past it, the memory leaves search and is purged.
    pub expires_at_ms: Option<i64>,
    /// Memories of the same user this one replaces as current.
    pub supersedes: Vec<String>,
    /// Look for facts this one updates and supersede them (see [`super::supersede`]);
    /// `None` follows `memories.auto_supersede`. Only when `supersedes` is empty.
    pub auto_supersede: Option<bool>,
}

/// Changes to a memory; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct MemoryPatch {
    pub text: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub importance: Option<f32>,
    /// `Some(None)` removes the expiry.
    pub expires_at_ms: Option<Option<i64>>,
}

/// Which memories count: the current ones (the default), those current at a past time,
/// or every version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeView {
    /// Memory as it stood then: created by then, valid then, not yet superseded.
    pub as_of_ms: Option<i64>,
    /// Superseded memories too (expired ones never).
    pub include_superseded: bool,
}

impl TimeView {
    /// Whether `e` is part of memory in this view, at `now_ms`.
    pub fn admits(&self, e: &MemoryEntry, now_ms: i64) -> bool {
        if e.expires_at_ms.is_some_and(|t| t <= now_ms) {
            return false;
        }
        if self.include_superseded {
            return true;
        }
        let at = self.as_of_ms.unwrap_or(now_ms);
        if self.as_of_ms.is_some() && e.created_at_ms > at {
            return false;
        }
        if e.valid_from_ms.is_some_and(|t| t > at) {
            return false;
        }
        !e.valid_to_ms.is_some_and(|t| t <= at)
    }
}

/// `[memories]` in the config: automatic supersession.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoriesConfig {
    /// Whether a new fact or episodic memory supersedes the facts it updates without
    /// being told which (see [`super::supersede`]); a request's `auto_supersede` wins.
    pub auto_supersede: bool,
    pub supersede_min_similarity: f32,
    pub supersede_frame_similarity: f32,
}

impl MemoriesConfig {
    pub fn rules(&self) -> Rules {
        Rules { min_similarity: self.supersede_min_similarity, frame_similarity: self.supersede_frame_similarity }
    }
}

impl Default for MemoriesConfig {
    fn default() -> Self {
        let rules = Rules::default();
        MemoriesConfig {
            auto_supersede: false,
            supersede_min_similarity: rules.min_similarity,
            supersede_frame_similarity: rules.frame_similarity,
        }
    }
}

/// Writes `batch`, whose supersessions were found automatically ([`super::supersede`]):
/// when one of those memories was superseded or deleted by another write meanwhile, the
/// batch is written again superseding nothing, since that is no reason to lose the new
/// memory. Any other conflict fails the second write as well.
pub(crate) fn write_with_found_supersession(
    store: &dyn MemoryStore,
    batch: WriteBatch,
) -> Result<WriteOutcome, StoreError> {
    match store.write(batch.clone()) {
        Err(StoreError::Conflict(_) | StoreError::Invalid(_)) if !batch.supersedes.is_empty() => {
            store.write(WriteBatch { supersedes: Vec::new(), ..batch })
        }
        other => other,
    }
}

/// Candidates each method brings when the query names a period, so that the memories of
/// that period are among them to be favoured.
const PERIOD_FETCH: usize = 100;

/// How many memories one write may supersede.
pub const MAX_SUPERSEDED: usize = 32;

/// Previous versions kept per memory: the oldest go first past it.
pub const MAX_VERSIONS: usize = 32;

/// How often an edit is applied again when the memory keeps changing under it.
const EDIT_ATTEMPTS: u32 = 8;

/// What a search looks in, and how much it returns.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub query: String,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub kinds: Vec<Kind>,
    pub k: usize,
    pub min_score: f32,
    /// Metadata fields that must equal these values.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub created_after_ms: Option<i64>,
    pub created_before_ms: Option<i64>,
    pub mode: Mode,
    /// The user's memories of these agents only (empty: any); shared knowledge is not
    /// tied to an agent and is governed by `kinds`.
    pub agent_ids: Vec<String>,
    pub time: TimeView,
}

/// A search hit: the memory and its score — the fused score in 0..1 in hybrid mode,
/// the cosine similarity in dense mode, the BM25 score in lexical mode.
#[derive(Debug, Clone)]
pub struct Found {
    pub entry: MemoryEntry,
    pub score: f32,
}

/// See the module documentation.
#[derive(Clone)]
pub struct MemoryService {
    store: Arc<dyn MemoryStore>,
    embedder: Option<Embedder>,
    /// BM25 over every entry's text, one index per tenant, keyed by the entry's index
    /// point; scoped at query time through the vector index's live, labelled points.
    lexical: Arc<RwLock<TenantLexicon>>,
    weights: RankingWeights,
    limits: Arc<Limits>,
    memories: MemoriesConfig,
    session_locks: KeyedLocks,
    /// Background document ingestions: here so that erasing a user cancels theirs.
    jobs: JobBook,
}

/// Keeps the lexical index in step with the store: told of every commit, under the
/// store's write lock, so it sees changes in the order they were made (a delete racing a
/// write cannot leave a stale entry behind).
struct LexicalFollower {
    lexical: Arc<RwLock<TenantLexicon>>,
}

impl CommitObserver for LexicalFollower {
    fn committed(&self, store: &dyn MemoryStore, change: &Committed) {
        let mut context = TurnContext::new(store);
        let added: Vec<(String, u64, String)> = change
            .added
            .iter()
            .map(|e| {
                // The entry is stored already; a session that cannot be read only costs
                // the context, so index the text alone rather than not at all.
                let text = context.lexical_text(e).unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "session unreadable; indexing the memory without its context");
                    e.text.clone()
                });
                (e.scope.as_ref().map(|s| s.tenant.clone()).unwrap_or_default(), e.point_id, text)
            })
            .collect();
        let mut lexical = self.lexical.write();
        for e in change.removed {
            lexical.remove(e.point_id);
        }
        for (tenant, point, text) in added {
            lexical.insert(&tenant, point, &text);
        }
    }
}

/// Runs a store call on the blocking pool (the store is synchronous; tokio's workers
/// must not wait on disk).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, MemoryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MemoryError::Internal(format!("store task failed: {e}")))?
        .map_err(Into::into)
}

impl MemoryService {
    /// Builds the lexical index from every stored entry and follows the store's commits
    /// from then on (blocking: call it off the async workers).
    pub fn new(
        store: Arc<dyn MemoryStore>,
        embedder: Option<Embedder>,
        weights: RankingWeights,
        limits: Limits,
        memories: MemoriesConfig,
    ) -> Result<Self, MemoryError> {
        let lexical = Arc::new(RwLock::new(TenantLexicon::default()));
        // Follow first, then scan: a commit in between is indexed twice (an insert
        // replaces), never missed.
        store.observe(Arc::new(LexicalFollower { lexical: lexical.clone() }));
        let mut context = TurnContext::new(&*store);
        let mut texts = Vec::new();
        let mut failed = None;
        store.scan_entries(&mut |e| match context.lexical_text(&e) {
            Ok(text) => texts.push((e.scope.map(|s| s.tenant).unwrap_or_default(), e.point_id, text)),
            Err(err) => failed = Some(err),
        })?;
        if let Some(err) = failed {
            return Err(err.into());
        }
        drop(context);
        {
            let mut index = lexical.write();
            for (tenant, point, text) in texts {
                index.insert(&tenant, point, &text);
            }
        }
        Ok(Self {
            jobs: JobBook::new(store.clone()),
            store,
            embedder,
            lexical,
            weights,
            limits: Arc::new(limits),
            memories,
            session_locks: KeyedLocks::default(),
        })
    }

    /// The locks that keep one session's turns apart (see [`MemoryService::lock_session`]).
    pub(super) fn session_locks(&self) -> &KeyedLocks {
        &self.session_locks
    }

    /// The book of document ingestion jobs.
    pub fn jobs(&self) -> &JobBook {
        &self.jobs
    }

    /// The size limits of what may be stored.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The retrieval weights (`[retrieval]`).
    pub fn weights(&self) -> &RankingWeights {
        &self.weights
    }

    /// Whether new memories supersede the facts they update unasked (`[memories]`).
    pub fn auto_supersede(&self) -> bool {
        self.memories.auto_supersede
    }

    /// The user's erase epoch, to guard a write that follows slow work (see the module
    /// documentation). A user being erased right now is refused at once.
    pub async fn erase_guard(&self, tenant: &str, user_id: &str) -> Result<Precondition, MemoryError> {
        let (store, t, u) = (self.store.clone(), tenant.to_owned(), user_id.to_owned());
        let epoch = blocking(move || store.user_epoch(&t, &u)).await?;
        if epoch % 2 == 1 {
            return Err(MemoryError::Conflict(format!("user `{user_id}` is being erased; try again afterwards")));
        }
        Ok(Precondition::NotErasedSince { tenant: tenant.to_owned(), user_id: user_id.to_owned(), epoch })
    }

    pub fn store(&self) -> &Arc<dyn MemoryStore> {
        &self.store
    }

    /// Embeds many texts in one request (the embedder batches them).
    pub async fn embed_many(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, MemoryError> {
        let embedder = self.embedder.as_ref().ok_or(MemoryError::NoEmbedder)?;
        Ok(embedder.embed(texts).await?.vectors)
    }

    async fn embed_one(&self, text: &str) -> Result<Vec<f32>, MemoryError> {
        let embedder = self.embedder.as_ref().ok_or(MemoryError::NoEmbedder)?;
        let mut out = embedder.embed(vec![text.to_owned()]).await?;
        Ok(out.vectors.pop().unwrap_or_default())
    }

    /// Embeds and stores a memory. The same text for the same user and kind is stored
    /// once: the existing memory comes back.
    pub async fn add(&self, tenant: &str, m: NewMemory) -> Result<(MemoryEntry, bool), MemoryError> {
        if let Some(kind) = m.kind.filter(|k| *k == Kind::Knowledge) {
            return Err(MemoryError::Invalid(format!(
                "kind `{kind}` comes from documents; add them through /v1/documents"
            )));
        }
        if m.expires_at_ms.is_some_and(|t| t <= now_ms()) {
            return Err(MemoryError::InvalidField { field: "expires_at".into(), message: "is in the past".into() });
        }
        self.add_with_source(tenant, m, None).await
    }

    /// [`MemoryService::add`] for the service's own writes (chat write-back, summaries),
    /// which record where the memory came from.
    pub async fn add_with_source(
        &self,
        tenant: &str,
        m: NewMemory,
        source: Option<crate::store::records::memory_entry::Source>,
    ) -> Result<(MemoryEntry, bool), MemoryError> {
        self.limits.memory_text("text", &m.text)?;
        self.limits.metadata("metadata", &m.metadata)?;
        if m.user_id.is_empty() {
            return Err(MemoryError::Invalid("user_id is required".into()));
        }
        let mut supersedes = self.superseded(tenant, &m.user_id, &m.supersedes).await?;
        let guard = self.erase_guard(tenant, &m.user_id).await?;
        let embedding = self.embed_one(&m.text).await?;
        let kind = m.kind.unwrap_or(Kind::Fact);
        let auto = supersedes.is_empty()
            && matches!(kind, Kind::Fact | Kind::Episodic)
            && m.auto_supersede.unwrap_or(self.memories.auto_supersede);
        if auto {
            supersedes = self.updated_facts(tenant, &m.user_id, &m.agent_id, &m.text, &embedding).await?;
        }
        let entry = NewEntry {
            kind: Some(kind),
            text: m.text,
            embedding,
            scope: Scope {
                tenant: tenant.to_owned(),
                user_id: m.user_id,
                agent_id: m.agent_id,
                session_id: m.session_id,
            },
            metadata: m.metadata,
            created_at_ms: m.created_at_ms,
            importance: m.importance,
            source,
            valid_from_ms: m.valid_from_ms,
            expires_at_ms: m.expires_at_ms,
            ..Default::default()
        };
        let store = self.store.clone();
        let (outcome, entry) = blocking(move || {
            let batch =
                WriteBatch { preconditions: vec![guard], entries: vec![entry], supersedes, ..Default::default() };
            // Named supersessions must hold; ones found automatically may lapse.
            let written = if auto { write_with_found_supersession(&*store, batch) } else { store.write(batch) };
            let outcome = written?.entries[0];
            let stored =
                store.get_entry(outcome.id)?.ok_or_else(|| StoreError::NotFound(format!("memory {}", outcome.id)))?;
            Ok((outcome, stored))
        })
        .await?;
        Ok((entry, outcome.created))
    }

    /// The current facts of `user` (and `agent`) that a new memory with this text and
    /// embedding updates, by the rules of [`super::supersede`]: the most similar facts
    /// are the candidates.
    pub(crate) async fn updated_facts(
        &self,
        tenant: &str,
        user: &str,
        agent: &str,
        text: &str,
        embedding: &[f32],
    ) -> Result<Vec<Ulid>, MemoryError> {
        const CANDIDATES: usize = 8;
        let filter = SearchFilter::clause(ScopeClause {
            tenant: Some(tenant.to_owned()),
            user_id: Some(user.to_owned()),
            agent_id: Some(agent.to_owned()),
            kinds: vec![Kind::Fact],
            ..Default::default()
        });
        let (store, vector) = (self.store.clone(), crate::store::normalized(embedding));
        let hits = blocking(move || {
            store.prepare_search(&filter)?;
            let hits = store.index().search(&vector, CANDIDATES, &filter);
            store.resolve_hits(hits.into_iter().map(|h| (h.point, h.similarity)).collect())
        })
        .await?;
        let (rules, now) = (self.memories.rules(), now_ms());
        let mut updated = Vec::new();
        for hit in hits.iter().filter(|h| TimeView::default().admits(&h.entry, now)) {
            let verdict = rules.decide(&hit.entry.text, text, hit.similarity);
            tracing::debug!(candidate = ?hit.entry.ulid(), similarity = hit.similarity, ?verdict, "supersession candidate");
            if verdict.supersedes() {
                updated.extend(hit.entry.ulid());
            }
        }
        Ok(updated)
    }

    /// The memories a new one of `user` replaces, checked to be that user's: another
    /// tenant's or user's memory reads as not found, so ids reveal nothing across them.
    /// (The store checks ownership again in the commit, against a concurrent change.)
    async fn superseded(&self, tenant: &str, user: &str, ids: &[String]) -> Result<Vec<Ulid>, MemoryError> {
        if ids.len() > MAX_SUPERSEDED {
            return Err(MemoryError::InvalidField {
                field: "supersedes".into(),
                message: format!("at most {MAX_SUPERSEDED} memories per write, got {}", ids.len()),
            });
        }
        let parsed = parse_ids("supersedes", ids)?;
        for (i, id) in ids.iter().enumerate() {
            let owned = match self.get(tenant, id).await {
                Ok(e) => e.scope.as_ref().is_some_and(|s| s.user_id == user) && e.kind() != Kind::Knowledge,
                Err(MemoryError::NotFound(_)) => false,
                Err(e) => return Err(e),
            };
            if !owned {
                return Err(MemoryError::InvalidField {
                    field: format!("supersedes[{i}]"),
                    message: format!("no memory {id} of user {user}"),
                });
            }
        }
        Ok(parsed)
    }

    /// A memory of this tenant; another tenant's is reported as absent.
    pub async fn get(&self, tenant: &str, id: &str) -> Result<MemoryEntry, MemoryError> {
        let ulid: Ulid = id.parse().map_err(|_| MemoryError::NotFound(format!("memory {id}")))?;
        let store = self.store.clone();
        let entry = blocking(move || store.get_entry(ulid)).await?;
        entry
            .filter(|e| e.scope.as_ref().is_some_and(|s| s.tenant == tenant))
            .ok_or_else(|| MemoryError::NotFound(format!("memory {id}")))
    }

    /// A page of the user's memories (in id order) that `view` admits, of one agent when
    /// `agent_id` is given. Filtering happens within the page: a page may hold fewer than
    /// `limit` while `next_cursor` says more follow.
    pub async fn list(
        &self,
        tenant: &str,
        user_id: &str,
        kind: Option<Kind>,
        filter: ListFilter,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<Page<MemoryEntry>, MemoryError> {
        let (store, tenant, user) = (self.store.clone(), tenant.to_owned(), user_id.to_owned());
        let mut page = blocking(move || store.list_entries(&tenant, &user, kind, limit, cursor.as_deref())).await?;
        let now = now_ms();
        page.items.retain(|e| {
            filter.time.admits(e, now)
                && filter.agent_id.as_ref().is_none_or(|a| e.scope.as_ref().is_some_and(|s| &s.agent_id == a))
        });
        Ok(page)
    }

    /// Edits a memory; a new text is embedded again. The edit is a compare-and-swap on
    /// the memory as read ([`Precondition::EntryUnchanged`]): when another edit or a
    /// supersession lands first, it is applied again on top of that, so neither is lost.
    pub async fn update(&self, tenant: &str, id: &str, patch: MemoryPatch) -> Result<MemoryEntry, MemoryError> {
        let mut embedded = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_update(tenant, id, &patch, &mut embedded).await {
                Err(MemoryError::Store(StoreError::Conflict(why))) if attempt < EDIT_ATTEMPTS => {
                    tracing::debug!(id, attempt, %why, "memory changed under an edit; applying it again");
                }
                done => return done,
            }
        }
    }

    /// One try of [`MemoryService::update`]. `embedded` keeps the new text's vector
    /// between tries.
    async fn try_update(
        &self,
        tenant: &str,
        id: &str,
        patch: &MemoryPatch,
        embedded: &mut Option<Vec<f32>>,
    ) -> Result<MemoryEntry, MemoryError> {
        let mut entry = self.get(tenant, id).await?;
        let before = entry.clone();
        let ulid = entry.ulid().ok_or_else(|| MemoryError::NotFound(format!("memory {id}")))?;
        let user = entry.scope.as_ref().map(|s| s.user_id.clone()).unwrap_or_default();
        let guard = self.erase_guard(tenant, &user).await?;
        if let Some(text) = &patch.text {
            self.limits.memory_text("text", text)?;
            if *text != entry.text {
                let vector = match embedded.take() {
                    Some(v) => v,
                    None => self.embed_one(text).await?,
                };
                *embedded = Some(vector.clone());
                entry.embedding = vector;
                entry.text = text.clone();
            }
        }
        if let Some(metadata) = &patch.metadata {
            self.limits.metadata("metadata", metadata)?;
            entry.metadata_json = match metadata {
                serde_json::Value::Null => String::new(),
                v @ serde_json::Value::Object(_) => v.to_string(),
                _ => return Err(MemoryError::Invalid("metadata must be a JSON object".into())),
            };
        }
        if let Some(importance) = patch.importance {
            entry.importance = importance;
        }
        if let Some(expires) = patch.expires_at_ms {
            if expires.is_some_and(|t| t <= now_ms()) {
                return Err(MemoryError::InvalidField { field: "expires_at".into(), message: "is in the past".into() });
            }
            entry.expires_at_ms = expires;
        }
        let now = now_ms();
        let changed = changed_fields(&before, &entry);
        if changed.is_empty() {
            // Nothing to version: an edit that changes nothing is not a new version.
            return Ok(before);
        }
        entry.versions.push(MemoryVersion {
            text: before.text.clone(),
            metadata_json: before.metadata_json.clone(),
            importance: before.importance,
            since_ms: before.updated_at_ms,
            replaced_at_ms: now,
            changed: changed.iter().map(|c| (*c).to_owned()).collect(),
            expires_at_ms: before.expires_at_ms,
        });
        let excess = entry.versions.len().saturating_sub(MAX_VERSIONS);
        entry.versions.drain(..excess);
        // Strictly later than the version it replaces, so the history stays ordered even
        // for two edits within one millisecond.
        entry.updated_at_ms = now.max(before.updated_at_ms + 1);
        let unchanged = Precondition::EntryUnchanged { id: ulid, stamp: before.edit_stamp() };
        let store = self.store.clone();
        let updated = blocking(move || {
            // Fails with a conflict if the memory was edited, superseded or deleted
            // meanwhile: an edit never brings a deleted memory back.
            store.replace_entry_guarded(entry, vec![guard, unchanged])?;
            store.get_entry(ulid)?.ok_or_else(|| StoreError::NotFound(format!("memory {ulid}")))
        })
        .await?;
        Ok(updated)
    }

    pub async fn delete(&self, tenant: &str, id: &str) -> Result<(), MemoryError> {
        let entry = self.get(tenant, id).await?;
        let ulid = entry.ulid().ok_or_else(|| MemoryError::NotFound(format!("memory {id}")))?;
        let store = self.store.clone();
        blocking(move || store.delete_entry(ulid)).await?;
        Ok(())
    }

    /// Deletes a session and the memories written from it.
    pub async fn delete_session(&self, tenant: &str, id: &str) -> Result<bool, MemoryError> {
        let (store, tenant, id) = (self.store.clone(), tenant.to_owned(), id.to_owned());
        blocking(move || store.delete_session(&tenant, &id)).await
    }

    /// Erases everything of one user: memories, sessions, documents, ingestion jobs.
    /// Returns how many memories were deleted. Final: see [`MemoryStore::erase_user`].
    pub async fn erase_user(&self, tenant: &str, user_id: &str) -> Result<usize, MemoryError> {
        // Running jobs stop at their next batch; the erase removes their records, which
        // makes their final write fail even if one is already past that point.
        self.jobs.cancel(tenant, Some(user_id), None);
        let (store, tenant, user) = (self.store.clone(), tenant.to_owned(), user_id.to_owned());
        blocking(move || store.erase_user(&tenant, &user)).await
    }

    /// The memories closest in meaning to the query, within the tenant and the given
    /// user (their own memories, plus the tenant's shared knowledge).
    #[tracing::instrument(name = "memory.search", skip_all, fields(k = q.k))]
    pub async fn search(&self, tenant: &str, q: SearchQuery) -> Result<Vec<Found>, MemoryError> {
        if q.query.trim().is_empty() {
            return Err(MemoryError::Invalid("query is empty".into()));
        }
        if q.k == 0 || q.k > 100 {
            return Err(MemoryError::Invalid(format!("k must be within 1..100, got {}", q.k)));
        }
        let filter = scope_filter(tenant, &q);
        // Post-filters (metadata, dates, minimum score) can only remove hits, and fusion
        // needs depth from both lists: fetch more than asked.
        let post_filtered = !q.metadata.is_empty()
            || q.created_after_ms.is_some()
            || q.created_before_ms.is_some()
            || q.time != TimeView::default();
        let fetch = if post_filtered { (q.k * 10).min(1000) } else { (q.k * 4).max(20) };
        // A named period favours memories recorded then; they must be among the candidates.
        let period = super::time_hint::period_of(&q.query).filter(|_| q.mode == Mode::Hybrid);
        let fetch = if period.is_some() { fetch.max(PERIOD_FETCH) } else { fetch };
        let vector = match q.mode {
            Mode::Lexical => None,
            Mode::Dense | Mode::Hybrid => Some(crate::store::normalized(&self.embed_one(&q.query).await?)),
        };
        let (store, lexical, weights, mode) = (self.store.clone(), self.lexical.clone(), self.weights.clone(), q.mode);
        let (query, tenant) = (q.query.clone(), tenant.to_owned());
        let ranked: Vec<(u64, f32)> = blocking(move || {
            // A cluster node reads the scopes into its caches on their first search.
            store.prepare_search(&filter)?;
            let index = store.index();
            let stage = |name: &'static str, started: std::time::Instant| {
                metrics::histogram!("engram_retrieval_seconds", "stage" => name)
                    .record(started.elapsed().as_secs_f64());
            };
            let started = std::time::Instant::now();
            let dense: Vec<(u64, f32)> = match &vector {
                Some(v) => index.search(v, fetch, &filter).into_iter().map(|h| (h.point, h.similarity)).collect(),
                None => Vec::new(),
            };
            if vector.is_some() {
                stage("dense", started);
            }
            let started = std::time::Instant::now();
            let lexical_hits = match mode {
                Mode::Dense => Vec::new(),
                Mode::Lexical | Mode::Hybrid => {
                    let lexicon = lexical.read();
                    match lexicon.tenant(&tenant) {
                        Some(lex) => index.with_admit(&filter, |admit| lex.search(&query, fetch, admit)),
                        None => Vec::new(),
                    }
                }
            };
            if mode != Mode::Dense {
                stage("lexical", started);
            }
            let started = std::time::Instant::now();
            let (Mode::Hybrid, Some(vector)) = (mode, &vector) else {
                return Ok(if mode == Mode::Lexical { lexical_hits } else { dense });
            };
            // Each list holds only its own method's best; a memory the other method put
            // just below its cut-off would count there as scoring nothing. Score the
            // union by both methods so that fusion compares like with like.
            let mut union: Vec<u64> = dense.iter().chain(&lexical_hits).map(|(p, _)| *p).collect();
            union.sort_unstable();
            union.dedup();
            let by_score = |a: &(u64, f32), b: &(u64, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
            let mut dense = index.similarities(vector, &union);
            dense.sort_unstable_by(by_score);
            // BM25 as coverage of the query (see `LexicalIndex::query_weight`), so that it
            // sits on an absolute scale beside the cosine.
            let mut lexical_all = {
                let lexicon = lexical.read();
                let Some(lexical) = lexicon.tenant(&tenant) else { return Ok(Vec::new()) };
                let weight = lexical.query_weight(&query);
                let mut scored = lexical.score(&query, &union);
                scored.iter_mut().for_each(|h| h.1 = if weight > 0.0 { h.1 / weight } else { 0.0 });
                scored
            };
            lexical_all.sort_unstable_by(by_score);
            // Age and importance come from the entries themselves.
            let facts: std::collections::HashMap<u64, Candidate> = store
                .resolve_hits(union.iter().map(|p| (*p, 0.0)).collect())?
                .into_iter()
                .map(|s| {
                    let e = s.entry;
                    let c = Candidate { point: e.point_id, created_at_ms: e.created_at_ms, importance: e.importance };
                    (e.point_id, c)
                })
                .collect();
            let mut fused = fuse(&dense, &lexical_all, &|p| facts.get(&p).copied(), &weights, now_ms());
            if let Some((start, end)) = period {
                for (point, score) in &mut fused {
                    if facts.get(point).is_some_and(|c| (start..end).contains(&c.created_at_ms)) {
                        *score += weights.period_boost;
                    }
                }
                fused.sort_unstable_by(by_score);
            }
            stage("fusion", started);
            Ok(fused)
        })
        .await?;
        let store = self.store.clone();
        let hits = blocking(move || store.resolve_hits(ranked)).await?;
        let now = now_ms();
        Ok(hits
            .into_iter()
            .filter(|h| h.similarity >= q.min_score)
            .filter(|h| q.created_after_ms.is_none_or(|t| h.entry.created_at_ms >= t))
            .filter(|h| q.created_before_ms.is_none_or(|t| h.entry.created_at_ms < t))
            .filter(|h| metadata_matches(&h.entry.metadata_json, &q.metadata))
            .filter(|h| q.time.admits(&h.entry, now))
            .take(q.k)
            .map(|h| Found { entry: h.entry, score: h.similarity })
            .collect())
    }
}

/// The tenant's shared knowledge, and — for a given user — that user's memories of the
/// requested kinds (optionally within one session).
fn scope_filter(tenant: &str, q: &SearchQuery) -> SearchFilter {
    let wants = |k: Kind| q.kinds.is_empty() || q.kinds.contains(&k);
    let mut any_of = Vec::new();
    if wants(Kind::Knowledge) {
        any_of.push(ScopeClause {
            tenant: Some(tenant.to_owned()),
            user_id: Some(String::new()),
            kinds: vec![Kind::Knowledge],
            ..Default::default()
        });
    }
    if let Some(user) = &q.user_id {
        let agents: Vec<Option<String>> =
            if q.agent_ids.is_empty() { vec![None] } else { q.agent_ids.iter().cloned().map(Some).collect() };
        for agent_id in agents {
            any_of.push(ScopeClause {
                tenant: Some(tenant.to_owned()),
                user_id: Some(user.clone()),
                agent_id,
                session_id: q.session_id.clone(),
                kinds: q.kinds.clone(),
            });
        }
    }
    if any_of.is_empty() {
        // Nothing requested that this caller may see: a clause no entry matches.
        any_of.push(ScopeClause {
            tenant: Some(tenant.to_owned()),
            kinds: vec![Kind::Unspecified],
            ..Default::default()
        });
    }
    SearchFilter { any_of }
}

/// What a listing shows besides the user and kind.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub agent_id: Option<String>,
    pub time: TimeView,
}

/// Ids given by a client, each checked.
fn parse_ids(field: &str, ids: &[String]) -> Result<Vec<Ulid>, MemoryError> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| id.parse().map_err(|_| MemoryError::Invalid(format!("{field}[{i}]: `{id}` is not a memory id"))))
        .collect()
}

/// The fields an edit changed, by their API names.
fn changed_fields(before: &MemoryEntry, after: &MemoryEntry) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if before.text != after.text {
        changed.push("text");
    }
    if before.metadata_json != after.metadata_json {
        changed.push("metadata");
    }
    if before.importance != after.importance {
        changed.push("importance");
    }
    if before.expires_at_ms != after.expires_at_ms {
        changed.push("expires_at");
    }
    changed
}

fn metadata_matches(stored: &str, wanted: &serde_json::Map<String, serde_json::Value>) -> bool {
    if wanted.is_empty() {
        return true;
    }
    let Ok(serde_json::Value::Object(have)) = serde_json::from_str::<serde_json::Value>(stored) else { return false };
    wanted.iter().all(|(k, v)| have.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(user: Option<&str>, kinds: Vec<Kind>) -> SearchQuery {
        SearchQuery {
            query: "q".into(),
            user_id: user.map(str::to_owned),
            session_id: None,
            kinds,
            k: 5,
            min_score: 0.0,
            metadata: Default::default(),
            created_after_ms: None,
            created_before_ms: None,
            mode: Mode::Hybrid,
            agent_ids: Vec::new(),
            time: TimeView::default(),
        }
    }

    #[test]
    fn a_user_sees_their_memories_and_the_tenants_knowledge_only() {
        let f = scope_filter("acme", &query(Some("alice"), vec![]));
        assert_eq!(f.any_of.len(), 2);
        assert!(f.any_of.iter().all(|c| c.tenant.as_deref() == Some("acme")));
        assert_eq!(f.any_of[0].user_id.as_deref(), Some(""));
        assert_eq!(f.any_of[0].kinds, vec![Kind::Knowledge]);
        assert_eq!(f.any_of[1].user_id.as_deref(), Some("alice"));
        // Asking only for facts leaves the shared knowledge out.
        let f = scope_filter("acme", &query(Some("alice"), vec![Kind::Fact]));
        assert_eq!(f.any_of.len(), 1);
        // No user and no knowledge wanted: nothing can match, never "everything".
        let f = scope_filter("acme", &query(None, vec![Kind::Fact]));
        assert_eq!(f.any_of[0].kinds, vec![Kind::Unspecified]);
    }

    #[test]
    fn metadata_filters_need_every_field_equal() {
        let want = serde_json::json!({"topic": "food", "n": 2});
        let want = want.as_object().unwrap();
        assert!(metadata_matches(r#"{"topic":"food","n":2,"x":1}"#, want));
        assert!(!metadata_matches(r#"{"topic":"food","n":3}"#, want));
        assert!(!metadata_matches("", want));
        assert!(metadata_matches("", &Default::default()));
    }
}
