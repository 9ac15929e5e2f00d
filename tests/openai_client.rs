//! The official OpenAI Python client (installed in the venv by `make test`, which sets
//! ENGRAM_PYTHON) against `/v1/chat/completions`, plain and streamed: the memory behind
//! the OpenAI API is the same as behind `/v1/chat`.

mod common;

use std::process::Command;

use common::server::Server;
use serde_json::json;

const SCRIPT: &str = r#"
import json, sys
from openai import OpenAI

client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="acme-key")
told = client.chat.completions.create(
    model="engram", user="dora", max_tokens=12, temperature=0,
    messages=[{"role": "user", "content": "Remember that my favourite mountain is Galdhøpiggen."}],
)
asked = client.chat.completions.create(
    model="engram", user="dora", max_tokens=12, temperature=0, stream=True,
    messages=[{"role": "user", "content": "Which mountain is my favourite?"}],
)
pieces, finish = [], None
for chunk in asked:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.choices and chunk.choices[0].finish_reason:
        finish = chunk.choices[0].finish_reason
        memories = (chunk.model_extra or {}).get("memories", [])
print(json.dumps({
    "first_reply": told.choices[0].message.content,
    "first_finish": told.choices[0].finish_reason,
    "first_usage": told.usage.total_tokens,
    "streamed": "".join(pieces),
    "finish": finish,
    "memories": [m["text"] for m in memories],
}))
"#;

#[test]
fn the_official_openai_client_works_plain_and_streamed() {
    let python = std::env::var("ENGRAM_PYTHON")
        .expect("ENGRAM_PYTHON names the venv's python with the openai package; run the tests with `make test`");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("ENGRAM_AUTH__KEYS", "acme=acme-key")]);
    server.wait_ready();
    let out = Command::new(python).args(["-c", SCRIPT, &server.base]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!result["first_reply"].as_str().unwrap().is_empty(), "{result}");
    assert!(["stop", "length"].contains(&result["first_finish"].as_str().unwrap()));
    assert!(result["first_usage"].as_u64().unwrap() > 0);
    assert!(!result["streamed"].as_str().unwrap().is_empty(), "{result}");
    assert!(result["finish"].is_string());
    // The second request, a new session, recalled what the first one told.
    let memories = result["memories"].as_array().unwrap();
    assert!(memories.iter().any(|m| m.as_str().unwrap().contains("Galdhøpiggen")), "{result}");

    // Without `user` the API says what is missing, in the JSON error shape.
    let (status, body) = server.call(
        "POST",
        "/v1/chat/completions",
        Some("acme-key"),
        Some(&json!({ "model": "x", "messages": [{ "role": "user", "content": "hi" }] })),
    );
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("user"));
}

/// The client's system message takes the place of the configured system prompt. Measured
/// by the prompt's size: each user is new, so no memory joins the prompt, and " apple"
/// repeated is one token per repeat in the model's vocabulary, so the prompt grows by
/// exactly the repeats added.
#[test]
fn a_client_system_message_replaces_the_configured_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let configured = "apple".to_string() + &" apple".repeat(199);
    let server = Server::start(dir.path(), &[("ENGRAM_CHAT__SYSTEM_PROMPT", &configured)]);
    server.wait_ready();
    let prompt_tokens = |user: &str, system: Option<String>| {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(json!({ "role": "system", "content": s }));
        }
        messages.push(json!({ "role": "user", "content": "Hello there." }));
        let body = json!({ "model": "engram", "user": user, "max_tokens": 1, "messages": messages });
        let (status, reply) = server.call("POST", "/v1/chat/completions", None, Some(&body));
        assert_eq!(status, 200, "{reply}");
        reply["usage"]["prompt_tokens"].as_u64().unwrap()
    };
    let own = |n: usize| Some("apple".to_string() + &" apple".repeat(n - 1));
    let configured_200 = prompt_tokens("u1", None);
    let client_20 = prompt_tokens("u2", own(20));
    let client_40 = prompt_tokens("u3", own(40));
    assert_eq!(client_40 - client_20, 20, "the client's system text is in the prompt");
    assert_eq!(configured_200 - client_20, 180, "and the configured one is not");
}
