//! `engram bench load` against a real server: a seeded scope, a few seconds of a small
//! mix from several clients, and the summary it prints.

mod common;

use std::process::{Command, Output};

use common::server::Server;
use serde_json::{json, Value};

fn bench_load(server: &Server, args: &[&str]) -> Output {
    Command::new(common::engram_bin())
        .args(["bench", "load", "--url", &server.base])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// Checks one operation's (or the overall) figures.
fn check_op(name: &str, s: &Value) {
    let count = s["count"].as_u64().unwrap();
    let ok = s["ok"].as_u64().unwrap();
    assert!(count > 0 && ok > 0, "{name}: {s}");
    let errors = s["errors"].as_object().unwrap();
    assert!(!errors.keys().any(|code| code.starts_with('5') || code == "transport"), "{name}: {s}");
    assert_eq!(
        ok + s["rate_limited"].as_u64().unwrap() + errors.values().map(|n| n.as_u64().unwrap()).sum::<u64>(),
        count
    );
    assert!(s["throughput"].as_f64().unwrap() > 0.0, "{name}: {s}");
    let l = &s["latency_ms"];
    let [p50, p95, p99, max] = ["p50", "p95", "p99", "max"].map(|p| l[p].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p95 && p95 <= p99 && p99 <= max, "{name}: {l}");
    assert!(l["mean"].as_f64().unwrap() <= max, "{name}: {l}");
}

#[test]
fn a_mixed_load_completes_and_is_summarised() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    server.wait_ready();
    let pid = server.pid().to_string();
    let out = bench_load(
        &server,
        &[
            "--clients",
            "3",
            "--seconds",
            "5",
            "--mix",
            "chat=1,search=3,add=2,import=1",
            "--seed-memories",
            "50",
            "--seed-batch",
            "20",
            "--server-pid",
            &pid,
            "--json",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));

    assert_eq!((r["clients"].as_u64(), r["mix"].as_str()), (Some(3), Some("chat=1,search=3,add=2,import=1")));
    assert!(r["elapsed_s"].as_f64().unwrap() >= 5.0, "{r}");
    assert_eq!(r["seeded"]["memories"], 50, "{r}");
    let ops = r["operations"].as_object().unwrap();
    assert_eq!(ops.keys().map(String::as_str).collect::<Vec<_>>(), ["add", "chat", "import", "search"]);
    for (name, s) in ops {
        check_op(name, s);
    }
    check_op("overall", &r["overall"]);
    let total: u64 = ops.values().map(|s| s["count"].as_u64().unwrap()).sum();
    assert_eq!(r["overall"]["count"].as_u64().unwrap(), total);

    let rss = &r["server_rss"];
    let [start, end, peak, hwm] = ["start_kib", "end_kib", "peak_kib", "hwm_kib"].map(|k| rss[k].as_u64().unwrap());
    assert!(start > 10_000 && peak >= start && peak >= end && hwm >= peak, "{rss}");

    // The seeded memories are there, in the scope the benchmark searched.
    let (status, found) = server.post(
        "/v1/memories/search",
        &json!({ "user_id": "bench-load", "query": "Who repaired the old bicycle?", "k": 5 }),
    );
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["results"].as_array().unwrap().len(), 5, "{found}");
}

#[test]
fn the_table_and_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    server.wait_ready();
    let out = bench_load(&server, &["--clients", "2", "--seconds", "1", "--mix", "search=1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("search ") || l.starts_with("all ")).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(!stdout.contains("chat "), "{stdout}");

    let out = bench_load(&server, &["--mix", "dance=1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown operation `dance`"));
    let out = bench_load(&server, &["--clients", "0"]);
    assert!(!out.status.success());
    // Not a local process: refused before any load is sent.
    let out = bench_load(&server, &["--seconds", "1", "--server-pid", "4294967295"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--server-pid"), "{}", String::from_utf8_lossy(&out.stderr));
    let out =
        Command::new(common::engram_bin()).args(["bench", "load", "--url", "http://127.0.0.1:9"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the server"));
}
