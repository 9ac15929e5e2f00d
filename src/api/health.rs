//! Liveness and readiness probes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

/// The process is up and answering.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready to serve: the store is open, its index loaded, and the models loaded.
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let store = state.store().map(|s| json!({ "open": true, "entries": s.index().len() }));
    let models = state.engine().map(|e| {
        json!({
            "embedder": e.embedder.as_ref().map(|m| m.info()),
            "generator": e.generator.as_ref().map(|m| m.info()),
        })
    });
    let ready = store.is_some() && models.is_some();
    let body = json!({
        "status": if ready { "ready" } else { "starting" },
        "store": store.unwrap_or(json!({ "open": false })),
        "models": models.unwrap_or(json!({ "loaded": false })),
        "device": state.device,
    });
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}
