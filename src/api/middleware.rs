//! Cross-cutting HTTP layers: request ids, a tracing span per request, body limit,
//! timeout, CORS, a panic in a handler turned into a 500, and every error response
//! turned into the one JSON error shape.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use super::error::{code_for, ApiError};
use crate::config::ServerConfig;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps `router` in the layers every request goes through, outermost first.
pub fn apply(router: Router, config: &ServerConfig) -> Result<Router, String> {
    let trace = TraceLayer::new_for_http().make_span_with(|req: &Request<Body>| {
        let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
        tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
    });
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(trace)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(config.request_timeout_secs),
        ));
    let mut router = router.layer(DefaultBodyLimit::max(config.body_limit_bytes)).layer(layers);
    if let Some(cors) = cors(&config.cors_allowed_origins)? {
        router = router.layer(cors);
    }
    Ok(router)
}

fn cors(origins: &[String]) -> Result<Option<CorsLayer>, String> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| HeaderValue::from_str(o).map_err(|_| format!("server.cors_allowed_origins: bad origin `{o}`")))
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(tower_http::cors::Any)
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
    ))
}

/// A handler that panicked: the panic is logged (inside the request's span, with its
/// id) and the client gets a 500 in the usual shape. The process carries on.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    tracing::error!(panic = %what, "a request handler panicked");
    ApiError::internal("internal error: the request failed unexpectedly (logged on the server)").into_response()
}

/// Error responses made below our handlers (no route, wrong method, body too large,
/// timeout, malformed JSON) come as plain text or empty; rewrite them to the JSON shape,
/// keeping their message.
async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text };
    ApiError::new(status, code_for(status), message).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Bytes;
    use axum::routing::{get, post};
    use tower::ServiceExt;

    use super::*;

    fn config() -> ServerConfig {
        ServerConfig {
            bind: "127.0.0.1:0".into(),
            request_timeout_secs: 1,
            body_limit_bytes: 1024,
            shutdown_grace_secs: 1,
            stream_stall_timeout_secs: 30,
            cors_allowed_origins: vec!["https://app.example".into()],
        }
    }

    fn app() -> Router {
        let routes = Router::new()
            .route("/echo", post(|body: Bytes| async move { body }))
            .route("/slow", get(|| async { tokio::time::sleep(Duration::from_secs(5)).await }));
        apply(routes, &config()).unwrap()
    }

    async fn call(req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let res = app().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    fn error_code(body: &serde_json::Value) -> &str {
        body["error"]["code"].as_str().unwrap_or("<none>")
    }

    #[tokio::test]
    async fn oversized_body_is_413_in_the_json_shape() {
        let req = Request::post("/echo").body(Body::from(vec![b'x'; 4096])).unwrap();
        let (status, _, body) = call(req).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(error_code(&body), "payload_too_large");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    #[tokio::test]
    async fn small_body_passes_and_gets_a_request_id() {
        let req = Request::post("/echo").body(Body::from("hi")).unwrap();
        let res = app().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let id = res.headers().get(REQUEST_ID).expect("x-request-id set").to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36, "a UUID: {id}");
    }

    #[tokio::test]
    async fn a_caller_request_id_is_kept() {
        let req = Request::post("/echo").header(REQUEST_ID, "abc-123").body(Body::from("hi")).unwrap();
        let res = app().oneshot(req).await.unwrap();
        assert_eq!(res.headers().get(REQUEST_ID).unwrap(), "abc-123");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_request_times_out_with_408() {
        let (status, _, body) = call(Request::get("/slow").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(error_code(&body), "timeout");
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_json_500() {
        let routes = Router::new().route(
            "/boom",
            get(|| async {
                if true {
                    panic!("kaboom");
                }
                "unreachable"
            }),
        );
        let app = apply(routes, &config()).unwrap();
        let res = app.oneshot(Request::get("/boom").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(error_code(&body), "internal");
        assert_eq!(body["error"]["type"], "server_error");
    }

    #[tokio::test]
    async fn wrong_method_is_405_json() {
        let (status, _, body) = call(Request::get("/echo").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(error_code(&body), "method_not_allowed");
    }

    #[tokio::test]
    async fn cors_allows_only_configured_origins() {
        let preflight = |origin: &str| {
            Request::builder()
                .method("OPTIONS")
                .uri("/echo")
                .header(header::ORIGIN, origin)
                .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
                .body(Body::empty())
                .unwrap()
        };
        let (_, headers, _) = call(preflight("https://app.example")).await;
        assert_eq!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).unwrap(), "https://app.example");
        let (_, headers, _) = call(preflight("https://evil.example")).await;
        assert!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }
}
