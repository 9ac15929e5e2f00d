//! Turning the timed requests of a load run into a summary: counts, throughput,
//! latency percentiles and errors, per operation and overall.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::workload::Op;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// An HTTP status other than 2xx.
    Status(u16),
    /// No HTTP answer at all (refused, reset, timed out).
    Transport,
}

/// One timed request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub op: Op,
    pub latency: Duration,
    pub outcome: Outcome,
}

/// Latency of the successful requests, in milliseconds (nearest-rank percentiles).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// The figures of one operation, or of all together.
#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    /// Requests sent (and answered or failed).
    pub count: usize,
    /// Requests answered 2xx.
    pub ok: usize,
    /// Successful requests per second of the run.
    pub throughput: f64,
    /// Of the successful requests; null when none succeeded.
    pub latency_ms: Option<Latency>,
    /// 429 answers: the server's back-pressure (a full model queue), not failures.
    pub rate_limited: usize,
    /// Every other failure, by HTTP status, or `transport` when no answer came.
    pub errors: BTreeMap<String, usize>,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Mean, percentiles and maximum of some durations in milliseconds; none when empty.
pub fn latency(mut ms: Vec<f64>) -> Option<Latency> {
    if ms.is_empty() {
        return None;
    }
    ms.sort_by(f64::total_cmp);
    Some(Latency {
        mean: ms.iter().sum::<f64>() / ms.len() as f64,
        p50: percentile(&ms, 0.50),
        p95: percentile(&ms, 0.95),
        p99: percentile(&ms, 0.99),
        max: ms[ms.len() - 1],
    })
}

/// Summarises samples taken over `elapsed`.
pub fn summarise<'a>(samples: impl Iterator<Item = &'a Sample>, elapsed: Duration) -> OpSummary {
    let (mut count, mut rate_limited) = (0, 0);
    let mut ok_ms = Vec::new();
    let mut errors = BTreeMap::new();
    for s in samples {
        count += 1;
        match s.outcome {
            Outcome::Ok => ok_ms.push(s.latency.as_secs_f64() * 1000.0),
            Outcome::Status(429) => rate_limited += 1,
            Outcome::Status(code) => *errors.entry(code.to_string()).or_insert(0) += 1,
            Outcome::Transport => *errors.entry("transport".to_owned()).or_insert(0) += 1,
        }
    }
    let ok = ok_ms.len();
    OpSummary {
        count,
        ok,
        throughput: ok as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_ms: latency(ok_ms),
        rate_limited,
        errors,
    }
}

/// Per operation (those that ran), and overall.
pub fn by_op(samples: &[Sample], elapsed: Duration) -> (BTreeMap<&'static str, OpSummary>, OpSummary) {
    let per_op = Op::ALL
        .into_iter()
        .filter(|op| samples.iter().any(|s| s.op == *op))
        .map(|op| (op.name(), summarise(samples.iter().filter(|s| s.op == op), elapsed)))
        .collect();
    (per_op, summarise(samples.iter(), elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(op: Op, ms: u64, outcome: Outcome) -> Sample {
        Sample { op, latency: Duration::from_millis(ms), outcome }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.95), 95.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        let l = latency(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((l.p50, l.max, l.mean), (2.0, 3.0, 2.0));
        assert!(latency(Vec::new()).is_none());
    }

    #[test]
    fn errors_are_split_from_back_pressure() {
        let samples = [
            sample(Op::Search, 10, Outcome::Ok),
            sample(Op::Search, 30, Outcome::Ok),
            sample(Op::Chat, 5, Outcome::Status(429)),
            sample(Op::Chat, 900, Outcome::Ok),
            sample(Op::Add, 1, Outcome::Status(500)),
            sample(Op::Add, 1, Outcome::Transport),
        ];
        let (per_op, all) = by_op(&samples, Duration::from_secs(2));
        assert_eq!(per_op.keys().copied().collect::<Vec<_>>(), ["add", "chat", "search"]);
        assert_eq!((per_op["chat"].count, per_op["chat"].ok, per_op["chat"].rate_limited), (2, 1, 1));
        assert_eq!(per_op["search"].throughput, 1.0);
        assert_eq!(per_op["search"].latency_ms.as_ref().unwrap().max, 30.0);
        assert!(per_op["add"].latency_ms.is_none());
        assert_eq!(per_op["add"].errors, BTreeMap::from([("500".into(), 1), ("transport".into(), 1)]));
        assert_eq!((all.count, all.ok, all.rate_limited), (6, 3, 1));
        assert_eq!(all.errors.values().sum::<usize>(), 2);
    }
}
