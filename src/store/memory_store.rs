//! The store as the memory layer sees it: one interface, two backends. [`super::Store`]
//! keeps everything in sled on this machine; [`super::redis::RedisStore`] keeps it in a
//! Redis Cluster that many engram nodes share. Nothing above this trait knows which one
//! runs.
//!
//! Both hold the same records (the protobuf messages of `proto/`), validate them the
//! same way, write each request's changes all or nothing under the same guards
//! ([`Precondition`]s, session revisions), and search through a [`VectorIndex`] of the
//! entries they hold, whose point ids they hand out.

use std::sync::Arc;

use ulid::Ulid;

use super::error::Result;
use super::records::{Document, IngestJob, Kind, MemoryEntry, Session};
use super::{
    BackendKind, CommitObserver, Page, Precondition, PutOutcome, ScoredEntry, SearchFilter, Stats, Store, StoreConfig,
    VectorIndex, WriteBatch, WriteOutcome,
};

/// See the module documentation. Methods block (on disk or the network): async callers
/// run them on the blocking pool.
pub trait MemoryStore: Send + Sync {
    /// `"sled"` or `"redis-cluster"`, for logs and the readiness endpoint.
    fn backend(&self) -> BackendKind;

    /// Applies a [`WriteBatch`] atomically: every precondition is checked and everything
    /// written, or nothing is ([`super::StoreError::Conflict`]). Durable on return.
    fn write(&self, batch: WriteBatch) -> Result<WriteOutcome>;
    /// Stores complete records as they are (an import; see [`Store::import_entries`]).
    fn import_entries(&self, records: Vec<MemoryEntry>) -> Result<Vec<Ulid>>;
    /// Replaces a stored entry (same id) under preconditions; `NotFound` if it is gone.
    fn replace_entry_guarded(&self, entry: MemoryEntry, preconditions: Vec<Precondition>) -> Result<()>;
    fn delete_entry(&self, id: Ulid) -> Result<bool>;
    /// Deletes entries by id (each shard's or the whole batch in one commit); returns
    /// those that existed.
    fn delete_entries(&self, ids: &[Ulid]) -> Result<Vec<Ulid>>;
    /// Up to `limit` entries whose expiry is at or before `now_ms`, soonest first.
    fn expired_entries(&self, now_ms: i64, limit: usize) -> Result<Vec<Ulid>>;
    /// Deletes up to `limit` entries expired by `now_ms`; returns how many went. Safe to
    /// run on several nodes at once: an entry another node removed first is skipped.
    fn purge_expired(&self, now_ms: i64, limit: usize) -> Result<usize> {
        let ids = self.expired_entries(now_ms, limit)?;
        Ok(self.delete_entries(&ids)?.len())
    }
    fn get_entry(&self, id: Ulid) -> Result<Option<MemoryEntry>>;
    /// A user's entries (tenant-wide ones with `user_id` empty), optionally of one kind,
    /// in (kind, id) order.
    fn list_entries(
        &self,
        tenant: &str,
        user_id: &str,
        kind: Option<Kind>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<MemoryEntry>>;

    /// Stores a session as it is, whatever revision is stored (an import).
    fn put_session(&self, session: &Session) -> Result<()>;
    fn get_session(&self, tenant: &str, id: &str) -> Result<Option<Session>>;
    fn find_session_by_transcript(&self, tenant: &str, user_id: &str, digest: &[u8]) -> Result<Option<Session>>;
    /// Deletes a session and the memories written from it, in one commit.
    fn delete_session(&self, tenant: &str, id: &str) -> Result<bool>;

    /// The user's erase epoch (odd while an erase runs); see [`Precondition`].
    fn user_epoch(&self, tenant: &str, user_id: &str) -> Result<u64>;
    /// Deletes everything of one user; an erase cut short is finished at the next open.
    fn erase_user(&self, tenant: &str, user_id: &str) -> Result<usize>;

    fn put_document(&self, doc: &Document) -> Result<()>;
    fn get_document(&self, tenant: &str, id: Ulid) -> Result<Option<Document>>;
    fn list_documents(&self, tenant: &str) -> Result<Vec<Document>>;
    /// Deletes a document and the chunks no other document shares (or cancels its job).
    fn delete_document(&self, tenant: &str, id: Ulid) -> Result<bool>;

    fn put_job(&self, job: &IngestJob) -> Result<()>;
    fn get_job(&self, id: Ulid) -> Result<Option<IngestJob>>;
    fn list_jobs(&self) -> Result<Vec<IngestJob>>;
    fn delete_job(&self, id: Ulid) -> Result<()>;

    /// A new id, greater than every id this process made before.
    fn new_id(&self) -> Ulid;

    /// The vector index over the entries this node holds in memory.
    fn index(&self) -> &Arc<VectorIndex>;
    /// Makes sure the index (and the observers) hold every entry `filter` can admit,
    /// before a search. The embedded store holds all of them from the start.
    fn prepare_search(&self, _filter: &SearchFilter) -> Result<()> {
        Ok(())
    }
    /// Maps index points to their entries, skipping points whose entry is gone.
    fn resolve_hits(&self, hits: Vec<(u64, f32)>) -> Result<Vec<ScoredEntry>>;
    /// Calls `f` with every entry held in memory at start (all of them for sled; none for
    /// the cluster, whose caches fill on first use).
    fn scan_entries(&self, f: &mut dyn FnMut(MemoryEntry)) -> Result<()>;
    /// Registers an observer of every later change to the entries this node holds.
    fn observe(&self, observer: Arc<dyn CommitObserver>);

    /// Saves the in-memory index if the backend keeps one on disk.
    fn save_index(&self) -> Result<bool>;
    /// Makes every write so far durable.
    fn flush(&self) -> Result<()>;
    /// What this node holds (for the cluster: its caches). Cheap.
    fn stats(&self) -> Result<Stats>;
    /// What the whole store holds, counted record by record (the cluster is walked).
    fn census(&self) -> Result<Stats> {
        self.stats()
    }
    /// Writes every record as one JSON line (see [`super::export`]); returns how many.
    fn export(&self, out: &mut dyn std::io::Write) -> Result<usize>;

    /// Stores new entries (deduplicated as for [`MemoryStore::write`]).
    fn put_entries(&self, entries: Vec<super::NewEntry>) -> Result<Vec<PutOutcome>> {
        Ok(self.write(WriteBatch { entries, ..Default::default() })?.entries)
    }
}

/// Opens the backend the configuration names.
pub fn open(config: &StoreConfig) -> Result<Arc<dyn MemoryStore>> {
    Ok(match config.backend {
        BackendKind::Sled => Arc::new(Store::open(config)?),
        BackendKind::RedisCluster => super::redis::RedisStore::open(config)?,
    })
}

impl MemoryStore for Store {
    fn backend(&self) -> BackendKind {
        BackendKind::Sled
    }
    fn write(&self, batch: WriteBatch) -> Result<WriteOutcome> {
        Store::write(self, batch)
    }
    fn import_entries(&self, records: Vec<MemoryEntry>) -> Result<Vec<Ulid>> {
        Store::import_entries(self, records)
    }
    fn replace_entry_guarded(&self, entry: MemoryEntry, preconditions: Vec<Precondition>) -> Result<()> {
        Store::replace_entry_guarded(self, entry, preconditions)
    }
    fn delete_entry(&self, id: Ulid) -> Result<bool> {
        Store::delete_entry(self, id)
    }
    fn delete_entries(&self, ids: &[Ulid]) -> Result<Vec<Ulid>> {
        Store::delete_entries(self, ids)
    }
    fn expired_entries(&self, now_ms: i64, limit: usize) -> Result<Vec<Ulid>> {
        Store::expired_entries(self, now_ms, limit)
    }
    fn get_entry(&self, id: Ulid) -> Result<Option<MemoryEntry>> {
        Store::get_entry(self, id)
    }
    fn list_entries(
        &self,
        tenant: &str,
        user_id: &str,
        kind: Option<Kind>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<MemoryEntry>> {
        Store::list_entries(self, tenant, user_id, kind, limit, cursor)
    }
    fn put_session(&self, session: &Session) -> Result<()> {
        Store::put_session(self, session)
    }
    fn get_session(&self, tenant: &str, id: &str) -> Result<Option<Session>> {
        Store::get_session(self, tenant, id)
    }
    fn find_session_by_transcript(&self, tenant: &str, user_id: &str, digest: &[u8]) -> Result<Option<Session>> {
        Store::find_session_by_transcript(self, tenant, user_id, digest)
    }
    fn delete_session(&self, tenant: &str, id: &str) -> Result<bool> {
        Store::delete_session(self, tenant, id)
    }
    fn user_epoch(&self, tenant: &str, user_id: &str) -> Result<u64> {
        Store::user_epoch(self, tenant, user_id)
    }
    fn erase_user(&self, tenant: &str, user_id: &str) -> Result<usize> {
        Store::erase_user(self, tenant, user_id)
    }
    fn put_document(&self, doc: &Document) -> Result<()> {
        Store::put_document(self, doc)
    }
    fn get_document(&self, tenant: &str, id: Ulid) -> Result<Option<Document>> {
        Store::get_document(self, tenant, id)
    }
    fn list_documents(&self, tenant: &str) -> Result<Vec<Document>> {
        Store::list_documents(self, tenant)
    }
    fn delete_document(&self, tenant: &str, id: Ulid) -> Result<bool> {
        Store::delete_document(self, tenant, id)
    }
    fn put_job(&self, job: &IngestJob) -> Result<()> {
        Store::put_job(self, job)
    }
    fn get_job(&self, id: Ulid) -> Result<Option<IngestJob>> {
        Store::get_job(self, id)
    }
    fn list_jobs(&self) -> Result<Vec<IngestJob>> {
        Store::list_jobs(self)
    }
    fn delete_job(&self, id: Ulid) -> Result<()> {
        Store::delete_job(self, id)
    }
    fn new_id(&self) -> Ulid {
        Store::new_id(self)
    }
    fn index(&self) -> &Arc<VectorIndex> {
        Store::index(self)
    }
    fn resolve_hits(&self, hits: Vec<(u64, f32)>) -> Result<Vec<ScoredEntry>> {
        Store::resolve_hits(self, hits.into_iter())
    }
    fn scan_entries(&self, f: &mut dyn FnMut(MemoryEntry)) -> Result<()> {
        Store::scan_entries(self, f)
    }
    fn observe(&self, observer: Arc<dyn CommitObserver>) {
        Store::observe(self, observer)
    }
    fn save_index(&self) -> Result<bool> {
        Store::save_index(self)
    }
    fn flush(&self) -> Result<()> {
        Store::flush(self)
    }
    fn stats(&self) -> Result<Stats> {
        Store::stats(self)
    }
    fn export(&self, out: &mut dyn std::io::Write) -> Result<usize> {
        Store::export(self, out)
    }
}
