//! `engram-extract pdf|html --memory-mb N --cpu-secs N`: reads one uploaded document on
//! standard input and writes its plain text to standard output. The server runs it as a
//! child process for every PDF and HTML upload (see `engram::memory::extract`), so that a
//! hostile file can only take this process down, never the server.
//!
//! A separate binary rather than a subcommand of `engram`: it links neither libtorch nor
//! the rest of the server (only the two parsers and libc), so it starts in milliseconds
//! and its memory limit measures the parse, not a gigabyte of mapped libraries.
//!
//! Exit status: 0 with the text on stdout; 2 when the document cannot be read, with a
//! one-line reason on stderr; 3 for a bad command line or a limit that cannot be set.
//! Anything else (a signal: stack overflow, CPU limit, failed allocation) is read by the
//! parent as a crash.

use std::io::{Read, Write};
use std::process::ExitCode;

/// Parsing runs on a thread with this much stack, so that ordinary deep documents (long
/// nested lists, many levels of forms) succeed; a hostile one still overflows it, and the
/// overflow ends this process only.
const PARSE_STACK_BYTES: usize = 64 << 20;
/// Address space beyond the data limit: code, thread stacks' guard areas and malloc's
/// reserved (not yet writable) arenas count there but are not memory in use.
const ADDRESS_SPACE_SLACK_BYTES: u64 = 512 << 20;
/// HTML lines are this wide, so that paragraphs are not wrapped into fragments.
const HTML_WIDTH: usize = 10_000;

#[derive(Clone, Copy)]
enum Format {
    Pdf,
    Html,
}

struct Args {
    format: Format,
    memory_mb: u64,
    cpu_secs: u64,
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => return fail(3, &format!("usage: engram-extract pdf|html --memory-mb N --cpu-secs N ({e})")),
    };
    if let Err(e) = set_limits(args.memory_mb, args.cpu_secs) {
        return fail(3, &format!("cannot set the resource limits: {e}"));
    }
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        return fail(3, &format!("cannot read standard input: {e}"));
    }
    // The parsers' panics are reported as the reason, not as a backtrace.
    std::panic::set_hook(Box::new(|_| {}));
    let format = args.format;
    let parsing = std::thread::Builder::new()
        .name("parse".into())
        .stack_size(PARSE_STACK_BYTES)
        .spawn(move || extract(format, &input));
    let outcome = match parsing.map(|t| t.join()) {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => Err(panic_message(&*panic)),
        Err(e) => return fail(3, &format!("cannot start the parsing thread: {e}")),
    };
    match outcome {
        Ok(text) => {
            let mut out = std::io::stdout().lock();
            // The parent stops reading past its text limit; a write error then is expected.
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
            ExitCode::SUCCESS
        }
        Err(reason) => fail(2, &reason),
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let format = match args.next().as_deref() {
        Some("pdf") => Format::Pdf,
        Some("html") => Format::Html,
        other => return Err(format!("unknown format {other:?}")),
    };
    let (mut memory_mb, mut cpu_secs) = (None, None);
    while let Some(flag) = args.next() {
        let value: u64 = args.next().and_then(|v| v.parse().ok()).ok_or(format!("{flag} needs a number"))?;
        match flag.as_str() {
            "--memory-mb" => memory_mb = Some(value),
            "--cpu-secs" => cpu_secs = Some(value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Args {
        format,
        memory_mb: memory_mb.ok_or("--memory-mb is required")?,
        cpu_secs: cpu_secs.ok_or("--cpu-secs is required")?,
    })
}

/// Caps this process before it looks at the input. RLIMIT_DATA counts the heap and every
/// private writable mapping (Linux ≥ 4.7), which is where a parse's memory goes; a failed
/// allocation then aborts with "memory allocation of N bytes failed", which the parent
/// recognises. RLIMIT_AS backs it up on older kernels. RLIMIT_CPU sends SIGXCPU at the
/// soft limit and SIGKILL a second later. No core files: a crash is an expected outcome.
fn set_limits(memory_mb: u64, cpu_secs: u64) -> std::io::Result<()> {
    let memory = memory_mb << 20;
    set_limit(libc::RLIMIT_DATA, memory, memory)?;
    set_limit(libc::RLIMIT_AS, memory + ADDRESS_SPACE_SLACK_BYTES, memory + ADDRESS_SPACE_SLACK_BYTES)?;
    set_limit(libc::RLIMIT_CPU, cpu_secs, cpu_secs + 1)?;
    set_limit(libc::RLIMIT_CORE, 0, 0)
}

/// The type of setrlimit's first argument: glibc names it, other C libraries take an int.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type Resource = libc::c_int;

fn set_limit(resource: Resource, soft: u64, hard: u64) -> std::io::Result<()> {
    let limit = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
    // SAFETY: setrlimit reads the struct we pass and touches no memory of ours.
    if unsafe { libc::setrlimit(resource, &limit) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn extract(format: Format, input: &[u8]) -> Result<String, String> {
    match format {
        Format::Pdf => pdf_extract::extract_text_from_mem(input).map_err(|e| e.to_string()),
        Format::Html => {
            // The server checked the encoding; this is for a direct caller.
            let html = std::str::from_utf8(input).map_err(|_| "the HTML is not UTF-8 text".to_owned())?;
            // No decorations (`*`, link footnotes): the text is for search, not display.
            html2text::config::plain_no_decorate()
                .string_from_read(html.as_bytes(), HTML_WIDTH)
                .map_err(|e| e.to_string())
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str));
    format!("the reader failed: {}", text.unwrap_or("panic"))
}

/// Writes the reason as one line on stderr and returns the exit status.
fn fail(code: u8, reason: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "{}", reason.replace('\n', " "));
    ExitCode::from(code)
}
