//! The command line: `engram serve`, the store's admin commands, benchmarks and
//! evaluations, and the commands that talk to a running server (`ingest`, `query`,
//! `chat`).

/// Public for the tests that reuse its synthetic workloads.
pub mod bench;
mod bench_chat;
mod bench_load;
mod bench_models;
mod client;
mod eval;
mod eval_supersede;
mod remote;
mod store_admin;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Overrides, Settings};

#[derive(Debug, Parser)]
#[command(name = "engram", version, about = "Retrieval-augmented long-term memory for language models")]
pub struct Cli {
    /// A TOML file read on top of the built-in defaults (see config/default.toml).
    #[arg(long, global = true, env = "ENGRAM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the database and index live (store.data_dir).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N (model.device).
    #[arg(long, global = true)]
    pub device: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    Serve {
        /// Address to listen on (server.bind).
        #[arg(long)]
        bind: Option<String>,
    },
    /// Inspect and maintain the store (run these while the server is stopped).
    #[command(subcommand)]
    Store(store_admin::StoreCommand),
    /// Measure performance.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Measure quality against a running server.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Upload documents (files, or folders of .txt, .md, .html, .pdf) to a running server.
    Ingest {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Search a user's memories on a running server.
    Query {
        text: String,
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// hybrid, dense or lexical.
        #[arg(long, default_value = "hybrid")]
        mode: String,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Print the HTTP API's OpenAPI document (what `/openapi.json` serves).
    Openapi,
    /// Chat with memory in the terminal, against a running server.
    Chat {
        /// Continue this session instead of starting one.
        #[arg(long)]
        session: Option<String>,
        #[command(flatten)]
        remote: remote::Remote,
    },
}

impl Cli {
    pub fn settings(&self) -> Result<Settings, String> {
        let bind = match &self.command {
            Command::Serve { bind } => bind.clone(),
            _ => None,
        };
        let overrides = Overrides { bind, data_dir: self.data_dir.clone(), device: self.device.clone() };
        Settings::load(self.config.as_deref(), &overrides)
    }
}

/// Runs the parsed command; the exit code is the caller's to set from the result.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = cli.settings().map_err(anyhow::Error::msg)?;
    // Held to the end: dropping it sends the spans still buffered for the collector.
    let _telemetry = crate::logging::init(&settings.log).map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Serve { .. } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("engram-http")
            .build()?
            .block_on(crate::server::serve(settings)),
        Command::Store(cmd) => store_admin::run(cmd, &settings),
        Command::Bench(cmd) => bench::run(cmd, &settings),
        Command::Eval(cmd) => eval::run(cmd),
        Command::Ingest { paths, remote } => remote::ingest(&remote, &paths),
        Command::Query { text, k, mode, remote } => remote::query(&remote, &text, k, &mode),
        Command::Chat { session, remote } => remote::chat(&remote, session),
        Command::Openapi => {
            println!("{}", crate::api::openapi_document().to_pretty_json()?);
            Ok(())
        }
    }
}
