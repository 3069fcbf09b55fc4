//! `bench-embedded`: how fast the embedded `appender` takes OTLP logs into Iceberg, and what it
//! costs in CPU and memory.
//!
//! It starts `target/release/appender` itself (temp dir, free 127.0.0.1 ports, SQLite catalog,
//! file warehouse), checks the endpoint with one typed export through opentelemetry-proto's
//! `LogsServiceClient`, then drives OTLP/gRPC with `--concurrency` connections, one export in
//! flight on each, for `--duration` at saturation (or at `--rate` logs/s). The requests are
//! built from the real Loghub lines in `../shared/data/loghub/*.log` (`$TELEMETRY_LAKE_SHARED_DIR`
//! overrides `../shared`): body = the line cut or padded to about 200 bytes, `service.name` =
//! the system, severity from the line, three attributes, trace and span ids on one record in
//! four; `--batch` records per request, all encoded before the clock starts.
//!
//! Meanwhile it samples the appender's `/proc/PID/stat` and `/proc/PID/status` every 250 ms and
//! admin `Stats` every 100 ms. After the load it forces a `Flush`, waits until `Stats` counts
//! every acknowledged record as committed, and stops the appender with SIGTERM. It prints:
//! records sent / acknowledged / committed and errors; logs/s acknowledged; logs/s committed
//! into Iceberg (committed records / time from the start until all were committed); appender
//! CPU-seconds per million logs; peak RSS (VmHWM); the most records staged at once; export call
//! latency; export-to-committed latency (for the records of each export, the time from its
//! answer until `Stats` showed them committed); the flushes from the appender's log; and a
//! timeline. `--json FILE` writes the same as JSON. The load on the rest of the machine is
//! measured too, so a noisy run says so.
//!
//! ```sh
//! export DUCKDB_LIB_DIR=$HOME/.cache/telemetry-lake/duckdb-1.5.5 LD_LIBRARY_PATH=$DUCKDB_LIB_DIR
//! cargo build --release -p telemetry-lake-appender -p telemetry-lake-bench
//! cargo run --release -p telemetry-lake-bench --bin bench-embedded -- --duration 60s --batch 500 --concurrency 8
//! cargo run --release -p telemetry-lake-bench --bin bench-embedded -- --quick          # ~20 s smoke run
//! # staging depth vs memory: nothing is committed until the final flush
//! cargo run --release -p telemetry-lake-bench --bin bench-embedded -- --stage-only --total 2000000 --duration 120s
//! ```

mod appender;
mod report;
mod sampler;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;
use telemetry_lake_admin_proto::v1::admin_client::AdminClient;
use telemetry_lake_bench_workload::{
    load::{self, LiveCounters, LoadPlan, LoadResult},
    workload::{self, PreEncoded},
};
use tonic::transport::Channel;

use crate::{
    appender::{Appender, FlushLog},
    report::{Inputs, Report, Setup, Span},
    sampler::{ProcWatch, Samplers},
};

const PROC_EVERY: Duration = Duration::from_millis(250);
const STATS_EVERY: Duration = Duration::from_millis(100);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(300);
/// Settings `--stage-only` uses so that nothing is committed before the final flush.
const STAGE_ONLY: [(&str, &str); 4] = [
    ("FLUSH__INTERVAL", "24h"),
    ("FLUSH__MAX_RECORDS", "1000000000000"),
    ("FLUSH__MAX_BYTES", "1000GiB"),
    ("STAGING__MAX_BYTES", "1000GiB"),
];

#[derive(Parser, Debug)]
#[command(name = "bench-embedded", about = "Throughput, CPU and memory of the embedded appender")]
struct Cli {
    /// How long to send.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Records per export request.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch: u64,
    /// Connections, each with one export in flight.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    concurrency: u64,
    /// Logs per second over all connections; saturation when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Stop sending after this many records (or at --duration, whichever first).
    #[arg(long)]
    total: Option<u64>,
    /// A ~20 s smoke run: 15 s of load, a timeline every 2 s.
    #[arg(long)]
    quick: bool,
    /// The appender binary [default: `appender` beside this binary, else <repo>/target/release/appender].
    #[arg(long)]
    appender: Option<PathBuf>,
    /// `flush.interval` of the appender.
    #[arg(long, default_value = "10s")]
    flush_interval: String,
    /// `flush.max_records` of the appender [default: the appender's].
    #[arg(long)]
    flush_max_records: Option<u64>,
    /// `flush.max_bytes` of the appender [default: the appender's].
    #[arg(long)]
    flush_max_bytes: Option<String>,
    /// Stage everything, commit only at the final flush (flush interval 24h, thresholds and
    /// staging.max_bytes out of reach): shows memory while staging grows.
    #[arg(long)]
    stage_only: bool,
    /// Any other appender setting, as SECTION__KEY=VALUE (TELEMETRY_LAKE_ prefix optional).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
    /// Write the figures as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Directory for the appender's temp dir [default: the system temp dir].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the appender's temp dir (staging file, warehouse, appender.log) and print its path.
    #[arg(long)]
    keep: bool,
    /// Timeline window.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeline_step: Duration,
}

impl Cli {
    fn normalise(mut self) -> Self {
        if self.quick {
            self.duration = Duration::from_secs(15);
            self.timeline_step = Duration::from_secs(2);
        }
        self
    }

    fn appender_binary(&self) -> anyhow::Result<PathBuf> {
        let path = match &self.appender {
            Some(path) => path.clone(),
            None => default_appender(),
        };
        if !path.is_file() {
            bail!(
                "no appender binary at {}: build it (cargo build --release -p telemetry-lake-appender) or pass --appender",
                path.display()
            );
        }
        Ok(path)
    }

    /// `TELEMETRY_LAKE_*` settings for the appender, beyond ports and paths.
    fn appender_settings(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut settings = BTreeMap::new();
        let mut set = |key: &str, value: String| {
            settings.insert(format!("TELEMETRY_LAKE_{}", key.trim_start_matches("TELEMETRY_LAKE_")), value);
        };
        set("FLUSH__INTERVAL", self.flush_interval.clone());
        if self.stage_only {
            for (key, value) in STAGE_ONLY {
                set(key, value.into());
            }
        }
        if let Some(records) = self.flush_max_records {
            set("FLUSH__MAX_RECORDS", records.to_string());
        }
        if let Some(bytes) = &self.flush_max_bytes {
            set("FLUSH__MAX_BYTES", bytes.clone());
        }
        for pair in &self.settings {
            let (key, value) =
                pair.split_once('=').with_context(|| format!("--set {pair}: expected KEY=VALUE"))?;
            set(key, value.into());
        }
        Ok(settings)
    }

    fn plan(&self) -> LoadPlan {
        LoadPlan {
            duration: self.duration,
            concurrency: self.concurrency as usize,
            rate: self.rate,
            total: self.total,
            signal: telemetry_lake_bench_workload::signals::Signal::Logs,
        }
    }
}

fn default_appender() -> PathBuf {
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join("appender")));
    beside
        .filter(|path| path.is_file())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/appender"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    note(format_args!("bench-embedded starting"));
    let cli = Cli::parse().normalise();
    let binary = cli.appender_binary()?;
    let settings = cli.appender_settings()?;
    let requests = Arc::new(build_workload(&cli)?);
    let request_bytes_avg =
        requests.iter().map(|r| r.bytes.len() as u64).sum::<u64>() / requests.len() as u64;

    let temp = temp_dir(cli.dir.as_deref())?;
    let settings_list: Vec<(String, String)> = settings.clone().into_iter().collect();
    let mut appender = Appender::start(&binary, temp.path(), &settings_list)?;
    note(format_args!("appender pid {} in {}, waiting for /readyz", appender.pid(), temp.path().display()));
    appender.wait_ready(READY_TIMEOUT).await?;
    let mut admin = appender.admin().await?;
    let committed_before = warm_up(&appender, &mut admin, &requests[0]).await?;
    note(format_args!("warm-up committed; load starts"));

    let setup = Setup {
        duration_seconds: cli.duration.as_secs_f64(),
        batch: cli.batch as usize,
        concurrency: cli.concurrency as usize,
        rate: cli.rate,
        total: cli.total,
        request_bytes_avg,
        appender_settings: settings,
        load_average_before: sampler::load_average(),
    };
    let measured = measure(&appender, &admin, requests, cli.plan(), committed_before).await?;
    let log = appender.log.clone();
    note(format_args!("stopping the appender with SIGTERM"));
    let exit_status = appender.stop(STOP_TIMEOUT).await?;
    let report = Report::new(Inputs {
        setup,
        load: &measured.load,
        samples: &measured.samples,
        span: measured.span,
        flushes: FlushLog::read(&log, measured.flushes_before),
        cpu_by_thread: measured.cpu_by_thread,
        exit_status: exit_status.to_string(),
        timeline_step: cli.timeline_step,
    });
    print!("{}", report.render());
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if cli.keep || report.final_flush_error.is_some() {
        println!("kept {}", temp.keep().display());
    }
    match &report.final_flush_error {
        Some(error) => bail!("the final flush failed: {error}"),
        None => Ok(()),
    }
}

fn build_workload(cli: &Cli) -> anyhow::Result<Vec<PreEncoded>> {
    let dir = workload::loghub_dir();
    let lines = workload::load_lines(&dir)?;
    let requests = workload::build_requests(&lines, cli.batch as usize, cli.concurrency as usize * 4);
    note(format_args!(
        "workload: {} Loghub lines from {} as {} pre-encoded requests of {} records",
        lines.len(),
        dir.display(),
        requests.len(),
        cli.batch
    ));
    Ok(requests)
}

fn temp_dir(base: Option<&Path>) -> anyhow::Result<tempfile::TempDir> {
    let builder = &mut tempfile::Builder::new();
    builder.prefix("bench-embedded-");
    match base {
        Some(base) => builder.tempdir_in(base),
        None => builder.tempdir(),
    }
    .context("cannot create a temp dir")
}

/// One typed export through `LogsServiceClient`, committed by a `Flush`; returns what `Stats`
/// then counts as committed.
async fn warm_up(
    appender: &Appender,
    admin: &mut AdminClient<Channel>,
    first: &PreEncoded,
) -> anyhow::Result<u64> {
    let request = ExportLogsServiceRequest::decode(first.bytes.clone())?;
    load::check_endpoint(appender.ports.otlp_grpc, request).await?;
    appender::flush(admin).await.context("warm-up flush failed")?;
    let committed = appender::totals(&appender::stats(admin).await?).records_committed;
    if committed != first.records {
        bail!("after the warm-up {committed} records are committed, expected {}", first.records);
    }
    Ok(committed)
}

struct Measured {
    /// Flushes in the appender's log before the load (the warm-up's).
    flushes_before: u64,
    load: LoadResult,
    samples: sampler::Samples,
    span: Span,
    cpu_by_thread: BTreeMap<String, f64>,
}

/// The load, the final flush and the wait until everything acknowledged is committed, with the
/// samplers running throughout.
async fn measure(
    appender: &Appender,
    admin: &AdminClient<Channel>,
    requests: Arc<Vec<PreEncoded>>,
    plan: LoadPlan,
    committed_before: u64,
) -> anyhow::Result<Measured> {
    let watch = Arc::new(ProcWatch::new(appender.pid(), appender.dir.join("staging.duckdb")));
    let live = Arc::new(LiveCounters::default());
    let flushes_before = FlushLog::read(&appender.log, 0).flushes;
    let (machine_before, bench_before) = (sampler::machine_busy_seconds()?, self_cpu_seconds()?);
    let start = Instant::now();
    let proc_before = watch.sample(Duration::ZERO)?;
    let threads_before = sampler::cpu_by_thread(appender.pid());
    let samplers =
        Samplers::start(watch.clone(), admin.clone(), live.clone(), start, PROC_EVERY, STATS_EVERY);
    let load = load::run(appender.ports.otlp_grpc, requests, plan, live, start).await?;
    note(format_args!(
        "load done after {:.1} s: {} records acknowledged; flushing",
        load.elapsed.as_secs_f64(),
        load.acknowledged()
    ));
    let mut admin = admin.clone();
    let flush_started = Instant::now();
    let final_flush_error = appender::flush(&mut admin).await.err().map(|e| format!("{e:#}"));
    let final_flush_seconds = flush_started.elapsed().as_secs_f64();
    match &final_flush_error {
        None => wait_committed(&mut admin, committed_before + load.acknowledged(), STOP_TIMEOUT).await?,
        Some(error) => note(format_args!("final flush failed, figures below are partial: {error}")),
    }
    let all_committed = start.elapsed();
    let proc_after = watch.sample(all_committed)?;
    let threads_after = sampler::cpu_by_thread(appender.pid());
    let span = Span {
        all_committed,
        committed_before,
        proc_before,
        proc_after,
        machine_cpu_seconds: sampler::machine_busy_seconds()? - machine_before,
        bench_cpu_seconds: self_cpu_seconds()? - bench_before,
        final_flush_seconds,
        final_flush_error,
    };
    let samples = samplers.stop().await?;
    let cpu_by_thread = report::cpu_breakdown(
        &threads_before,
        &threads_after,
        proc_after.cpu_seconds - proc_before.cpu_seconds,
    );
    Ok(Measured { flushes_before, load, samples, span, cpu_by_thread })
}

async fn wait_committed(
    admin: &mut AdminClient<Channel>,
    target: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let committed = appender::totals(&appender::stats(admin).await?).records_committed;
        if committed >= target {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("only {committed} of {target} records committed after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A progress line on stderr, stamped with the seconds since this process started.
fn note(message: std::fmt::Arguments<'_>) {
    static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let started = STARTED.get_or_init(Instant::now);
    eprintln!("[{:6.1}s] {message}", started.elapsed().as_secs_f64());
}

fn self_cpu_seconds() -> anyhow::Result<f64> {
    Ok(ProcWatch::new(std::process::id(), PathBuf::new()).sample(Duration::ZERO)?.cpu_seconds)
}
