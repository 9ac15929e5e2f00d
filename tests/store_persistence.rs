//! The store across restarts: the saved index is loaded and caught up, rebuilt when it
//! is missing or corrupt, and never trusted over sled; dedupe, deletes, corrupt records
//! and a database from the future.

mod common;

use engram::store::records::{Kind, Scope};
use engram::store::{LoadOutcome, ScopeClause, SearchFilter, Store, StoreError};
use ulid::Ulid;

const DIM: usize = 32;

fn fill(store: &Store, n: usize, seed: u64) -> Vec<(Ulid, Vec<f32>)> {
    let vectors = common::unit_vectors(n, DIM, seed);
    let entries = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| common::fact("acme", &format!("u{}", i % 7), &format!("memory {seed}-{i}"), v))
        .collect();
    let out = store.put_entries(entries).unwrap();
    out.iter().zip(vectors).map(|(o, v)| (o.id, v)).collect()
}

fn top_ids(store: &Store, queries: &[Vec<f32>]) -> Vec<Vec<Ulid>> {
    queries
        .iter()
        .map(|q| store.search(q, 5, &SearchFilter::all()).unwrap().iter().map(|s| s.entry.ulid().unwrap()).collect())
        .collect()
}

#[test]
fn same_results_after_restart_with_missing_and_with_corrupt_index() {
    let dir = tempfile::tempdir().unwrap();
    let queries = common::unit_vectors(30, DIM, 1234);
    let expected = {
        let store = common::open(dir.path());
        fill(&store, 3000, 1);
        assert!(store.save_index().unwrap());
        top_ids(&store, &queries)
    };
    assert!(expected.iter().all(|ids| ids.len() == 5));

    let store = common::open(dir.path());
    assert_eq!(store.index_load_outcome(), &LoadOutcome::Loaded { caught_up: 0 });
    assert_eq!(top_ids(&store, &queries), expected);
    drop(store);

    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let store = common::open(dir.path());
    assert_eq!(store.index_load_outcome(), &LoadOutcome::Missing);
    assert_eq!(top_ids(&store, &queries), expected);
    assert!(store.save_index().unwrap());
    drop(store);

    // Flip bytes in the middle of the saved vectors.
    let current = std::fs::read_to_string(dir.path().join("index/CURRENT")).unwrap();
    let data = dir.path().join("index").join(current.trim()).join("graph.hnsw.data");
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 8].iter_mut().for_each(|b| *b ^= 0x5a);
    std::fs::write(&data, bytes).unwrap();
    let store = common::open(dir.path());
    assert!(
        matches!(store.index_load_outcome(), LoadOutcome::Corrupt { reason } if reason.contains("checksum")),
        "{:?}",
        store.index_load_outcome()
    );
    assert_eq!(top_ids(&store, &queries), expected);
    assert!(store.verify().unwrap().is_ok());
}

/// A graph saved with pruned links kept (every graph saved before
/// `index.keep_pruned_links` existed) is rebuilt once under the new setting, not loaded.
#[test]
fn a_graph_linked_otherwise_than_configured_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let queries = common::unit_vectors(20, DIM, 77);
    let expected = {
        let mut config = common::config(dir.path());
        config.index.keep_pruned_links = true;
        let store = Store::open(&config).unwrap();
        fill(&store, 3000, 4);
        assert!(store.save_index().unwrap());
        top_ids(&store, &queries)
    };
    // Manifests written before the setting have no field: they read as "kept".
    let current = std::fs::read_to_string(dir.path().join("index/CURRENT")).unwrap();
    let manifest = dir.path().join("index").join(current.trim()).join("manifest.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(json["keep_pruned_links"], serde_json::json!(true));
    json.as_object_mut().unwrap().remove("keep_pruned_links");
    std::fs::write(&manifest, serde_json::to_vec(&json).unwrap()).unwrap();

    let store = common::open(dir.path());
    assert!(
        matches!(store.index_load_outcome(), LoadOutcome::Outdated { reason } if reason.contains("keep_pruned_links")),
        "{:?}",
        store.index_load_outcome()
    );
    assert_eq!(top_ids(&store, &queries), expected);
    assert!(store.save_index().unwrap());
    drop(store);
    let store = common::open(dir.path());
    assert_eq!(store.index_load_outcome(), &LoadOutcome::Loaded { caught_up: 0 });
}

#[test]
fn a_stale_index_is_caught_up_and_deletes_made_after_the_save_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (later, removed) = {
        let store = common::open(dir.path());
        let first = fill(&store, 1000, 2);
        store.save_index().unwrap();
        // Written and deleted after the save: only sled knows.
        let later = fill(&store, 100, 3);
        let removed: Vec<Ulid> = first.iter().take(50).map(|(id, _)| *id).collect();
        assert_eq!(store.delete_entries(&removed).unwrap().len(), 50);
        (later, first.into_iter().take(50).collect::<Vec<_>>())
    };
    let store = common::open(dir.path());
    assert_eq!(store.index_load_outcome(), &LoadOutcome::Loaded { caught_up: 100 });
    for (id, v) in &later {
        let hit = &store.search(v, 1, &SearchFilter::all()).unwrap()[0];
        assert_eq!(hit.entry.ulid(), Some(*id));
    }
    for (id, v) in &removed {
        assert!(store.get_entry(*id).unwrap().is_none());
        let hits = store.search(v, 3, &SearchFilter::all()).unwrap();
        assert!(hits.iter().all(|h| h.entry.ulid() != Some(*id)), "a deleted entry came back");
    }
    assert_eq!(store.index().len(), 1050);
    assert!(store.verify().unwrap().is_ok(), "{:?}", store.verify().unwrap().problems);
}

#[test]
fn identical_text_in_one_scope_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path());
    let v = &common::unit_vectors(1, DIM, 5)[0];
    let a = store.put_entry(common::fact("acme", "alice", "likes tea", v)).unwrap();
    let b = store.put_entry(common::fact("acme", "alice", "likes tea", v)).unwrap();
    let c = store.put_entry(common::fact("acme", "bob", "likes tea", v)).unwrap();
    let d = store.put_entry(common::fact("other", "alice", "likes tea", v)).unwrap();
    assert!(a.created && !b.created && c.created && d.created);
    assert_eq!(a.id, b.id);
    assert_ne!(a.id, c.id);
    // Within one batch too.
    let batch =
        store.put_entries(vec![common::fact("acme", "carol", "x", v), common::fact("acme", "carol", "x", v)]).unwrap();
    assert_eq!(batch[0].id, batch[1].id);
    assert_eq!(store.index().len(), 4);
}

#[test]
fn filters_keep_tenants_and_users_apart() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path());
    let v = common::unit_vectors(3, DIM, 6);
    store.put_entry(common::fact("acme", "alice", "alice's", &v[0])).unwrap();
    store.put_entry(common::fact("acme", "bob", "bob's", &v[1])).unwrap();
    store.put_entry(common::fact("globex", "alice", "other tenant's alice", &v[2])).unwrap();
    let only = |tenant: &str, user: &str| {
        SearchFilter::clause(ScopeClause {
            tenant: Some(tenant.into()),
            user_id: Some(user.into()),
            ..Default::default()
        })
    };
    for q in &v {
        let hits = store.search(q, 10, &only("acme", "alice")).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].entry.text, "alice's");
    }
    let page = store.list_entries("acme", "alice", Some(Kind::Fact), 10, None).unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(store.erase_user("acme", "alice").unwrap(), 1);
    assert!(store.search(&v[0], 10, &only("acme", "alice")).unwrap().is_empty());
    assert_eq!(store.search(&v[2], 10, &only("globex", "alice")).unwrap().len(), 1);
}

#[test]
fn listing_pages_through_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path());
    let vectors = common::unit_vectors(25, DIM, 8);
    for (i, v) in vectors.iter().enumerate() {
        store.put_entry(common::fact("acme", "alice", &format!("m{i}"), v)).unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list_entries("acme", "alice", None, 10, cursor.as_deref()).unwrap();
        seen.extend(page.items.iter().map(|e| e.text.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, (0..25).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let err = store.list_entries("acme", "bob", None, 10, cursor.as_deref().or(Some("00"))).unwrap_err();
    assert!(err.to_string().contains("cursor"), "{err}");
}

#[test]
fn bad_input_is_refused_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path());
    let v = common::unit_vectors(2, DIM, 9);
    store.put_entry(common::fact("acme", "alice", "first", &v[0])).unwrap();
    let cases: Vec<(engram::store::NewEntry, &str)> = vec![
        (common::fact("acme", "alice", "  ", &v[1]), "text is empty"),
        (common::fact("", "alice", "x", &v[1]), "tenant"),
        (common::fact("acme", "alice", "x", &v[1][..8]), "dimensions"),
        (common::fact("acme", "alice", "x", &[0.0; DIM]), "zero"),
        (
            engram::store::NewEntry {
                metadata: serde_json::json!([1, 2]),
                ..common::fact("acme", "alice", "x", &v[1])
            },
            "metadata",
        ),
        (engram::store::NewEntry { importance: Some(2.0), ..common::fact("acme", "alice", "x", &v[1]) }, "importance"),
    ];
    for (entry, needle) in cases {
        // Paired with a valid entry: the batch is all or nothing.
        let good = common::fact("acme", "alice", "valid but in a bad batch", &v[1]);
        let err = store.put_entries(vec![good, entry]).unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)));
        assert!(err.to_string().contains(needle), "`{err}` should mention {needle}");
        assert!(err.to_string().contains("entry 1"), "`{err}` should name the entry");
    }
    assert_eq!(store.index().len(), 1);
    assert_eq!(store.stats().unwrap().entries, 1);
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn a_corrupt_record_is_reported_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let v = common::unit_vectors(2, DIM, 10);
    let bad_id = {
        let store = common::open(dir.path());
        store.put_entry(common::fact("acme", "alice", "fine", &v[0])).unwrap();
        store.put_entry(common::fact("acme", "alice", "to be damaged", &v[1])).unwrap().id
    };
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        db.open_tree("entries").unwrap().insert(bad_id.to_bytes(), &[0xff, 0xff, 0xff][..]).unwrap();
        db.flush().unwrap();
    }
    let store = common::open(dir.path());
    let hex: String = bad_id.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let err = store.get_entry(bad_id).unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt { tree: "entries", key, .. } if *key == hex), "{err}");
    let report = store.verify().unwrap();
    assert!(report.problems.iter().any(|p| p.contains(&hex) && p.contains("entries")), "{:?}", report.problems);
    // The healthy entry is still served.
    assert_eq!(store.search(&v[0], 1, &SearchFilter::all()).unwrap()[0].entry.text, "fine");
}

#[test]
fn a_database_from_a_newer_binary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(common::open(dir.path()));
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        db.open_tree("meta").unwrap().insert("schema_version", &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(&common::config(dir.path())).err().expect("refused");
    assert!(matches!(err, StoreError::TooNew { found: 99, .. }));
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn sessions_and_documents_round_trip_and_documents_take_their_chunks_along() {
    use engram::store::records::{memory_entry::Source, Document, DocumentSource, Session, Turn};
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path());
    let doc_id = Ulid::new();
    let v = common::unit_vectors(3, DIM, 12);
    let chunks: Vec<_> = v
        .iter()
        .enumerate()
        .map(|(i, e)| engram::store::NewEntry {
            kind: Some(Kind::Knowledge),
            source: Some(Source::Document(DocumentSource {
                document_id: doc_id.to_bytes().to_vec().into(),
                chunk_index: i as u32,
                char_start: 0,
                char_end: 1,
            })),
            ..common::fact("acme", "", &format!("chunk {i}"), e)
        })
        .collect();
    store.put_entries(chunks).unwrap();
    let doc = Document {
        id: doc_id.to_bytes().to_vec().into(),
        title: "Manual".into(),
        scope: Some(Scope::user("acme", "")),
        ..Default::default()
    };
    store.put_document(&doc).unwrap();
    assert_eq!(store.document_chunk_ids(doc_id).unwrap().len(), 3);
    assert!(store.get_document("other-tenant", doc_id).unwrap().is_none());
    assert!(store.delete_document("acme", doc_id).unwrap());
    assert_eq!(store.index().len(), 0);
    assert!(store.search(&v[0], 3, &SearchFilter::all()).unwrap().is_empty());

    let session = Session {
        id: "s1".into(),
        scope: Some(Scope::user("acme", "alice")),
        turns: vec![Turn { role: "user".into(), content: "hello".into(), ..Default::default() }],
        rolling_summary: "greeted".into(),
        ..Default::default()
    };
    store.put_session(&session).unwrap();
    let stored = store.get_session("acme", "s1").unwrap().unwrap();
    assert!(stored.revision > 0, "a stored session has a revision");
    assert_eq!(Session { revision: 0, ..stored }, session);
    assert_eq!(store.get_session("globex", "s1").unwrap(), None);
    assert!(store.delete_session("acme", "s1").unwrap());
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn the_first_batch_fixes_one_width_and_edits_keep_indexes_right() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path());
    let wide = common::unit_vectors(1, DIM, 13);
    let narrow = common::unit_vectors(1, DIM / 2, 14);
    let err = store
        .put_entries(vec![common::fact("acme", "a", "w", &wide[0]), common::fact("acme", "a", "n", &narrow[0])])
        .unwrap_err();
    assert!(err.to_string().contains("entry 1") && err.to_string().contains("dimensions"), "{err}");
    assert_eq!(store.stats().unwrap().dimension, None, "a refused batch fixes nothing");

    let v = common::unit_vectors(2, DIM, 15);
    let a = store.put_entry(common::fact("acme", "a", "tea", &v[0])).unwrap().id;
    let b = store.put_entry(common::fact("acme", "a", "coffee", &v[1])).unwrap().id;
    // An edit may not turn one memory into a copy of another.
    let mut edited = store.get_entry(b).unwrap().unwrap();
    edited.text = "tea".into();
    assert!(store.replace_entry(edited).unwrap_err().to_string().contains(&a.to_string()));
    // A real edit moves the hash key and the vector along.
    let mut edited = store.get_entry(b).unwrap().unwrap();
    edited.text = "green tea".into();
    edited.embedding = v[0].iter().map(|x| -x).collect();
    store.replace_entry(edited).unwrap();
    let hit = &store.search(&v[0].iter().map(|x| -x).collect::<Vec<_>>(), 1, &SearchFilter::all()).unwrap()[0];
    assert_eq!((hit.entry.ulid(), hit.entry.text.as_str()), (Some(b), "green tea"));
    assert!(store.put_entry(common::fact("acme", "a", "coffee", &v[1])).unwrap().created, "the old text is free again");
    assert_eq!(store.put_entry(common::fact("acme", "a", "green tea", &v[1])).unwrap().id, b);
    assert!(store.verify().unwrap().is_ok(), "{:?}", store.verify().unwrap().problems);
}

#[test]
fn a_chunk_two_documents_share_outlives_the_first_deletion() {
    use engram::store::records::{memory_entry::Source, Document, DocumentSource};
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path());
    let v = common::unit_vectors(2, DIM, 21);
    let ingest = |text_and_vectors: &[(&str, &Vec<f32>)]| {
        let doc = Ulid::new();
        let chunks = text_and_vectors
            .iter()
            .enumerate()
            .map(|(i, (text, e))| engram::store::NewEntry {
                kind: Some(Kind::Knowledge),
                source: Some(Source::Document(DocumentSource {
                    document_id: doc.to_bytes().to_vec().into(),
                    chunk_index: i as u32,
                    char_start: 0,
                    char_end: 1,
                })),
                ..common::fact("acme", "", text, e)
            })
            .collect();
        let ids: Vec<Ulid> = store.put_entries(chunks).unwrap().into_iter().map(|o| o.id).collect();
        let record = Document {
            id: doc.to_bytes().to_vec().into(),
            scope: Some(Scope::user("acme", "")),
            chunk_ids: ids.iter().map(|i| i.to_bytes().to_vec().into()).collect(),
            ..Default::default()
        };
        store.put_document(&record).unwrap();
        (doc, ids)
    };
    let (first, first_ids) = ingest(&[("shared boilerplate", &v[0]), ("only in the first", &v[1])]);
    let (second, second_ids) = ingest(&[("shared boilerplate", &v[0])]);
    assert_eq!(first_ids[0], second_ids[0], "identical text is stored once");
    assert!(store.delete_document("acme", first).unwrap());
    assert!(store.get_entry(first_ids[0]).unwrap().is_some(), "the second document still needs it");
    assert!(store.get_entry(first_ids[1]).unwrap().is_none());
    assert!(store.delete_document("acme", second).unwrap());
    assert!(store.get_entry(first_ids[0]).unwrap().is_none(), "gone with its last document");
    assert_eq!(store.index().len(), 0);
    assert!(store.verify().unwrap().is_ok());
}
