//! (being written) Document ingestion: chunking, embedding and storing documents.

use crate::model::Embedder;

use super::service::MemoryService;

/// Document ingestion (being written).
#[derive(Clone)]
pub struct Documents {
    #[allow(dead_code)]
    memory: MemoryService,
    #[allow(dead_code)]
    embedder: Embedder,
}

impl Documents {
    pub fn new(memory: MemoryService, embedder: Embedder) -> Self {
        Self { memory, embedder }
    }
}
