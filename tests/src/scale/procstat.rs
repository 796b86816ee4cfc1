//! CPU seconds and memory of a process from `/proc/<pid>` (procfs), and a sampler that follows a
//! process's resident set over a phase.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use procfs::process::Process;
use serde::Serialize;

const MIB: f64 = 1024.0 * 1024.0;

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcStat {
    /// User + system CPU seconds so far.
    pub cpu_seconds: f64,
    /// Resident set now (`VmRSS`), MiB.
    pub rss_mib: f64,
    /// Peak resident set (`VmHWM`), MiB: since the start, or since the last [`reset_peak`].
    pub hwm_mib: f64,
    /// Of the resident set, the pages of mapped files (`RssFile`: the binary's code and data), MiB; the
    /// rest is the heap and stacks (`RssAnon`).
    pub rss_file_mib: f64,
}

/// Reads `/proc/<pid>` (`None`: this process).
pub fn read(pid: Option<u32>) -> Option<ProcStat> {
    let process = match pid {
        Some(pid) => Process::new(i32::try_from(pid).ok()?).ok()?,
        None => Process::myself().ok()?,
    };
    let stat = process.stat().ok()?;
    let status = process.status().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    Some(ProcStat {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        rss_mib: status.vmrss.unwrap_or(0) as f64 * 1024.0 / MIB,
        hwm_mib: status.vmhwm.unwrap_or(0) as f64 * 1024.0 / MIB,
        rss_file_mib: status.rssfile.unwrap_or(0) as f64 * 1024.0 / MIB,
    })
}

/// Resets the process's `VmHWM` to its current resident set (`echo 5 > /proc/<pid>/clear_refs`), so
/// that the next reading's `hwm_mib` is the peak of the phase that starts now. Returns whether the
/// kernel accepted it.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Samples a process's `VmRSS` every `period` and keeps the largest value since the last
/// [`RssSampler::take_max`] (a cross-check of `VmHWM`, and the peak where `clear_refs` is refused).
pub struct RssSampler {
    max: Arc<Mutex<f64>>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pid: u32, period: Duration) -> Self {
        let max = Arc::new(Mutex::new(0.0f64));
        let m = max.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(s) = read(Some(pid)) else { return };
                let mut max = m.lock().expect("sampler");
                *max = max.max(s.rss_mib);
            }
        });
        Self { max, task }
    }

    /// The largest resident set seen since the last call; starts the next phase at 0.
    pub fn take_max(&self) -> f64 {
        std::mem::take(&mut *self.max.lock().expect("sampler"))
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}
