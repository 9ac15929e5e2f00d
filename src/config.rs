//! Configuration: `config/default.toml` (compiled in, so the binary runs from anywhere),
//! then an optional file, then `ENGRAM_<SECTION>__<KEY>` environment variables, then
//! command-line flags, each layer overriding the one before.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::store::{IndexParams, StoreConfig};

/// The defaults, documented key by key in the file itself.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub store: StoreConfig,
    pub index: IndexParams,
    pub model: ModelConfig,
    pub auth: AuthConfig,
    pub retrieval: crate::memory::ranking::RankingWeights,
    pub chat: crate::memory::chat::ChatConfig,
    pub memories: crate::memory::service::MemoriesConfig,
    pub limits: crate::memory::limits::Limits,
    pub extraction: crate::memory::extract::ExtractionConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub keys: Vec<String>,
    pub open_tenant: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub bind: String,
    pub request_timeout_secs: u64,
    pub body_limit_bytes: usize,
    pub shutdown_grace_secs: u64,
    /// A streamed response whose client has read nothing for this long is dropped.
    pub stream_stall_timeout_secs: u64,
    pub cors_allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
    /// An OpenTelemetry collector's OTLP/HTTP base URL: spans are exported to
    /// `{otlp_endpoint}/v1/traces`. Empty: no export.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub device: String,
    pub threads: usize,
    /// The chat model's compute precision on CUDA.
    pub cuda_dtype: CudaDtype,
    /// The sentence encoder's compute precision on CUDA.
    pub embedder_cuda_dtype: CudaDtype,
    /// The sentence encoder's dense-layer products on the CPU.
    pub embedder_cpu_dtype: CpuDtype,
    pub embedder: PathBuf,
    pub embedder_queue: usize,
    pub embedder_max_batch_tokens: usize,
    pub embedder_truncate: bool,
    pub generator: PathBuf,
    pub generator_queue: usize,
    /// MiB of attention caches kept between a session's turns (0: none).
    pub generator_session_cache_mb: usize,
    /// On the CPU, multiply by the GGUF file's quantised blocks rather than by weights
    /// dequantised to f32 at load.
    pub generator_quantized: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CudaDtype {
    F16,
    Bf16,
}

/// The precision of the sentence encoder's dense-layer products on the CPU.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CpuDtype {
    /// bf16 where the CPU multiplies it natively (AMX), else f32.
    Auto,
    F32,
    Bf16,
}

/// Values given as command-line flags; they override everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub bind: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub device: Option<String>,
}

impl Settings {
    /// Loads the layers described in the module documentation.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Settings, String> {
        Self::load_from_env(file, overrides, std::env::vars())
    }

    /// [`Settings::load`] with the environment passed in, for tests.
    pub fn load_from_env(
        file: Option<&Path>,
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, String> {
        use config::{Config, Environment, File, FileFormat};
        // Only ENGRAM_<SECTION>__<KEY> variables are configuration; others that share
        // the prefix (ENGRAM_VENV, ENGRAM_CONFIG…) belong to the tooling.
        let env: config::Map<String, String> =
            env.into_iter().filter(|(k, _)| k.starts_with("ENGRAM_") && k[7..].contains("__")).collect();
        let mut builder = Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
        }
        builder = builder.add_source(
            Environment::with_prefix("ENGRAM")
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("server.cors_allowed_origins")
                .with_list_parse_key("auth.keys")
                .with_list_parse_key("store.redis_urls")
                .try_parsing(true)
                .source(Some(env)),
        );
        let set = |b: config::ConfigBuilder<_>, key: &str, v: Option<String>| match v {
            Some(v) => b.set_override(key, v),
            None => Ok(b),
        };
        builder = set(builder, "server.bind", overrides.bind.clone()).map_err(|e| e.to_string())?;
        builder = set(builder, "store.data_dir", overrides.data_dir.as_ref().map(|p| p.display().to_string()))
            .map_err(|e| e.to_string())?;
        builder = set(builder, "model.device", overrides.device.clone()).map_err(|e| e.to_string())?;
        let settings: Settings =
            builder.build().and_then(|c| c.try_deserialize()).map_err(|e| format!("configuration: {e}"))?;
        settings.index.validate()?;
        settings.extraction.validate()?;
        Ok(settings)
    }

    /// The store settings with the index tuning folded in.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig { index: self.index.clone(), ..self.store.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Settings, String> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::load_from_env(None, &Overrides::default(), env)
    }

    #[test]
    fn defaults_parse() {
        let s = load(&[]).unwrap();
        assert_eq!(s.server.bind, "127.0.0.1:8080");
        assert_eq!(s.index, IndexParams::default());
        assert_eq!(s.store.data_dir, PathBuf::from("./data"));
        assert_eq!(s.log.format, LogFormat::Text);
        assert_eq!((s.extraction.memory_mb, s.limits.document_text_bytes), (1024, 16 << 20));
    }

    #[test]
    fn environment_overrides_keys_and_lists() {
        let s = load(&[
            ("ENGRAM_SERVER__BIND", "0.0.0.0:9000"),
            ("ENGRAM_INDEX__EF_SEARCH", "77"),
            ("ENGRAM_STORE__DATA_DIR", "/tmp/x"),
            ("ENGRAM_SERVER__CORS_ALLOWED_ORIGINS", "https://a.example,https://b.example"),
            ("ENGRAM_VENV", "/not/config"),
        ])
        .unwrap();
        assert_eq!(s.server.bind, "0.0.0.0:9000");
        assert_eq!(s.index.ef_search, 77);
        assert_eq!(s.store.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(s.server.cors_allowed_origins, vec!["https://a.example", "https://b.example"]);
    }

    #[test]
    fn flags_override_environment() {
        let env = [("ENGRAM_SERVER__BIND".to_string(), "0.0.0.0:9000".to_string())];
        let o = Overrides { bind: Some("127.0.0.1:1".into()), device: Some("cpu".into()), ..Default::default() };
        let s = Settings::load_from_env(None, &o, env).unwrap();
        assert_eq!(s.server.bind, "127.0.0.1:1");
        assert_eq!(s.model.device, "cpu");
    }

    #[test]
    fn bad_values_are_named() {
        let err = load(&[("ENGRAM_INDEX__MAX_CONNECTIONS", "300")]).unwrap_err();
        assert!(err.contains("max_connections"), "{err}");
        let err = load(&[("ENGRAM_INDEX__EF_SEARCH", "many")]).unwrap_err();
        assert!(err.contains("ef_search"), "{err}");
        let err = load(&[("ENGRAM_SERVER__NO_SUCH_KEY", "1")]).unwrap_err();
        assert!(err.contains("no_such_key"), "{err}");
        let err = load(&[("ENGRAM_EXTRACTION__CPU_SECS", "0")]).unwrap_err();
        assert!(err.contains("extraction.cpu_secs"), "{err}");
        let err = load(&[("ENGRAM_MODEL__EMBEDDER_CPU_DTYPE", "fp8")]).unwrap_err();
        assert!(err.contains("embedder_cpu_dtype"), "{err}");
    }

    #[test]
    fn the_encoder_precision_is_read() {
        assert_eq!(load(&[]).unwrap().model.embedder_cpu_dtype, CpuDtype::Auto);
        let s = load(&[("ENGRAM_MODEL__EMBEDDER_CPU_DTYPE", "f32")]).unwrap();
        assert_eq!(s.model.embedder_cpu_dtype, CpuDtype::F32);
        let s = load(&[("ENGRAM_MODEL__EMBEDDER_CPU_DTYPE", "bf16")]).unwrap();
        assert_eq!(s.model.embedder_cpu_dtype, CpuDtype::Bf16);
    }
}
