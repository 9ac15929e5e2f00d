//! Reading records from the cluster: by id through the directory, listings from a
//! scope's sorted set, and search hits read back from the source of truth.

use ulid::Ulid;

use super::layout::{self, ScopeKey};
use super::{decode, RedisStore};
use crate::store::error::{Result, StoreError};
use crate::store::records::{Document, IngestJob, Kind, MemoryEntry, Session};
use crate::store::{Page, ScoredEntry};

fn get(key: &str) -> redis::Cmd {
    redis::cmd("GET").arg(key).clone()
}

impl RedisStore {
    /// The shard holding the record with this id, from the directory.
    pub(super) fn shard_of_id(&self, id: Ulid) -> Result<Option<u16>> {
        if let Some(shard) = self.cache.shard_of(id) {
            return Ok(Some(shard));
        }
        let shard: Option<u16> = self.conn.query(get(&self.keys.directory(id)))?;
        Ok(shard.filter(|s| *s < layout::SHARDS))
    }

    /// The raw record at `key`.
    pub(super) fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.conn.query(get(key))
    }

    /// An entry and the bytes it is stored as (the guard of a later change to it).
    pub(super) fn read_entry_raw(&self, id: Ulid) -> Result<Option<(MemoryEntry, Vec<u8>)>> {
        let Some(shard) = self.shard_of_id(id)? else { return Ok(None) };
        let key = self.keys.entry(shard, id);
        let Some(bytes) = self.get_bytes(&key)? else { return Ok(None) };
        let mut entry: MemoryEntry = decode(&key, &bytes)?;
        entry.point_id = self.cache.point_of(id).unwrap_or(0);
        Ok(Some((entry, bytes)))
    }

    pub(super) fn read_entry(&self, id: Ulid) -> Result<Option<MemoryEntry>> {
        Ok(self.read_entry_raw(id)?.map(|(e, _)| e))
    }

    /// Entries of one shard by id, in order; absent ones are skipped.
    pub(super) fn read_entries_in(&self, shard: u16, ids: &[Ulid]) -> Result<Vec<MemoryEntry>> {
        Ok(self.read_raw_in(shard, ids)?.into_iter().map(|(_, e, _)| e).collect())
    }

    /// Entries of one shard with their stored bytes; absent ones are skipped.
    pub(super) fn read_raw_in(&self, shard: u16, ids: &[Ulid]) -> Result<Vec<(Ulid, MemoryEntry, Vec<u8>)>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(512) {
            let keys: Vec<String> = chunk.iter().map(|id| self.keys.entry(shard, *id)).collect();
            // One slot: a single MGET.
            let values: Vec<Option<Vec<u8>>> = self.conn.query(redis::cmd("MGET").arg(&keys).clone())?;
            for ((id, key), value) in chunk.iter().zip(&keys).zip(values) {
                if let Some(bytes) = value {
                    out.push((*id, decode(key, &bytes)?, bytes));
                }
            }
        }
        Ok(out)
    }

    pub(super) fn list(
        &self,
        tenant: &str,
        user_id: &str,
        kind: Option<Kind>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<MemoryEntry>> {
        let scope = ScopeKey::new(tenant, user_id);
        let prefix: Vec<u8> = kind.map(|k| vec![k as u8]).unwrap_or_default();
        let mut min = match cursor {
            Some(c) => {
                let after = layout::unhex(c)
                    .filter(|m| m.len() == 17 && m.starts_with(&prefix))
                    .ok_or_else(|| StoreError::Invalid(format!("cursor `{c}` does not belong to this listing")))?;
                [b"(".as_slice(), &after].concat()
            }
            None if prefix.is_empty() => b"-".to_vec(),
            None => [b"[".as_slice(), &prefix].concat(),
        };
        let max = match kind {
            Some(k) => [b"(".as_slice(), &[k as u8 + 1]].concat(),
            None => b"+".to_vec(),
        };
        let range = |min: &[u8], count: usize| {
            redis::cmd("ZRANGE")
                .arg(self.keys.listing(&scope))
                .arg(min)
                .arg(&max)
                .arg("BYLEX")
                .arg("LIMIT")
                .arg(0)
                .arg(count)
                .clone()
        };
        let mut items = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        // Members whose entry vanished between the two reads are skipped, so a page can
        // take more than one round.
        while items.len() < limit {
            let need = limit - items.len();
            let members: Vec<Vec<u8>> = self.conn.query(range(&min, need))?;
            let Some(tail) = members.last().cloned() else { break };
            let ids: Vec<Ulid> = members
                .iter()
                .filter_map(|m| m.get(1..17).and_then(|b| <[u8; 16]>::try_from(b).ok()))
                .map(Ulid::from_bytes)
                .collect();
            for mut e in self.read_entries_in(scope.shard(), &ids)? {
                e.point_id = e.ulid().and_then(|id| self.cache.point_of(id)).unwrap_or(0);
                items.push(e);
            }
            min = [b"(".as_slice(), &tail].concat();
            last = Some(tail);
            if members.len() < need {
                break;
            }
        }
        let more = items.len() == limit && last.is_some() && {
            let next: Vec<Vec<u8>> = self.conn.query(range(&min, 1))?;
            !next.is_empty()
        };
        Ok(Page { items, next_cursor: if more { last.map(|m| layout::hex(&m)) } else { None } })
    }

    /// A session, the scope of the user owning it, and its stored bytes.
    pub(super) fn read_session(&self, tenant: &str, id: &str) -> Result<Option<(ScopeKey, Session, Vec<u8>)>> {
        let owner: Option<String> = self.conn.query(get(&self.keys.session_directory(tenant, id)))?;
        let Some(scope) = owner.as_deref().and_then(ScopeKey::from_hex) else { return Ok(None) };
        if scope.tenant != tenant {
            return Ok(None);
        }
        let key = self.keys.session(&scope, id);
        let Some(bytes) = self.get_bytes(&key)? else { return Ok(None) };
        Ok(Some((scope, decode(&key, &bytes)?, bytes)))
    }

    pub(super) fn session_by_transcript(&self, tenant: &str, user_id: &str, digest: &[u8]) -> Result<Option<Session>> {
        let scope = ScopeKey::new(tenant, user_id);
        let id: Option<String> =
            self.conn.query(redis::cmd("HGET").arg(self.keys.transcripts(&scope)).arg(layout::hex(digest)).clone())?;
        let Some(id) = id else { return Ok(None) };
        Ok(self
            .read_session(tenant, &id)?
            .map(|(_, s, _)| s)
            .filter(|s| s.scope.as_ref().is_some_and(|sc| sc.user_id == user_id)))
    }

    /// The stored epoch bytes of a scope (absent: 0).
    pub(super) fn read_epoch_raw(&self, scope: &ScopeKey) -> Result<Option<Vec<u8>>> {
        self.get_bytes(&self.keys.epoch(scope))
    }

    pub(super) fn read_epoch(&self, scope: &ScopeKey) -> Result<u64> {
        Ok(epoch_value(self.read_epoch_raw(scope)?.as_deref()))
    }

    pub(super) fn read_document_raw(&self, id: Ulid) -> Result<Option<(u16, Document, Vec<u8>)>> {
        let Some(shard) = self.shard_of_id(id)? else { return Ok(None) };
        let key = self.keys.document(shard, id);
        let Some(bytes) = self.get_bytes(&key)? else { return Ok(None) };
        Ok(Some((shard, decode(&key, &bytes)?, bytes)))
    }

    pub(super) fn read_document(&self, id: Ulid) -> Result<Option<Document>> {
        Ok(self.read_document_raw(id)?.map(|(_, d, _)| d))
    }

    /// Every document of a tenant, oldest first.
    pub(super) fn documents_of(&self, tenant: &str) -> Result<Vec<Document>> {
        let members: Vec<String> =
            self.conn.query(redis::cmd("SMEMBERS").arg(self.keys.tenant_documents(tenant)).clone())?;
        let mut ids: Vec<(u16, Ulid)> = members.iter().filter_map(|m| parse_member(m)).collect();
        ids.sort_by_key(|(_, id)| *id);
        let keys: Vec<String> = ids.iter().map(|(shard, id)| self.keys.document(*shard, *id)).collect();
        let values: Vec<Option<Vec<u8>>> = self.conn.query_all(keys.iter().map(|k| get(k)).collect())?;
        let mut out = Vec::new();
        for (key, value) in keys.iter().zip(values) {
            if let Some(bytes) = value {
                let doc: Document = decode(key, &bytes)?;
                if doc.scope.as_ref().is_some_and(|s| s.tenant == tenant) {
                    out.push(doc);
                }
            }
        }
        Ok(out)
    }

    pub(super) fn read_job_raw(&self, id: Ulid) -> Result<Option<(u16, IngestJob, Vec<u8>)>> {
        let Some(shard) = self.shard_of_id(id)? else { return Ok(None) };
        let key = self.keys.job(shard, id);
        let Some(bytes) = self.get_bytes(&key)? else { return Ok(None) };
        Ok(Some((shard, decode(&key, &bytes)?, bytes)))
    }

    pub(super) fn read_job(&self, id: Ulid) -> Result<Option<IngestJob>> {
        Ok(self.read_job_raw(id)?.map(|(_, j, _)| j))
    }

    /// Every job on record, oldest first.
    pub(super) fn all_jobs(&self) -> Result<Vec<IngestJob>> {
        let members: Vec<String> = self.conn.query(redis::cmd("SMEMBERS").arg(self.keys.meta_jobs()).clone())?;
        let mut ids: Vec<(u16, Ulid)> = members.iter().filter_map(|m| parse_member(m)).collect();
        ids.sort_by_key(|(_, id)| *id);
        let keys: Vec<String> = ids.iter().map(|(shard, id)| self.keys.job(*shard, *id)).collect();
        let values: Vec<Option<Vec<u8>>> = self.conn.query_all(keys.iter().map(|k| get(k)).collect())?;
        keys.iter().zip(values).filter_map(|(k, v)| v.map(|b| decode(k, &b))).collect()
    }

    /// Search hits back to entries, read from Redis: a point whose entry is gone there
    /// (deleted on another node, not yet followed here) is skipped.
    pub(super) fn resolve(&self, hits: Vec<(u64, f32)>) -> Result<Vec<ScoredEntry>> {
        let located: Vec<(u64, f32, Ulid, u16)> = hits
            .into_iter()
            .filter_map(|(point, sim)| self.cache.locate(point).map(|(id, shard)| (point, sim, id, shard)))
            .collect();
        let keys: Vec<String> = located.iter().map(|(_, _, id, shard)| self.keys.entry(*shard, *id)).collect();
        let values: Vec<Option<Vec<u8>>> = self.conn.query_all(keys.iter().map(|k| get(k)).collect())?;
        let mut out = Vec::with_capacity(values.len());
        for ((point, similarity, _, _), (key, value)) in located.into_iter().zip(keys.iter().zip(values)) {
            if let Some(bytes) = value {
                let mut entry: MemoryEntry = decode(key, &bytes)?;
                entry.point_id = point;
                out.push(ScoredEntry { entry, similarity });
            }
        }
        Ok(out)
    }
}

/// An epoch as stored: 8 big-endian bytes, absent meaning 0.
pub(super) fn epoch_value(bytes: Option<&[u8]>) -> u64 {
    bytes.and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes).unwrap_or(0)
}

/// "<shard>:<ulid>", as the tenant-document and job sets hold them.
pub(super) fn parse_member(m: &str) -> Option<(u16, Ulid)> {
    let (shard, id) = m.split_once(':')?;
    Some((shard.parse().ok().filter(|s| *s < layout::SHARDS)?, id.parse().ok()?))
}
