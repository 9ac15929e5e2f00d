//! Opening a database written in the previous on-disk format (schema version 1, before
//! the content-hash index). The version-1 layout is written here by hand, independently
//! of the store's own code, from the format's description.

mod common;

use engram::store::records::{Kind, MemoryEntry, Scope};
use engram::store::{SearchFilter, CURRENT_SCHEMA_VERSION};
use prost::Message;
use ulid::Ulid;

const DIM: usize = 16;

/// Version-1 key of `by_scope`: u16-BE-length-prefixed tenant and user, kind byte, id.
fn v1_scope_key(tenant: &str, user: &str, kind: Kind, id: Ulid) -> Vec<u8> {
    let mut k = Vec::new();
    for s in [tenant, user] {
        k.extend_from_slice(&(s.len() as u16).to_be_bytes());
        k.extend_from_slice(s.as_bytes());
    }
    k.push(kind as u8);
    k.extend_from_slice(&id.to_bytes());
    k
}

fn write_v1_db(dir: &std::path::Path, texts: &[&str], vectors: &[Vec<f32>]) -> Vec<Ulid> {
    let db = sled::open(dir.join("db")).unwrap();
    let meta = db.open_tree("meta").unwrap();
    meta.insert("schema_version", &1u32.to_be_bytes()).unwrap();
    meta.insert("dimension", &(DIM as u32).to_be_bytes()).unwrap();
    let entries = db.open_tree("entries").unwrap();
    let by_scope = db.open_tree("by_scope").unwrap();
    let points = db.open_tree("points").unwrap();
    let mut ids = Vec::new();
    for (i, (text, v)) in texts.iter().zip(vectors).enumerate() {
        let id = Ulid::new();
        let mut e = MemoryEntry {
            id: id.to_bytes().to_vec().into(),
            text: (*text).into(),
            embedding: v.clone(),
            scope: Some(Scope::user("acme", "alice")),
            created_at_ms: 1_600_000_000_000 + i as i64,
            updated_at_ms: 1_600_000_000_000 + i as i64,
            importance: 0.5,
            point_id: i as u64,
            ..Default::default()
        };
        e.set_kind(Kind::Fact);
        // Version 1 wrote no content hash.
        entries.insert(id.to_bytes(), e.encode_to_vec()).unwrap();
        by_scope.insert(v1_scope_key("acme", "alice", Kind::Fact, id), &[][..]).unwrap();
        points.insert((i as u64).to_be_bytes(), &id.to_bytes()[..]).unwrap();
        ids.push(id);
    }
    db.flush().unwrap();
    ids
}

#[test]
fn a_version_1_database_is_migrated_at_open() {
    assert_eq!(CURRENT_SCHEMA_VERSION, 4, "update this test when adding a migration");
    let dir = tempfile::tempdir().unwrap();
    let vectors = common::unit_vectors(3, DIM, 21);
    let ids = write_v1_db(dir.path(), &["likes tea", "lives in Oslo", "has a cat"], &vectors);

    let store = common::open(dir.path());
    assert_eq!(store.stats().unwrap().schema_version, 4);
    // The old entries are there, searchable, and listed.
    for (id, v) in ids.iter().zip(&vectors) {
        let hit = &store.search(v, 1, &SearchFilter::all()).unwrap()[0];
        assert_eq!(hit.entry.ulid(), Some(*id));
        assert_eq!(hit.entry.content_hash.as_ref(), blake3::hash(hit.entry.text.as_bytes()).as_bytes());
    }
    assert_eq!(store.list_entries("acme", "alice", None, 10, None).unwrap().items.len(), 3);
    // The backfilled hash index dedupes against entries written by version 1.
    let again = store.put_entry(common::fact("acme", "alice", "lives in Oslo", &vectors[1])).unwrap();
    assert!(!again.created);
    assert_eq!(again.id, ids[1]);
    // New points do not collide with the old ones.
    let new = store.put_entry(common::fact("acme", "alice", "new", &vectors[0])).unwrap();
    assert!(new.created);
    assert!(store.verify().unwrap().is_ok(), "{:?}", store.verify().unwrap().problems);
    drop(store);
    // Re-opening does not migrate again.
    assert_eq!(common::open(dir.path()).stats().unwrap().entries, 4);
}
