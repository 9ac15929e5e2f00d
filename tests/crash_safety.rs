//! Crash safety of the real binary: `engram store import` is fed entries and killed with
//! SIGKILL at a random moment, several times over one data directory. Every id it
//! printed (it prints an id only once the entry is durable) must then be present and
//! searchable, and `engram store verify` must pass.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engram::store::SearchFilter;
use rand::{Rng, SeedableRng};
use ulid::Ulid;

const DIM: usize = 24;
const ROUNDS: u64 = 5;

fn engram(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(common::engram_bin());
    cmd.arg("--data-dir").arg(dir).env("RUST_LOG", "warn");
    cmd
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(2024);
    let mut acknowledged: Vec<(Ulid, Vec<f32>)> = Vec::new();
    for round in 0..ROUNDS {
        let vectors = common::unit_vectors(20_000, DIM, 100 + round);
        let mut child = engram(dir.path())
            .args(["store", "import", "--batch", "64"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let lines: Vec<String> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| {
                serde_json::json!({
                    "type": "entry", "kind": "episodic", "text": format!("round {round} line {i}"),
                    "embedding": v, "scope": {"tenant": "acme", "user_id": format!("u{}", i % 13)},
                })
                .to_string()
            })
            .collect();
        // Feed in small bursts so batches stay small and the kill lands mid-stream.
        let writer = std::thread::spawn(move || {
            for chunk in lines.chunks(50) {
                if stdin.write_all((chunk.join("\n") + "\n").as_bytes()).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let printed = Arc::new(Mutex::new(Vec::<Ulid>::new()));
        let reader = {
            let printed = printed.clone();
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    printed.lock().unwrap().push(line.trim().parse().expect("an id per line"));
                }
            })
        };
        // Opening grows slower as the store fills (the index is rebuilt after a kill), so
        // the random moment is counted from the first acknowledgement.
        let started = std::time::Instant::now();
        while printed.lock().unwrap().is_empty() {
            assert!(started.elapsed() < Duration::from_secs(60), "round {round}: no id printed within 60s");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..1200)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let _ = writer.join();
        let printed = printed.lock().unwrap().clone();
        // Ids come out in line order, so the i-th id belongs to the i-th vector.
        acknowledged.extend(printed.into_iter().zip(vectors));

        let verify = engram(dir.path()).args(["store", "verify"]).output().unwrap();
        assert!(
            verify.status.success(),
            "round {round}: verify failed:\n{}\n{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );

        let store = common::open(dir.path());
        let mut found_by_graph = 0;
        for (id, v) in &acknowledged {
            let entry = store.get_entry(*id).unwrap();
            let entry = entry.unwrap_or_else(|| panic!("round {round}: acknowledged {id} is lost"));
            // The index holds the entry's own vector under its point: an exact scan of
            // the index finds it first.
            let exact = store.index().search_tuned(v, 1, &SearchFilter::all(), 1, usize::MAX);
            assert_eq!(exact.first().map(|h| h.point), Some(entry.point_id), "round {round}: {id} is not indexed");
            found_by_graph +=
                usize::from(store.search(v, 1, &SearchFilter::all()).unwrap()[0].entry.ulid() == Some(*id));
        }
        // And the graph rebuilt or reloaded after the kill leads to them: it is approximate
        // (random 24-dimensional vectors are its hard case), so nearly all, not all.
        assert!(
            found_by_graph * 1000 >= acknowledged.len() * 995,
            "round {round}: the graph finds {found_by_graph} of {} entries by their own vector",
            acknowledged.len()
        );
        eprintln!(
            "round {round}: {} acknowledged entries all present and indexed, {found_by_graph} found first by the graph",
            acknowledged.len()
        );
    }
}
