//! The threads the products run on: a few workers that wait for the next product spinning,
//! for a moment, before they sleep.
//!
//! Decoding one token runs about 120 products of 0.05–0.5 ms each, separated by a few
//! microseconds of other work. A general pool (rayon was measured) puts its workers to sleep
//! between products and wakes them through the kernel each time, which cost more than the
//! second core gained: two threads decoded slower than one. Here the caller takes the first
//! share itself and the workers poll for the next product for [`SPIN`] before sleeping, so
//! during a generation no wake-up goes through the kernel, and an idle model costs nothing.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker polls for work before it sleeps.
const SPIN: Duration = Duration::from_micros(300);

/// A job: called once with each share number `1..threads` on the workers (0 on the caller).
type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped for every job; a worker runs each number once.
    seq: AtomicU64,
    /// Workers done with the current job.
    done: AtomicUsize,
    /// Set when a worker's share panicked; the caller panics in turn.
    panicked: AtomicBool,
    /// The current job; written by the caller before `seq` is bumped, read by workers after.
    job: UnsafeCell<Option<Job>>,
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

// SAFETY: `job` is written only by the caller of `Threads::run` while no worker reads it
// (before the release-store of a new `seq`, or after every worker reported done), and read
// by workers only between their acquire-load of that `seq` and their `done` increment.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// See the module documentation.
pub struct Threads {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises callers: one job at a time.
    calling: Mutex<()>,
}

impl Threads {
    /// `threads` in all, the caller included (so `threads - 1` workers are started).
    pub fn new(threads: usize) -> std::io::Result<Threads> {
        let shared = Arc::new(Shared {
            seq: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            job: UnsafeCell::new(None),
            sleeping: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let mut workers = Vec::new();
        for share in 1..threads.max(1) {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("engram-matmul-{share}"))
                .spawn(move || work(&shared, share))?;
            workers.push(handle);
        }
        Ok(Threads { shared, workers, calling: Mutex::new(()) })
    }

    /// Threads in all, the caller included.
    pub fn count(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(share)` for every share `0..count()`, share 0 on this thread, and returns
    /// when all are done. A panic in any share is raised here.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            f(0);
            return;
        }
        let _one_at_a_time = self.calling.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &*self.shared;
        shared.done.store(0, Ordering::Relaxed);
        // SAFETY: no worker reads `job` now (all finished the previous job). The pointer's
        // lifetime is erased; it is cleared below before `f` goes out of scope, and no worker
        // dereferences it after reporting done.
        unsafe { *shared.job.get() = Some(std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f)) };
        shared.seq.fetch_add(1, Ordering::SeqCst);
        if shared.sleeping.load(Ordering::SeqCst) > 0 {
            let _guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        while shared.done.load(Ordering::Acquire) < self.workers.len() {
            std::hint::spin_loop();
        }
        // SAFETY: every worker is done with this job.
        unsafe { *shared.job.get() = None };
        if let Err(panic) = mine {
            std::panic::resume_unwind(panic);
        }
        if shared.panicked.swap(false, Ordering::Relaxed) {
            panic!("a matrix product panicked on a worker thread");
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// A worker's life: wait for a job, run its share, report, again.
fn work(shared: &Shared, share: usize) {
    let mut seen = 0u64;
    loop {
        let since = Instant::now();
        let mut polls = 0u32;
        loop {
            let seq = shared.seq.load(Ordering::Acquire);
            if seq != seen {
                seen = seq;
                break;
            }
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            polls = polls.wrapping_add(1);
            // Reading the clock costs more than a poll: look at it now and then.
            if polls % 1024 != 0 || since.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.sleeping.fetch_add(1, Ordering::SeqCst);
            // Checked again under the lock: a caller that bumped `seq` before we counted
            // ourselves asleep is seen here; one after it sees us and notifies.
            if shared.seq.load(Ordering::SeqCst) == seen && !shared.stop.load(Ordering::SeqCst) {
                drop(shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner()));
            }
            shared.sleeping.fetch_sub(1, Ordering::SeqCst);
        }
        // SAFETY: the caller wrote `job` before publishing `seen` and keeps it alive until
        // every worker increments `done` below.
        let job = unsafe { *shared.job.get() };
        if let Some(job) = job {
            // SAFETY: as above: the closure outlives this call.
            let f = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(|| f(share))).is_err() {
                shared.panicked.store(true, Ordering::Relaxed);
            }
        }
        shared.done.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_share_runs_once_per_job_even_after_the_workers_slept() {
        let threads = Threads::new(3).unwrap();
        assert_eq!(threads.count(), 3);
        for round in 0..200 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            threads.run(&|share| {
                hits[share].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "round {round}");
            if round % 50 == 0 {
                // Long enough for the workers to go to sleep.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    #[test]
    fn a_panicking_share_panics_the_caller_and_the_pool_carries_on() {
        let threads = Threads::new(2).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            threads.run(&|share| {
                if share == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(outcome.is_err());
        let ran = AtomicUsize::new(0);
        threads.run(&|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 2);
    }
}
