//! Version 2: identical text in the same scope is stored once. Adds the `by_hash` index
//! (scope, kind, blake3 of the text → entry id) and backfills it, and the entries'
//! `content_hash`, from the entries written by version 1. Where version 1 holds the same
//! text twice in one scope, the older entry is the one the index points at.
//! Safe to re-run.

use prost::Message;

use crate::store::keys::hash_key;
use crate::store::records::MemoryEntry;

pub fn apply(db: &sled::Db) -> Result<(), String> {
    let entries = db.open_tree("entries").map_err(|e| e.to_string())?;
    let by_hash = db.open_tree("by_hash").map_err(|e| e.to_string())?;
    for item in entries.iter() {
        let (key, value) = item.map_err(|e| e.to_string())?;
        // A record that does not decode is left for `engram store verify` to report.
        let Ok(mut entry) = MemoryEntry::decode(value.as_ref()) else { continue };
        if entry.content_hash.is_empty() {
            entry.content_hash = blake3::hash(entry.text.as_bytes()).as_bytes().to_vec().into();
            entries.insert(&key, entry.encode_to_vec()).map_err(|e| e.to_string())?;
        }
        let scope = entry.scope.clone().unwrap_or_default();
        let hkey = hash_key(&scope, entry.kind, &entry.content_hash);
        // Keys iterate in id (= time) order, so the first writer wins: the oldest entry.
        let _ = by_hash.compare_and_swap(hkey, None as Option<&[u8]>, Some(key.as_ref())).map_err(|e| e.to_string())?;
    }
    Ok(())
}
