//! `ingester`: OTLP logs over gRPC and HTTP into the Kafka topic. Needs `kafka.brokers`.

use std::process::ExitCode;

use clap::Parser;
use telemetry_lake_common::cli::{self, ConfigArg};

telemetry_lake_common::jemalloc_allocator!();

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
