//! Turning answers and samples into the figures: throughput, CPU per million logs, memory,
//! staging depth and latencies, printed as text and serialised as JSON.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use serde::Serialize;

use telemetry_lake_bench_workload::load::{Answer, LoadResult};

use crate::{
    appender::FlushLog,
    sampler::{ProcSample, Samples, StatsSample},
};

const MIB: f64 = 1024.0 * 1024.0;

/// What was asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub duration_seconds: f64,
    pub batch: usize,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub total: Option<u64>,
    pub request_bytes_avg: u64,
    pub appender_settings: BTreeMap<String, String>,
    pub load_average_before: String,
}

/// Figures measured from outside the process, around the load.
#[derive(Debug, Clone, Default)]
pub struct Span {
    /// Since the start of the load.
    pub all_committed: Duration,
    /// Records committed before the load started (the warm-up).
    pub committed_before: u64,
    pub proc_before: ProcSample,
    pub proc_after: ProcSample,
    /// Busy CPU-seconds of the whole machine and of this bench process over the same span.
    pub machine_cpu_seconds: f64,
    pub bench_cpu_seconds: f64,
    pub final_flush_seconds: f64,
    pub final_flush_error: Option<String>,
}

/// Appender CPU-seconds over the span by thread name; `(exited threads)` is what threads that
/// are gone by the end (staging readers, blocking tasks) used.
pub fn cpu_breakdown(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    total: f64,
) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = after
        .iter()
        .map(|(name, seconds)| (name.clone(), seconds - before.get(name).copied().unwrap_or(0.0)))
        .filter(|(_, seconds)| *seconds > 0.0)
        .collect();
    let live: f64 = out.values().sum();
    if total - live > 0.05 {
        out.insert("(exited threads)".into(), total - live);
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub from_seconds: f64,
    pub acknowledged_per_second: f64,
    pub committed: u64,
    pub staged_max: u64,
    pub rss_mib: f64,
    pub appender_cores: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub setup: Setup,
    pub records_sent: u64,
    pub records_acknowledged: u64,
    pub records_committed: u64,
    pub errors: BTreeMap<String, u64>,
    pub load_seconds: f64,
    pub acknowledged_per_second: f64,
    /// Committed by the end of the load, before the final forced flush.
    pub committed_during_load: u64,
    pub committed_during_load_per_second: f64,
    /// From the start of the load until every acknowledged record was committed.
    pub seconds_until_all_committed: f64,
    pub committed_per_second: f64,
    pub final_flush_seconds: f64,
    /// Why the final flush failed; then not everything acknowledged was committed.
    pub final_flush_error: Option<String>,
    pub appender_cpu_seconds: f64,
    pub appender_cpu_seconds_per_million_logs: f64,
    pub appender_cores_avg: f64,
    pub appender_cpu_seconds_by_thread: BTreeMap<String, f64>,
    pub bench_cores_avg: f64,
    pub other_processes_cores_avg: f64,
    pub peak_rss_mib: f64,
    pub max_sampled_rss_mib: f64,
    pub max_staged_records: u64,
    pub max_staging_file_mib: f64,
    pub export_latency_ms: Percentiles,
    pub export_to_committed_seconds: Percentiles,
    pub flushes: FlushLog,
    pub flush_records_per_second: f64,
    pub exit_status: String,
    pub timeline: Vec<Window>,
}

/// Everything [`Report::new`] needs.
pub struct Inputs<'a> {
    pub setup: Setup,
    pub load: &'a LoadResult,
    pub samples: &'a Samples,
    pub span: Span,
    pub flushes: FlushLog,
    pub cpu_by_thread: BTreeMap<String, f64>,
    pub exit_status: String,
    pub timeline_step: Duration,
}

impl Report {
    pub fn new(inputs: Inputs<'_>) -> Self {
        let Inputs { setup, load, samples, span, flushes, cpu_by_thread, exit_status, timeline_step } =
            inputs;
        let load_seconds = load.elapsed.as_secs_f64();
        let acknowledged = load.acknowledged();
        let committed = last_committed(&samples.stats).saturating_sub(span.committed_before);
        let committed_during_load =
            committed_by(&samples.stats, load_seconds).saturating_sub(span.committed_before);
        let all_committed = span.all_committed.as_secs_f64();
        let cpu = span.proc_after.cpu_seconds - span.proc_before.cpu_seconds;
        let peak_hwm = span.proc_after.hwm_kib.max(samples.proc.iter().map(|p| p.hwm_kib).max().unwrap_or(0));
        let flush_records_per_second = flushes.records_per_second();
        Self {
            records_sent: load.sent(),
            records_acknowledged: acknowledged,
            records_committed: committed,
            errors: load.errors(),
            load_seconds,
            acknowledged_per_second: per_second(acknowledged, load_seconds),
            committed_during_load,
            committed_during_load_per_second: per_second(committed_during_load, load_seconds),
            seconds_until_all_committed: all_committed,
            committed_per_second: per_second(committed, all_committed),
            final_flush_seconds: span.final_flush_seconds,
            final_flush_error: span.final_flush_error.clone(),
            appender_cpu_seconds: cpu,
            appender_cpu_seconds_per_million_logs: if committed > 0 {
                cpu * 1e6 / committed as f64
            } else {
                0.0
            },
            appender_cores_avg: ratio(cpu, all_committed),
            appender_cpu_seconds_by_thread: cpu_by_thread,
            bench_cores_avg: ratio(span.bench_cpu_seconds, all_committed),
            other_processes_cores_avg: ratio(
                (span.machine_cpu_seconds - cpu - span.bench_cpu_seconds).max(0.0),
                all_committed,
            ),
            peak_rss_mib: peak_hwm as f64 / 1024.0,
            max_sampled_rss_mib: samples.proc.iter().map(|p| p.rss_kib).max().unwrap_or(0) as f64 / 1024.0,
            max_staged_records: samples.stats.iter().map(|s| s.buffer_records).max().unwrap_or(0),
            max_staging_file_mib: samples.proc.iter().map(|p| p.staging_file_bytes).max().unwrap_or(0) as f64
                / MIB,
            export_latency_ms: export_latency_ms(&load.answers),
            export_to_committed_seconds: commit_latency(&load.answers, &samples.stats, span.committed_before),
            flushes,
            flush_records_per_second,
            exit_status,
            timeline: timeline(load, samples, timeline_step, all_committed, span.committed_before),
            setup,
        }
    }

    /// The figures as text, one per line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let s = &self.setup;
        let rate = s.rate.map_or("saturation".to_string(), |r| format!("{r:.0} logs/s"));
        let _ = writeln!(
            out,
            "bench-embedded: {:.0}s, batch {}, concurrency {}, {rate}, ~{} bytes/request; load average before: {}",
            s.duration_seconds, s.batch, s.concurrency, s.request_bytes_avg, s.load_average_before
        );
        let _ = writeln!(out, "appender settings: {}", settings_line(&s.appender_settings));
        self.render_timeline(&mut out);
        let errors = if self.errors.is_empty() { "none".to_string() } else { format!("{:?}", self.errors) };
        let lines = [
            ("records sent", format!("{}", self.records_sent)),
            ("records acknowledged", format!("{}", self.records_acknowledged)),
            ("records committed", format!("{}", self.records_committed)),
            ("errors", errors),
            (
                "acknowledged",
                format!("{:.0} logs/s over {:.1} s of load", self.acknowledged_per_second, self.load_seconds),
            ),
            (
                "committed into Iceberg",
                format!(
                    "{:.0} logs/s ({} records / {:.1} s from start until all committed; final flush {:.2} s)",
                    self.committed_per_second,
                    self.records_committed,
                    self.seconds_until_all_committed,
                    self.final_flush_seconds
                ),
            ),
            (
                "committed during load",
                format!(
                    "{} records, {:.0} logs/s (before the final flush)",
                    self.committed_during_load, self.committed_during_load_per_second
                ),
            ),
            (
                "appender CPU",
                format!(
                    "{:.1} CPU-s per million logs ({:.1} CPU-s, {:.2} cores avg)",
                    self.appender_cpu_seconds_per_million_logs,
                    self.appender_cpu_seconds,
                    self.appender_cores_avg
                ),
            ),
            ("appender CPU by thread", threads_line(&self.appender_cpu_seconds_by_thread)),
            (
                "other CPU on the machine",
                format!(
                    "bench {:.2} cores, other processes {:.2} cores (2 cores total)",
                    self.bench_cores_avg, self.other_processes_cores_avg
                ),
            ),
            (
                "peak RSS (VmHWM)",
                format!(
                    "{:.1} MiB (max sampled VmRSS {:.1} MiB)",
                    self.peak_rss_mib, self.max_sampled_rss_mib
                ),
            ),
            (
                "max staged records",
                format!(
                    "{} (staging file up to {:.1} MiB)",
                    self.max_staged_records, self.max_staging_file_mib
                ),
            ),
            ("export call latency", percentiles_line(&self.export_latency_ms, "ms")),
            ("export-to-committed", percentiles_line(&self.export_to_committed_seconds, "s")),
            (
                "flushes (appender log)",
                format!(
                    "{} flushes, {} records, {:.2} s flushing in all, longest {:.2} s, {:.0} records/s while flushing; triggers {:?}",
                    self.flushes.flushes,
                    self.flushes.records,
                    self.flushes.seconds_total,
                    self.flushes.seconds_max,
                    self.flush_records_per_second,
                    self.flushes.triggers
                ),
            ),
            ("final flush error", self.final_flush_error.clone().unwrap_or_else(|| "none".into())),
            ("appender exit", self.exit_status.clone()),
        ];
        for (name, value) in lines {
            let _ = writeln!(out, "{name:>26}: {value}");
        }
        out
    }

    fn render_timeline(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "{:>7} {:>12} {:>11} {:>11} {:>9} {:>6}",
            "t(s)", "acked/s", "committed", "staged max", "RSS MiB", "cores"
        );
        for w in &self.timeline {
            let _ = writeln!(
                out,
                "{:>7.0} {:>12.0} {:>11} {:>11} {:>9.1} {:>6.2}",
                w.from_seconds,
                w.acknowledged_per_second,
                w.committed,
                w.staged_max,
                w.rss_mib,
                w.appender_cores
            );
        }
    }
}

fn settings_line(settings: &BTreeMap<String, String>) -> String {
    if settings.is_empty() {
        return "defaults".into();
    }
    settings.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

fn threads_line(threads: &BTreeMap<String, f64>) -> String {
    let mut sorted: Vec<_> = threads.iter().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(a.1));
    sorted.iter().map(|(name, seconds)| format!("{name} {seconds:.1} s")).collect::<Vec<_>>().join(", ")
}

fn percentiles_line(p: &Percentiles, unit: &str) -> String {
    format!("p50 {:.3} {unit}, p99 {:.3} {unit}, max {:.3} {unit}", p.p50, p.p99, p.max)
}

fn per_second(records: u64, seconds: f64) -> f64 {
    ratio(records as f64, seconds)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

fn last_committed(stats: &[StatsSample]) -> u64 {
    stats.iter().map(|s| s.committed).max().unwrap_or(0)
}

/// Records committed according to the last `Stats` at or before `at` seconds.
fn committed_by(stats: &[StatsSample], at: f64) -> u64 {
    stats.iter().filter(|s| s.at_seconds <= at).map(|s| s.committed).max().unwrap_or(0)
}

/// When `Stats` first showed at least `target` records committed.
fn committed_at(stats: &[StatsSample], target: u64) -> Option<f64> {
    stats.iter().find(|s| s.committed >= target).map(|s| s.at_seconds)
}

/// Percentiles of `(value, weight)` pairs, each value counted `weight` times.
pub fn weighted_percentiles(mut values: Vec<(f64, u64)>) -> Percentiles {
    values.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: u64 = values.iter().map(|v| v.1).sum();
    let at = |q: f64| {
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for &(value, weight) in &values {
            seen += weight;
            if seen >= rank {
                return value;
            }
        }
        values.last().map_or(0.0, |v| v.0)
    };
    Percentiles { p50: at(0.50), p99: at(0.99), max: values.last().map_or(0.0, |v| v.0) }
}

fn export_latency_ms(answers: &[Answer]) -> Percentiles {
    weighted_percentiles(answers.iter().map(|a| (a.latency.as_secs_f64() * 1e3, 1)).collect())
}

/// For the records of each acknowledged export (in answer order), the time from the answer
/// until `Stats` counted every record acknowledged so far as committed.
fn commit_latency(answers: &[Answer], stats: &[StatsSample], committed_before: u64) -> Percentiles {
    let mut cumulative = committed_before;
    let mut values = Vec::with_capacity(answers.len());
    for answer in answers.iter().filter(|a| a.acknowledged > 0) {
        cumulative += answer.acknowledged;
        if let Some(at) = committed_at(stats, cumulative) {
            values.push(((at - answer.done_at.as_secs_f64()).max(0.0), answer.acknowledged));
        }
    }
    weighted_percentiles(values)
}

/// Windows of `step` from the start of the load until `end` seconds; `committed` counts from the
/// start of the load.
fn timeline(
    load: &LoadResult,
    samples: &Samples,
    step: Duration,
    end: f64,
    committed_before: u64,
) -> Vec<Window> {
    let step = step.as_secs_f64().max(0.25);
    let mut windows = Vec::new();
    let mut from = 0.0;
    while from < end {
        let to = from + step;
        let inside = |at: f64| at >= from && at < to;
        let acknowledged: u64 =
            load.answers.iter().filter(|a| inside(a.done_at.as_secs_f64())).map(|a| a.acknowledged).sum();
        let procs: Vec<&ProcSample> = samples.proc.iter().filter(|p| inside(p.at_seconds)).collect();
        let cores = match (procs.first(), procs.last()) {
            (Some(a), Some(b)) if b.at_seconds > a.at_seconds => {
                (b.cpu_seconds - a.cpu_seconds) / (b.at_seconds - a.at_seconds)
            }
            _ => 0.0,
        };
        windows.push(Window {
            from_seconds: from,
            acknowledged_per_second: acknowledged as f64 / step,
            committed: committed_by(&samples.stats, to).saturating_sub(committed_before),
            staged_max: samples
                .stats
                .iter()
                .filter(|s| inside(s.at_seconds))
                .map(|s| s.buffer_records)
                .max()
                .unwrap_or(0),
            rss_mib: procs.iter().map(|p| p.rss_kib).max().unwrap_or(0) as f64 / 1024.0,
            appender_cores: cores,
        });
        from = to;
    }
    windows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(at: f64, committed: u64) -> StatsSample {
        StatsSample { at_seconds: at, committed, ..Default::default() }
    }

    fn answer(at: f64, records: u64) -> Answer {
        Answer {
            done_at: Duration::from_secs_f64(at),
            latency: Duration::from_millis(2),
            records,
            acknowledged: records,
            error: None,
        }
    }

    #[test]
    fn weighted_percentiles_count_each_value_by_its_weight() {
        let p = weighted_percentiles(vec![(3.0, 1), (1.0, 98), (2.0, 1)]);
        assert_eq!((p.p50, p.p99, p.max), (1.0, 2.0, 3.0));
        let empty = weighted_percentiles(Vec::new());
        assert_eq!((empty.p50, empty.max), (0.0, 0.0));
    }

    #[test]
    fn commit_latency_waits_for_everything_acknowledged_before() {
        // 10 warm-up records committed before; 100 acked at 1 s, 100 at 2 s;
        // Stats shows 110 committed at 1.5 s and 210 at 5 s.
        let answers = [answer(1.0, 100), answer(2.0, 100)];
        let samples = [stats(0.5, 10), stats(1.5, 110), stats(5.0, 210)];
        let p = commit_latency(&answers, &samples, 10);
        assert_eq!((p.p50, p.max), (0.5, 3.0));
    }

    #[test]
    fn cpu_breakdown_diffs_threads_and_names_the_exited_rest() {
        let before = BTreeMap::from([("staging".to_string(), 1.0), ("tokio".to_string(), 2.0)]);
        let after = BTreeMap::from([("staging".to_string(), 3.0), ("tokio".to_string(), 2.0)]);
        let out = cpu_breakdown(&before, &after, 2.5);
        assert_eq!(
            out,
            BTreeMap::from([("staging".to_string(), 2.0), ("(exited threads)".to_string(), 0.5)])
        );
    }

    #[test]
    fn committed_by_takes_the_last_sample_not_after_the_time() {
        let samples = [stats(1.0, 5), stats(2.0, 9), stats(3.0, 20)];
        assert_eq!(committed_by(&samples, 2.5), 9);
        assert_eq!(committed_at(&samples, 10), Some(3.0));
        assert_eq!(committed_at(&samples, 21), None);
    }
}
