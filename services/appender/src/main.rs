//! `appender`: OTLP logs (or the Kafka topic) into an Iceberg table. With no config at all it
//! runs the embedded lake under `./data`. `appender query SQL` runs SQL over that table.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use telemetry_lake_appender::lake;
use telemetry_lake_common::{
    cli::{self, ConfigArg},
    config::LogConfig,
    secrets::Redactor,
    telemetry,
};
use telemetry_lake_query::QueryArgs;

telemetry_lake_common::jemalloc_allocator!();

/// OTLP logs (embedded, or from the Kafka topic) into an Iceberg table.
#[derive(Parser)]
#[command(name = "appender")]
struct Cli {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run SQL over the Iceberg table with DuckDB and print the result.
    ///
    /// The table is `logs`. Example: appender query "SELECT severity_text, count(*) FROM logs GROUP BY 1"
    Query(QueryArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_file = cli.config.config.as_deref();
    match cli.command {
        Some(Command::Query(args)) => {
            let settings = match cli::load_settings("appender query", config_file) {
                Ok(settings) => settings,
                Err(code) => return code,
            };
            // Library warnings only (RUST_LOG still wins): stdout is the result.
            telemetry::init(&LogConfig { level: "warn".into(), ..settings.log.clone() });
            let redactor = Redactor::for_iceberg(&settings.iceberg);
            let table =
                lake::load_existing(&settings.iceberg, telemetry_lake_proto::RowTable::Logs, &redactor).await;
            telemetry_lake_query::main(args, table, &settings.iceberg.table, &redactor).await
        }
        None => {
            cli::run_service(
                "appender",
                config_file,
                |_| Ok(()),
                |settings, shutdown, flush_signal| async move {
                    telemetry_lake_appender::run(&settings, shutdown, flush_signal, |_| {}).await
                },
            )
            .await
        }
    }
}
