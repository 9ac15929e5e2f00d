//! Generated requests against one real `engram serve` (API keys on, the real models):
//! every route gets structurally valid bodies with hostile values, JSON of any shape,
//! bytes that are not JSON, broken multipart forms, hostile path segments and query
//! strings; then every wrong method, missing and wrong keys, and concurrent bursts
//! mixing all of it. Whatever is sent, each response must be an answer (no dropped
//! connection, no hang), never a 5xx, a 4xx in the JSON error shape, and a 2xx whose body
//! parses; the process must stay up and log no panic.
//!
//! Generation is `proptest`'s: a failing case is shrunk to a minimal one and its seed
//! saved in `tests/http_fuzz.proptest-regressions`, replayed first on the next run.
//! `PROPTEST_RNG_SEED=<n>` fixes the seed of a run. Case counts keep the whole file
//! within about three minutes on two cores; requests that make the chat model work ask
//! for at most three tokens.

mod common;

#[path = "http_fuzz/check.rs"]
mod check;
#[path = "http_fuzz/client.rs"]
mod client;
#[path = "http_fuzz/json.rs"]
mod json;
#[path = "http_fuzz/requests.rs"]
mod requests;
#[path = "http_fuzz/routes.rs"]
mod routes;

use std::time::Instant;

use proptest::prelude::*;
use proptest::strategy::{Union, ValueTree};
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

use client::{Request, Response};
use common::server::Server;
use requests::{authed, KEY};
use routes::Known;

/// Starts the server the whole file shares, configured so that valid requests stay
/// cheap: short replies and windows, and a document limit the huge texts are over.
fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("ENGRAM_AUTH__KEYS", "acme=acme-key"),
            ("ENGRAM_CHAT__MAX_TOKENS", "4"),
            ("ENGRAM_CHAT__CONTEXT_TOKENS", "1024"),
            ("ENGRAM_LIMITS__DOCUMENT_TEXT_BYTES", "65536"),
        ],
    );
    server.wait_ready();
    (dir, server)
}

fn addr(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

/// Sends `req` and checks the answer and that the server still runs.
fn exchange(server: &Server, req: &Request) -> Result<Response, String> {
    let res = client::send(&addr(server), req);
    check::exchange(req, &res)?;
    if !check::alive(server.pid()) {
        return Err(format!("the server died after: {}", req.describe()));
    }
    Ok(res.unwrap())
}

/// A request that must succeed, for the fixtures; returns its JSON body.
fn must(server: &Server, req: Request) -> serde_json::Value {
    let res = exchange(server, &req).unwrap();
    assert!(res.status < 300, "{} → {} {}", req.describe(), res.status, String::from_utf8_lossy(&res.body));
    res.json().unwrap()
}

/// Ids of a memory, a document, a session and an ingestion job to aim at.
fn make_known(server: &Server) -> Known {
    let post = |target: &str, body: serde_json::Value| must(server, authed("POST", target).json(body.to_string()));
    let memory = post("/v1/memories", serde_json::json!({"user_id": "fuzz-ann", "text": "Ann likes green tea."}));
    let document = post(
        "/v1/documents",
        serde_json::json!({"title": "Fuzz notes", "text": "Paris is on the Seine.", "user_id": "fuzz-ann"}),
    );
    // Over 32 chunks: ingested by a background job, which runs on while the fuzzing does.
    let long: String =
        (0..40).map(|i| format!("## Part {i}\n\n{}\n\n", "The ledger records crates of tea. ".repeat(30))).collect();
    let job = post("/v1/documents", serde_json::json!({"title": "Ledger", "text": long}));
    assert!(job["job_id"].is_string(), "{job}");
    let import = serde_json::json!({"user_id": "fuzz-ann", "messages": [
        {"role": "user", "content": "I cycle to work."}, {"role": "assistant", "content": "Noted."}]});
    post("/v1/sessions/fuzz-session/messages", import);
    let turn = post("/v1/chat", serde_json::json!({"user_id": "fuzz-ann", "message": "Hello.", "max_tokens": 2}));
    let id = |v: &serde_json::Value, key: &str| v[key].as_str().unwrap().to_owned();
    Known {
        memories: vec![id(&memory, "id")],
        documents: vec![id(&document, "id"), id(&job, "document_id")],
        jobs: vec![id(&job, "job_id")],
        sessions: vec!["fuzz-session".into(), id(&turn, "session_id")],
    }
}

/// Runs `cases` generated requests of one group; Err names the minimal failing one.
fn fuzz(server: &Server, name: &'static str, cases: u32, strategy: BoxedStrategy<Request>) -> Result<(), String> {
    let config = Config {
        cases,
        max_shrink_iters: 300,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        source_file: Some(file!()),
        test_name: Some(name),
        ..Config::default()
    };
    let started = Instant::now();
    let result =
        TestRunner::new(config).run(&strategy, |req| exchange(server, &req).map(drop).map_err(TestCaseError::fail));
    eprintln!("fuzz group {name}: {cases} cases in {:.1?}", started.elapsed());
    result.map_err(|e| format!("group {name}: {e}"))
}

/// The routes the router serves, with a path to each and the methods it answers.
const ROUTES: &[(&str, &[&str])] = &[
    ("/healthz", &["GET"]),
    ("/readyz", &["GET"]),
    ("/v1/models", &["GET"]),
    ("/v1/embeddings", &["POST"]),
    ("/v1/completions", &["POST"]),
    ("/v1/chat", &["POST"]),
    ("/v1/chat/completions", &["POST"]),
    ("/v1/memories", &["POST", "GET", "DELETE"]),
    ("/v1/memories/search", &["POST"]),
    ("/v1/memories/01JAAAAAAAAAAAAAAAAAAAAAAA", &["GET", "PATCH", "DELETE"]),
    ("/v1/documents", &["POST", "GET"]),
    ("/v1/documents/01JAAAAAAAAAAAAAAAAAAAAAAA", &["GET", "DELETE"]),
    ("/v1/jobs/01JAAAAAAAAAAAAAAAAAAAAAAA", &["GET"]),
    ("/v1/sessions/fuzz-session", &["GET", "DELETE"]),
    ("/v1/sessions/fuzz-session/messages", &["POST"]),
];

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "FOO"];

/// Every method a route does not answer is a 405 in the JSON shape.
fn wrong_methods(server: &Server) -> Vec<String> {
    let mut failures = Vec::new();
    for (path, allowed) in ROUTES {
        for method in METHODS.iter().filter(|m| !allowed.contains(m)) {
            let req = authed(method, *path).json("{}");
            match exchange(server, &req) {
                Ok(res) if res.status == 405 => {}
                Ok(res) => failures.push(format!("{method} {path}: {} instead of 405", res.status)),
                Err(e) => failures.push(e),
            }
        }
    }
    failures
}

/// Without a key, or with a wrong one, every `/v1` route is a 401 in the JSON shape,
/// whatever the body; the probes answer anyone.
fn unauthorised(server: &Server) -> Vec<String> {
    let headers: &[Option<&str>] = &[
        None,
        Some("Bearer wrong-key"),
        Some("Bearer"),
        Some("bearer  "),
        Some("Bearer acme-keyx"),
        Some("Basic YWNtZTphY21lLWtleQ=="),
        Some(KEY),
        Some("Bearer \u{ff}\u{fe}"),
        Some("Bearer acme-key, Bearer acme-key"),
    ];
    let mut failures = Vec::new();
    for (path, allowed) in ROUTES {
        for method in *allowed {
            for header in headers {
                let mut req = Request::new(method, *path).json("{\"user_id\": \"x\"}");
                if let Some(h) = header {
                    req = req.header("Authorization", *h);
                }
                let want = if path.starts_with("/v1") { 401 } else { 200 };
                match exchange(server, &req) {
                    Ok(res) if res.status == want => {}
                    Ok(res) => {
                        failures.push(format!("{method} {path} with {header:?}: {} instead of {want}", res.status))
                    }
                    Err(e) => failures.push(e),
                }
            }
        }
    }
    failures
}

/// `rounds` bursts of `size` requests drawn from `strategy`, each burst sent at once.
fn bursts(server: &Server, strategy: &BoxedStrategy<Request>, rounds: usize, size: usize) -> Vec<String> {
    let mut runner = TestRunner::new(Config::default());
    let mut failures = Vec::new();
    for _ in 0..rounds {
        let batch: Vec<Request> = (0..size).map(|_| strategy.new_tree(&mut runner).unwrap().current()).collect();
        let results: Vec<Result<Response, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch.iter().map(|req| s.spawn(move || exchange(server, req))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        failures.extend(results.into_iter().filter_map(Result::err));
    }
    failures
}

/// Requests with a wrong method or no key, for the bursts.
fn misdirected() -> BoxedStrategy<Request> {
    let routes: Vec<&'static str> = ROUTES.iter().map(|(p, _)| *p).collect();
    (proptest::sample::select(routes), proptest::sample::select(METHODS), any::<bool>())
        .prop_map(|(path, method, keyed)| {
            let req = Request::new(method, path).json("{}");
            if keyed {
                req.header("Authorization", format!("Bearer {KEY}"))
            } else {
                req
            }
        })
        .boxed()
}

#[test]
fn generated_requests_never_break_the_server() {
    let (_dir, server) = start();
    let known = make_known(&server);
    let groups: Vec<(&'static str, u32, BoxedStrategy<Request>)> = vec![
        ("memories", 300, routes::memories(&known)),
        ("documents", 200, routes::documents(&known)),
        ("sessions", 150, routes::sessions(&known)),
        ("inference", 200, routes::inference()),
        ("chat", 150, routes::chat()),
        ("arbitrary JSON bodies", 200, routes::arbitrary_bodies(&known)),
        ("raw bodies", 300, routes::raw_bodies(&known)),
    ];
    let mut failures: Vec<String> = Vec::new();
    for (name, cases, strategy) in &groups {
        failures.extend(fuzz(&server, name, *cases, strategy.clone()).err());
    }
    failures.extend(wrong_methods(&server));
    failures.extend(unauthorised(&server));
    let mut everything: Vec<BoxedStrategy<Request>> = groups.into_iter().map(|(_, _, s)| s).collect();
    everything.push(misdirected());
    failures.extend(bursts(&server, &Union::new(everything).boxed(), 4, 16));
    let panics: Vec<String> = server.drain_log().into_iter().filter(|l| l.contains("panicked")).collect();
    failures.extend(panics.into_iter().map(|l| format!("the server logged a panic: {l}")));
    assert!(check::alive(server.pid()), "the server is gone");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n\n"));
}
