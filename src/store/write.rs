//! Writing. Every change — new entries (deduplicated by content hash), imports that keep
//! their ids, edits, deletes, a chat turn's session and memories, a finished document —
//! goes through one path: a [`ChangeSet`] applied in one sled transaction over every
//! tree it touches, then flushed before the call returns.
//!
//! A write can be *guarded* ([`Precondition`], and a session's expected revision): the
//! guard is checked inside the same transaction as the write, so a request that began
//! before an erase, a delete or a cancelled job cannot bring data back when it commits
//! afterwards — it fails with [`StoreError::Conflict`] and writes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionalTree, UnabortableTransactionError};
use sled::Transactional;
use ulid::Ulid;

use super::error::{Result, StoreError};
use super::index::normalize;
use super::keys::{self, MAX_KEY_COMPONENT};
use super::read::hex;
use super::records::{
    memory_entry::Source, now_ms, ulid_from_bytes, Document, IngestJob, JobState, Kind, MemoryEntry, Scope, Session,
};
use super::trees::{DIMENSION_KEY, NEXT_POINT_KEY};
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
    pub expires_at_ms: Option<i64>,
}

/// The id a write resolved to: a new entry, or the existing one holding the same text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    pub id: Ulid,
    pub created: bool,
}

/// What must still hold when a guarded write commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// The user has not been erased since [`Store::user_epoch`] returned `epoch`.
    NotErasedSince { tenant: String, user_id: String, epoch: u64 },
    /// The ingestion job is on record and still pending (not cancelled, not finished).
    JobPending(Ulid),
    /// The entry is stored and unchanged since it was read: its
    /// [`MemoryEntry::edit_stamp`] is still `stamp`. Makes an edit a compare-and-swap,
    /// so it cannot undo a concurrent edit or supersession.
    EntryUnchanged { id: Ulid, stamp: Vec<u8> },
}

/// A session record to store, and the revision its writer read: 0 when it did not exist.
/// The write fails if the stored session is no longer at that revision (deleted, or
/// written by someone else meanwhile). The stored record gets a new revision.
#[derive(Debug, Clone)]
pub struct SessionWrite {
    pub session: Session,
    pub expected_revision: u64,
}

/// A guarded, all-or-nothing write of a request's results (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    pub preconditions: Vec<Precondition>,
    /// New entries; one whose text is already stored in its scope and kind resolves to
    /// the existing entry.
    pub entries: Vec<NewEntry>,
    pub session: Option<SessionWrite>,
    /// A document record to store (create or replace). When the batch has entries, the
    /// document lists them as its chunks: the ids they resolved to, in order, each once
    /// (a chunk whose text the store already held is shared, not copied).
    pub document: Option<Document>,
    /// A job record to store (create or replace).
    pub job: Option<IngestJob>,
    /// Entries used (retrieved into a prompt): their access count and time are updated.
    pub accessed: Vec<Ulid>,
    /// Stored memories of the same user that the batch's first entry replaces as
    /// current, in the same commit (see [`plan_supersession`]).
    pub supersedes: Vec<Ulid>,
}

/// What a [`WriteBatch`] did.
#[derive(Debug, Clone, Default)]
pub struct WriteOutcome {
    /// One per entry of the batch, in order.
    pub entries: Vec<PutOutcome>,
    /// The stored session's new revision.
    pub session_revision: Option<u64>,
}

/// What a commit changed, as seen by [`CommitObserver`]s.
pub struct Committed<'a> {
    pub added: &'a [MemoryEntry],
    pub removed: &'a [MemoryEntry],
}

/// Told of every committed change to the entries, in commit order, while the write lock
/// is held: derived structures (the lexical index) follow the store from one place.
pub trait CommitObserver: Send + Sync {
    fn committed(&self, store: &dyn super::MemoryStore, change: &Committed);
}

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::Invalid(msg.into())
}

pub(super) fn validate_scope(scope: &Scope) -> Result<()> {
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
    pub(super) fn into_record(self, id: Ulid, now: i64) -> Result<MemoryEntry> {
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
            expires_at_ms: self.expires_at_ms,
            ..Default::default()
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
    expiry: Option<Vec<u8>>,
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
        expiry: entry.expires_at_ms.map(|t| expiry_key(t, id)),
    }
}

type TxError = ConflictableTransactionError<StoreError>;

/// The trees of one transaction, by name.
struct Tx<'a> {
    entries: &'a TransactionalTree,
    by_scope: &'a TransactionalTree,
    by_hash: &'a TransactionalTree,
    by_document: &'a TransactionalTree,
    by_session: &'a TransactionalTree,
    points: &'a TransactionalTree,
    meta: &'a TransactionalTree,
    sessions: &'a TransactionalTree,
    documents: &'a TransactionalTree,
    jobs: &'a TransactionalTree,
    erasures: &'a TransactionalTree,
    transcripts: &'a TransactionalTree,
    expiries: &'a TransactionalTree,
}

fn abort(e: StoreError) -> TxError {
    ConflictableTransactionError::Abort(e)
}

fn conflict(msg: String) -> TxError {
    abort(StoreError::Conflict(msg))
}

impl From<StoreErrorInTx> for TxError {
    fn from(e: StoreErrorInTx) -> Self {
        abort(e.0)
    }
}

/// The conflict of a failed [`Precondition::EntryUnchanged`].
pub(crate) fn entry_changed(id: Ulid) -> String {
    format!("memory {id} was changed or deleted while this edit ran; nothing was stored")
}

/// A store error raised while decoding inside a transaction.
struct StoreErrorInTx(StoreError);

fn decode_in_tx<T: Message + Default>(tree: &'static str, key: &[u8], value: &[u8]) -> Result<T, StoreErrorInTx> {
    T::decode(value).map_err(|e| StoreErrorInTx(StoreError::Corrupt { tree, key: hex(key), reason: e.to_string() }))
}

fn read_u64(value: Option<sled::IVec>) -> u64 {
    value.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map(u64::from_be_bytes).unwrap_or(0)
}

impl Tx<'_> {
    fn insert_entry(&self, entry: &MemoryEntry, id: Ulid) -> Result<(), UnabortableTransactionError> {
        let k = index_keys(entry, id);
        self.entries.insert(&id.to_bytes(), entry.encode_to_vec())?;
        self.by_scope.insert(k.scope, &[])?;
        self.by_hash.insert(k.hash, &id.to_bytes())?;
        if let Some(d) = k.document {
            self.by_document.insert(d, &[])?;
        }
        if let Some(s) = k.session {
            self.by_session.insert(s, &[])?;
        }
        self.points.insert(&k.point, &id.to_bytes())?;
        if let Some(e) = k.expiry {
            self.expiries.insert(e, &[])?;
        }
        Ok(())
    }

    fn remove_entry(&self, entry: &MemoryEntry, id: Ulid) -> Result<(), UnabortableTransactionError> {
        let k = index_keys(entry, id);
        self.entries.remove(&id.to_bytes())?;
        self.by_scope.remove(k.scope)?;
        // Only drop the hash key if it still points at this entry.
        if self.by_hash.get(&k.hash)?.as_deref() == Some(&id.to_bytes()[..]) {
            self.by_hash.remove(k.hash)?;
        }
        if let Some(d) = k.document {
            self.by_document.remove(d)?;
        }
        if let Some(s) = k.session {
            self.by_session.remove(s)?;
        }
        self.points.remove(&k.point)?;
        if let Some(e) = k.expiry {
            self.expiries.remove(e)?;
        }
        Ok(())
    }

    fn check(&self, p: &Precondition) -> Result<(), TxError> {
        match p {
            Precondition::NotErasedSince { tenant, user_id, epoch } => {
                let now = read_u64(self.erasures.get(keys::erasure_key(tenant, user_id))?);
                if now != *epoch || epoch % 2 == 1 {
                    return Err(conflict(format!(
                        "user `{user_id}` was erased while this request ran; nothing of it was stored"
                    )));
                }
            }
            Precondition::JobPending(id) => {
                let key = id.to_bytes();
                let pending = match self.jobs.get(key)? {
                    Some(v) => decode_in_tx::<IngestJob>("jobs", &key, &v)?.state() == JobState::JobPending,
                    None => false,
                };
                if !pending {
                    return Err(conflict(format!("job {id} was cancelled; nothing of it was stored")));
                }
            }
            Precondition::EntryUnchanged { id, stamp } => {
                let key = id.to_bytes();
                let same = match self.entries.get(key)? {
                    Some(v) => decode_in_tx::<MemoryEntry>("entries", &key, &v)?.edit_stamp() == *stamp,
                    None => false,
                };
                if !same {
                    return Err(conflict(entry_changed(*id)));
                }
            }
        }
        Ok(())
    }

    /// Stores a session at a new revision, if it is still at the expected one, keeping
    /// the transcript index in step.
    fn put_session(&self, write: &SessionWrite, revision: u64) -> Result<(), TxError> {
        let s = &write.session;
        let scope = s.scope.clone().unwrap_or_default();
        let key = keys::session_prefix(&scope.tenant, &s.id).finish();
        let old: Option<Session> = match self.sessions.get(&key)? {
            Some(v) => Some(decode_in_tx("sessions", &key, &v)?),
            None => None,
        };
        let stored = old.as_ref().map_or(0, |o| o.revision);
        if stored != write.expected_revision {
            let what = if old.is_none() { "deleted" } else { "changed by another writer" };
            return Err(conflict(format!("session `{}` was {what} while this request ran; nothing was stored", s.id)));
        }
        if let Some(old) = &old {
            self.unindex_transcript(old)?;
        }
        let mut record = s.clone();
        record.revision = revision;
        self.sessions.insert(key, record.encode_to_vec())?;
        if !record.transcript_digest.is_empty() {
            let tkey = keys::transcript_key(&scope.tenant, &scope.user_id, &record.transcript_digest);
            self.transcripts.insert(tkey, record.id.as_bytes())?;
        }
        Ok(())
    }

    fn unindex_transcript(&self, session: &Session) -> Result<(), UnabortableTransactionError> {
        if session.transcript_digest.is_empty() {
            return Ok(());
        }
        let scope = session.scope.clone().unwrap_or_default();
        let tkey = keys::transcript_key(&scope.tenant, &scope.user_id, &session.transcript_digest);
        if self.transcripts.get(&tkey)?.as_deref() == Some(session.id.as_bytes()) {
            self.transcripts.remove(tkey)?;
        }
        Ok(())
    }

    fn remove_session(&self, key: &[u8]) -> Result<(), TxError> {
        if let Some(v) = self.sessions.remove(key)? {
            let old: Session = decode_in_tx("sessions", key, &v)?;
            self.unindex_transcript(&old)?;
        }
        Ok(())
    }

    fn touch(&self, id: Ulid, at_ms: i64) -> Result<(), TxError> {
        let key = id.to_bytes();
        if let Some(v) = self.entries.get(key)? {
            let mut e: MemoryEntry = decode_in_tx("entries", &key, &v)?;
            e.access_count += 1;
            e.last_accessed_at_ms = at_ms;
            self.entries.insert(&key, e.encode_to_vec())?;
        }
        Ok(())
    }
}

/// What a write does when its text is already stored, in the same scope and kind,
/// under another id.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum OnDuplicate {
    /// Store nothing and answer with the existing id.
    ReturnExisting,
    /// Fail: an edit must not silently turn into a no-op.
    Reject,
}

/// A change to commit, resolved against the store (ids, points, the records replaced).
#[derive(Default)]
pub(super) struct ChangeSet {
    pub(super) preconditions: Vec<Precondition>,
    /// Entries to write, with the record each replaces.
    pub(super) put: Vec<(MemoryEntry, Option<MemoryEntry>)>,
    pub(super) delete: Vec<MemoryEntry>,
    pub(super) session: Option<SessionWrite>,
    pub(super) remove_sessions: Vec<Vec<u8>>,
    pub(super) document: Option<Document>,
    pub(super) remove_documents: Vec<Ulid>,
    pub(super) job: Option<IngestJob>,
    pub(super) remove_jobs: Vec<Ulid>,
    pub(super) accessed: Vec<Ulid>,
    pub(super) accessed_at_ms: i64,
    /// Memories the first new entry supersedes (see [`WriteBatch::supersedes`]).
    pub(super) supersedes: Vec<Ulid>,
}

impl Store {
    /// Applies a [`WriteBatch`]: every precondition is checked and everything written in
    /// one transaction, then flushed. Fails with [`StoreError::Conflict`] (nothing
    /// written) when a precondition or the session's revision no longer holds.
    pub fn write(&self, batch: WriteBatch) -> Result<WriteOutcome> {
        let records = self.new_records(batch.entries)?;
        let mut change = ChangeSet {
            preconditions: batch.preconditions,
            session: batch.session,
            document: batch.document,
            job: batch.job,
            accessed: batch.accessed,
            accessed_at_ms: now_ms(),
            supersedes: batch.supersedes,
            ..Default::default()
        };
        if let Some(s) = &change.session {
            validate_session(&s.session)?;
        }
        let (entries, session_revision) = self.commit(records, OnDuplicate::ReturnExisting, &mut change)?;
        Ok(WriteOutcome { entries, session_revision })
    }

    /// Stores new entries in one atomic, durable commit. An entry whose text already
    /// exists in the same scope and kind is not stored again: its outcome names the
    /// existing id. Either every entry is stored or none is.
    pub fn put_entries(&self, entries: Vec<NewEntry>) -> Result<Vec<PutOutcome>> {
        Ok(self.write(WriteBatch { entries, ..Default::default() })?.entries)
    }

    /// Stores one new entry; see [`Store::put_entries`].
    pub fn put_entry(&self, entry: NewEntry) -> Result<PutOutcome> {
        Ok(self.put_entries(vec![entry])?[0])
    }

    /// Stores complete records as they are (an import): ids, timestamps and counters are
    /// kept, and a record whose id exists replaces it. A record whose text is already
    /// stored under another id resolves to that id, as for new entries.
    pub fn import_entries(&self, records: Vec<MemoryEntry>) -> Result<Vec<Ulid>> {
        let outcomes = self.commit(records, OnDuplicate::ReturnExisting, &mut ChangeSet::default())?.0;
        Ok(outcomes.into_iter().map(|o| o.id).collect())
    }

    /// Replaces a stored entry (same id) with `entry`, e.g. after an edit, under the
    /// given preconditions. Fails with `NotFound` if the entry is gone by the time of
    /// the commit: an edit never brings a deleted memory back.
    pub fn replace_entry_guarded(&self, entry: MemoryEntry, preconditions: Vec<Precondition>) -> Result<()> {
        let mut change = ChangeSet { preconditions, ..Default::default() };
        self.commit(vec![entry], OnDuplicate::Reject, &mut change).map(|_| ())
    }

    /// [`Store::replace_entry_guarded`] without preconditions.
    pub fn replace_entry(&self, entry: MemoryEntry) -> Result<()> {
        self.replace_entry_guarded(entry, Vec::new())
    }

    /// Deletes entries by id; returns the ids that existed.
    pub fn delete_entries(&self, ids: &[Ulid]) -> Result<Vec<Ulid>> {
        self.delete_with(ids, ChangeSet::default())
    }

    /// Up to `limit` entries whose expiry is at or before `now_ms`, soonest first.
    pub fn expired_entries(&self, now_ms: i64, limit: usize) -> Result<Vec<Ulid>> {
        let mut out = Vec::new();
        for item in self.trees.expiries.range(..expiry_key(now_ms.saturating_add(1), Ulid::nil())) {
            let (key, _) = item?;
            if let Some(id) = key.get(8..).and_then(ulid_from_bytes) {
                out.push(id);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn delete_entry(&self, id: Ulid) -> Result<bool> {
        Ok(!self.delete_entries(&[id])?.is_empty())
    }

    /// Deletes entries together with whatever else `change` removes, in one commit.
    pub(super) fn delete_with(&self, ids: &[Ulid], mut change: ChangeSet) -> Result<Vec<Ulid>> {
        {
            let _guard = self.write_lock.lock();
            for id in ids {
                if let Some(old) = self.get_entry(*id)? {
                    change.delete.push(old);
                }
            }
            self.restore_superseded(&mut change)?;
            self.apply(&change, None)?;
        }
        self.flush()?;
        Ok(change.delete.iter().filter_map(|e| e.ulid()).collect())
    }

    /// Counts a use of each entry (retrieved into a prompt): bumps `access_count` and sets
    /// `last_accessed_at_ms`. Touches only the records, never the indexes or the vector.
    pub fn record_access(&self, ids: &[Ulid], at_ms: i64) -> Result<()> {
        let change = ChangeSet { accessed: ids.to_vec(), accessed_at_ms: at_ms, ..Default::default() };
        {
            let _guard = self.write_lock.lock();
            self.apply(&change, None)?;
        }
        self.flush()
    }

    /// Fresh records for new entries, with ids in call order.
    fn new_records(&self, entries: Vec<NewEntry>) -> Result<Vec<MemoryEntry>> {
        new_records(entries, || self.new_id())
    }

    /// Validates and deduplicates `records`, adds them to `change`, and applies it
    /// atomically, then flushes. Returns the entries' outcomes and the session's new
    /// revision, if `change` writes one.
    fn commit(
        &self,
        mut records: Vec<MemoryEntry>,
        on_duplicate: OnDuplicate,
        change: &mut ChangeSet,
    ) -> Result<(Vec<PutOutcome>, Option<u64>)> {
        let width = validate_records(&mut records, *self.dimension.lock())?;
        // sled ids are monotonic across restarts and never repeat: a session deleted and
        // created again cannot come back at a revision an old writer read.
        let revision = match &change.session {
            Some(_) => Some(self.db.generate_id()? + 1),
            None => None,
        };
        let mut outcomes = Vec::with_capacity(records.len());
        {
            let _guard = self.write_lock.lock();
            if !records.is_empty() {
                self.fix_dimension(width)?;
            }
            let mut in_batch: HashMap<Vec<u8>, Ulid> = HashMap::new();
            for mut record in records {
                let id = record.ulid().ok_or_else(|| invalid("id must be a 16-byte ULID"))?;
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
                if on_duplicate == OnDuplicate::Reject && old.is_none() {
                    return Err(StoreError::NotFound(format!("memory {id}")));
                }
                record.point_id = self.allocate_point();
                outcomes.push(PutOutcome { id, created: true });
                change.put.push((record, old));
            }
            if let Some(doc) = change.document.as_mut().filter(|_| !outcomes.is_empty()) {
                doc.chunk_ids = chunk_ids(&outcomes);
            }
            if !change.supersedes.is_empty() {
                self.supersede(change, &outcomes)?;
            }
            self.apply(change, revision)?;
        }
        self.flush()?;
        Ok((outcomes, revision))
    }

    /// Adds to `change` the records a supersession rewrites: the superseded memories and,
    /// when the new text resolved to a stored memory, that memory. Called with the write
    /// lock held, so the records read here are those the commit replaces.
    fn supersede(&self, change: &mut ChangeSet, outcomes: &[PutOutcome]) -> Result<()> {
        let target = outcomes.first().ok_or_else(|| invalid("supersedes needs a memory to supersede them"))?;
        let mut olds = Vec::with_capacity(change.supersedes.len());
        for id in &change.supersedes {
            let old = self.get_entry(*id)?.ok_or_else(|| invalid(format!("supersedes: memory {id} not found")))?;
            olds.push(old);
        }
        let originals = olds.clone();
        let changed = match change.put.iter_mut().find(|(r, _)| r.ulid() == Some(target.id)) {
            Some((record, _)) => {
                let at = record.valid_since_ms();
                plan_supersession(record, olds, at)?
            }
            None => {
                let stored =
                    self.get_entry(target.id)?.ok_or_else(|| StoreError::NotFound(format!("memory {}", target.id)))?;
                let mut record = stored.clone();
                let changed = plan_supersession(&mut record, olds, now_ms())?;
                record.point_id = self.allocate_point();
                change.put.push((record, Some(stored)));
                changed
            }
        };
        for mut record in changed {
            let old = originals.iter().find(|o| o.id == record.id).cloned();
            record.point_id = self.allocate_point();
            change.put.push((record, old));
        }
        Ok(())
    }

    /// Adds to `change` the memories its deletes make current again (see
    /// [`plan_restoration`]). Called with the write lock held.
    fn restore_superseded(&self, change: &mut ChangeSet) -> Result<()> {
        let deleting: Vec<Ulid> = change.delete.iter().filter_map(|e| e.ulid()).collect();
        let mut restored = Vec::new();
        for deleted in &change.delete {
            let mut candidates = Vec::new();
            for id in superseded_ids(deleted).into_iter().filter(|id| !deleting.contains(id)) {
                if let Some(e) = self.get_entry(id)? {
                    candidates.push(e);
                }
            }
            for record in plan_restoration(deleted, candidates.clone()) {
                let old = candidates.iter().find(|c| c.id == record.id).cloned();
                restored.push((record, old));
            }
        }
        for (mut record, old) in restored {
            record.point_id = self.allocate_point();
            change.put.push((record, old));
        }
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

    /// Writes a change set in one sled transaction, then mirrors it in the vector index
    /// and tells the observers. Called with the write lock held. `revision` is the new
    /// revision of the session the change writes, if any.
    fn apply(&self, change: &ChangeSet, revision: Option<u64>) -> Result<()> {
        let t = &self.trees;
        let trees = [
            &t.entries,
            &t.by_scope,
            &t.by_hash,
            &t.by_document,
            &t.by_session,
            &t.points,
            &t.meta,
            &t.sessions,
            &t.documents,
            &t.jobs,
            &t.erasures,
            &t.transcripts,
            &t.expiries,
        ];
        let next_point = self.next_point.load(std::sync::atomic::Ordering::Relaxed);
        trees[..].transaction(|trees| {
            let [entries, by_scope, by_hash, by_document, by_session, points, meta, sessions, documents, jobs, erasures, transcripts, expiries] =
                &trees[..]
            else {
                unreachable!("thirteen trees in, thirteen out")
            };
            let tx = Tx {
                entries,
                by_scope,
                by_hash,
                by_document,
                by_session,
                points,
                meta,
                sessions,
                documents,
                jobs,
                erasures,
                transcripts,
                expiries,
            };
            for p in &change.preconditions {
                tx.check(p)?;
            }
            if let (Some(write), Some(revision)) = (&change.session, revision) {
                tx.put_session(write, revision)?;
            }
            for key in &change.remove_sessions {
                tx.remove_session(key)?;
            }
            for old in &change.delete {
                let id = old.ulid().ok_or_else(|| abort(invalid("stored entry without a valid id")))?;
                tx.remove_entry(old, id)?;
            }
            for (record, old) in &change.put {
                let id = record.ulid().ok_or_else(|| abort(invalid("entry without a valid id")))?;
                if let Some(old) = old {
                    tx.remove_entry(old, id)?;
                }
                tx.insert_entry(record, id)?;
            }
            if !change.put.is_empty() {
                tx.meta.insert(NEXT_POINT_KEY, &next_point.to_be_bytes())?;
            }
            for id in &change.accessed {
                tx.touch(*id, change.accessed_at_ms)?;
            }
            if let Some(doc) = &change.document {
                tx.documents.insert(doc.id.as_ref(), doc.encode_to_vec())?;
            }
            for id in &change.remove_documents {
                tx.documents.remove(&id.to_bytes())?;
            }
            if let Some(job) = &change.job {
                tx.jobs.insert(job.id.as_ref(), job.encode_to_vec())?;
            }
            for id in &change.remove_jobs {
                tx.jobs.remove(&id.to_bytes())?;
            }
            Ok(())
        })?;
        let replaced: Vec<MemoryEntry> = change.put.iter().filter_map(|(_, old)| old.clone()).collect();
        for old in change.delete.iter().chain(&replaced) {
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
                let (p, s, k, v) = new.into_iter().next().expect("one");
                self.index.insert(p, &s, k, v);
            }
            _ => self.index.insert_many(new),
        }
        self.index.rebuild_in_background_if_due();
        if !(change.put.is_empty() && change.delete.is_empty()) {
            let mut removed = change.delete.clone();
            removed.extend(replaced);
            let added: Vec<MemoryEntry> = change.put.iter().map(|(r, _)| r.clone()).collect();
            let committed = Committed { added: &added, removed: &removed };
            for observer in self.observers.read().iter() {
                observer.committed(self, &committed);
            }
        }
        Ok(())
    }
}

/// The `expiries` key of an entry expiring at `at_ms`: sorted by time.
pub(super) fn expiry_key(at_ms: i64, id: Ulid) -> Vec<u8> {
    let mut key = (at_ms.max(0) as u64).to_be_bytes().to_vec();
    key.extend_from_slice(&id.to_bytes());
    key
}

/// Fresh records for new entries, with ids from `next_id` in call order.
pub(super) fn new_records(entries: Vec<NewEntry>, mut next_id: impl FnMut() -> Ulid) -> Result<Vec<MemoryEntry>> {
    let now = now_ms();
    entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| e.into_record(next_id(), now).map_err(|err| at_entry(i, err)))
        .collect()
}

/// Validates a batch (see [`validate_record`]); all must share the first one's
/// embedding width, which is returned.
pub(super) fn validate_records(records: &mut [MemoryEntry], dimension: Option<usize>) -> Result<Option<usize>> {
    let width = records.first().map(|r| r.embedding.len());
    for (i, r) in records.iter_mut().enumerate() {
        let checked = match width {
            Some(w) if r.embedding.len() != w => {
                Err(invalid(format!("embedding has {} dimensions, entry 0 has {w}", r.embedding.len())))
            }
            _ => validate_record(r, dimension),
        };
        checked.map_err(|e| at_entry(i, e))?;
    }
    Ok(width)
}

/// Names the entry of a batch an input error is about.
fn at_entry(i: usize, e: StoreError) -> StoreError {
    match e {
        StoreError::Invalid(m) => invalid(format!("entry {i}: {m}")),
        other => other,
    }
}

/// The ids a document lists as its chunks: those its entries resolved to, in order,
/// each once (a chunk whose text was stored already is shared, not copied).
pub(super) fn chunk_ids(outcomes: &[PutOutcome]) -> Vec<prost::bytes::Bytes> {
    let mut listed: Vec<Ulid> = Vec::with_capacity(outcomes.len());
    for o in outcomes {
        if !listed.contains(&o.id) {
            listed.push(o.id);
        }
    }
    listed.iter().map(|id| id.to_bytes().to_vec().into()).collect()
}

/// Checks a record before it is stored, scales its embedding to unit length and sets
/// its content hash. `dimension` is the store's embedding width, once fixed.
pub(super) fn validate_record(r: &mut MemoryEntry, dimension: Option<usize>) -> Result<()> {
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
    if let Some(dim) = dimension {
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

pub(super) fn validate_session(s: &Session) -> Result<()> {
    let tenant = s.scope.as_ref().map(|s| s.tenant.as_str()).unwrap_or_default();
    if tenant.is_empty() || s.id.is_empty() || s.id.len() > MAX_KEY_COMPONENT {
        return Err(invalid(format!("a session needs a tenant and an id of 1 to {MAX_KEY_COMPONENT} bytes")));
    }
    Ok(())
}

/// Marks the stored memories `olds` as superseded by `target` (the entry a write
/// resolved to: the new one, or the stored one holding the same text) from `at_ms`, and
/// lists them in `target.supersedes`. Returns the changed records. Refuses a memory of
/// another tenant or user, the target itself, and one already superseded by another
/// memory (superseding twice would leave two "newer" versions). Re-asserting a memory
/// that was superseded by one of `olds` makes it current again.
pub(crate) fn plan_supersession(
    target: &mut MemoryEntry,
    olds: Vec<MemoryEntry>,
    at_ms: i64,
) -> Result<Vec<MemoryEntry>> {
    let target_id = target.ulid().ok_or_else(|| invalid("id must be a 16-byte ULID"))?;
    let owner = |e: &MemoryEntry| e.scope.as_ref().map(|s| (s.tenant.clone(), s.user_id.clone()));
    let mut changed = Vec::with_capacity(olds.len());
    for mut old in olds {
        let id = old.ulid().ok_or_else(|| invalid("stored entry without a valid id"))?;
        if id == target_id {
            return Err(invalid(format!("supersedes: memory {id} cannot supersede itself")));
        }
        if owner(&old) != owner(target) || old.kind() == Kind::Knowledge {
            return Err(invalid(format!("supersedes: memory {id} is not a memory of the same user")));
        }
        if let Some(by) = ulid_from_bytes(&old.superseded_by) {
            if by == target_id {
                continue;
            }
            return Err(StoreError::Conflict(format!("memory {id} is already superseded by memory {by}")));
        }
        old.superseded_by = target_id.to_bytes().to_vec().into();
        old.valid_to_ms = Some(at_ms.max(old.valid_since_ms()));
        let listed = id.to_bytes();
        if !target.supersedes.iter().any(|b| b.as_ref() == listed) {
            target.supersedes.push(listed.to_vec().into());
        }
        if target.superseded_by.as_ref() == listed {
            target.superseded_by = Default::default();
            target.valid_to_ms = None;
        }
        changed.push(old);
    }
    Ok(changed)
}

/// The memories `deleted` had superseded that are still marked as superseded by it,
/// made current again: deleting the newer version of a fact restores the older one.
/// `candidates` are the stored records `deleted.supersedes` names (those being deleted
/// in the same commit left out by the caller).
pub(crate) fn plan_restoration(deleted: &MemoryEntry, candidates: Vec<MemoryEntry>) -> Vec<MemoryEntry> {
    candidates
        .into_iter()
        .filter(|c| c.superseded_by == deleted.id)
        .map(|mut c| {
            c.superseded_by = Default::default();
            c.valid_to_ms = None;
            c
        })
        .collect()
}

/// The ids a record lists in `supersedes`.
pub(crate) fn superseded_ids(e: &MemoryEntry) -> Vec<Ulid> {
    e.supersedes.iter().filter_map(|b| ulid_from_bytes(b)).collect()
}
