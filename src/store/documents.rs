//! Documents, sessions and ingestion jobs: the records that group memories or lead to them.

use prost::Message;
use ulid::Ulid;

use super::error::{Result, StoreError};
use super::keys;
use super::read::hex;
use super::records::{ulid_from_bytes, Document, IngestJob, Session};
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

    /// Deletes a document and its chunks (but not chunks another document shares).
    /// Returns whether it existed.
    pub fn delete_document(&self, tenant: &str, id: Ulid) -> Result<bool> {
        if self.get_document(tenant, id)?.is_none() {
            return Ok(false);
        }
        self.delete_entries(&self.document_exclusive_chunks(tenant, id)?)?;
        self.trees.documents.remove(id.to_bytes())?;
        self.flush()?;
        Ok(true)
    }

    pub fn put_session(&self, session: &Session) -> Result<()> {
        let tenant = session.scope.as_ref().map(|s| s.tenant.as_str()).unwrap_or_default();
        if tenant.is_empty() || session.id.is_empty() || session.id.len() > keys::MAX_KEY_COMPONENT {
            return Err(StoreError::Invalid("a session needs a tenant and an id of at most 512 bytes".into()));
        }
        self.trees.sessions.insert(keys::session_prefix(tenant, &session.id).finish(), session.encode_to_vec())?;
        self.flush()
    }

    pub fn get_session(&self, tenant: &str, id: &str) -> Result<Option<Session>> {
        let key = keys::session_prefix(tenant, id).finish();
        match self.trees.sessions.get(&key)? {
            Some(v) => decode("sessions", &key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Deletes a session record and the memories written from it.
    pub fn delete_session(&self, tenant: &str, id: &str) -> Result<bool> {
        let prefix = keys::session_prefix(tenant, id).finish();
        let ids: Vec<Ulid> = self
            .trees
            .by_session
            .scan_prefix(&prefix)
            .keys()
            .filter_map(|k| k.ok().and_then(|k| keys::trailing_ulid(&k)))
            .collect();
        self.delete_entries(&ids)?;
        let existed = self.trees.sessions.remove(&prefix)?.is_some();
        self.flush()?;
        Ok(existed)
    }

    /// Removes the sessions, documents and ingestion jobs a user owns (their entries are deleted by the
    /// caller through the scope index).
    pub(super) fn delete_owned_records(&self, tenant: &str, user_id: &str) -> Result<()> {
        let owned =
            |scope: Option<&super::records::Scope>| scope.is_some_and(|s| s.tenant == tenant && s.user_id == user_id);
        for item in self.trees.sessions.iter() {
            let (k, v) = item?;
            let s: Session = decode("sessions", &k, &v)?;
            if owned(s.scope.as_ref()) {
                self.trees.sessions.remove(k)?;
            }
        }
        for doc in self.list_documents(tenant)? {
            if owned(doc.scope.as_ref()) {
                if let Some(id) = ulid_from_bytes(&doc.id) {
                    self.delete_document(tenant, id)?;
                }
            }
        }
        // Job records hold a document's text until the job ends.
        for job in self.list_jobs()? {
            if owned(job.scope.as_ref()) {
                if let Some(id) = ulid_from_bytes(&job.id) {
                    self.delete_job(id)?;
                }
            }
        }
        self.flush()
    }
}
