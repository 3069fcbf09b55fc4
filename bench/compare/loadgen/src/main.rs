//! `compare-loadgen`: one OTLP/gRPC load for both sides of the side-by-side benchmark
//! (`../compare.py`): our ingester and the OpenTelemetry Collector get byte-identical requests.
//!
//! In: a target `host:port` (an OTLP/gRPC `LogsService`), the Loghub directory, the batch size,
//! the number of connections, a duration and optionally a rate. Out: one JSON file (`--out`)
//! with what was sent, acknowledged and refused, the export latency percentiles and a
//! per-`--step` timeline of acknowledged records.
//!
//! The workload and the load loop are the embedded benchmark's (the
//! `telemetry-lake-bench-workload` crate, `bench/workload/`): real Loghub lines as ~200-byte
//! bodies, 8 services per request, requests encoded before the clock starts, `--concurrency` HTTP/2
//! connections with one export in flight each, paced to `--rate` when given. Before the clock
//! starts, one request goes through opentelemetry-proto's typed `LogsServiceClient` to check
//! the endpoint; its records are counted in `warmup_records` (they reach Kafka too).
//!
//! `--freshness` sends instead fresh requests at `--rate`: request `k` carries the template's
//! records with `bench.sequence` = `k * batch + i` and `time_unix_nano` = the send time, and
//! the JSON lists every request's send and answer wall-clock times, so a reader of the table
//! can tell when each record became visible.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use clap::Parser;
use opentelemetry_proto::tonic::{
    collector::logs::v1::{ExportLogsServiceRequest, logs_service_client::LogsServiceClient},
    common::v1::{AnyValue, any_value::Value},
};
use prost::Message;
use serde::Serialize;
use tokio::time::MissedTickBehavior;
use tonic::transport::{Channel, Endpoint};

use telemetry_lake_bench_workload::{
    load::{self, Answer, LiveCounters, LoadPlan},
    signals::Signal,
    workload,
};

/// The attribute every workload record carries; `--freshness` makes it unique per record.
const SEQUENCE_KEY: &str = "bench.sequence";

#[derive(Parser, Debug)]
#[command(name = "compare-loadgen", about = "OTLP/gRPC load of Loghub records, identical for every target")]
struct Cli {
    /// The OTLP/gRPC endpoint, host:port.
    #[arg(long)]
    target: SocketAddr,
    /// The directory holding Loghub's `*_2k.log` files.
    #[arg(long)]
    loghub: PathBuf,
    /// Records per export request.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch: u64,
    /// Connections, each with one export in flight.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    concurrency: u64,
    /// How long to send.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Logs per second over all connections; saturation when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Unique, timestamped records and every request's times in the output (needs --rate).
    #[arg(long)]
    freshness: bool,
    /// Timeline window.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    step: Duration,
    /// Where to write the JSON summary.
    #[arg(long)]
    out: PathBuf,
    /// What the requests carry: `logs`, `traces` (a span per line) or `metrics` (a data point
    /// per line); `--batch` counts those items.
    #[arg(long, default_value = "logs", value_parser = ["logs", "traces", "metrics"])]
    signal: String,
}

impl Cli {
    fn signal(&self) -> Signal {
        match self.signal.as_str() {
            "traces" => Signal::Traces,
            "metrics" => Signal::Metrics,
            _ => Signal::Logs,
        }
    }
}

/// The JSON summary.
#[derive(Debug, Serialize)]
struct Summary {
    target: String,
    mode: &'static str,
    batch: u64,
    concurrency: u64,
    rate: Option<f64>,
    duration_seconds: f64,
    request_bytes_avg: u64,
    warmup_records: u64,
    /// Wall-clock time the load started, in seconds since the Unix epoch.
    start_unix_seconds: f64,
    /// From the start until the last answer.
    elapsed_seconds: f64,
    requests: u64,
    sent: u64,
    acknowledged: u64,
    /// Records of failed calls plus `rejected_log_records` of answered ones.
    refused: u64,
    /// Failed calls by gRPC code.
    errors: BTreeMap<String, u64>,
    /// Latency of the calls answered OK.
    latency_ms: Latency,
    /// The width of each timeline window, seconds.
    timeline_step: f64,
    timeline: Vec<Window>,
    /// `--freshness`: [k, records, sent_unix_ns, answered_unix_ns, ok] per request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    sent_requests: Vec<(u64, u64, u64, u64, bool)>,
}

#[derive(Debug, Default, Serialize)]
struct Latency {
    count: usize,
    mean: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

#[derive(Debug, Serialize)]
struct Window {
    /// The window's end, seconds since the start.
    t: f64,
    acknowledged: u64,
    /// The slowest answered call of the window, ms: where in the run the tail sits.
    slowest_ms: f64,
    requests: u64,
    errors: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.freshness && cli.rate.is_none() {
        bail!("--freshness needs --rate (records per second)");
    }
    if cli.freshness && cli.signal() != Signal::Logs {
        bail!("--freshness sends logs only");
    }
    let lines = workload::load_lines(&cli.loghub)?;
    let requests = workload::build_signal_requests(
        cli.signal(),
        &lines,
        cli.batch as usize,
        cli.concurrency as usize * 4,
    );
    let request_bytes_avg =
        requests.iter().map(|r| r.bytes.len() as u64).sum::<u64>() / requests.len() as u64;
    load::check_signal_endpoint(cli.target, cli.signal(), &requests[0])
        .await
        .context("the warm-up export failed")?;
    let warmup_records = requests[0].records;
    let plan = LoadPlan {
        duration: cli.duration,
        concurrency: cli.concurrency as usize,
        rate: cli.rate,
        total: None,
        signal: cli.signal(),
    };
    eprintln!(
        "compare-loadgen: {} requests of {} records ({} bytes on average) to {}, {} connections, {} for {:?}",
        requests.len(),
        cli.batch,
        request_bytes_avg,
        cli.target,
        cli.concurrency,
        cli.rate.map_or("saturation".to_string(), |r| format!("{r} logs/s")),
        cli.duration
    );
    let start_unix_seconds = unix_nanos() as f64 / 1e9;
    let start = Instant::now();
    let (answers, sent_requests) = if cli.freshness {
        let templates: Vec<ExportLogsServiceRequest> = requests
            .iter()
            .map(|r| ExportLogsServiceRequest::decode(r.bytes.clone()))
            .collect::<Result<_, _>>()?;
        let sent = freshness(cli.target, Arc::new(templates), &plan, cli.batch, start).await?;
        let answers = sent.iter().map(|s| s.answer.clone()).collect::<Vec<_>>();
        let rows = sent
            .iter()
            .map(|s| (s.k, s.answer.records, s.sent_unix_ns, s.answered_unix_ns, s.answer.error.is_none()));
        (answers, rows.collect())
    } else {
        let result =
            load::run(cli.target, Arc::new(requests), plan, Arc::new(LiveCounters::default()), start).await?;
        (result.answers, Vec::new())
    };
    let summary =
        summarise(&cli, answers, sent_requests, request_bytes_avg, warmup_records, start_unix_seconds);
    eprintln!(
        "compare-loadgen: {} of {} records acknowledged in {:.1} s ({:.0} logs/s), latency p50 {:.1} ms p99 {:.1} ms, errors {:?}",
        summary.acknowledged,
        summary.sent,
        summary.elapsed_seconds,
        summary.acknowledged as f64 / summary.elapsed_seconds.max(1e-9),
        summary.latency_ms.p50,
        summary.latency_ms.p99,
        summary.errors
    );
    std::fs::write(&cli.out, serde_json::to_vec(&summary)?)
        .with_context(|| format!("cannot write {}", cli.out.display()))?;
    Ok(())
}

fn summarise(
    cli: &Cli,
    mut answers: Vec<Answer>,
    sent_requests: Vec<(u64, u64, u64, u64, bool)>,
    request_bytes_avg: u64,
    warmup_records: u64,
    start_unix_seconds: f64,
) -> Summary {
    answers.sort_by_key(|a| a.done_at);
    let elapsed = answers.last().map(|a| a.done_at).unwrap_or_default();
    let mut errors = BTreeMap::new();
    for error in answers.iter().filter_map(|a| a.error.clone()) {
        *errors.entry(error).or_default() += 1;
    }
    let sent: u64 = answers.iter().map(|a| a.records).sum();
    let acknowledged: u64 = answers.iter().map(|a| a.acknowledged).sum();
    let mut ok: Vec<f64> =
        answers.iter().filter(|a| a.error.is_none()).map(|a| a.latency.as_secs_f64() * 1000.0).collect();
    ok.sort_by(f64::total_cmp);
    Summary {
        target: cli.target.to_string(),
        mode: if cli.freshness { "freshness" } else { "throughput" },
        batch: cli.batch,
        concurrency: cli.concurrency,
        rate: cli.rate,
        duration_seconds: cli.duration.as_secs_f64(),
        request_bytes_avg,
        warmup_records,
        start_unix_seconds,
        elapsed_seconds: elapsed.as_secs_f64(),
        requests: answers.len() as u64,
        sent,
        acknowledged,
        refused: sent - acknowledged,
        errors,
        latency_ms: latency(&ok),
        timeline_step: cli.step.as_secs_f64(),
        timeline: timeline(&answers, cli.step),
        sent_requests,
    }
}

/// Percentiles of sorted latencies (nearest rank).
fn latency(sorted: &[f64]) -> Latency {
    if sorted.is_empty() {
        return Latency::default();
    }
    let at = |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    Latency {
        count: sorted.len(),
        mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
        max: sorted[sorted.len() - 1],
    }
}

/// Answers bucketed by the window their answer arrived in.
fn timeline(answers: &[Answer], step: Duration) -> Vec<Window> {
    let step_s = step.as_secs_f64().max(0.001);
    let windows = answers.last().map_or(0, |a| (a.done_at.as_secs_f64() / step_s).floor() as usize + 1);
    let mut out: Vec<Window> = (0..windows)
        .map(|i| Window {
            t: (i + 1) as f64 * step_s,
            acknowledged: 0,
            slowest_ms: 0.0,
            requests: 0,
            errors: 0,
        })
        .collect();
    for answer in answers {
        let window = &mut out[(answer.done_at.as_secs_f64() / step_s).floor() as usize];
        window.acknowledged += answer.acknowledged;
        window.requests += 1;
        window.errors += u64::from(answer.error.is_some());
        if answer.error.is_none() {
            window.slowest_ms = window.slowest_ms.max(answer.latency.as_secs_f64() * 1000.0);
        }
    }
    out
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

/// One `--freshness` request: its number, wall-clock times and answer.
struct Sent {
    k: u64,
    sent_unix_ns: u64,
    answered_unix_ns: u64,
    answer: Answer,
}

/// `plan.concurrency` workers, each with its own connection and one export in flight, paced
/// together to `plan.rate`; request `k` is template `k % n` with unique sequence numbers.
async fn freshness(
    addr: SocketAddr,
    templates: Arc<Vec<ExportLogsServiceRequest>>,
    plan: &LoadPlan,
    batch: u64,
    start: Instant,
) -> anyhow::Result<Vec<Sent>> {
    let rate = plan.rate.context("--freshness needs --rate")?;
    // Request 0 would repeat the warm-up's sequence numbers (the template's own).
    let next = Arc::new(AtomicU64::new(1));
    let period = Duration::from_secs_f64(batch as f64 * plan.concurrency as f64 / rate);
    let mut workers = Vec::new();
    for index in 0..plan.concurrency {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?;
        let first =
            tokio::time::Instant::from_std(start) + period.mul_f64(index as f64 / plan.concurrency as f64);
        let (templates, next, deadline) = (templates.clone(), next.clone(), start + plan.duration);
        workers.push(tokio::spawn(async move {
            let mut client = LogsServiceClient::new(channel).max_decoding_message_size(64 << 20);
            let mut pacer = tokio::time::interval_at(first, period);
            pacer.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut sent = Vec::new();
            loop {
                pacer.tick().await;
                if Instant::now() >= deadline {
                    break;
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                sent.push(send_unique(&mut client, &templates, k, batch, start).await);
            }
            sent
        }));
    }
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.context("freshness worker panicked")?);
    }
    all.sort_by_key(|s| s.k);
    Ok(all)
}

async fn send_unique(
    client: &mut LogsServiceClient<Channel>,
    templates: &[ExportLogsServiceRequest],
    k: u64,
    batch: u64,
    start: Instant,
) -> Sent {
    let mut request = templates[(k % templates.len() as u64) as usize].clone();
    let sent_unix_ns = unix_nanos();
    let mut i = 0u64;
    for record in request
        .resource_logs
        .iter_mut()
        .flat_map(|r| r.scope_logs.iter_mut())
        .flat_map(|s| s.log_records.iter_mut())
    {
        record.time_unix_nano = sent_unix_ns;
        record.observed_time_unix_nano = sent_unix_ns;
        if let Some(attribute) = record.attributes.iter_mut().find(|kv| kv.key == SEQUENCE_KEY) {
            attribute.value = Some(AnyValue { value: Some(Value::StringValue((k * batch + i).to_string())) });
        }
        i += 1;
    }
    let sent_at = Instant::now();
    let result = client.export(request).await;
    let answered_unix_ns = unix_nanos();
    let done = Instant::now();
    let (acknowledged, error) = match result {
        Ok(response) => {
            let rejected =
                response.into_inner().partial_success.map_or(0, |p| p.rejected_log_records.max(0) as u64);
            (i.saturating_sub(rejected), None)
        }
        Err(status) => (0, Some(format!("{:?}", status.code()))),
    };
    let answer = Answer { done_at: done - start, latency: done - sent_at, records: i, acknowledged, error };
    Sent { k, sent_unix_ns, answered_unix_ns, answer }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        let l = latency(&sorted);
        assert_eq!((l.p50, l.p90, l.p99, l.max, l.count), (50.0, 90.0, 99.0, 100.0, 100));
        assert_eq!(latency(&[]).count, 0);
    }

    #[test]
    fn answers_fall_in_the_window_they_arrived_in() {
        let answer = |ms: u64, error: bool| Answer {
            done_at: Duration::from_millis(ms),
            latency: Duration::from_millis(ms / 100),
            records: 10,
            acknowledged: if error { 0 } else { 10 },
            error: error.then(|| "Unavailable".to_string()),
        };
        let windows =
            timeline(&[answer(100, false), answer(900, true), answer(1500, false)], Duration::from_secs(1));
        let got: Vec<_> =
            windows.iter().map(|w| (w.t, w.acknowledged, w.requests, w.errors, w.slowest_ms)).collect();
        // The failed call (9 ms) is not the first window's slowest.
        assert_eq!(got, [(1.0, 10, 2, 1, 1.0), (2.0, 10, 1, 0, 15.0)]);
    }
}
