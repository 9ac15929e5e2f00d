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

/// Ready to serve: the store is open and its index loaded. (The models join this check
/// when the inference engine lands.)
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    match state.store() {
        Some(store) => (
            StatusCode::OK,
            Json(json!({
                "status": "ready",
                "store": { "open": true, "entries": store.index().len() },
                "device": state.device,
            })),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "starting", "store": { "open": false }, "device": state.device })),
        ),
    }
}
