//! Tracing setup: text or JSON lines on stderr, without registered secrets (`crate::secrets`),
//! filtered by `log.level` unless `RUST_LOG` is set; panic reports are redacted the same way.
//! Text has ANSI colours only when stderr is a terminal (never in a log file or a pipe).

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber and the redacting panic hook; a second call (tests booting
/// several services) is a no-op.
pub fn init(config: &LogConfig) {
    crate::secrets::redact_panics();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(crate::secrets::redacted_stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
