//! The HTTP face of engram (axum). Handlers translate between JSON and the layers
//! below; they hold no logic of their own.

pub mod error;
mod health;
mod inference;
pub mod middleware;

use std::sync::{Arc, OnceLock};

use axum::routing::{get, post};
use axum::Router;

use crate::config::ServerConfig;
use crate::model::{Engine, ResolvedDevice};
use crate::store::Store;
use error::ApiError;

/// What handlers share. The store is opened after the listener is bound (opening can
/// rebuild the index), so until then it is absent and `/readyz` says so.
pub struct AppState {
    store: OnceLock<Arc<Store>>,
    engine: OnceLock<Engine>,
    pub device: ResolvedDevice,
    /// Whether over-long embedding inputs are cut (true) or refused.
    pub embedder_truncates: bool,
}

impl AppState {
    pub fn new(device: ResolvedDevice, embedder_truncates: bool) -> Arc<Self> {
        Arc::new(Self { store: OnceLock::new(), engine: OnceLock::new(), device, embedder_truncates })
    }

    /// Makes the loaded models available.
    pub fn set_engine(&self, engine: Engine) {
        let _ = self.engine.set(engine);
    }

    pub fn engine(&self) -> Option<&Engine> {
        self.engine.get()
    }

    /// The models, or 503 while they are still loading.
    pub fn ready_engine(&self) -> Result<&Engine, ApiError> {
        self.engine().ok_or_else(|| ApiError::unavailable("the models are still loading"))
    }

    /// Makes the opened store available; the service is ready from then on.
    pub fn set_store(&self, store: Arc<Store>) {
        let _ = self.store.set(store);
    }

    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.get()
    }

    /// The store, or 503 while it is still opening.
    pub fn ready_store(&self) -> Result<&Arc<Store>, ApiError> {
        self.store().ok_or_else(|| ApiError::unavailable("the store is still opening"))
    }
}

/// The whole router, with every middleware layer applied.
pub fn router(state: Arc<AppState>, config: &ServerConfig) -> Result<Router, String> {
    let routes = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/models", get(inference::models))
        .route("/v1/embeddings", post(inference::embeddings))
        .route("/v1/completions", post(inference::completions))
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state);
    middleware::apply(routes, config)
}
