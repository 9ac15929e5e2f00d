//! Errors of the store layer. The API layer maps these to HTTP statuses in one place.

use thiserror::Error;

/// Everything that can go wrong in the store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The caller sent something the store cannot accept (wrong dimension, empty text…).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A guarded write found the state it was guarded on changed (the user was erased,
    /// the session deleted or advanced by another writer): nothing was written.
    #[error("{0}")]
    Conflict(String),
    /// A record that should exist does not.
    #[error("{0} not found")]
    NotFound(String),
    /// A stored record does not decode. Carries the tree and key so it can be found.
    #[error("corrupt record in tree `{tree}` at key {key}: {reason}")]
    Corrupt { tree: &'static str, key: String, reason: String },
    /// The database was written by a newer engram.
    #[error(
        "the database at {path} has schema version {found}, newer than this binary \
         supports ({supported}); run a newer engram, or export with it and import here"
    )]
    TooNew { path: String, found: u32, supported: u32 },
    /// A migration failed; the database is left at the last version that succeeded.
    #[error("migration {version} ({name}) failed: {reason}")]
    Migration { version: u32, name: &'static str, reason: String },
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("vector index: {0}")]
    Index(String),
    /// The Redis Cluster backend could not be reached or refused a command (a failover
    /// in progress, a network partition); the write may or may not have been applied
    /// when this comes back from a write whose reply was lost.
    #[error("redis cluster: {0}")]
    Unavailable(String),
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(e: sled::transaction::TransactionError<StoreError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
