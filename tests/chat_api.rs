//! `/v1/chat` with the real models: what a user tells in one session is retrieved in
//! another session of the same user (never for another user or tenant), every exchange
//! is written back, and a session that outgrows its window is compressed into a rolling
//! summary and a `summary` memory.

mod common;

use common::server::Server;
use serde_json::{json, Value};

const ACME: Option<&str> = Some("acme-key");
const GLOBEX: Option<&str> = Some("globex-key");

fn chat(server: &Server, key: Option<&str>, body: Value) -> Value {
    let (status, answer) = server.call("POST", "/v1/chat", key, Some(&body));
    assert_eq!(status, 200, "{answer}");
    answer
}

fn memory_texts(answer: &Value) -> Vec<String> {
    answer["memories"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn facts_cross_sessions_of_one_user_only_and_long_sessions_are_summarised() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[("ENGRAM_AUTH__KEYS", "acme=acme-key,globex=globex-key"), ("ENGRAM_CHAT__MAX_RECENT_TURNS", "4")],
    );
    server.wait_ready();

    let told = chat(
        &server,
        ACME,
        json!({ "user_id": "alice", "max_tokens": 12, "temperature": 0,
        "message": "Please remember that my sister Ingrid lives in Tromsø." }),
    );
    let first_session = told["session_id"].as_str().unwrap().to_owned();
    assert!(!told["reply"].as_str().unwrap().is_empty());
    let usage = &told["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 12);
    assert!(usage["sections"]["system"].as_u64().unwrap() > 0);
    assert!(told["timings"]["generate_ms"].is_u64());

    // A new session (no session_id) of the same user retrieves the fact.
    let asked = chat(
        &server,
        ACME,
        json!({ "user_id": "alice", "max_tokens": 12, "temperature": 0,
        "message": "Where does my sister Ingrid live?" }),
    );
    assert_ne!(asked["session_id"], told["session_id"]);
    let texts = memory_texts(&asked);
    assert!(texts.iter().any(|t| t.contains("Tromsø")), "{asked}");
    assert_eq!(asked["memories"][0]["kind"], "episodic");
    assert!(asked["usage"]["sections"]["memories"].as_u64().unwrap() > 0);

    // Another user of the tenant, and another tenant, never see it.
    let bob = chat(
        &server,
        ACME,
        json!({ "user_id": "bob", "max_tokens": 4, "message": "Where does my sister Ingrid live?" }),
    );
    assert!(memory_texts(&bob).iter().all(|t| !t.contains("Tromsø")), "{bob}");
    let other = chat(
        &server,
        GLOBEX,
        json!({ "user_id": "alice", "max_tokens": 4, "message": "Where does my sister Ingrid live?" }),
    );
    assert!(memory_texts(&other).iter().all(|t| !t.contains("Tromsø")), "{other}");

    // The first session continues: its own turns are in the window, not retrieved again.
    let again = chat(
        &server,
        ACME,
        json!({ "user_id": "alice", "session_id": first_session, "max_tokens": 8,
        "temperature": 0, "message": "And what did I say about Ingrid?" }),
    );
    assert_eq!(again["session_id"].as_str(), Some(first_session.as_str()));
    assert!(memory_texts(&again).iter().all(|t| !t.contains("Please remember that my sister")), "{again}");
    // Three exchanges = 6 turns > 4: the oldest half is folded into the rolling summary.
    chat(
        &server,
        ACME,
        json!({ "user_id": "alice", "session_id": first_session, "max_tokens": 8,
        "temperature": 0, "message": "I also have a dog named Pelle." }),
    );
    let (status, session) = server.call("GET", &format!("/v1/sessions/{first_session}"), ACME, None);
    assert_eq!(status, 200, "{session}");
    assert!(session["summarized_turns"].as_u64().unwrap() >= 2, "{session}");
    assert!(!session["rolling_summary"].as_str().unwrap().is_empty());
    assert!(session["turns"].as_array().unwrap().len() <= 4 + 2);
    let (_, summaries) = server.call("GET", "/v1/memories?user_id=alice&kind=summary", ACME, None);
    assert_eq!(summaries["data"].as_array().unwrap().len(), 1, "{summaries}");
    // Retrieved memories have their use counted.
    let (_, episodes) = server.call("GET", "/v1/memories?user_id=alice&kind=episodic", ACME, None);
    assert!(episodes["data"].as_array().unwrap().iter().any(|m| m["access_count"].as_u64().unwrap() > 0));

    // Another tenant cannot read the session; deleting it removes its memories.
    assert_eq!(server.call("GET", &format!("/v1/sessions/{first_session}"), GLOBEX, None).0, 404);
    assert_eq!(server.call("DELETE", &format!("/v1/sessions/{first_session}"), ACME, None).0, 204);
    let (_, episodes) = server.call("GET", "/v1/memories?user_id=alice&kind=episodic", ACME, None);
    assert!(episodes["data"].as_array().unwrap().iter().all(|m| m["session_id"] != first_session.as_str()));

    // Streamed: deltas, then a `done` event carrying the same metadata; the exchange is
    // written back as for a plain turn.
    let (status, sse) = server.post_text_with_key(
        "/v1/chat",
        ACME,
        &json!({ "user_id": "carol", "max_tokens": 10,
        "temperature": 0, "stream": true, "message": "What is the capital of France?" }),
    );
    assert_eq!(status, 200);
    let mut deltas = String::new();
    let mut done = None;
    let mut event = "";
    for line in sse.lines() {
        if let Some(name) = line.strip_prefix("event: ") {
            event = name;
        } else if let Some(data) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(data).unwrap();
            if event == "done" {
                done = Some(v);
            } else {
                deltas.push_str(v["delta"].as_str().unwrap());
            }
            event = "";
        }
    }
    let done = done.expect("a done event");
    assert!(!deltas.is_empty());
    assert_eq!(done["reply"].as_str().unwrap(), deltas.trim());
    assert!(done["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let (_, episodes) = server.call("GET", "/v1/memories?user_id=carol&kind=episodic", ACME, None);
    assert_eq!(episodes["data"].as_array().unwrap().len(), 1, "the streamed exchange is written back");

    // Bad input names the field.
    for (body, needle) in [
        (json!({ "message": "hi" }), "user_id"),
        (json!({ "user_id": "a", "message": "  " }), "message"),
        (json!({ "user_id": "a", "message": "hi", "stream": "yes" }), "stream"),
    ] {
        let (status, answer) = server.call("POST", "/v1/chat", ACME, Some(&body));
        assert!((400..500).contains(&status), "{body}: {status}");
        assert!(answer["error"]["message"].as_str().unwrap_or_default().contains(needle), "{answer}");
    }
}

#[test]
fn a_sessions_attention_cache_is_reused_and_dropped_with_the_session_or_its_user() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("ENGRAM_AUTH__KEYS", "acme=acme-key,globex=globex-key")]);
    server.wait_ready();
    // Long enough that the first prompt fills more than one 64-token block.
    let message = "I am planning a vegetable garden on a north-facing slope with heavy clay soil, \
                   two apple trees at the top, a shed that blocks the morning sun, and a small pond \
                   at the bottom where frogs live. Which vegetables should I start with?";
    let turn = |key, user: &str, session: &str| {
        let body = json!({ "user_id": user, "session_id": session, "message": message, "max_tokens": 8,
                           "temperature": 0 });
        chat(&server, key, body)["usage"]["cached_tokens"].as_u64().unwrap()
    };
    assert_eq!(turn(ACME, "bo", "garden"), 0, "a first turn has nothing to reuse");
    let reused = turn(ACME, "bo", "garden");
    assert!(reused >= 64, "the second turn reuses the first prompt: {reused}");
    // Another tenant with the same session id and words starts from nothing.
    assert_eq!(turn(GLOBEX, "bo", "garden"), 0);

    // Deleting the session drops its cache: the same id starts over.
    let (status, body) = server.call("DELETE", "/v1/sessions/garden", ACME, None);
    assert_eq!(status, 204, "{body}");
    assert_eq!(turn(ACME, "bo", "garden"), 0, "a deleted session's cache was reused");

    // Erasing the user drops it too.
    assert!(turn(ACME, "bo", "garden") >= 64);
    let (status, body) = server.call("DELETE", "/v1/memories?user_id=bo", ACME, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(turn(ACME, "bo", "garden"), 0, "an erased user's cache was reused");
}
