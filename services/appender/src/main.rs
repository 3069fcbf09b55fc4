//! `appender`: OTLP logs (or the Kafka topic) into an Iceberg table. With no config at all it
//! runs the embedded lake under `./data`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    telemetry_lake_common::cli::run_service(
        "appender",
        |_| Ok(()),
        |config, shutdown, flush_signal| async move {
            telemetry_lake_appender::run(&config, shutdown, flush_signal, |_| {}).await
        },
    )
    .await
}
