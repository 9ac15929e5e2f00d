//! `engram bench load`: concurrent clients against a running server for a fixed time,
//! each sending a mix of chat, search, add and import requests; prints throughput,
//! latency percentiles and errors per operation, and the server's memory use.
//!
//! Clients are OS threads with a blocking HTTP client each (its own connection), so a
//! client waits for its answer before sending again: N clients are N requests in
//! flight at most, as N users of an application would be.
//!
//! Given several nodes of one deployment (`--url a,b`), the clients are spread over
//! them in turn, and `--visibility-probes` measures how long a memory written on the
//! first takes to be found on the second.

mod rss;
mod seed;
mod stats;
mod visibility;
mod workload;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use rand::SeedableRng;
use serde::Serialize;

use super::client::Client;
use rss::{RssReport, RssSampler};
use seed::{SeedPlan, SeedReport};
use stats::{OpSummary, Outcome, Sample};
use workload::{ClientState, Mix, Op, OpBag, Shape, Users};

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The server's base URL; several nodes of one deployment separated by commas
    /// (clients are spread over them in turn; seeding goes through the first).
    #[arg(long = "url", default_value = "http://127.0.0.1:8080", env = "ENGRAM_URL", value_delimiter = ',')]
    pub urls: Vec<String>,
    /// An API key, when the server requires one.
    #[arg(long, env = "ENGRAM_API_KEY")]
    pub key: Option<String>,
    /// Concurrent clients (each sends its next request when the last is answered).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// How long the clients send requests; 0 only seeds.
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// Relative weights of the operations.
    #[arg(long, default_value = "chat=1,search=6,add=2,import=1")]
    pub mix: Mix,
    /// First fill the scope under test with this many memories (imported sessions).
    #[arg(long, default_value_t = 0)]
    pub seed_memories: usize,
    /// Messages per import request while seeding (the server's limits.import_messages
    /// caps it, 1000 by default).
    #[arg(long, default_value_t = 1000)]
    pub seed_batch: usize,
    /// The user whose memories are searched, added to and seeded; chat and import go to
    /// users named after it.
    #[arg(long, default_value = "bench-load")]
    pub user: String,
    /// Search mode of the search requests.
    #[arg(long, default_value = "hybrid", value_parser = ["hybrid", "dense", "lexical"])]
    pub search_mode: String,
    /// Reply length of the chat requests.
    #[arg(long, default_value_t = 16)]
    pub max_tokens: usize,
    /// The server's process id, to report its resident memory (a local server only).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Seed of the texts and of the order of operations.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// After the run, this many memories are written on the first node and searched for
    /// on the second until found (needs two URLs): the write-to-visible-elsewhere delay.
    #[arg(long, default_value_t = 0)]
    pub visibility_probes: usize,
    /// Print the summary as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Everything a run measured; `--json` prints it as is.
#[derive(Debug, Serialize)]
struct Report {
    urls: Vec<String>,
    clients: usize,
    seconds: f64,
    /// From the first request to the last answer (in-flight requests finish after
    /// `seconds`).
    elapsed_s: f64,
    mix: String,
    search_mode: String,
    scope_user: String,
    seeded: Option<SeedReport>,
    operations: BTreeMap<&'static str, OpSummary>,
    overall: OpSummary,
    server_rss: Option<RssReport>,
    visibility: Option<visibility::VisibilityReport>,
}

pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    if !(args.seconds >= 0.0 && args.seconds <= 86_400.0) {
        bail!("--seconds must be within 0..86400");
    }
    if args.clients == 0 || args.clients > 1024 {
        bail!("--clients must be within 1..1024");
    }
    if args.urls.is_empty() || args.urls.len() > 64 {
        bail!("--url names 1 to 64 servers");
    }
    if args.visibility_probes > 0 && args.urls.len() < 2 {
        bail!("--visibility-probes needs two nodes of one deployment in --url (a,b)");
    }
    for url in &args.urls {
        let client = Client::new(url, args.key.clone());
        if let Err((status, message)) = client.send("GET", "/readyz", None)? {
            bail!("the server at {url} is not ready (HTTP {status}): {message}");
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let seeded = match args.seed_memories {
        0 => None,
        memories => {
            let plan = SeedPlan {
                url: &args.urls[0],
                key: args.key.as_deref(),
                user_id: &args.user,
                memories,
                batch: args.seed_batch,
            };
            let report = seed::seed(&plan, &mut rng)?;
            eprintln!(
                "seeded {} memories for user {} in {:.1} s ({:.0}/s)",
                report.memories, report.user_id, report.seconds, report.per_second
            );
            Some(report)
        }
    };
    if args.seconds == 0.0 {
        return Ok(());
    }
    let sampler = args.server_pid.map(RssSampler::start).transpose()?;
    let started = Instant::now();
    let samples = drive(&args);
    let elapsed = started.elapsed();
    let server_rss = sampler.and_then(RssSampler::finish);
    let visibility = match args.visibility_probes {
        0 => None,
        probes => {
            let writer = Client::new(&args.urls[0], args.key.clone());
            let reader = Client::new(&args.urls[1], args.key.clone());
            Some(visibility::measure(&writer, &reader, &args.user, probes)?)
        }
    };
    let (operations, overall) = stats::by_op(&samples, elapsed);
    let report = Report {
        urls: args.urls.clone(),
        clients: args.clients,
        seconds: args.seconds,
        elapsed_s: elapsed.as_secs_f64(),
        mix: args.mix.to_string(),
        search_mode: args.search_mode.clone(),
        scope_user: args.user.clone(),
        seeded,
        operations,
        overall,
        server_rss,
        visibility,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// Runs the clients until the time is up; every request they made, timed.
fn drive(args: &LoadArgs) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let shape = Shape {
        users: Users { scope: args.user.clone(), prefix: args.user.clone() },
        search_mode: args.search_mode.clone(),
        max_tokens: args.max_tokens,
    };
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..args.clients)
            .map(|id| {
                let shape = &shape;
                s.spawn(move || client_loop(args, shape, id, deadline))
            })
            .collect();
        clients.into_iter().flat_map(|c| c.join().unwrap_or_default()).collect()
    })
}

/// One client: sends, waits for the answer, notes how long it took, sends the next.
fn client_loop(args: &LoadArgs, shape: &Shape, id: usize, deadline: Instant) -> Vec<Sample> {
    let client = Client::new(&args.urls[id % args.urls.len()], args.key.clone());
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_add(1 + id as u64));
    let mut bag = OpBag::new(&args.mix);
    let mut state = ClientState::new(id);
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        let op = bag.next(&mut rng);
        let req = workload::request(op, shape, &mut state, &mut rng);
        let sent = Instant::now();
        let answer = client.send(req.method, &req.path, Some(&req.body));
        let latency = sent.elapsed();
        let outcome = match &answer {
            Ok(Ok(_)) => Outcome::Ok,
            Ok(Err((status, _))) => Outcome::Status(*status),
            Err(_) => Outcome::Transport,
        };
        if op == Op::Chat {
            match &answer {
                Ok(Ok(v)) => state.chat_answered(v),
                _ => state.chat_failed(),
            }
        }
        samples.push(Sample { op, latency, outcome });
        if outcome == Outcome::Transport {
            // A server that went away would otherwise be hammered in a tight loop.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    samples
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn errors_cell(s: &OpSummary) -> String {
    if s.errors.is_empty() {
        return "-".into();
    }
    s.errors.iter().map(|(k, n)| format!("{k}×{n}")).collect::<Vec<_>>().join(" ")
}

/// One figure of a latency summary for the table, `-` when nothing succeeded.
fn ms_cell(latency: Option<&stats::Latency>, figure: fn(&stats::Latency) -> f64) -> String {
    latency.map_or("-".into(), |l| format!("{:.1}", figure(l)))
}

fn print_table(r: &Report) {
    println!(
        "engram bench load: {} clients for {:.0} s against {} (mix {}, search {}), ran {:.1} s",
        r.clients,
        r.seconds,
        r.urls.join(" + "),
        r.mix,
        r.search_mode,
        r.elapsed_s
    );
    if let Some(s) = &r.seeded {
        println!("seeded {} memories for {} in {:.1} s ({:.0}/s)", s.memories, s.user_id, s.seconds, s.per_second);
    }
    println!(
        "{:<9} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}  errors",
        "operation", "count", "ok", "ok/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "429"
    );
    let rows = Op::ALL.iter().filter_map(|op| r.operations.get(op.name()).map(|s| (op.name(), s)));
    for (name, s) in rows.chain([("all", &r.overall)]) {
        let ms = |f| ms_cell(s.latency_ms.as_ref(), f);
        println!(
            "{:<9} {:>7} {:>7} {:>9.2} {:>9} {:>9} {:>9} {:>9} {:>6}  {}",
            name,
            s.count,
            s.ok,
            s.throughput,
            ms(|l| l.p50),
            ms(|l| l.p95),
            ms(|l| l.p99),
            ms(|l| l.max),
            s.rate_limited,
            errors_cell(s)
        );
    }
    if let Some(m) = &r.server_rss {
        println!(
            "server RSS (pid {}): start {}, end {}, peak {} (sampled), high-water mark {}",
            m.pid,
            mib(m.start_kib),
            mib(m.end_kib),
            mib(m.peak_kib),
            mib(m.hwm_kib)
        );
    }
    if let Some(v) = &r.visibility {
        let ms = |f| ms_cell(v.delay_ms.as_ref(), f);
        println!(
            "written on {}, found on {}: {} probes, delay p50 {} ms, p95 {} ms, max {} ms, not seen within 10 s: {}",
            v.written_on,
            v.searched_on,
            v.probes,
            ms(|l| l.p50),
            ms(|l| l.p95),
            ms(|l| l.max),
            v.not_seen
        );
    }
}
