//! The models, run in libtorch through `tch`. Knows nothing of HTTP or of the store.
//!
//! - [`embedder`], [`generator`]: the services the rest of the code calls — each model
//!   owned by one OS thread, fed by a bounded queue;
//! - [`bert`]: the sentence encoder behind embeddings;
//! - [`llama`], [`llama_loader`]: the chat model and its loaders (GGUF, HF folders);
//! - [`gguf`]: reading GGUF files (metadata, tensors, dequantisation);
//! - [`tokenizer`], [`chat_template`]: text to ids, chat messages to a prompt;
//! - [`attention_probe`]: how much of a reply's attention went to parts of its prompt;
//! - [`prompt_cache`]: sessions' attention caches, kept between turns;
//! - [`sampling`], [`text_stream`]: picking tokens, and turning them into safe text;
//! - [`device`]: where it all runs.

pub mod attention_probe;
pub mod bert;
pub mod chat_template;
mod decode_attention;
mod device;
pub mod embedder;
mod engine_error;
pub mod generator;
pub mod gguf;
pub mod llama;
pub mod llama_loader;
mod model_thread;
pub mod prompt_cache;
pub mod sampling;
pub mod text_stream;
pub mod tokenizer;

pub use device::{DeviceSpec, ResolvedDevice};
pub use embedder::Embedder;
pub use engine_error::EngineError;
pub use generator::Generator;

/// The models the service runs; either may be absent (not configured).
#[derive(Clone, Default)]
pub struct Engine {
    pub embedder: Option<Embedder>,
    pub generator: Option<Generator>,
}
