//! `engram bench …`: performance figures, each printed beside a baseline measured in the
//! same run on the same data.

use std::sync::Arc;
use std::time::Instant;

use clap::Subcommand;
use rand::{Rng, SeedableRng};

use crate::config::Settings;
use crate::store::records::{Kind, Scope};
use crate::store::{normalize_vector, Hit, SearchFilter, VectorIndex};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The HNSW index against exact brute-force search on random unit vectors.
    Index {
        /// Vectors in the index.
        #[arg(long, default_value_t = 100_000)]
        n: usize,
        #[arg(long, default_value_t = 384)]
        dim: usize,
        /// Query vectors (random, like the data).
        #[arg(long, default_value_t = 1000)]
        queries: usize,
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// Candidate list sizes to sweep; the configured index.ef_search is always included.
        #[arg(long, value_delimiter = ',', default_values_t = [64, 256])]
        ef: Vec<usize>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// `clustered`: points and queries drawn around 1,000 random centres, as text
        /// embeddings are (they have far fewer degrees of freedom than dimensions).
        /// `uniform`: directions uniform on the sphere, the worst case for any graph index.
        #[arg(long, value_enum, default_value_t = Distribution::Clustered)]
        distribution: Distribution,
    },
    /// Embedding throughput (sentences/s) over a corpus at several batch sizes.
    Embed {
        /// One sentence per line (`make bench-corpus` writes the default).
        #[arg(long, default_value = "bench/data/kjv.txt")]
        corpus: std::path::PathBuf,
        #[arg(long, default_value_t = 2000)]
        sentences: usize,
        #[arg(long, value_delimiter = ',', default_values_t = [1, 32])]
        batch: Vec<usize>,
        /// Also print the figures as one JSON line (for bench/compare.py).
        #[arg(long)]
        json: bool,
    },
    /// Prefill and decode speed of the chat model at batch 1.
    Generate {
        /// A GGUF file; the configured model.generator when absent.
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 256)]
        new_tokens: usize,
        /// Measure only the file's quantised blocks (`gguf`) or only f32 weights (`f32`);
        /// both by default.
        #[arg(long)]
        only: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Time to first token of each turn of a conversation, keeping the session's attention
    /// cache between turns and recomputing the whole prompt, side by side (in-process, on
    /// a temporary store).
    Chat {
        #[arg(long, default_value_t = 10)]
        turns: usize,
        /// Longest reply per turn, in tokens.
        #[arg(long, default_value_t = 96)]
        reply_tokens: usize,
        #[arg(long)]
        json: bool,
    },
    /// Concurrent clients against a running server: throughput, latency and errors of
    /// chat, search, add and import.
    Load(super::bench_load::LoadArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distribution {
    Clustered,
    Uniform,
}

pub fn run(cmd: BenchCommand, settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Index { n, dim, queries, k, mut ef, seed, distribution } => {
            ef.push(settings.index.ef_search);
            ef.sort_unstable();
            ef.dedup();
            bench_index(settings, IndexWorkload { n, dim, queries, k, seed, distribution }, &ef);
        }
        BenchCommand::Embed { corpus, sentences, batch, json } => {
            super::bench_models::bench_embed(settings, &corpus, sentences, &batch, json)?
        }
        BenchCommand::Generate { model, prompt_tokens, new_tokens, only, json } => {
            super::bench_models::bench_generate(settings, model, prompt_tokens, new_tokens, only.as_deref(), json)?
        }
        BenchCommand::Chat { turns, reply_tokens, json } => {
            super::bench_chat::bench_chat(settings, turns, reply_tokens, json)?
        }
        BenchCommand::Load(args) => super::bench_load::run(args)?,
    }
    Ok(())
}

/// `n` random unit vectors: Gaussian components (Box–Muller), then normalised, so the
/// directions are uniform on the sphere.
pub fn random_unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<Arc<[f32]>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut v: Vec<f32> = (0..dim)
                .map(|_| {
                    let (u1, u2): (f32, f32) = (rng.gen_range(f32::EPSILON..1.0), rng.gen());
                    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                })
                .collect();
            normalize_vector(&mut v);
            Arc::from(v)
        })
        .collect()
}

/// Points around `centres` random unit centres: each is its centre plus Gaussian noise
/// of total length 0.75 (cosine about 0.8 to its centre), normalised. Points and queries
/// drawn with the same `centres_seed` share the centres.
pub fn clustered_unit_vectors(n: usize, dim: usize, centres: usize, centres_seed: u64, seed: u64) -> Vec<Arc<[f32]>> {
    let centres = random_unit_vectors(centres, dim, centres_seed);
    let noise = random_unit_vectors(n, dim, seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(1));
    noise
        .iter()
        .map(|g| {
            let c = &centres[rng.gen_range(0..centres.len())];
            let mut v: Vec<f32> = c.iter().zip(g.iter()).map(|(c, g)| c + 0.75 * g).collect();
            normalize_vector(&mut v);
            Arc::from(v)
        })
        .collect()
}

/// Share of the exact top-k found by the approximate search, over all queries.
pub fn recall(exact: &[Vec<Hit>], approx: &[Vec<Hit>]) -> f64 {
    let (mut found, mut total) = (0usize, 0usize);
    for (e, a) in exact.iter().zip(approx) {
        let truth: std::collections::HashSet<u64> = e.iter().map(|h| h.point).collect();
        found += a.iter().filter(|h| truth.contains(&h.point)).count();
        total += truth.len();
    }
    found as f64 / total.max(1) as f64
}

fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Runs `search` over all queries on one thread, then split across all cores; returns
/// the results of the single-thread pass and both rates in queries per second.
fn time_searches(queries: &[Arc<[f32]>], search: impl Fn(&[f32]) -> Vec<Hit> + Sync) -> (Vec<Vec<Hit>>, f64, f64) {
    let started = Instant::now();
    let results: Vec<Vec<Hit>> = queries.iter().map(|q| search(q)).collect();
    let one = queries.len() as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let per_thread = queries.len().div_ceil(threads());
    std::thread::scope(|s| {
        for chunk in queries.chunks(per_thread.max(1)) {
            let search = &search;
            s.spawn(move || chunk.iter().map(|q| search(q).len()).sum::<usize>());
        }
    });
    let all = queries.len() as f64 / started.elapsed().as_secs_f64();
    (results, one, all)
}

/// What `bench index` measures on.
struct IndexWorkload {
    n: usize,
    dim: usize,
    queries: usize,
    k: usize,
    seed: u64,
    distribution: Distribution,
}

fn bench_index(settings: &Settings, w: IndexWorkload, efs: &[usize]) {
    let p = &settings.index;
    let IndexWorkload { n, dim, queries: n_queries, k, seed, distribution } = w;
    println!(
        "engram bench index: n={n} dim={dim} queries={n_queries} k={k} data={distribution:?} threads={}",
        threads()
    );
    println!("params: M={} ef_construction={} ef_search={}", p.max_connections, p.ef_construction, p.ef_search);
    let (data, queries) = match distribution {
        Distribution::Uniform => {
            (random_unit_vectors(n, dim, seed), random_unit_vectors(n_queries, dim, seed ^ 0x9e37_79b9))
        }
        Distribution::Clustered => (
            clustered_unit_vectors(n, dim, 1000, seed, seed + 1),
            clustered_unit_vectors(n_queries, dim, 1000, seed, seed + 2),
        ),
    };

    let index = VectorIndex::new(p.clone());
    let scope = Scope::user("bench", "bench");
    let started = Instant::now();
    index.insert_many(data.iter().enumerate().map(|(i, v)| (i as u64, scope.clone(), Kind::Fact, v.clone())).collect());
    let build = started.elapsed();
    println!(
        "build: {:.2}s, {:.0} inserts/s (parallel insert on {} threads)",
        build.as_secs_f64(),
        n as f64 / build.as_secs_f64(),
        threads()
    );

    let all = SearchFilter::all();
    let (exact, exact_one, exact_all) = time_searches(&queries, |q| index.exact_search(q, k, &all));
    println!();
    println!("{:<28} {:>10} {:>14} {:>14} {:>10}", "method", "recall@10", "QPS 1 thread", "QPS all cores", "vs exact");
    println!(
        "{:<28} {:>10.4} {:>14.0} {:>14.0} {:>10}",
        "exact brute force (baseline)", 1.0, exact_one, exact_all, "1.0x"
    );
    for &ef in efs {
        let (approx, one, all_cores) = time_searches(&queries, |q| index.search_tuned(q, k, &all, ef, 0));
        let marker = if ef == p.ef_search { " (configured)" } else { "" };
        println!(
            "{:<28} {:>10.4} {:>14.0} {:>14.0} {:>9.1}x",
            format!("hnsw ef={ef}{marker}"),
            recall(&exact, &approx),
            one,
            all_cores,
            one / exact_one
        );
    }
}
