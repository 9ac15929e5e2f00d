//! (being written) `/v1/documents` and `/v1/jobs/{id}`.

use axum::http::StatusCode;

use super::error::ApiError;

pub async fn not_yet() -> Result<(), ApiError> {
    Err(ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_implemented", "documents are being written"))
}
