//! Many writers, deleters and readers on one store at once: nothing is lost, nothing
//! deleted comes back, and the background rebuild that the deletes trigger swaps in
//! without losing the writes made meanwhile.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engram::store::{ScopeClause, SearchFilter};
use ulid::Ulid;

const DIM: usize = 32;
const WRITERS: usize = 4;
const PER_WRITER: usize = 300;

#[test]
fn concurrent_writes_deletes_and_searches_stay_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(common::open(dir.path()));
    let stop = Arc::new(AtomicBool::new(false));

    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let queries = common::unit_vectors(50, DIM, 900 + r);
                let mut searches = 0;
                while !stop.load(Ordering::Relaxed) {
                    for q in &queries {
                        let filter = SearchFilter::clause(ScopeClause {
                            tenant: Some("acme".into()),
                            user_id: Some(format!("w{}", searches % WRITERS)),
                            ..Default::default()
                        });
                        for hit in store.search(q, 5, &filter).unwrap() {
                            assert_eq!(hit.entry.scope.as_ref().unwrap().user_id, format!("w{}", searches % WRITERS));
                        }
                        searches += 1;
                    }
                }
                searches
            })
        })
        .collect();

    // Each writer adds its entries in small batches and deletes every other one.
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                let vectors = common::unit_vectors(PER_WRITER, DIM, w as u64);
                let mut kept = Vec::new();
                for (b, chunk) in vectors.chunks(20).enumerate() {
                    let entries = chunk
                        .iter()
                        .enumerate()
                        .map(|(i, v)| common::fact("acme", &format!("w{w}"), &format!("w{w} b{b} i{i}"), v))
                        .collect();
                    let ids: Vec<Ulid> = store.put_entries(entries).unwrap().into_iter().map(|o| o.id).collect();
                    let (gone, stay): (Vec<_>, Vec<_>) =
                        ids.iter().zip(chunk).enumerate().partition(|(i, _)| i % 2 == 0);
                    let gone: Vec<Ulid> = gone.into_iter().map(|(_, (id, _))| *id).collect();
                    assert_eq!(store.delete_entries(&gone).unwrap().len(), gone.len());
                    kept.extend(stay.into_iter().map(|(_, (id, v))| (*id, v.clone())));
                }
                kept
            })
        })
        .collect();
    let kept: Vec<(Ulid, Vec<f32>)> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    let searches: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(searches > 0);

    // Half of everything was deleted: past the tombstone ratio, so a rebuild ran or runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.index().is_rebuilding() || store.index().needs_rebuild() {
        assert!(Instant::now() < deadline, "the background rebuild never finished");
        store.index().rebuild_in_background_if_due();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(store.index().tombstones() < store.index().len() / 2);
    assert_eq!(store.index().len(), WRITERS * PER_WRITER / 2);
    for (id, v) in &kept {
        let hit = &store.search(v, 1, &SearchFilter::all()).unwrap()[0];
        assert_eq!(hit.entry.ulid(), Some(*id));
    }
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.entries, WRITERS * PER_WRITER / 2);
}
