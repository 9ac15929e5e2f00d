//! `engram eval retrieval` end to end: the real server with the real embedding model, the
//! synthetic LoCoMo-format dataset in tests/data, and the binary's table and JSON line.

mod common;

use std::process::Command;

use common::server::Server;
use serde_json::Value;

const DATASET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/locomo_synthetic.json");
/// Longer conversations (12 sessions each), half of whose questions share no content word
/// with their evidence: the set the fusion's weights were not first shaped on.
const LONG_DATASET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/locomo_synthetic_long.json");
/// Three more conversations (36 sessions, 466 questions, a third of them naming a month or
/// season), never used to tune anything: only reported, and guarded here.
const HELDOUT_DATASET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/locomo_heldout.json");

/// Runs the eval and returns its JSON report.
fn eval_report(base: &str, file: &str) -> Value {
    let out = eval(base, file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    let line = stdout.lines().find(|l| l.starts_with('{')).expect("a JSON line");
    serde_json::from_str(line).unwrap()
}

/// The fused ranking is the point of having two retrievers: it must beat each of them
/// at recall@1 and @10 and be no worse at @5.
fn assert_fusion_beats_both(report: &Value) {
    let recall = |method: &str, k: usize| report["methods"][method][format!("recall@{k}")].as_f64().unwrap();
    for single in ["dense", "lexical"] {
        for k in [1, 10] {
            assert!(recall("fused", k) > recall(single, k), "fused vs {single} at @{k}: {report}");
        }
        assert!(recall("fused", 5) >= recall(single, 5), "fused vs {single} at @5: {report}");
    }
}

fn eval(base: &str, file: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["eval", "retrieval", file, "--url", base, "--json"])
        .output()
        .expect("engram runs")
}

#[test]
fn retrieval_eval_reports_recall_for_each_method() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("ENGRAM_MODEL__GENERATOR", "")]);
    server.wait_ready();

    let report = eval_report(&server.base, DATASET);
    assert_eq!(report["conversations"], 2);
    assert_eq!(report["sessions"], 8);
    assert_eq!(report["questions"], 36);
    for method in ["dense", "lexical", "fused"] {
        let row = &report["methods"][method];
        let recalls: Vec<f64> =
            [1, 5, 10, 25].iter().map(|k| row[format!("recall@{k}")].as_f64().expect("a number")).collect();
        assert!(recalls.iter().all(|r| (0.0..=1.0).contains(r)), "{method}: {recalls:?}");
        assert!(recalls.windows(2).all(|w| w[0] <= w[1]), "{method} falls with k: {recalls:?}");
    }
    assert_fusion_beats_both(&report);

    // A rerun starts clean: the same figures, not duplicates crowding the top k.
    let again = eval(&server.base, DATASET);
    assert!(again.status.success());
    let again = String::from_utf8_lossy(&again.stdout);
    let again: Value = serde_json::from_str(again.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    for method in ["dense", "lexical", "fused"] {
        let (a, b) = (&again["methods"][method], &report["methods"][method]);
        let close = |k: &str| (a[k].as_f64().unwrap() - b[k].as_f64().unwrap()).abs() <= 0.05;
        assert!(["recall@1", "recall@5", "recall@10"].into_iter().all(close), "{method}: {a} then {b}");
    }

    // The longer set (run after the rerun check: its turns change the corpus statistics
    // BM25 weighs terms by).
    let long = eval_report(&server.base, LONG_DATASET);
    assert_eq!((long["conversations"].as_u64(), long["sessions"].as_u64()), (Some(2), Some(24)));
    assert_eq!((long["turns"].as_u64(), long["questions"].as_u64()), (Some(426), Some(90)));
    assert_fusion_beats_both(&long);

    // Regression floors a little under the recall measured when they were set (README):
    // fused recall@10 0.931 (short), 0.689 (long) and 0.734 (held-out).
    let fused10 = |report: &Value| report["methods"]["fused"]["recall@10"].as_f64().unwrap();
    assert!(fused10(&report) >= 0.9, "{report}");
    assert!(fused10(&long) >= 0.67, "{long}");
    let heldout = eval_report(&server.base, HELDOUT_DATASET);
    assert_eq!((heldout["conversations"].as_u64(), heldout["questions"].as_u64()), (Some(3), Some(466)));
    assert!(fused10(&heldout) >= 0.71, "{heldout}");

    // Failures are messages and a non-zero exit, never a panic.
    let missing = eval(&server.base, "tests/data/no_such_file.json");
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && err.contains("cannot read") && !err.contains("panicked"), "{err}");
    // The server's own error message comes through (an empty turn is refused with 422 or 400).
    let bad = dir.path().join("bad.json");
    let sample = r#"[{"sample_id": "x", "conversation": {"session_1": [{"speaker": "A", "dia_id": "D1:1", "text": " "}]}, "qa": []}]"#;
    std::fs::write(&bad, sample).unwrap();
    let refused = eval(&server.base, bad.to_str().unwrap());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("content is empty") && err.contains("HTTP 4"), "{err}");
    drop(server);
    let down = eval("http://127.0.0.1:9", DATASET);
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(!down.status.success() && err.contains("cannot reach") && !err.contains("panicked"), "{err}");
}
