//! The store's guarantees under races and crashes, at the store level: guarded writes
//! fail (writing nothing) once the user was erased, the session deleted or changed, or
//! the job cancelled; an erase cut off by a crash is finished at the next open; point
//! ids never repeat, not even when the newest entry is deleted before a restart.

mod common;

use engram::store::records::{IngestJob, JobState, Kind, Scope, Session, Turn};
use engram::store::{Precondition, SearchFilter, SessionWrite, StoreError, WriteBatch};
use ulid::Ulid;

const DIM: usize = 16;

fn session(id: &str, user: &str, turns: &[&str], digest: &[u8]) -> Session {
    Session {
        id: id.into(),
        scope: Some(Scope::user("acme", user)),
        turns: turns.iter().map(|t| Turn { role: "user".into(), content: (*t).into(), ..Default::default() }).collect(),
        transcript_digest: digest.to_vec().into(),
        ..Default::default()
    }
}

#[test]
fn deleting_the_newest_entry_never_gives_its_point_id_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let v = common::unit_vectors(3, DIM, 5);
    let (deleted_point, deleted_vector) = {
        let store = common::open(dir.path());
        store.put_entry(common::fact("acme", "alice", "kept", &v[0])).unwrap();
        let newest = store.put_entry(common::fact("acme", "alice", "deleted", &v[1])).unwrap().id;
        let point = store.get_entry(newest).unwrap().unwrap().point_id;
        // The saved graph holds the newest node; then the entry goes.
        assert!(store.save_index().unwrap());
        assert!(store.delete_entry(newest).unwrap());
        (point, v[1].clone())
    };
    let store = common::open(dir.path());
    let fresh = store.put_entry(common::fact("acme", "alice", "fresh", &v[2])).unwrap().id;
    let fresh_point = store.get_entry(fresh).unwrap().unwrap().point_id;
    assert!(fresh_point > deleted_point, "point {fresh_point} given out again (deleted had {deleted_point})");
    // The new memory is found by its own vector, and nothing answers for the deleted one.
    let hit = &store.search(&v[2], 1, &SearchFilter::all()).unwrap()[0];
    assert_eq!(hit.entry.ulid(), Some(fresh));
    assert!(hit.similarity > 0.999);
    let by_old = store.search(&deleted_vector, 3, &SearchFilter::all()).unwrap();
    assert!(by_old.iter().all(|h| h.similarity < 0.999), "a live entry carries the deleted vector");
    assert!(store.verify().unwrap().is_ok(), "{:?}", store.verify().unwrap().problems);
}

#[test]
fn a_write_guarded_by_the_erase_epoch_fails_after_an_erase_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path());
    let v = common::unit_vectors(3, DIM, 9);
    store.put_entry(common::fact("acme", "alice", "before", &v[0])).unwrap();
    let epoch = store.user_epoch("acme", "alice").unwrap();
    assert_eq!(epoch % 2, 0);
    // The request that read `epoch` is slow; an erase happens meanwhile.
    assert_eq!(store.erase_user("acme", "alice").unwrap(), 1);
    let guard = Precondition::NotErasedSince { tenant: "acme".into(), user_id: "alice".into(), epoch };
    let late = WriteBatch {
        preconditions: vec![guard.clone()],
        entries: vec![common::fact("acme", "alice", "late write-back", &v[1])],
        session: Some(SessionWrite { session: session("s1", "alice", &["hi"], b""), expected_revision: 0 }),
        ..Default::default()
    };
    assert!(matches!(store.write(late), Err(StoreError::Conflict(_))));
    assert!(store.list_entries("acme", "alice", None, 10, None).unwrap().items.is_empty());
    assert!(store.get_session("acme", "s1").unwrap().is_none());
    // Other users are not affected; a request that starts after the erase writes.
    let bob = Precondition::NotErasedSince { tenant: "acme".into(), user_id: "bob".into(), epoch: 0 };
    let batch = WriteBatch {
        preconditions: vec![bob],
        entries: vec![common::fact("acme", "bob", "bob's", &v[1])],
        ..Default::default()
    };
    store.write(batch).unwrap();
    let now = store.user_epoch("acme", "alice").unwrap();
    assert!(now > epoch && now % 2 == 0);
    let fresh = Precondition::NotErasedSince { tenant: "acme".into(), user_id: "alice".into(), epoch: now };
    let batch = WriteBatch {
        preconditions: vec![fresh],
        entries: vec![common::fact("acme", "alice", "after", &v[2])],
        ..Default::default()
    };
    store.write(batch).unwrap();
    assert_eq!(store.list_entries("acme", "alice", None, 10, None).unwrap().items.len(), 1);
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn sessions_are_written_only_at_the_revision_read_and_revisions_never_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path());
    let write = |s: Session, expected_revision| {
        store.write(WriteBatch { session: Some(SessionWrite { session: s, expected_revision }), ..Default::default() })
    };
    let r1 = write(session("s", "alice", &["a"], b"d1"), 0).unwrap().session_revision.unwrap();
    assert!(r1 > 0);
    // Two writers that read the same revision: the second one loses, whole.
    let r2 = write(session("s", "alice", &["a", "b"], b"d2"), r1).unwrap().session_revision.unwrap();
    assert!(matches!(write(session("s", "alice", &["a", "c"], b"d3"), r1), Err(StoreError::Conflict(_))));
    assert_eq!(store.get_session("acme", "s").unwrap().unwrap().turns.len(), 2);
    // The transcript index follows the session: the old digest no longer finds it.
    assert!(store.find_session_by_transcript("acme", "alice", b"d1").unwrap().is_none());
    assert_eq!(store.find_session_by_transcript("acme", "alice", b"d2").unwrap().unwrap().id, "s");
    assert!(store.find_session_by_transcript("acme", "bob", b"d2").unwrap().is_none());
    // Deleted, then created again by a new turn: a writer that read r2 still loses.
    assert!(store.delete_session("acme", "s").unwrap());
    assert!(store.find_session_by_transcript("acme", "alice", b"d2").unwrap().is_none());
    let r3 = write(session("s", "alice", &["new"], b""), 0).unwrap().session_revision.unwrap();
    assert!(r3 > r2);
    assert!(matches!(write(session("s", "alice", &["a", "b", "late"], b""), r2), Err(StoreError::Conflict(_))));
    assert_eq!(store.get_session("acme", "s").unwrap().unwrap().turns[0].content, "new");
}

#[test]
fn a_cancelled_job_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path());
    let v = common::unit_vectors(2, DIM, 3);
    let (job_id, doc_id) = (Ulid::new(), Ulid::new());
    let mut job = IngestJob {
        id: job_id.to_bytes().to_vec().into(),
        scope: Some(Scope::user("acme", "")),
        document_id: doc_id.to_bytes().to_vec().into(),
        text: "the document".into(),
        ..Default::default()
    };
    job.set_state(JobState::JobPending);
    store.put_job(&job).unwrap();
    // Deleting the document while it is still being ingested cancels the job.
    assert!(store.delete_document("acme", doc_id).unwrap());
    assert!(store.get_job(job_id).unwrap().is_none());
    let mut chunk = common::fact("acme", "", "chunk", &v[0]);
    chunk.kind = Some(Kind::Knowledge);
    let batch = WriteBatch {
        preconditions: vec![Precondition::JobPending(job_id)],
        entries: vec![chunk],
        ..Default::default()
    };
    assert!(matches!(store.write(batch), Err(StoreError::Conflict(_))));
    assert_eq!(store.stats().unwrap().entries, 0);
}

#[test]
fn an_erase_cut_off_by_a_crash_is_finished_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let v = common::unit_vectors(4, DIM, 11);
    {
        let store = common::open(dir.path());
        for (i, v) in v.iter().enumerate() {
            let user = if i < 3 { "alice" } else { "bob" };
            store.put_entry(common::fact("acme", user, &format!("m{i}"), v)).unwrap();
        }
        store.put_session(&session("s-alice", "alice", &["hello"], b"")).unwrap();
    }
    // What the first step of an erase leaves when the process dies right after it: the
    // user's epoch odd ("being erased"), the data still there.
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        let key = [&[0u8, 4][..], b"acme", &[0, 5], b"alice"].concat();
        db.open_tree("erasures").unwrap().insert(key, &1u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let store = common::open(dir.path());
    assert!(store.list_entries("acme", "alice", None, 10, None).unwrap().items.is_empty());
    assert!(store.get_session("acme", "s-alice").unwrap().is_none());
    assert_eq!(store.list_entries("acme", "bob", None, 10, None).unwrap().items.len(), 1);
    assert_eq!(store.user_epoch("acme", "alice").unwrap(), 2);
    assert!(store.verify().unwrap().is_ok(), "{:?}", store.verify().unwrap().problems);
}
