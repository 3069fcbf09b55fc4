//! `ingester`: OTLP logs over gRPC and HTTP into the Kafka topic. Needs `kafka.brokers`.

use std::process::ExitCode;

use clap::Parser;
use telemetry_lake_common::cli::{self, ConfigArg};

/// jemalloc's options for the ingester: as `telemetry_lake_common::allocator::MALLOC_CONF`, but
/// one arena for the whole process instead of one per CPU, and freed pages kept for a second
/// (250, 500 and 3000 ms changed neither its CPU nor its RSS much). The ingester's memory is mostly
/// requests in flight, allocated on the async workers and freed by librdkafka's threads; with an
/// arena per CPU each kept its own freed pages of them. At saturation (`bench/compare`, 64
/// connections, 2 cores) one arena peaked at 52-58 MiB RSS against 65-68 MiB, with a quarter of
/// the page faults and no more CPU per log (bench/compare/results/ingester-saturation-2026-12-07.md).
const MALLOC_CONF: &std::ffi::CStr = c"narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0";

telemetry_lake_common::jemalloc_allocator!(MALLOC_CONF);

/// OTLP logs over gRPC and HTTP into the Kafka topic.
#[derive(Parser)]
#[command(name = "ingester")]
struct Cli {
    #[command(flatten)]
    config: ConfigArg,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::run_service(
        "ingester",
        cli.config.config.as_deref(),
        |settings| telemetry_lake_ingester::kafka_settings(settings).map(|_| ()),
        |settings, shutdown, flush_signal| async move {
            telemetry_lake_ingester::run(&settings, shutdown, flush_signal, |_| {}).await
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use tikv_jemalloc_ctl::raw;

    #[test]
    fn jemalloc_runs_with_one_arena_and_a_one_second_decay() {
        // SAFETY: each name is one of jemalloc's options, read with its own type.
        unsafe {
            assert_eq!(raw::read::<u32>(b"opt.narenas\0").unwrap(), 1);
            assert_eq!(raw::read_str(b"opt.percpu_arena\0").unwrap(), b"disabled\0");
            assert!(raw::read::<bool>(b"opt.background_thread\0").unwrap());
            let decay =
                (raw::read::<isize>(b"opt.dirty_decay_ms\0"), raw::read::<isize>(b"opt.muzzy_decay_ms\0"));
            assert_eq!((decay.0.unwrap(), decay.1.unwrap()), (1000, 0));
        }
    }
}
