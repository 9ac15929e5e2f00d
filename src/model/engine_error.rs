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
    /// The model's thread is gone (the server is shutting down).
    #[error("the {0} is not running")]
    Stopped(&'static str),
}
