//! Scale-out for real: two `engram serve` processes with the real models share one Redis
//! Cluster (3 masters, 3 replicas, real `redis-server` processes). What one node is told,
//! the other finds and recalls; an erase on one leaves nothing on the other; killing a
//! node, or a Redis master, with SIGKILL in the middle of writes loses nothing that was
//! acknowledged, and the survivors keep serving.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::server::Server;
use serde_json::{json, Value};

const KEY: &str = "acme-key";

fn node(cluster: &Cluster, namespace: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let mut env = cluster.env();
    env.push(("ENGRAM_STORE__REDIS_NAMESPACE".into(), namespace.into()));
    env.push(("ENGRAM_AUTH__KEYS".into(), format!("acme={KEY}")));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = Server::start(dir.path(), &env);
    server.wait_ready();
    (dir, server)
}

fn namespace() -> String {
    format!("nodes-{}", ulid::Ulid::new())
}

fn texts(found: &Value, field: &str) -> Vec<String> {
    found[field]
        .as_array()
        .map_or(Vec::new(), |a| a.iter().map(|r| r["text"].as_str().unwrap_or_default().to_owned()).collect())
}

fn search(server: &Server, user: &str, query: &str) -> Vec<String> {
    let (status, found) = server.call(
        "POST",
        "/v1/memories/search",
        Some(KEY),
        Some(&json!({ "query": query, "user_id": user, "k": 5 })),
    );
    assert_eq!(status, 200, "{found}");
    texts(&found, "results")
}

/// Every memory id of `user`, paging through the listing.
fn all_ids(server: &Server, user: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/v1/memories?user_id={user}&limit=100{cursor}");
        let (status, page) = server.call("GET", &path, Some(KEY), None);
        assert_eq!(status, 200, "{page}");
        ids.extend(page["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return ids,
        }
    }
}

/// One request with a timeout; `None` when no HTTP answer came (a node died).
fn send(base: &str, path: &str, body: &Value) -> Option<(u16, Value)> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
    match agent.post(&format!("{base}{path}")).set("authorization", &format!("Bearer {KEY}")).send_json(body.clone()) {
        Ok(r) | Err(ureq::Error::Status(_, r)) => {
            let status = r.status();
            Some((status, r.into_json().unwrap_or(Value::Null)))
        }
        Err(_) => None,
    }
}

#[test]
fn two_nodes_share_memories_recall_and_erasure() {
    let cluster = Cluster::start();
    let ns = namespace();
    let (_da, a) = node(&cluster, &ns);
    let (_db, b) = node(&cluster, &ns);

    // Added on A, found by search on B.
    let bike = "Alice rides a green Ribble gravel bike to work.";
    let (status, added) = a.call("POST", "/v1/memories", Some(KEY), Some(&json!({ "user_id": "alice", "text": bike })));
    assert_eq!(status, 201, "{added}");
    assert_eq!(search(&b, "alice", "What bicycle does Alice ride?")[0], bike);
    assert!(search(&b, "bob", "What bicycle does Alice ride?").is_empty());

    // Told in a chat on A, recalled in a chat on B.
    let (status, told) = a.call(
        "POST",
        "/v1/chat",
        Some(KEY),
        Some(&json!({ "user_id": "alice", "max_tokens": 8, "temperature": 0,
            "message": "Please remember that my sister Ingrid lives in Tromsø." })),
    );
    assert_eq!(status, 200, "{told}");
    let session = told["session_id"].as_str().unwrap().to_owned();
    // B holds Alice's scope already (the search above): A's write reaches it through the
    // change stream within the follow interval, not at once. Wait for that, bounded.
    let told_at = Instant::now();
    while !search(&b, "alice", "Where does my sister Ingrid live?").iter().any(|t| t.contains("Tromsø")) {
        assert!(told_at.elapsed() < Duration::from_secs(5), "the chat on A was not searchable on B within 5 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, asked) = b.call(
        "POST",
        "/v1/chat",
        Some(KEY),
        Some(&json!({ "user_id": "alice", "max_tokens": 8, "temperature": 0,
            "message": "Where does my sister Ingrid live?" })),
    );
    assert_eq!(status, 200, "{asked}");
    assert!(texts(&asked, "memories").iter().any(|t| t.contains("Tromsø")), "{asked}");
    // B reads the session A wrote.
    assert_eq!(b.call("GET", &format!("/v1/sessions/{session}"), Some(KEY), None).0, 200);

    // Once B holds Alice's memories, a new one on A reaches B's search within moments.
    let later = "Alice's gravel bike has orange bar tape.";
    let written = Instant::now();
    assert_eq!(a.call("POST", "/v1/memories", Some(KEY), Some(&json!({ "user_id": "alice", "text": later }))).0, 201);
    while !search(&b, "alice", "What colour is the bar tape on Alice's bike?").contains(&later.to_owned()) {
        assert!(written.elapsed() < Duration::from_secs(5), "a write on A was not searchable on B within 5 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("a write on node A was searchable on node B after {:?}", written.elapsed());

    // Erased on A: nothing of Alice's is left to B — no memory, no session, no hit.
    let (status, erased) = a.call("DELETE", "/v1/memories?user_id=alice", Some(KEY), None);
    assert_eq!(status, 200, "{erased}");
    assert!(all_ids(&b, "alice").is_empty());
    assert!(search(&b, "alice", "What bicycle does Alice ride?").is_empty());
    assert_eq!(b.call("GET", &format!("/v1/sessions/{session}"), Some(KEY), None).0, 404);
    let (_, asked) = b.call(
        "POST",
        "/v1/chat",
        Some(KEY),
        Some(&json!({ "user_id": "alice", "max_tokens": 4, "temperature": 0,
            "message": "Where does my sister Ingrid live?" })),
    );
    assert!(!texts(&asked, "memories").iter().any(|t| t.contains("Tromsø") || t.contains("Ribble")), "{asked}");

    // `engram bench load` spreads its clients over both nodes and measures how long a
    // write on A takes to be found on B.
    let out = Command::new(common::engram_bin())
        .args(["bench", "load", "--url", &format!("{},{}", a.base, b.base), "--key", KEY])
        .args(["--clients", "2", "--seconds", "2", "--mix", "search=1,add=1", "--visibility-probes", "5", "--json"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["urls"], json!([a.base, b.base]));
    assert!(report["operations"]["add"]["ok"].as_u64().unwrap() > 0, "{report}");
    let seen = &report["visibility"];
    assert_eq!((seen["probes"].as_u64(), seen["not_seen"].as_u64()), (Some(5), Some(0)), "{seen}");
    let delay = &seen["delay_ms"];
    assert!(delay["p50"].as_f64().unwrap() > 0.0 && delay["max"].as_f64().unwrap() < 10_000.0, "{seen}");
}

/// Writers add memories with unique texts through `bases` (round-robin) until `stop`;
/// returns the ids the nodes acknowledged. Failed or unanswered requests are retried
/// elsewhere and not counted.
fn write_until(bases: &[String], stop: &AtomicBool, users: usize) -> Vec<(String, String)> {
    let acked = Mutex::new(Vec::new());
    let counter = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for w in 0..4 {
            let (acked, counter) = (&acked, &counter);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let user = format!("user-{}", n % users);
                    let base = &bases[(n + w) % bases.len()];
                    let body =
                        json!({ "user_id": user, "text": format!("note {n}: parcel {n} went to shelf {}", n * 7) });
                    match send(base, "/v1/memories", &body) {
                        Some((201, v)) => acked.lock().unwrap().push((user, v["id"].as_str().unwrap().to_owned())),
                        _ => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            });
        }
    });
    acked.into_inner().unwrap()
}

fn assert_all_present(server: &Server, acked: &[(String, String)], users: usize) {
    let mut missing = Vec::new();
    for u in 0..users {
        let user = format!("user-{u}");
        let stored = all_ids(server, &user);
        missing.extend(acked.iter().filter(|(owner, id)| *owner == user && !stored.contains(id)).cloned());
    }
    assert!(missing.is_empty(), "{} acknowledged writes lost: {missing:?}", missing.len());
}

#[test]
fn killing_a_node_mid_write_loses_nothing_and_the_other_serves_on() {
    let cluster = Cluster::start();
    let ns = namespace();
    let (_da, a) = node(&cluster, &ns);
    let (_db, b) = node(&cluster, &ns);
    let bases = vec![a.base.clone(), b.base.clone()];
    let stop = AtomicBool::new(false);
    let acked = std::thread::scope(|s| {
        let writers = s.spawn(|| write_until(&bases, &stop, 6));
        std::thread::sleep(Duration::from_secs(4));
        Command::new("kill").args(["-KILL", &a.pid().to_string()]).status().unwrap();
        std::thread::sleep(Duration::from_secs(4));
        stop.store(true, Ordering::Relaxed);
        writers.join().unwrap()
    });
    assert!(acked.len() > 20, "only {} writes were acknowledged", acked.len());
    assert_all_present(&b, &acked, 6);
    assert!(!search(&b, "user-1", "which shelf did the parcel go to").is_empty());
}

#[test]
fn killing_a_redis_master_mid_write_loses_nothing_acknowledged() {
    let cluster = Cluster::start();
    let ns = namespace();
    let (_da, a) = node(&cluster, &ns);
    let bases = vec![a.base.clone()];
    let stop = AtomicBool::new(false);
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "{masters:?}");
    let victim = masters[0];
    let (acked, recovered) = std::thread::scope(|s| {
        let writers = s.spawn(|| write_until(&bases, &stop, 12));
        std::thread::sleep(Duration::from_secs(3));
        let pid = cluster.pid(victim).expect("the master's pid");
        Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
        let killed = Instant::now();
        // The replica takes over after the node timeout and an election.
        let recovered = loop {
            let now = cluster.masters();
            if now.len() == 3 && !now.contains(&victim) {
                break killed.elapsed();
            }
            assert!(killed.elapsed() < Duration::from_secs(30), "no failover within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        };
        std::thread::sleep(Duration::from_secs(3));
        // The promoted master has no replica until the dead node is back, and every
        // write to its shards waits for one (redis_wait_replicas = 1): restart it.
        cluster.restart_missing();
        cluster.wait_for_replicas(Duration::from_secs(60));
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        (writers.join().unwrap(), recovered)
    });
    eprintln!("failover after {recovered:?}; {} writes acknowledged", acked.len());
    // Writes go on after the failover: every user (shards on every master) takes new ones.
    // A client that meets a 503 while the client library's slot map settles does what the
    // answer says (Retry-After: 1); within 90 s every write must have landed (on a
    // loaded CI machine the client library took over 30 s to settle once).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut retries = 0;
    for u in 0..12 {
        let body = json!({ "user_id": format!("user-{u}"), "text": format!("after the failover, user {u}") });
        loop {
            let (status, v) = send(&a.base, "/v1/memories", &body).expect("the node answers");
            if status == 503 && Instant::now() < deadline {
                retries += 1;
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            assert_eq!(status, 201, "{v}");
            break;
        }
    }
    eprintln!("post-failover writes: {retries} retried after a 503");
    assert_all_present(&a, &acked, 12);
    assert!(!search(&a, "user-3", "after the failover").is_empty());
}
