//! Micro-benchmark of `otlp::walk::walk_logs_request` against prost on the requests the load
//! benchmarks send (real Loghub lines from `shared/data/loghub`, `--batch` records a request,
//! 8 services): CPU-seconds per million records, microseconds and allocations per request, for
//! the walk, for prost's decode, and for today's ingester path (decode, then encode each
//! `ResourceLogs` as its own request).
//!
//! ```text
//! cargo run --release -p telemetry-lake-common --example walk_bench [-- --seconds 3 --batch 1000]
//! ```
//!
//! One thread; CPU time is the thread's (`/proc/thread-self/schedstat`), each method runs
//! `--seconds` per round, three rounds interleaved, and the median round is printed.

use std::{
    alloc::{GlobalAlloc, Layout},
    hint::black_box,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;
use telemetry_lake_bench_workload::workload::{build_requests, load_lines};
use telemetry_lake_common::{allocator::Jemalloc, otlp::walk::walk_logs_request};

/// The services' allocator, counting allocations while `COUNTING` is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { Jemalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { Jemalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { Jemalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// CPU time of this thread; wall time where the kernel does not say.
fn cpu_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_else(|| {
            static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
            START.get_or_init(Instant::now).elapsed()
        })
}

/// Runs `f` over the requests until `seconds` of CPU have passed; returns (CPU, requests).
fn run(requests: &[Vec<u8>], seconds: f64, f: &dyn Fn(&[u8]) -> u64) -> (Duration, u64) {
    let start = cpu_time();
    let mut done = 0u64;
    loop {
        for bytes in requests {
            black_box(f(black_box(bytes)));
        }
        done += requests.len() as u64;
        let spent = cpu_time() - start;
        if spent.as_secs_f64() >= seconds {
            return (spent, done);
        }
    }
}

fn allocations_per_request(requests: &[Vec<u8>], f: &dyn Fn(&[u8]) -> u64) -> f64 {
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    for bytes in requests {
        black_box(f(black_box(bytes)));
    }
    COUNTING.store(false, Ordering::Relaxed);
    ALLOCATIONS.load(Ordering::Relaxed) as f64 / requests.len() as f64
}

fn main() -> anyhow::Result<()> {
    let mut seconds = 3.0;
    let mut batch = 1000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))?;
        match arg.as_str() {
            "--seconds" => seconds = value.parse()?,
            "--batch" => batch = value.parse()?,
            _ => anyhow::bail!("unknown argument {arg}; takes --seconds S --batch N"),
        }
    }
    // `shared/data/loghub` beside the checkout (the workload crate's own default can point into
    // another checkout when several share one target directory).
    let loghub = std::env::var_os("TELEMETRY_LAKE_SHARED_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared").into())
        .join("data/loghub");
    let lines = load_lines(&loghub)?;
    let requests: Vec<Vec<u8>> =
        build_requests(&lines, batch, 16).into_iter().map(|r| r.bytes.to_vec()).collect();
    let records_per_request = batch as f64;
    let bytes: usize = requests.iter().map(Vec::len).sum();
    let resources = walk_logs_request(&requests[0])?.resources.len();
    println!(
        "{} requests of {batch} records ({resources} resources, {:.0} KiB each on average) from {} Loghub lines",
        requests.len(),
        bytes as f64 / requests.len() as f64 / 1024.0,
        lines.len()
    );

    let walk = |b: &[u8]| walk_logs_request(b).map(|w| w.records).unwrap_or(0);
    let decode =
        |b: &[u8]| ExportLogsServiceRequest::decode(b).map(|r| r.resource_logs.len() as u64).unwrap_or(0);
    let decode_split_encode = |b: &[u8]| {
        let request = ExportLogsServiceRequest::decode(b).unwrap_or_default();
        request
            .resource_logs
            .into_iter()
            .map(|r| ExportLogsServiceRequest { resource_logs: vec![r] }.encode_to_vec().len() as u64)
            .sum()
    };
    type Method<'a> = (&'a str, &'a dyn Fn(&[u8]) -> u64);
    let methods: [Method; 3] = [
        ("walk_logs_request", &walk),
        ("prost decode", &decode),
        ("prost decode + encode per resource", &decode_split_encode),
    ];
    // Agreement first: the walk counts what prost decodes.
    for bytes in &requests {
        let decoded = ExportLogsServiceRequest::decode(bytes.as_slice())?;
        let records: usize =
            decoded.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len()).sum();
        anyhow::ensure!(walk(bytes) == records as u64, "walk and prost disagree");
    }

    let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); methods.len()];
    for _ in 0..3 {
        for (i, (_, f)) in methods.iter().enumerate() {
            let (cpu, done) = run(&requests, seconds, *f);
            rounds[i].push(cpu.as_secs_f64() / (done as f64 * records_per_request) * 1e6);
        }
    }
    println!(
        "{:<36} {:>26} {:>16} {:>20} {:>10}",
        "", "CPU-s per million records", "us per request", "allocs per request", "MB/s"
    );
    for ((name, f), per_million) in methods.iter().zip(&mut rounds) {
        per_million.sort_by(f64::total_cmp);
        let median = per_million[1];
        let per_request_us = median * records_per_request;
        let mb_per_s = bytes as f64 / requests.len() as f64 / per_request_us;
        println!(
            "{name:<36} {median:>26.3} {per_request_us:>16.0} {:>20.0} {mb_per_s:>10.0}",
            allocations_per_request(&requests, *f)
        );
    }
    Ok(())
}
