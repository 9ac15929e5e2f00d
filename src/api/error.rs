//! The one error shape of the API and every mapping from the layers' errors to HTTP.
//!
//! ```json
//! {"error": {"code": "invalid_request", "type": "invalid_request_error",
//!            "param": "messages[0].content", "message": "..."}}
//! ```
//!
//! `code` is engram's machine-readable reason; `type` and `param` are the fields
//! OpenAI's clients read (`param` names the offending request field, or is null).

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::memory::documents::ExtractError;
use crate::memory::service::MemoryError;
use crate::model::EngineError;
use crate::store::StoreError;

/// The body of every error response (documented once, referenced by every route).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// engram's machine-readable reason.
    #[schema(value_type = ErrorCode)]
    pub code: &'static str,
    /// OpenAI's error type for the status, read by OpenAI's client libraries.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "invalid_request_error")]
    pub kind: &'static str,
    /// The request field at fault (`messages[0].content`), or null.
    #[schema(required = true)]
    pub param: Option<String>,
    /// A sentence for people, naming what is wrong.
    pub message: String,
}

/// Every `code` an error can carry (schema only: the code is chosen by [`code_for`] and
/// the handlers).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Timeout,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    Overloaded,
    Unavailable,
    Internal,
}

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), param: None }
    }
    /// The same error, naming the request field at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    /// A 400 about one field: the message starts with its name, and `param` names it.
    pub fn invalid_field(field: &str, message: impl std::fmt::Display) -> Self {
        Self::bad_request(format!("{field}: {message}")).with_param(field)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    /// The error as its JSON body (also sent as the event that ends a failed stream).
    pub fn into_body(self) -> ErrorResponse {
        ErrorResponse {
            error: ErrorDetail {
                code: self.code,
                kind: openai_type(self.status),
                param: self.param,
                message: self.message,
            },
        }
    }
}

/// The machine-readable code for a status, used when a layer below our handlers
/// (routing, body limit, timeout) produced the error.
pub fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "invalid_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
        StatusCode::TOO_MANY_REQUESTS => "overloaded",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_client_error() => "invalid_request",
        _ => "internal",
    }
}

/// OpenAI's error `type` for a status.
fn openai_type(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::FORBIDDEN => "permission_error",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        s if s.is_client_error() => "invalid_request_error",
        _ => "server_error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        }
        let status = self.status;
        let mut response = (status, axum::Json(self.into_body())).into_response();
        // Overload and a store that cannot take writes for now (a shard without its
        // replica, a failover under way) are both worth trying again: say when.
        if matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(m) => ApiError::bad_request(m),
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            e @ StoreError::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code_for(StatusCode::SERVICE_UNAVAILABLE), e.to_string())
            }
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            EngineError::Invalid(_) => StatusCode::BAD_REQUEST,
            EngineError::Stopped(_) => StatusCode::SERVICE_UNAVAILABLE,
            EngineError::Load { .. } | EngineError::Runtime { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, code_for(status), e.to_string())
    }
}

impl From<MemoryError> for ApiError {
    fn from(e: MemoryError) -> Self {
        match e {
            MemoryError::Store(e) => e.into(),
            MemoryError::Engine(e) => e.into(),
            MemoryError::Invalid(m) => ApiError::bad_request(m),
            MemoryError::InvalidField { field, message } => ApiError::invalid_field(&field, message),
            MemoryError::TooLarge { field, message } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message).with_param(field)
            }
            MemoryError::NotFound(m) => ApiError::not_found(m),
            MemoryError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            MemoryError::NoEmbedder => ApiError::unavailable("no embedding model is configured"),
            MemoryError::Internal(m) => ApiError::internal(m),
        }
    }
}

impl From<ExtractError> for ApiError {
    fn from(e: ExtractError) -> Self {
        match e {
            ExtractError::Unsupported(m) => {
                ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", m).with_param("file")
            }
            ExtractError::Invalid(m) => ApiError::bad_request(m).with_param("file"),
            ExtractError::TooLarge(m) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", m).with_param("file")
            }
            ExtractError::Internal(m) => ApiError::internal(m),
        }
    }
}

/// A JSON request body, as axum's `Json` but refusing in the API's own terms: a body
/// that is not JSON, or does not fit the request type, is a 400 whose `param` names the
/// field at fault (found with `serde_path_to_error`); a body over the limit is a 413; a
/// body sent without a JSON content type is a 415.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        if !content_type.is_some_and(is_json_content_type) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a request body with `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(body_rejection)?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body into `T`, naming the field at fault on failure.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            // A missing field is reported at the level above it, by name.
            let param = missing_field(&inner.to_string());
            let err = ApiError::bad_request(format!("invalid JSON body: {inner}"));
            match param {
                Some(p) => err.with_param(p),
                None => err,
            }
        } else {
            ApiError::invalid_field(&path, inner)
        }
    })?;
    de.end().map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

/// `missing field `x`` → `x`.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

fn body_rejection(r: BytesRejection) -> ApiError {
    let status = r.status();
    ApiError::new(status, code_for(status), r.body_text())
}

/// `application/json` or `application/<anything>+json`, with or without parameters.
pub fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence
        .split_once('/')
        .is_some_and(|(kind, sub)| kind == "application" && (sub == "json" || sub.ends_with("+json")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Req {
        name: String,
        inner: Inner,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    #[test]
    fn a_wrong_field_is_named_in_param_and_message() {
        let err = parse_json::<Req>(br#"{"name": "x", "inner": {"count": "many"}}"#).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.param.as_deref(), Some("inner.count"));
        assert!(err.message.starts_with("inner.count: "), "{}", err.message);
        let err = parse_json::<Req>(br#"{"inner": {"count": 1}}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("name"));
        let err = parse_json::<Req>(b"{not json").unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        let err = parse_json::<Req>(br#"{"name": "x", "inner": {"count": 1}} trailing"#).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn json_content_types_are_recognised() {
        for ct in ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/vnd.x+json"]
        {
            assert!(is_json_content_type(ct), "{ct}");
        }
        for ct in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
            assert!(!is_json_content_type(ct), "{ct}");
        }
    }
}
