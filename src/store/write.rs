//! Writing: new entries (deduplicated by content hash), imports that keep their ids,
//! deletes. Every public write returns only after sled has flushed it.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;
use ulid::Ulid;

use super::error::{Result, StoreError};
use super::index::normalize;
use super::keys::{self, MAX_KEY_COMPONENT};
use super::records::{memory_entry::Source, now_ms, ulid_from_bytes, Kind, MemoryEntry, Scope};
use super::trees::DIMENSION_KEY;
use super::Store;

/// Longest text accepted for one entry, in bytes.
pub const MAX_TEXT_BYTES: usize = 1 << 20;

/// A memory to store. Fields left `None` get defaults: a new id, now, importance 0.5.
#[derive(Debug, Clone, Default)]
pub struct NewEntry {
    pub kind: Option<Kind>,
    pub text: String,
    pub embedding: Vec<f32>,
    pub scope: Scope,
    /// Must be a JSON object (or null for none).
    pub metadata: serde_json::Value,
    pub created_at_ms: Option<i64>,
    pub importance: Option<f32>,
    pub valid_from_ms: Option<i64>,
    pub valid_to_ms: Option<i64>,
    pub source: Option<Source>,
}

/// The id a write resolved to: a new entry, or the existing one holding the same text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    pub id: Ulid,
    pub created: bool,
}

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::Invalid(msg.into())
}

fn validate_scope(scope: &Scope) -> Result<()> {
    if scope.tenant.is_empty() {
        return Err(invalid("scope.tenant is required"));
    }
    for (name, value) in [
        ("tenant", &scope.tenant),
        ("user_id", &scope.user_id),
        ("agent_id", &scope.agent_id),
        ("session_id", &scope.session_id),
    ] {
        if value.len() > MAX_KEY_COMPONENT {
            return Err(invalid(format!("scope.{name} is longer than {MAX_KEY_COMPONENT} bytes")));
        }
    }
    Ok(())
}

impl NewEntry {
    fn into_record(self, id: Ulid, now: i64) -> Result<MemoryEntry> {
        let metadata_json = match &self.metadata {
            serde_json::Value::Null => String::new(),
            serde_json::Value::Object(m) if m.is_empty() => String::new(),
            v @ serde_json::Value::Object(_) => v.to_string(),
            _ => return Err(invalid("metadata must be a JSON object")),
        };
        let importance = self.importance.unwrap_or(0.5);
        if !(0.0..=1.0).contains(&importance) {
            return Err(invalid(format!("importance must be within 0..1, got {importance}")));
        }
        let mut entry = MemoryEntry {
            id: id.to_bytes().to_vec().into(),
            text: self.text,
            embedding: self.embedding,
            scope: Some(self.scope),
            metadata_json,
            created_at_ms: self.created_at_ms.unwrap_or(now),
            updated_at_ms: now,
            last_accessed_at_ms: 0,
            access_count: 0,
            importance,
            valid_from_ms: self.valid_from_ms,
            valid_to_ms: self.valid_to_ms,
            source: self.source,
            content_hash: Default::default(),
            point_id: 0,
            kind: 0,
        };
        entry.set_kind(self.kind.unwrap_or(Kind::Fact));
        Ok(entry)
    }
}

/// All the keys an entry owns besides its own.
struct IndexKeys {
    scope: Vec<u8>,
    hash: Vec<u8>,
    document: Option<Vec<u8>>,
    session: Option<Vec<u8>>,
    point: [u8; 8],
}

fn index_keys(entry: &MemoryEntry, id: Ulid) -> IndexKeys {
    let scope = entry.scope.clone().unwrap_or_default();
    let document = match &entry.source {
        Some(Source::Document(d)) => ulid_from_bytes(&d.document_id).map(|doc| keys::document_key(doc, id)),
        _ => None,
    };
    let session = (!scope.session_id.is_empty())
        .then(|| keys::session_prefix(&scope.tenant, &scope.session_id).ulid(id).finish());
    IndexKeys {
        scope: keys::scope_key(&scope, entry.kind, id),
        hash: keys::hash_key(&scope, entry.kind, &entry.content_hash),
        document,
        session,
        point: keys::point_key(entry.point_id),
    }
}

type Tx<'a> = &'a [TransactionalTree];

fn tx_insert(
    tx: Tx,
    entry: &MemoryEntry,
    id: Ulid,
) -> std::result::Result<(), ConflictableTransactionError<StoreError>> {
    let [entries, by_scope, by_hash, by_document, by_session, points] = tx else { unreachable!() };
    let k = index_keys(entry, id);
    entries.insert(&id.to_bytes(), entry.encode_to_vec())?;
    by_scope.insert(k.scope, &[])?;
    by_hash.insert(k.hash, &id.to_bytes())?;
    if let Some(d) = k.document {
        by_document.insert(d, &[])?;
    }
    if let Some(s) = k.session {
        by_session.insert(s, &[])?;
    }
    points.insert(&k.point, &id.to_bytes())?;
    Ok(())
}

fn tx_remove(
    tx: Tx,
    entry: &MemoryEntry,
    id: Ulid,
) -> std::result::Result<(), ConflictableTransactionError<StoreError>> {
    let [entries, by_scope, by_hash, by_document, by_session, points] = tx else { unreachable!() };
    let k = index_keys(entry, id);
    entries.remove(&id.to_bytes())?;
    by_scope.remove(k.scope)?;
    // Only drop the hash key if it still points at this entry.
    if by_hash.get(&k.hash)?.as_deref() == Some(&id.to_bytes()[..]) {
        by_hash.remove(k.hash)?;
    }
    if let Some(d) = k.document {
        by_document.remove(d)?;
    }
    if let Some(s) = k.session {
        by_session.remove(s)?;
    }
    points.remove(&k.point)?;
    Ok(())
}

/// What a write does when its text is already stored, in the same scope and kind,
/// under another id.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnDuplicate {
    /// Store nothing and answer with the existing id.
    ReturnExisting,
    /// Fail: an edit must not silently turn into a no-op.
    Reject,
}

/// A change to commit: entries to write (replacing any with the same id) and to delete.
#[derive(Default)]
struct ChangeSet {
    put: Vec<(MemoryEntry, Option<MemoryEntry>)>,
    delete: Vec<MemoryEntry>,
}

impl Store {
    /// Stores new entries in one atomic, durable commit. An entry whose text already
    /// exists in the same scope and kind is not stored again: its outcome names the
    /// existing id. Either every entry is stored or none is.
    pub fn put_entries(&self, entries: Vec<NewEntry>) -> Result<Vec<PutOutcome>> {
        let now = now_ms();
        let mut records = Vec::with_capacity(entries.len());
        for (i, e) in entries.into_iter().enumerate() {
            let id = self.new_id();
            let record = e.into_record(id, now).map_err(|err| match err {
                StoreError::Invalid(m) => invalid(format!("entry {i}: {m}")),
                other => other,
            })?;
            records.push(record);
        }
        self.commit(records, OnDuplicate::ReturnExisting)
    }

    /// Stores one new entry; see [`Store::put_entries`].
    pub fn put_entry(&self, entry: NewEntry) -> Result<PutOutcome> {
        Ok(self.put_entries(vec![entry])?[0])
    }

    /// Stores complete records as they are (an import): ids, timestamps and counters are
    /// kept, and a record whose id exists replaces it. A record whose text is already
    /// stored under another id resolves to that id, as for new entries.
    pub fn import_entries(&self, records: Vec<MemoryEntry>) -> Result<Vec<Ulid>> {
        Ok(self.commit(records, OnDuplicate::ReturnExisting)?.into_iter().map(|o| o.id).collect())
    }

    /// Replaces a stored entry (same id) with `entry`, e.g. after an edit.
    pub fn replace_entry(&self, entry: MemoryEntry) -> Result<()> {
        let id = entry.ulid().ok_or_else(|| invalid("entry id must be 16 bytes"))?;
        if !self.trees.entries.contains_key(id.to_bytes())? {
            return Err(StoreError::NotFound(format!("memory {id}")));
        }
        self.commit(vec![entry], OnDuplicate::Reject).map(|_| ())
    }

    /// Deletes entries by id; returns the ids that existed.
    pub fn delete_entries(&self, ids: &[Ulid]) -> Result<Vec<Ulid>> {
        let mut change = ChangeSet::default();
        {
            let _guard = self.write_lock.lock();
            for id in ids {
                if let Some(old) = self.get_entry(*id)? {
                    change.delete.push(old);
                }
            }
            self.apply(&change)?;
        }
        self.flush()?;
        Ok(change.delete.iter().filter_map(|e| e.ulid()).collect())
    }

    pub fn delete_entry(&self, id: Ulid) -> Result<bool> {
        Ok(!self.delete_entries(&[id])?.is_empty())
    }

    /// Validates, deduplicates and writes `records` atomically, then flushes.
    fn commit(&self, mut records: Vec<MemoryEntry>, on_duplicate: OnDuplicate) -> Result<Vec<PutOutcome>> {
        let width = records.first().map(|r| r.embedding.len());
        for (i, r) in records.iter_mut().enumerate() {
            let checked = match width {
                Some(w) if r.embedding.len() != w => {
                    Err(invalid(format!("embedding has {} dimensions, entry 0 has {w}", r.embedding.len())))
                }
                _ => self.validate_record(r),
            };
            checked.map_err(|e| match e {
                StoreError::Invalid(m) => invalid(format!("entry {i}: {m}")),
                other => other,
            })?;
        }
        let mut outcomes = Vec::with_capacity(records.len());
        let mut change = ChangeSet::default();
        {
            let _guard = self.write_lock.lock();
            self.fix_dimension(records.first().map(|r| r.embedding.len()))?;
            let mut in_batch: HashMap<Vec<u8>, Ulid> = HashMap::new();
            for mut record in records {
                let id = record.ulid().expect("validated");
                let scope = record.scope.clone().unwrap_or_default();
                let hkey = keys::hash_key(&scope, record.kind, &record.content_hash);
                let existing = match in_batch.get(&hkey) {
                    Some(id) => Some(*id),
                    None => self.trees.by_hash.get(&hkey)?.as_deref().and_then(ulid_from_bytes),
                };
                // The same text under another id: one copy is kept. (A record replacing
                // itself, as an import of an existing id does, goes through.)
                if let Some(existing) = existing.filter(|e| *e != id) {
                    if on_duplicate == OnDuplicate::Reject {
                        return Err(invalid(format!("memory {existing} already holds this text")));
                    }
                    outcomes.push(PutOutcome { id: existing, created: false });
                    continue;
                }
                in_batch.insert(hkey, id);
                let old = self.get_entry(id)?;
                record.point_id = self.allocate_point();
                outcomes.push(PutOutcome { id, created: true });
                change.put.push((record, old));
            }
            self.apply(&change)?;
        }
        self.flush()?;
        Ok(outcomes)
    }

    fn validate_record(&self, r: &mut MemoryEntry) -> Result<()> {
        r.ulid().ok_or_else(|| invalid("id must be a 16-byte ULID"))?;
        if Kind::try_from(r.kind).map_or(true, |k| k == Kind::Unspecified) {
            return Err(invalid(format!("kind {} is not one of knowledge, episodic, fact, summary", r.kind)));
        }
        if r.text.trim().is_empty() {
            return Err(invalid("text is empty"));
        }
        if r.text.len() > MAX_TEXT_BYTES {
            return Err(invalid(format!("text is longer than {MAX_TEXT_BYTES} bytes")));
        }
        validate_scope(r.scope.as_ref().ok_or_else(|| invalid("scope is required"))?)?;
        if !r.metadata_json.is_empty()
            && !matches!(serde_json::from_str(&r.metadata_json), Ok(serde_json::Value::Object(_)))
        {
            return Err(invalid("metadata must be a JSON object"));
        }
        if r.embedding.is_empty() {
            return Err(invalid("embedding is empty"));
        }
        if let Some(dim) = *self.dimension.lock() {
            if r.embedding.len() != dim {
                return Err(invalid(format!("embedding has {} dimensions, the store holds {dim}", r.embedding.len())));
            }
        }
        // Vectors already of unit length are kept bit for bit (an export and re-import
        // must not drift); others are scaled.
        let norm = r.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !(norm.is_finite() && (norm - 1.0).abs() < 1e-5) && !normalize(&mut r.embedding) {
            return Err(invalid("embedding is zero or not finite"));
        }
        r.content_hash = blake3::hash(r.text.as_bytes()).as_bytes().to_vec().into();
        Ok(())
    }

    /// The first entry ever written fixes the embedding width; later ones must match.
    fn fix_dimension(&self, dim: Option<usize>) -> Result<()> {
        let mut current = self.dimension.lock();
        match (*current, dim) {
            (None, Some(d)) => {
                self.trees.meta.insert(DIMENSION_KEY, &(d as u32).to_be_bytes())?;
                *current = Some(d);
            }
            (Some(have), Some(d)) if have != d => {
                return Err(invalid(format!("embedding has {d} dimensions, the store holds {have}")));
            }
            _ => {}
        }
        Ok(())
    }

    /// Writes a change set in one sled transaction and mirrors it in the vector index.
    /// Called with the write lock held.
    fn apply(&self, change: &ChangeSet) -> Result<()> {
        let t = &self.trees;
        let trees = [&t.entries, &t.by_scope, &t.by_hash, &t.by_document, &t.by_session, &t.points];
        trees[..].transaction(|tx| {
            for old in &change.delete {
                tx_remove(tx, old, old.ulid().expect("stored ids are valid"))?;
            }
            for (record, old) in &change.put {
                let id = record.ulid().expect("validated");
                if let Some(old) = old {
                    tx_remove(tx, old, id)?;
                }
                tx_insert(tx, record, id)?;
            }
            Ok(())
        })?;
        let replaced = change.put.iter().filter_map(|(_, old)| old.as_ref());
        for old in change.delete.iter().chain(replaced) {
            self.index.remove(old.point_id);
        }
        let new: Vec<_> = change
            .put
            .iter()
            .map(|(r, _)| (r.point_id, r.scope.clone().unwrap_or_default(), r.kind(), Arc::from(&r.embedding[..])))
            .collect();
        match new.len() {
            0 => {}
            1 => {
                let (p, s, k, v) = new.into_iter().next().unwrap();
                self.index.insert(p, &s, k, v);
            }
            _ => self.index.insert_many(new),
        }
        self.index.rebuild_in_background_if_due();
        Ok(())
    }

    /// Counts a use of each entry (retrieved into a prompt): bumps `access_count` and sets
    /// `last_accessed_at_ms`. Touches only the records, never the indexes or the vector.
    pub fn record_access(&self, ids: &[Ulid], at_ms: i64) -> Result<()> {
        {
            let _guard = self.write_lock.lock();
            for id in ids {
                if let Some(mut e) = self.get_entry(*id)? {
                    e.access_count += 1;
                    e.last_accessed_at_ms = at_ms;
                    self.trees.entries.insert(id.to_bytes(), e.encode_to_vec())?;
                }
            }
        }
        self.flush()
    }

    /// Deletes every entry, session and document of one user of a tenant.
    pub fn erase_user(&self, tenant: &str, user_id: &str) -> Result<usize> {
        validate_scope(&Scope::user(tenant, user_id))?;
        if user_id.is_empty() {
            return Err(invalid("user_id is required to erase a user"));
        }
        let prefix = keys::scope_prefix(tenant, user_id).finish();
        let ids: Vec<Ulid> = self
            .trees
            .by_scope
            .scan_prefix(&prefix)
            .keys()
            .filter_map(|k| k.ok().and_then(|k| keys::trailing_ulid(&k)))
            .collect();
        let deleted = self.delete_entries(&ids)?.len();
        self.delete_owned_records(tenant, user_id)?;
        Ok(deleted)
    }
}
