//! The guarantees attacked on the real server with the real models: an erase or a
//! delete is final even while a chat turn or an ingestion job that began before it is
//! still running; concurrent turns and imports in one session all keep their exchange;
//! oversized fields are refused naming the limit, storing nothing; in open mode a web
//! page cannot reach the API.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::server::Server;
use serde_json::{json, Value};

const KEY: Option<&str> = Some("acme-key");

fn keyed(dir: &std::path::Path, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![("ENGRAM_AUTH__KEYS", "acme=acme-key")];
    env.extend_from_slice(extra);
    let server = Server::start(dir, &env);
    server.wait_ready();
    server
}

fn chat(server: &Server, body: Value) -> Value {
    let (status, answer) = server.call("POST", "/v1/chat", KEY, Some(&body));
    assert_eq!(status, 200, "{answer}");
    answer
}

fn memories(server: &Server, user: &str) -> Vec<Value> {
    let (status, page) = server.call("GET", &format!("/v1/memories?user_id={user}&limit=100"), KEY, None);
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().unwrap().clone()
}

/// Starts a long streamed turn and returns once its first text has arrived (so the turn
/// is past retrieval and generating), with the stream to finish reading.
fn long_turn_generating(server: &Server, body: Value) -> common::server::SseReader {
    let (status, stream) = server.post_stream("/v1/chat", KEY, &body);
    assert_eq!(status, 200);
    let mut stream = stream.unwrap();
    let (name, data) = stream.next_event().expect("a first event");
    assert_eq!(name, "", "the first event is a text delta: {data}");
    stream
}

/// Reads a chat stream to its end and returns the last event.
fn last_event(mut stream: common::server::SseReader) -> (String, Value) {
    let mut last = None;
    while let Some((name, data)) = stream.next_event() {
        last = Some((name, serde_json::from_str(&data).unwrap_or(Value::Null)));
    }
    last.expect("the stream ends with an event")
}

#[test]
fn an_erase_or_delete_during_a_turn_is_final() {
    let dir = tempfile::tempdir().unwrap();
    let server = keyed(dir.path(), &[]);

    // Erase while a turn of the user generates: when the turn ends nothing of the user
    // is back — no session, no episodic memory.
    let first = chat(&server, json!({ "user_id": "ulla", "message": "My locker code is 4471.", "max_tokens": 4 }));
    let session = first["session_id"].as_str().unwrap().to_owned();
    assert_eq!(memories(&server, "ulla").len(), 1);
    let stream = long_turn_generating(
        &server,
        json!({ "user_id": "ulla", "session_id": session, "stream": true, "max_tokens": 200, "temperature": 0.7, "message": "Tell me a long story about lockers." }),
    );
    let (status, erased) = server.call("DELETE", "/v1/memories?user_id=ulla", KEY, None);
    assert_eq!(status, 200, "{erased}");
    let (name, last) = last_event(stream);
    assert_eq!(name, "error", "the write-back is refused: {last}");
    assert_eq!(last["error"]["code"], "conflict", "{last}");
    assert_eq!(server.call("GET", &format!("/v1/sessions/{session}"), KEY, None).0, 404);
    assert!(memories(&server, "ulla").is_empty(), "the erased user's data came back");
    let (_, found) =
        server.call("POST", "/v1/memories/search", KEY, Some(&json!({"query": "locker code", "user_id": "ulla"})));
    assert!(found["results"].as_array().unwrap().is_empty(), "{found}");
    // The user can start again afterwards.
    chat(&server, json!({ "user_id": "ulla", "message": "Hello again.", "max_tokens": 2 }));
    assert_eq!(memories(&server, "ulla").len(), 1);

    // Delete a session while one of its turns generates: it stays deleted, and so do
    // its memories; the user's other sessions are untouched.
    let other = chat(&server, json!({ "user_id": "vera", "message": "I grow chillies.", "max_tokens": 2 }));
    let doomed = chat(&server, json!({ "user_id": "vera", "message": "My bike is red.", "max_tokens": 2 }));
    let doomed = doomed["session_id"].as_str().unwrap().to_owned();
    let stream = long_turn_generating(
        &server,
        json!({ "user_id": "vera", "session_id": doomed, "stream": true, "max_tokens": 200, "temperature": 0.7, "message": "Describe my bike at length." }),
    );
    assert_eq!(server.call("DELETE", &format!("/v1/sessions/{doomed}"), KEY, None).0, 204);
    let (name, last) = last_event(stream);
    assert_eq!((name.as_str(), &last["error"]["code"]), ("error", &json!("conflict")), "{last}");
    assert_eq!(server.call("GET", &format!("/v1/sessions/{doomed}"), KEY, None).0, 404);
    let left = memories(&server, "vera");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["session_id"], other["session_id"]);
}

/// A document long enough to be ingested by a background job (over 32 chunks).
fn long_document(topic: &str) -> String {
    (0..60)
        .map(|i| {
            format!(
                "## Part {i}\n\nThe {topic} ledger entry {i} records {} crates of {topic} shipped on day {i}.\n",
                i * 7
            )
        })
        .collect()
}

#[test]
fn an_erase_or_delete_during_an_ingestion_job_is_final() {
    let dir = tempfile::tempdir().unwrap();
    let server = keyed(dir.path(), &[("ENGRAM_MODEL__GENERATOR", "")]);

    for (user, how) in [("wanda", "erase"), ("xena", "delete")] {
        let doc = json!({ "title": format!("{user}'s ledger"), "text": long_document(user), "user_id": user });
        let (status, started) = server.call("POST", "/v1/documents", KEY, Some(&doc));
        assert_eq!(status, 202, "{started}");
        let (job, document) = (started["job_id"].as_str().unwrap(), started["document_id"].as_str().unwrap());
        match how {
            "erase" => assert_eq!(server.call("DELETE", &format!("/v1/memories?user_id={user}"), KEY, None).0, 200),
            _ => assert_eq!(server.call("DELETE", &format!("/v1/documents/{document}"), KEY, None).0, 204),
        }
        // Give the job every chance to finish and write.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && server.call("GET", &format!("/v1/jobs/{job}"), KEY, None).0 == 200 {
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(server.call("GET", &format!("/v1/documents/{document}"), KEY, None).0, 404, "{how}");
        let (_, listed) = server.call("GET", &format!("/v1/documents?user_id={user}"), KEY, None);
        assert!(listed["data"].as_array().unwrap().is_empty(), "{how}: {listed}");
        assert!(memories(&server, user).is_empty(), "{how}: chunks were written after the {how}");
    }
    // Nothing of them resumes after a restart either.
    let (clean, _) = server.terminate();
    assert!(clean);
    let server = keyed(dir.path(), &[("ENGRAM_MODEL__GENERATOR", "")]);
    std::thread::sleep(Duration::from_secs(3));
    for user in ["wanda", "xena"] {
        assert!(memories(&server, user).is_empty(), "{user}: a cancelled job came back after a restart");
    }
}

#[test]
fn concurrent_turns_and_imports_in_one_session_all_keep_their_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let server = keyed(dir.path(), &[]);
    let first = chat(&server, json!({ "user_id": "yuri", "message": "Start of the session.", "max_tokens": 2 }));
    let session = first["session_id"].as_str().unwrap().to_owned();
    let messages: Vec<String> = (0..4).map(|i| format!("Concurrent message number {i}.")).collect();
    std::thread::scope(|s| {
        for m in &messages {
            let (server, session) = (&server, &session);
            s.spawn(move || {
                chat(server, json!({ "user_id": "yuri", "session_id": session, "message": m, "max_tokens": 3 }));
            });
        }
    });
    let (status, stored) = server.call("GET", &format!("/v1/sessions/{session}"), KEY, None);
    assert_eq!(status, 200);
    let turns = stored["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 10, "{stored}");
    for m in &messages {
        assert_eq!(turns.iter().filter(|t| t["content"] == m.as_str()).count(), 1, "{m} kept once: {stored}");
    }
    for pair in turns.chunks(2) {
        assert_eq!((pair[0]["role"].as_str(), pair[1]["role"].as_str()), (Some("user"), Some("assistant")));
    }
    let episodes = memories(&server, "yuri");
    assert_eq!(episodes.len(), 5);
    let mut indexes: Vec<u64> = episodes.iter().map(|e| e["source"]["turn_index"].as_u64().unwrap()).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, vec![0, 2, 4, 6, 8], "distinct turn indexes");

    // Four imports into one session at once: all twelve messages kept, none twice.
    std::thread::scope(|s| {
        for i in 0..4 {
            let server = &server;
            s.spawn(move || {
                let body = json!({ "user_id": "zoe", "messages": (0..3).map(|j| json!({
                    "role": if j % 2 == 0 { "user" } else { "assistant" }, "content": format!("import {i} line {j}") })).collect::<Vec<_>>() });
                let (status, out) = server.call("POST", "/v1/sessions/imported/messages", KEY, Some(&body));
                assert_eq!(status, 201, "{out}");
            });
        }
    });
    let (_, stored) = server.call("GET", "/v1/sessions/imported", KEY, None);
    assert_eq!(stored["turns"].as_array().unwrap().len(), 12, "{stored}");
    let mut indexes: Vec<u64> =
        memories(&server, "zoe").iter().map(|e| e["source"]["turn_index"].as_u64().unwrap()).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (0..12).collect::<Vec<u64>>());
}

#[test]
fn oversized_fields_are_refused_naming_the_limit_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = keyed(
        dir.path(),
        &[("ENGRAM_LIMITS__DOCUMENT_TEXT_BYTES", "200000"), ("ENGRAM_LIMITS__DOCUMENT_CHUNKS", "50")],
    );
    let deep = (0..20).fold(json!(1), |inner, _| json!({ "x": inner }));
    let huge_metadata = json!({ "blob": "m".repeat(20_000) });
    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "POST",
            "/v1/memories",
            json!({ "user_id": "u", "text": "t".repeat(70_000) }),
            413,
            "limits.memory_text_bytes",
        ),
        (
            "POST",
            "/v1/memories",
            json!({ "user_id": "u", "text": "ok", "metadata": huge_metadata }),
            413,
            "limits.metadata_bytes",
        ),
        (
            "POST",
            "/v1/memories",
            json!({ "user_id": "u", "text": "ok", "metadata": deep }),
            400,
            "limits.metadata_depth",
        ),
        ("POST", "/v1/documents", json!({ "title": "T".repeat(2000), "text": "body" }), 413, "limits.title_bytes"),
        (
            "POST",
            "/v1/documents",
            json!({ "title": "t", "text": "body", "metadata": { "blob": "m".repeat(20_000) } }),
            413,
            "limits.metadata_bytes",
        ),
        (
            "POST",
            "/v1/documents",
            json!({ "title": "t", "text": "w ".repeat(150_000) }),
            413,
            "limits.document_text_bytes",
        ),
        (
            "POST",
            "/v1/documents",
            json!({ "title": "t", "text": long_document("flood").repeat(3) }),
            413,
            "limits.document_chunks",
        ),
        ("POST", "/v1/chat", json!({ "user_id": "u", "message": "q".repeat(40_000) }), 413, "limits.message_bytes"),
        (
            "POST",
            "/v1/sessions/s/messages",
            json!({ "user_id": "u", "messages": (0..1001).map(|_| json!({"role": "user", "content": "x"})).collect::<Vec<_>>() }),
            413,
            "limits.import_messages",
        ),
        ("PATCH", "/v1/memories/01J00000000000000000000000", json!({ "text": "t".repeat(70_000) }), 404, ""),
    ];
    for (method, path, body, want, needle) in cases {
        let (status, answer) = server.call(method, path, KEY, Some(&body));
        assert_eq!(status, want, "{method} {path}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{method} {path}: {answer}");
        assert!(answer["error"]["code"].is_string() && answer["error"]["type"].is_string(), "{answer}");
    }
    // Nothing of the refused requests was stored.
    assert!(memories(&server, "u").is_empty());
    let (_, docs) = server.call("GET", "/v1/documents", KEY, None);
    assert!(docs["data"].as_array().unwrap().is_empty(), "{docs}");
    assert_eq!(server.call("GET", "/v1/sessions/s", KEY, None).0, 404);
    // An edit past the limit leaves the memory as it was.
    let (status, added) =
        server.call("POST", "/v1/memories", KEY, Some(&json!({ "user_id": "u", "text": "original" })));
    assert_eq!(status, 201);
    let id = added["id"].as_str().unwrap();
    let (status, _) =
        server.call("PATCH", &format!("/v1/memories/{id}"), KEY, Some(&json!({ "text": "t".repeat(70_000) })));
    assert_eq!(status, 413);
    assert_eq!(server.call("GET", &format!("/v1/memories/{id}"), KEY, None).1["text"], "original");
}

/// Sends one raw HTTP/1.1 request and returns the status and the body.
fn raw(server: &Server, request: &str) -> (u16, String) {
    let addr = server.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[test]
fn in_open_mode_web_pages_cannot_reach_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("ENGRAM_MODEL__GENERATOR", "")]);
    server.wait_ready();
    let host = server.base.trim_start_matches("http://").to_owned();
    let body = r#"{"user_id":"victim","text":"planted by a web page"}"#;
    let post = |host: &str, extra: &str| {
        format!(
            "POST /v1/memories HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    // A page on another site posting to loopback (a "simple" request is sent unasked).
    let (status, answer) = raw(&server, &post(&host, "Origin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\n"));
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("\"forbidden\""), "{answer}");
    // DNS rebinding: the attacker's own name, resolved to 127.0.0.1.
    let port = host.rsplit_once(':').unwrap().1;
    let (status, answer) = raw(&server, &post(&format!("rebind.evil.example:{port}"), ""));
    assert_eq!(status, 403, "{answer}");
    // A multipart upload from a page.
    let form = "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.txt\"\r\n\r\nplanted\r\n--b--\r\n";
    let upload = format!(
        "POST /v1/documents HTTP/1.1\r\nHost: {host}\r\nOrigin: http://localhost:9999\r\nSec-Fetch-Site: same-site\r\n\
         Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    );
    assert_eq!(raw(&server, &upload).0, 403);
    // Nothing was planted; a local client without browser headers still works.
    assert!(server.call("GET", "/v1/memories?user_id=victim", None, None).1["data"].as_array().unwrap().is_empty());
    let (status, answer) = raw(&server, &post(&host, ""));
    assert_eq!(status, 201, "{answer}");
}

/// Varied prose of about `words` words (no two sentences alike), so token counts scale.
fn prose(seed: usize, words: usize) -> String {
    const W: [&str; 16] = [
        "harbour", "lantern", "orchard", "granite", "meadow", "copper", "willow", "thunder", "saffron", "glacier",
        "pepper", "marble", "falcon", "velvet", "canyon", "ember",
    ];
    (0..words).map(|i| W[(i * 7 + seed * 13 + i / 5) % W.len()]).collect::<Vec<_>>().join(" ")
}

/// A session whose turns are long — here a client re-sending a long history, which seeds
/// the session — is compressed within the model's window: the summary prompt folds what
/// fits. Before this was bounded, the prompt for the oldest half of 16 such turns was
/// longer than the model's whole context, and every turn of the session failed from then on.
#[test]
fn a_session_of_long_turns_is_compressed_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let server = keyed(dir.path(), &[]);
    let history: Vec<Value> = (0..14)
        .map(|i| json!({ "role": if i % 2 == 0 { "user" } else { "assistant" }, "content": prose(i, 900) }))
        .collect();
    let mut messages = history.clone();
    messages.push(json!({ "role": "user", "content": "Sum that up in one word." }));
    let body = json!({ "model": "engram", "user": "long", "max_tokens": 4, "messages": messages });
    let (status, answer) = server.call("POST", "/v1/chat/completions", KEY, Some(&body));
    assert_eq!(status, 200, "{answer}");
    let session = answer["session_id"].as_str().unwrap().to_owned();
    let (_, stored) = server.call("GET", &format!("/v1/sessions/{session}"), KEY, None);
    assert!(stored["summarized_turns"].as_u64().unwrap() >= 2, "compressed: {stored}");
    assert!(!stored["rolling_summary"].as_str().unwrap().is_empty());
    // The session keeps working, and each turn is stored once, with no orphans.
    for i in 0..2 {
        let turn =
            json!({ "user_id": "long", "session_id": session, "message": format!("And now {i}?"), "max_tokens": 3 });
        let (status, answer) = server.call("POST", "/v1/chat", KEY, Some(&turn));
        assert_eq!(status, 200, "{answer}");
    }
    let (_, episodes) = server.call("GET", "/v1/memories?user_id=long&kind=episodic", KEY, None);
    assert_eq!(episodes["data"].as_array().unwrap().len(), 3, "{episodes}");
}

/// Lexical scores come from the tenant's own corpus: another tenant filling its memory
/// with a word changes nothing in what this tenant's lexical search reports.
#[test]
fn lexical_scores_do_not_depend_on_other_tenants_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[("ENGRAM_AUTH__KEYS", "acme=acme-key,globex=globex-key"), ("ENGRAM_MODEL__GENERATOR", "")],
    );
    server.wait_ready();
    for text in ["The zebra crossing near the school", "Coffee with oat milk at noon", "A quiet walk by the river"] {
        assert_eq!(server.call("POST", "/v1/memories", KEY, Some(&json!({ "user_id": "a", "text": text }))).0, 201);
    }
    let query = json!({ "query": "zebra crossing", "user_id": "a", "mode": "lexical", "k": 3 });
    let score = |server: &Server| {
        let (status, found) = server.call("POST", "/v1/memories/search", KEY, Some(&query));
        assert_eq!(status, 200, "{found}");
        found["results"][0]["score"].as_f64().unwrap()
    };
    let before = score(&server);
    let texts: Vec<Value> =
        (0..40).map(|i| json!({ "role": "user", "content": format!("zebra zebra crossing number {i}") })).collect();
    let (status, _) = server.call(
        "POST",
        "/v1/sessions/flood/messages",
        Some("globex-key"),
        Some(&json!({ "user_id": "b", "messages": texts })),
    );
    assert_eq!(status, 201);
    assert_eq!(score(&server), before, "another tenant's documents moved this tenant's BM25 scores");
}
