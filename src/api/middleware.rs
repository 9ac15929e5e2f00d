//! Cross-cutting HTTP layers: request ids, a tracing span per request, body limit,
//! timeout, CORS, a panic in a handler turned into a 500, and every error response
//! turned into the one JSON error shape.

use std::sync::Arc;
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
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::error::{code_for, ApiError};
use crate::config::ServerConfig;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// W3C Trace Context's header: `version-traceid-parentid-flags`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// W3C Trace Context's companion header: vendors' own key-value pairs.
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A caller's place in its trace, from a well-formed `traceparent`.
#[derive(Debug, PartialEq)]
pub struct TraceParent {
    pub trace_id: String,
    pub parent_id: String,
    /// The caller recorded its span (flag bit 0).
    pub sampled: bool,
}

impl TraceParent {
    /// The caller's span as OpenTelemetry's remote parent, with the request's `tracestate`.
    fn remote_context(&self, tracestate: Option<&str>) -> opentelemetry::Context {
        use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
        let flags = if self.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let state = tracestate.and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
        let span = SpanContext::new(
            TraceId::from_hex(&self.trace_id).unwrap_or(TraceId::INVALID),
            SpanId::from_hex(&self.parent_id).unwrap_or(SpanId::INVALID),
            flags,
            true,
            state,
        );
        opentelemetry::Context::new().with_remote_span_context(span)
    }
}

/// The caller's trace context in a well-formed `traceparent` value (W3C Trace Context,
/// level 1): version `00` with exactly four fields, or a later version with at least
/// four; lowercase hex of the right lengths; neither id all zeros; version `ff` is
/// invalid. Anything else is ignored, as the specification asks, never refused. The
/// one reading of the header: both the log lines and the exported spans use it.
pub fn trace_context(value: &str) -> Option<TraceParent> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let [version, trace, parent, flags, ..] = parts.as_slice() else { return None };
    let version_ok = hex(version, 2) && *version != "ff" && (*version != "00" || parts.len() == 4);
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    (version_ok && hex(trace, 32) && hex(parent, 16) && hex(flags, 2) && !zero(trace) && !zero(parent)).then(|| {
        TraceParent {
            trace_id: trace.to_string(),
            parent_id: parent.to_string(),
            sampled: u8::from_str_radix(flags, 16).is_ok_and(|f| f & 1 == 1),
        }
    })
}

/// Wraps `router` in the layers every request goes through, outermost first. `open`:
/// no API keys are configured, so the browser guard applies (see [`BrowserGuard`]).
pub fn apply(router: Router, config: &ServerConfig, open: bool) -> Result<Router, String> {
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &Request<Body>| {
            let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
            // A caller's W3C trace context ties this request's log lines to its trace.
            let header = |name: HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
            let caller = header(TRACEPARENT).and_then(trace_context);
            let span = tracing::info_span!(
                "request",
                method = %req.method(),
                path = %req.uri().path(),
                request_id = %id,
                trace_id = caller.as_ref().map(|c| c.trace_id.as_str()),
                parent_span_id = caller.as_ref().map(|c| c.parent_id.as_str())
            );
            // Exported spans (with `log.otlp_endpoint`) continue the caller's trace; without
            // an exporter this does nothing.
            if let Some(caller) = &caller {
                let _ = span.set_parent(caller.remote_context(header(TRACESTATE)));
            }
            span
        })
        // One line per request (an access log), carrying the span's ids.
        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO));
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(trace)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(BrowserGuard { open, allowed_origins: config.cors_allowed_origins.clone() }),
            guard_browsers,
        ))
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

/// In open mode (no API keys) anyone who can reach the port is the tenant, and the
/// server listens on loopback only. But a web page in the user's browser can reach
/// loopback too: a multipart or `text/plain` POST is a CORS "simple" request that the
/// browser sends without asking, and DNS rebinding lets a page read the answers (the
/// page's own host name then resolves to 127.0.0.1). So in open mode:
/// - `Host` must be a loopback name (`localhost`, `*.localhost`, `127.x.x.x`, `[::1]`),
///   which defeats rebinding: the browser sends the attacker's host name;
/// - a browser request from another site is refused: an `Origin` other than this server's
///   own (or one listed in `server.cors_allowed_origins`), or `Sec-Fetch-Site:
///   cross-site`/`same-site` without such an origin.
///
/// Clients that are not browsers send neither header and are unaffected. With API keys
/// the guard is off: a page cannot know the key.
struct BrowserGuard {
    open: bool,
    allowed_origins: Vec<String>,
}

impl BrowserGuard {
    fn check(&self, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
        if !self.open {
            return Ok(());
        }
        let text = |name: header::HeaderName| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
        let host = text(header::HOST);
        if let Some(host) = host {
            if !is_loopback_host(host) {
                return Err(ApiError::forbidden(format!(
                    "Host `{host}` is refused: without API keys engram answers only to loopback names \
                     (localhost, 127.0.0.1, [::1]); configure auth.keys to serve other names"
                )));
            }
        }
        let origin = text(header::ORIGIN);
        let listed = origin.is_some_and(|o| self.allowed_origins.iter().any(|a| a == "*" || a == o));
        let same_origin = origin.zip(host).is_some_and(|(o, h)| o == format!("http://{h}"));
        if let Some(origin) = origin.filter(|_| !(listed || same_origin)) {
            return Err(ApiError::forbidden(format!(
                "requests from web pages of other origins (`{origin}`) are refused without API keys; \
                 list the origin in server.cors_allowed_origins, or configure auth.keys"
            )));
        }
        let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if matches!(site, Some("cross-site" | "same-site")) && !listed {
            return Err(ApiError::forbidden(
                "cross-site browser requests are refused without API keys; configure auth.keys",
            ));
        }
        Ok(())
    }
}

/// `localhost`, `*.localhost`, an IPv4 loopback address or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((inside, port)) if port.is_empty() || port.starts_with(':') => inside,
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn guard_browsers(
    axum::extract::State(guard): axum::extract::State<Arc<BrowserGuard>>,
    req: Request,
    next: Next,
) -> Response {
    match guard.check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            tracing::warn!(reason = %e.message, "browser request refused");
            e.into_response()
        }
    }
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
        apply(routes, &config(), false).unwrap()
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

    #[test]
    fn traceparent_is_read_only_when_well_formed() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ids = Some(TraceParent {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
            parent_id: "00f067aa0ba902b7".to_owned(),
            sampled: true,
        });
        assert_eq!(trace_context(good), ids);
        // A later version may add fields.
        assert_eq!(trace_context("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"), ids);
        // The sampled flag is bit 0; other bits are the specification's to define later.
        let unsampled = trace_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02").unwrap();
        assert!(!unsampled.sampled);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert_eq!(trace_context(bad), None, "{bad}");
        }
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
        let app = apply(routes, &config(), false).unwrap();
        let res = app.oneshot(Request::get("/boom").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(error_code(&body), "internal");
        assert_eq!(body["error"]["type"], "server_error");
    }

    #[test]
    fn loopback_host_names() {
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "app.localhost:3000",
            "127.0.0.1",
            "127.8.9.1:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "10.0.0.1",
            "[::2]",
            "[::1]x",
            "0.0.0.0",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn open_mode_refuses_other_hosts_and_cross_site_browsers() {
        let app = || {
            let routes = Router::new().route("/echo", post(|body: Bytes| async move { body }));
            apply(routes, &config(), true).unwrap()
        };
        let send = |host: &str, headers: &[(&str, &str)]| {
            let mut req = Request::post("/echo").header(header::HOST, host);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req.body(Body::from("x")).unwrap();
            async move { app().oneshot(req).await.unwrap().status() }
        };
        assert_eq!(send("127.0.0.1:8080", &[]).await, StatusCode::OK, "a plain client");
        assert_eq!(
            send("localhost:8080", &[("origin", "http://localhost:8080"), ("sec-fetch-site", "same-origin")]).await,
            StatusCode::OK
        );
        assert_eq!(send("app.example:8080", &[]).await, StatusCode::FORBIDDEN, "DNS rebinding");
        assert_eq!(send("127.0.0.1:8080", &[("origin", "https://evil.example")]).await, StatusCode::FORBIDDEN);
        assert_eq!(send("127.0.0.1:8080", &[("origin", "null")]).await, StatusCode::FORBIDDEN);
        assert_eq!(send("127.0.0.1:8080", &[("sec-fetch-site", "cross-site")]).await, StatusCode::FORBIDDEN);
        assert_eq!(
            send("127.0.0.1:8080", &[("origin", "http://localhost:3000"), ("sec-fetch-site", "same-site")]).await,
            StatusCode::FORBIDDEN
        );
        // A configured origin may call.
        assert_eq!(
            send("127.0.0.1:8080", &[("origin", "https://app.example"), ("sec-fetch-site", "cross-site")]).await,
            StatusCode::OK
        );
        // With keys, the guard is off (a page cannot know the key).
        let keyed = Router::new().route("/echo", post(|body: Bytes| async move { body }));
        let req = Request::post("/echo").header(header::HOST, "evil.example").header("origin", "https://evil.example");
        let res = apply(keyed, &config(), false).unwrap().oneshot(req.body(Body::from("x")).unwrap()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
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
