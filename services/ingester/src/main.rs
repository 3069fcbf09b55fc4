//! `ingester`: OTLP logs over gRPC and HTTP into the Kafka topic. Needs `kafka.brokers`.

use std::process::ExitCode;

use clap::Parser;
use telemetry_lake_common::cli::{self, ConfigArg};

/// jemalloc's options for the ingester: those of `telemetry_lake_common::allocator::MALLOC_CONF`
/// but one arena for the whole process instead of one per CPU. The ingester's memory is mostly
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
    use std::ffi::{CStr, c_char, c_int, c_void};

    unsafe extern "C" {
        /// jemalloc's control interface (`mallctl(3)`), unprefixed like `malloc` in this build.
        fn mallctl(
            name: *const c_char,
            oldp: *mut c_void,
            oldlenp: *mut usize,
            newp: *mut c_void,
            newlen: usize,
        ) -> c_int;
    }

    fn read<T: Default>(name: &CStr) -> T {
        let mut value = T::default();
        let mut len = std::mem::size_of::<T>();
        let code =
            unsafe { mallctl(name.as_ptr(), (&raw mut value).cast(), &mut len, std::ptr::null_mut(), 0) };
        assert_eq!(code, 0, "mallctl {name:?}");
        value
    }

    #[test]
    fn jemalloc_runs_with_one_arena_and_the_shared_decay() {
        assert_eq!(read::<u32>(c"opt.narenas"), 1);
        let percpu: *const c_char = read(c"opt.percpu_arena");
        assert_eq!(unsafe { CStr::from_ptr(percpu) }, c"disabled");
        assert!(read::<bool>(c"opt.background_thread"));
        assert_eq!((read::<isize>(c"opt.dirty_decay_ms"), read::<isize>(c"opt.muzzy_decay_ms")), (1000, 0));
    }
}
