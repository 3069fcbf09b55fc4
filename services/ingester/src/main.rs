//! `ingester`: OTLP logs over gRPC and HTTP into the Kafka topic. Needs `kafka.brokers`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    telemetry_lake_common::cli::run_service(
        "ingester",
        |config| telemetry_lake_ingester::check_config(config).map(|_| ()),
        |config, shutdown, flush_signal| async move {
            telemetry_lake_ingester::run(&config, shutdown, flush_signal, |_| {}).await
        },
    )
    .await
}
