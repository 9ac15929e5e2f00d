//! The models, run in libtorch through `tch`. Knows nothing of HTTP or of the store.
//!
//! - [`gguf`]: reading GGUF files (metadata, tensors, dequantisation);
//! - [`tokenizer`], [`chat_template`]: text to ids and chat messages to a prompt;
//! - [`bert`]: the sentence encoder behind embeddings;
//! - [`llama`], [`llama_loader`]: the chat model and its loaders (GGUF, HF folders);
//! - [`device`]: where it all runs.

pub mod bert;
pub mod chat_template;
mod device;
pub mod gguf;
pub mod llama;
pub mod llama_loader;
pub mod sampling;
pub mod text_stream;
pub mod tokenizer;

pub use device::{DeviceSpec, ResolvedDevice};
