//! Version 3: point ids never repeat. Up to version 2 the next point id was derived at
//! open from the live entries, so deleting the newest entry and restarting gave its id
//! to the next memory while the saved graph still held the deleted node under it. The
//! high-water mark is now stored in `meta` with every write; here it is seeded from what
//! the database still shows, and the saved graph (which may hold such a stale node) is
//! marked for one rebuild at open. Safe to re-run.

use prost::Message;

use crate::store::records::MemoryEntry;
use crate::store::trees::{NEXT_POINT_KEY, REBUILD_INDEX_KEY};

pub fn apply(db: &sled::Db) -> Result<(), String> {
    let err = |e: sled::Error| e.to_string();
    let meta = db.open_tree("meta").map_err(err)?;
    let mut next = 0u64;
    for item in db.open_tree("entries").map_err(err)?.iter() {
        let (_, value) = item.map_err(err)?;
        if let Ok(entry) = MemoryEntry::decode(value.as_ref()) {
            next = next.max(entry.point_id + 1);
        }
    }
    if let Some((key, _)) = db.open_tree("points").map_err(err)?.last().map_err(err)? {
        if let Ok(b) = <[u8; 8]>::try_from(key.as_ref()) {
            next = next.max(u64::from_be_bytes(b) + 1);
        }
    }
    let stored = meta
        .get(NEXT_POINT_KEY)
        .map_err(err)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    meta.insert(NEXT_POINT_KEY, &next.max(stored).to_be_bytes()).map_err(err)?;
    meta.insert(REBUILD_INDEX_KEY, &[1u8]).map_err(err)?;
    Ok(())
}
