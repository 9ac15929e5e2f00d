//! Liveness and readiness probes, and the start-up progress that readiness reports.
//!
//! The server answers as soon as it is bound: `/healthz` says the process is alive from
//! the first moment, `/readyz` says what is still loading (or why start-up failed) until
//! the store, the models and the memory service are all up.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::AppState;

/// What start-up is still waiting for, or why it failed; written by the server as
/// each part comes up, read by `/readyz`.
#[derive(Default)]
pub struct Startup(Mutex<Progress>);

#[derive(Default, Clone)]
struct Progress {
    loading: Vec<&'static str>,
    failed: Option<String>,
}

impl Startup {
    /// The parts start-up will load ("store", "embedder"…), all pending.
    pub fn set_loading(&self, parts: &[&'static str]) {
        self.0.lock().loading = parts.to_vec();
    }

    /// `part` is up.
    pub fn loaded(&self, part: &str) {
        self.0.lock().loading.retain(|p| *p != part);
    }

    /// Start-up failed with `error`; the server stops.
    pub fn failed(&self, error: String) {
        self.0.lock().failed = Some(error);
    }

    /// The parts still loading.
    pub fn loading(&self) -> Vec<&'static str> {
        self.0.lock().loading.clone()
    }

    fn progress(&self) -> Progress {
        self.0.lock().clone()
    }
}

/// The process is up and answering.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready to serve: the store is open, its index loaded, the models loaded (and not
/// restarting after a crash), and the memory service built on them.
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let progress = state.startup.progress();
    let store = state.store().map(|s| json!({ "open": true, "entries": s.index().len() }));
    let mut running = true;
    let models = state.engine().map(|e| {
        let embedder = e.embedder.as_ref().map(|m| with_running(m.info(), m.is_running(), &mut running));
        let generator = e.generator.as_ref().map(|m| with_running(m.info(), m.is_running(), &mut running));
        json!({ "embedder": embedder, "generator": generator })
    });
    let status = match (&progress.failed, progress.loading.is_empty() && models.is_some(), running) {
        (Some(_), _, _) => "failed",
        (None, false, _) => "starting",
        (None, true, false) => "restarting",
        (None, true, true) => "ready",
    };
    let mut body = json!({
        "status": status,
        "loading": progress.loading,
        "store": store.unwrap_or(json!({ "open": false })),
        "models": models.unwrap_or(json!({ "loaded": false })),
        "device": state.device,
    });
    if let Some(error) = progress.failed {
        body["error"] = json!(error);
    }
    let code = if status == "ready" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body))
}

/// A model's info with whether it is running; clears `all_running` when it is not.
fn with_running(info: impl serde::Serialize, running: bool, all_running: &mut bool) -> Value {
    *all_running &= running;
    let mut value = serde_json::to_value(info).unwrap_or_default();
    value["running"] = json!(running);
    value
}
