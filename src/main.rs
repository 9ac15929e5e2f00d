//! The `engram` binary: parses the command line and hands over to [`engram::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = engram::cli::Cli::parse();
    match engram::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engram: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
