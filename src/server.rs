//! Running the service: bind, open the store, serve until SIGINT/SIGTERM, then drain
//! requests, flush sled and save the index.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::auth::ApiKeys;
use crate::api::{self, AppState};
use crate::config::{CudaDtype, ModelConfig, Settings};
use crate::memory::chat::Chat;
use crate::memory::documents::Documents;
use crate::memory::extract::{ExtractionConfig, Extractor};
use crate::memory::service::MemoryService;
use crate::model::embedder::EmbedderOptions;
use crate::model::generator::GeneratorOptions;
use crate::model::{DeviceSpec, Embedder, Engine, Generator, ResolvedDevice};
use crate::store::Store;

/// Serves until a shutdown signal; returns once everything is saved.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let device = resolve_device(&settings.model)?;
    tracing::info!(%device, cuda = tch::Cuda::is_available(), "inference device");
    let keys = ApiKeys::from_config(&settings.auth.keys, &settings.auth.open_tenant).map_err(anyhow::Error::msg)?;
    let open = !keys.required();
    let state = AppState::new(device, settings.model.embedder_truncate, keys);
    let app = api::router(state.clone(), &settings.server).map_err(anyhow::Error::msg)?;
    let listener =
        TcpListener::bind(&settings.server.bind).await.with_context(|| format!("binding {}", settings.server.bind))?;
    let address = listener.local_addr()?;
    if open && !address.ip().is_loopback() {
        anyhow::bail!(
            "refusing to serve {address} without API keys: configure auth.keys (ENGRAM_AUTH__KEYS) \
             or bind a loopback address"
        );
    }
    tracing::info!(%address, authentication = !open, "listening");

    // The store and the models load side by side; either failing stops the start-up.
    let store_config = settings.store_config();
    let opening = tokio::task::spawn_blocking(move || Store::open(&store_config));
    let model_config = settings.model.clone();
    let loading = tokio::task::spawn_blocking(move || start_engine(&model_config, device));
    let store =
        opening.await?.with_context(|| format!("opening the store in {}", settings.store.data_dir.display()))?;
    let store = Arc::new(store);
    state.set_store(store.clone());
    let engine = loading.await??;
    let (memory_store, embedder, weights) = (store.clone(), engine.embedder.clone(), settings.retrieval.clone());
    let limits = settings.limits.clone();
    let memory =
        tokio::task::spawn_blocking(move || MemoryService::new(memory_store, embedder, weights, limits)).await??;
    if let Some(generator) = engine.generator.clone().filter(|_| engine.embedder.is_some()) {
        state.set_chat(Chat::new(memory.clone(), generator, settings.chat.clone()));
    }
    if let Some(embedder) = engine.embedder.clone() {
        let extraction =
            ExtractionConfig { max_text_bytes: settings.limits.document_text_bytes, ..settings.extraction.clone() };
        let extractor = Extractor::new(extraction);
        if let Err(e) = extractor.check() {
            tracing::error!("{e}");
        }
        let documents = Documents::new(memory.clone(), embedder, extractor);
        // Serving matters more than an old job: a record that cannot be read is reported,
        // and the upload can be repeated.
        if let Err(e) = documents.resume_jobs().await {
            tracing::error!(error = %e, "cannot resume the document jobs left unfinished");
        }
        state.set_documents(documents);
    }
    state.set_memory(memory);
    state.set_engine(engine);
    tracing::info!("ready");

    let saver = tokio::spawn(save_index_periodically(store.clone(), settings.store.index_save_interval_secs));
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = signalled_tx.send(());
    });
    let mut server = tokio::spawn(server.into_future());
    // After the signal, running requests get the grace period to finish.
    let grace = Duration::from_secs(settings.server.shutdown_grace_secs);
    let grace_expired = async move {
        match signalled_rx.await {
            Ok(()) => {
                tracing::info!(grace_secs = grace.as_secs(), "shutting down: draining requests");
                tokio::time::sleep(grace).await
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        finished = &mut server => finished??,
        () = grace_expired => {
            tracing::warn!("requests still running after the grace period; stopping anyway");
            server.abort();
        }
    }
    saver.abort();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        store.flush().context("flushing the store")?;
        store.save_index().context("saving the index")?;
        Ok(())
    })
    .await??;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The configured device, checked against what libtorch sees here.
pub fn resolve_device(config: &ModelConfig) -> anyhow::Result<ResolvedDevice> {
    config.device.parse::<DeviceSpec>().and_then(DeviceSpec::resolve).map_err(anyhow::Error::msg)
}

/// The compute precision for a device: f32 on the CPU, the configured half type on CUDA.
pub fn compute_kind(device: ResolvedDevice, cuda: CudaDtype) -> tch::Kind {
    match (device.0, cuda) {
        (tch::Device::Cuda(_), CudaDtype::F16) => tch::Kind::Half,
        (tch::Device::Cuda(_), CudaDtype::Bf16) => tch::Kind::BFloat16,
        _ => tch::Kind::Float,
    }
}

/// Loads the configured models (each on its own thread); an empty path skips one.
pub fn start_engine(config: &ModelConfig, device: ResolvedDevice) -> anyhow::Result<Engine> {
    let kind = compute_kind(device, config.cuda_dtype);
    let embedder = (!config.embedder.as_os_str().is_empty())
        .then(|| {
            let opts = EmbedderOptions {
                queue_capacity: config.embedder_queue,
                max_batch_tokens: config.embedder_max_batch_tokens,
                threads: config.threads,
            };
            Embedder::start(&config.embedder, device, kind, opts)
        })
        .transpose()?;
    let generator = (!config.generator.as_os_str().is_empty())
        .then(|| {
            let opts = GeneratorOptions { queue_capacity: config.generator_queue, threads: config.threads };
            Generator::start(&config.generator, device, kind, opts)
        })
        .transpose()?;
    Ok(Engine { embedder, generator })
}

async fn save_index_periodically(store: Arc<Store>, every_secs: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(every_secs.max(1)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.save_index()).await {
            Ok(Ok(true)) => tracing::info!("vector index saved"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::error!("saving the vector index: {e}"),
            Err(e) => tracing::error!("index save task failed: {e}"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}
