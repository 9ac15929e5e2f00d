//! Version 1: the first on-disk format. Entries, documents and sessions in their trees,
//! with the `by_scope`, `by_document`, `by_session` and `points` indexes. Nothing to
//! convert: the trees are created on first use.

pub fn apply(_db: &sled::Db) -> Result<(), String> {
    Ok(())
}
