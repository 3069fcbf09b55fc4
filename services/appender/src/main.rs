//! `appender`: OTLP logs (or the Kafka topic) into an Iceberg table. With no config at all it
//! runs the embedded lake under `./data`. `appender query SQL` runs SQL over that table.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use telemetry_lake_appender::query::{self, QueryArgs};
use telemetry_lake_common::cli::{self, ConfigArg};

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
        Some(Command::Query(args)) => query::main(config_file, args).await,
        None => {
            cli::run_service_with(
                "appender",
                config_file,
                |_| Ok(()),
                |config, shutdown, flush_signal| async move {
                    telemetry_lake_appender::run(&config, shutdown, flush_signal, |_| {}).await
                },
            )
            .await
        }
    }
}
