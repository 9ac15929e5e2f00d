//! The memory logic between the HTTP layer and the store and models: assembling the
//! working memory (the prompt) under a token budget, lexical retrieval to fuse with the
//! vector index, and splitting documents into chunks. Pure functions over plain data
//! where possible, so they are tested without models or servers.

pub mod chat;
pub mod chunking;
pub mod compression;
pub mod context;
pub mod documents;
pub mod extract;
pub mod ingest_jobs;
pub mod keyed_lock;
pub mod lexical;
pub mod limits;
pub mod ranking;
pub mod service;
pub mod sessions;
pub mod supersede;
pub mod time_hint;
pub mod turn_context;
