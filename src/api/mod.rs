//! The HTTP face of engram (axum). Handlers translate between JSON and the layers
//! below; they hold no logic of their own.

pub mod auth;
mod chat;
mod completions;
mod documents;
pub mod error;
mod health;
mod inference;
mod mcp;
mod memories;
pub mod metrics;
pub mod middleware;
mod openai;
mod openai_fields;
pub mod openapi;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::ServerConfig;
use crate::memory::chat::Chat;
use crate::memory::documents::Documents;
use crate::memory::service::MemoryService;
use crate::model::{Engine, ResolvedDevice};
use crate::store::MemoryStore;
use auth::ApiKeys;
use error::ApiError;
pub use health::Startup;

/// What handlers share. The server answers as soon as the listener is bound, while the
/// store opens (which can rebuild the index) and the models load: until then these are
/// absent, the `ready_*` helpers answer 503, and `/readyz` says what is still loading.
pub struct AppState {
    store: OnceLock<Arc<dyn MemoryStore>>,
    engine: OnceLock<Engine>,
    memory: OnceLock<MemoryService>,
    chat: OnceLock<Chat>,
    documents: OnceLock<Documents>,
    pub device: ResolvedDevice,
    /// Whether over-long embedding inputs are cut (true) or refused.
    pub embedder_truncates: bool,
    pub keys: ApiKeys,
    /// What start-up is still loading, or why it failed.
    pub startup: Startup,
}

impl AppState {
    pub fn new(device: ResolvedDevice, embedder_truncates: bool, keys: ApiKeys) -> Arc<Self> {
        Arc::new(Self {
            store: OnceLock::new(),
            engine: OnceLock::new(),
            memory: OnceLock::new(),
            chat: OnceLock::new(),
            documents: OnceLock::new(),
            device,
            embedder_truncates,
            keys,
            startup: Startup::default(),
        })
    }

    /// Once both the store and the models are up, the memory service joins them.
    pub fn set_memory(&self, memory: MemoryService) {
        let _ = self.memory.set(memory);
    }

    /// Chat with memory, when a chat model and an embedding model are configured.
    pub fn set_chat(&self, chat: Chat) {
        let _ = self.chat.set(chat);
    }

    /// The chat service: 503 while starting, 404 when no chat model is configured.
    pub fn ready_chat(&self) -> Result<&Chat, ApiError> {
        self.ready_memory()?;
        self.chat.get().ok_or_else(|| ApiError::not_found("chat needs both a chat model and an embedding model"))
    }

    /// Document ingestion, when an embedding model is configured.
    pub fn set_documents(&self, documents: Documents) {
        let _ = self.documents.set(documents);
    }

    /// Document ingestion: 503 while starting, 404 without an embedding model.
    pub fn ready_documents(&self) -> Result<&Documents, ApiError> {
        self.ready_memory()?;
        self.documents.get().ok_or_else(|| ApiError::not_found("documents need an embedding model"))
    }

    /// The memory service, or 503 while the store or the models are still loading.
    pub fn ready_memory(&self) -> Result<&MemoryService, ApiError> {
        self.memory.get().ok_or_else(|| ApiError::unavailable("the service is still starting"))
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
    pub fn set_store(&self, store: Arc<dyn MemoryStore>) {
        let _ = self.store.set(store);
    }

    pub fn store(&self) -> Option<&Arc<dyn MemoryStore>> {
        self.store.get()
    }

    /// The store, or 503 while it is still opening.
    pub fn ready_store(&self) -> Result<&Arc<dyn MemoryStore>, ApiError> {
        self.store().ok_or_else(|| ApiError::unavailable("the store is still opening"))
    }
}

/// Every route, each with its documentation (utoipa-axum adds both at once).
fn documented_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(inference::models))
        .routes(routes!(inference::embeddings))
        .routes(routes!(completions::completions))
        .routes(routes!(memories::add, memories::list, memories::erase_user))
        .routes(routes!(memories::search))
        .routes(routes!(chat::chat))
        .routes(routes!(openai::chat_completions))
        .routes(routes!(documents::create, documents::list))
        .routes(routes!(documents::get, documents::delete))
        .routes(routes!(documents::job))
        .routes(routes!(chat::get_session, chat::delete_session))
        .routes(routes!(chat::import_messages))
        .routes(routes!(memories::get, memories::patch, memories::delete))
        .routes(routes!(memories::history))
        .routes(routes!(metrics::scrape))
        .routes(routes!(openapi::document))
}

/// The OpenAPI document of every route (what `/openapi.json` serves).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    openapi::finish(documented_routes().split_for_parts().1)
}

/// The whole router, with every middleware layer applied.
pub fn router(state: Arc<AppState>, config: &ServerConfig) -> Result<Router, String> {
    let (routes, doc) = documented_routes().split_for_parts();
    let doc = openapi::finish(doc);
    openapi::publish(&doc);
    // MCP's tools call the REST routes as they are, before the layers below (the MCP
    // request itself went through them).
    let doc = serde_json::to_value(&doc).map_err(|e| format!("the OpenAPI document: {e}"))?;
    let rest =
        routes.clone().layer(axum::extract::DefaultBodyLimit::max(config.body_limit_bytes)).with_state(state.clone());
    let routes = routes
        .merge(mcp::routes(rest, &doc, config, state.clone()))
        .merge(openapi::docs_page())
        .route_layer(axum::middleware::from_fn(metrics::track))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::from_fn_with_state(
            Duration::from_secs(config.stream_stall_timeout_secs.max(1)),
            inference::stream_stall_timeout_scope,
        ))
        .with_state(state.clone());
    middleware::apply(routes, config, !state.keys.required())
}
