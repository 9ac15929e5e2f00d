//! `engram store …`: stats, verify, rebuild-index, export and import, against the
//! backend the configuration names. On sled they open the database directly, so run
//! them while the server is stopped (sled allows one process per database); on a Redis
//! Cluster they run beside the nodes. Moving from the embedded default to a cluster is
//! `engram store export` with the sled settings, then `engram store import` with the
//! cluster's.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc;

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::config::Settings;
use crate::store::export::import_lines;
use crate::store::{open_backend, BackendKind, MemoryStore, Store};

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Print counts (entries by kind, documents, sessions, index) as JSON. On a
    /// cluster, every record is counted (a walk of all shards).
    Stats,
    /// Check that every record decodes and that indexes and store agree (sled).
    /// Exits non-zero when anything is wrong, listing each problem.
    Verify,
    /// Rebuild the vector index from the database and save it (sled; a cluster's
    /// nodes build theirs from Redis on use).
    RebuildIndex,
    /// Write every record as JSON lines.
    Export {
        /// Output file; standard output when absent.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Read JSON lines (the export format) and store them, printing each record's id
    /// once it is durable.
    Import {
        /// Input file; standard input when absent.
        #[arg(long, short)]
        input: Option<PathBuf>,
        /// Largest number of lines committed together.
        #[arg(long, default_value_t = 512)]
        batch: usize,
    },
}

fn open_sled(settings: &Settings) -> anyhow::Result<Store> {
    let config = settings.store_config();
    if config.backend != BackendKind::Sled {
        bail!("this command works on the sled backend only; the configuration names {:?}", config.backend);
    }
    let dir = &settings.store.data_dir;
    Store::open(&config).with_context(|| format!("opening the store in {}", dir.display()))
}

fn open(settings: &Settings) -> anyhow::Result<std::sync::Arc<dyn MemoryStore>> {
    let config = settings.store_config();
    open_backend(&config).with_context(|| match config.backend {
        BackendKind::Sled => format!("opening the store in {}", settings.store.data_dir.display()),
        BackendKind::RedisCluster => format!("connecting to the cluster at {}", config.redis_urls.join(", ")),
    })
}

pub fn run(cmd: StoreCommand, settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Stats => {
            println!("{}", serde_json::to_string_pretty(&open(settings)?.census()?)?);
        }
        StoreCommand::Verify => {
            let report = open_sled(settings)?.verify()?;
            for p in &report.problems {
                println!("problem: {p}");
            }
            println!(
                "{} entries, {} documents, {} sessions, {} index points: {}",
                report.entries,
                report.documents,
                report.sessions,
                report.index_points,
                if report.is_ok() { "ok".to_owned() } else { format!("{} problem(s)", report.problems.len()) }
            );
            if !report.is_ok() {
                bail!("verify found {} problem(s)", report.problems.len());
            }
        }
        StoreCommand::RebuildIndex => {
            let store = open_sled(settings)?;
            let started = std::time::Instant::now();
            store.rebuild_index()?;
            println!("rebuilt the index over {} entries in {:.1?}", store.index().len(), started.elapsed());
        }
        StoreCommand::Export { output } => {
            let store = open(settings)?;
            let n = match output {
                Some(path) => {
                    let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                    let mut out = BufWriter::new(file);
                    let n = store.export(&mut out)?;
                    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                    n
                }
                None => store.export(&mut BufWriter::new(std::io::stdout().lock()))?,
            };
            eprintln!("exported {n} records");
        }
        StoreCommand::Import { input, batch } => {
            let reader: Box<dyn BufRead + Send> = match input {
                Some(path) => Box::new(std::io::BufReader::new(
                    std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?,
                )),
                None => Box::new(std::io::BufReader::new(std::io::stdin())),
            };
            let store = open(settings)?;
            let n = import(&*store, reader, batch.max(1))?;
            store.save_index()?;
            eprintln!("imported {n} records");
        }
    }
    Ok(())
}

/// Lines are read on their own thread, so whatever has arrived while the previous batch
/// was being flushed is committed together: one flush per batch, not per line, and a
/// slow writer on the other end of a pipe still gets each id as soon as it is durable.
fn import(store: &dyn MemoryStore, reader: Box<dyn BufRead + Send>, batch: usize) -> anyhow::Result<usize> {
    let (tx, rx) = mpsc::sync_channel::<std::io::Result<(usize, String)>>(batch * 4);
    std::thread::spawn(move || {
        for (i, line) in reader.lines().enumerate() {
            let item = line.map(|l| (i + 1, l));
            let stop = item.is_err();
            if tx.send(item).is_err() || stop {
                return;
            }
        }
    });
    let mut stdout = std::io::stdout().lock();
    let mut total = 0;
    while let Ok(first) = rx.recv() {
        let mut lines = vec![first?];
        while lines.len() < batch {
            match rx.try_recv() {
                Ok(item) => lines.push(item?),
                Err(_) => break,
            }
        }
        lines.retain(|(_, l)| !l.trim().is_empty());
        for id in import_lines(store, &lines)? {
            writeln!(stdout, "{id}")?;
        }
        stdout.flush()?;
        total += lines.len();
    }
    Ok(total)
}
