//! Schema versions and the migrations between them.
//!
//! The migrations themselves live in the top-level `migrations/` folder, one file per
//! version (`NNNN_what.rs`, each with `pub fn apply(db: &sled::Db) -> Result<(), String>`);
//! `build.rs` registers them here in number order. At open, every migration newer than
//! the stored version runs, and the version is bumped after each, so an interrupted
//! upgrade resumes where it stopped. A migration must therefore be safe to re-run.

use std::path::Path;

use super::error::{Result, StoreError};

/// One step of the on-disk format.
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub apply: fn(&sled::Db) -> std::result::Result<(), String>,
}

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The version this binary writes: the newest migration (the build script checks that
/// they are numbered 1, 2, 3… without gaps, so this is their count).
pub const CURRENT_SCHEMA_VERSION: u32 = include!(concat!(env!("OUT_DIR"), "/migration_count.rs"));

const VERSION_KEY: &[u8] = b"schema_version";

pub fn stored_version(db: &sled::Db) -> Result<Option<u32>> {
    let meta = db.open_tree("meta")?;
    Ok(meta.get(VERSION_KEY)?.and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok()).map(u32::from_be_bytes))
}

fn set_version(db: &sled::Db, version: u32) -> Result<()> {
    db.open_tree("meta")?.insert(VERSION_KEY, &version.to_be_bytes())?;
    db.flush()?;
    Ok(())
}

/// Brings the database at `path` to [`CURRENT_SCHEMA_VERSION`], or refuses one written
/// by a newer binary.
pub fn run(db: &sled::Db, path: &Path) -> Result<()> {
    let found = stored_version(db)?.unwrap_or(0);
    if found > CURRENT_SCHEMA_VERSION {
        return Err(StoreError::TooNew { path: path.display().to_string(), found, supported: CURRENT_SCHEMA_VERSION });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        tracing::info!(version = m.version, name = m.name, "applying store migration");
        (m.apply)(db).map_err(|reason| StoreError::Migration { version: m.version, name: m.name, reason })?;
        set_version(db, m.version)?;
    }
    Ok(())
}
