//! Document ingestion for the knowledge base: text is extracted from the upload, split
//! into chunks that follow its headings, embedded, and stored as `knowledge` memories
//! under one [`Document`] record.
//!
//! Consistency: all of a document's chunks go to the store in one atomic `put_entries`
//! call, and the document record is written only after it; if that last write fails the
//! chunks just written are deleted again, so a failure never leaves half a document.
//!
//! Small documents are ingested while the request waits. Large ones (more than
//! [`SYNC_CHUNK_LIMIT`] chunks) become a background job, embedded in batches so that
//! progress can be reported, and recorded in the store so that a restart resumes it
//! (see [`super::ingest_jobs`]).

use serde_json::Value;
use ulid::Ulid;

use super::chunking::{chunk_text, Chunk, ChunkParams};
use super::extract::{Extractor, Format, Origin};
use super::ingest_jobs::{JobBook, MAX_ATTEMPTS};
pub use super::ingest_jobs::{JobStatus, JobView};
use super::keyed_lock::KeyedLocks;
use super::service::{blocking, MemoryError, MemoryService};
use crate::model::Embedder;
use crate::store::records::memory_entry::Source;
use crate::store::records::{
    now_ms, ulid_from_bytes, Document, DocumentSource, DocumentStatus, IngestJob, Kind, Scope,
};
use crate::store::{NewEntry, Precondition, StoreError, WriteBatch};

/// Documents with more chunks than this are ingested by a background job.
pub const SYNC_CHUNK_LIMIT: usize = 32;
/// Chunks embedded per call in a job, so that progress moves in visible steps.
const EMBED_BATCH: usize = 32;
/// Chunk budget: below MiniLM's 256-token window, so that no chunk is ever truncated.
const CHUNKING: ChunkParams = ChunkParams { max_tokens: 200, overlap_tokens: 30 };
/// Longest scope component the store accepts.
const MAX_USER_ID_BYTES: usize = 512;

/// A document to ingest, with its text already extracted.
#[derive(Debug, Clone, Default)]
pub struct NewDocument {
    pub title: String,
    pub text: String,
    /// The uploaded file's name; empty for JSON uploads.
    pub source_name: String,
    pub mime: String,
    /// The owner; empty for the tenant's shared knowledge.
    pub user_id: String,
    /// A JSON object, or null.
    pub metadata: Value,
}

/// Why an upload's text could not be extracted.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// A file type we do not read (HTTP 415).
    #[error("{0}")]
    Unsupported(String),
    /// A file of a known type that could not be read (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// A file whose text is over the configured limit (HTTP 413).
    #[error("{0}")]
    TooLarge(String),
    /// The server could not run the extraction at all (HTTP 500).
    #[error("{0}")]
    Internal(String),
}

/// What an ingestion did.
#[derive(Debug, Clone)]
pub enum Ingested {
    /// The same text was already ingested for this tenant and user: that document.
    Existing(Document),
    /// Stored now, while the caller waited.
    Stored(Document),
    /// Too large to wait for: a job now embeds it (or already was, for a repeated upload).
    Started(JobView),
}

/// A document chunked and ready to embed.
struct Prepared {
    id: Ulid,
    tenant: String,
    doc: NewDocument,
    hash: [u8; 32],
    chunks: Vec<Chunk>,
    /// Guards the final write against an erase of the owner meanwhile.
    erase_guard: Precondition,
}

/// See the module documentation.
#[derive(Clone)]
pub struct Documents {
    memory: MemoryService,
    embedder: Embedder,
    extractor: Extractor,
    /// Serialises "is this text already here?" with the write or job start that follows,
    /// per tenant, owner and content: two identical uploads at once still make one
    /// document, and nothing else waits on them.
    admit: KeyedLocks,
}

/// The owner of a document ("" for shared knowledge).
pub fn document_user(doc: &Document) -> &str {
    doc.scope.as_ref().map(|s| s.user_id.as_str()).unwrap_or_default()
}

/// Reads the text of an uploaded file, chosen by its extension (or, without one, its
/// declared content type). Returns the MIME type and the text. PDF and HTML are parsed
/// in a child process (see [`super::extract`]); plain text only has to be UTF-8.
pub async fn extract_text(
    extractor: &Extractor,
    file_name: &str,
    content_type: Option<&str>,
    bytes: Vec<u8>,
) -> Result<(&'static str, String), ExtractError> {
    let ext = file_name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    let kind = match (ext.as_deref(), content_type) {
        (Some("txt"), _) | (None, Some("text/plain")) => "text/plain",
        (Some("md" | "markdown"), _) | (None, Some("text/markdown")) => "text/markdown",
        (Some("html" | "htm"), _) | (None, Some("text/html")) => "text/html",
        (Some("pdf"), _) | (None, Some("application/pdf")) => "application/pdf",
        (Some(other), _) => {
            return Err(ExtractError::Unsupported(format!(
                "file: unsupported file type `.{other}` (expected .txt, .md, .html, .htm or .pdf)"
            )))
        }
        (None, ct) => {
            return Err(ExtractError::Unsupported(format!(
                "file: unsupported file type `{}` (expected .txt, .md, .html, .htm or .pdf)",
                ct.unwrap_or("unknown")
            )))
        }
    };
    let not_utf8 = || ExtractError::Invalid(format!("file: `{file_name}` is not UTF-8 text"));
    let origin = Origin { field: "file", file_name: Some(file_name) };
    let text = match kind {
        "text/html" => {
            std::str::from_utf8(&bytes).map_err(|_| not_utf8())?;
            extractor.extract(Format::Html, origin, bytes).await?
        }
        "application/pdf" => extractor.extract(Format::Pdf, origin, bytes).await?,
        _ => String::from_utf8(bytes).map_err(|_| not_utf8())?,
    };
    Ok((kind, text))
}

impl Documents {
    /// Ingestion over the memory service's store, with the embedding model given, and
    /// uploads read by `extractor`.
    pub fn new(memory: MemoryService, embedder: Embedder, extractor: Extractor) -> Self {
        Self { memory, embedder, extractor, admit: KeyedLocks::default() }
    }

    fn jobs(&self) -> &JobBook {
        self.memory.jobs()
    }

    /// [`extract_text`] within this service's extraction limits.
    pub async fn extract(
        &self,
        file_name: &str,
        content_type: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<(&'static str, String), ExtractError> {
        extract_text(&self.extractor, file_name, content_type, bytes).await
    }

    /// The text of HTML sent in a JSON body (`mime: "text/html"`), read like an upload.
    pub async fn html_text(&self, html: String) -> Result<String, ExtractError> {
        self.extractor.extract(Format::Html, Origin { field: "text", file_name: None }, html.into_bytes()).await
    }

    /// Ingests a document for `tenant`; see the module documentation.
    pub async fn ingest(&self, tenant: &str, doc: NewDocument) -> Result<Ingested, MemoryError> {
        let limits = self.memory.limits();
        if doc.title.trim().is_empty() {
            return Err(MemoryError::Invalid("title is empty".into()));
        }
        limits.check_len("title", &doc.title, limits.title_bytes, "title_bytes")?;
        if doc.text.trim().is_empty() {
            return Err(MemoryError::Invalid("text is empty".into()));
        }
        limits.check_len("text", &doc.text, limits.document_text_bytes, "document_text_bytes")?;
        if doc.user_id.len() > MAX_USER_ID_BYTES {
            return Err(MemoryError::Invalid(format!("user_id is longer than {MAX_USER_ID_BYTES} bytes")));
        }
        limits.metadata("metadata", &doc.metadata)?;
        let hash = *blake3::hash(doc.text.as_bytes()).as_bytes();
        let key = format!("{}:{tenant}{}:{}{}", tenant.len(), doc.user_id.len(), doc.user_id, blake3::Hash::from(hash));
        let _admitted = self.admit.lock(key).await;
        if let Some(found) = self.find_existing(tenant, &doc.user_id, hash).await? {
            return Ok(found);
        }
        let erase_guard = self.memory.erase_guard(tenant, &doc.user_id).await?;
        let (doc, chunks) = self.chunk(doc).await?;
        if chunks.len() > limits.document_chunks {
            return Err(MemoryError::TooLarge {
                field: "text",
                message: format!(
                    "text makes {} chunks; the limit is {} chunks per document (limits.document_chunks)",
                    chunks.len(),
                    limits.document_chunks
                ),
            });
        }
        let id = self.memory.store().new_id();
        let prepared = Prepared { id, tenant: tenant.to_owned(), doc, hash, chunks, erase_guard };
        if prepared.chunks.len() <= SYNC_CHUNK_LIMIT {
            return Ok(Ingested::Stored(self.embed_and_store(prepared, None).await?));
        }
        Ok(Ingested::Started(self.start_job(prepared).await?))
    }

    /// Splits a document into chunks by the embedder's token count. Counting over a long
    /// text is real work: off the async workers.
    async fn chunk(&self, doc: NewDocument) -> Result<(NewDocument, Vec<Chunk>), MemoryError> {
        let embedder = self.embedder.clone();
        tokio::task::spawn_blocking(move || {
            let chunks = chunk_text(&doc.text, &CHUNKING, &|s| embedder.count_tokens(s));
            (doc, chunks)
        })
        .await
        .map_err(|e| MemoryError::Internal(format!("chunking failed: {e}")))
    }

    /// The tenant+user's document with this text, or the job now ingesting it.
    async fn find_existing(&self, tenant: &str, user: &str, hash: [u8; 32]) -> Result<Option<Ingested>, MemoryError> {
        let running = self.jobs().find_live(tenant, user, hash);
        if let Some(view) = running {
            return Ok(Some(Ingested::Started(view)));
        }
        let (store, tenant, user) = (self.memory.store().clone(), tenant.to_owned(), user.to_owned());
        let docs = blocking(move || store.list_documents(&tenant)).await?;
        Ok(docs
            .into_iter()
            .find(|d| {
                document_user(d) == user && d.content_hash.as_ref() == hash && d.status() == DocumentStatus::Ready
            })
            .map(Ingested::Existing))
    }

    async fn start_job(&self, prepared: Prepared) -> Result<JobView, MemoryError> {
        let record = IngestJob {
            scope: Some(Scope::user(prepared.tenant.clone(), prepared.doc.user_id.clone())),
            document_id: prepared.id.to_bytes().to_vec().into(),
            title: prepared.doc.title.clone(),
            source_name: prepared.doc.source_name.clone(),
            mime: prepared.doc.mime.clone(),
            metadata_json: match &prepared.doc.metadata {
                Value::Null => String::new(),
                m => m.to_string(),
            },
            text: prepared.doc.text.clone(),
            ..Default::default()
        };
        let (jobs, total, hash) = (self.jobs().clone(), prepared.chunks.len(), prepared.hash);
        let view = blocking(move || jobs.open(record, total, hash)).await?;
        self.run_job(view.id, prepared);
        Ok(view)
    }

    /// Embeds and stores a job's document in the background, keeping the book current.
    fn run_job(&self, id: Ulid, prepared: Prepared) {
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = this.embed_and_store(prepared, Some(id)).await;
            let outcome = match outcome {
                Ok(_) => return, // the final write recorded the job done
                Err(MemoryError::Conflict(reason)) => {
                    tracing::info!(job = %id, reason, "document job cancelled");
                    return;
                }
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "document job failed");
                    Err(e.to_string())
                }
            };
            let jobs = this.jobs().clone();
            if let Err(e) = blocking(move || jobs.finish(id, outcome)).await {
                tracing::warn!(job = %id, error = %e, "cannot record the end of a document job");
            }
        });
    }

    /// Takes up the jobs a previous run left on record: unfinished ones start again (or
    /// are closed, when their document got written just before the stop, or given up
    /// after [`MAX_ATTEMPTS`] runs), finished ones stay reportable until their retention
    /// ends. Call once, at start.
    pub async fn resume_jobs(&self) -> Result<(), MemoryError> {
        let (jobs, store) = (self.jobs().clone(), self.memory.store().clone());
        let records = blocking(move || {
            jobs.forget_expired()?;
            store.list_jobs()
        })
        .await?;
        for mut record in records {
            let hash = *blake3::hash(record.text.as_bytes()).as_bytes();
            let view = self.jobs().admit(&record, hash);
            if view.status != JobStatus::Pending {
                continue;
            }
            let (tenant, user_id) =
                record.scope.as_ref().map(|s| (s.tenant.clone(), s.user_id.clone())).unwrap_or_default();
            let (store, doc_id, t) = (self.memory.store().clone(), view.document_id, tenant.clone());
            let written = blocking(move || store.get_document(&t, doc_id)).await?;
            let jobs = self.jobs().clone();
            if written.is_some_and(|d| d.status() == DocumentStatus::Ready) {
                blocking(move || jobs.finish(view.id, Ok(()))).await?;
                continue;
            }
            let (counted, mut record) = blocking(move || Ok((jobs.count_attempt(&mut record)?, record))).await?;
            if !counted {
                let reason = format!(
                    "gave up after {MAX_ATTEMPTS} attempts: the job failed, or the server stopped, during each"
                );
                tracing::warn!(job = %view.id, "{reason}");
                let jobs = self.jobs().clone();
                blocking(move || jobs.finish(view.id, Err(reason))).await?;
                continue;
            }
            let erase_guard = self.memory.erase_guard(&tenant, &user_id).await?;
            let doc = NewDocument {
                title: std::mem::take(&mut record.title),
                text: std::mem::take(&mut record.text),
                source_name: std::mem::take(&mut record.source_name),
                mime: std::mem::take(&mut record.mime),
                user_id,
                metadata: serde_json::from_str(&record.metadata_json).unwrap_or(Value::Null),
            };
            let (doc, chunks) = self.chunk(doc).await?;
            tracing::info!(job = %view.id, chunks = chunks.len(), attempt = record.attempts, "resuming a document job left unfinished");
            self.run_job(view.id, Prepared { id: doc_id, tenant, doc, hash, chunks, erase_guard });
        }
        Ok(())
    }

    /// A job of this tenant; another tenant's is reported as absent.
    pub fn job(&self, tenant: &str, id: &str) -> Result<JobView, MemoryError> {
        self.jobs().get(tenant, id)
    }

    /// Embeds the chunks (in batches; a job reports how many are done and stops when
    /// cancelled), then stores them with the document record in one guarded commit —
    /// which, for a job, also records the job done. Nothing of the document remains on
    /// failure, and nothing is written for an owner erased or a job cancelled meanwhile.
    async fn embed_and_store(&self, p: Prepared, job: Option<Ulid>) -> Result<Document, MemoryError> {
        let cancelled = || MemoryError::Conflict("the job was cancelled".into());
        let mut vectors = Vec::with_capacity(p.chunks.len());
        for batch in p.chunks.chunks(EMBED_BATCH) {
            if job.is_some_and(|id| self.jobs().is_cancelled(id)) {
                return Err(cancelled());
            }
            let out = self.embedder.embed(batch.iter().map(|c| c.text.clone()).collect()).await?;
            vectors.extend(out.vectors);
            if let Some(id) = job {
                self.jobs().progress(id, vectors.len());
            }
        }
        let scope = Scope::user(p.tenant.clone(), p.doc.user_id.clone());
        let base = match &p.doc.metadata {
            Value::Object(m) => m.clone(),
            _ => Default::default(),
        };
        let entries: Vec<NewEntry> = p
            .chunks
            .iter()
            .zip(vectors)
            .map(|(c, embedding)| {
                let mut metadata = base.clone();
                metadata.insert("title".into(), Value::String(p.doc.title.clone()));
                metadata.insert("heading".into(), c.heading.clone().map(Value::String).unwrap_or(Value::Null));
                NewEntry {
                    kind: Some(Kind::Knowledge),
                    text: c.text.clone(),
                    embedding,
                    scope: scope.clone(),
                    metadata: Value::Object(metadata),
                    source: Some(Source::Document(DocumentSource {
                        document_id: p.id.to_bytes().to_vec().into(),
                        chunk_index: c.index as u32,
                        char_start: c.char_start as u64,
                        char_end: c.char_end as u64,
                    })),
                    ..Default::default()
                }
            })
            .collect();
        let mut record = Document {
            id: p.id.to_bytes().to_vec().into(),
            title: p.doc.title.clone(),
            source_name: p.doc.source_name.clone(),
            mime: p.doc.mime.clone(),
            metadata_json: if base.is_empty() { String::new() } else { Value::Object(base).to_string() },
            scope: Some(scope),
            content_hash: p.hash.to_vec().into(),
            chunk_ids: Vec::new(),
            status: 0,
            created_at_ms: now_ms(),
            error: String::new(),
        };
        record.set_status(DocumentStatus::Ready);
        let (store, jobs) = (self.memory.store().clone(), self.jobs().clone());
        let record = blocking(move || {
            let mut batch = WriteBatch {
                preconditions: vec![p.erase_guard],
                entries,
                document: Some(record),
                ..Default::default()
            };
            if let Some(id) = job {
                batch.preconditions.push(Precondition::JobPending(id));
                batch.job = jobs.finished_record(id, Ok(()))?;
            }
            let written = store.write(batch)?;
            let id = p.id;
            let stored = store.get_document(&p.tenant, id)?;
            debug_assert!(written.entries.len() == p.chunks.len());
            stored.ok_or_else(|| StoreError::NotFound(format!("document {id}")))
        })
        .await?;
        if let Some(id) = job {
            self.jobs().mark(id, &Ok(()));
        }
        Ok(record)
    }

    /// A document of this tenant; another tenant's is reported as absent.
    pub async fn get(&self, tenant: &str, id: &str) -> Result<Document, MemoryError> {
        let missing = || MemoryError::NotFound(format!("document {id}"));
        let ulid: Ulid = id.parse().map_err(|_| missing())?;
        let (store, tenant) = (self.memory.store().clone(), tenant.to_owned());
        blocking(move || store.get_document(&tenant, ulid)).await?.ok_or_else(missing)
    }

    /// The tenant's documents, oldest first; only one user's (or, with "", the shared
    /// ones) when `user_id` is given.
    pub async fn list(&self, tenant: &str, user_id: Option<String>) -> Result<Vec<Document>, MemoryError> {
        let (store, tenant) = (self.memory.store().clone(), tenant.to_owned());
        let docs = blocking(move || store.list_documents(&tenant)).await?;
        Ok(docs.into_iter().filter(|d| user_id.as_deref().is_none_or(|u| document_user(d) == u)).collect())
    }

    /// Deletes a document and its chunks; a document still being ingested has its job
    /// cancelled, and nothing of it is written.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<(), MemoryError> {
        let missing = || MemoryError::NotFound(format!("document {id}"));
        let ulid: Ulid = id.parse().map_err(|_| missing())?;
        self.jobs().cancel(tenant, None, Some(ulid));
        let (store, tenant) = (self.memory.store().clone(), tenant.to_owned());
        if blocking(move || store.delete_document(&tenant, ulid)).await? {
            Ok(())
        } else {
            Err(missing())
        }
    }
}

/// The id of a document record as a ULID.
pub fn document_id(doc: &Document) -> Option<Ulid> {
    ulid_from_bytes(doc.id.as_ref())
}
