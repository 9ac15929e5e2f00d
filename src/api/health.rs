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
use serde::Serialize;
use utoipa::ToSchema;

use super::inference::{EmbedderDetails, GeneratorDetails};
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

/// The liveness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Healthz {
    /// Always `ok`.
    pub status: &'static str,
}

/// The process is up and answering (no key needed).
#[utoipa::path(get, path = "/healthz", tag = "operations", responses(
    (status = 200, description = "Alive", body = Healthz),
))]
pub async fn healthz() -> Json<Healthz> {
    Json(Healthz { status: "ok" })
}

/// The store's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoreReadiness {
    pub open: bool,
    /// Entries in the vector index, once open.
    #[schema(required = true)]
    pub entries: Option<usize>,
}

/// A model with whether its worker is running.
#[derive(Debug, Serialize, ToSchema)]
pub struct Running<T> {
    #[serde(flatten)]
    pub info: T,
    /// False while the worker restarts after a crash.
    pub running: bool,
}

impl<T> Running<T> {
    /// `info` with its worker's state; clears `all_running` when it is not running.
    fn of(info: T, running: bool, all_running: &mut bool) -> Self {
        *all_running &= running;
        Self { info, running }
    }
}

/// The models' state.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelsReadiness {
    /// False until the models are loaded (the fields below are null until then).
    pub loaded: bool,
    #[schema(required = true)]
    pub embedder: Option<Running<EmbedderDetails>>,
    #[schema(required = true)]
    pub generator: Option<Running<GeneratorDetails>>,
}

/// Start-up's state (schema only).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ReadyState {
    Ready,
    Starting,
    Restarting,
    Failed,
}

/// The readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readyz {
    #[schema(value_type = ReadyState)]
    pub status: &'static str,
    /// The parts still loading (`store`, `embedder`, `generator`…).
    pub loading: Vec<&'static str>,
    pub store: StoreReadiness,
    pub models: ModelsReadiness,
    /// `cpu` or `cuda:N`.
    #[schema(value_type = String)]
    pub device: crate::model::ResolvedDevice,
    /// Why start-up failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Ready to serve: the store is open, its index loaded, the models loaded (and not
/// restarting after a crash), and the memory service built on them (no key needed).
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready", body = Readyz),
    (status = 503, description = "Starting, restarting or failed: the body says which", body = Readyz),
))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Readyz>) {
    let progress = state.startup.progress();
    let store = state.store();
    let store = StoreReadiness { open: store.is_some(), entries: store.map(|s| s.index().len()) };
    let mut running = true;
    let models = match state.engine() {
        Some(e) => ModelsReadiness {
            loaded: true,
            embedder: e
                .embedder
                .as_ref()
                .map(|m| Running::of(EmbedderDetails::from(m.info()), m.is_running(), &mut running)),
            generator: e
                .generator
                .as_ref()
                .map(|m| Running::of(GeneratorDetails::from(m.info()), m.is_running(), &mut running)),
        },
        None => ModelsReadiness { loaded: false, embedder: None, generator: None },
    };
    let status = match (&progress.failed, progress.loading.is_empty() && models.loaded, running) {
        (Some(_), _, _) => "failed",
        (None, false, _) => "starting",
        (None, true, false) => "restarting",
        (None, true, true) => "ready",
    };
    let code = if status == "ready" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body =
        Readyz { status, loading: progress.loading, store, models, device: state.device, error: progress.failed };
    (code, Json(body))
}
