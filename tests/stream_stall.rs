//! A streaming client that stops reading, against the real server and chat model: the
//! generation thread never waits on it, and its stream is dropped (its generation
//! stopped) once it has read nothing for `server.stream_stall_timeout_secs`.
//!
//! The stalled client is a raw TCP socket that sends a streamed completion and never
//! reads. Its small receive buffer and segment size keep the kernel's buffers for the
//! connection (which the server's writes fill before anything waits) to a few hundred
//! tokens of events; on loopback they would otherwise grow to megabytes.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::server::Server;
use serde_json::json;
use socket2::{Domain, Socket, Type};

/// A prompt the model continues for as long as it is allowed to.
const COUNTING: &str = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,";

/// Sends a streamed completion of up to `max_tokens` and returns the socket, unread.
fn stalled_client(server: &Server, max_tokens: usize) -> TcpStream {
    let addr: SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_tcp_mss(536).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    let body = json!({ "prompt": COUNTING, "max_tokens": max_tokens, "temperature": 0, "stream": true }).to_string();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream
}

/// A short completion; returns its status and how long it took.
fn short_completion(server: &Server) -> (u16, Duration) {
    let started = Instant::now();
    let request = json!({ "prompt": "Hello", "max_tokens": 4, "temperature": 0 });
    let status = match ureq::post(&format!("{}/v1/completions", server.base))
        .timeout(Duration::from_secs(300))
        .send_json(request)
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    };
    (status, started.elapsed())
}

#[test]
fn a_stalled_stream_is_dropped_and_its_generation_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        Server::start(dir.path(), &[("ENGRAM_SERVER__STREAM_STALL_TIMEOUT_SECS", "2"), ("ENGRAM_MODEL__EMBEDDER", "")]);
    server.wait_ready();
    let max_tokens = 3000;
    let _stalled = stalled_client(&server, max_tokens);
    std::thread::sleep(Duration::from_millis(300));

    // Queued behind the stalled generation, this one runs once the stall is detected:
    // after the kernel's buffers fill (a few hundred tokens) and 2 s more, far sooner
    // than the 3000 tokens would take.
    let (status, took) = short_completion(&server);
    assert_eq!(status, 200);
    let dropped = server.wait_log("stopped reading its stream", Duration::from_secs(1)).expect("the stall is logged");
    assert_eq!(dropped["stall_secs"], 2);
    let cancelled = server.wait_log("generation cancelled", Duration::from_secs(5)).expect("the generation stopped");
    let generated = cancelled["completion_tokens"].as_u64().unwrap();
    assert!(generated < max_tokens as u64 / 2, "stopped at {generated} tokens");
    eprintln!("stalled generation stopped after {generated} tokens; the next completion took {took:?}");

    // Streams that are read are untouched by the timeout.
    let request = json!({ "prompt": COUNTING, "max_tokens": 40, "temperature": 0, "stream": true });
    let (status, sse) = server.post_text("/v1/completions", &request);
    assert_eq!(status, 200);
    assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");
}

#[test]
fn the_generator_does_not_wait_on_a_client_that_reads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The stall timeout is out of reach here: only the generator not waiting on the
    // client lets the next request through.
    let server = Server::start(
        dir.path(),
        &[
            ("ENGRAM_SERVER__STREAM_STALL_TIMEOUT_SECS", "3600"),
            ("ENGRAM_SERVER__REQUEST_TIMEOUT_SECS", "3600"),
            ("ENGRAM_MODEL__EMBEDDER", ""),
        ],
    );
    server.wait_ready();
    // Well past what the connection's buffers hold (about 400 events here), so a
    // generator that waited for the client to read would never finish it.
    let _stalled = stalled_client(&server, 800);
    std::thread::sleep(Duration::from_millis(300));
    let (status, took) = short_completion(&server);
    assert_eq!(status, 200);
    eprintln!("the completion queued behind 800 unread tokens took {took:?}");
    let first = server.wait_log("generation finished", Duration::from_secs(1)).expect("logged");
    assert_eq!(first["completion_tokens"], 800, "the unread generation ran to its end: {first}");
    let log = server.drain_log();
    assert!(!log.iter().any(|l| l.contains("stopped reading its stream")), "{log:?}");
}
