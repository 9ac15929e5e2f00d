//! Memories that change, on the real server with the real embedding model and store:
//! one memory superseding others (and what search, list, `as_of` and delete make of
//! it), the history edits leave, expiry, and `agent_id` as a filter. Each guarantee is
//! also attacked: another user's or tenant's ids, a double supersession, two writers
//! racing to supersede the same memory.

mod common;

use std::time::{Duration, Instant};

use common::server::Server;
use serde_json::{json, Value};

const ACME: Option<&str> = Some("acme-key");
const GLOBEX: Option<&str> = Some("globex-key");

fn start(dir: &std::path::Path) -> Server {
    let server = Server::start(
        dir,
        &[
            ("ENGRAM_AUTH__KEYS", "acme=acme-key,globex=globex-key"),
            ("ENGRAM_MODEL__GENERATOR", ""),
            ("ENGRAM_STORE__EXPIRY_PURGE_INTERVAL_SECS", "1"),
        ],
    );
    server.wait_ready();
    server
}

fn add(server: &Server, key: Option<&str>, body: Value) -> Value {
    let (status, v) = server.call("POST", "/v1/memories", key, Some(&body));
    assert_eq!(status, 201, "{body} → {v}");
    v
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

fn search(server: &Server, body: Value) -> Vec<String> {
    let (status, found) = server.call("POST", "/v1/memories/search", ACME, Some(&body));
    assert_eq!(status, 200, "{found}");
    found["results"].as_array().unwrap().iter().map(|r| r["text"].as_str().unwrap().to_owned()).collect()
}

fn list(server: &Server, query: &str) -> Vec<String> {
    let (status, page) = server.call("GET", &format!("/v1/memories?{query}"), ACME, None);
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap().to_owned()).collect()
}

const LYON: &str = "Dana lives in Lyon, in a flat near the Croix-Rousse.";
const PORTO: &str = "Dana moved to Porto and lives near the Ribeira now.";
const HOME: &str = "Where does Dana live?";

#[test]
fn a_newer_fact_supersedes_the_older_which_stays_in_history_and_returns_when_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let lyon = add(&server, ACME, json!({ "user_id": "dana", "text": LYON, "created_at": "2025-01-10T09:00:00Z" }));
    assert_eq!((lyon["current"].clone(), lyon["valid_to"].clone()), (json!(true), Value::Null));
    let porto = add(
        &server,
        ACME,
        json!({ "user_id": "dana", "text": PORTO, "created_at": "2025-03-02T09:00:00Z", "supersedes": [id(&lyon)] }),
    );
    assert_eq!(porto["supersedes"], json!([id(&lyon)]));
    assert_eq!(porto["current"], true);
    let (status, old) = server.call("GET", &format!("/v1/memories/{}", id(&lyon)), ACME, None);
    assert_eq!(status, 200, "{old}");
    assert_eq!(old["current"], false, "{old}");
    assert_eq!(old["superseded_by"], id(&porto).as_str());
    assert_eq!(old["valid_to"], "2025-03-02T09:00:00Z", "it held until the newer fact began");

    // Search and list see only the current fact unless asked for more.
    let ask = |extra: Value| {
        let mut q = json!({ "query": HOME, "user_id": "dana", "k": 5 });
        q.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        search(&server, q)
    };
    assert_eq!(ask(json!({})), vec![PORTO]);
    for mode in ["dense", "lexical"] {
        assert!(!ask(json!({ "mode": mode })).contains(&LYON.to_owned()), "{mode}");
    }
    let mut all = ask(json!({ "include_superseded": true }));
    all.sort();
    assert_eq!(all, vec![LYON, PORTO]);
    // Memory as it stood in February 2025: Lyon, and Porto not yet.
    assert_eq!(ask(json!({ "as_of": "2025-02-01T00:00:00Z" })), vec![LYON]);
    assert_eq!(ask(json!({ "as_of": "2024-12-01T00:00:00Z" })), Vec::<String>::new());
    assert_eq!(list(&server, "user_id=dana"), vec![PORTO]);
    assert_eq!(list(&server, "user_id=dana&as_of=2025-02-01T00:00:00Z"), vec![LYON]);
    let feb_ms = 1_738_368_000_000i64; // 2025-02-01T00:00:00Z
    assert_eq!(list(&server, &format!("user_id=dana&as_of={feb_ms}")), vec![LYON], "milliseconds work too");
    assert_eq!(list(&server, "user_id=dana&include_superseded=true").len(), 2);
    let (status, bad) = server.call("GET", "/v1/memories?user_id=dana&as_of=last-tuesday", ACME, None);
    assert_eq!(status, 400, "{bad}");
    assert!(bad["error"]["message"].as_str().unwrap().contains("as_of"), "{bad}");

    // History links both ways.
    let (_, h) = server.call("GET", &format!("/v1/memories/{}/history", id(&porto)), ACME, None);
    assert_eq!(h["supersedes"], json!([id(&lyon)]), "{h}");
    let (_, h) = server.call("GET", &format!("/v1/memories/{}/history", id(&lyon)), ACME, None);
    assert_eq!((h["current"].clone(), h["superseded_by"].clone()), (json!(false), json!(id(&porto))), "{h}");

    // A memory is superseded once: a second newer fact must name the current one.
    let (status, v) = server.call(
        "POST",
        "/v1/memories",
        ACME,
        Some(&json!({ "user_id": "dana", "text": "Dana lives in Madrid.", "supersedes": [id(&lyon)] })),
    );
    assert_eq!(status, 409, "{v}");
    assert_eq!(list(&server, "user_id=dana&include_superseded=true").len(), 2, "the refused write left nothing");

    // Deleting the newer fact makes the older one current again.
    assert_eq!(server.call("DELETE", &format!("/v1/memories/{}", id(&porto)), ACME, None).0, 204);
    let (_, old) = server.call("GET", &format!("/v1/memories/{}", id(&lyon)), ACME, None);
    assert_eq!(
        (old["current"].clone(), old["valid_to"].clone(), old["superseded_by"].clone()),
        (json!(true), Value::Null, Value::Null)
    );
    assert_eq!(ask(json!({})), vec![LYON]);

    // It all survives a restart.
    let (ok, _) = server.terminate();
    assert!(ok);
    let server = start(dir.path());
    let (_, old) = server.call("GET", &format!("/v1/memories/{}", id(&lyon)), ACME, None);
    assert_eq!(old["current"], true, "{old}");
    assert_eq!(search(&server, json!({ "query": HOME, "user_id": "dana", "k": 5 })), vec![LYON]);
}

#[test]
fn superseding_is_refused_across_users_and_tenants_and_for_bad_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let erin = add(&server, ACME, json!({ "user_id": "erin", "text": "Erin drives a blue van." }));
    let theirs = add(&server, GLOBEX, json!({ "user_id": "dana", "text": "Dana of globex keeps bees." }));
    let cases = [
        (ACME, json!([id(&erin)]), "another user's memory"),
        (ACME, json!([id(&theirs)]), "another tenant's memory"),
        (ACME, json!(["01ARZ3NDEKTSV4RRFFQ69G5FAV"]), "an id that names nothing"),
        (ACME, json!(["not-an-id"]), "a malformed id"),
        (ACME, json!((0..33).map(|_| id(&erin)).collect::<Vec<_>>()), "too many ids"),
    ];
    for (key, supersedes, what) in cases {
        let body = json!({ "user_id": "dana", "text": "Dana has a red bicycle.", "supersedes": supersedes });
        let (status, v) = server.call("POST", "/v1/memories", key, Some(&body));
        assert_eq!(status, 400, "{what}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{what}: {v}");
        // Nothing of another tenant leaks into the message, and nothing was written.
        assert!(!v.to_string().contains("globex"), "{what}: {v}");
        assert!(list(&server, "user_id=dana").is_empty(), "{what}: the refused write left a memory");
    }
    // The targets are untouched.
    let (_, e) = server.call("GET", &format!("/v1/memories/{}", id(&erin)), ACME, None);
    assert_eq!(e["current"], true);
    let (_, t) = server.call("GET", &format!("/v1/memories/{}", id(&theirs)), GLOBEX, None);
    assert_eq!(t["current"], true);
}

#[test]
fn two_writers_racing_to_supersede_one_memory_leave_exactly_one_successor() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    for round in 0..4 {
        let user = format!("racer-{round}");
        let old = add(&server, ACME, json!({ "user_id": user, "text": "The meeting room is on floor two." }));
        let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
            let writers: Vec<_> = (0..2)
                .map(|w| {
                    let (server, user, old) = (&server, &user, id(&old));
                    s.spawn(move || {
                        let text = format!("The meeting room moved to floor {}.", w + 5);
                        let body = json!({ "user_id": user, "text": text, "supersedes": [old] });
                        server.call("POST", "/v1/memories", ACME, Some(&body))
                    })
                })
                .collect();
            writers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
        let winners: Vec<&Value> = answers.iter().filter(|(s, _)| *s == 201).map(|(_, v)| v).collect();
        assert_eq!(winners.len(), 1, "round {round}: {answers:?}");
        assert!(statuses.contains(&409), "round {round}: {statuses:?}");
        let (_, stored) = server.call("GET", &format!("/v1/memories/{}", id(&old)), ACME, None);
        assert_eq!(stored["superseded_by"], winners[0]["id"], "round {round}");
        // The loser wrote nothing: one current memory, one superseded.
        assert_eq!(list(&server, &format!("user_id={user}")).len(), 1, "round {round}");
        assert_eq!(list(&server, &format!("user_id={user}&include_superseded=true")).len(), 2, "round {round}");
    }
}

#[test]
fn edits_keep_their_history() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let m = add(&server, ACME, json!({ "user_id": "finn", "text": "Finn's locker code is 1234.", "importance": 0.4 }));
    let path = format!("/v1/memories/{}", id(&m));
    let patch = |body: Value| {
        let (status, v) = server.call("PATCH", &path, ACME, Some(&body));
        assert_eq!(status, 200, "{v}");
        v
    };
    let v = patch(json!({ "text": "Finn's locker code is 9876." }));
    assert_eq!(v["version"], 2);
    let v = patch(json!({ "importance": 0.9, "metadata": { "checked": true } }));
    assert_eq!(v["version"], 3);
    // An edit that changes nothing makes no version.
    assert_eq!(patch(json!({ "text": "Finn's locker code is 9876." }))["version"], 3);

    let (status, h) = server.call("GET", &format!("{path}/history"), ACME, None);
    assert_eq!(status, 200, "{h}");
    let versions = h["versions"].as_array().unwrap();
    let texts: Vec<&str> = versions.iter().map(|v| v["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["Finn's locker code is 1234.", "Finn's locker code is 9876.", "Finn's locker code is 9876."]);
    let events: Vec<(&str, Value)> =
        versions.iter().map(|v| (v["event"].as_str().unwrap(), v["changed"].clone())).collect();
    assert_eq!(
        events,
        [("created", json!([])), ("edited", json!(["text"])), ("edited", json!(["metadata", "importance"]))]
    );
    assert!((versions[0]["importance"].as_f64().unwrap() - 0.4).abs() < 1e-6);
    assert_eq!(versions[2]["metadata"], json!({ "checked": true }));
    // Each version ends when the next begins; the current one has not ended.
    for pair in versions.windows(2) {
        assert_eq!(pair[0]["until"], pair[1]["since"], "{h}");
    }
    assert_eq!(versions[2]["until"], Value::Null);
    // Search finds the memory by its current text only.
    let found = search(&server, json!({ "query": "1234", "user_id": "finn", "mode": "lexical" }));
    assert!(found.is_empty(), "the old text is history, not searchable: {found:?}");
    // Another tenant cannot read the history.
    assert_eq!(server.call("GET", &format!("{path}/history"), GLOBEX, None).0, 404);
}

#[test]
fn concurrent_edits_and_a_supersession_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let m = add(&server, ACME, json!({ "user_id": "gale", "text": "Gale parks in bay 14.", "importance": 0.05 }));
    let path = format!("/v1/memories/{}", id(&m));
    const EDITS: usize = 6;
    let successor = std::thread::scope(|s| {
        let patcher = |field: &'static str| {
            let (server, path) = (&server, &path);
            s.spawn(move || {
                for i in 0..EDITS {
                    let body = match field {
                        "metadata" => json!({ "metadata": { "n": i } }),
                        _ => json!({ "importance": 0.1 * (i + 1) as f64 }),
                    };
                    let (status, v) = server.call("PATCH", path, ACME, Some(&body));
                    assert_eq!(status, 200, "{field} edit {i}: {v}");
                }
            })
        };
        let (a, b) = (patcher("metadata"), patcher("importance"));
        let newer = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(30));
            add(&server, ACME, json!({ "user_id": "gale", "text": "Gale parks in bay 3 now.", "supersedes": [id(&m)] }))
        });
        a.join().unwrap();
        b.join().unwrap();
        newer.join().unwrap()
    });
    let (status, stored) = server.call("GET", &path, ACME, None);
    assert_eq!(status, 200, "{stored}");
    // No edit undid the supersession, and none undid another edit.
    assert_eq!(stored["superseded_by"], successor["id"], "{stored}");
    assert_eq!(stored["current"], false, "{stored}");
    assert_eq!(stored["metadata"], json!({ "n": EDITS - 1 }), "{stored}");
    assert!((stored["importance"].as_f64().unwrap() - 0.1 * EDITS as f64).abs() < 1e-6, "{stored}");
    let (_, h) = server.call("GET", &format!("{path}/history"), ACME, None);
    let versions = h["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1 + 2 * EDITS, "every edit left its version: {h}");
    let changed: Vec<Value> = versions.iter().skip(1).map(|v| v["changed"].clone()).collect();
    assert_eq!(changed.iter().filter(|c| **c == json!(["metadata"])).count(), EDITS, "{h}");
    assert_eq!(changed.iter().filter(|c| **c == json!(["importance"])).count(), EDITS, "{h}");
}

#[test]
fn automatic_supersession_is_opt_in_stays_within_the_user_and_skips_additions() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let current = |id: &str| server.call("GET", &format!("/v1/memories/{id}"), ACME, None).1["current"].clone();
    let old = add(&server, ACME, json!({ "user_id": "hana", "text": "Hana's locker code is 1234." }));
    let bystander = add(&server, ACME, json!({ "user_id": "ivo", "text": "Hana's locker code is 1234." }));
    // Off by default: the update is stored beside the old fact.
    let plain = add(&server, ACME, json!({ "user_id": "hana", "text": "Hana's locker code is 5555." }));
    assert_eq!(plain["supersedes"], json!([]), "{plain}");
    assert_eq!(current(&id(&old)), true);
    // Asked for, it finds the fact the new one updates, and only the user's own.
    let newer = add(
        &server,
        ACME,
        json!({ "user_id": "hana", "text": "Hana changed her locker code, it is 9876 now.", "auto_supersede": true }),
    );
    let superseded: Vec<&str> = newer["supersedes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(superseded.contains(&id(&old).as_str()), "{newer}");
    assert_eq!(current(&id(&old)), false);
    assert_eq!(current(&id(&bystander)), true, "another user's fact is never touched");
    // An addition supersedes nothing.
    let squash = add(&server, ACME, json!({ "user_id": "hana", "text": "Hana plays squash on Mondays." }));
    let tennis = add(
        &server,
        ACME,
        json!({ "user_id": "hana", "text": "Hana also plays tennis on Mondays.", "auto_supersede": true }),
    );
    assert_eq!(tennis["supersedes"], json!([]), "{tennis}");
    assert_eq!(current(&id(&squash)), true);
}

#[test]
fn with_automatic_supersession_on_a_chat_message_updates_the_fact_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[("ENGRAM_AUTH__KEYS", "acme=acme-key"), ("ENGRAM_MEMORIES__AUTO_SUPERSEDE", "true")],
    );
    server.wait_ready();
    let lyon = add(&server, ACME, json!({ "user_id": "jo", "text": "Jo lives in Lyon." }));
    let tea = add(&server, ACME, json!({ "user_id": "jo", "text": "Jo drinks green tea every morning." }));
    let body = json!({ "user_id": "jo", "message": "We moved to Porto last month, Jo lives there now.",
        "max_tokens": 8, "temperature": 0 });
    let (status, answer) = server.call("POST", "/v1/chat", ACME, Some(&body));
    assert_eq!(status, 200, "{answer}");
    let get = |id: &str| server.call("GET", &format!("/v1/memories/{id}"), ACME, None).1;
    let old = get(&id(&lyon));
    assert_eq!(old["current"], false, "{old}");
    // The fact now points at the episodic memory of the turn that changed it.
    let by = old["superseded_by"].as_str().unwrap().to_owned();
    let newer = get(&by);
    assert_eq!(newer["kind"], "episodic", "{newer}");
    assert!(newer["text"].as_str().unwrap().contains("Porto"), "{newer}");
    assert_eq!(get(&id(&tea))["current"], true, "an unrelated fact stays current");
}

/// `engram eval supersede` on the labelled pairs in tests/data with the real embedding
/// model: the rules keep the precision and recall the README reports. The tuning pairs
/// shaped the rules; the held-out pairs did not, and their precision (under 0.9) is why
/// the automatic path is opt-in.
#[test]
fn the_supersession_rules_keep_their_precision_and_recall_on_the_labelled_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["eval", "supersede", "--url", &server.base, "--key", "acme-key", "--json"])
        .arg(format!("{data}/supersession_pairs_tune.json"))
        .arg(format!("{data}/supersession_pairs_heldout.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find(|l| l.starts_with('{')).expect("a JSON line");
    let report: Value = serde_json::from_str(line).unwrap();
    let figure = |file: &str, what: &str| {
        let row = report["results"].as_array().unwrap().iter().find(|r| r["file"] == file).unwrap();
        row[what].as_f64().unwrap()
    };
    // Measured: tuning 0.917 / 0.917, held-out 0.824 / 0.700.
    assert!(figure("supersession_pairs_tune.json", "precision") >= 0.9, "{stdout}");
    assert!(figure("supersession_pairs_tune.json", "recall") >= 0.85, "{stdout}");
    assert!(figure("supersession_pairs_heldout.json", "precision") >= 0.78, "{stdout}");
    assert!(figure("supersession_pairs_heldout.json", "recall") >= 0.65, "{stdout}");
}

#[test]
fn expired_memories_leave_search_at_once_and_are_purged() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let (status, v) = server.call(
        "POST",
        "/v1/memories",
        ACME,
        Some(&json!({ "user_id": "gus", "text": "Gus is at the dentist.", "expires_at": "2020-01-01T00:00:00Z" })),
    );
    assert_eq!(status, 400, "an expiry in the past: {v}");
    assert_eq!(v["error"]["param"], "expires_at", "{v}");

    let in_ms =
        |ms: i64| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 + ms;
    let brief = add(
        &server,
        ACME,
        json!({ "user_id": "gus", "text": "Gus is parked on level 3 today.", "expires_at": in_ms(4_000) }),
    );
    let kept = add(
        &server,
        ACME,
        json!({ "user_id": "gus", "text": "Gus parks a green hatchback.", "expires_at": in_ms(4_000) }),
    );
    let lasting = add(&server, ACME, json!({ "user_id": "gus", "text": "Gus works on level 5 of the tower." }));
    assert!(brief["expires_at"].is_string(), "{brief}");
    // Lifting an expiry keeps the memory.
    let (status, v) =
        server.call("PATCH", &format!("/v1/memories/{}", id(&kept)), ACME, Some(&json!({ "expires_at": null })));
    assert_eq!((status, v["expires_at"].clone()), (200, Value::Null), "{v}");
    let q = json!({ "query": "where is Gus parked", "user_id": "gus", "k": 5 });
    assert_eq!(search(&server, q.clone()).len(), 3);

    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut left = search(&server, q.clone());
    left.sort();
    assert_eq!(left, vec![kept["text"].as_str().unwrap(), lasting["text"].as_str().unwrap()]);
    assert!(!list(&server, "user_id=gus&include_superseded=true").contains(&brief["text"].as_str().unwrap().to_owned()));
    // The purge deletes it within a few intervals.
    let path = format!("/v1/memories/{}", id(&brief));
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.call("GET", &path, ACME, None).0 != 404 {
        assert!(Instant::now() < deadline, "the expired memory was never purged");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(server.call("GET", &format!("/v1/memories/{}", id(&kept)), ACME, None).0, 200);
    assert_eq!(server.call("GET", &format!("/v1/memories/{}", id(&lasting)), ACME, None).0, 200);
}

#[test]
fn agent_id_filters_search_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let memories = [
        ("travel", "Hana prefers aisle seats on long flights."),
        ("travel", "Hana's frequent flyer number ends in 442."),
        ("cooking", "Hana is allergic to peanuts."),
        ("", "Hana's birthday is on the ninth of May."),
    ];
    for (agent, text) in memories {
        add(&server, ACME, json!({ "user_id": "hana", "agent_id": agent, "text": text }));
    }
    let q = |agent: Option<&str>| {
        let mut body = json!({ "query": "what should I know about Hana", "user_id": "hana", "k": 10 });
        if let Some(a) = agent {
            body["agent_id"] = json!(a);
        }
        let mut found = search(&server, body);
        found.sort();
        found
    };
    assert_eq!(q(None).len(), 4);
    assert_eq!(q(Some("travel")), vec![memories[0].1, memories[1].1]);
    assert_eq!(q(Some("cooking")), vec![memories[2].1]);
    assert!(q(Some("gardening")).is_empty());
    let mut listed = list(&server, "user_id=hana&agent_id=travel");
    listed.sort();
    assert_eq!(listed, vec![memories[0].1, memories[1].1]);
    assert_eq!(list(&server, "user_id=hana").len(), 4);
}
