//! `ingester`: OTLP logs over gRPC and HTTP into the Kafka topic. Needs `kafka.brokers`.

use std::process::ExitCode;

telemetry_lake_common::jemalloc_allocator!();

#[tokio::main]
async fn main() -> ExitCode {
    telemetry_lake_common::cli::run_service(
        "ingester",
        |settings| telemetry_lake_ingester::kafka_settings(settings).map(|_| ()),
        |settings, shutdown, flush_signal| async move {
            telemetry_lake_ingester::run(&settings, shutdown, flush_signal, |_| {}).await
        },
    )
    .await
}
