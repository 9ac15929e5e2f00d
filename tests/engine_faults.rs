//! Faults inside the models, injected with failpoints (`--features failpoints`, which
//! `make test` turns on) into the real server and the real models: a panic while serving
//! answers the jobs it struck with a 500 and the model carries on; a model thread that
//! dies anyway is restarted with its model reloaded, and later calls work.

mod common;

use std::time::{Duration, Instant};

use common::server::Server;
use serde_json::{json, Value};

const CHAT_PROMPT: &str = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
const ANSWER: &str = "The capital of France is Paris.";

fn greedy(stream: bool) -> Value {
    json!({ "prompt": CHAT_PROMPT, "max_tokens": 20, "temperature": 0, "stream": stream })
}

fn error_message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

/// The reference embedding of "A man is eating food." starts with these values.
fn assert_reference_embedding(server: &Server, body: &Value) {
    let tolerance = server.reference_tolerance();
    let got: Vec<f64> =
        body["data"][0]["embedding"].as_array().unwrap().iter().take(3).map(|x| x.as_f64().unwrap()).collect();
    for (got, want) in got.iter().zip([0.033242, 0.004406, -0.006277]) {
        assert!((got - want).abs() < tolerance, "{got} vs {want}");
    }
}

#[test]
fn a_panic_answers_its_own_job_with_a_500_and_the_model_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    // The 4th decode step panics twice (one plain request, then one streamed), the first
    // forward pass of the encoder panics once.
    let failpoints =
        "generator::decode=3*off->1*panic(injected decode fault)->3*off->1*panic(injected decode fault)->off;\
                      embedder::forward=1*panic(injected forward fault)->off";
    let server = Server::start(dir.path(), &[("FAILPOINTS", failpoints)]);
    server.wait_ready();

    let (status, body) = server.post("/v1/completions", &greedy(false));
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "internal");
    assert!(error_message(&body).contains("injected decode fault"), "{body}");

    // Streamed, the fault arrives after the first pieces: an error event, then the end.
    let (status, sse) = server.post_text("/v1/completions", &greedy(true));
    assert_eq!(status, 200);
    let events: Vec<&str> = sse.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    let error: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    assert!(error_message(&error).contains("injected decode fault"), "{sse}");
    assert_eq!(events.last(), Some(&"[DONE]"));

    // The same thread serves the next request, with the same answer as an unharmed model.
    let (status, body) = server.post("/v1/completions", &greedy(false));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], ANSWER);

    let request = json!({ "input": ["A man is eating food."] });
    let (status, body) = server.post("/v1/embeddings", &request);
    assert_eq!(status, 500, "{body}");
    assert!(error_message(&body).contains("injected forward fault"), "{body}");
    let (status, body) = server.post("/v1/embeddings", &request);
    assert_eq!(status, 200, "{body}");
    assert_reference_embedding(&server, &body);

    // Contained per job: no thread was restarted, and the server stayed ready throughout.
    let (status, _, ready) = server.get("/readyz");
    assert_eq!(status, 200, "{ready}");
    let (_, log) = server.terminate();
    assert!(!log.iter().any(|l| l.contains("restarting")), "{log:?}");
}

#[test]
fn a_crashed_model_thread_is_restarted_and_serves_again() {
    let dir = tempfile::tempdir().unwrap();
    // A job crashes each serving loop outside its per-job guard: the chat model's first,
    // the embedder's second. The chat model's first reload fails too (the initial load is
    // the first evaluation), so the restart backs off and tries again.
    let failpoints = "generator::worker=1*panic(injected worker crash)->off;\
                      generator::load=1*off->1*return(injected reload failure)->off;\
                      embedder::worker=1*off->1*panic(injected worker crash)->off";
    let server = Server::start(dir.path(), &[("FAILPOINTS", failpoints)]);
    server.wait_ready();

    // The job that was being served when the thread died is answered 503.
    let (status, body) = server.post("/v1/completions", &greedy(false));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");

    // While the model reloads, calls are refused at once rather than queued, and
    // /readyz says so.
    let started = Instant::now();
    let (status, _) = server.post("/v1/completions", &greedy(false));
    assert_eq!(status, 503);
    assert!(started.elapsed() < Duration::from_secs(1), "refused at once, not queued");
    let (status, _) = server.post_text("/v1/completions", &greedy(true));
    assert_eq!(status, 503, "a stream is refused before it starts");
    let mut seen_restarting = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, ready) = server.get("/readyz");
        if status == 200 {
            break;
        }
        if ready["status"] == "restarting" {
            assert_eq!(ready["models"]["generator"]["running"], false);
            seen_restarting = true;
        }
        assert!(Instant::now() < deadline, "never ready again");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(seen_restarting, "/readyz reported the restart");

    let crashed = server.wait_log("the model thread crashed", Duration::from_secs(5)).expect("the crash is logged");
    assert_eq!(crashed["model"], "chat model");
    assert!(crashed["panic"].as_str().unwrap().contains("injected worker crash"));
    let failed = server.wait_log("reloading the model failed", Duration::from_secs(10)).expect("logged");
    assert!(failed["error"].as_str().unwrap().contains("injected reload failure"));
    server.wait_log("model reloaded", Duration::from_secs(30)).expect("the reload is logged");
    server.wait_ready();
    let (status, body) = server.post("/v1/completions", &greedy(false));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], ANSWER);

    // The embedder likewise; once reloaded it embeds exactly as before the crash (in the
    // same precision: a reload must not lose the configured products).
    let request = json!({ "input": ["A man is eating food."] });
    let (status, before) = server.post("/v1/embeddings", &request);
    assert_eq!(status, 200, "{before}");
    let (status, _) = server.post("/v1/embeddings", &request);
    assert_eq!(status, 503);
    server.wait_log("model reloaded", Duration::from_secs(30)).expect("the embedder's reload is logged");
    server.wait_ready();
    let (status, body) = server.post("/v1/embeddings", &request);
    assert_eq!(status, 200, "{body}");
    assert_reference_embedding(&server, &body);
    assert_eq!(body["data"][0]["embedding"], before["data"][0]["embedding"], "the reloaded model embeds as before");

    let (ok, _) = server.terminate();
    assert!(ok, "a clean exit after the restarts");
}
