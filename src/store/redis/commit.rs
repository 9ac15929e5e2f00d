//! Writing to the cluster. A change is *planned* by reading what it depends on (the
//! guards: an erase epoch, a session's bytes, a content-hash key, the record it
//! replaces), then *committed* by one script in the scope's slot that checks every
//! guard against what is stored now and, only if all hold, applies every write and
//! appends the change to the shard's stream. A guard that fails means another writer
//! got in between: the change is planned again from what is stored then, so a lost race
//! never loses a write and a precondition that no longer holds fails as a conflict —
//! the same outcomes as the embedded store's transactions.

use std::collections::{BTreeMap, HashMap};

use prost::Message;
use ulid::Ulid;

use super::cache::{scope_of, Change};
use super::conn::Reply;
use super::layout::{self, ScopeKey};
use super::read::epoch_value;
use super::{decode, RedisStore};
use crate::store::error::{Result, StoreError};
use crate::store::keys;
use crate::store::records::{
    memory_entry::Source, now_ms, ulid_from_bytes, Document, IngestJob, JobState, MemoryEntry,
};
use crate::store::write::{
    chunk_ids, new_records, plan_restoration, plan_supersession, superseded_ids, validate_records, validate_scope,
    validate_session, OnDuplicate,
};
use crate::store::{Precondition, PutOutcome, SearchFilter, SessionWrite, WriteBatch, WriteOutcome};

/// Plans retried before a write gives up on a key that keeps changing under it.
const MAX_ATTEMPTS: u32 = 32;
/// Entries deleted per commit when a whole scope goes (an erase).
const DELETE_BATCH: usize = 256;

/// One commit in one slot, being planned.
struct Tx {
    shard: u16,
    keys: layout::Keys,
    /// The keys the script touches (KEYS), in first-use order.
    touched: Vec<String>,
    key_index: HashMap<String, usize>,
    guards: Vec<Vec<u8>>,
    guard_count: usize,
    ops: Vec<Vec<u8>>,
    op_count: usize,
    events: Vec<String>,
    /// Directory hints written before the commit, and cleaned up after it.
    before: Vec<redis::Cmd>,
    after: Vec<redis::Cmd>,
    /// What the node's caches learn once it is committed.
    changes: Vec<Change>,
}

impl Tx {
    fn new(shard: u16, keys: layout::Keys) -> Self {
        Self {
            shard,
            keys,
            touched: Vec::new(),
            key_index: HashMap::new(),
            guards: Vec::new(),
            guard_count: 0,
            ops: Vec::new(),
            op_count: 0,
            events: Vec::new(),
            before: Vec::new(),
            after: Vec::new(),
            changes: Vec::new(),
        }
    }

    fn key(&mut self, key: String) -> Vec<u8> {
        debug_assert!(key.contains(&format!("{{s{:02}}}", self.shard)), "{key} is outside shard {}", self.shard);
        let next = self.touched.len() + 1;
        let i = *self.key_index.entry(key.clone()).or_insert_with(|| {
            self.touched.push(key);
            next
        });
        i.to_string().into_bytes()
    }

    /// The commit applies only if `key` still holds `current` (absent for `None`).
    fn guard(&mut self, key: String, current: Option<&[u8]>) {
        let k = self.key(key);
        self.guards.push(k);
        match current {
            Some(v) => {
                self.guards.push(b"eq".to_vec());
                self.guards.push(v.to_vec());
            }
            None => {
                self.guards.push(b"absent".to_vec());
                self.guards.push(Vec::new());
            }
        }
        self.guard_count += 1;
    }

    fn op(&mut self, name: &str, key: String, a: &[u8], b: &[u8]) {
        let k = self.key(key);
        self.ops.extend([name.as_bytes().to_vec(), k, a.to_vec(), b.to_vec()]);
        self.op_count += 1;
    }

    fn is_empty(&self) -> bool {
        self.op_count == 0
    }

    /// Writes a new or replacing entry record with every index key it owns.
    fn put_entry(&mut self, record: &MemoryEntry, id: Ulid) {
        let scope = scope_of(record);
        let shard = self.shard;
        let mut stored = record.clone();
        stored.point_id = 0;
        self.op("set", self.keys.entry(shard, id), &stored.encode_to_vec(), b"");
        self.op("zadd", self.keys.listing(&scope), &listing_member(record, id), b"");
        self.op("set", self.keys.dedupe(shard, &hash_key(record)), &id.to_bytes(), b"");
        if let Some(doc) = document_of(record) {
            self.op("sadd", self.keys.document_chunks(shard, doc), &id.to_bytes(), b"");
        }
        if let Some(sid) = session_of(record) {
            self.op("sadd", self.keys.session_entries(&scope, &sid), &id.to_bytes(), b"");
        }
        if let Some(at) = record.expires_at_ms {
            self.op("zadds", self.keys.expiries(shard), at.to_string().as_bytes(), &id.to_bytes());
        }
        self.before.push(redis::cmd("SET").arg(self.keys.directory(id)).arg(shard).clone());
        self.events.push(format!("+{} {id}", scope.hex()));
        self.changes.push(Change::Added(stored));
    }

    /// Removes a stored entry and its index keys (`old` as stored, guarded on `bytes`).
    fn remove_entry(&mut self, old: &MemoryEntry, bytes: &[u8], id: Ulid) {
        let scope = scope_of(old);
        let shard = self.shard;
        self.guard(self.keys.entry(shard, id), Some(bytes));
        self.op("del", self.keys.entry(shard, id), b"", b"");
        self.op("zrem", self.keys.listing(&scope), &listing_member(old, id), b"");
        self.op("delifeq", self.keys.dedupe(shard, &hash_key(old)), &id.to_bytes(), b"");
        if let Some(doc) = document_of(old) {
            self.op("srem", self.keys.document_chunks(shard, doc), &id.to_bytes(), b"");
        }
        if let Some(sid) = session_of(old) {
            self.op("srem", self.keys.session_entries(&scope, &sid), &id.to_bytes(), b"");
        }
        if old.expires_at_ms.is_some() {
            self.op("zrem", self.keys.expiries(shard), &id.to_bytes(), b"");
        }
        self.events.push(format!("-{} {id}", scope.hex()));
        self.changes.push(Change::Removed { id, scope });
    }

    fn encode(&mut self, node: &str) -> (Vec<String>, Vec<Vec<u8>>) {
        if !self.events.is_empty() {
            let payload = format!("node {node}\n{}", self.events.join("\n"));
            let max_len = layout::STREAM_MAX_LEN.to_string();
            self.op("xadd", self.keys.changes(self.shard), max_len.as_bytes(), payload.as_bytes());
        }
        let mut args = vec![self.guard_count.to_string().into_bytes()];
        args.append(&mut self.guards);
        args.push(self.op_count.to_string().into_bytes());
        args.append(&mut self.ops);
        (std::mem::take(&mut self.touched), args)
    }
}

fn listing_member(e: &MemoryEntry, id: Ulid) -> Vec<u8> {
    let mut m = vec![e.kind as u8];
    m.extend_from_slice(&id.to_bytes());
    m
}

fn hash_key(e: &MemoryEntry) -> Vec<u8> {
    keys::hash_key(e.scope.as_ref().unwrap_or(&Default::default()), e.kind, &e.content_hash)
}

fn document_of(e: &MemoryEntry) -> Option<Ulid> {
    match &e.source {
        Some(Source::Document(d)) => ulid_from_bytes(&d.document_id),
        _ => None,
    }
}

fn session_of(e: &MemoryEntry) -> Option<String> {
    e.scope.as_ref().map(|s| s.session_id.clone()).filter(|s| !s.is_empty())
}

fn conflict(msg: String) -> StoreError {
    StoreError::Conflict(msg)
}

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::Invalid(msg.into())
}

fn scope_key(scope: Option<&crate::store::records::Scope>) -> ScopeKey {
    let s = scope.cloned().unwrap_or_default();
    ScopeKey { tenant: s.tenant, user: s.user_id }
}

/// The parts of a write besides its entries.
#[derive(Default, Clone)]
struct Extras {
    preconditions: Vec<Precondition>,
    session: Option<SessionWrite>,
    document: Option<Document>,
    job: Option<IngestJob>,
    /// Memories the first record supersedes (see `WriteBatch::supersedes`).
    supersedes: Vec<Ulid>,
}

impl RedisStore {
    /// Plans and commits one change in `shard`, planning again when another writer got
    /// in between; then tells the caches.
    fn run_tx<T>(&self, shard: u16, mut plan: impl FnMut(&mut Tx) -> Result<T>) -> Result<T> {
        for attempt in 0..MAX_ATTEMPTS {
            let mut tx = Tx::new(shard, self.keys.clone());
            let out = plan(&mut tx)?;
            if tx.is_empty() {
                return Ok(out);
            }
            if !tx.before.is_empty() {
                self.conn.query_all::<redis::Value>(std::mem::take(&mut tx.before))?;
            }
            let (keys, args) = tx.encode(&self.node_id);
            match self.conn.commit(keys, args, self.config.redis_wait_replicas, self.config.redis_wait_timeout_ms)? {
                Reply::Conflict(key) => {
                    tracing::debug!(key, attempt, "a concurrent write changed a guarded key; planning again");
                    std::thread::sleep(std::time::Duration::from_millis(u64::from(attempt.min(10))));
                }
                Reply::Committed(replicated) => {
                    if !tx.after.is_empty() {
                        if let Err(e) = self.conn.query_all::<redis::Value>(std::mem::take(&mut tx.after)) {
                            // Only hints are left behind; they find nothing.
                            tracing::warn!(error = %e, "cleaning up directory keys after a commit");
                        }
                    }
                    self.cache.apply(self, std::mem::take(&mut tx.changes));
                    replicated?;
                    return Ok(out);
                }
            }
        }
        Err(conflict("the records this write depends on kept changing under it; try again".into()))
    }

    pub(super) fn write_batch(&self, batch: WriteBatch) -> Result<WriteOutcome> {
        let records = new_records(batch.entries, || self.new_ulid())?;
        if let Some(s) = &batch.session {
            validate_session(&s.session)?;
        }
        let extras = Extras {
            preconditions: batch.preconditions,
            session: batch.session,
            document: batch.document,
            job: batch.job,
            supersedes: batch.supersedes,
        };
        let (entries, session_revision) = self.commit_records(records, OnDuplicate::ReturnExisting, extras)?;
        if !batch.accessed.is_empty() {
            self.record_access(&batch.accessed, now_ms())?;
        }
        Ok(WriteOutcome { entries, session_revision })
    }

    pub(super) fn import_records(&self, records: Vec<MemoryEntry>) -> Result<Vec<Ulid>> {
        let outcomes = self.commit_records(records, OnDuplicate::ReturnExisting, Extras::default())?.0;
        Ok(outcomes.into_iter().map(|o| o.id).collect())
    }

    pub(super) fn replace_record(&self, entry: MemoryEntry, preconditions: Vec<Precondition>) -> Result<()> {
        let extras = Extras { preconditions, ..Default::default() };
        self.commit_records(vec![entry], OnDuplicate::Reject, extras).map(|_| ())
    }

    /// The first entry ever written fixes the embedding width cluster-wide.
    fn fix_dimension(&self, width: usize) -> Result<()> {
        let mut current = self.dimension.lock();
        if current.is_none() {
            let set: Option<String> = self.conn.query(
                redis::cmd("SET").arg(self.keys.meta_dimension()).arg(width as u32).arg("NX").arg("GET").clone(),
            )?;
            *current = Some(set.and_then(|s| s.parse().ok()).unwrap_or(width));
        }
        match *current {
            Some(have) if have != width => {
                Err(invalid(format!("embedding has {width} dimensions, the store holds {have}")))
            }
            _ => Ok(()),
        }
    }

    fn commit_records(
        &self,
        mut records: Vec<MemoryEntry>,
        on_duplicate: OnDuplicate,
        extras: Extras,
    ) -> Result<(Vec<PutOutcome>, Option<u64>)> {
        let width = records.first().map(|r| r.embedding.len());
        if let Some(w) = width {
            self.fix_dimension(w)?;
        }
        let dimension = *self.dimension.lock();
        validate_records(&mut records, dimension)?;
        // Where the write goes: every part of one write must be in one slot.
        let mut shards: Vec<u16> = records.iter().map(|r| scope_of(r).shard()).collect();
        let plain = extras.preconditions.is_empty()
            && extras.session.is_none()
            && extras.document.is_none()
            && extras.job.is_none()
            && extras.supersedes.is_empty();
        if plain {
            shards.sort_unstable();
            shards.dedup();
            if shards.len() > 1 {
                // An import of many scopes: one commit per shard, in the records' order.
                let mut by_shard: BTreeMap<u16, Vec<(usize, MemoryEntry)>> = BTreeMap::new();
                for (i, r) in records.into_iter().enumerate() {
                    by_shard.entry(scope_of(&r).shard()).or_default().push((i, r));
                }
                let mut outcomes = vec![None; by_shard.values().map(Vec::len).sum()];
                for (_, group) in by_shard {
                    let (slots, group): (Vec<usize>, Vec<MemoryEntry>) = group.into_iter().unzip();
                    let (done, _) = self.commit_records(group, on_duplicate, Extras::default())?;
                    for (slot, o) in slots.into_iter().zip(done) {
                        outcomes[slot] = Some(o);
                    }
                }
                return Ok((outcomes.into_iter().flatten().collect(), None));
            }
        }
        if let Some(s) = &extras.session {
            shards.push(scope_key(s.session.scope.as_ref()).shard());
        }
        if let Some(d) = &extras.document {
            shards.push(scope_key(d.scope.as_ref()).shard());
        }
        if let Some(j) = &extras.job {
            shards.push(scope_key(j.scope.as_ref()).shard());
        }
        for p in &extras.preconditions {
            match p {
                Precondition::NotErasedSince { tenant, user_id, .. } => {
                    shards.push(ScopeKey::new(tenant, user_id).shard())
                }
                Precondition::JobPending(id) | Precondition::EntryUnchanged { id, .. } => {
                    if let Some(shard) = self.shard_of_id(*id)? {
                        shards.push(shard);
                    }
                }
            }
        }
        shards.sort_unstable();
        shards.dedup();
        let shard = match shards.as_slice() {
            [] => return Ok((Vec::new(), None)),
            [one] => *one,
            _ => {
                return Err(invalid(
                    "a guarded write spans scopes of different shards of the cluster; it cannot commit atomically",
                ))
            }
        };
        let revision = match &extras.session {
            Some(_) => Some(self.conn.query::<u64>(redis::cmd("INCR").arg(self.keys.meta_revision()).clone())?),
            None => None,
        };
        let outcomes = self.run_tx(shard, |tx| {
            for p in &extras.preconditions {
                self.plan_precondition(tx, p)?;
            }
            if let (Some(write), Some(revision)) = (&extras.session, revision) {
                self.plan_session(tx, write, revision)?;
            }
            let mut outcomes = Vec::with_capacity(records.len());
            let mut in_batch: HashMap<Vec<u8>, Ulid> = HashMap::new();
            for (i, record) in records.iter().enumerate() {
                let supersedes = i == 0 && !extras.supersedes.is_empty();
                let id = record.ulid().ok_or_else(|| invalid("id must be a 16-byte ULID"))?;
                let hkey = hash_key(record);
                let existing = match in_batch.get(&hkey) {
                    Some(id) => Some(*id),
                    None => {
                        let dkey = self.keys.dedupe(shard, &hkey);
                        let current = self.get_bytes(&dkey)?;
                        tx.guard(dkey, current.as_deref());
                        current.as_deref().and_then(ulid_from_bytes)
                    }
                };
                if let Some(existing) = existing.filter(|e| *e != id) {
                    if on_duplicate == OnDuplicate::Reject {
                        return Err(invalid(format!("memory {existing} already holds this text")));
                    }
                    outcomes.push(PutOutcome { id: existing, created: false });
                    if supersedes {
                        // The text is stored already: that memory becomes the newer one.
                        let key = self.keys.entry(shard, existing);
                        let bytes =
                            self.get_bytes(&key)?.ok_or_else(|| StoreError::NotFound(format!("memory {existing}")))?;
                        let stored: MemoryEntry = decode(&key, &bytes)?;
                        let mut target = stored.clone();
                        self.plan_supersession(tx, &mut target, &extras.supersedes, now_ms())?;
                        tx.remove_entry(&stored, &bytes, existing);
                        tx.put_entry(&target, existing);
                    }
                    continue;
                }
                in_batch.insert(hkey, id);
                let key = self.keys.entry(shard, id);
                let old = self.get_bytes(&key)?;
                match &old {
                    Some(bytes) => {
                        let old: MemoryEntry = decode(&key, bytes)?;
                        // Its index keys go; the directory stays (same id, same shard).
                        tx.remove_entry(&old, bytes, id);
                    }
                    None if on_duplicate == OnDuplicate::Reject => {
                        return Err(StoreError::NotFound(format!("memory {id}")));
                    }
                    None => tx.guard(key, None),
                }
                if supersedes {
                    let mut target = record.clone();
                    let at = target.valid_since_ms();
                    self.plan_supersession(tx, &mut target, &extras.supersedes, at)?;
                    tx.put_entry(&target, id);
                } else {
                    tx.put_entry(record, id);
                }
                outcomes.push(PutOutcome { id, created: true });
            }
            if let Some(doc) = &extras.document {
                let mut doc = doc.clone();
                if !outcomes.is_empty() {
                    doc.chunk_ids = chunk_ids(&outcomes);
                }
                plan_document(tx, &doc)?;
            }
            if let Some(job) = &extras.job {
                plan_job(tx, job)?;
            }
            Ok(outcomes)
        })?;
        Ok((outcomes, revision))
    }

    /// Rewrites the memories `ids` as superseded by `target` (see [`plan_supersession`]),
    /// guarded on the records read. They must be in the target's shard: one of another
    /// user is reported as not found, as it would be to that caller anywhere else.
    fn plan_supersession(&self, tx: &mut Tx, target: &mut MemoryEntry, ids: &[Ulid], at_ms: i64) -> Result<()> {
        let mut olds = Vec::with_capacity(ids.len());
        let mut raw = Vec::with_capacity(ids.len());
        for id in ids {
            let key = self.keys.entry(tx.shard, *id);
            let bytes = self.get_bytes(&key)?.ok_or_else(|| invalid(format!("supersedes: memory {id} not found")))?;
            olds.push(decode::<MemoryEntry>(&key, &bytes)?);
            raw.push((*id, bytes));
        }
        let originals = olds.clone();
        for changed in plan_supersession(target, olds, at_ms)? {
            let Some(id) = changed.ulid() else { continue };
            let (Some((_, bytes)), Some(original)) =
                (raw.iter().find(|(r, _)| *r == id), originals.iter().find(|o| o.id == changed.id))
            else {
                continue;
            };
            tx.remove_entry(original, bytes, id);
            tx.put_entry(&changed, id);
        }
        Ok(())
    }

    fn plan_precondition(&self, tx: &mut Tx, p: &Precondition) -> Result<()> {
        match p {
            Precondition::NotErasedSince { tenant, user_id, epoch } => {
                let scope = ScopeKey::new(tenant, user_id);
                let raw = self.read_epoch_raw(&scope)?;
                let now = epoch_value(raw.as_deref());
                if now != *epoch || epoch % 2 == 1 {
                    return Err(conflict(format!(
                        "user `{user_id}` was erased while this request ran; nothing of it was stored"
                    )));
                }
                tx.guard(self.keys.epoch(&scope), raw.as_deref());
            }
            Precondition::JobPending(id) => {
                let found = self.read_job_raw(*id)?;
                match found {
                    Some((shard, job, bytes)) if shard == tx.shard && job.state() == JobState::JobPending => {
                        tx.guard(self.keys.job(shard, *id), Some(&bytes));
                    }
                    _ => return Err(conflict(format!("job {id} was cancelled; nothing of it was stored"))),
                }
            }
            Precondition::EntryUnchanged { id, stamp } => {
                let key = self.keys.entry(tx.shard, *id);
                let bytes = self.get_bytes(&key)?;
                let stored = bytes.as_deref().map(|b| decode::<MemoryEntry>(&key, b)).transpose()?;
                if stored.is_none_or(|e| e.edit_stamp() != *stamp) {
                    return Err(conflict(crate::store::write::entry_changed(*id)));
                }
                // Guarded on the bytes: an access count bumped meanwhile only plans again.
                tx.guard(key, bytes.as_deref());
            }
        }
        Ok(())
    }

    /// Stores a session at `revision` if it is still at the revision its writer read.
    fn plan_session(&self, tx: &mut Tx, write: &SessionWrite, revision: u64) -> Result<()> {
        let s = &write.session;
        let scope = scope_key(s.scope.as_ref());
        let owner: Option<String> =
            self.conn.query(redis::cmd("GET").arg(self.keys.session_directory(&scope.tenant, &s.id)).clone())?;
        if let Some(other) = owner.as_deref().filter(|o| *o != scope.hex()).and_then(ScopeKey::from_hex) {
            if self.get_bytes(&self.keys.session(&other, &s.id))?.is_some() {
                return Err(conflict(format!("session `{}` belongs to another user; nothing was stored", s.id)));
            }
        }
        let key = self.keys.session(&scope, &s.id);
        let current = self.get_bytes(&key)?;
        let old: Option<crate::store::records::Session> = current.as_deref().map(|b| decode(&key, b)).transpose()?;
        let stored = old.as_ref().map_or(0, |o| o.revision);
        if stored != write.expected_revision {
            let what = if old.is_none() { "deleted" } else { "changed by another writer" };
            return Err(conflict(format!("session `{}` was {what} while this request ran; nothing was stored", s.id)));
        }
        tx.guard(key.clone(), current.as_deref());
        if let Some(old) = old.as_ref().filter(|o| !o.transcript_digest.is_empty()) {
            tx.op(
                "hdelifeq",
                self.keys.transcripts(&scope),
                layout::hex(&old.transcript_digest).as_bytes(),
                s.id.as_bytes(),
            );
        }
        let mut record = s.clone();
        record.revision = revision;
        tx.op("set", key, &record.encode_to_vec(), b"");
        tx.op("sadd", self.keys.scope_sessions(&scope), s.id.as_bytes(), b"");
        if !record.transcript_digest.is_empty() {
            tx.op(
                "hset",
                self.keys.transcripts(&scope),
                layout::hex(&record.transcript_digest).as_bytes(),
                s.id.as_bytes(),
            );
        }
        tx.before
            .push(redis::cmd("SET").arg(self.keys.session_directory(&scope.tenant, &s.id)).arg(scope.hex()).clone());
        Ok(())
    }

    /// Counts a use of each entry (see the sled store's `record_access`). Each shard's
    /// entries in one commit, guarded on the records read, so a concurrent edit is
    /// never overwritten by an old copy.
    pub(super) fn record_access(&self, ids: &[Ulid], at_ms: i64) -> Result<()> {
        let mut by_shard: BTreeMap<u16, Vec<Ulid>> = BTreeMap::new();
        for id in ids {
            if let Some(shard) = self.shard_of_id(*id)? {
                by_shard.entry(shard).or_default().push(*id);
            }
        }
        for (shard, ids) in by_shard {
            self.run_tx(shard, |tx| {
                for id in &ids {
                    let key = self.keys.entry(shard, *id);
                    let Some(bytes) = self.get_bytes(&key)? else { continue };
                    let mut e: MemoryEntry = decode(&key, &bytes)?;
                    e.access_count += 1;
                    e.last_accessed_at_ms = at_ms;
                    tx.guard(key.clone(), Some(&bytes));
                    tx.op("set", key, &e.encode_to_vec(), b"");
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Deletes entries by id; returns the ids that existed.
    pub(super) fn delete_entries(&self, ids: &[Ulid]) -> Result<Vec<Ulid>> {
        let mut by_shard: BTreeMap<u16, Vec<Ulid>> = BTreeMap::new();
        for id in ids {
            if let Some(shard) = self.shard_of_id(*id)? {
                by_shard.entry(shard).or_default().push(*id);
            }
        }
        let mut deleted = Vec::new();
        for (shard, ids) in by_shard {
            deleted.extend(self.run_tx(shard, |tx| self.plan_deletes(tx, &ids))?);
        }
        Ok(deleted)
    }

    fn plan_deletes(&self, tx: &mut Tx, ids: &[Ulid]) -> Result<Vec<Ulid>> {
        let entries = self.read_raw_in(tx.shard, ids)?;
        let mut gone = Vec::new();
        for (id, entry, bytes) in &entries {
            tx.remove_entry(entry, bytes, *id);
            tx.after.push(redis::cmd("DEL").arg(self.keys.directory(*id)).clone());
            gone.push(*id);
        }
        // Deleting the newer version of a memory makes the one it superseded current again.
        for (_, deleted, _) in &entries {
            let named: Vec<Ulid> = superseded_ids(deleted).into_iter().filter(|id| !gone.contains(id)).collect();
            if named.is_empty() {
                continue;
            }
            let candidates = self.read_raw_in(tx.shard, &named)?;
            let records: Vec<MemoryEntry> = candidates.iter().map(|(_, e, _)| e.clone()).collect();
            for restored in plan_restoration(deleted, records) {
                if let Some((id, old, bytes)) = candidates.iter().find(|(_, e, _)| e.id == restored.id) {
                    tx.remove_entry(old, bytes, *id);
                    tx.put_entry(&restored, *id);
                }
            }
        }
        Ok(gone)
    }

    fn members(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        self.conn.query(redis::cmd("SMEMBERS").arg(key).clone())
    }

    pub(super) fn store_session(&self, session: &crate::store::records::Session) -> Result<()> {
        let tenant = session.scope.as_ref().map(|s| s.tenant.as_str()).unwrap_or_default();
        let expected_revision = self.read_session(tenant, &session.id)?.map_or(0, |(_, s, _)| s.revision);
        let write = SessionWrite { session: session.clone(), expected_revision };
        self.write_batch(WriteBatch { session: Some(write), ..Default::default() }).map(|_| ())
    }

    /// Deletes a session and the memories written from it, in one commit.
    pub(super) fn remove_session(&self, tenant: &str, id: &str) -> Result<bool> {
        let Some((scope, _, _)) = self.read_session(tenant, id)? else { return Ok(false) };
        self.run_tx(scope.shard(), |tx| {
            let ids: Vec<Ulid> = self
                .members(&self.keys.session_entries(&scope, id))?
                .iter()
                .filter_map(|b| ulid_from_bytes(b))
                .collect();
            self.plan_deletes(tx, &ids)?;
            let key = self.keys.session(&scope, id);
            let Some(bytes) = self.get_bytes(&key)? else { return Ok(false) };
            let old: crate::store::records::Session = decode(&key, &bytes)?;
            tx.guard(key.clone(), Some(&bytes));
            tx.op("del", key, b"", b"");
            tx.op("del", self.keys.session_entries(&scope, id), b"", b"");
            tx.op("srem", self.keys.scope_sessions(&scope), id.as_bytes(), b"");
            if !old.transcript_digest.is_empty() {
                tx.op(
                    "hdelifeq",
                    self.keys.transcripts(&scope),
                    layout::hex(&old.transcript_digest).as_bytes(),
                    id.as_bytes(),
                );
            }
            tx.after.push(redis::cmd("DEL").arg(self.keys.session_directory(tenant, id)).clone());
            Ok(true)
        })
    }

    /// Deletes a document and its chunks (not those another document of the tenant
    /// lists), or cancels its ingestion when it has no record yet (see the sled store).
    pub(super) fn remove_document(&self, tenant: &str, id: Ulid) -> Result<bool> {
        let jobs: Vec<(u16, Ulid, ScopeKey)> = self
            .all_jobs()?
            .into_iter()
            .filter(|j| {
                j.document_id.as_ref() == id.to_bytes()
                    && j.state() == JobState::JobPending
                    && j.scope.as_ref().is_some_and(|s| s.tenant == tenant)
            })
            .filter_map(|j| {
                let scope = scope_key(j.scope.as_ref());
                Some((scope.shard(), ulid_from_bytes(&j.id)?, scope))
            })
            .collect();
        let doc = self.read_document_raw(id)?.filter(|(_, d, _)| d.scope.as_ref().is_some_and(|s| s.tenant == tenant));
        let shard = match (&doc, jobs.first()) {
            (Some((shard, _, _)), _) => *shard,
            (None, Some((shard, _, _))) => *shard,
            (None, None) => return Ok(false),
        };
        let mut shared = std::collections::BTreeSet::new();
        for other in self.documents_of(tenant)? {
            if other.id.as_ref() != id.to_bytes() {
                shared.extend(other.chunk_ids.iter().filter_map(|c| ulid_from_bytes(c)));
            }
        }
        self.run_tx(shard, |tx| {
            if let Some((_, doc, _)) = &doc {
                let mut chunks: std::collections::BTreeSet<Ulid> = self
                    .members(&self.keys.document_chunks(shard, id))?
                    .iter()
                    .filter_map(|b| ulid_from_bytes(b))
                    .collect();
                chunks.extend(doc.chunk_ids.iter().filter_map(|c| ulid_from_bytes(c)));
                let exclusive: Vec<Ulid> = chunks.into_iter().filter(|c| !shared.contains(c)).collect();
                self.plan_deletes(tx, &exclusive)?;
                let key = self.keys.document(shard, id);
                if let Some(bytes) = self.get_bytes(&key)? {
                    tx.guard(key.clone(), Some(&bytes));
                    tx.op("del", key, b"", b"");
                }
                let scope = scope_key(doc.scope.as_ref());
                tx.op("srem", self.keys.scope_documents(&scope), id.to_string().as_bytes(), b"");
                tx.after.push(
                    redis::cmd("SREM").arg(self.keys.tenant_documents(tenant)).arg(format!("{shard}:{id}")).clone(),
                );
                tx.after.push(redis::cmd("DEL").arg(self.keys.directory(id)).clone());
            }
            for (job_shard, job, scope) in &jobs {
                if *job_shard == shard {
                    plan_job_removal(tx, *job, scope);
                }
            }
            Ok(())
        })?;
        // A pending job of another shard (it cannot share the commit) is cancelled alone.
        for (job_shard, job, _) in jobs {
            if job_shard != shard {
                self.remove_job(job)?;
            }
        }
        Ok(true)
    }

    pub(super) fn remove_job(&self, id: Ulid) -> Result<()> {
        let Some((shard, job, _)) = self.read_job_raw(id)? else { return Ok(()) };
        let scope = scope_key(job.scope.as_ref());
        self.run_tx(shard, |tx| {
            plan_job_removal(tx, id, &scope);
            Ok(())
        })
    }

    /// Deletes everything of one user, in the two durable steps of the sled store: the
    /// epoch turns odd (every guarded write that read the old one fails from then on),
    /// the data goes, the epoch turns even. An erase cut short is finished at the next
    /// open of any node.
    pub(super) fn erase(&self, tenant: &str, user_id: &str) -> Result<usize> {
        validate_scope(&crate::store::records::Scope::user(tenant, user_id))?;
        if user_id.is_empty() {
            return Err(invalid("user_id is required to erase a user"));
        }
        let scope = ScopeKey::new(tenant, user_id);
        let shard = scope.shard();
        self.conn.query::<()>(redis::cmd("SADD").arg(self.keys.meta_erasing()).arg(scope.hex()).clone())?;
        self.bump_epoch(&scope, 0)?;
        let mut deleted = 0;
        loop {
            let members: Vec<Vec<u8>> = self.conn.query(
                redis::cmd("ZRANGE").arg(self.keys.listing(&scope)).arg(0).arg(DELETE_BATCH as i64 - 1).clone(),
            )?;
            if members.is_empty() {
                break;
            }
            let ids: Vec<Ulid> = members.iter().filter_map(|m| m.get(1..17)).filter_map(ulid_from_bytes).collect();
            let gone = self.run_tx(shard, |tx| {
                let gone = self.plan_deletes(tx, &ids)?;
                // Members whose record is already gone (a hint left by a crash).
                for m in &members {
                    tx.op("zrem", self.keys.listing(&scope), m, b"");
                }
                Ok(gone.len())
            })?;
            deleted += gone;
        }
        let sessions = self.members(&self.keys.scope_sessions(&scope))?;
        let documents = self.members(&self.keys.scope_documents(&scope))?;
        let jobs = self.members(&self.keys.scope_jobs(&scope))?;
        self.run_tx(shard, |tx| {
            for sid in sessions.iter().map(|s| String::from_utf8_lossy(s).into_owned()) {
                tx.op("del", self.keys.session(&scope, &sid), b"", b"");
                tx.op("del", self.keys.session_entries(&scope, &sid), b"", b"");
                tx.after.push(redis::cmd("DEL").arg(self.keys.session_directory(tenant, &sid)).clone());
            }
            for doc in documents.iter().filter_map(|d| std::str::from_utf8(d).ok()?.parse::<Ulid>().ok()) {
                tx.op("del", self.keys.document(shard, doc), b"", b"");
                tx.op("del", self.keys.document_chunks(shard, doc), b"", b"");
                tx.after.push(
                    redis::cmd("SREM").arg(self.keys.tenant_documents(tenant)).arg(format!("{shard}:{doc}")).clone(),
                );
                tx.after.push(redis::cmd("DEL").arg(self.keys.directory(doc)).clone());
            }
            for job in jobs.iter().filter_map(|j| std::str::from_utf8(j).ok()?.parse::<Ulid>().ok()) {
                plan_job_removal(tx, job, &scope);
            }
            for key in
                [self.keys.scope_sessions(&scope), self.keys.scope_documents(&scope), self.keys.transcripts(&scope)]
            {
                tx.op("del", key, b"", b"");
            }
            Ok(())
        })?;
        self.bump_epoch(&scope, 1)?;
        self.conn.query::<()>(redis::cmd("SREM").arg(self.keys.meta_erasing()).arg(scope.hex()).clone())?;
        Ok(deleted)
    }

    /// Moves the epoch on by one if it is even (`parity` 0: an erase begins) or odd
    /// (`parity` 1: it ends).
    fn bump_epoch(&self, scope: &ScopeKey, parity: u64) -> Result<()> {
        self.run_tx(scope.shard(), |tx| {
            let raw = self.read_epoch_raw(scope)?;
            let epoch = epoch_value(raw.as_deref());
            if epoch % 2 == parity {
                tx.guard(self.keys.epoch(scope), raw.as_deref());
                tx.op("set", self.keys.epoch(scope), &(epoch + 1).to_be_bytes(), b"");
            }
            Ok(())
        })
    }

    /// Finishes the erasures a crash cut short (their epoch is still odd).
    pub(super) fn finish_interrupted_erasures(&self) -> Result<()> {
        let pending: Vec<String> = self.conn.query(redis::cmd("SMEMBERS").arg(self.keys.meta_erasing()).clone())?;
        for hex in pending {
            let Some(scope) = ScopeKey::from_hex(&hex) else { continue };
            if self.read_epoch(&scope)? % 2 == 1 {
                tracing::warn!(tenant = scope.tenant, user = scope.user, "finishing an erasure a stop cut short");
                self.erase(&scope.tenant, &scope.user)?;
            } else {
                self.conn.query::<()>(redis::cmd("SREM").arg(self.keys.meta_erasing()).arg(&hex).clone())?;
            }
        }
        Ok(())
    }

    /// Loads into this node's caches every scope `filter` names (its tenant-and-user
    /// clauses; a clause without a user names no single scope and is served from what
    /// is held).
    pub(super) fn load_scopes_of(&self, filter: &SearchFilter) -> Result<()> {
        let scopes: Vec<ScopeKey> = filter
            .any_of
            .iter()
            .filter_map(|c| Some(ScopeKey::new(c.tenant.as_deref()?, c.user_id.as_deref()?)))
            .collect();
        for scope in &scopes {
            self.cache.ensure(self, scope, &scopes, || self.fetch_scope(scope))?;
        }
        Ok(())
    }

    /// Every entry of a scope, read from its listing.
    pub(super) fn fetch_scope(&self, scope: &ScopeKey) -> Result<Vec<crate::store::records::MemoryEntry>> {
        let members: Vec<Vec<u8>> =
            self.conn.query(redis::cmd("ZRANGE").arg(self.keys.listing(scope)).arg(0).arg(-1).clone())?;
        let ids: Vec<Ulid> = members.iter().filter_map(|m| m.get(1..17)).filter_map(ulid_from_bytes).collect();
        self.read_entries_in(scope.shard(), &ids)
    }
}

fn plan_document(tx: &mut Tx, doc: &Document) -> Result<()> {
    let id = ulid_from_bytes(&doc.id).ok_or_else(|| invalid("document id must be 16 bytes"))?;
    let scope = scope_key(doc.scope.as_ref());
    let shard = tx.shard;
    tx.op("set", tx.keys.document(shard, id), &doc.encode_to_vec(), b"");
    tx.op("sadd", tx.keys.scope_documents(&scope), id.to_string().as_bytes(), b"");
    tx.before.push(redis::cmd("SET").arg(tx.keys.directory(id)).arg(shard).clone());
    tx.before
        .push(redis::cmd("SADD").arg(tx.keys.tenant_documents(&scope.tenant)).arg(format!("{shard}:{id}")).clone());
    Ok(())
}

fn plan_job(tx: &mut Tx, job: &IngestJob) -> Result<()> {
    let id = ulid_from_bytes(&job.id).ok_or_else(|| invalid("job id must be 16 bytes"))?;
    let scope = scope_key(job.scope.as_ref());
    let shard = tx.shard;
    tx.op("set", tx.keys.job(shard, id), &job.encode_to_vec(), b"");
    tx.op("sadd", tx.keys.scope_jobs(&scope), id.to_string().as_bytes(), b"");
    tx.before.push(redis::cmd("SET").arg(tx.keys.directory(id)).arg(shard).clone());
    tx.before.push(redis::cmd("SADD").arg(tx.keys.meta_jobs()).arg(format!("{shard}:{id}")).clone());
    Ok(())
}

fn plan_job_removal(tx: &mut Tx, id: Ulid, scope: &ScopeKey) {
    let shard = tx.shard;
    tx.op("del", tx.keys.job(shard, id), b"", b"");
    tx.op("srem", tx.keys.scope_jobs(scope), id.to_string().as_bytes(), b"");
    tx.after.push(redis::cmd("SREM").arg(tx.keys.meta_jobs()).arg(format!("{shard}:{id}")).clone());
    tx.after.push(redis::cmd("DEL").arg(tx.keys.directory(id)).clone());
}
