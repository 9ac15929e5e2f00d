//! The engine's HTTP face against the real server and the real packaged models:
//! `/v1/embeddings`, `/v1/completions` (plain and streamed), `/v1/models`, and the
//! errors around them.

mod common;

use std::time::Duration;

use common::server::Server;
use serde_json::{json, Value};

const CHAT_PROMPT: &str = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f64>().sqrt() * b.iter().map(|x| x * x).sum::<f64>().sqrt())
}

fn vector(v: &Value) -> Vec<f64> {
    v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn embeddings_completions_and_models() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    server.wait_ready();

    // Reference values from sentence-transformers on the same files (shared notes).
    let (status, body) = server.post(
        "/v1/embeddings",
        &json!({ "model": "anything", "input": ["A man is eating food.", "A man is eating a piece of bread.",
                  "The new movie is awesome", "The new movie is so great"] }),
    );
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 4);
    let first = vector(&data[0]);
    assert_eq!(first.len(), 384);
    // The encoder multiplies in bf16 by default exactly where the CPU has AMX.
    let bf16 = engram::model::bert::cpu_multiplies_bf16();
    assert_eq!(server.embedder_dtype().contains("products in BFloat16"), bf16, "{}", server.embedder_dtype());
    let tolerance = server.reference_tolerance();
    for (got, want) in first.iter().zip([0.033242, 0.004406, -0.006277, 0.048379, -0.138702]) {
        assert!((got - want).abs() < tolerance, "{got} vs {want}");
    }
    assert!((cosine(&first, &vector(&data[1])) - 0.75534).abs() < 1e-3);
    assert!((cosine(&vector(&data[2]), &vector(&data[3])) - 0.89390).abs() < 1e-3);
    assert_eq!(body["usage"]["prompt_tokens"], 8 + 11 + 7 + 8);
    assert_eq!(body["truncated"], json!([]));

    // An input past the encoder's 256 tokens is cut, and the cut is reported.
    let long = "word ".repeat(400);
    let (status, body) = server.post("/v1/embeddings", &json!({ "input": ["short", long] }));
    assert_eq!(status, 200);
    assert_eq!(body["truncated"], json!([1]));

    // Greedy completion: the reference answer of the shared notes.
    let request = json!({ "prompt": CHAT_PROMPT, "max_tokens": 20, "temperature": 0 });
    let (status, body) = server.post("/v1/completions", &request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], "The capital of France is Paris.");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"],
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    // Streamed: the same text in pieces, a final chunk with the finish reason, [DONE].
    let (status, sse) = server.post_text("/v1/completions", &with(&request, "stream", json!(true)));
    assert_eq!(status, 200);
    let events: Vec<&str> = sse.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.len() > 3, "streamed in pieces");
    let text: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(text, "The capital of France is Paris.");
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");

    // A stop string ends the text before it and never shows.
    let (_, body) = server.post("/v1/completions", &with(&request, "stop", json!([" Paris"])));
    assert_eq!(body["choices"][0]["text"], "The capital of France is");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // max_tokens cuts with finish_reason "length".
    let (_, body) = server.post("/v1/completions", &with(&request, "max_tokens", json!(3)));
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 3);
    // Sampling with a seed is reproducible.
    let seeded = json!({ "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0.9, "seed": 7 });
    assert_eq!(
        server.post("/v1/completions", &seeded).1["choices"],
        server.post("/v1/completions", &seeded).1["choices"]
    );

    // Standard fields sent as null mean "not set"; fields OpenAI does not have are ignored.
    let nulls = json!({ "prompt": "Once upon a time", "max_tokens": null, "temperature": 0, "top_p": null, "n": null,
                        "stop": null, "seed": null, "logprobs": null, "echo": null, "suffix": null, "best_of": null,
                        "stream": null, "stream_options": null, "logit_bias": null, "presence_penalty": null,
                        "frequency_penalty": null, "user": null, "some_future_field": { "x": 1 } });
    let (status, body) = server.post("/v1/completions", &nulls);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 16, "max_tokens defaults to 16: {body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    let (status, _, body) = server.get("/v1/models");
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["all-MiniLM-L6-v2", "SmolLM2-135M-Instruct.Q4_1"]);

    // Bad input: 4xx in the JSON shape, naming what is wrong.
    let cases = [
        ("/v1/embeddings", json!({ "input": [] }), "input"),
        ("/v1/embeddings", json!({ "input": ["ok", "  "] }), "input[1]"),
        ("/v1/embeddings", json!({ "inputs": ["typo"] }), "inputs"),
        ("/v1/completions", json!({ "prompt": "x", "max_tokens": "many" }), "max_tokens"),
        ("/v1/completions", json!({ "prompt": "x", "temperature": 9 }), "temperature"),
        ("/v1/completions", json!({ "prompt": "x", "top_p": 0 }), "top_p"),
        ("/v1/completions", json!({ "prompt": "x", "stop": ["a", "b", "c", "d", "e"] }), "stop"),
        ("/v1/completions", json!({ "prompt": "hello ".repeat(9000) }), "8192"),
        ("/v1/completions", json!({ "prompt": "x", "n": 3 }), "n"),
        ("/v1/completions", json!({ "prompt": [1, 2, 99999999] }), "prompt[2]"),
        ("/v1/completions", json!({ "prompt": "x", "logit_bias": { "7": 500 } }), "logit_bias"),
        ("/v1/embeddings", json!({ "input": "x", "encoding_format": "int8" }), "encoding_format"),
        ("/v1/embeddings", json!({ "input": [[]] }), "input[0]"),
    ];
    for (path, body, needle) in cases {
        let (status, answer) = server.post(path, &body);
        assert!((400..500).contains(&status), "{path} {body}: {status}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{path}: `{message}` should name {needle}");
    }
}

/// `request` with one field set.
fn with(request: &Value, key: &str, value: Value) -> Value {
    let mut out = request.clone();
    out[key] = value;
    out
}

#[test]
fn a_full_generation_queue_answers_429() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("ENGRAM_MODEL__GENERATOR_QUEUE", "1"), ("ENGRAM_MODEL__EMBEDDER", "")]);
    server.wait_ready();
    let long = json!({ "prompt": "Write a long story about a dragon.", "max_tokens": 400, "temperature": 0 });
    // One request runs, one waits in the queue of 1; the rest must be refused at once.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("{}/v1/completions", server.base);
            let body = long.clone();
            std::thread::spawn(move || match ureq::post(&url).timeout(Duration::from_secs(120)).send_json(body) {
                Ok(r) => r.status(),
                Err(ureq::Error::Status(code, _)) => code,
                Err(e) => panic!("{e}"),
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    // Without an embedding model, its endpoint says so.
    let (status, body) = server.post("/v1/embeddings", &json!({ "input": "x" }));
    assert_eq!(status, 404);
    assert!(body["error"]["message"].as_str().unwrap().contains("embedding model"));
}
