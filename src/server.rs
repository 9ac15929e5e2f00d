//! Running the service. The server answers as soon as it is bound — `/healthz` at once,
//! `/readyz` with what is still loading, the API with 503 — while the store opens and
//! the models load side by side. It serves until SIGINT/SIGTERM, then drains requests,
//! flushes sled and saves the index.
//!
//! A signal during start-up stops the server as cleanly: a store still opening gets the
//! grace period to finish, so that it is closed in a known state; models still loading
//! are abandoned (they only read files). A start-up that fails stops the server at once
//! and ends the process with the error: the orchestrator learns from the exit status and
//! the log, and a process that cannot serve would only delay its restart by lingering.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::api::auth::ApiKeys;
use crate::api::{self, AppState};
use crate::config::{CpuDtype, CudaDtype, ModelConfig, Settings};
use crate::memory::chat::Chat;
use crate::memory::documents::Documents;
use crate::memory::extract::{ExtractionConfig, Extractor};
use crate::memory::service::MemoryService;
use crate::model::embedder::EmbedderOptions;
use crate::model::generator::GeneratorOptions;
use crate::model::llama_loader::WeightFormat;
use crate::model::{DeviceSpec, Embedder, Engine, Generator, ResolvedDevice};
use crate::store::{BackendKind, MemoryStore, StoreConfig};

/// Serves until a shutdown signal; returns once everything is saved, or with the error
/// that stopped the start-up.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    configure_failpoints()?;
    let device = resolve_device(&settings.model)?;
    tracing::info!(%device, cuda = tch::Cuda::is_available(), "inference device");
    let keys = ApiKeys::from_config(&settings.auth.keys, &settings.auth.open_tenant).map_err(anyhow::Error::msg)?;
    let open = !keys.required();
    let state = AppState::new(device, settings.model.embedder_truncate, keys);
    api::metrics::install().map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
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
    // Signals are caught from here on, start-up included.
    let shutdown = Shutdown::listen()?;
    let server = tokio::spawn(axum::serve(listener, app).with_graceful_shutdown(shutdown.requested()).into_future());
    state.startup.set_loading(&parts(&settings.model));
    tracing::info!(%address, authentication = !open, "listening");

    let mut store_opening = tokio::spawn(open_store(settings.store_config(), state.clone()));
    let started = tokio::select! {
        started = start_up(&settings, device, &state, &mut store_opening) => Some(started),
        () = shutdown.requested() => None,
    };
    let outcome = match started {
        Some(Ok(())) => {
            tracing::info!("ready");
            let chores: Vec<_> = state
                .store()
                .map(|s| {
                    vec![
                        tokio::spawn(save_index_periodically(s.clone(), settings.store.index_save_interval_secs)),
                        tokio::spawn(purge_expired_periodically(s.clone(), settings.store.expiry_purge_interval_secs)),
                    ]
                })
                .unwrap_or_default();
            shutdown.requested().await;
            for chore in chores {
                chore.abort();
            }
            Ok(())
        }
        Some(Err(e)) => {
            let message = format!("{e:#}");
            tracing::error!(error = %message, "start-up failed; stopping");
            state.startup.failed(message);
            shutdown.request();
            Err(e.context("start-up failed"))
        }
        None => {
            tracing::info!(loading = ?state.startup.loading(), "shutting down during start-up");
            Ok(())
        }
    };
    let grace = Duration::from_secs(settings.server.shutdown_grace_secs);
    drain(server, grace).await?;
    if !store_opening.is_finished() {
        tracing::info!("waiting for the store to finish opening");
        if tokio::time::timeout(grace, &mut store_opening).await.is_err() {
            tracing::warn!("the store is still opening after the grace period; exiting without closing it");
        }
    }
    close_store(&state).await?;
    outcome?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The parts start-up loads, as `/readyz` names them.
fn parts(model: &ModelConfig) -> Vec<&'static str> {
    let mut parts = vec!["store"];
    if !model.embedder.as_os_str().is_empty() {
        parts.push("embedder");
    }
    if !model.generator.as_os_str().is_empty() {
        parts.push("generator");
    }
    parts.push("memory");
    parts
}

/// Waits for the store and the models, then builds the services on them and makes them
/// available to the handlers. Fails as soon as any part fails.
async fn start_up(
    settings: &Settings,
    device: ResolvedDevice,
    state: &Arc<AppState>,
    store_opening: &mut JoinHandle<anyhow::Result<Arc<dyn MemoryStore>>>,
) -> anyhow::Result<()> {
    let store = async { store_opening.await.context("opening the store")? };
    let (store, engine) = tokio::try_join!(store, load_models(&settings.model, device, state))?;
    let (memory_store, embedder, weights) = (store.clone(), engine.embedder.clone(), settings.retrieval.clone());
    let (limits, memories) = (settings.limits.clone(), settings.memories);
    let memory =
        tokio::task::spawn_blocking(move || MemoryService::new(memory_store, embedder, weights, limits, memories))
            .await??;
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
    state.startup.loaded("memory");
    Ok(())
}

/// Opens the store and hands it to the handlers.
async fn open_store(config: StoreConfig, state: Arc<AppState>) -> anyhow::Result<Arc<dyn MemoryStore>> {
    let place = match config.backend {
        BackendKind::Sled => format!("in {}", config.data_dir.display()),
        BackendKind::RedisCluster => format!("on the redis cluster at {}", config.redis_urls.join(", ")),
    };
    let store = on_own_thread("store", move || {
        fail::fail_point!("server::open_store");
        crate::store::open_backend(&config)
    })
    .await?
    .with_context(|| format!("opening the store {place}"))?;
    state.set_store(store.clone());
    state.startup.loaded("store");
    Ok(store)
}

/// Loads the configured models side by side, each reported to `/readyz` once loaded.
async fn load_models(config: &ModelConfig, device: ResolvedDevice, state: &AppState) -> anyhow::Result<Engine> {
    let kind = compute_kind(device, config.cuda_dtype);
    let embedder = async {
        let Some(load) = embedder_loader(config, device) else { return Ok(None) };
        let embedder = on_own_thread("embedder", load).await??;
        state.startup.loaded("embedder");
        anyhow::Ok(Some(embedder))
    };
    let generator = async {
        let Some(load) = generator_loader(config, device, kind) else { return Ok(None) };
        let generator = on_own_thread("generator", load).await??;
        state.startup.loaded("generator");
        anyhow::Ok(Some(generator))
    };
    let (embedder, generator) = tokio::try_join!(embedder, generator)?;
    Ok(Engine { embedder, generator })
}

/// Runs `work` on a thread of its own and waits for it without holding a runtime
/// thread. Unlike the blocking pool, which the runtime waits for when it shuts down,
/// such a thread does not delay the exit when a signal stops a start-up under way.
async fn on_own_thread<T: Send + 'static>(part: &str, work: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    let (done, result) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("engram-load-{part}"))
        .spawn(move || {
            let _ = done.send(work());
        })
        .with_context(|| format!("starting the thread that loads the {part}"))?;
    result.await.with_context(|| format!("loading the {part} panicked"))
}

/// Waits until the server has stopped after the shutdown request: running requests get
/// the grace period to finish.
async fn drain(mut server: JoinHandle<std::io::Result<()>>, grace: Duration) -> anyhow::Result<()> {
    tracing::info!(grace_secs = grace.as_secs(), "shutting down: draining requests");
    tokio::select! {
        finished = &mut server => finished??,
        () = tokio::time::sleep(grace) => {
            tracing::warn!("requests still running after the grace period; stopping anyway");
            server.abort();
        }
    }
    Ok(())
}

/// Flushes the store and saves its index, when it was opened.
async fn close_store(state: &AppState) -> anyhow::Result<()> {
    let Some(store) = state.store().cloned() else { return Ok(()) };
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        store.flush().context("flushing the store")?;
        store.save_index().context("saving the index")?;
        Ok(())
    })
    .await?
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

/// The sentence encoder's compute kind and the kind its dense layers multiply in: bf16
/// on a CPU when `embedder_cpu_dtype` asks for it (`auto`: when the CPU has AMX), else
/// the compute kind.
pub fn embedder_kinds(device: ResolvedDevice, config: &ModelConfig) -> (tch::Kind, tch::Kind) {
    let kind = compute_kind(device, config.embedder_cuda_dtype);
    let bf16 = match config.embedder_cpu_dtype {
        CpuDtype::Auto => crate::model::bert::cpu_multiplies_bf16(),
        CpuDtype::F32 => false,
        CpuDtype::Bf16 => true,
    };
    match device.0 {
        tch::Device::Cpu if bf16 => (kind, tch::Kind::BFloat16),
        _ => (kind, kind),
    }
}

/// How to load the configured embedding model, unless its path is empty.
fn embedder_loader(
    config: &ModelConfig,
    device: ResolvedDevice,
) -> Option<impl FnOnce() -> anyhow::Result<Embedder> + Send + 'static> {
    let dir = Some(config.embedder.clone()).filter(|p| !p.as_os_str().is_empty())?;
    let (kind, matmul_kind) = embedder_kinds(device, config);
    let opts = EmbedderOptions {
        queue_capacity: config.embedder_queue,
        max_batch_tokens: config.embedder_max_batch_tokens,
        threads: config.threads,
        matmul_kind,
    };
    Some(move || Ok(Embedder::start(&dir, device, kind, opts)?))
}

/// How to load the configured chat model, unless its path is empty.
fn generator_loader(
    config: &ModelConfig,
    device: ResolvedDevice,
    kind: tch::Kind,
) -> Option<impl FnOnce() -> anyhow::Result<Generator> + Send + 'static> {
    let path = Some(config.generator.clone()).filter(|p| !p.as_os_str().is_empty())?;
    let opts = GeneratorOptions {
        queue_capacity: config.generator_queue,
        threads: config.threads,
        session_cache_bytes: config.generator_session_cache_mb << 20,
        weights: weight_format(config),
    };
    Some(move || Ok(Generator::start(&path, device, kind, opts)?))
}

/// How the chat model's weights are held, from `model.generator_quantized`.
pub fn weight_format(config: &ModelConfig) -> WeightFormat {
    if config.generator_quantized {
        WeightFormat::Quantized
    } else {
        WeightFormat::Dequantized
    }
}

/// Fault injection for the tests: in a build with the `failpoints` feature, the
/// `FAILPOINTS` variable (`name=actions;…`, the `fail` crate's syntax) configures the
/// failpoints. Other builds ignore it.
fn configure_failpoints() -> anyhow::Result<()> {
    if !fail::has_failpoints() {
        return Ok(());
    }
    let Ok(spec) = std::env::var("FAILPOINTS") else { return Ok(()) };
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, actions) =
            entry.split_once('=').with_context(|| format!("FAILPOINTS: `{entry}` is not `name=actions`"))?;
        fail::cfg(name.trim(), actions.trim()).map_err(|e| anyhow::anyhow!("FAILPOINTS: `{entry}`: {e}"))?;
        tracing::warn!(failpoint = name.trim(), actions = actions.trim(), "fault injection configured");
    }
    Ok(())
}

async fn save_index_periodically(store: Arc<dyn MemoryStore>, every_secs: u64) {
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

/// Deletes expired memories in bounded batches, so one sweep never holds the store for
/// long; a full batch is followed at once by the next.
async fn purge_expired_periodically(store: Arc<dyn MemoryStore>, every_secs: u64) {
    const BATCH: usize = 256;
    let mut tick = tokio::time::interval(Duration::from_secs(every_secs.max(1)));
    loop {
        tick.tick().await;
        loop {
            let store = store.clone();
            let now = crate::store::records::now_ms();
            match tokio::task::spawn_blocking(move || store.purge_expired(now, BATCH)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => {
                    tracing::info!(deleted = n, "expired memories purged");
                    if n < BATCH {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!("purging expired memories: {e}");
                    break;
                }
                Err(e) => {
                    tracing::error!("expiry purge task failed: {e}");
                    break;
                }
            }
        }
    }
}

/// The shutdown request: set by SIGINT or SIGTERM, or by a failed start-up; every
/// waiter sees it.
struct Shutdown(Arc<watch::Sender<bool>>);

impl Shutdown {
    /// Installs the signal handlers now (a signal that arrives before the first wait is
    /// not lost) and starts watching for them.
    fn listen() -> anyhow::Result<Self> {
        let requested = Arc::new(watch::Sender::new(false));
        let signals = signals().context("installing the signal handlers")?;
        let on_signal = requested.clone();
        tokio::spawn(async move {
            signals.await;
            on_signal.send_replace(true);
        });
        Ok(Self(requested))
    }

    fn request(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once shutdown is requested.
    fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut watching = self.0.subscribe();
        async move {
            let _ = watching.wait_for(|&requested| requested).await;
        }
    }
}

/// A future that resolves on SIGINT or SIGTERM, with the handlers registered before it
/// is returned.
#[cfg(unix)]
fn signals() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut interrupt, mut terminate) = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
    Ok(async move {
        tokio::select! { _ = interrupt.recv() => {}, _ = terminate.recv() => {} }
    })
}

#[cfg(not(unix))]
fn signals() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_config(cpu_dtype: &str) -> ModelConfig {
        let env = [("ENGRAM_MODEL__EMBEDDER_CPU_DTYPE".to_string(), cpu_dtype.to_string())];
        Settings::load_from_env(None, &Default::default(), env).unwrap().model
    }

    #[test]
    fn the_encoder_multiplies_in_bf16_only_on_a_cpu_that_is_told_or_has_amx() {
        let (cpu, cuda) = (ResolvedDevice(tch::Device::Cpu), ResolvedDevice(tch::Device::Cuda(0)));
        use tch::Kind::{BFloat16, Float, Half};
        assert_eq!(embedder_kinds(cpu, &model_config("f32")), (Float, Float));
        assert_eq!(embedder_kinds(cpu, &model_config("bf16")), (Float, BFloat16));
        let auto = if crate::model::bert::cpu_multiplies_bf16() { BFloat16 } else { Float };
        assert_eq!(embedder_kinds(cpu, &model_config("auto")), (Float, auto));
        // On CUDA the whole encoder computes in the CUDA dtype (f16 by default), whatever
        // the CPU setting says.
        for setting in ["f32", "bf16", "auto"] {
            assert_eq!(embedder_kinds(cuda, &model_config(setting)), (Half, Half));
        }
    }
}
