//! What both binaries do before and after their service runs: parse `--config`, load and check
//! the configuration (exit 2 naming the problem), set up tracing and signals, run, and turn the
//! outcome into the exit code.
//!
//! Each binary parses its own command line, flattening [`ConfigArg`] into it, and calls
//! [`run_service`] to run the service (the appender only when no subcommand was given).
//!
//! Every start-up error is printed without secrets: through the process-wide redaction (see
//! [`crate::secrets`]), after registering what a configuration that failed to load holds under
//! secret-looking keys ([`crate::secrets::register_unloaded_config`]); later errors are log
//! lines, redacted by the tracing writer.

use std::{
    future::Future,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use clap::Args;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{secrets, settings::Settings, shutdown, telemetry};

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
        eprintln!("{}", secrets::redact_registered(&format!("{name}: invalid configuration: {err}")));
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
/// with `name` and without secrets, and gives exit code 2.
pub fn load_settings(name: &str, config_file: Option<&Path>) -> Result<Settings, ExitCode> {
    load_or_message(name, config_file).map_err(|message| {
        eprintln!("{message}");
        ExitCode::from(2)
    })
}

/// The settings, or the error message to print: no value of a secret-looking key in it, even
/// one the configuration could not take (a password written as a number).
fn load_or_message(name: &str, config_file: Option<&Path>) -> Result<Settings, String> {
    Settings::load(config_file).map_err(|err| {
        secrets::register_unloaded_config(config_file);
        secrets::redact_registered(&format!("{name}: {err}"))
    })
}

#[cfg(test)]
// figment's Jail returns its own large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    fn message(jail: &mut figment::Jail, toml: &str) -> String {
        jail.create_file("lake.toml", toml).unwrap();
        load_or_message("ingester", Some(Path::new("lake.toml"))).expect_err("refused")
    }

    #[test]
    fn config_errors_show_no_secret_of_any_type() {
        figment::Jail::expect_with(|jail| {
            let brokers = "[kafka]\nbrokers = \"localhost:9092\"\n";
            // A password written as a number: figment's type error quotes it.
            let shown = message(
                jail,
                &format!("{brokers}[kafka.sasl]\nmechanism = \"PLAIN\"\npassword = 918273645\n"),
            );
            assert!(shown.starts_with("ingester: ") && shown.contains("kafka.sasl.password"), "{shown}");
            assert!(!shown.contains("918273645"), "{shown}");
            let shown = message(jail, &format!("{brokers}[kafka.producer]\n\"sasl.password\" = -7364519\n"));
            assert!(shown.contains("sasl.password") && !shown.contains("7364519"), "{shown}");
            let shown = message(jail, &format!("{brokers}[iceberg.properties]\ntoken = 31.415926\n"));
            assert!(shown.contains("token") && !shown.contains("31.415926"), "{shown}");
            // Not TOML: the parse error quotes the line.
            let shown = message(jail, &format!("{brokers}[kafka.sasl]\npassword = \"Broken-Pw-4d2e\n"));
            assert!(shown.contains("TOML parse error") && !shown.contains("Broken-Pw-4d2e"), "{shown}");
            let shown = message(
                jail,
                &format!("{brokers}sasl = {{ mechanism = \"PLAIN\", password = \"Inline-Pw-9a7c\n"),
            );
            assert!(shown.contains("TOML parse error") && !shown.contains("Inline-Pw-9a7c"), "{shown}");
            // From the environment, where figment reads a number too.
            jail.set_env("TELEMETRY_LAKE_KAFKA__SASL__PASSWORD", "5647382910");
            let shown = message(jail, &format!("{brokers}[kafka.sasl]\nmechanism = \"PLAIN\"\n"));
            assert!(shown.contains("KAFKA.SASL.PASSWORD") && !shown.contains("5647382910"), "{shown}");
            Ok(())
        });
    }

    #[test]
    fn other_values_still_show_in_config_errors() {
        figment::Jail::expect_with(|jail| {
            // A reference is no secret: the error names it.
            let shown = message(jail, "[kafka.sasl]\npassword = \"${file:/no/such/kafka-password}\"\n");
            assert!(shown.contains("\"${file:/no/such/kafka-password}\": cannot read file"), "{shown}");
            let shown = message(
                jail,
                "[flush]\nmax_records = \"many\"\n[kafka.sasl]\npassword = \"Other-Pw-1b3c\"\n",
            );
            assert!(shown.contains("flush.max_records") && shown.contains("many"), "{shown}");
            Ok(())
        });
    }
}
