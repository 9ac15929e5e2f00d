//! A blocking HTTP client for a running engram server, shared by the commands that talk
//! to one (`ingest`, `query`, `chat`, `eval`).

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

/// A blocking HTTP client for the server, turning every failure into a readable error.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    key: Option<String>,
}

impl Client {
    pub fn new(base: &str, key: Option<String>) -> Client {
        // Imports embed every turn of a session in one request, which can take a while on
        // a CPU; the read timeout only guards against a server that hangs.
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(300))
            .build();
        Client { agent, base: base.trim_end_matches('/').to_owned(), key }
    }

    /// Sends a request; a status other than 2xx fails with the server's error message.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        match self.send(method, path, body)? {
            Ok(v) => Ok(v),
            Err((status, message)) => bail!("{method} {path}: HTTP {status}: {message}"),
        }
    }

    /// A DELETE where "not found" is as good as done.
    pub fn delete_if_present(&self, path: &str) -> anyhow::Result<()> {
        match self.send("DELETE", path, None)? {
            Ok(_) | Err((404, _)) => Ok(()),
            Err((status, message)) => bail!("DELETE {path}: HTTP {status}: {message}"),
        }
    }

    /// The parsed answer, or the HTTP status and the server's message; the outer error is
    /// for failures to talk to the server at all.
    pub fn send(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Result<Value, (u16, String)>> {
        let mut req = self.agent.request(method, &format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        let sent = match body {
            Some(b) => req.send_json(b.clone()),
            None => req.call(),
        };
        match sent {
            Ok(res) => {
                let text = res.into_string().with_context(|| format!("{method} {path}: reading the answer"))?;
                if text.trim().is_empty() {
                    return Ok(Ok(Value::Null));
                }
                let v =
                    serde_json::from_str(&text).with_context(|| format!("{method} {path}: the answer is not JSON"))?;
                Ok(Ok(v))
            }
            Err(ureq::Error::Status(status, res)) => {
                let text = res.into_string().unwrap_or_default();
                // The API's errors are `{"error": {"code", "message"}}`; anything else
                // (a proxy's page, say) is shown as it came.
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                Ok(Err((status, message.trim().to_owned())))
            }
            Err(e) => bail!("{method} {path}: cannot reach the server at {}: {e}", self.base),
        }
    }
}

impl Client {
    /// A request with the key set, for callers that handle the body themselves
    /// (multipart uploads, server-sent events).
    pub fn request(&self, method: &str, path: &str) -> ureq::Request {
        let req = self.agent.request(method, &format!("{}{path}", self.base));
        match &self.key {
            Some(key) => req.set("Authorization", &format!("Bearer {key}")),
            None => req,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }
}

/// Percent-encodes everything but unreserved characters, for a path segment or a query
/// value (sample ids and user ids are free text in the dataset).
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
