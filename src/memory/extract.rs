//! Text extraction from PDF and HTML uploads, run in a child process with limits.
//!
//! The parsers (pdf-extract over lopdf, html2text over html5ever) are not hardened: a form
//! XObject that draws itself recurses until the stack overflows, which aborts the whole
//! process (no `catch_unwind` or blocking pool can stop that); a FlateDecode stream of a
//! few MB inflates to many GB; deeply nested HTML takes minutes of CPU. So the server
//! never parses an upload itself: it runs `engram-extract` (`src/bin/engram-extract.rs`,
//! installed next to `engram`) once per document, with the input on stdin and the text
//! read back from stdout. The child caps its own memory (RLIMIT_DATA/AS) and CPU time
//! (RLIMIT_CPU) before it reads anything; here the parent adds a wall-clock limit, a
//! limit on the text read back, and a bound on how many children run at once. Whatever
//! the child does, the outcome is a [`ExtractError`] that says what happened, and the
//! server goes on.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;

use super::documents::ExtractError;

/// The extraction program's file name; it is looked for next to the running executable.
pub const PROGRAM: &str = "engram-extract";
/// The child's exit status for "this document cannot be read" (reason on stderr).
const EXIT_UNREADABLE: i32 = 2;
/// The child's exit status for "I could not start" (bad arguments, limits not set).
const EXIT_SETUP: i32 = 3;
/// Bytes of the child's stderr kept for the message; the rest is read and dropped, so
/// that a chatty child never blocks on a full pipe.
const STDERR_KEPT: u64 = 4096;

/// The `[extraction]` settings: limits on each extraction child, and on how many run.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExtractionConfig {
    /// Heap and other writable memory of one child, in MiB.
    pub memory_mb: u64,
    /// CPU time of one child, in seconds.
    pub cpu_secs: u64,
    /// Wall-clock time of one child, in seconds; it is killed after that.
    pub timeout_secs: u64,
    /// Longest text read back from a document; more is refused with 413. Not a key of
    /// its own: it is `limits.document_text_bytes`, set when the server starts.
    #[serde(skip, default = "no_text_limit")]
    pub max_text_bytes: usize,
    /// Children running at once; 0 means one per core. More uploads wait their turn.
    pub concurrency: usize,
}

fn no_text_limit() -> usize {
    usize::MAX
}

impl ExtractionConfig {
    /// Refuses limits under which no document could be read.
    pub fn validate(&self) -> Result<(), String> {
        if self.memory_mb < 64 {
            return Err("extraction.memory_mb must be at least 64".into());
        }
        if self.cpu_secs == 0 || self.timeout_secs == 0 {
            return Err("extraction.cpu_secs and extraction.timeout_secs must be at least 1".into());
        }
        if self.max_text_bytes == 0 {
            return Err("limits.document_text_bytes must be at least 1".into());
        }
        Ok(())
    }

    fn children(&self) -> usize {
        match self.concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// The kinds of document read in a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pdf,
    Html,
}

impl Format {
    fn arg(self) -> &'static str {
        match self {
            Format::Pdf => "pdf",
            Format::Html => "html",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Format::Pdf => "PDF",
            Format::Html => "HTML",
        }
    }
}

/// Where the input came from, for the error messages.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The request field: `file` for an upload, `text` for JSON.
    pub field: &'static str,
    /// The uploaded file's name; None for text sent in JSON.
    pub file_name: Option<&'a str>,
}

impl Origin<'_> {
    /// "the PDF `report.pdf`", or "the HTML".
    fn subject(&self, format: Format) -> String {
        match self.file_name {
            Some(name) => format!("the {} `{name}`", format.label()),
            None => format!("the {}", format.label()),
        }
    }
}

/// How a child run ended, before it is judged.
#[derive(Debug)]
enum Ended {
    /// The child ended by itself (exit or signal).
    Exited { status: ExitStatus, stdout: Vec<u8>, stderr: Vec<u8> },
    /// Still running at the wall-clock limit: killed.
    TimedOut,
    /// It wrote more than the text limit: killed.
    TooMuchText,
}

/// Why the exchange with a child stopped early.
enum Stop {
    TooMuchText,
    Io(std::io::Error),
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Self {
        Stop::Io(e)
    }
}

/// Runs extraction children within the configured limits. Cheap to clone; clones share
/// the bound on running children.
#[derive(Clone)]
pub struct Extractor {
    /// The program and any leading arguments (tests run a shell script instead).
    command: Arc<[OsString]>,
    config: ExtractionConfig,
    running: Arc<Semaphore>,
}

impl Extractor {
    /// An extractor running `engram-extract` from the running executable's folder.
    pub fn new(config: ExtractionConfig) -> Self {
        let exe = std::env::current_exe().ok();
        let program = match exe.as_deref().and_then(|p| p.parent()) {
            Some(dir) => dir.join(format!("{PROGRAM}{}", std::env::consts::EXE_SUFFIX)),
            None => PathBuf::from(PROGRAM),
        };
        Self::with_command(vec![program.into_os_string()], config)
    }

    fn with_command(command: Vec<OsString>, config: ExtractionConfig) -> Self {
        let running = Arc::new(Semaphore::new(config.children()));
        Self { command: command.into(), config, running }
    }

    /// Whether the extraction program is there, for a warning at start.
    pub fn check(&self) -> Result<(), String> {
        let program = PathBuf::from(&self.command[0]);
        match program.is_file() {
            true => Ok(()),
            false => Err(format!("{} is missing: PDF and HTML uploads will fail", program.display())),
        }
    }

    /// The text of a PDF or HTML document, read in a child process. Waits while
    /// `concurrency` children already run.
    pub async fn extract(&self, format: Format, origin: Origin<'_>, input: Vec<u8>) -> Result<String, ExtractError> {
        let _turn = self.running.acquire().await.map_err(|_| ExtractError::Internal("extraction stopped".into()))?;
        let ended = self.run(format, input).await.map_err(|e| {
            ExtractError::Internal(format!("cannot run {}: {e}", PathBuf::from(&self.command[0]).display()))
        })?;
        judge(ended, format, origin, &self.config)
    }

    /// Runs one child to its end, or kills it at the time or text limit.
    async fn run(&self, format: Format, input: Vec<u8>) -> std::io::Result<Ended> {
        let mut child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .arg(format.arg())
            .args(["--memory-mb", &self.config.memory_mb.to_string()])
            .args(["--cpu-secs", &self.config.cpu_secs.to_string()])
            // Nothing of the server's environment (RUST_BACKTRACE, RUST_LOG…) changes
            // what the child does or prints.
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A request dropped (the client went away, the request timed out) kills its
            // child rather than leaving it to run to its CPU limit.
            .kill_on_drop(true)
            .spawn()?;
        let limit = Duration::from_secs(self.config.timeout_secs);
        let max = self.config.max_text_bytes;
        let ended = match tokio::time::timeout(limit, exchange(&mut child, input, max)).await {
            Ok(Ok((status, stdout, stderr))) => return Ok(Ended::Exited { status, stdout, stderr }),
            Ok(Err(Stop::Io(e))) => Err(e),
            Ok(Err(Stop::TooMuchText)) => Ok(Ended::TooMuchText),
            Err(_) => Ok(Ended::TimedOut),
        };
        // Killed and reaped now, not whenever the runtime gets to it.
        let _ = child.start_kill();
        let _ = child.wait().await;
        ended
    }
}

/// Writes the input while reading stdout and stderr, all at once: a child writing more
/// than a pipe holds before it has read all its input would otherwise wait on us while
/// we wait on it. Stops as soon as stdout passes `max` bytes.
async fn exchange(child: &mut Child, input: Vec<u8>, max: usize) -> Result<(ExitStatus, Vec<u8>, Vec<u8>), Stop> {
    let (mut stdin, stdout, stderr) = match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
        (Some(i), Some(o), Some(e)) => (i, o, e),
        _ => return Err(Stop::Io(std::io::Error::other("the child's pipes are missing"))),
    };
    let write = async move {
        // A child that stops reading (it crashed, or needs no more) closes the pipe: its
        // exit status tells what happened, not the write error.
        let _ = stdin.write_all(&input).await;
        Ok::<(), Stop>(())
    };
    let read_text = async move {
        let mut text = Vec::new();
        stdout.take(max as u64 + 1).read_to_end(&mut text).await?;
        if text.len() > max {
            return Err(Stop::TooMuchText);
        }
        Ok(text)
    };
    let read_reason = async move {
        let mut kept = Vec::new();
        let mut stderr = stderr;
        (&mut stderr).take(STDERR_KEPT).read_to_end(&mut kept).await?;
        tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await?;
        Ok::<_, Stop>(kept)
    };
    let ((), text, reason) = tokio::try_join!(write, read_text, read_reason)?;
    Ok((child.wait().await?, text, reason))
}

/// The text, or the error that says what the child's end means.
fn judge(ended: Ended, format: Format, origin: Origin<'_>, config: &ExtractionConfig) -> Result<String, ExtractError> {
    let subject = origin.subject(format);
    let invalid = |why: String| ExtractError::Invalid(format!("{}: cannot read {subject}: {why}", origin.field));
    match ended {
        Ended::TimedOut => Err(invalid(format!("reading it took longer than {} s", config.timeout_secs))),
        Ended::TooMuchText => Err(ExtractError::TooLarge(format!(
            "{}: the text of {subject} is longer than {} bytes",
            origin.field, config.max_text_bytes
        ))),
        Ended::Exited { status, stdout, .. } if status.success() => {
            String::from_utf8(stdout).map_err(|_| invalid("the reader's output is not UTF-8".into()))
        }
        Ended::Exited { status, stderr, .. } => {
            let stderr = String::from_utf8_lossy(&stderr);
            let reason = stderr.lines().next().unwrap_or_default().trim();
            if status.code() == Some(EXIT_SETUP) {
                return Err(ExtractError::Internal(format!("{PROGRAM} could not start: {reason}")));
            }
            Err(invalid(why_it_failed(status, &stderr, reason, config)))
        }
    }
}

/// A failed child's end in words: its own reason when it gave one, else what the signal
/// says, told apart by the Rust runtime's last words (a failed allocation or a stack
/// overflow both end in SIGABRT). Those are only looked for after a signal: a reason the
/// child gives may quote the document, which must not pass for the runtime.
fn why_it_failed(status: ExitStatus, stderr: &str, reason: &str, config: &ExtractionConfig) -> String {
    use std::os::unix::process::ExitStatusExt;
    let said = |words: &str| status.signal().is_some() && stderr.contains(words);
    if said("memory allocation of") {
        return format!("it needs more than {} MiB of memory", config.memory_mb);
    }
    if said("overflowed its stack") {
        return "it is nested too deeply (the reader's stack overflowed)".into();
    }
    match (status.code(), status.signal()) {
        (Some(EXIT_UNREADABLE), _) if !reason.is_empty() => reason.to_owned(),
        (_, Some(libc::SIGXCPU)) => format!("reading it needs more than {} s of CPU time", config.cpu_secs),
        // Only the hard CPU limit or the kernel's out-of-memory killer send SIGKILL: the
        // kills of this module are judged as time or text limits before we get here.
        (_, Some(libc::SIGKILL)) => format!(
            "the reader was killed (over its limit of {} s of CPU time or {} MiB of memory)",
            config.cpu_secs, config.memory_mb
        ),
        (_, Some(signal)) => format!("the reader crashed (signal {signal})"),
        (Some(code), _) => format!("the reader failed (exit status {code})"),
        (None, None) => "the reader failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::time::Instant;

    use super::*;

    fn config() -> ExtractionConfig {
        ExtractionConfig { memory_mb: 256, cpu_secs: 5, timeout_secs: 5, max_text_bytes: 1000, concurrency: 0 }
    }

    const FILE: Origin<'static> = Origin { field: "file", file_name: Some("a.pdf") };

    /// An extractor whose child is this shell script (the extractor's own arguments
    /// follow as $1…).
    fn script(body: &str, config: ExtractionConfig) -> Extractor {
        let command = ["/bin/sh", "-c", body, PROGRAM].map(OsString::from).to_vec();
        Extractor::with_command(command, config)
    }

    async fn run_script(body: &str, input: &[u8]) -> Result<String, ExtractError> {
        script(body, config()).extract(Format::Pdf, FILE, input.to_vec()).await
    }

    fn invalid(outcome: Result<String, ExtractError>) -> String {
        match outcome {
            Err(ExtractError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_text_comes_back_while_the_input_is_still_written() {
        // More than a pipe holds in each direction: writing all of the input first, then
        // reading, would leave both processes waiting on each other.
        let cat = script("cat", ExtractionConfig { max_text_bytes: 4 << 20, ..config() });
        let text = cat.extract(Format::Html, FILE, vec![b'y'; 3 << 20]).await.unwrap();
        assert_eq!(text.len(), 3 << 20);
    }

    #[tokio::test]
    async fn a_child_that_ignores_its_input_is_fine() {
        assert_eq!(run_script("printf done", &vec![0u8; 2 << 20]).await.unwrap(), "done");
    }

    #[tokio::test]
    async fn the_arguments_carry_the_format_and_limits() {
        let args = run_script("printf '%s ' \"$@\"", b"").await.unwrap();
        assert_eq!(args, "pdf --memory-mb 256 --cpu-secs 5 ");
    }

    #[tokio::test]
    async fn a_crash_is_a_400_naming_the_file_and_the_signal() {
        let message = invalid(run_script("kill -SEGV $$", b"%PDF").await);
        assert!(message.starts_with("file: cannot read the PDF `a.pdf`: the reader crashed (signal 11)"), "{message}");
    }

    #[tokio::test]
    async fn the_reason_of_an_unreadable_document_is_passed_on() {
        let message = invalid(run_script("echo 'invalid cross-reference table' >&2; exit 2", b"").await);
        assert_eq!(message, "file: cannot read the PDF `a.pdf`: invalid cross-reference table");
    }

    #[tokio::test]
    async fn a_child_past_the_wall_clock_is_killed() {
        let fast = ExtractionConfig { timeout_secs: 1, ..config() };
        let started = Instant::now();
        let message = invalid(script("exec sleep 30", fast).extract(Format::Pdf, FILE, vec![]).await);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(message.ends_with("reading it took longer than 1 s"), "{message}");
    }

    #[tokio::test]
    async fn text_over_the_limit_is_a_413_and_the_child_is_stopped() {
        // `yes` never ends by itself: the extractor must stop reading and kill it.
        let started = Instant::now();
        let outcome = run_script("exec yes", b"").await;
        assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
        match outcome {
            Err(ExtractError::TooLarge(m)) => {
                assert_eq!(m, "file: the text of the PDF `a.pdf` is longer than 1000 bytes")
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_child_is_killed_when_the_request_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let body = format!("echo $$ > {}; exec sleep 30", pid_file.display());
        let extractor = script(&body, config());
        let dropped = tokio::time::timeout(Duration::from_millis(500), extractor.extract(Format::Pdf, FILE, vec![]));
        assert!(dropped.await.is_err());
        let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_owned();
        let deadline = Instant::now() + Duration::from_secs(5);
        // Gone, or a zombie waiting for the runtime to reap it: not running either way.
        while let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) {
                break;
            }
            assert!(Instant::now() < deadline, "child {pid} still runs: {stat}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn children_beyond_the_bound_wait_their_turn() {
        let one = script("sleep 0.5; printf ok", ExtractionConfig { concurrency: 1, ..config() });
        let started = Instant::now();
        let (a, b) = tokio::join!(one.extract(Format::Html, FILE, vec![]), one.extract(Format::Html, FILE, vec![]));
        assert_eq!((a.unwrap(), b.unwrap()), ("ok".to_owned(), "ok".to_owned()));
        assert!(started.elapsed() >= Duration::from_millis(1000), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_missing_program_is_a_server_fault() {
        let gone = Extractor::with_command(vec!["/nonexistent/engram-extract".into()], config());
        assert!(gone.check().is_err());
        match gone.extract(Format::Pdf, FILE, vec![]).await {
            Err(ExtractError::Internal(m)) => assert!(m.contains("/nonexistent/engram-extract"), "{m}"),
            other => panic!("expected Internal, got {other:?}"),
        }
    }

    fn exited(raw: i32, stderr: &str) -> Ended {
        Ended::Exited { status: ExitStatus::from_raw(raw), stdout: vec![], stderr: stderr.as_bytes().to_vec() }
    }

    fn judged(ended: Ended) -> String {
        let json = Origin { field: "text", file_name: None };
        match judge(ended, Format::Html, json, &config()) {
            Err(ExtractError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn the_ends_of_a_child_are_told_apart() {
        // Raw wait statuses: a signal number alone, or an exit code shifted left by 8.
        let abrt = libc::SIGABRT;
        assert_eq!(
            judged(exited(abrt, "memory allocation of 1073741824 bytes failed\n")),
            "text: cannot read the HTML: it needs more than 256 MiB of memory"
        );
        assert_eq!(
            judged(exited(abrt, "\nthread 'parse' has overflowed its stack\nfatal runtime error: stack overflow\n")),
            "text: cannot read the HTML: it is nested too deeply (the reader's stack overflowed)"
        );
        assert!(judged(exited(libc::SIGXCPU, "")).ends_with("needs more than 5 s of CPU time"));
        assert!(judged(exited(libc::SIGKILL, "")).contains("over its limit of 5 s of CPU time or 256 MiB"));
        assert!(judged(exited(abrt, "")).ends_with("the reader crashed (signal 6)"));
        assert!(judged(exited(7 << 8, "")).ends_with("the reader failed (exit status 7)"));
        assert!(judged(exited(2 << 8, "")).ends_with("the reader failed (exit status 2)"));
        // A reason that quotes the document is passed on as it is, never taken for the
        // runtime's own words.
        assert_eq!(
            judged(exited(2 << 8, "unknown font `overflowed its stack`\n")),
            "text: cannot read the HTML: unknown font `overflowed its stack`"
        );
        assert_eq!(judged(Ended::TimedOut), "text: cannot read the HTML: reading it took longer than 5 s");
        let setup = judge(exited(3 << 8, "cannot set the resource limits\n"), Format::Pdf, FILE, &config());
        assert!(matches!(setup, Err(ExtractError::Internal(m)) if m.contains("cannot set the resource limits")));
        let ok = Ended::Exited { status: ExitStatus::from_raw(0), stdout: b"text".to_vec(), stderr: vec![] };
        assert_eq!(judge(ok, Format::Pdf, FILE, &config()).unwrap(), "text");
    }
}
