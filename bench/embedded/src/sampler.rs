//! Watching the appender from outside: its CPU time and memory from `/proc/PID/{stat,status}`,
//! the size of its staging file, and the admin `Stats` counters, each on its own period.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::Context;
use telemetry_lake_admin_proto::v1::admin_client::AdminClient;
use telemetry_lake_bench_workload::load::LiveCounters;
use tokio::{sync::watch, task::JoinHandle};
use tonic::transport::Channel;

use crate::appender;

/// One look at the process.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcSample {
    /// Since the start of the load (negative times are not sampled).
    pub at_seconds: f64,
    /// utime + stime, in seconds.
    pub cpu_seconds: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// The staging database file plus its WAL.
    pub staging_file_bytes: u64,
}

/// One `Stats` answer, with what the load had acknowledged by then.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StatsSample {
    pub at_seconds: f64,
    pub acknowledged: u64,
    pub accepted: u64,
    pub committed: u64,
    pub buffer_records: u64,
}

/// Reads `/proc/PID/stat` and `/proc/PID/status` of one process.
pub struct ProcWatch {
    pid: u32,
    ticks_per_second: f64,
    staging: PathBuf,
}

impl ProcWatch {
    pub fn new(pid: u32, staging: PathBuf) -> Self {
        Self { pid, ticks_per_second: clock_ticks_per_second(), staging }
    }

    pub fn sample(&self, at: Duration) -> anyhow::Result<ProcSample> {
        let stat =
            fs::read_to_string(format!("/proc/{}/stat", self.pid)).context("reading /proc/PID/stat")?;
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.pid)).context("reading /proc/PID/status")?;
        Ok(ProcSample {
            at_seconds: at.as_secs_f64(),
            cpu_seconds: cpu_ticks(&stat).context("no utime/stime in /proc/PID/stat")? as f64
                / self.ticks_per_second,
            rss_kib: status_kib(&status, "VmRSS").unwrap_or_default(),
            hwm_kib: status_kib(&status, "VmHWM").unwrap_or_default(),
            staging_file_bytes: file_bytes(&self.staging) + file_bytes(&wal_of(&self.staging)),
        })
    }
}

fn wal_of(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push(".wal");
    PathBuf::from(wal)
}

fn file_bytes(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or_default()
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line; the command name in
/// parentheses may hold spaces, so fields are counted after its closing parenthesis.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field n is at index n - 3.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   123 kB` line of `/proc/PID/status`, in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.split(':').next() == Some(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU-seconds of each live thread of `pid`, summed by thread name (`/proc/PID/task/*/stat`).
pub fn cpu_by_thread(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for task in tasks.filter_map(Result::ok) {
        let Ok(stat) = fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(name), Some(ticks)) = (thread_name(&stat), cpu_ticks(&stat)) else { continue };
        *out.entry(name).or_default() += ticks as f64 / clock_ticks_per_second();
    }
    out
}

/// The command name of a `/proc/.../stat` line, without its parentheses.
fn thread_name(stat: &str) -> Option<String> {
    Some(stat.get(stat.find('(')? + 1..stat.rfind(')')?)?.to_string())
}

/// Busy CPU-seconds of the whole machine since boot (`/proc/stat`: all but idle and iowait).
pub fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    // Fields 9 and 10 (guest, guest_nice) are already counted in user and nice.
    let busy = ticks.iter().take(8).sum::<u64>() - idle;
    Ok(busy as f64 / clock_ticks_per_second())
}

/// `/proc/loadavg`'s first three fields.
pub fn load_average() -> String {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// The two sampling loops, stopped together by [`Samplers::stop`].
pub struct Samplers {
    stop: watch::Sender<bool>,
    proc_task: JoinHandle<Vec<ProcSample>>,
    stats_task: JoinHandle<Vec<StatsSample>>,
}

/// What the samplers collected.
#[derive(Debug, Default)]
pub struct Samples {
    pub proc: Vec<ProcSample>,
    pub stats: Vec<StatsSample>,
}

impl Samplers {
    pub fn start(
        watch_proc: Arc<ProcWatch>,
        admin: AdminClient<Channel>,
        live: Arc<LiveCounters>,
        start: Instant,
        proc_every: Duration,
        stats_every: Duration,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let proc_task = tokio::spawn(every(proc_every, stopped.clone(), move || {
            let sample = watch_proc.sample(start.elapsed()).ok();
            async move { sample }
        }));
        let stats_task = tokio::spawn(every(stats_every, stopped, move || {
            let (mut admin, live) = (admin.clone(), live.clone());
            async move {
                let acknowledged = live.acknowledged.load(Ordering::Relaxed);
                let stats = appender::stats(&mut admin).await.ok()?;
                let totals = appender::totals(&stats);
                Some(StatsSample {
                    at_seconds: start.elapsed().as_secs_f64(),
                    acknowledged,
                    accepted: totals.records_accepted,
                    committed: totals.records_committed,
                    buffer_records: stats.buffer_records,
                })
            }
        }));
        Self { stop, proc_task, stats_task }
    }

    pub async fn stop(self) -> anyhow::Result<Samples> {
        let _ = self.stop.send(true);
        Ok(Samples { proc: self.proc_task.await?, stats: self.stats_task.await? })
    }
}

/// Calls `sample` every `period` until `stopped` turns true; keeps the `Some`s.
async fn every<T, F, Fut>(period: Duration, mut stopped: watch::Receiver<bool>, mut sample: F) -> Vec<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut out = Vec::new();
    loop {
        tokio::select! {
            _ = ticks.tick() => out.extend(sample().await),
            _ = stopped.changed() => break,
        }
    }
    out.extend(sample().await);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_skip_a_command_name_with_spaces() {
        let stat = "4242 (my app) S 1 4242 4242 0 -1 4194560 100 0 0 0 700 55 0 0 20 0 9 0 1 2 3";
        assert_eq!(cpu_ticks(stat), Some(755));
    }

    #[test]
    fn threads_of_this_process_are_named() {
        let stat = "4242 (my app) S 1 4242 4242 0 -1 4194560 100 0 0 0 700 55 0 0 20 0 9 0 1 2 3";
        assert_eq!(thread_name(stat).as_deref(), Some("my app"));
        assert!(!cpu_by_thread(std::process::id()).is_empty());
    }

    #[test]
    fn status_values_are_read_in_kib() {
        let status = "Name:\tappender\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(102_400));
        assert_eq!(status_kib(status, "VmHWM"), Some(204_800));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn this_process_can_be_watched() {
        let watch = ProcWatch::new(std::process::id(), PathBuf::from("/nonexistent"));
        let sample = watch.sample(Duration::from_secs(1)).unwrap();
        assert!(sample.rss_kib > 0 && sample.hwm_kib >= sample.rss_kib);
        assert_eq!(sample.staging_file_bytes, 0);
    }

    #[test]
    fn the_machine_has_been_busy_since_boot() {
        assert!(machine_busy_seconds().unwrap() > 0.0);
        assert_eq!(load_average().split(' ').count(), 3);
    }
}
