//! The `redis-cluster` backend: the records live in a Redis Cluster that any number of
//! stateless engram nodes share; each node keeps search caches (HNSW and, through the
//! observers, BM25) of the scopes it serves.
//!
//! - **Layout** ([`layout`]): a scope's keys share a hash tag, so each request's writes
//!   commit in one script on one master, all or nothing, guards included — as one sled
//!   transaction does for the embedded store.
//! - **Durability**: the masters write their append-only file before answering
//!   (`appendfsync always`, set by the cluster scripts), and a commit then waits until
//!   `store.redis_wait_replicas` replicas hold it (`WAIT`) before it is acknowledged.
//! - **Caches** ([`cache`]): a scope's vectors are loaded on its first search, the least
//!   recently searched scopes are dropped past `store.cache_max_entries`, and every
//!   node follows the others' writes through the shards' change streams ([`follow`]).
//!   Hits are always read back from Redis, so a cache that lags can miss a new memory
//!   for a moment but never return a deleted one.

mod cache;
mod commit;
mod conn;
mod follow;
pub mod layout;
mod read;
mod scan;

use std::sync::Arc;

use parking_lot::Mutex;
use ulid::Ulid;

use super::error::{Result, StoreError};
use super::records::{Document, IngestJob, Kind, MemoryEntry, Session};
use super::{
    BackendKind, CommitObserver, MemoryStore, Page, Precondition, ScoredEntry, SearchFilter, Stats, StoreConfig,
    VectorIndex, WriteBatch, WriteOutcome,
};
use cache::Cache;
use conn::{Conn, ConnRuntime};

/// See the module documentation.
pub struct RedisStore {
    conn: Conn,
    keys: layout::Keys,
    config: StoreConfig,
    /// Names this node in the change streams, so it skips its own writes there.
    node_id: String,
    ids: Mutex<ulid::Generator>,
    dimension: Mutex<Option<usize>>,
    cache: Cache,
    follower: Mutex<Option<follow::Follower>>,
    /// Last: the connection's tasks run on it.
    _runtime: ConnRuntime,
}

impl RedisStore {
    /// Connects, checks the layout version, finishes erasures a crash cut short, and
    /// starts following the change streams.
    pub fn open(config: &StoreConfig) -> Result<Arc<RedisStore>> {
        config.index.validate().map_err(StoreError::Invalid)?;
        let keys = layout::Keys::new(&config.redis_namespace).map_err(StoreError::Invalid)?;
        let (conn, runtime) = Conn::open(&config.redis_urls)?;
        let layout: Option<u32> = conn.query(redis::cmd("GET").arg(keys.meta_layout()).clone())?;
        match layout {
            None => conn
                .query::<()>(redis::cmd("SET").arg(keys.meta_layout()).arg(layout::LAYOUT_VERSION).arg("NX").clone())?,
            Some(v) if v > layout::LAYOUT_VERSION => {
                return Err(StoreError::TooNew {
                    path: config.redis_urls.join(","),
                    found: v,
                    supported: layout::LAYOUT_VERSION,
                })
            }
            // Version 1 holds no expiring entries and nothing that moves: recording the
            // new version is the whole upgrade, and keeps older nodes (which would drop the
            // new record fields on rewrite) out.
            Some(v) if v < layout::LAYOUT_VERSION => {
                conn.query::<()>(redis::cmd("SET").arg(keys.meta_layout()).arg(layout::LAYOUT_VERSION).clone())?
            }
            Some(_) => {}
        }
        let dimension: Option<u32> = conn.query(redis::cmd("GET").arg(keys.meta_dimension()).clone())?;
        let store = Arc::new(RedisStore {
            cache: Cache::new(config.index.clone(), config.cache_max_entries),
            conn,
            keys,
            config: config.clone(),
            node_id: Ulid::new().to_string(),
            ids: Mutex::new(ulid::Generator::new()),
            dimension: Mutex::new(dimension.map(|d| d as usize)),
            follower: Mutex::new(None),
            _runtime: runtime,
        });
        store.finish_interrupted_erasures()?;
        let follower = follow::Follower::start(Arc::downgrade(&store), config.redis_follow_interval_ms)?;
        *store.follower.lock() = Some(follower);
        tracing::info!(nodes = ?config.redis_urls, node = %store.node_id, "connected to the redis cluster");
        Ok(store)
    }

    /// How far behind the change streams this node is, as the follower last saw it.
    pub fn follower_lag_ms(&self) -> Option<u64> {
        self.follower.lock().as_ref().map(|f| f.lag_ms())
    }

    fn new_ulid(&self) -> Ulid {
        self.ids.lock().generate().unwrap_or_else(|_| Ulid::new())
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        if let Some(f) = self.follower.lock().take() {
            f.stop();
        }
    }
}

impl MemoryStore for RedisStore {
    fn backend(&self) -> BackendKind {
        BackendKind::RedisCluster
    }
    fn write(&self, batch: WriteBatch) -> Result<WriteOutcome> {
        self.write_batch(batch)
    }
    fn import_entries(&self, records: Vec<MemoryEntry>) -> Result<Vec<Ulid>> {
        self.import_records(records)
    }
    fn replace_entry_guarded(&self, entry: MemoryEntry, preconditions: Vec<Precondition>) -> Result<()> {
        self.replace_record(entry, preconditions)
    }
    fn delete_entry(&self, id: Ulid) -> Result<bool> {
        Ok(!RedisStore::delete_entries(self, &[id])?.is_empty())
    }
    fn delete_entries(&self, ids: &[Ulid]) -> Result<Vec<Ulid>> {
        RedisStore::delete_entries(self, ids)
    }
    fn expired_entries(&self, now_ms: i64, limit: usize) -> Result<Vec<Ulid>> {
        let mut out = Vec::new();
        for shard in 0..layout::SHARDS {
            let left = limit.saturating_sub(out.len());
            if left == 0 {
                break;
            }
            let cmd = redis::cmd("ZRANGEBYSCORE")
                .arg(self.keys.expiries(shard))
                .arg("-inf")
                .arg(now_ms)
                .arg("LIMIT")
                .arg(0)
                .arg(left)
                .clone();
            let ids: Vec<Vec<u8>> = self.conn.query(cmd)?;
            out.extend(ids.iter().filter_map(|b| crate::store::records::ulid_from_bytes(b)));
        }
        Ok(out)
    }
    fn get_entry(&self, id: Ulid) -> Result<Option<MemoryEntry>> {
        self.read_entry(id)
    }
    fn list_entries(
        &self,
        tenant: &str,
        user_id: &str,
        kind: Option<Kind>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<MemoryEntry>> {
        self.list(tenant, user_id, kind, limit, cursor)
    }
    fn put_session(&self, session: &Session) -> Result<()> {
        self.store_session(session)
    }
    fn get_session(&self, tenant: &str, id: &str) -> Result<Option<Session>> {
        Ok(self.read_session(tenant, id)?.map(|(_, s, _)| s))
    }
    fn find_session_by_transcript(&self, tenant: &str, user_id: &str, digest: &[u8]) -> Result<Option<Session>> {
        self.session_by_transcript(tenant, user_id, digest)
    }
    fn delete_session(&self, tenant: &str, id: &str) -> Result<bool> {
        self.remove_session(tenant, id)
    }
    fn user_epoch(&self, tenant: &str, user_id: &str) -> Result<u64> {
        self.read_epoch(&layout::ScopeKey::new(tenant, user_id))
    }
    fn erase_user(&self, tenant: &str, user_id: &str) -> Result<usize> {
        self.erase(tenant, user_id)
    }
    fn put_document(&self, doc: &Document) -> Result<()> {
        self.write_batch(WriteBatch { document: Some(doc.clone()), ..Default::default() }).map(|_| ())
    }
    fn get_document(&self, tenant: &str, id: Ulid) -> Result<Option<Document>> {
        Ok(self.read_document(id)?.filter(|d| d.scope.as_ref().is_some_and(|s| s.tenant == tenant)))
    }
    fn list_documents(&self, tenant: &str) -> Result<Vec<Document>> {
        self.documents_of(tenant)
    }
    fn delete_document(&self, tenant: &str, id: Ulid) -> Result<bool> {
        self.remove_document(tenant, id)
    }
    fn put_job(&self, job: &IngestJob) -> Result<()> {
        self.write_batch(WriteBatch { job: Some(job.clone()), ..Default::default() }).map(|_| ())
    }
    fn get_job(&self, id: Ulid) -> Result<Option<IngestJob>> {
        self.read_job(id)
    }
    fn list_jobs(&self) -> Result<Vec<IngestJob>> {
        self.all_jobs()
    }
    fn delete_job(&self, id: Ulid) -> Result<()> {
        self.remove_job(id)
    }
    fn new_id(&self) -> Ulid {
        self.new_ulid()
    }
    fn index(&self) -> &Arc<VectorIndex> {
        self.cache.index()
    }
    fn prepare_search(&self, filter: &SearchFilter) -> Result<()> {
        self.load_scopes_of(filter)
    }
    fn resolve_hits(&self, hits: Vec<(u64, f32)>) -> Result<Vec<ScoredEntry>> {
        self.resolve(hits)
    }
    fn scan_entries(&self, _f: &mut dyn FnMut(MemoryEntry)) -> Result<()> {
        // Nothing is held at start: scopes are loaded (and the observers told) on use.
        Ok(())
    }
    fn observe(&self, observer: Arc<dyn CommitObserver>) {
        self.cache.observe(observer)
    }
    fn save_index(&self) -> Result<bool> {
        // The caches are rebuilt from Redis; nothing is kept on disk.
        Ok(false)
    }
    fn flush(&self) -> Result<()> {
        // Every acknowledged commit is already on the masters' logs (and replicas).
        Ok(())
    }
    fn stats(&self) -> Result<Stats> {
        Ok(self.cache_stats())
    }
    fn census(&self) -> Result<Stats> {
        self.census_all()
    }
    fn export(&self, out: &mut dyn std::io::Write) -> Result<usize> {
        self.export_lines(out)
    }
}

impl RedisStore {
    /// What this node's caches hold (documents and sessions are not cached: 0).
    fn cache_stats(&self) -> Stats {
        let cached = self.cache.stats();
        Stats {
            schema_version: layout::LAYOUT_VERSION,
            dimension: *self.dimension.lock(),
            entries: cached.entries,
            entries_by_kind: cached.by_kind,
            documents: 0,
            sessions: 0,
            index_live_points: self.cache.index().len(),
            index_graph_nodes: self.cache.index().graph_len(),
            index_tombstones: self.cache.index().tombstones(),
            disk_bytes: 0,
        }
    }
}

/// Decodes a record read from Redis, naming its key when it does not decode.
fn decode<T: prost::Message + Default>(key: &str, bytes: &[u8]) -> Result<T> {
    T::decode(bytes).map_err(|e| StoreError::Corrupt { tree: "redis", key: key.to_owned(), reason: e.to_string() })
}
