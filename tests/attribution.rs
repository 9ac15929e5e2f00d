//! Which memories a reply used, on the real server with the real chat model: a reply
//! that copies a fact from one memory must put most of its attribution on that memory,
//! and only memories that got attention have their use counted.

mod common;

use common::server::Server;
use serde_json::{json, Value};

const ACME: Option<&str> = Some("acme-key");

/// Facts about one user, each a different kind of thing, so that a question about one
/// can be answered only from it.
const FACTS: [&str; 6] = [
    "Priya's locker code is 4417.",
    "Priya's favourite colour is teal.",
    "Priya's cat is called Biscuit.",
    "Priya's dentist appointment is on Friday at nine.",
    "Priya drives a green Skoda estate.",
    "Priya's brother Arjun lives in Leeds.",
];

fn start(dir: &std::path::Path, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![("ENGRAM_AUTH__KEYS", "acme=acme-key")];
    env.extend_from_slice(extra);
    let server = Server::start(dir, &env);
    server.wait_ready();
    for text in FACTS {
        let body = json!({ "user_id": "priya", "text": text, "kind": "fact" });
        let (status, v) = server.call("POST", "/v1/memories", ACME, Some(&body));
        assert_eq!(status, 201, "{v}");
    }
    server
}

fn ask(server: &Server, message: &str) -> Value {
    let body = json!({ "user_id": "priya", "message": message, "max_tokens": 24, "temperature": 0 });
    let (status, answer) = server.call("POST", "/v1/chat", ACME, Some(&body));
    assert_eq!(status, 200, "{answer}");
    answer
}

fn attribution(m: &Value) -> f64 {
    m["attribution"].as_f64().unwrap_or_else(|| panic!("no attribution: {m}"))
}

fn access_count(server: &Server, id: &str) -> u64 {
    let (status, m) = server.call("GET", &format!("/v1/memories/{id}"), ACME, None);
    assert_eq!(status, 200, "{m}");
    m["access_count"].as_u64().unwrap()
}

/// Every memory of the user's, by id, with its access count.
fn access_counts(server: &Server) -> std::collections::HashMap<String, u64> {
    let (status, page) = server.call("GET", "/v1/memories?user_id=priya&limit=100", ACME, None);
    assert_eq!(status, 200, "{page}");
    let items = page["data"].as_array().unwrap();
    items.iter().map(|m| (m["id"].as_str().unwrap().to_owned(), m["access_count"].as_u64().unwrap())).collect()
}

/// The memory holding `fact`, among those a chat answer reports.
fn memory_with<'a>(answer: &'a Value, fact: &str) -> &'a Value {
    let memories = answer["memories"].as_array().unwrap();
    memories.iter().find(|m| m["text"] == fact).unwrap_or_else(|| panic!("`{fact}` was not retrieved: {answer}"))
}

#[test]
fn a_reply_copying_a_memory_attributes_most_to_it_and_counts_only_the_memories_it_used() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let mut session = Value::Null;
    // The second question continues the session: its prompt's prefix comes from the
    // session's attention cache, and attribution must see those positions too.
    for (question, fact, copied) in
        [("What is Priya's locker code?", FACTS[0], "4417"), ("What car does Priya drive?", FACTS[4], "Skoda")]
    {
        let counts_before = access_counts(&server);
        let body = json!({ "user_id": "priya", "message": question, "max_tokens": 24, "temperature": 0,
            "session_id": session });
        let (status, answer) = server.call("POST", "/v1/chat", ACME, Some(&body));
        assert_eq!(status, 200, "{answer}");
        session = answer["session_id"].clone();
        let reply = answer["reply"].as_str().unwrap();
        assert!(reply.contains(copied), "the case needs a reply that copies the fact: {answer}");

        let source = memory_with(&answer, fact);
        let memories = answer["memories"].as_array().unwrap();
        for other in memories.iter().filter(|m| m["id"] != source["id"]) {
            assert!(
                attribution(source) >= 2.0 * attribution(other),
                "{question}: the copied memory must get most attention: {answer}"
            );
        }
        let total: f64 = memories.iter().map(attribution).sum();
        assert!(total > 0.0 && total < 1.0, "shares of one whole: {answer}");
        assert_eq!(source["used"], true, "{answer}");

        // Its use is counted; the memory the reply looked at least is not.
        let least = memories.iter().min_by(|a, b| attribution(a).total_cmp(&attribution(b))).unwrap();
        assert_eq!(least["used"], false, "{answer}");
        let count = |m: &Value| access_count(&server, m["id"].as_str().unwrap());
        let was = |m: &Value| counts_before[m["id"].as_str().unwrap()];
        assert_eq!(count(source), was(source) + 1, "{answer}");
        assert_eq!(count(least), was(least), "{answer}");
    }
}

#[test]
fn attribution_changes_no_reply_and_can_be_switched_off() {
    let question = "What is Priya's locker code?";
    let on_dir = tempfile::tempdir().unwrap();
    let on = ask(&start(on_dir.path(), &[]), question);
    let off_dir = tempfile::tempdir().unwrap();
    let server = start(off_dir.path(), &[("ENGRAM_CHAT__ATTRIBUTION", "false")]);
    let off = ask(&server, question);
    // Probing reads the attention; it must not change what the model writes.
    assert_eq!(on["reply"], off["reply"]);
    let memories = off["memories"].as_array().unwrap();
    assert!(!memories.is_empty(), "{off}");
    for m in memories {
        assert_eq!(m["attribution"], Value::Null, "{off}");
        assert_eq!(m["used"], true, "{off}");
        // Without attribution every memory placed in the prompt counts as used.
        assert_eq!(access_count(&server, m["id"].as_str().unwrap()), 1, "{off}");
    }

    // The OpenAI endpoint reports the same attribution as /v1/chat.
    let body = json!({ "model": "engram", "user": "priya", "temperature": 0, "max_tokens": 24,
        "messages": [{ "role": "user", "content": question }] });
    let on_server_dir = tempfile::tempdir().unwrap();
    let on_server = start(on_server_dir.path(), &[]);
    let (status, completion) = on_server.call("POST", "/v1/chat/completions", ACME, Some(&body));
    assert_eq!(status, 200, "{completion}");
    let source = memory_with(&completion, FACTS[0]);
    let expected = attribution(memory_with(&on, FACTS[0]));
    assert!((attribution(source) - expected).abs() < 1e-4, "{completion} vs {on}");
}
