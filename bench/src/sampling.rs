//! What the bench reads about processes and threads: CPU time, memory, the
//! load average; and keeping the in-process functions' logs off the table.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::Res;

/// CPU time of the calling thread (the handler's: the runtime is current-thread).
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Wall-clock and handler-thread CPU time of one call.
#[derive(Clone, Copy)]
pub struct Took {
    pub wall: Duration,
    pub cpu: Duration,
}

impl Took {
    pub fn since(t: Instant, cpu: Duration) -> Took {
        Took {
            wall: t.elapsed(),
            cpu: thread_cpu().saturating_sub(cpu),
        }
    }
}

/// CPU time consumed so far by the process's live threads (schedstat, ns).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(ns))
}

/// A `/proc/<pid>/status` field in KiB (`VmHWM:`, `VmRSS:`).
pub fn proc_kib(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Sends this process's stdout (the functions' JSON logs, in-process) to a
/// file while measuring, so the table is not buried; logging still costs
/// what it costs.
pub struct StdoutToFile {
    saved: i32,
}

impl StdoutToFile {
    pub fn new(path: &Path) -> Res<Self> {
        use std::os::fd::AsRawFd;
        let file = File::create(path)?;
        std::io::stdout().flush()?;
        // SAFETY: plain descriptor duplication on descriptors we own.
        let saved = unsafe { libc::dup(1) };
        if saved < 0 || unsafe { libc::dup2(file.as_raw_fd(), 1) } < 0 {
            return Err("cannot redirect stdout".into());
        }
        Ok(StdoutToFile { saved })
    }
}

impl Drop for StdoutToFile {
    fn drop(&mut self) {
        let _ = std::io::stdout().flush();
        // SAFETY: restores the descriptor saved in `new`.
        unsafe {
            libc::dup2(self.saved, 1);
            libc::close(self.saved);
        }
    }
}
