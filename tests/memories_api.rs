//! `/v1/memories` on the real server with the real embedding model: tenants from API
//! keys, adding (deduplicated), listing with cursors, reading, editing, deleting,
//! searching within a user's scope, and erasing a user.

mod common;

use std::process::Command;

use common::server::Server;
use serde_json::{json, Value};

const ACME: Option<&str> = Some("acme-key");
const GLOBEX: Option<&str> = Some("globex-key");

fn texts(results: &Value) -> Vec<String> {
    results["results"].as_array().unwrap().iter().map(|r| r["text"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn memories_are_scoped_searchable_editable_and_erasable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[("ENGRAM_AUTH__KEYS", "acme=acme-key,globex=globex-key"), ("ENGRAM_MODEL__GENERATOR", "")],
    );
    server.wait_ready();

    // No key, or an unknown one: 401 in the JSON shape.
    let (status, body) = server.call("GET", "/v1/memories?user_id=alice", None, None);
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(server.call("GET", "/v1/memories?user_id=alice", Some("wrong"), None).0, 401);

    let facts = [
        ("alice", "Alice's favourite tea is jasmine green tea."),
        ("alice", "Alice works as a structural engineer in Oslo."),
        ("alice", "Alice has a cat called Miso."),
        ("bob", "Bob's favourite tea is smoky lapsang souchong."),
    ];
    let mut ids = Vec::new();
    for (user, text) in facts {
        let (status, body) = server.call(
            "POST",
            "/v1/memories",
            ACME,
            Some(&json!({ "user_id": user, "text": text,
            "metadata": { "source": "onboarding" }, "created_at": "2026-11-01T10:00:00Z" })),
        );
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["kind"], "fact");
        assert_eq!(body["created_at"], "2026-11-01T10:00:00Z");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    // The same text again is the same memory.
    let (status, body) =
        server.call("POST", "/v1/memories", ACME, Some(&json!({ "user_id": "alice", "text": facts[0].1 })));
    assert_eq!((status, body["id"].as_str().unwrap()), (200, ids[0].as_str()));

    // Search finds Alice's tea, never Bob's, and another tenant sees nothing of acme.
    let ask = json!({ "query": "What kind of tea does Alice like?", "user_id": "alice", "k": 3 });
    let (status, found) = server.call("POST", "/v1/memories/search", ACME, Some(&ask));
    assert_eq!(status, 200, "{found}");
    assert_eq!(texts(&found)[0], facts[0].1);
    assert!(!texts(&found).iter().any(|t| t.contains("Bob")));
    let score = found["results"][0]["score"].as_f64().unwrap();
    assert!(score > 0.3 && score <= 1.0, "{score}");
    assert_eq!(texts(&server.call("POST", "/v1/memories/search", GLOBEX, Some(&ask)).1), Vec::<String>::new());
    // Each retrieval method alone: a rare word is the lexical side's strength.
    for mode in ["lexical", "dense", "hybrid"] {
        let q = json!({ "query": "lapsang", "user_id": "bob", "k": 1, "mode": mode, "kinds": ["fact"] });
        let (status, found) = server.call("POST", "/v1/memories/search", ACME, Some(&q));
        assert_eq!(status, 200, "{mode}: {found}");
        assert_eq!(texts(&found), vec![facts[3].1], "{mode}");
    }
    let (status, refused) =
        server.call("POST", "/v1/memories/search", ACME, Some(&json!({ "query": "x", "mode": "psychic" })));
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["param"], "mode", "{refused}");
    assert_eq!(refused["error"]["type"], "invalid_request_error", "{refused}");
    // Filters: metadata equality, created_at range, minimum score.
    let filtered = json!({ "query": "tea", "user_id": "alice", "filters": { "metadata": { "source": "crm" } } });
    assert!(texts(&server.call("POST", "/v1/memories/search", ACME, Some(&filtered)).1).is_empty());
    let filtered =
        json!({ "query": "tea", "user_id": "alice", "filters": { "created_after": "2026-11-02T00:00:00Z" } });
    assert!(texts(&server.call("POST", "/v1/memories/search", ACME, Some(&filtered)).1).is_empty());
    let strict = json!({ "query": "tea", "user_id": "alice", "min_score": 0.99 });
    assert!(texts(&server.call("POST", "/v1/memories/search", ACME, Some(&strict)).1).is_empty());

    // Listing pages through Alice's three memories in order.
    let (_, page) = server.call("GET", "/v1/memories?user_id=alice&limit=2", ACME, None);
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().expect("a second page").to_owned();
    let (_, rest) = server.call("GET", &format!("/v1/memories?user_id=alice&limit=2&cursor={cursor}"), ACME, None);
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert!(rest["next_cursor"].is_null());

    // Another tenant cannot read, edit or delete it.
    let path = format!("/v1/memories/{}", ids[1]);
    assert_eq!(server.call("GET", &path, GLOBEX, None).0, 404);
    assert_eq!(server.call("DELETE", &path, GLOBEX, None).0, 404);
    // An edit re-embeds: the new text is what search finds.
    let (status, edited) =
        server.call("PATCH", &path, ACME, Some(&json!({ "text": "Alice now works as a violin maker in Bergen." })));
    assert_eq!(status, 200, "{edited}");
    let (_, found) = server.call(
        "POST",
        "/v1/memories/search",
        ACME,
        Some(&json!({ "query": "Who builds violins?", "user_id": "alice", "k": 1 })),
    );
    assert_eq!(texts(&found), vec!["Alice now works as a violin maker in Bergen."]);
    // Delete one, then erase the user.
    assert_eq!(server.call("DELETE", &format!("/v1/memories/{}", ids[2]), ACME, None).0, 204);
    assert_eq!(server.call("GET", &format!("/v1/memories/{}", ids[2]), ACME, None).0, 404);
    let (status, erased) = server.call("DELETE", "/v1/memories?user_id=alice", ACME, None);
    assert_eq!(status, 200);
    assert_eq!(erased["deleted_memories"], 2);
    let (_, page) = server.call("GET", "/v1/memories?user_id=alice", ACME, None);
    assert_eq!(page["data"], json!([]));
    assert!(texts(&server.call("POST", "/v1/memories/search", ACME, Some(&ask)).1).is_empty());
    // Bob is untouched.
    let (_, page) = server.call("GET", "/v1/memories?user_id=bob", ACME, None);
    assert_eq!(page["data"].as_array().unwrap().len(), 1);

    // Bad input names the field.
    let cases = [
        ("POST", "/v1/memories", json!({ "text": "no user" }), "user_id"),
        ("POST", "/v1/memories", json!({ "user_id": "a", "text": " " }), "text"),
        ("POST", "/v1/memories", json!({ "user_id": "a", "text": "x", "kind": "feeling" }), "kind"),
        ("POST", "/v1/memories", json!({ "user_id": "a", "text": "x", "created_at": "yesterday" }), "created_at"),
        ("POST", "/v1/memories", json!({ "user_id": "a", "text": "x", "importance": 3 }), "importance"),
        ("POST", "/v1/memories/search", json!({ "query": "x", "k": 0 }), "k"),
        ("POST", "/v1/memories/search", json!({ "query": "x", "kinds": ["fact", "nope"] }), "kinds[1]"),
    ];
    for (method, path, body, needle) in cases {
        let (status, answer) = server.call(method, path, ACME, Some(&body));
        assert!((400..500).contains(&status), "{body}: {status}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "`{message}` should name {needle}");
    }
}

#[test]
fn without_keys_only_loopback_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::engram_bin())
        .args(["serve", "--bind", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env("ENGRAM_MODEL__GENERATOR", "")
        .env("ENGRAM_MODEL__EMBEDDER", "")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without API keys"), "{err}");
}

/// An imported reply is found lexically by what the message it answers names, and still
/// is after a restart (when the lexical index is rebuilt from the store); the reply
/// itself is what comes back, unchanged.
#[test]
fn a_reply_is_found_by_the_words_of_the_turn_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("ENGRAM_MODEL__GENERATOR", "")];
    let server = Server::start(dir.path(), &env);
    server.wait_ready();
    let messages = json!({ "user_id": "rosa", "messages": [
        { "role": "user", "name": "Callum", "content": "Did you buy a bicycle for the charity sportive?" },
        { "role": "user", "name": "Rosa", "content": "Yes, a second-hand Ribble, and it flies." },
        { "role": "user", "name": "Callum", "content": "Lovely. The weather here is grim." },
    ]});
    let (status, body) = server.call("POST", "/v1/sessions/s1/messages", None, Some(&messages));
    assert_eq!(status, 201, "{body}");
    let search = |server: &Server| {
        let q = json!({ "query": "charity sportive", "user_id": "rosa", "mode": "lexical", "k": 5 });
        let (status, found) = server.call("POST", "/v1/memories/search", None, Some(&q));
        assert_eq!(status, 200, "{found}");
        texts(&found)
    };
    let found = search(&server);
    assert_eq!(found.len(), 2, "the question and its reply, not the unrelated turn: {found:?}");
    assert!(found.contains(&"Rosa: Yes, a second-hand Ribble, and it flies.".to_owned()), "{found:?}");
    let (ok, _) = server.terminate();
    assert!(ok);
    let server = Server::start(dir.path(), &env);
    server.wait_ready();
    assert_eq!(search(&server), found);
}
