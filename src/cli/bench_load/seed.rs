//! Filling the scope under test before a load run: generated sentences imported as past
//! conversations through `POST /v1/sessions/{id}/messages`, the API's bulk path (one
//! request embeds a whole batch, and every message becomes a memory of the user).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::bail;
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};

use super::super::client::{encode, Client};
use super::workload::{nth_statement, SENTENCES};

/// Import requests in flight at once: while one batch is stored and indexed, the next
/// is embedded. More would only queue behind the one embedding thread.
const IN_FLIGHT: usize = 2;

/// How seeding went.
#[derive(Debug, Clone, Serialize)]
pub struct SeedReport {
    pub user_id: String,
    pub memories: usize,
    pub batch: usize,
    pub seconds: f64,
    pub per_second: f64,
}

/// What to seed.
pub struct SeedPlan<'a> {
    pub url: &'a str,
    pub key: Option<&'a str>,
    pub user_id: &'a str,
    pub memories: usize,
    pub batch: usize,
}

/// Imports `plan.memories` distinct sentences for the user, `plan.batch` per request.
pub fn seed(plan: &SeedPlan, rng: &mut impl Rng) -> anyhow::Result<SeedReport> {
    if plan.batch == 0 {
        bail!("--seed-batch must be at least 1");
    }
    // A random start in the sentence sequence, so that seeding the same user twice adds
    // new sentences rather than the same ones again.
    let first: u64 = rng.gen_range(0..SENTENCES);
    let run = ulid::Ulid::new().to_string().to_lowercase();
    let batches = plan.memories.div_ceil(plan.batch);
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let progress = Progress::new(plan.memories);
    let started = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..IN_FLIGHT.min(batches))
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    let client = Client::new(plan.url, plan.key.map(str::to_owned));
                    loop {
                        let b = next.fetch_add(1, Ordering::Relaxed);
                        if b >= batches {
                            return Ok(());
                        }
                        let from = b * plan.batch;
                        let to = (from + plan.batch).min(plan.memories);
                        let messages: Vec<Value> = (from..to)
                            .map(|i| {
                                let role = if i % 2 == 0 { "user" } else { "assistant" };
                                json!({ "role": role, "content": nth_statement(first + i as u64) })
                            })
                            .collect();
                        let path =
                            format!("/v1/sessions/{}/messages", encode(&format!("{}-seed-{run}-{b}", plan.user_id)));
                        let body = json!({ "user_id": plan.user_id, "messages": messages });
                        let answer = client.call("POST", &path, Some(&body))?;
                        let imported = answer["imported"].as_u64().unwrap_or(0) as usize;
                        progress.advance(done.fetch_add(imported, Ordering::Relaxed) + imported, started);
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().unwrap_or_else(|_| bail!("a seeding thread panicked")))
    })?;
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    let memories = done.into_inner();
    Ok(SeedReport {
        user_id: plan.user_id.to_owned(),
        memories,
        batch: plan.batch,
        seconds,
        per_second: memories as f64 / seconds.max(1e-9),
    })
}

/// A progress bar on a terminal; otherwise a line at every tenth of the way.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    reported_tenths: AtomicUsize,
}

impl Progress {
    fn new(total: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("seeding {bar:30} {pos}/{len} memories, {per_sec}, eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Progress { bar, total, reported_tenths: AtomicUsize::new(0) }
    }

    fn advance(&self, done: usize, started: Instant) {
        match &self.bar {
            Some(bar) => bar.set_position(done as u64),
            None => {
                let tenths = done * 10 / self.total.max(1);
                if self.reported_tenths.fetch_max(tenths, Ordering::Relaxed) < tenths {
                    let secs = started.elapsed().as_secs_f64();
                    eprintln!(
                        "seeding: {done}/{} memories in {secs:.0} s ({:.0}/s)",
                        self.total,
                        done as f64 / secs.max(1e-9)
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
