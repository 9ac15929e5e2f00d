//! engram: a retrieval-augmented long-term memory service for language models.
//!
//! Layers, and which way they depend:
//! - [`api`]: HTTP (axum) — routes, JSON, errors, middleware;
//! - [`memory`]: the memory logic — context assembly, lexical retrieval, chunking (the
//!   chat loop that ties them to the store and models is to come);
//! - [`store`]: sled records and the HNSW vector index; knows nothing of HTTP or models;
//! - [`model`]: the transformers in libtorch; knows nothing of HTTP or the store.
//!
//! Around them: [`config`] (settings), [`logging`], [`server`] (the service's life
//! cycle) and [`cli`] (the `engram` command).

pub mod api;
pub mod cli;
pub mod config;
pub mod logging;
pub mod memory;
pub mod model;
pub mod server;
pub mod store;
