//! A real `engram serve` child process on a free port, for the HTTP tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    pub base: String,
    /// Behind a mutex so that tests can share the server between threads.
    log: std::sync::Mutex<mpsc::Receiver<String>>,
}

impl Server {
    /// Starts `engram serve` on a free port and waits for its "listening" line.
    ///
    /// With `ENGRAM_TEST_BACKEND=redis-cluster` the server keeps its data in a Redis
    /// Cluster shared by the test binary (see [`super::cluster::shared`]) instead of
    /// sled, under a namespace of its own named after `data_dir`: the same API tests
    /// then run against either backend, and a restart on the same `data_dir` finds its
    /// data again.
    pub fn start(data_dir: &std::path::Path, env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(super::engram_bin())
            .args(["serve", "--bind", "127.0.0.1:0", "--device", "cpu", "--data-dir"])
            .arg(data_dir)
            .env("ENGRAM_LOG__FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(super::cluster::backend_env(data_dir))
            .envs(env.iter().copied())
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
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the server exited during start-up ({status}); its log is above");
            }
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["message"] == "listening" {
                    let addr = v["address"].as_str().unwrap().to_owned();
                    return Server { child, base: format!("http://{addr}"), log: std::sync::Mutex::new(rx) };
                }
            }
        }
        let _ = child.kill();
        panic!("the server did not start listening");
    }

    pub fn get(&self, path: &str) -> (u16, Option<String>, serde_json::Value) {
        let res = match ureq::get(&format!("{}{path}", self.base)).call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("GET {path}: {e}"),
        };
        let status = res.status();
        let id = res.header("x-request-id").map(str::to_owned);
        (status, id, res.into_json().unwrap_or_default())
    }

    pub fn wait_ready(&self) {
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
    pub fn terminate(mut self) -> (bool, Vec<String>) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.success(), self.log.lock().unwrap().try_iter().collect());
            }
            assert!(Instant::now() < deadline, "no exit within 30s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Server {
    /// POSTs JSON; returns the status and the parsed body (Null when not JSON).
    pub fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let res = match ureq::post(&format!("{}{path}", self.base)).send_json(body.clone()) {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("POST {path}: {e}"),
        };
        let status = res.status();
        (status, res.into_json().unwrap_or_default())
    }

    /// POSTs JSON and returns the raw body text (for server-sent events).
    pub fn post_text(&self, path: &str, body: &serde_json::Value) -> (u16, String) {
        let res = match ureq::post(&format!("{}{path}", self.base)).send_json(body.clone()) {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("POST {path}: {e}"),
        };
        let status = res.status();
        (status, res.into_string().unwrap_or_default())
    }
}

impl Server {
    /// Any request, with an optional API key and JSON body; returns the status and the
    /// parsed body (Null when empty or not JSON).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = ureq::request(method, &format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        let sent = match body {
            Some(b) => req.send_json(b.clone()),
            None => req.call(),
        };
        let res = match sent {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = res.status();
        (status, res.into_json().unwrap_or_default())
    }
}

impl Server {
    /// POSTs JSON with an API key and returns the raw body text (server-sent events).
    pub fn post_text_with_key(&self, path: &str, key: Option<&str>, body: &serde_json::Value) -> (u16, String) {
        let mut req = ureq::post(&format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        let res = match req.send_json(body.clone()) {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("POST {path}: {e}"),
        };
        let status = res.status();
        (status, res.into_string().unwrap_or_default())
    }
}

impl Server {
    /// The server's process id, to read its memory use from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// POSTs a multipart form with one `file` field to `/v1/documents`. Err when no HTTP
    /// answer came back at all (the connection dropped, the server died).
    pub fn upload(&self, key: Option<&str>, file_name: &str, bytes: &[u8]) -> Result<(u16, serde_json::Value), String> {
        let boundary = "engram-upload-boundary-7c1d";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let mut req = ureq::post(&format!("{}/v1/documents", self.base))
            .set("Content-Type", &format!("multipart/form-data; boundary={boundary}"));
        if let Some(key) = key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        let res = match req.send_bytes(&body) {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(format!("upload {file_name}: {e}")),
        };
        Ok((res.status(), res.into_json().unwrap_or_default()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server-sent event stream read as it arrives.
pub struct SseReader {
    lines: std::io::Lines<BufReader<Box<dyn std::io::Read + Send + Sync>>>,
}

impl SseReader {
    /// The next event: its name ("" for unnamed) and its data; `None` at the end.
    pub fn next_event(&mut self) -> Option<(String, String)> {
        let (mut name, mut data) = (String::new(), None::<String>);
        for line in self.lines.by_ref() {
            let line = line.ok()?;
            if line.is_empty() {
                if let Some(data) = data.take() {
                    return Some((name, data));
                }
                continue;
            }
            if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_owned();
            } else if let Some(d) = line.strip_prefix("data: ") {
                data = Some(match data {
                    Some(before) => format!("{before}\n{d}"),
                    None => d.to_owned(),
                });
            }
        }
        data.map(|d| (name, d))
    }
}

impl Server {
    /// POSTs JSON (with an optional API key) and returns the status and, for a 200, the
    /// event stream to read as it comes.
    pub fn post_stream(&self, path: &str, key: Option<&str>, body: &serde_json::Value) -> (u16, Option<SseReader>) {
        let mut req = ureq::post(&format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        match req.send_json(body.clone()) {
            Ok(r) => (r.status(), Some(SseReader { lines: BufReader::new(r.into_reader()).lines() })),
            Err(ureq::Error::Status(s, _)) => (s, None),
            Err(e) => panic!("POST {path}: {e}"),
        }
    }
}

impl Server {
    /// Waits up to `timeout` for a log line containing `needle` (lines before it are
    /// consumed); returns it parsed as JSON, or None.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Option<serde_json::Value> {
        let log = self.log.lock().unwrap();
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(serde_json::from_str(&line).unwrap_or_default()),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// The log lines written so far and not yet consumed.
    pub fn drain_log(&self) -> Vec<String> {
        self.log.lock().unwrap().try_iter().collect()
    }
}

impl Server {
    /// The served sentence encoder's precision, as `/v1/models` reports it.
    pub fn embedder_dtype(&self) -> String {
        let (status, _, body) = self.get("/v1/models");
        assert_eq!(status, 200, "{body}");
        let models = body["data"].as_array().expect("a model list");
        let embedder = models.iter().find(|m| m["kind"] == "embedding").expect("an embedding model");
        embedder["details"]["dtype"].as_str().expect("a dtype").to_owned()
    }

    /// How closely a served vector's components can match sentence-transformers' f32
    /// reference values: 1e-4 in f32, 1e-3 where the encoder's products run in bf16 (the
    /// default on CPUs with AMX: bf16 keeps 8 significant bits; `tests/bert_reference.rs`
    /// holds that path to the same bounds in-process).
    pub fn reference_tolerance(&self) -> f64 {
        if self.embedder_dtype().contains("BFloat16") {
            1e-3
        } else {
            1e-4
        }
    }
}
