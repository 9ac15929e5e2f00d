//! `engram store export` then `engram store import` into an empty directory restores the
//! same store: the escape hatch across on-disk format changes.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use engram::store::records::{Scope, Session, Turn};
use engram::store::SearchFilter;

fn engram(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(common::engram_bin());
    cmd.arg("--data-dir").arg(dir).args(args).env("RUST_LOG", "warn");
    cmd
}

#[test]
fn export_then_import_restores_everything() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let vectors = common::unit_vectors(40, 16, 3);
    let ids: Vec<_> = {
        let store = common::open(src.path());
        let entries = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| engram::store::NewEntry {
                metadata: serde_json::json!({"n": i}),
                created_at_ms: Some(1_000 + i as i64),
                ..common::fact("acme", "alice", &format!("memory {i}"), v)
            })
            .collect();
        let ids = store.put_entries(entries).unwrap().into_iter().map(|o| o.id).collect();
        store
            .put_session(&Session {
                id: "s1".into(),
                scope: Some(Scope::user("acme", "alice")),
                turns: vec![Turn { role: "user".into(), content: "hi".into(), created_at_ms: 5, ..Default::default() }],
                ..Default::default()
            })
            .unwrap();
        ids
    };
    let export = engram(src.path(), &["store", "export"]).output().unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    assert_eq!(export.stdout.iter().filter(|b| **b == b'\n').count(), 41);

    let mut import =
        engram(dst.path(), &["store", "import"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    import.stdin.take().unwrap().write_all(&export.stdout).unwrap();
    let out = import.wait_with_output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.lines().count(), 41, "one id per record");

    let store = common::open(dst.path());
    for (i, (id, v)) in ids.iter().zip(&vectors).enumerate() {
        let e = store.get_entry(*id).unwrap().expect("same id after import");
        assert_eq!(e.text, format!("memory {i}"));
        assert_eq!(e.created_at_ms, 1_000 + i as i64);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&e.metadata_json).unwrap()["n"], i);
        assert_eq!(store.search(v, 1, &SearchFilter::all()).unwrap()[0].entry.ulid(), Some(*id));
    }
    assert_eq!(store.get_session("acme", "s1").unwrap().unwrap().turns[0].content, "hi");
    drop(store);
    // Both exports are identical: nothing was lost or changed on the way.
    let again = engram(dst.path(), &["store", "export"]).output().unwrap();
    let sorted = |b: &[u8]| {
        let mut l: Vec<String> = String::from_utf8_lossy(b).lines().map(str::to_owned).collect();
        l.sort();
        l
    };
    let (a, b) = (sorted(&again.stdout), sorted(&export.stdout));
    assert_eq!(a.len(), b.len());
    if let Some((x, y)) = a.iter().zip(&b).find(|(x, y)| x != y) {
        panic!("the second export differs:\n{:.300}\n{:.300}", x, y);
    }
}

#[test]
fn a_bad_line_is_named_and_earlier_lines_stay() {
    let dir = tempfile::tempdir().unwrap();
    let good = serde_json::json!({"type": "entry", "kind": "fact", "text": "ok", "embedding": [1.0, 0.0],
        "scope": {"tenant": "t"}});
    let input = format!("{good}\n{{\"type\": \"entry\", \"kind\": \"feeling\"}}\n");
    let mut child = engram(dir.path(), &["store", "import", "--batch", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert_eq!(common::open(dir.path()).stats().unwrap().entries, 1);
}
