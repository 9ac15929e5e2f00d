//! Concurrent chats on different sessions keep their own state, and a restart keeps
//! everything: sessions, memories, and what search finds.

mod common;

use common::server::Server;
use serde_json::{json, Value};

const KEY: Option<&str> = Some("acme-key");

#[test]
fn concurrent_sessions_do_not_mix_and_a_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("ENGRAM_AUTH__KEYS", "acme=acme-key")];
    let server = Server::start(dir.path(), &env);
    server.wait_ready();

    // Two users chat at the same time, each in their own session, three turns each.
    let topics = [("ola", "I keep bees on my roof in Trondheim."), ("kari", "I restore old sailing boats in Arendal.")];
    let sessions: Vec<(String, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = topics
            .iter()
            .map(|(user, fact)| {
                let server = &server;
                s.spawn(move || {
                    let mut session: Option<String> = None;
                    for message in [fact.to_string(), "Tell me more.".into(), "Thanks!".into()] {
                        let body = json!({ "user_id": user, "session_id": session, "message": message, "max_tokens": 6, "temperature": 0 });
                        let (status, answer) = server.call("POST", "/v1/chat", KEY, Some(&body));
                        assert_eq!(status, 200, "{answer}");
                        session = answer["session_id"].as_str().map(str::to_owned);
                    }
                    (user.to_string(), session.unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let check = |server: &Server| {
        for ((user, session), (_, fact)) in sessions.iter().zip(topics) {
            let (status, s) = server.call("GET", &format!("/v1/sessions/{session}"), KEY, None);
            assert_eq!(status, 200);
            assert_eq!(s["user_id"], user.as_str());
            let turns: Vec<&str> =
                s["turns"].as_array().unwrap().iter().map(|t| t["content"].as_str().unwrap()).collect();
            assert_eq!(turns.len(), 6, "{s}");
            assert_eq!(turns[0], fact);
            assert_eq!((turns[2], turns[4]), ("Tell me more.", "Thanks!"));
            let other = topics.iter().find(|(u, _)| u != user).unwrap().1;
            assert!(!turns.contains(&other), "sessions mixed: {s}");
            let (_, found) = server.call(
                "POST",
                "/v1/memories/search",
                KEY,
                Some(&json!({ "query": fact, "user_id": user, "k": 3 })),
            );
            let texts: Vec<&str> =
                found["results"].as_array().unwrap().iter().map(|r| r["text"].as_str().unwrap()).collect();
            assert!(texts.iter().any(|t| t.contains(fact)), "{found}");
            assert!(texts.iter().all(|t| !t.contains(other)), "{found}");
        }
    };
    check(&server);
    let (_, before): (u16, Value) = server.call("GET", "/v1/memories?user_id=ola", KEY, None);

    // Stop cleanly and start again on the same data: everything is still there.
    let (ok, _) = server.terminate();
    assert!(ok);
    let server = Server::start(dir.path(), &env);
    server.wait_ready();
    check(&server);
    let (_, after) = server.call("GET", "/v1/memories?user_id=ola", KEY, None);
    assert_eq!(before["data"], after["data"]);
}
