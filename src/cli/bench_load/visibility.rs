//! The write-to-visible-elsewhere delay of a deployment with several nodes: a memory is
//! added through one node and searched for through another until it comes back. The
//! search is lexical on a token only that memory holds, so each poll costs no
//! embedding and the delay measured is the store's (change stream, caches), not the
//! model's.

use std::time::{Duration, Instant};

use serde_json::json;

use super::super::client::Client;
use super::stats::{latency, Latency};

/// Past this, a probe counts as never seen.
const GIVE_UP: Duration = Duration::from_secs(10);

#[derive(Debug, serde::Serialize)]
pub struct VisibilityReport {
    pub written_on: String,
    pub searched_on: String,
    pub probes: usize,
    /// Probes not found within the give-up time.
    pub not_seen: usize,
    /// From the write's acknowledgement to the first search that returned it.
    pub delay_ms: Option<Latency>,
}

/// `probes` writes on `writer`, each searched for on `reader` until found.
pub fn measure(writer: &Client, reader: &Client, user: &str, probes: usize) -> anyhow::Result<VisibilityReport> {
    let mut delays = Vec::with_capacity(probes);
    let mut not_seen = 0;
    // The reader loads the scope on its first search: not part of the delay.
    reader.call("POST", "/v1/memories/search", Some(&json!({ "user_id": user, "query": "warm up", "k": 1 })))?;
    for i in 0..probes {
        let token = format!("probe{}x{i}", ulid::Ulid::new().to_string().to_lowercase());
        let added = writer.call(
            "POST",
            "/v1/memories",
            Some(&json!({ "user_id": user, "text": format!("visibility marker {token}") })),
        )?;
        let acked = Instant::now();
        let id = added["id"].as_str().unwrap_or_default().to_owned();
        let query = json!({ "user_id": user, "query": token, "k": 1, "mode": "lexical" });
        loop {
            let found = reader.call("POST", "/v1/memories/search", Some(&query))?;
            if found["results"].as_array().is_some_and(|r| r.iter().any(|h| h["id"] == id.as_str())) {
                delays.push(acked.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if acked.elapsed() > GIVE_UP {
                not_seen += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(VisibilityReport {
        written_on: writer.base().to_owned(),
        searched_on: reader.base().to_owned(),
        probes,
        not_seen,
        delay_ms: latency(delays),
    })
}
