//! Tracing set-up: an env filter (RUST_LOG wins over the config), text or JSON lines,
//! always on standard error so that commands can print results on standard output; and,
//! when `log.otlp_endpoint` names an OpenTelemetry collector, the same spans exported to
//! it over OTLP/HTTP.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat};

/// Keeps the span exporter, if any, until the process ends; dropping it sends the spans
/// still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("engram: the last spans were not exported: {e}");
            }
        }
    }
}

/// Installs the global subscriber. Calling it twice is harmless (the second is ignored,
/// and exports nothing).
pub fn init(config: &LogConfig) -> Result<Telemetry, String> {
    if tracing::dispatcher::has_been_set() {
        return Ok(Telemetry { provider: None });
    }
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = match config.format {
        LogFormat::Json => {
            fmt::layer().json().flatten_event(true).with_current_span(true).with_writer(std::io::stderr).boxed()
        }
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).boxed(),
    };
    let provider = match config.otlp_endpoint.trim() {
        "" => None,
        endpoint => Some(tracer_provider(endpoint, &config.service_name)?),
    };
    let export = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("engram")));
    let _ = tracing_subscriber::registry().with(lines).with(export).with(filter).try_init();
    Ok(Telemetry { provider })
}

/// Batches spans to `{endpoint}/v1/traces` (OTLP's HTTP path, as with
/// `OTEL_EXPORTER_OTLP_ENDPOINT`), from a thread of its own.
fn tracer_provider(endpoint: &str, service_name: &str) -> Result<SdkTracerProvider, String> {
    // The HTTP client is built without TLS (a collector runs beside the service); an
    // https:// endpoint would fail every export, so it is refused here instead.
    if !endpoint.starts_with("http://") {
        return Err(format!("log.otlp_endpoint must be an http:// URL (no TLS is built in), got `{endpoint}`"));
    }
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()
        .map_err(|e| format!("log.otlp_endpoint: {e}"))?;
    let resource = Resource::builder().with_service_name(service_name.to_owned()).build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}
