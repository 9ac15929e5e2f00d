//! `GET /metrics`: Prometheus text exposition of what the service does.
//!
//! Every layer records through the `metrics` facade (as it logs through `tracing`); the
//! exporter installed here at start-up keeps the values and renders them. Labels are
//! bounded by construction: routes are the router's templates (`/v1/memories/{id}`, never
//! an id), statuses and methods come from small sets, stages and kinds are fixed names.
//! Nothing that names a tenant, user or session is ever a label.
//!
//! Recorded elsewhere: `engram_retrieval_seconds{stage}` (memory search),
//! `engram_generation_*` (the chat model's worker), `engram_embedder_batch_texts` (the
//! encoder's worker), `engram_index_rebuilds_total` (the vector index). Read at scrape
//! time: queue depths, store sizes, ingestion jobs by state, resident memory.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::AppState;
use crate::memory::ingest_jobs::JobStatus;

/// The process-wide recorder's handle, once installed.
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds: 1 ms to 60 s, for requests, retrieval stages and the
/// first token alike.
const SECONDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Installs the recorder for this process (the first call does; later ones only return
/// the handle). Without it, the `metrics` macros record nothing, as in the CLI.
pub fn install() -> Result<PrometheusHandle, String> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("engram_embedder_batch_texts".into()),
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("engram_generation_decode_tokens_per_second".into()),
                &[1.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0],
            )
        })
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Counts each request and times it, by route template, method and status.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("engram_http_requests_total", &labels).increment(1);
    metrics::histogram!("engram_http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    response
}

/// Prometheus's text exposition, with the gauges read now (no key needed).
#[utoipa::path(get, operation_id = "metrics", path = "/metrics", tag = "operations", responses(
    (status = 200, description = "The metrics", content_type = "text/plain; version=0.0.4", body = String),
))]
pub async fn scrape(State(state): State<Arc<AppState>>) -> Response {
    let Some(handle) = HANDLE.get() else {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "metrics are not installed").into_response();
    };
    if let Some(engine) = state.engine() {
        if let Some(e) = &engine.embedder {
            metrics::gauge!("engram_model_queue_depth", "model" => "embedder").set(e.queue_depth() as f64);
        }
        if let Some(g) = &engine.generator {
            metrics::gauge!("engram_model_queue_depth", "model" => "generator").set(g.queue_depth() as f64);
        }
    }
    if let Some(store) = state.store().cloned() {
        // Counting walks the store: off the async workers.
        let counted = tokio::task::spawn_blocking(move || (store.stats(), store.list_jobs())).await;
        if let Ok((stats, jobs)) = counted {
            if let Ok(stats) = stats {
                for (kind, n) in &stats.entries_by_kind {
                    metrics::gauge!("engram_store_entries", "kind" => kind.clone()).set(*n as f64);
                }
                metrics::gauge!("engram_store_documents").set(stats.documents as f64);
                metrics::gauge!("engram_store_sessions").set(stats.sessions as f64);
                metrics::gauge!("engram_index_live_points").set(stats.index_live_points as f64);
                metrics::gauge!("engram_index_tombstones").set(stats.index_tombstones as f64);
            }
            if let Ok(jobs) = jobs {
                // As stored: a running job is on record as pending.
                for status in [JobStatus::Pending, JobStatus::Done, JobStatus::Failed] {
                    let n = jobs.iter().filter(|j| JobStatus::from(j.state()) == status).count();
                    metrics::gauge!("engram_ingestion_jobs", "state" => status.name()).set(n as f64);
                }
            }
        }
    }
    if let Some(bytes) = resident_bytes() {
        metrics::gauge!("engram_process_resident_memory_bytes").set(bytes as f64);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()).into_response()
}

/// The process's resident set, from `/proc/self/statm` (Linux); `None` elsewhere.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
