//! The server's start-up against the real binary: it answers probes while the store
//! opens and the models load (slowed down with failpoints, `--features failpoints`),
//! stops cleanly on SIGTERM during loading, and a start-up that fails ends the process
//! with the error.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::server::Server;
use serde_json::json;

#[test]
fn probes_answer_while_loading_then_ready() {
    let dir = tempfile::tempdir().unwrap();
    let slow = "server::open_store=sleep(1500);generator::load=sleep(4000)";
    let server = Server::start(dir.path(), &[("FAILPOINTS", slow)]);

    let (status, _, body) = server.get("/healthz");
    assert_eq!(status, 200, "alive from the first moment");
    assert_eq!(body["status"], "ok");
    let (status, _, body) = server.get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "starting");
    let loading: Vec<&str> = body["loading"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(loading.contains(&"generator") && loading.contains(&"memory"), "{body}");
    assert_eq!(body["models"]["loaded"], false);

    // The API answers 503 in the JSON shape meanwhile.
    let (status, _, body) = server.get("/v1/models");
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "unavailable");
    let (status, body) = server.post("/v1/memories/search", &json!({ "query": "x", "user_id": "u" }));
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "unavailable");

    // The store opens before the chat model has loaded: readiness names what remains.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, body) = server.get("/readyz");
        if body["store"]["open"] == true {
            assert_eq!(body["status"], "starting", "{body}");
            assert!(!body["loading"].as_array().unwrap().contains(&json!("store")), "{body}");
            assert!(body["loading"].as_array().unwrap().contains(&json!("generator")), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "the store never opened");
        std::thread::sleep(Duration::from_millis(100));
    }

    server.wait_ready();
    let (_, _, body) = server.get("/readyz");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["loading"], json!([]));
    assert_eq!(body["models"]["generator"]["running"], true);
    assert_eq!(server.get("/v1/models").0, 200);
}

#[test]
fn sigterm_during_loading_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // The chat model would take a minute; the exit must not wait for it.
    let server = Server::start(dir.path(), &[("FAILPOINTS", "generator::load=sleep(60000)")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.get("/readyz").2["store"]["open"] != true {
        assert!(Instant::now() < deadline, "the store never opened");
        std::thread::sleep(Duration::from_millis(100));
    }
    let asked = Instant::now();
    let (ok, log) = server.terminate();
    assert!(ok, "exit status after SIGTERM during loading: {log:?}");
    assert!(asked.elapsed() < Duration::from_secs(10), "took {:?}", asked.elapsed());
    assert!(log.iter().any(|l| l.contains("shutting down during start-up")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("stopped cleanly")), "{log:?}");
    // The store was closed: another process can open it.
    let store = common::open(dir.path());
    assert_eq!(store.index().len(), 0);
}

#[test]
fn a_start_up_that_fails_ends_the_process_with_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-model.gguf");
    let out = serve(dir.path(), &[("ENGRAM_MODEL__GENERATOR", missing.to_str().unwrap())]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listening"), "it served while loading: {err}");
    assert!(err.contains("start-up failed") && err.contains("no-such-model.gguf"), "{err}");

    // A data directory that is a file: the store will not open.
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let out = serve(&file, &[("ENGRAM_MODEL__GENERATOR", "")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opening the store") && err.contains("not-a-directory"), "{err}");
}

/// Runs `engram serve` to its end (it is expected to fail).
fn serve(data_dir: &std::path::Path, env: &[(&str, &str)]) -> std::process::Output {
    Command::new(common::engram_bin())
        .args(["serve", "--bind", "127.0.0.1:0", "--device", "cpu", "--data-dir"])
        .arg(data_dir)
        .env("ENGRAM_LOG__FORMAT", "json")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}
