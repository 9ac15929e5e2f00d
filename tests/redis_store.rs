//! The `redis-cluster` backend against a real Redis Cluster (3 masters, 3 replicas, real
//! `redis-server` processes), with two store instances standing for two engram nodes:
//! what one writes the other finds, guards hold across nodes, and erasure and deletes
//! leave nothing behind on either.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use engram::store::records::{Kind, Scope, Session};
use engram::store::{
    open_backend, MemoryStore, NewEntry, Precondition, ScopeClause, SearchFilter, SessionWrite, StoreError, WriteBatch,
};

fn tenant() -> String {
    format!("t-{}", ulid::Ulid::new())
}

fn user_filter(tenant: &str, user: &str) -> SearchFilter {
    SearchFilter::clause(ScopeClause { tenant: Some(tenant.into()), user_id: Some(user.into()), ..Default::default() })
}

/// The texts of the `k` best hits for `vector` on `store`, read back from the cluster.
fn search(store: &dyn MemoryStore, tenant: &str, user: &str, vector: &[f32], k: usize) -> Vec<String> {
    let filter = user_filter(tenant, user);
    store.prepare_search(&filter).unwrap();
    let hits = store.index().search(vector, k, &filter);
    let resolved = store.resolve_hits(hits.into_iter().map(|h| (h.point, h.similarity)).collect()).unwrap();
    resolved.into_iter().map(|s| s.entry.text).collect()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    started.elapsed()
}

fn two_nodes(cluster: &Cluster) -> (Arc<dyn MemoryStore>, Arc<dyn MemoryStore>) {
    let a = open_backend(&cluster.config(1)).expect("node A connects");
    let b = open_backend(&cluster.config(1)).expect("node B connects");
    (a, b)
}

#[test]
fn two_nodes_share_one_cluster() {
    let cluster = Cluster::start();
    let (a, b) = two_nodes(&cluster);
    let t = tenant();
    let v = common::unit_vectors(40, 16, 7);

    // Written on A, found on B (B loads the scope on its first search).
    let texts: Vec<String> = (0..30).map(|i| format!("fact number {i}")).collect();
    let written = a.put_entries(texts.iter().zip(&v).map(|(t0, v)| common::fact(&t, "u1", t0, v)).collect()).unwrap();
    assert!(written.iter().all(|o| o.created));
    assert_eq!(search(&*b, &t, "u1", &v[3], 1), vec!["fact number 3"]);
    // Another user of the tenant sees nothing of u1's.
    assert!(search(&*b, &t, "u2", &v[3], 5).is_empty());

    // Written on A once B holds the scope: B follows the change stream.
    a.put_entries(vec![common::fact(&t, "u1", "written later", &v[35])]).unwrap();
    let delay = wait_for("a later write on A searchable on B", Duration::from_secs(5), || {
        search(&*b, &t, "u1", &v[35], 1) == vec!["written later"]
    });
    eprintln!("write on A visible to search on B after {delay:?}");

    // Deleted on A: B never returns it again (hits are read back from the cluster).
    let id = written[3].id;
    assert!(a.delete_entry(id).unwrap());
    assert!(b.get_entry(id).unwrap().is_none());
    assert!(!search(&*b, &t, "u1", &v[3], 3).contains(&"fact number 3".to_owned()));
    wait_for("B's cache drops the deleted point", Duration::from_secs(5), || {
        let filter = user_filter(&t, "u1");
        b.index().search(&v[3], 40, &filter).len() == 30
    });

    // Listing pages through every entry, in order, on either node.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = b.list_entries(&t, "u1", Some(Kind::Fact), 7, cursor.as_deref()).unwrap();
        seen.extend(page.items.into_iter().map(|e| e.text));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 30);
    assert!(b.list_entries(&t, "u1", Some(Kind::Episodic), 10, None).unwrap().items.is_empty());
    assert!(matches!(b.list_entries(&t, "u1", None, 10, Some("zz")), Err(StoreError::Invalid(_))));
}

#[test]
fn the_same_text_written_on_both_nodes_at_once_is_stored_once() {
    let cluster = Cluster::start();
    let (a, b) = two_nodes(&cluster);
    let t = tenant();
    let v = common::unit_vectors(1, 16, 1);
    let ids: Vec<ulid::Ulid> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                let (t, v) = (t.clone(), v[0].clone());
                s.spawn(move || store.put_entries(vec![common::fact(&t, "u", "the one text", &v)]).unwrap()[0].id)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(a.list_entries(&t, "u", None, 10, None).unwrap().items.len(), 1);
}

#[test]
fn a_session_revision_admits_one_writer_across_nodes() {
    let cluster = Cluster::start();
    let (a, b) = two_nodes(&cluster);
    let t = tenant();
    let session = Session { id: "s1".into(), scope: Some(Scope::user(&t, "u")), ..Default::default() };
    a.put_session(&session).unwrap();
    let revision = b.get_session(&t, "s1").unwrap().expect("B reads A's session").revision;
    assert!(revision > 0);
    let results: Vec<Result<_, StoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = [a.clone(), b.clone(), a.clone(), b.clone()]
            .into_iter()
            .enumerate()
            .map(|(i, store)| {
                let mut session = session.clone();
                session.rolling_summary = format!("writer {i}");
                s.spawn(move || {
                    store.write(WriteBatch {
                        session: Some(SessionWrite { session, expected_revision: revision }),
                        ..Default::default()
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    assert!(results.iter().filter(|r| r.is_err()).all(|r| matches!(r, Err(StoreError::Conflict(_)))));
    // Another user cannot take the session id over.
    let stolen = Session { id: "s1".into(), scope: Some(Scope::user(&t, "intruder")), ..Default::default() };
    assert!(matches!(a.put_session(&stolen), Err(StoreError::Conflict(_))));
}

#[test]
fn an_erase_on_one_node_leaves_nothing_on_the_other() {
    let cluster = Cluster::start();
    let (a, b) = two_nodes(&cluster);
    let t = tenant();
    let v = common::unit_vectors(12, 16, 3);
    let entries: Vec<NewEntry> = (0..10).map(|i| common::fact(&t, "gone", &format!("private {i}"), &v[i])).collect();
    a.put_entries(entries).unwrap();
    b.put_entries(vec![common::fact(&t, "kept", "someone else's", &v[10])]).unwrap();
    let session = Session { id: "chat".into(), scope: Some(Scope::user(&t, "gone")), ..Default::default() };
    b.put_session(&session).unwrap();
    // B holds the user's scope in its caches before the erase.
    assert_eq!(search(&*b, &t, "gone", &v[4], 1), vec!["private 4"]);
    let epoch = a.user_epoch(&t, "gone").unwrap();

    assert_eq!(a.erase_user(&t, "gone").unwrap(), 10);

    assert!(b.list_entries(&t, "gone", None, 100, None).unwrap().items.is_empty());
    assert!(b.get_session(&t, "chat").unwrap().is_none());
    assert!(search(&*b, &t, "gone", &v[4], 5).is_empty());
    wait_for("B's cache forgets the erased user", Duration::from_secs(5), || {
        b.index().search(&v[4], 20, &user_filter(&t, "gone")).is_empty()
    });
    assert_eq!(search(&*b, &t, "kept", &v[10], 1), vec!["someone else's"]);
    // A write that began before the erase cannot bring the user back.
    let late = WriteBatch {
        preconditions: vec![Precondition::NotErasedSince { tenant: t.clone(), user_id: "gone".into(), epoch }],
        entries: vec![common::fact(&t, "gone", "late write", &v[11])],
        ..Default::default()
    };
    assert!(matches!(b.write(late), Err(StoreError::Conflict(_))));
    assert!(a.list_entries(&t, "gone", None, 100, None).unwrap().items.is_empty());
    assert_eq!(a.user_epoch(&t, "gone").unwrap(), epoch + 2);
}

/// The way from the embedded default to a cluster: `engram store export` with the sled
/// settings, `engram store import` with the cluster's. Every record arrives under its
/// id, a node on the cluster finds the memories, the cluster's own export is the same
/// set of lines, and `engram store stats` counts the whole cluster.
#[test]
fn export_from_sled_then_import_into_the_cluster() {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let cluster = Cluster::start();
    let namespace = format!("import-{}", ulid::Ulid::new());
    let src = tempfile::tempdir().unwrap();
    let t = tenant();
    let v = common::unit_vectors(30, 16, 11);
    let doc_id = ulid::Ulid::new();
    let ids: Vec<ulid::Ulid> = {
        let sled = common::open(src.path());
        // Two users (two shards, most likely), tenant-wide knowledge, a session, a document.
        let entries = (0..30)
            .map(|i| {
                let user = ["ann", "bob", ""][i % 3];
                common::fact(&t, user, &format!("memory {i} of {user}"), &v[i])
            })
            .collect();
        let ids = sled.put_entries(entries).unwrap().into_iter().map(|o| o.id).collect();
        sled.put_session(&Session {
            id: "s1".into(),
            scope: Some(Scope::user(&t, "ann")),
            turns: vec![engram::store::records::Turn {
                role: "user".into(),
                content: "hello".into(),
                created_at_ms: 7,
                ..Default::default()
            }],
            ..Default::default()
        })
        .unwrap();
        let mut doc = engram::store::records::Document {
            id: doc_id.to_bytes().to_vec().into(),
            title: "handbook".into(),
            scope: Some(Scope::user(&t, "")),
            content_hash: vec![0xab; 32].into(),
            created_at_ms: 9,
            ..Default::default()
        };
        doc.set_status(engram::store::records::DocumentStatus::Ready);
        sled.put_document(&doc).unwrap();
        ids
    };
    let engram = |args: &[&str], cluster_env: bool| {
        let mut cmd = Command::new(common::engram_bin());
        cmd.arg("--data-dir").arg(src.path()).args(args).env("RUST_LOG", "warn");
        if cluster_env {
            cmd.envs(cluster.env()).env("ENGRAM_STORE__REDIS_NAMESPACE", &namespace);
        }
        cmd
    };
    let sorted = |b: &[u8]| {
        let mut l: Vec<String> = String::from_utf8_lossy(b).lines().map(str::to_owned).collect();
        l.sort();
        l
    };

    let export = engram(&["store", "export"], false).output().unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    assert_eq!(sorted(&export.stdout).len(), 32);

    let mut import = engram(&["store", "import"], true).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    import.stdin.take().unwrap().write_all(&export.stdout).unwrap();
    let out = import.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 32, "one id per record");

    let node =
        open_backend(&engram::store::StoreConfig { redis_namespace: namespace.clone(), ..cluster.config(1) }).unwrap();
    for (i, id) in ids.iter().enumerate() {
        let user = ["ann", "bob", ""][i % 3];
        assert_eq!(node.get_entry(*id).unwrap().expect("imported under its id").text, format!("memory {i} of {user}"));
    }
    assert_eq!(search(&*node, &t, "bob", &v[4], 1), vec!["memory 4 of bob"]);
    assert_eq!(node.get_session(&t, "s1").unwrap().expect("the session").turns[0].content, "hello");
    assert_eq!(node.list_documents(&t).unwrap().len(), 1);

    // The cluster's export holds exactly the lines sled's did.
    let again = engram(&["store", "export"], true).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let (a, b) = (sorted(&again.stdout), sorted(&export.stdout));
    assert_eq!(a.len(), b.len());
    if let Some((x, y)) = a.iter().zip(&b).find(|(x, y)| x != y) {
        panic!("the cluster's export differs:\n{x:.300}\n{y:.300}");
    }
    let stats = engram(&["store", "stats"], true).output().unwrap();
    assert!(stats.status.success(), "{}", String::from_utf8_lossy(&stats.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(
        (stats["entries"].as_u64(), stats["sessions"].as_u64(), stats["documents"].as_u64()),
        (Some(30), Some(1), Some(1))
    );
    // Commands that only make sense on sled say so instead of opening something else.
    let verify = engram(&["store", "verify"], true).output().unwrap();
    assert!(!verify.status.success());
    assert!(
        String::from_utf8_lossy(&verify.stderr).contains("sled backend only"),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}
