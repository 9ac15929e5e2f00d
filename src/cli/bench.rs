//! `engram bench …`: performance figures, each printed beside a baseline measured in the
//! same run on the same data.

use std::sync::Arc;
use std::time::Instant;

use clap::Subcommand;
use rand::{Rng, SeedableRng};

use crate::config::Settings;
use crate::store::records::{Kind, Scope};
use crate::store::{normalize_vector, Hit, IndexParams, ScopeClause, SearchFilter, VectorIndex};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The vector index's search paths against exact search, on synthetic unit vectors
    /// all in one scope: recall@k, latency per query (one thread) and build time.
    Index {
        /// Vectors in the index.
        #[arg(long, default_value_t = 100_000)]
        n: usize,
        #[arg(long, default_value_t = 384)]
        dim: usize,
        /// Query vectors.
        #[arg(long, default_value_t = 1000)]
        queries: usize,
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// Candidate list sizes to sweep; the configured index.ef_search is always included.
        #[arg(long, value_delimiter = ',', default_values_t = [64, 256])]
        ef: Vec<usize>,
        /// Graphs to build and compare, each `M:ef_construction`, optionally followed by
        /// `:keep` (index.keep_pruned_links on) or `:nokeep`; the configured one when absent.
        #[arg(long, value_delimiter = ',')]
        graph: Vec<String>,
        /// Sizes of smaller scopes inside the index (entries assigned at random) for
        /// which the exact scan and the filtered graph walk of the first graph are timed
        /// side by side: where they cross is the size for index.exact_search_threshold.
        #[arg(long, value_delimiter = ',', default_values_t = [1000, 2000, 5000, 10_000, 20_000, 50_000])]
        scopes: Vec<usize>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// `clustered`: points and queries drawn around 1,000 random centres, as text
        /// embeddings are (they have far fewer degrees of freedom than dimensions).
        /// `uniform`: directions uniform on the sphere, the worst case for any graph index.
        /// `near-duplicates`: a memory store's knowledge: topics of very unequal size,
        /// each a tight cluster of paraphrases and repeats, and questions that sit at
        /// cosine 0.55–0.7 from their answers, often between two related topics.
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
    NearDuplicates,
}

pub fn run(cmd: BenchCommand, settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Index { n, dim, queries, k, mut ef, graph, scopes, seed, distribution } => {
            ef.push(settings.index.ef_search);
            ef.sort_unstable();
            ef.dedup();
            let graphs = graph.iter().map(|g| parse_graph(g, &settings.index)).collect::<anyhow::Result<Vec<_>>>()?;
            bench_index(settings, IndexWorkload { n, dim, queries, k, seed, distribution }, &ef, &graphs, &scopes);
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
    (0..n).map(|_| Arc::from(random_direction(&mut rng, dim))).collect()
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

/// Gaussian noise of unit length: a random direction.
fn random_direction(rng: &mut impl Rng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim)
        .map(|_| {
            let (u1, u2): (f32, f32) = (rng.gen_range(f32::EPSILON..1.0), rng.gen());
            (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect();
    normalize_vector(&mut v);
    v
}

/// `Σ weight · direction`, normalised.
fn mix(parts: &[(f32, &[f32])]) -> Vec<f32> {
    let mut v = vec![0f32; parts[0].1.len()];
    for (w, d) in parts {
        v.iter_mut().zip(d.iter()).for_each(|(a, b)| *a += w * b);
    }
    normalize_vector(&mut v);
    v
}

/// Knowledge as a long-lived memory store holds it, and questions about it.
///
/// One direction shared by everything (sentence embeddings are anisotropic: unrelated
/// texts sit at cosine 0.1–0.2), themes of 40 topics, one topic per 25 entries. Topic
/// sizes follow a Zipf law (exponent 0.9): a few topics hold thousands of entries, most a
/// handful. An entry is a paraphrase of its topic (cosine about 0.95 to the topic, 0.9 to
/// the others), and three in ten repeat an earlier entry of the topic, exactly or nearly
/// (cosine 0.999). A question picks a topic uniformly (so mostly a small one), leans
/// towards another topic of the same theme, and sits at cosine 0.55–0.7 from the
/// entries of its topic. Returns (entries, queries).
pub fn near_duplicate_set(n: usize, dim: usize, n_queries: usize, seed: u64) -> (Vec<Arc<[f32]>>, Vec<Arc<[f32]>>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n_topics = (n / 25).max(2);
    let n_themes = n_topics.div_ceil(40);
    let common = random_direction(&mut rng, dim);
    let themes: Vec<Vec<f32>> = (0..n_themes).map(|_| random_direction(&mut rng, dim)).collect();
    let topic_theme: Vec<usize> = (0..n_topics).map(|t| t % n_themes).collect();
    let topics: Vec<Vec<f32>> = (0..n_topics)
        .map(|t| mix(&[(0.3, &common), (0.6, &themes[topic_theme[t]]), (0.75, &random_direction(&mut rng, dim))]))
        .collect();
    // Zipf weights over topics, sampled by their cumulative sum; the topic ranks are
    // shuffled against the themes by drawing the rank order at random.
    let mut rank: Vec<usize> = (0..n_topics).collect();
    for i in (1..n_topics).rev() {
        rank.swap(i, rng.gen_range(0..=i));
    }
    let mut cumulative = Vec::with_capacity(n_topics);
    let mut total = 0f64;
    for r in 0..n_topics {
        total += 1.0 / ((r + 1) as f64).powf(0.9);
        cumulative.push(total);
    }
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n_topics];
    let mut entries: Vec<Arc<[f32]>> = Vec::with_capacity(n);
    for i in 0..n {
        let x = rng.gen::<f64>() * total;
        let t = rank[cumulative.partition_point(|c| *c < x).min(n_topics - 1)];
        let v = match members[t].len() {
            m if m > 0 && rng.gen_bool(0.3) => {
                let original = &entries[members[t][rng.gen_range(0..m)]];
                if rng.gen_bool(0.5) {
                    original.to_vec()
                } else {
                    mix(&[(1.0, original), (0.04, &random_direction(&mut rng, dim))])
                }
            }
            _ => mix(&[(1.0, &topics[t]), (0.33, &random_direction(&mut rng, dim))]),
        };
        members[t].push(i);
        entries.push(Arc::from(v));
    }
    let asked: Vec<usize> = (0..n_topics).filter(|t| !members[*t].is_empty()).collect();
    let queries = (0..n_queries)
        .map(|_| {
            let t = asked[rng.gen_range(0..asked.len())];
            let theme = topic_theme[t];
            let other = (theme + n_themes * rng.gen_range(0..40)) % n_topics;
            let noise = random_direction(&mut rng, dim);
            let (lean, spread) = (rng.gen_range(0.0..0.5f32), rng.gen_range(0.8..1.2f32));
            Arc::from(mix(&[(1.0, &topics[t]), (lean, &topics[other]), (spread, &noise)]))
        })
        .collect();
    (entries, queries)
}

/// Share of the exact top-k found by the approximate search, over all queries. A hit
/// counts when it is at least as similar as the exact k-th (less a rounding margin):
/// with exact duplicates in the data, which of several equal entries fills the last
/// places is arbitrary, and any of them is a right answer.
pub fn recall(exact: &[Vec<Hit>], approx: &[Vec<Hit>]) -> f64 {
    let (mut found, mut total) = (0usize, 0usize);
    for (e, a) in exact.iter().zip(approx) {
        let Some(kth) = e.last() else { continue };
        let mut seen = std::collections::HashSet::new();
        let good = a.iter().filter(|h| h.similarity >= kth.similarity - 1e-5 && seen.insert(h.point)).count();
        found += good.min(e.len());
        total += e.len();
    }
    found as f64 / total.max(1) as f64
}

fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
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

/// One graph to build.
struct GraphVariant {
    params: IndexParams,
    name: String,
}

fn parse_graph(spec: &str, base: &IndexParams) -> anyhow::Result<GraphVariant> {
    let mut parts = spec.split(':');
    let mut params = base.clone();
    let number = |s: Option<&str>| -> anyhow::Result<usize> {
        s.ok_or_else(|| anyhow::anyhow!("--graph {spec}: want M:ef_construction[:keep|:nokeep]"))?
            .parse()
            .map_err(|e| anyhow::anyhow!("--graph {spec}: {e}"))
    };
    params.max_connections = number(parts.next())?;
    params.ef_construction = number(parts.next())?;
    for flag in parts {
        match flag {
            "keep" => params.keep_pruned_links = true,
            "nokeep" => params.keep_pruned_links = false,
            other => anyhow::bail!("--graph {spec}: unknown flag {other:?}"),
        }
    }
    params.validate().map_err(anyhow::Error::msg)?;
    Ok(GraphVariant { name: graph_name(&params), params })
}

fn graph_name(p: &IndexParams) -> String {
    let links = if p.keep_pruned_links { "keep" } else { "nokeep" };
    format!("M={} efc={} {links}", p.max_connections, p.ef_construction)
}

/// Per-query latency of `search` on one thread, and its results.
fn time_each(queries: &[Arc<[f32]>], search: impl Fn(&[f32]) -> Vec<Hit>) -> (Vec<Vec<Hit>>, Latency) {
    let mut times = Vec::with_capacity(queries.len());
    let results = queries
        .iter()
        .map(|q| {
            let started = Instant::now();
            let hits = search(q);
            times.push(started.elapsed().as_secs_f64() * 1e3);
            hits
        })
        .collect();
    (results, Latency::of(times))
}

struct Latency {
    mean_ms: f64,
    p95_ms: f64,
}

impl Latency {
    fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_unstable_by(f64::total_cmp);
        let mean_ms = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
        let p95_ms = ms.get((ms.len() * 95).div_ceil(100).saturating_sub(1)).copied().unwrap_or(0.0);
        Self { mean_ms, p95_ms }
    }
}

/// Queries that found fewer than half of their exact top-k.
fn poor_queries(exact: &[Vec<Hit>], approx: &[Vec<Hit>]) -> usize {
    exact.iter().zip(approx).filter(|(e, a)| recall(std::slice::from_ref(e), std::slice::from_ref(a)) < 0.5).count()
}

fn bench_index(settings: &Settings, w: IndexWorkload, efs: &[usize], graphs: &[GraphVariant], scopes: &[usize]) {
    let p = &settings.index;
    let IndexWorkload { n, dim, queries: n_queries, k, seed, distribution } = w;
    println!(
        "engram bench index: n={n} dim={dim} queries={n_queries} k={k} data={distribution:?} threads={}",
        threads()
    );
    println!(
        "configured: {} ef_search={} exact_search_threshold={}",
        graph_name(p),
        p.ef_search,
        p.exact_search_threshold
    );
    let (data, queries) = match distribution {
        Distribution::Uniform => {
            (random_unit_vectors(n, dim, seed), random_unit_vectors(n_queries, dim, seed ^ 0x9e37_79b9))
        }
        Distribution::Clustered => (
            clustered_unit_vectors(n, dim, 1000, seed, seed + 1),
            clustered_unit_vectors(n_queries, dim, 1000, seed, seed + 2),
        ),
        Distribution::NearDuplicates => near_duplicate_set(n, dim, n_queries, seed),
    };
    // Everything is one tenant's shared knowledge, searched as the service searches: the
    // tenant's knowledge or the asking user's own memories. A hundred random entries of
    // another tenant make that a real filter (the filtered graph walk; a filter that
    // admits every entry walks unfiltered). The smaller scopes for the crossover are
    // sessions, assigned at random.
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5c0be);
    for i in (1..n).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    let mut session = vec![String::new(); n];
    let mut sizes = Vec::new();
    let mut taken = 0;
    for &size in scopes {
        if taken + size > n {
            break;
        }
        order[taken..taken + size].iter().for_each(|&i| session[i] = format!("s{size}"));
        sizes.push(size);
        taken += size;
    }
    let knowledge = |session: Option<&str>| ScopeClause {
        tenant: Some("bench".into()),
        user_id: Some(String::new()),
        session_id: session.map(str::to_owned),
        kinds: vec![Kind::Knowledge],
        ..Default::default()
    };
    let scoped = SearchFilter {
        any_of: vec![
            knowledge(None),
            ScopeClause { tenant: Some("bench".into()), user_id: Some("someone".into()), ..Default::default() },
        ],
    };
    let all = SearchFilter::all();
    let others = random_unit_vectors(100, dim, seed ^ 0x07e4);
    let points = || {
        let ours = data.iter().enumerate().map(|(i, v)| {
            let scope = Scope { tenant: "bench".into(), session_id: session[i].clone(), ..Default::default() };
            (i as u64, scope, Kind::Knowledge, v.clone())
        });
        let theirs =
            others.iter().enumerate().map(|(i, v)| ((n + i) as u64, Scope::user("other", "x"), Kind::Fact, v.clone()));
        ours.chain(theirs).collect()
    };

    let configured = GraphVariant { params: p.clone(), name: graph_name(p) };
    let graphs: Vec<&GraphVariant> = if graphs.is_empty() { vec![&configured] } else { graphs.iter().collect() };

    println!();
    println!("recall@{k} against the exact scan; \"poor\": queries that found under half of their exact top {k}.");
    println!("Latency: one query at a time on one thread. Filter \"tenant\": the service's filter for the tenant.");
    println!(
        "{:<44} {:>6} {:>9} {:>5} {:>8} {:>8} {:>8}",
        "method", "filter", "recall", "poor", "mean ms", "p95 ms", "build s"
    );
    let row = |method: &str, filter: &str, recall: f64, poor: usize, lat: &Latency, build: &str| {
        println!(
            "{method:<44} {filter:>6} {recall:>9.4} {poor:>5} {:>8.3} {:>8.3} {build:>8}",
            lat.mean_ms, lat.p95_ms
        );
    };
    let mut exact: Option<Vec<Vec<Hit>>> = None;
    let mut crossover = Vec::new();
    for (g, variant) in graphs.iter().enumerate() {
        let index = VectorIndex::new(variant.params.clone());
        let started = Instant::now();
        index.insert_many(points());
        let build = format!("{:.1}", started.elapsed().as_secs_f64());
        if g == 0 {
            // The reference: an exact scan over every entry, unfiltered and scoped.
            let (reference, lat) = time_each(&queries, |q| index.exact_search(q, k, &all));
            row("exact scan", "none", 1.0, 0, &lat, "");
            let (scoped_exact, lat) = time_each(&queries, |q| index.search_tuned(q, k, &scoped, 1, usize::MAX));
            let poor = poor_queries(&reference, &scoped_exact);
            row("exact scan (search path)", "tenant", recall(&reference, &scoped_exact), poor, &lat, "");
            let mean = |f: fn(&Vec<Hit>) -> Option<&Hit>| {
                reference.iter().filter_map(f).map(|h| h.similarity as f64).sum::<f64>() / n_queries.max(1) as f64
            };
            println!(
                "  (exact: mean cosine of the best hit {:.3}, of the k-th {:.3})",
                mean(|h| h.first()),
                mean(|h| h.last())
            );
            exact = Some(reference);
            // The crossover between the exact scan and the graph walk, by scope size.
            for &size in &sizes {
                let filter = SearchFilter::clause(knowledge(Some(&format!("s{size}"))));
                let (truth, scan) = time_each(&queries, |q| index.search_tuned(q, k, &filter, 1, usize::MAX));
                let (walked, walk) = time_each(&queries, |q| index.search_tuned(q, k, &filter, p.ef_search, 0));
                crossover.push((size, scan, walk, recall(&truth, &walked)));
            }
        }
        let reference = exact.as_ref().expect("set by the first graph");
        for &ef in efs {
            let marker = if ef == p.ef_search && variant.params == *p { " (configured)" } else { "" };
            let name = format!("hnsw {} ef={ef}{marker}", variant.name);
            let (found, lat) = time_each(&queries, |q| index.search_tuned(q, k, &all, ef, 0));
            row(&name, "none", recall(reference, &found), poor_queries(reference, &found), &lat, &build);
            let (found, lat) = time_each(&queries, |q| index.search_tuned(q, k, &scoped, ef, 0));
            row(&name, "tenant", recall(reference, &found), poor_queries(reference, &found), &lat, "");
        }
    }
    if !crossover.is_empty() {
        println!();
        println!(
            "scope size against the exact scan of the scope and the filtered walk ({}, ef={}):",
            graphs[0].name, p.ef_search
        );
        println!(
            "{:>10} {:>14} {:>14} {:>14} {:>14}",
            "entries", "scan mean ms", "scan p95 ms", "walk mean ms", "walk recall"
        );
        for (size, scan, walk, r) in crossover {
            println!("{size:>10} {:>14.3} {:>14.3} {:>14.3} {r:>14.4}", scan.mean_ms, scan.p95_ms, walk.mean_ms);
        }
    }
}
