//! `engram ingest`, `engram query` and `engram chat` against the real server.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::server::Server;

fn engram(server: &Server, args: &[&str]) -> Command {
    let mut cmd = Command::new(common::engram_bin());
    cmd.args(args).args(["--url", &server.base, "--key", "acme-key"]).env("RUST_LOG", "warn");
    cmd
}

#[test]
fn ingest_query_and_chat_from_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path().join("data").as_path(), &[("ENGRAM_AUTH__KEYS", "acme=acme-key")]);
    server.wait_ready();
    let docs = dir.path().join("docs");
    std::fs::create_dir_all(docs.join("nested")).unwrap();
    std::fs::write(
        docs.join("boats.md"),
        "# Boats\n\nThe ferry to Hurtigruten leaves Bergen every evening at eight.\n",
    )
    .unwrap();
    std::fs::write(
        docs.join("nested/cheese.html"),
        "<html><body><h1>Cheese</h1><p>Brunost is a sweet brown cheese made from whey.</p></body></html>",
    )
    .unwrap();
    std::fs::write(docs.join("ignored.bin"), [0u8, 1, 2]).unwrap();

    let out = engram(&server, &["ingest", docs.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ingested 2 of 2 documents"), "{stdout}");

    let out = engram(&server, &["query", "Which cheese is brown and sweet?", "--k", "1"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("Brunost") && stdout.contains("knowledge"), "{stdout}");

    let mut child =
        engram(&server, &["chat", "--user-id", "erik"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"When does the ferry leave Bergen?\n\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("engram> ") && stdout.contains("memories used"), "{stdout}");

    // A server that is not there is a clear error, not a panic.
    let out = Command::new(common::engram_bin()).args(["query", "x", "--url", "http://127.0.0.1:9"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the server"));
}
