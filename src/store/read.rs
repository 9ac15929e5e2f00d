//! Reading: single entries, paginated listings, vector search, and loading every live
//! entry into the vector index at open.

use std::sync::Arc;

use prost::Message;
use ulid::Ulid;

use super::error::{Result, StoreError};
use super::index::{normalize, SearchFilter, VectorIndex};
use super::keys;
use super::records::{ulid_from_bytes, Kind, MemoryEntry};
use super::trees::Trees;
use super::Store;

/// Decodes an `entries` record, naming its key when it does not decode.
pub fn decode_entry(key: &[u8], value: &[u8]) -> Result<MemoryEntry> {
    let corrupt = |reason: String| StoreError::Corrupt { tree: "entries", key: hex(key), reason };
    let entry = MemoryEntry::decode(value).map_err(|e| corrupt(e.to_string()))?;
    if entry.id.as_ref() != key {
        return Err(corrupt("the record's id differs from its key".into()));
    }
    Ok(entry)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Puts every live entry into the index's point table. Returns the next free point id
/// and a description of each record that failed to decode (skipped, not fatal: one
/// damaged record must not take the whole memory offline).
pub(super) fn stage_all(trees: &Trees, index: &VectorIndex) -> Result<(u64, Vec<String>)> {
    let mut next_point = 0;
    let mut problems = Vec::new();
    for item in trees.entries.iter() {
        let (key, value) = item?;
        match decode_entry(&key, &value) {
            Ok(e) => {
                next_point = next_point.max(e.point_id + 1);
                index.stage(
                    e.point_id,
                    e.scope.as_ref().unwrap_or(&Default::default()),
                    e.kind(),
                    Arc::from(e.embedding),
                );
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    // Points of deleted entries are never reused: stay above the highest ever allocated.
    if let Some(last) = trees.points.last()? {
        if let Ok(b) = <[u8; 8]>::try_from(last.0.as_ref()) {
            next_point = next_point.max(u64::from_be_bytes(b) + 1);
        }
    }
    Ok((next_point, problems))
}

/// A page of a listing and the cursor for the next one.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back to get the next page; `None` at the end.
    pub next_cursor: Option<String>,
}

/// A search result.
#[derive(Debug, Clone)]
pub struct ScoredEntry {
    pub entry: MemoryEntry,
    /// Cosine similarity to the query, -1..1.
    pub similarity: f32,
}

impl Store {
    pub fn get_entry(&self, id: Ulid) -> Result<Option<MemoryEntry>> {
        let key = id.to_bytes();
        match self.trees.entries.get(key)? {
            Some(v) => decode_entry(&key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Lists a user's entries (or the tenant-wide ones, with `user_id` empty), optionally
    /// of one kind, in (kind, id) order: oldest first within a kind.
    pub fn list_entries(
        &self,
        tenant: &str,
        user_id: &str,
        kind: Option<Kind>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<MemoryEntry>> {
        let mut prefix = keys::scope_prefix(tenant, user_id);
        if let Some(k) = kind {
            prefix = prefix.byte(k as u8);
        }
        let prefix = prefix.finish();
        let start = match cursor {
            Some(c) => {
                let after = unhex(c)
                    .filter(|k| k.starts_with(&prefix))
                    .ok_or_else(|| StoreError::Invalid(format!("cursor `{c}` does not belong to this listing")))?;
                // Resume just past the cursor key.
                let mut next = after;
                next.push(0);
                next
            }
            None => prefix.clone(),
        };
        let mut items = Vec::new();
        let mut last_key = None;
        for item in self.trees.by_scope.range(start..) {
            let (key, _) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            if items.len() == limit {
                break;
            }
            let id = keys::trailing_ulid(&key).ok_or_else(|| StoreError::Corrupt {
                tree: "by_scope",
                key: hex(&key),
                reason: "key too short".into(),
            })?;
            if let Some(e) = self.get_entry(id)? {
                items.push(e);
            }
            last_key = Some(key);
        }
        let more = last_key.as_ref().is_some_and(|k| {
            let mut after = k.to_vec();
            after.push(0);
            self.trees.by_scope.range(after..).next().is_some_and(|n| n.is_ok_and(|(n, _)| n.starts_with(&prefix)))
        });
        Ok(Page { items, next_cursor: if more { last_key.map(|k| hex(&k)) } else { None } })
    }

    /// The `k` entries most similar to `query` among those `filter` admits, best first.
    /// The query need not be unit length.
    pub fn search(&self, query: &[f32], k: usize, filter: &SearchFilter) -> Result<Vec<ScoredEntry>> {
        let mut q = query.to_vec();
        if let Some(dim) = *self.dimension.lock() {
            if q.len() != dim {
                return Err(StoreError::Invalid(format!("query has {} dimensions, the store holds {dim}", q.len())));
            }
        }
        if !normalize(&mut q) {
            return Err(StoreError::Invalid("query vector is zero or not finite".into()));
        }
        let hits = self.index.search(&q, k, filter);
        self.resolve_hits(hits.into_iter().map(|h| (h.point, h.similarity)))
    }

    /// Calls `f` with every entry that decodes (damaged ones are `verify`'s business).
    pub fn scan_entries(&self, mut f: impl FnMut(MemoryEntry)) -> Result<()> {
        for item in self.trees.entries.iter() {
            let (key, value) = item?;
            if let Ok(entry) = decode_entry(&key, &value) {
                f(entry);
            }
        }
        Ok(())
    }

    /// Maps index points to their entries. A point whose entry vanished in between (a
    /// concurrent delete) is skipped.
    pub fn resolve_hits(&self, hits: impl Iterator<Item = (u64, f32)>) -> Result<Vec<ScoredEntry>> {
        let mut out = Vec::new();
        for (point, similarity) in hits {
            let Some(id) = self.trees.points.get(keys::point_key(point))? else {
                continue;
            };
            let Some(id) = ulid_from_bytes(&id) else {
                continue;
            };
            if let Some(entry) = self.get_entry(id)? {
                out.push(ScoredEntry { entry, similarity });
            }
        }
        Ok(out)
    }
}

pub(super) fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}
