//! Errors of the inference engine, as the layers above see them.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    /// The model's queue is full: try again later (HTTP 429).
    #[error("the {model} queue is full ({capacity} requests waiting); retry later")]
    Overloaded { model: &'static str, capacity: usize },
    /// The request cannot be served as given (HTTP 4xx), e.g. a prompt over the context.
    #[error("{0}")]
    Invalid(String),
    /// Loading failed: names the file and, where it applies, the tensor.
    #[error("loading {what}: {reason}")]
    Load { what: String, reason: String },
    /// The model failed while running.
    #[error("{model} failed: {reason}")]
    Runtime { model: &'static str, reason: String },
    /// The model is not taking jobs: its thread is restarting after a crash (the job
    /// was dropped), or the server is shutting down (HTTP 503).
    #[error("the {0} is not running (restarting or shutting down); retry later")]
    Stopped(&'static str),
}
