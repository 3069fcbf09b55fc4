//! `appender`: OTLP logs (or the Kafka topic) into an Iceberg table. With no config at all it
//! runs the embedded lake under `./data`.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::Parser;
use telemetry_lake_common::{config::Config, shutdown, telemetry};
use tokio::sync::Notify;

#[derive(Parser)]
#[command(name = "appender", version, about)]
struct Cli {
    /// TOML config file; every key can also be set as TELEMETRY_LAKE_<SECTION>__<KEY>.
    #[arg(long, env = "TELEMETRY_LAKE_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("appender: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config.log);
    let flush_signal = Arc::new(Notify::new());
    let notify = flush_signal.clone();
    let shutdown = match shutdown::listen(move || notify.notify_one()) {
        Ok(token) => token,
        Err(err) => {
            tracing::error!(error = %err, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    match telemetry_lake_appender::run(&config, shutdown, flush_signal, |_| {}).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "appender stopped");
            ExitCode::FAILURE
        }
    }
}
