//! What both binaries do before and after their service runs: parse `--config`, load and check
//! the configuration (exit 2 naming the problem), set up tracing and signals, run, and turn the
//! outcome into the exit code.
//!
//! Each binary parses its own command line, flattening [`ConfigArg`] into it, and calls
//! [`run_service`] to run the service (the appender only when no subcommand was given).

use std::{
    future::Future,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use clap::Args;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{settings::Settings, shutdown, telemetry};

/// `--config FILE`, shared by every binary and subcommand (global, so it may come before or
/// after a subcommand).
#[derive(Args, Debug, Clone, Default)]
// Without this the doc comment above becomes the help text of every binary that flattens it.
#[command(about = None, long_about = None)]
pub struct ConfigArg {
    /// TOML config file; every key can also be set as TELEMETRY_LAKE_<SECTION>__<KEY>.
    #[arg(long, env = crate::config::CONFIG_ENV, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

/// Runs a service binary: `config_file` is its `--config` (or `TELEMETRY_LAKE_CONFIG`), `None`
/// for defaults and environment only. `check` refuses settings the service cannot work with
/// (exit 2); `run` gets the settings, the shutdown token (SIGTERM/SIGINT) and the flush signal
/// (SIGUSR1).
pub async fn run_service<F, Fut>(
    name: &str,
    config_file: Option<&Path>,
    check: impl FnOnce(&Settings) -> Result<(), String>,
    run: F,
) -> ExitCode
where
    F: FnOnce(Settings, CancellationToken, Arc<Notify>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let settings = match load_settings(name, config_file) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    if let Err(err) = check(&settings) {
        eprintln!("{name}: invalid configuration: {err}");
        return ExitCode::from(2);
    }
    telemetry::init(&settings.log);
    let flush_signal = Arc::new(Notify::new());
    let notify = flush_signal.clone();
    let shutdown = match shutdown::listen(move || notify.notify_one()) {
        Ok(token) => token,
        Err(err) => {
            tracing::error!(error = %err, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    match run(settings, shutdown, flush_signal).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "{name} stopped");
            ExitCode::FAILURE
        }
    }
}

/// Loads defaults < `config_file` < environment and checks it; on error prints it, prefixed
/// with `name`, and gives exit code 2.
pub fn load_settings(name: &str, config_file: Option<&Path>) -> Result<Settings, ExitCode> {
    Settings::load(config_file).map_err(|err| {
        eprintln!("{name}: {err}");
        ExitCode::from(2)
    })
}
