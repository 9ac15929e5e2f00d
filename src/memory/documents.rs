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

use std::sync::Arc;

use serde_json::Value;
use ulid::Ulid;

use super::chunking::{chunk_text, Chunk, ChunkParams};
use super::extract::{Extractor, Format, Origin};
use super::ingest_jobs::JobBook;
pub use super::ingest_jobs::{JobStatus, JobView};
use super::service::{blocking, MemoryError, MemoryService};
use crate::model::Embedder;
use crate::store::records::memory_entry::Source;
use crate::store::records::{
    now_ms, ulid_from_bytes, Document, DocumentSource, DocumentStatus, IngestJob, Kind, MemoryEntry, Scope,
};
use crate::store::NewEntry;

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
}

/// See the module documentation.
#[derive(Clone)]
pub struct Documents {
    memory: MemoryService,
    embedder: Embedder,
    jobs: JobBook,
    extractor: Extractor,
    /// Serialises "is this text already here?" with the write or job start that follows,
    /// so that two identical uploads at once still make one document.
    admit: Arc<tokio::sync::Mutex<()>>,
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
        Self {
            jobs: JobBook::new(memory.store().clone()),
            memory,
            embedder,
            extractor,
            admit: Arc::new(tokio::sync::Mutex::new(())),
        }
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
        if doc.text.trim().is_empty() {
            return Err(MemoryError::Invalid("text is empty".into()));
        }
        if doc.user_id.len() > MAX_USER_ID_BYTES {
            return Err(MemoryError::Invalid(format!("user_id is longer than {MAX_USER_ID_BYTES} bytes")));
        }
        if !matches!(doc.metadata, Value::Null | Value::Object(_)) {
            return Err(MemoryError::Invalid("metadata must be a JSON object".into()));
        }
        let hash = *blake3::hash(doc.text.as_bytes()).as_bytes();
        let _admitted = self.admit.lock().await;
        if let Some(found) = self.find_existing(tenant, &doc.user_id, hash).await? {
            return Ok(found);
        }
        let (doc, chunks) = self.chunk(doc).await?;
        let prepared = Prepared { id: self.memory.store().new_id(), tenant: tenant.to_owned(), doc, hash, chunks };
        if prepared.chunks.len() <= SYNC_CHUNK_LIMIT {
            return Ok(Ingested::Stored(self.embed_and_store(prepared, |_| {}).await?));
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
        .map_err(|e| MemoryError::Invalid(format!("chunking failed: {e}")))
    }

    /// The tenant+user's document with this text, or the job now ingesting it.
    async fn find_existing(&self, tenant: &str, user: &str, hash: [u8; 32]) -> Result<Option<Ingested>, MemoryError> {
        let running = self.jobs.find_live(tenant, user, hash);
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
        let (jobs, total, hash) = (self.jobs.clone(), prepared.chunks.len(), prepared.hash);
        let view = blocking(move || jobs.open(record, total, hash)).await?;
        self.run_job(view.id, prepared);
        Ok(view)
    }

    /// Embeds and stores a job's document in the background, keeping the book current.
    fn run_job(&self, id: Ulid, prepared: Prepared) {
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = this.embed_and_store(prepared, |done| this.jobs.progress(id, done)).await;
            let outcome = outcome.map(|_| ()).map_err(|e| {
                tracing::warn!(job = %id, error = %e, "document job failed");
                e.to_string()
            });
            let jobs = this.jobs.clone();
            if let Err(e) = blocking(move || jobs.finish(id, outcome)).await {
                tracing::warn!(job = %id, error = %e, "cannot record the end of a document job");
            }
        });
    }

    /// Takes up the jobs a previous run left on record: unfinished ones start again (or
    /// are closed, when their document got written just before the stop), finished ones
    /// stay reportable until their retention ends. Call once, at start.
    pub async fn resume_jobs(&self) -> Result<(), MemoryError> {
        let (jobs, store) = (self.jobs.clone(), self.memory.store().clone());
        let records = blocking(move || {
            jobs.forget_expired()?;
            store.list_jobs()
        })
        .await?;
        for record in records {
            let hash = *blake3::hash(record.text.as_bytes()).as_bytes();
            let view = self.jobs.admit(&record, hash);
            if view.status != JobStatus::Pending {
                continue;
            }
            let (tenant, user_id) =
                record.scope.as_ref().map(|s| (s.tenant.clone(), s.user_id.clone())).unwrap_or_default();
            let (store, doc_id) = (self.memory.store().clone(), view.document_id);
            let written = blocking(move || store.get_document(&tenant, doc_id)).await?;
            if written.is_some_and(|d| d.status() == DocumentStatus::Ready) {
                let jobs = self.jobs.clone();
                blocking(move || jobs.finish(view.id, Ok(()))).await?;
                continue;
            }
            let doc = NewDocument {
                title: record.title,
                text: record.text,
                source_name: record.source_name,
                mime: record.mime,
                user_id,
                metadata: serde_json::from_str(&record.metadata_json).unwrap_or(Value::Null),
            };
            let (doc, chunks) = self.chunk(doc).await?;
            let tenant = record.scope.map(|s| s.tenant).unwrap_or_default();
            tracing::info!(job = %view.id, chunks = chunks.len(), "resuming a document job left unfinished");
            self.run_job(view.id, Prepared { id: doc_id, tenant, doc, hash, chunks });
        }
        Ok(())
    }

    /// A job of this tenant; another tenant's is reported as absent.
    pub fn job(&self, tenant: &str, id: &str) -> Result<JobView, MemoryError> {
        self.jobs.get(tenant, id)
    }

    /// Embeds the chunks (in batches, reporting how many are done), then stores them and
    /// the document record; on failure nothing of the document remains.
    async fn embed_and_store(&self, p: Prepared, progress: impl Fn(usize)) -> Result<Document, MemoryError> {
        let mut vectors = Vec::with_capacity(p.chunks.len());
        for batch in p.chunks.chunks(EMBED_BATCH) {
            let out = self.embedder.embed(batch.iter().map(|c| c.text.clone()).collect()).await?;
            vectors.extend(out.vectors);
            progress(vectors.len());
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
        let store = self.memory.store().clone();
        let (record, written) = blocking(move || {
            let outcomes = store.put_entries(entries)?;
            // A chunk whose text the store already holds (in the same scope) resolves to
            // that entry; list each id once.
            let mut ids: Vec<Ulid> = Vec::with_capacity(outcomes.len());
            for o in &outcomes {
                if !ids.contains(&o.id) {
                    ids.push(o.id);
                }
            }
            record.chunk_ids = ids.iter().map(|id| id.to_bytes().to_vec().into()).collect();
            let created: Vec<Ulid> = outcomes.iter().filter(|o| o.created).map(|o| o.id).collect();
            if let Err(e) = store.put_document(&record) {
                let _ = store.delete_entries(&created);
                return Err(e);
            }
            let mut written: Vec<MemoryEntry> = Vec::with_capacity(created.len());
            for id in created {
                written.extend(store.get_entry(id)?);
            }
            Ok((record, written))
        })
        .await?;
        self.memory.note_written(&written);
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

    /// Deletes a document and its chunks, from the store, the vector index and the
    /// lexical index.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<(), MemoryError> {
        let missing = || MemoryError::NotFound(format!("document {id}"));
        let ulid: Ulid = id.parse().map_err(|_| missing())?;
        let (store, tenant) = (self.memory.store().clone(), tenant.to_owned());
        let (existed, points) = blocking(move || {
            // The points must be read before the entries go: the lexical index is keyed by them.
            let mut points = Vec::new();
            for chunk in store.document_exclusive_chunks(&tenant, ulid)? {
                points.extend(store.get_entry(chunk)?.map(|e| e.point_id));
            }
            Ok((store.delete_document(&tenant, ulid)?, points))
        })
        .await?;
        self.memory.note_deleted(&points);
        if existed {
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
