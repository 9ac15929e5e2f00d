//! The real server, started as a child process: probes, the JSON error shape, request
//! ids, and a graceful shutdown on SIGTERM that saves the index.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    base: String,
    log: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `engram serve` on a free port and waits for its "listening" line.
    fn start(data_dir: &std::path::Path) -> Server {
        let mut child = Command::new(common::engram_bin())
            .args(["serve", "--bind", "127.0.0.1:0", "--device", "cpu", "--data-dir"])
            .arg(data_dir)
            .env("ENGRAM_LOG__FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("server: {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["message"] == "listening" {
                    let addr = v["address"].as_str().unwrap().to_owned();
                    return Server { child, base: format!("http://{addr}"), log: rx };
                }
            }
        }
        let _ = child.kill();
        panic!("the server did not start listening");
    }

    fn get(&self, path: &str) -> (u16, Option<String>, serde_json::Value) {
        let res = match ureq::get(&format!("{}{path}", self.base)).call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("GET {path}: {e}"),
        };
        let status = res.status();
        let id = res.header("x-request-id").map(str::to_owned);
        (status, id, res.into_json().unwrap_or_default())
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.get("/readyz").0 == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("never ready");
    }

    /// Sends SIGTERM; returns whether it exited successfully and its remaining log.
    fn terminate(mut self) -> (bool, Vec<String>) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.success(), self.log.try_iter().collect());
            }
            assert!(Instant::now() < deadline, "no exit within 30s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

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

    let server = Server::start(dir.path());
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
