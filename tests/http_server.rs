//! The real server, started as a child process: probes, the JSON error shape, request
//! ids, and a graceful shutdown on SIGTERM that saves the index.

mod common;

use std::process::Command;

use common::server::Server;

#[test]
fn probes_errors_and_graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    // Some data, so there is an index to save at shutdown.
    {
        let store = common::open(dir.path());
        let v = common::unit_vectors(10, 8, 1);
        let entries = v.iter().enumerate().map(|(i, v)| common::fact("t", "u", &format!("m{i}"), v)).collect();
        store.put_entries(entries).unwrap();
    }
    assert!(!dir.path().join("index/CURRENT").exists());

    let server = Server::start(dir.path(), &[]);
    let (status, id, body) = server.get("/healthz");
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert!(id.is_some_and(|id| id.len() == 36), "every response carries a request id");

    server.wait_ready();
    let (_, _, body) = server.get("/readyz");
    assert_eq!(body["store"]["entries"], 10);
    assert_eq!(body["device"], "cpu");

    let (status, _, body) = server.get("/no/such/route");
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    assert!(body["error"]["message"].is_string());

    let res = ureq::post(&format!("{}/healthz", server.base)).call();
    let Err(ureq::Error::Status(405, res)) = res else { panic!("POST /healthz should be 405") };
    let body: serde_json::Value = res.into_json().unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");

    let (ok, log) = server.terminate();
    assert!(ok, "exit status after SIGTERM");
    assert!(log.iter().any(|l| l.contains("stopped cleanly")), "{log:?}");
    assert!(dir.path().join("index/CURRENT").exists(), "the index is saved at shutdown");
    let store = common::open(dir.path());
    assert_eq!(store.index_load_outcome(), &engram::store::LoadOutcome::Loaded { caught_up: 0 });
}

#[test]
fn refuses_a_bad_configuration_with_a_clear_message() {
    let out = Command::new(common::engram_bin()).args(["serve", "--device", "tpu"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model.device") && err.contains("tpu"), "{err}");

    let out = Command::new(common::engram_bin())
        .args(["store", "stats"])
        .env("ENGRAM_INDEX__MAX_CONNECTIONS", "1000")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_connections"));
}
