//! `appender`: OTLP logs, traces and metrics (or the Kafka topic of logs) into Iceberg tables.
//! With no config at all it runs the embedded lake under `./data`. `appender query SQL` runs SQL
//! over those tables.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use telemetry_lake_appender::lake;
use telemetry_lake_common::{
    cli::{self, ConfigArg},
    config::LogConfig,
    secrets::Redactor,
    telemetry,
};
use telemetry_lake_proto::RowTable;
use telemetry_lake_query::{NamedTable, QueryArgs};

telemetry_lake_common::jemalloc_allocator!();

/// OTLP logs, traces and metrics (embedded, or logs from the Kafka topic) into Iceberg tables.
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
    /// Run SQL over the Iceberg tables with DuckDB and print the result.
    ///
    /// The tables are `logs`, `traces`, `metrics_gauge`, `metrics_sum`, `metrics_histogram`,
    /// `metrics_exponential_histogram` and `metrics_summary`; only those the statement names are
    /// read. Example: appender query "SELECT service_name, count(*) FROM traces GROUP BY 1"
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
            let tables = RowTable::ALL
                .into_iter()
                .map(|row| {
                    let name = lake::table_name(&settings.iceberg, row);
                    let alias = (name != row.default_name()).then(|| row.default_name().to_string());
                    NamedTable { name, alias, table: row }
                })
                .collect();
            let open = async |row: &RowTable| lake::load_existing(&settings.iceberg, *row, &redactor).await;
            telemetry_lake_query::main(args, tables, open, &redactor).await
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
