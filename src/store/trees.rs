//! The sled trees the store is made of, opened once.

use sled::{Db, Tree};

use super::error::Result;

/// Tree names are part of the on-disk format.
pub struct Trees {
    /// Schema version, embedding dimension.
    pub meta: Tree,
    /// entry id (16-byte ULID) → `MemoryEntry`.
    pub entries: Tree,
    /// tenant, user, kind, entry id → (empty): listing.
    pub by_scope: Tree,
    /// scope, kind, content hash → entry id: one copy of a text per scope.
    pub by_hash: Tree,
    /// document id, entry id → (empty): a document's chunks.
    pub by_document: Tree,
    /// tenant, session id, entry id → (empty): a session's memories.
    pub by_session: Tree,
    /// point id (u64) → entry id: from an index hit to its entry.
    pub points: Tree,
    /// document id → `Document`.
    pub documents: Tree,
    /// tenant, session id → `Session`.
    pub sessions: Tree,
    /// job id (16-byte ULID) → `IngestJob`: document ingestions in the background.
    pub jobs: Tree,
    /// tenant, user → erase epoch (u64): odd while an erase runs, even once it ended.
    pub erasures: Tree,
    /// tenant, user, transcript digest → session id: finding a conversation by its turns.
    pub transcripts: Tree,
    /// expiry time (u64 ms, big-endian), entry id → (empty): memories due to be purged,
    /// soonest first (schema version 4).
    pub expiries: Tree,
}

pub const DIMENSION_KEY: &[u8] = b"dimension";
/// In `meta`: one more than the highest point id ever given out (u64, big-endian).
/// Written in the same transaction as the entries, so ids never repeat, not even when
/// the newest entry is deleted before a restart.
pub const NEXT_POINT_KEY: &[u8] = b"next_point";
/// In `meta`: set by migration 3, whose databases may hold a saved graph with reused
/// point ids; the index is rebuilt once, then the flag is cleared.
pub const REBUILD_INDEX_KEY: &[u8] = b"rebuild_index";

impl Trees {
    pub fn open(db: &Db) -> Result<Self> {
        Ok(Self {
            meta: db.open_tree("meta")?,
            entries: db.open_tree("entries")?,
            by_scope: db.open_tree("by_scope")?,
            by_hash: db.open_tree("by_hash")?,
            by_document: db.open_tree("by_document")?,
            by_session: db.open_tree("by_session")?,
            points: db.open_tree("points")?,
            documents: db.open_tree("documents")?,
            sessions: db.open_tree("sessions")?,
            jobs: db.open_tree("jobs")?,
            erasures: db.open_tree("erasures")?,
            transcripts: db.open_tree("transcripts")?,
            expiries: db.open_tree("expiries")?,
        })
    }

    pub fn dimension(&self) -> Result<Option<usize>> {
        Ok(self
            .meta
            .get(DIMENSION_KEY)?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
            .map(|b| u32::from_be_bytes(b) as usize))
    }
}
