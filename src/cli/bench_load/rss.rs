//! The server's resident memory during a load run, read from `/proc/<pid>/status` (so
//! only for a server on this machine): at the start, at the end, the highest sampled in
//! between, and the kernel's own high-water mark (VmHWM, over the process's life).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

/// Resident set sizes in KiB.
#[derive(Debug, Clone, Serialize)]
pub struct RssReport {
    pub pid: u32,
    pub start_kib: u64,
    pub end_kib: u64,
    /// The highest VmRSS sampled during the run (every 100 ms).
    pub peak_kib: u64,
    /// VmHWM at the end: the peak since the server started, before the run included.
    pub hwm_kib: u64,
}

/// VmRSS and VmHWM of a process, in KiB.
pub fn read(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Samples a process's VmRSS on a thread of its own until finished.
pub struct RssSampler {
    pid: u32,
    start_kib: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl RssSampler {
    /// Fails when the process's status cannot be read (not local, not running, or not
    /// ours to read).
    pub fn start(pid: u32) -> anyhow::Result<RssSampler> {
        let (start_kib, _) = read(pid)
            .ok_or_else(|| anyhow::anyhow!("cannot read /proc/{pid}/status: --server-pid must be a local process"))?;
        let peak = Arc::new(AtomicU64::new(start_kib));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some((rss, _)) = read(pid) {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Ok(RssSampler { pid, start_kib, peak, stop, thread })
    }

    /// Stops sampling; None when the process went away meanwhile.
    pub fn finish(self) -> Option<RssReport> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let (end_kib, hwm_kib) = read(self.pid)?;
        let peak_kib = self.peak.load(Ordering::Relaxed).max(end_kib);
        Some(RssReport { pid: self.pid, start_kib: self.start_kib, end_kib, peak_kib, hwm_kib })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let (rss, hwm) = read(std::process::id()).unwrap();
        assert!(rss > 0 && hwm >= rss, "{rss} {hwm}");
        assert!(read(u32::MAX).is_none());
        let sampler = RssSampler::start(std::process::id()).unwrap();
        let report = sampler.finish().unwrap();
        assert!(report.peak_kib >= report.start_kib && report.peak_kib >= report.end_kib);
    }
}
