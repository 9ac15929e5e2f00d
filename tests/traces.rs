//! Traces exported to an OpenTelemetry collector (`log.otlp_endpoint`): a collector
//! written here receives engram's OTLP/HTTP batches, which are decoded with the OTLP
//! protobuf definitions. A request's span continues the caller's W3C `traceparent`, the
//! work inside it hangs below it, and a collector that is down costs requests nothing.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::server::Server;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use serde_json::json;

/// A minimal OTLP/HTTP collector on a free port: answers every POST with 200 and hands
/// over its path and body.
fn collector() -> (String, mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let tx = tx.clone();
            std::thread::spawn(move || serve(stream, tx));
        }
    });
    (base, rx)
}

/// One keep-alive connection: requests with a `content-length` body, one after another.
fn serve(stream: TcpStream, tx: mpsc::Sender<(String, Vec<u8>)>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        writer
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
        let _ = tx.send((path, body));
    }
}

/// An exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
    service: String,
}

fn text(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                other => format!("{other:?}"),
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Collects spans until `done` holds of them (or 30 s pass).
fn spans_until(rx: &mpsc::Receiver<(String, Vec<u8>)>, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let mut spans = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&spans) && Instant::now() < deadline {
        let Ok((path, body)) = rx.recv_timeout(Duration::from_millis(200)) else { continue };
        assert_eq!(path, "/v1/traces");
        let export = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP protobuf export");
        for resource in export.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .map(|r| text(&r.attributes).remove("service.name").unwrap_or_default())
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Span {
                        name: span.name.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: text(&span.attributes),
                        service: service.clone(),
                    });
                }
            }
        }
    }
    spans
}

fn request_span<'a>(spans: &'a [Span], path: &str) -> Option<&'a Span> {
    spans.iter().find(|s| s.name == "request" && s.attributes.get("path").map(String::as_str) == Some(path))
}

#[test]
fn request_spans_continue_the_callers_trace_in_the_collector() {
    let (endpoint, rx) = collector();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("ENGRAM_LOG__OTLP_ENDPOINT", endpoint.as_str()),
            ("ENGRAM_LOG__SERVICE_NAME", "engram-under-test"),
            ("ENGRAM_MODEL__GENERATOR", ""),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    server.wait_ready();
    // The W3C specification's own example ids.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let added = server.post("/v1/memories", &json!({ "user_id": "ana", "text": "The ferry leaves at nine." }));
    assert_eq!(added.0, 201);
    let res = ureq::post(&format!("{}/v1/memories/search", server.base))
        .set("traceparent", &format!("00-{trace}-{caller_span}-01"))
        .send_json(json!({ "query": "When does the ferry leave?", "user_id": "ana" }))
        .unwrap();
    assert_eq!(res.status(), 200);
    // A malformed traceparent starts a trace of its own, as the specification asks.
    let res = ureq::get(&format!("{}/v1/models", server.base)).set("traceparent", "00-not-a-trace-01").call().unwrap();
    assert_eq!(res.status(), 200);

    let spans = spans_until(&rx, |s| {
        request_span(s, "/v1/memories").is_some()
            && request_span(s, "/v1/memories/search").is_some()
            && request_span(s, "/v1/models").is_some()
            && s.iter().any(|x| x.name == "memory.search" && x.trace_id == trace)
    });
    let search = request_span(&spans, "/v1/memories/search").expect("the search request's span");
    assert_eq!(search.trace_id, trace, "{search:?}");
    assert_eq!(search.parent_span_id, caller_span, "{search:?}");
    assert_eq!(search.service, "engram-under-test");
    assert_eq!(search.attributes.get("method").map(String::as_str), Some("POST"));
    // The retrieval inside it is its child, in the same trace.
    let inner = spans.iter().find(|s| s.name == "memory.search" && s.trace_id == trace).unwrap();
    assert_eq!(inner.parent_span_id, search.span_id, "{inner:?}");

    let models = request_span(&spans, "/v1/models").unwrap();
    assert!(models.trace_id != trace && models.trace_id != "0".repeat(32), "{models:?}");
    assert_eq!(models.parent_span_id, "", "a new trace has no parent: {models:?}");
    // The request without a traceparent got a trace of its own too.
    let add = request_span(&spans, "/v1/memories").expect("the add request's span");
    assert!(add.trace_id != trace && add.trace_id != models.trace_id, "{add:?}");
    assert_eq!(add.parent_span_id, "", "{add:?}");
    let (clean, _) = server.terminate();
    assert!(clean);
}

#[test]
fn a_collector_that_is_down_costs_requests_nothing() {
    // A port that was free a moment ago: nothing listens there.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("ENGRAM_LOG__OTLP_ENDPOINT", closed.as_str()),
            ("ENGRAM_MODEL__GENERATOR", ""),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    server.wait_ready();
    // The failed exports are said in the log, not swallowed.
    assert!(server.wait_log("BatchSpanProcessor.ExportError", Duration::from_secs(15)).is_some());
    for i in 0..20 {
        let (status, body) = server.post("/v1/memories", &json!({ "user_id": "ana", "text": format!("fact {i}") }));
        assert_eq!(status, 201, "{body}");
    }
    let (status, _, _) = server.get("/healthz");
    assert_eq!(status, 200);
    let started = Instant::now();
    let (clean, _) = server.terminate();
    assert!(clean, "exits cleanly although its last spans cannot be sent");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
}

#[test]
fn a_collector_that_never_answers_holds_up_neither_requests_nor_shutdown() {
    // Accepts connections and reads nothing: every export hangs until its timeout.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let held: Vec<TcpStream> = listener.incoming().map_while(Result::ok).collect();
        drop(held);
    });
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("ENGRAM_LOG__OTLP_ENDPOINT", endpoint.as_str()),
            ("ENGRAM_MODEL__GENERATOR", ""),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            // Longer than the test's bound below: shutdown must not wait for the export.
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "60000"),
        ],
    );
    server.wait_ready();
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        let (status, body) = server.post("/v1/memories", &json!({ "user_id": "ana", "text": format!("fact {i}") }));
        assert_eq!(status, 201, "{body}");
        slowest = slowest.max(started.elapsed());
    }
    assert!(slowest < Duration::from_secs(2), "a request waited on the collector: {slowest:?}");
    let started = Instant::now();
    let (clean, _) = server.terminate();
    assert!(clean);
    // The last export gets a bounded wait (5 s), then the process leaves without it.
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
}

#[test]
fn an_endpoint_that_cannot_work_is_refused_at_start() {
    for endpoint in ["not a url", "https://collector.example:4318"] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(common::engram_bin())
            .args(["serve", "--bind", "127.0.0.1:0", "--device", "cpu", "--data-dir"])
            .arg(dir.path())
            .env("ENGRAM_LOG__OTLP_ENDPOINT", endpoint)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("`{endpoint}` was accepted: the server started");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!status.success(), "{endpoint}");
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        assert!(stderr.contains("log.otlp_endpoint"), "{endpoint}: {stderr}");
    }
}
