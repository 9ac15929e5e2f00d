//! `/v1/documents` and `/v1/jobs/{id}`: ingesting documents into the tenant's knowledge
//! base (JSON text or a multipart file upload), listing, reading and deleting them, and
//! following the jobs that ingest large ones. Every call is scoped to the caller's tenant.

use std::sync::Arc;

use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Tenant;
use super::error::{ApiError, ApiJson};
use super::memories::rfc3339;
use super::AppState;
use crate::memory::documents::{document_id, document_user, Documents, ExtractError, Ingested, JobView, NewDocument};
use crate::store::records::{Document, DocumentStatus};

/// A document as the API shows it.
fn document_json(d: &Document) -> Value {
    let status = match d.status() {
        DocumentStatus::Ready => "ready",
        DocumentStatus::Pending => "pending",
        DocumentStatus::Failed => "failed",
        DocumentStatus::Unspecified => "unspecified",
    };
    json!({
        "id": document_id(d).map(|u| u.to_string()),
        "title": d.title,
        "source_name": (!d.source_name.is_empty()).then_some(&d.source_name),
        "mime": d.mime,
        "user_id": document_user(d),
        "metadata": serde_json::from_str::<Value>(&d.metadata_json).unwrap_or_else(|_| json!({})),
        "status": status,
        "chunks": d.chunk_ids.len(),
        "created_at": rfc3339(d.created_at_ms),
        "error": (!d.error.is_empty()).then_some(&d.error),
    })
}

fn job_json(j: &JobView) -> Value {
    json!({
        "id": j.id.to_string(),
        "status": j.status.name(),
        "progress": { "done": j.done, "total": j.total },
        "document_id": j.document_id.to_string(),
        "error": j.error,
    })
}

/// The JSON form of an upload: the text itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDocument {
    title: String,
    text: String,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    user_id: Option<String>,
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

/// `POST /v1/documents`: 201 with the document, 200 when the same text was already
/// ingested, 202 with a job for a large document.
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
        Ingested::Stored(d) => (StatusCode::CREATED, Json(document_json(&d))).into_response(),
        Ingested::Existing(d) => (StatusCode::OK, Json(document_json(&d))).into_response(),
        Ingested::Started(j) => {
            let body = json!({ "job_id": j.id.to_string(), "document_id": j.document_id.to_string(), "status": j.status.name() });
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
    })
}

/// Filters of `GET /v1/documents`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    user_id: Option<String>,
}

/// `GET /v1/documents`: the tenant's documents, optionally one user's.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let docs = state.ready_documents()?.list(&tenant, q.user_id).await?;
    Ok(Json(json!({ "data": docs.iter().map(document_json).collect::<Vec<_>>() })))
}

/// `GET /v1/documents/{id}`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(document_json(&state.ready_documents()?.get(&tenant, &id).await?)))
}

/// `DELETE /v1/documents/{id}`: the document and all its chunks; 204.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.ready_documents()?.delete(&tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/jobs/{id}`: a document job's status and progress.
pub async fn job(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(job_json(&state.ready_documents()?.job(&tenant, &id)?)))
}
