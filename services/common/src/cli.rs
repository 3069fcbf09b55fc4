//! What both binaries do before and after their service runs: parse `--config`, load and check
//! the configuration (exit 2 naming the problem), set up tracing and signals, run, and turn the
//! outcome into the exit code.

use std::{future::Future, path::PathBuf, process::ExitCode, sync::Arc};

use clap::Parser;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{config::Config, shutdown, telemetry};

#[derive(Parser)]
struct Cli {
    /// TOML config file; every key can also be set as TELEMETRY_LAKE_<SECTION>__<KEY>.
    #[arg(long, env = crate::config::CONFIG_ENV)]
    config: Option<PathBuf>,
}

/// Runs a service binary. `check` refuses a config the service cannot work with; `run` gets
/// the config, the shutdown token (SIGTERM/SIGINT) and the flush signal (SIGUSR1).
pub async fn run_service<F, Fut>(
    name: &str,
    check: impl FnOnce(&Config) -> Result<(), String>,
    run: F,
) -> ExitCode
where
    F: FnOnce(Config, CancellationToken, Arc<Notify>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{name}: {err}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = check(&config) {
        eprintln!("{name}: invalid configuration: {err}");
        return ExitCode::from(2);
    }
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
    match run(config, shutdown, flush_signal).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "{name} stopped");
            ExitCode::FAILURE
        }
    }
}
