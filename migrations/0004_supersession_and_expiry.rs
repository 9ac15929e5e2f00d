//! Version 4: memories can supersede one another, keep their earlier versions and expire
//! (new `MemoryEntry` fields 18–21), and the `expiries` tree lists the entries due to be
//! purged. Records of version 3 decode as they are (the new fields empty) and none of
//! them expires, so nothing is rewritten: the version bump is what matters, because a
//! binary of version 3 would drop the new fields whenever it rewrote an entry, and it
//! refuses a store whose version is newer than its own. Safe to re-run.

pub fn apply(db: &sled::Db) -> Result<(), String> {
    db.open_tree("expiries").map(|_| ()).map_err(|e| e.to_string())
}
