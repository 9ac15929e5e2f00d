//! The HTTP face of engram (axum). Handlers translate between JSON and the layers
//! below; they hold no logic of their own.

pub mod error;
mod health;
pub mod middleware;

use std::sync::{Arc, OnceLock};

use axum::routing::get;
use axum::Router;

use crate::config::ServerConfig;
use crate::model::ResolvedDevice;
use crate::store::Store;
use error::ApiError;

/// What handlers share. The store is opened after the listener is bound (opening can
/// rebuild the index), so until then it is absent and `/readyz` says so.
pub struct AppState {
    store: OnceLock<Arc<Store>>,
    pub device: ResolvedDevice,
}

impl AppState {
    pub fn new(device: ResolvedDevice) -> Arc<Self> {
        Arc::new(Self { store: OnceLock::new(), device })
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
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state);
    middleware::apply(routes, config)
}
