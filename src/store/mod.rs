//! The long-term store: memory entries, documents and sessions persisted in sled, and a
//! vector index over the entries' embeddings.
//!
//! sled is the source of truth. A write returns only once sled has flushed it, so an
//! acknowledged write survives a crash; the vector index lives in memory, is saved now
//! and then as a cache, and is caught up or rebuilt from sled at every open.
//!
//! The store is synchronous (sled is); async callers run it on the blocking pool. It
//! knows nothing of HTTP or of the models.

mod documents;
mod error;
pub mod export;
pub mod index;
mod keys;
mod memory_store;
mod migrate;
mod read;
pub mod records;
pub mod redis;
mod trees;
mod verify;
mod write;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub use error::{Result, StoreError};
pub use index::{normalize as normalize_vector, Hit, IndexParams, LoadOutcome, ScopeClause, SearchFilter, VectorIndex};
pub use keys::MAX_KEY_COMPONENT;
pub use memory_store::{open as open_backend, MemoryStore};
pub use migrate::{CURRENT_SCHEMA_VERSION, MIGRATIONS};
pub use read::{Page, ScoredEntry};
pub use verify::VerifyReport;
pub use write::{
    CommitObserver, Committed, NewEntry, Precondition, PutOutcome, SessionWrite, WriteBatch, WriteOutcome,
};

use trees::Trees;

/// Which engine holds the data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// sled and an HNSW index in `data_dir`: one process, the default.
    #[default]
    Sled,
    /// A Redis Cluster shared by any number of engram nodes (see [`redis`]).
    RedisCluster,
}

/// Store settings (the `[store]` and `[index]` sections of the config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: BackendKind,
    /// Where sled and the index files live.
    pub data_dir: PathBuf,
    /// sled's page cache, in MiB.
    pub cache_capacity_mb: u64,
    /// How often a running server saves the vector index.
    pub index_save_interval_secs: u64,
    /// How often a running server deletes memories whose `expires_at` has passed (they
    /// leave search at that moment whatever this is; this only reclaims their space).
    pub expiry_purge_interval_secs: u64,
    /// Seed nodes of the Redis Cluster (`redis://host:port`); the rest are discovered.
    pub redis_urls: Vec<String>,
    /// Prefix of every key engram writes in the cluster: deployments sharing one
    /// cluster each take their own.
    pub redis_namespace: String,
    /// Replicas that must hold a write before it is acknowledged (Redis `WAIT`).
    pub redis_wait_replicas: u32,
    pub redis_wait_timeout_ms: u64,
    /// How often a node reads the change streams of the other nodes' writes.
    pub redis_follow_interval_ms: u64,
    /// Most memories one node keeps in its search caches (redis-cluster); past it, the
    /// scopes searched least recently are dropped and rebuilt on their next search.
    pub cache_max_entries: usize,
    #[serde(skip)]
    pub index: IndexParams,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            cache_capacity_mb: 256,
            index_save_interval_secs: 300,
            expiry_purge_interval_secs: 60,
            backend: BackendKind::Sled,
            redis_urls: Vec::new(),
            redis_namespace: "engram".into(),
            redis_wait_replicas: 1,
            redis_wait_timeout_ms: 2000,
            redis_follow_interval_ms: 50,
            cache_max_entries: 1_000_000,
            index: IndexParams::default(),
        }
    }
}

/// `v` scaled to unit length (a zero or non-finite vector comes back unchanged; the
/// index then finds nothing close to it).
pub fn normalized(v: &[f32]) -> Vec<f32> {
    let mut out = v.to_vec();
    index::normalize(&mut out);
    out
}

/// Counts for `engram store stats` and the readiness endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub schema_version: u32,
    pub dimension: Option<usize>,
    pub entries: usize,
    pub entries_by_kind: std::collections::BTreeMap<String, usize>,
    pub documents: usize,
    pub sessions: usize,
    pub index_live_points: usize,
    pub index_graph_nodes: usize,
    pub index_tombstones: usize,
    pub disk_bytes: u64,
}

/// See the module documentation. Cheap to share behind an `Arc`.
pub struct Store {
    db: sled::Db,
    trees: Trees,
    index: Arc<VectorIndex>,
    data_dir: PathBuf,
    /// Serialises writers between the dedupe lookup and the commit, so two writes of the
    /// same text cannot both miss the lookup. Commits take microseconds; flushes and
    /// index inserts for different writers still overlap.
    write_lock: Mutex<()>,
    next_point: AtomicU64,
    /// ULIDs from one generator are strictly increasing, even within a millisecond, so
    /// listings come out in the order entries were written.
    ids: Mutex<ulid::Generator>,
    /// Embedding width, fixed by the first entry ever written.
    dimension: Mutex<Option<usize>>,
    /// Records that failed to decode at open (also reported by `verify`).
    open_problems: Vec<String>,
    /// What became of the saved vector index at open.
    index_load: LoadOutcome,
    /// Told of every commit (see [`CommitObserver`]).
    observers: parking_lot::RwLock<Vec<Arc<dyn CommitObserver>>>,
}

impl Store {
    /// Opens (or creates) the store under `config.data_dir`, applies pending migrations,
    /// and loads the vector index (catching it up, or rebuilding it from sled).
    pub fn open(config: &StoreConfig) -> Result<Store> {
        config.index.validate().map_err(StoreError::Invalid)?;
        std::fs::create_dir_all(&config.data_dir)?;
        let db_path = config.data_dir.join("db");
        let db = sled::Config::new()
            .path(&db_path)
            .cache_capacity(config.cache_capacity_mb * 1024 * 1024)
            .open()
            .map_err(|e| open_error(&db_path, e))?;
        migrate::run(&db, &db_path)?;
        let trees = Trees::open(&db)?;
        let dimension = trees.dimension()?;
        let index = Arc::new(VectorIndex::new(config.index.clone()));
        let (staged_next, open_problems) = read::stage_all(&trees, &index)?;
        let stored_next = trees.meta.get(trees::NEXT_POINT_KEY)?;
        let stored_next =
            stored_next.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map(u64::from_be_bytes).unwrap_or(0);
        let next_point = staged_next.max(stored_next);
        let distrust_saved_index = trees.meta.contains_key(trees::REBUILD_INDEX_KEY)?;
        let mut store = Store {
            db,
            trees,
            index,
            data_dir: config.data_dir.clone(),
            write_lock: Mutex::new(()),
            next_point: AtomicU64::new(next_point),
            ids: Mutex::new(ulid::Generator::new()),
            dimension: Mutex::new(dimension),
            open_problems,
            index_load: LoadOutcome::Missing,
            observers: parking_lot::RwLock::new(Vec::new()),
        };
        for problem in &store.open_problems {
            tracing::error!("{problem}");
        }
        let started = std::time::Instant::now();
        if distrust_saved_index {
            // Written before point ids had a stored high-water mark: the saved graph may
            // hold a deleted node under an id given out again. Build it afresh, once.
            let _ = std::fs::remove_dir_all(store.index_dir());
        }
        store.index_load = store.index.load_or_rebuild(&store.index_dir());
        if distrust_saved_index {
            store.save_index()?;
            store.trees.meta.remove(trees::REBUILD_INDEX_KEY)?;
            store.flush()?;
        }
        store.finish_interrupted_erasures()?;
        tracing::info!(
            outcome = ?store.index_load,
            points = store.index.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "vector index ready"
        );
        Ok(store)
    }

    fn index_dir(&self) -> PathBuf {
        self.data_dir.join("index")
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether the saved index was loaded (and how far it was caught up) or rebuilt.
    pub fn index_load_outcome(&self) -> &LoadOutcome {
        &self.index_load
    }

    pub fn index(&self) -> &Arc<VectorIndex> {
        &self.index
    }

    /// Registers an observer of every later commit (see [`CommitObserver`]).
    pub fn observe(&self, observer: Arc<dyn CommitObserver>) {
        self.observers.write().push(observer);
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Saves the vector index if it changed since the last save.
    pub fn save_index(&self) -> Result<bool> {
        self.index.save(&self.index_dir()).map_err(StoreError::Index)
    }

    /// Throws the graph away and builds it again from the live entries.
    pub fn rebuild_index(&self) -> Result<()> {
        self.index.rebuild_now();
        self.save_index().map(|_| ())
    }

    pub fn stats(&self) -> Result<Stats> {
        let mut entries_by_kind = std::collections::BTreeMap::new();
        let mut entries = 0;
        for item in self.trees.entries.iter() {
            let (key, value) = item?;
            entries += 1;
            let kind = read::decode_entry(&key, &value).map(|e| e.kind().name()).unwrap_or("corrupt");
            *entries_by_kind.entry(kind.to_owned()).or_insert(0) += 1;
        }
        Ok(Stats {
            schema_version: migrate::stored_version(&self.db)?.unwrap_or(0),
            dimension: *self.dimension.lock(),
            entries,
            entries_by_kind,
            documents: self.trees.documents.len(),
            sessions: self.trees.sessions.len(),
            index_live_points: self.index.len(),
            index_graph_nodes: self.index.graph_len(),
            index_tombstones: self.index.tombstones(),
            disk_bytes: self.db.size_on_disk()?,
        })
    }

    /// A new id, greater than every id this process made before.
    pub fn new_id(&self) -> ulid::Ulid {
        // The generator fails only when 2^80 ids are asked for within one millisecond.
        self.ids.lock().generate().unwrap_or_else(|_| ulid::Ulid::new())
    }

    fn allocate_point(&self) -> u64 {
        self.next_point.fetch_add(1, Ordering::Relaxed)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.db.flush() {
            tracing::error!("flushing sled on close: {e}");
        }
    }
}

/// sled's own message for a damaged database says nothing of what to do about it.
fn open_error(path: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Corruption { .. } => StoreError::Invalid(format!(
            "the database at {} is damaged ({e}). If a `snap.*.generating` file is in that \
             folder, remove it and retry. Otherwise restore a backup, or move the folder \
             away, start afresh and `engram store import` your last export",
            path.display()
        )),
        other => StoreError::Sled(other),
    }
}
