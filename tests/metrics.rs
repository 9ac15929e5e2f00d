//! `GET /metrics` on the real server, read by Prometheus's own text parser (the
//! `prometheus_client` Python package of the test venv, run through ENGRAM_PYTHON): the
//! exposition parses, the counters move as requests are made, and no label carries a
//! user, tenant, session or memory id.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::server::Server;
use serde_json::json;

const ACME: Option<&str> = Some("acme-key");

/// Parses the exposition with prometheus_client; prints each sample as JSON
/// `[name, labels, value]`. It sends no API key: a scraper holds none, and the
/// exposition says nothing a key protects.
const PARSE: &str = r#"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
text = urllib.request.urlopen(sys.argv[1] + "/metrics").read().decode()
out = []
for family in text_string_to_metric_families(text):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

/// Every sample of a scrape, keyed by name and sorted labels.
fn scrape(server: &Server) -> HashMap<String, f64> {
    let python = std::env::var("ENGRAM_PYTHON")
        .expect("ENGRAM_PYTHON names the venv's python with prometheus_client; run the tests with `make test`");
    let out = Command::new(python).args(["-c", PARSE, &server.base]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let samples: Vec<(String, HashMap<String, String>, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    samples
        .into_iter()
        .map(|(name, labels, value)| {
            let mut labels: Vec<String> = labels.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            (format!("{name}{{{}}}", labels.join(",")), value)
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

#[test]
fn counters_move_with_requests_and_labels_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("ENGRAM_AUTH__KEYS", "acme=acme-key")]);
    server.wait_ready();
    let before = scrape(&server);

    let mut ids = Vec::new();
    for (i, user) in ["secret-user-a", "secret-user-b"].iter().enumerate() {
        let body = json!({ "user_id": user, "text": format!("Fact number {i} about the harbour.") });
        let (status, v) = server.call("POST", "/v1/memories", ACME, Some(&body));
        assert_eq!(status, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        assert_eq!(server.call("GET", &format!("/v1/memories/{id}"), ACME, None).0, 200);
    }
    let search = json!({ "user_id": "secret-user-a", "query": "harbour" });
    assert_eq!(server.call("POST", "/v1/memories/search", ACME, Some(&search)).0, 200);
    let chat = json!({ "user_id": "secret-user-a", "message": "Tell me about the harbour.", "max_tokens": 4,
        "temperature": 0, "session_id": "secret-session" });
    let (status, answer) = server.call("POST", "/v1/chat", ACME, Some(&chat));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(server.call("GET", "/v1/memories/secret-user-a", None, None).0, 401);

    let after = scrape(&server);
    let moved = |key: &str| value(&after, key) - value(&before, key);
    let requests = |route: &str, method: &str, status: u16| {
        format!("engram_http_requests_total{{method={method},route={route},status={status}}}")
    };
    assert_eq!(moved(&requests("/v1/memories", "POST", 201)), 2.0, "{after:?}");
    assert_eq!(moved(&requests("/v1/memories/{id}", "GET", 200)), 2.0, "{after:?}");
    assert_eq!(moved(&requests("/v1/memories/{id}", "GET", 401)), 1.0, "{after:?}");
    assert_eq!(moved(&requests("/v1/memories/search", "POST", 200)), 1.0, "{after:?}");
    assert_eq!(moved(&requests("/v1/chat", "POST", 200)), 1.0, "{after:?}");
    let latency = "engram_http_request_duration_seconds_count{method=POST,route=/v1/memories/search,status=200}";
    assert_eq!(moved(latency), 1.0, "{after:?}");
    // Retrieval stages: the search and the chat turn's retrieval each time all three.
    for stage in ["dense", "lexical", "fusion"] {
        assert!(moved(&format!("engram_retrieval_seconds_count{{stage={stage}}}")) >= 2.0, "{stage}: {after:?}");
    }
    // The chat model's figures.
    let generated = answer["usage"]["completion_tokens"].as_f64().unwrap();
    assert_eq!(moved("engram_generation_tokens_total{}"), generated, "{after:?}");
    assert_eq!(moved("engram_generation_first_token_seconds_count{}"), 1.0, "{after:?}");
    assert!(moved("engram_embedder_batch_texts_count{}") >= 3.0, "{after:?}");
    // Gauges read at scrape time.
    assert_eq!(value(&after, "engram_store_entries{kind=fact}"), 2.0, "{after:?}");
    assert_eq!(value(&after, "engram_store_entries{kind=episodic}"), 1.0, "{after:?}");
    assert_eq!(value(&after, "engram_store_sessions{}"), 1.0, "{after:?}");
    assert!(value(&after, "engram_process_resident_memory_bytes{}") > 50e6, "{after:?}");
    assert_eq!(value(&after, "engram_model_queue_depth{model=generator}"), 0.0, "{after:?}");

    // No label names a user, a session or a memory.
    let secrets: Vec<&str> =
        ["secret-user", "secret-session"].into_iter().chain(ids.iter().map(String::as_str)).collect();
    for key in after.keys() {
        assert!(!secrets.iter().any(|s| key.contains(s)), "{key}");
    }
    // An unknown path is one route label, whatever the path.
    for path in ["/nope/1", "/nope/2", "/v1/memories/a/b/c"] {
        assert_eq!(server.call("GET", path, ACME, None).0, 404);
    }
    let last = scrape(&server);
    assert!(last.keys().all(|k| !k.contains("/nope")), "{last:?}");
}

/// A caller's W3C `traceparent` is carried into the log lines of its request (the
/// access line at least); a malformed one is ignored, never refused.
#[test]
fn a_traceparent_reaches_the_log_lines_of_its_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("ENGRAM_MODEL__GENERATOR", "")]);
    server.wait_ready();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let send = |traceparent: &str| {
        let res = ureq::get(&format!("{}/v1/models", server.base)).set("traceparent", traceparent).call();
        res.map(|r| r.status()).unwrap_or_else(|e| panic!("{e}"))
    };
    server.drain_log();
    assert_eq!(send(&format!("00-{trace}-00f067aa0ba902b7-01")), 200);
    let line = server.wait_log(trace, std::time::Duration::from_secs(5)).expect("a log line with the trace id");
    assert_eq!(line["span"]["trace_id"], trace, "{line}");
    assert_eq!(line["span"]["parent_span_id"], "00f067aa0ba902b7", "{line}");
    assert_eq!(send("00-not-a-trace-01"), 200);
    let access =
        server.wait_log("finished processing request", std::time::Duration::from_secs(5)).expect("access line");
    assert!(access["span"].get("trace_id").is_none(), "{access}");
}
