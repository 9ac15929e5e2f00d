//! The `engram` binary: parses the command line and hands over to [`engram::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    passive_openmp_waits();
    let cli = engram::cli::Cli::parse();
    match engram::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engram: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// libtorch's OpenMP threads spin while they wait for work. With two model threads (or
/// any other busy process) sharing few cores, the spinning starves the thread doing the
/// work: decoding was measured at 10 tokens/s instead of 25 under one competing process
/// on 2 cores, and at 25 with passive waiting, which costs nothing measurable when the
/// machine is quiet. The OpenMP runtime reads `OMP_WAIT_POLICY` when it is loaded,
/// before `main`, so the process re-executes itself once with it set. An explicit
/// setting is left alone.
fn passive_openmp_waits() {
    #[cfg(unix)]
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        use std::os::unix::process::CommandExt;
        if let Ok(exe) = std::env::current_exe() {
            let err = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env("OMP_WAIT_POLICY", "PASSIVE")
                .exec();
            // Only reached when exec failed: carry on with the default policy.
            eprintln!("engram: could not re-execute with OMP_WAIT_POLICY=PASSIVE ({err}); continuing");
        }
    }
}
