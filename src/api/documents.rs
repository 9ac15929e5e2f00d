//! `/v1/documents` and `/v1/jobs/{id}`: ingesting documents into the tenant's knowledge
//! base (JSON text or a multipart file upload), listing, reading and deleting them, and
//! following the jobs that ingest large ones. Every call is scoped to the caller's tenant.

use std::sync::Arc;

use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::Tenant;
use super::error::{ApiError, ApiJson, ErrorResponse};
use super::memories::{metadata_of, rfc3339};
use super::AppState;
use crate::memory::documents::{document_id, document_user, Documents, ExtractError, Ingested, NewDocument};
use crate::store::records::{Document, DocumentStatus};

/// A document's state.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum DocumentState {
    Ready,
    Pending,
    Failed,
    Unspecified,
}

/// A document as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentView {
    #[schema(required = true)]
    pub id: Option<String>,
    pub title: String,
    /// The uploaded file's name.
    #[schema(required = true)]
    pub source_name: Option<String>,
    pub mime: String,
    /// The user it belongs to; empty for the tenant's shared knowledge.
    pub user_id: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    #[schema(value_type = DocumentState)]
    pub status: &'static str,
    /// How many knowledge memories it was cut into.
    pub chunks: usize,
    #[schema(required = true, format = DateTime)]
    pub created_at: Option<String>,
    #[schema(required = true)]
    pub error: Option<String>,
}

impl From<&Document> for DocumentView {
    fn from(d: &Document) -> Self {
        let status = match d.status() {
            DocumentStatus::Ready => "ready",
            DocumentStatus::Pending => "pending",
            DocumentStatus::Failed => "failed",
            DocumentStatus::Unspecified => "unspecified",
        };
        Self {
            id: document_id(d).map(|u| u.to_string()),
            title: d.title.clone(),
            source_name: (!d.source_name.is_empty()).then(|| d.source_name.clone()),
            mime: d.mime.clone(),
            user_id: document_user(d).to_owned(),
            metadata: metadata_of(&d.metadata_json),
            status,
            chunks: d.chunk_ids.len(),
            created_at: rfc3339(d.created_at_ms),
            error: (!d.error.is_empty()).then(|| d.error.clone()),
        }
    }
}

/// A job's state.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum JobState {
    Pending,
    Running,
    Done,
    Failed,
}

/// Chunks embedded so far, of how many.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobProgress {
    pub done: usize,
    pub total: usize,
}

/// A job ingesting a large document.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobStatusView {
    pub id: String,
    #[schema(value_type = JobState)]
    pub status: &'static str,
    pub progress: JobProgress,
    pub document_id: String,
    #[schema(required = true)]
    pub error: Option<String>,
}

/// A large document's ingestion, started (202).
#[derive(Debug, Serialize, ToSchema)]
pub struct JobStarted {
    pub job_id: String,
    pub document_id: String,
    #[schema(value_type = JobState)]
    pub status: &'static str,
}

/// The tenant's documents.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentList {
    pub data: Vec<DocumentView>,
}

/// The multipart form of an upload (schema only; read by [`from_multipart`]).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DocumentUpload {
    /// A PDF, HTML, Markdown or plain-text file.
    #[schema(format = Binary, value_type = String)]
    file: Vec<u8>,
    /// Default: the file's name without its extension.
    title: Option<String>,
    user_id: Option<String>,
    /// A JSON object, as text.
    metadata: Option<String>,
}

/// The JSON form of an upload: the text itself.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDocument {
    title: String,
    text: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// The user it belongs to; without one it is the tenant's shared knowledge.
    #[serde(default)]
    user_id: Option<String>,
    /// `text/plain` (default), `text/markdown`, or `text/html` (markup stripped).
    #[serde(default)]
    mime: Option<String>,
}

/// Reads a multipart upload: a `file` field, optional `title`, `user_id`, `metadata`.
async fn from_multipart(documents: &Documents, mut form: Multipart) -> Result<NewDocument, ApiError> {
    let bad = |e: axum::extract::multipart::MultipartError| ApiError::bad_request(format!("multipart body: {e}"));
    let mut doc = NewDocument { metadata: Value::Null, ..Default::default() };
    let mut file: Option<(String, Option<String>, Vec<u8>)> = None;
    while let Some(field) = form.next_field().await.map_err(bad)? {
        match field.name().unwrap_or_default() {
            "file" => {
                let name = field.file_name().unwrap_or_default().to_owned();
                let content_type = field.content_type().map(str::to_owned);
                file = Some((name, content_type, field.bytes().await.map_err(bad)?.to_vec()));
            }
            "title" => doc.title = field.text().await.map_err(bad)?,
            "user_id" => doc.user_id = field.text().await.map_err(bad)?,
            "metadata" => {
                let text = field.text().await.map_err(bad)?;
                doc.metadata = serde_json::from_str(&text)
                    .map_err(|e| ApiError::bad_request(format!("metadata: not JSON ({e})")))?;
            }
            other => return Err(ApiError::bad_request(format!("unknown multipart field `{other}`"))),
        }
    }
    let (name, content_type, bytes) = file.ok_or_else(|| ApiError::bad_request("file is required"))?;
    let (mime, text) = documents.extract(&name, content_type.as_deref(), bytes).await?;
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(format!("text: no text could be read from file `{name}`")));
    }
    if doc.title.trim().is_empty() {
        doc.title = name.rsplit_once('.').map_or(name.as_str(), |(stem, _)| stem).to_owned();
    }
    doc.mime = mime.to_owned();
    doc.source_name = name;
    doc.text = text;
    Ok(doc)
}

/// Reads a JSON upload; `mime: text/html` text is stripped of its markup like an upload.
async fn from_json(documents: &Documents, req: CreateDocument) -> Result<NewDocument, ApiError> {
    if req.title.trim().is_empty() {
        return Err(ApiError::bad_request("title is empty"));
    }
    let mime = req.mime.unwrap_or_else(|| "text/plain".to_owned());
    let text = if mime == "text/html" {
        documents.html_text(req.text).await.map_err(|e| match e {
            ExtractError::Internal(_) => ApiError::from(e),
            _ => ApiError::from(e).with_param("text"),
        })?
    } else {
        req.text
    };
    Ok(NewDocument {
        title: req.title,
        text,
        source_name: String::new(),
        mime,
        user_id: req.user_id.unwrap_or_default(),
        metadata: req.metadata.unwrap_or(Value::Null),
    })
}

/// Ingests a document into the knowledge base: 201 with the document, 200 when the same
/// text was already ingested, 202 with a job for a large document.
#[utoipa::path(post, operation_id = "create_document", path = "/v1/documents", tag = "documents",
    request_body(content((CreateDocument = "application/json"), (DocumentUpload = "multipart/form-data"))),
    responses(
        (status = 201, description = "Stored", body = DocumentView),
        (status = 200, description = "The same text was already ingested", body = DocumentView),
        (status = 202, description = "A large document: ingested by a job", body = JobStarted),
        (status = 413, description = "Over the upload or text limit", body = ErrorResponse),
        (status = 415, description = "A file type engram cannot read", body = ErrorResponse),
))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    req: Request,
) -> Result<Response, ApiError> {
    let documents = state.ready_documents()?;
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("multipart/form-data"));
    let new = if multipart {
        let form = Multipart::from_request(req, &state)
            .await
            .map_err(|r| ApiError::new(r.status(), "invalid_request", r.body_text()))?;
        from_multipart(documents, form).await?
    } else {
        let ApiJson(body) = ApiJson::<CreateDocument>::from_request(req, &state).await?;
        from_json(documents, body).await?
    };
    Ok(match documents.ingest(&tenant, new).await? {
        Ingested::Stored(d) => (StatusCode::CREATED, Json(DocumentView::from(&d))).into_response(),
        Ingested::Existing(d) => (StatusCode::OK, Json(DocumentView::from(&d))).into_response(),
        Ingested::Started(j) => {
            let body = JobStarted {
                job_id: j.id.to_string(),
                document_id: j.document_id.to_string(),
                status: j.status.name(),
            };
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
    })
}

/// Filters of `GET /v1/documents`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// One user's documents.
    user_id: Option<String>,
}

/// The tenant's documents, optionally one user's.
#[utoipa::path(get, operation_id = "list_documents", path = "/v1/documents", tag = "documents", params(ListQuery), responses(
    (status = 200, description = "The documents", body = DocumentList),
))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Query(q): Query<ListQuery>,
) -> Result<Json<DocumentList>, ApiError> {
    let docs = state.ready_documents()?.list(&tenant, q.user_id).await?;
    Ok(Json(DocumentList { data: docs.iter().map(DocumentView::from).collect() }))
}

/// Reads a document.
#[utoipa::path(get, operation_id = "get_document", path = "/v1/documents/{id}", tag = "documents", params(("id" = String, Path, description = "The document's id")),
    responses(
        (status = 200, description = "The document", body = DocumentView),
        (status = 404, description = "No such document in the caller's tenant", body = ErrorResponse),
))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<DocumentView>, ApiError> {
    Ok(Json(DocumentView::from(&state.ready_documents()?.get(&tenant, &id).await?)))
}

/// Deletes a document and all its chunks.
#[utoipa::path(delete, operation_id = "delete_document", path = "/v1/documents/{id}", tag = "documents", params(("id" = String, Path, description = "The document's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such document in the caller's tenant", body = ErrorResponse),
))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.ready_documents()?.delete(&tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A document job's status and progress.
#[utoipa::path(get, operation_id = "get_job", path = "/v1/jobs/{id}", tag = "documents", params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = JobStatusView),
        (status = 404, description = "No such job in the caller's tenant", body = ErrorResponse),
))]
pub async fn job(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<JobStatusView>, ApiError> {
    let j = state.ready_documents()?.job(&tenant, &id)?;
    Ok(Json(JobStatusView {
        id: j.id.to_string(),
        status: j.status.name(),
        progress: JobProgress { done: j.done, total: j.total },
        document_id: j.document_id.to_string(),
        error: j.error,
    }))
}
