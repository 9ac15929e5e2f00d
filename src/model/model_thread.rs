//! Starting and supervising the OS thread that owns a model. libtorch's thread count and
//! grad mode are per thread, and tch modules are not `Sync`, so a model is created, used
//! and dropped on one thread of its own; callers reach it through a queue.
//!
//! Faults are contained at two levels. The services catch a panic around each batch of
//! jobs and answer that batch with an error (see [`catch`]). A panic that escapes them
//! anyway (a bug in the serving loop itself) unwinds to the supervisor here, which drops
//! the model, waits a back-off, loads the model again and serves the same queue: jobs
//! queued meanwhile are refused at once ("not running", HTTP 503) rather than left
//! waiting on a model that is not there.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// The first pause before reloading a crashed model; it doubles with each crash that
/// follows soon after a reload.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A model that served this long without crashing starts again from the first pause.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Whether a model thread has its model loaded and is taking jobs; shared between the
/// supervisor (writer) and the service handles (readers, for `/readyz`).
#[derive(Clone, Debug)]
pub struct Liveness(Arc<AtomicBool>);

impl Liveness {
    fn new() -> Self {
        Self(Arc::new(AtomicBool::new(false)))
    }

    /// True while the model is loaded and serving; false while it is being reloaded
    /// after a crash.
    pub fn is_running(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, running: bool) {
        self.0.store(running, Ordering::Release);
    }
}

/// Spawns thread `name`, which sets the thread count (0: libtorch's default, all
/// cores) and no-grad mode, builds the model with `load`, then hands it to `serve`
/// until the queue `jobs` closes. Blocks until the first load finished and returns what
/// `load` reported besides the model (its info), how long loading took, and the
/// liveness flag; or why loading failed.
///
/// Should `serve` panic, the thread reloads the model with `load` (after a back-off)
/// and serves again, for as long as the queue is open. `model` names it in the logs.
pub(crate) fn spawn<M, I, J>(
    name: &str,
    model: &'static str,
    threads: usize,
    jobs: mpsc::Receiver<J>,
    load: impl FnMut() -> Result<(M, I), String> + Send + 'static,
    serve: impl FnMut(M, &mut mpsc::Receiver<J>) + Send + 'static,
) -> Result<(I, Duration, Liveness), String>
where
    I: Send + 'static,
    J: Send + 'static,
{
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let liveness = Liveness::new();
    let supervisor = Supervisor { model, jobs, load, serve, liveness: liveness.clone() };
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            if threads > 0 {
                tch::set_num_threads(threads as i32);
            }
            let _no_grad = tch::no_grad_guard();
            supervisor.run(ready_tx);
        })
        .map_err(|e| format!("starting its thread: {e}"))?;
    let (info, took) = ready_rx.recv().map_err(|_| "the loading thread died".to_owned())??;
    Ok((info, took, liveness))
}

struct Supervisor<L, S, J> {
    model: &'static str,
    jobs: mpsc::Receiver<J>,
    load: L,
    serve: S,
    liveness: Liveness,
}

type Ready<I> = std::sync::mpsc::Sender<Result<(I, Duration), String>>;

impl<M, I, J, L, S> Supervisor<L, S, J>
where
    L: FnMut() -> Result<(M, I), String>,
    S: FnMut(M, &mut mpsc::Receiver<J>),
{
    /// Loads and serves until the queue closes. The first load's outcome goes to
    /// `ready`; a failed first load ends the thread (start-up fails), a failed reload
    /// is retried after the back-off.
    fn run(mut self, ready: Ready<I>) {
        let mut ready = Some(ready);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = Instant::now();
            let loaded = catch(|| (self.load)()).unwrap_or_else(Err);
            let model = match (loaded, ready.take()) {
                (Ok((model, info)), Some(ready)) => {
                    // Running before the starter hears of it: its handle never sees the
                    // model as down.
                    self.liveness.set(true);
                    let _ = ready.send(Ok((info, started.elapsed())));
                    model
                }
                (Ok((model, _)), None) => {
                    tracing::warn!(
                        model = self.model,
                        load_ms = started.elapsed().as_millis() as u64,
                        "model reloaded"
                    );
                    self.liveness.set(true);
                    model
                }
                (Err(e), Some(ready)) => {
                    let _ = ready.send(Err(e));
                    return;
                }
                (Err(e), None) => {
                    tracing::error!(model = self.model, error = %e, retry_in_ms = backoff.as_millis() as u64, "reloading the model failed");
                    if !refuse_jobs_for(&mut self.jobs, backoff) {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let serving = Instant::now();
            let jobs = &mut self.jobs;
            let served = catch_unwind(AssertUnwindSafe(|| (self.serve)(model, jobs)));
            self.liveness.set(false);
            let Err(panic) = served else {
                return; // the queue closed: the service is gone
            };
            if serving.elapsed() >= HEALTHY_AFTER {
                backoff = FIRST_BACKOFF;
            }
            tracing::error!(
                model = self.model, panic = %panic_message(panic.as_ref()), restart_in_ms = backoff.as_millis() as u64,
                "the model thread crashed; restarting it with the model reloaded"
            );
            if !refuse_jobs_for(&mut self.jobs, backoff) {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Waits `pause`, dropping the jobs that arrive meanwhile (their callers learn at once
/// that the model is not running). False when the queue closed.
fn refuse_jobs_for<J>(jobs: &mut mpsc::Receiver<J>, pause: Duration) -> bool {
    let until = Instant::now() + pause;
    loop {
        loop {
            match jobs.try_recv() {
                Ok(job) => drop(job),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

/// Runs `work`, turning a panic into an error that says so: the services wrap each batch
/// in it, so that a fault answers the jobs it struck and the thread carries on. The
/// model's weights are only read while serving and each job's state (its KV cache) is
/// its own, so nothing a panic interrupts outlives the job.
pub(crate) fn catch<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(work))
        .map_err(|panic| format!("the model panicked: {}", panic_message(panic.as_ref())))
}

/// The message a panic was raised with.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "model" that is a number; serving answers each job with it, and job 0 panics
    /// outside any per-job guard, as a bug in a serving loop would.
    #[test]
    fn a_crashed_thread_is_restarted_with_the_model_reloaded() {
        let (tx, rx) = mpsc::channel::<(u32, std::sync::mpsc::Sender<u32>)>(4);
        let mut loads = 0;
        let load = move || {
            loads += 1;
            Ok((loads, ()))
        };
        let serve = |model: u32, jobs: &mut mpsc::Receiver<(u32, std::sync::mpsc::Sender<u32>)>| {
            while let Some((job, reply)) = jobs.blocking_recv() {
                assert_ne!(job, 0, "injected crash");
                let _ = reply.send(model);
            }
        };
        let ((), _, liveness) = spawn("test-model", "test model", 1, rx, load, serve).unwrap();
        let ask = |job: u32| {
            let (reply, answer) = std::sync::mpsc::channel();
            tx.blocking_send((job, reply)).unwrap();
            answer.recv_timeout(Duration::from_secs(10))
        };
        assert_eq!(ask(1), Ok(1));
        assert!(liveness.is_running());
        assert!(ask(0).is_err(), "the job that crashed the thread is dropped");
        // Jobs sent during the back-off are refused; once reloaded, the second model serves.
        let deadline = Instant::now() + Duration::from_secs(10);
        let answer = loop {
            if let Ok(model) = ask(1) {
                break model;
            }
            assert!(Instant::now() < deadline, "never restarted");
        };
        assert_eq!(answer, 2, "served by the reloaded model");
        assert!(liveness.is_running());
    }

    #[test]
    fn a_failed_first_load_is_reported() {
        let (_tx, rx) = mpsc::channel::<()>(1);
        let err =
            spawn("test-model", "test model", 1, rx, || Err::<((), ()), _>("no file".into()), |_, _| {}).err().unwrap();
        assert_eq!(err, "no file");
        let err = spawn(
            "test-model",
            "test model",
            1,
            mpsc::channel::<()>(1).1,
            || -> Result<((), ()), String> { panic!("bad header") },
            |_, _| {},
        )
        .err()
        .unwrap();
        assert!(err.contains("bad header"), "{err}");
    }

    #[test]
    fn catch_turns_a_panic_into_an_error() {
        assert_eq!(catch(|| 3), Ok(3));
        let err = catch(|| -> u32 { panic!("boom {}", 1) }).unwrap_err();
        assert!(err.contains("boom 1"), "{err}");
    }
}
