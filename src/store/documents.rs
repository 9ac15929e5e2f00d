//! Documents, sessions and ingestion jobs: the records that group memories or lead to them.

use prost::Message;
use ulid::Ulid;

use super::error::{Result, StoreError};
use super::keys;
use super::read::hex;
use super::records::{ulid_from_bytes, Document, IngestJob, JobState, Scope, Session};
use super::write::{validate_scope, ChangeSet, SessionWrite, WriteBatch};
use super::Store;

fn decode<T: Message + Default>(tree: &'static str, key: &[u8], value: &[u8]) -> Result<T> {
    T::decode(value).map_err(|e| StoreError::Corrupt { tree, key: hex(key), reason: e.to_string() })
}

impl Store {
    /// Writes a document record durably (create or replace).
    pub fn put_document(&self, doc: &Document) -> Result<()> {
        let id: [u8; 16] =
            doc.id.as_ref().try_into().map_err(|_| StoreError::Invalid("document id must be 16 bytes".into()))?;
        self.trees.documents.insert(id, doc.encode_to_vec())?;
        self.flush()
    }

    /// A document of `tenant`; another tenant's document is reported as absent.
    pub fn get_document(&self, tenant: &str, id: Ulid) -> Result<Option<Document>> {
        let key = id.to_bytes();
        let Some(v) = self.trees.documents.get(key)? else {
            return Ok(None);
        };
        let doc: Document = decode("documents", &key, &v)?;
        Ok((doc.scope.as_ref().is_some_and(|s| s.tenant == tenant)).then_some(doc))
    }

    /// Every document of a tenant, oldest first.
    pub fn list_documents(&self, tenant: &str) -> Result<Vec<Document>> {
        let mut out = Vec::new();
        for item in self.trees.documents.iter() {
            let (k, v) = item?;
            let doc: Document = decode("documents", &k, &v)?;
            if doc.scope.as_ref().is_some_and(|s| s.tenant == tenant) {
                out.push(doc);
            }
        }
        Ok(out)
    }

    /// Stores (or replaces) an ingestion job's record, durably.
    pub fn put_job(&self, job: &IngestJob) -> Result<()> {
        let id: [u8; 16] =
            job.id.as_ref().try_into().map_err(|_| StoreError::Invalid("job id must be 16 bytes".into()))?;
        self.trees.jobs.insert(id, job.encode_to_vec())?;
        self.flush()
    }

    /// An ingestion job's record.
    pub fn get_job(&self, id: Ulid) -> Result<Option<IngestJob>> {
        let key = id.to_bytes();
        self.trees.jobs.get(key)?.map(|v| decode("jobs", &key, &v)).transpose()
    }

    /// Every ingestion job on record, oldest first (all tenants: the service resumes
    /// them at start).
    pub fn list_jobs(&self) -> Result<Vec<IngestJob>> {
        self.trees.jobs.iter().map(|item| item.map_err(Into::into).and_then(|(k, v)| decode("jobs", &k, &v))).collect()
    }

    /// Forgets a job's record.
    pub fn delete_job(&self, id: Ulid) -> Result<()> {
        self.trees.jobs.remove(id.to_bytes())?;
        Ok(())
    }

    /// The ids of a document's chunks, from the `by_document` index.
    pub fn document_chunk_ids(&self, id: Ulid) -> Result<Vec<Ulid>> {
        Ok(self
            .trees
            .by_document
            .scan_prefix(id.to_bytes())
            .keys()
            .filter_map(|k| k.ok().and_then(|k| keys::trailing_ulid(&k)))
            .collect())
    }

    /// The chunks that deleting document `id` removes: those it wrote and those its
    /// record lists, except any that another document of the tenant lists too (identical
    /// text in one scope is stored once, so two documents can share a chunk).
    pub fn document_exclusive_chunks(&self, tenant: &str, id: Ulid) -> Result<Vec<Ulid>> {
        let Some(doc) = self.get_document(tenant, id)? else { return Ok(Vec::new()) };
        let mut chunks: std::collections::BTreeSet<Ulid> = self.document_chunk_ids(id)?.into_iter().collect();
        chunks.extend(doc.chunk_ids.iter().filter_map(|c| ulid_from_bytes(c)));
        for other in self.list_documents(tenant)? {
            if other.id != doc.id {
                for c in other.chunk_ids.iter().filter_map(|c| ulid_from_bytes(c)) {
                    chunks.remove(&c);
                }
            }
        }
        Ok(chunks.into_iter().collect())
    }

    /// Deletes a document and its chunks (but not chunks another document shares), in
    /// one commit. A document still being ingested has no record yet: its job record is
    /// removed instead, which cancels the job (its final write is guarded on it).
    /// Returns whether it existed.
    pub fn delete_document(&self, tenant: &str, id: Ulid) -> Result<bool> {
        let jobs: Vec<Ulid> = self
            .list_jobs()?
            .into_iter()
            .filter(|j| {
                j.document_id.as_ref() == id.to_bytes()
                    && j.state() == JobState::JobPending
                    && j.scope.as_ref().is_some_and(|s| s.tenant == tenant)
            })
            .filter_map(|j| ulid_from_bytes(&j.id))
            .collect();
        let exists = self.get_document(tenant, id)?.is_some();
        if !exists && jobs.is_empty() {
            return Ok(false);
        }
        let chunks = if exists { self.document_exclusive_chunks(tenant, id)? } else { Vec::new() };
        let change = ChangeSet { remove_documents: vec![id], remove_jobs: jobs, ..Default::default() };
        self.delete_with(&chunks, change)?;
        Ok(true)
    }

    /// Stores a session as it is (an import, or a test), whatever revision is stored.
    pub fn put_session(&self, session: &Session) -> Result<()> {
        let tenant = session.scope.as_ref().map(|s| s.tenant.as_str()).unwrap_or_default();
        let expected_revision = self.get_session(tenant, &session.id)?.map_or(0, |s| s.revision);
        let write = SessionWrite { session: session.clone(), expected_revision };
        self.write(WriteBatch { session: Some(write), ..Default::default() }).map(|_| ())
    }

    pub fn get_session(&self, tenant: &str, id: &str) -> Result<Option<Session>> {
        let key = keys::session_prefix(tenant, id).finish();
        match self.trees.sessions.get(&key)? {
            Some(v) => decode("sessions", &key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// The session of this user whose turns have this digest (see
    /// `Session::transcript_digest`), if any.
    pub fn find_session_by_transcript(&self, tenant: &str, user_id: &str, digest: &[u8]) -> Result<Option<Session>> {
        let key = keys::transcript_key(tenant, user_id, digest);
        let Some(id) = self.trees.transcripts.get(&key)? else { return Ok(None) };
        let id = String::from_utf8_lossy(&id).into_owned();
        Ok(self.get_session(tenant, &id)?.filter(|s| s.scope.as_ref().is_some_and(|sc| sc.user_id == user_id)))
    }

    /// Deletes a session record and the memories written from it, in one commit.
    pub fn delete_session(&self, tenant: &str, id: &str) -> Result<bool> {
        let prefix = keys::session_prefix(tenant, id).finish();
        let ids: Vec<Ulid> = self
            .trees
            .by_session
            .scan_prefix(&prefix)
            .keys()
            .filter_map(|k| k.ok().and_then(|k| keys::trailing_ulid(&k)))
            .collect();
        let existed = self.trees.sessions.contains_key(&prefix)?;
        self.delete_with(&ids, ChangeSet { remove_sessions: vec![prefix], ..Default::default() })?;
        Ok(existed)
    }

    /// The user's erase epoch: pass it back in a [`Precondition::NotErasedSince`] to
    /// make a write fail if the user is erased in between. Odd while an erase runs.
    pub fn user_epoch(&self, tenant: &str, user_id: &str) -> Result<u64> {
        let v = self.trees.erasures.get(keys::erasure_key(tenant, user_id))?;
        Ok(v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map(u64::from_be_bytes).unwrap_or(0))
    }

    /// Deletes every entry, session, document and ingestion job of one user of a
    /// tenant. Returns how many entries were deleted.
    ///
    /// In two durable steps: first the user's epoch turns odd ("being erased"), which
    /// makes every guarded write that read the old epoch fail from then on; then the
    /// data goes and the epoch turns even again. An erase cut off by a crash is finished
    /// when the store next opens, so an acknowledged erase is final and an
    /// interrupted one completes.
    pub fn erase_user(&self, tenant: &str, user_id: &str) -> Result<usize> {
        validate_scope(&Scope::user(tenant, user_id))?;
        if user_id.is_empty() {
            return Err(StoreError::Invalid("user_id is required to erase a user".into()));
        }
        let key = keys::erasure_key(tenant, user_id);
        {
            let _guard = self.write_lock.lock();
            let epoch = self.user_epoch(tenant, user_id)?;
            if epoch % 2 == 0 {
                self.trees.erasures.insert(&key, &(epoch + 1).to_be_bytes())?;
            }
        }
        self.flush()?;
        let deleted = self.delete_user_data(tenant, user_id)?;
        {
            let _guard = self.write_lock.lock();
            let epoch = self.user_epoch(tenant, user_id)?;
            if epoch % 2 == 1 {
                self.trees.erasures.insert(&key, &(epoch + 1).to_be_bytes())?;
            }
        }
        self.flush()?;
        Ok(deleted)
    }

    /// Finishes the erasures a crash cut off (their epoch is still odd). Called at open.
    pub(super) fn finish_interrupted_erasures(&self) -> Result<()> {
        let mut pending = Vec::new();
        for item in self.trees.erasures.iter() {
            let (key, value) = item?;
            let odd = <[u8; 8]>::try_from(value.as_ref()).is_ok_and(|b| u64::from_be_bytes(b) % 2 == 1);
            if odd {
                pending.push(keys::decode_scope_prefix(&key).ok_or_else(|| StoreError::Corrupt {
                    tree: "erasures",
                    key: hex(&key),
                    reason: "not a tenant/user key".into(),
                })?);
            }
        }
        for (tenant, user) in pending {
            tracing::warn!(tenant, user, "finishing an erasure a stop cut short");
            self.erase_user(&tenant, &user)?;
        }
        Ok(())
    }

    /// Deletes what a user owns: entries (through the scope index), sessions and their
    /// transcript keys, documents, ingestion jobs.
    fn delete_user_data(&self, tenant: &str, user_id: &str) -> Result<usize> {
        let prefix = keys::scope_prefix(tenant, user_id).finish();
        let ids: Vec<Ulid> = self
            .trees
            .by_scope
            .scan_prefix(&prefix)
            .keys()
            .filter_map(|k| k.ok().and_then(|k| keys::trailing_ulid(&k)))
            .collect();
        let deleted = self.delete_entries(&ids)?.len();
        let owned = |scope: Option<&Scope>| scope.is_some_and(|s| s.tenant == tenant && s.user_id == user_id);
        let mut sessions = Vec::new();
        for item in self.trees.sessions.iter() {
            let (k, v) = item?;
            let s: Session = decode("sessions", &k, &v)?;
            if owned(s.scope.as_ref()) {
                sessions.push(k.to_vec());
            }
        }
        let documents: Vec<Ulid> = self
            .list_documents(tenant)?
            .iter()
            .filter(|d| owned(d.scope.as_ref()))
            .filter_map(|d| ulid_from_bytes(&d.id))
            .collect();
        // Job records hold a document's text until the job ends.
        let jobs: Vec<Ulid> = self
            .list_jobs()?
            .iter()
            .filter(|j| owned(j.scope.as_ref()))
            .filter_map(|j| ulid_from_bytes(&j.id))
            .collect();
        let change = ChangeSet {
            remove_sessions: sessions,
            remove_documents: documents,
            remove_jobs: jobs,
            ..Default::default()
        };
        // Chunks of the user's documents were deleted with their entries (same scope).
        self.delete_with(&[], change)?;
        for key in self.trees.transcripts.scan_prefix(&prefix).keys() {
            self.trees.transcripts.remove(key?)?;
        }
        Ok(deleted)
    }
}
