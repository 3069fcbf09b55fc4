//! Signals: SIGTERM and SIGINT start a graceful shutdown; SIGUSR1 asks for a flush.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancelled when the process should stop accepting work and drain.
pub type ShutdownToken = CancellationToken;

/// Spawns the signal listener. `on_flush_signal` runs on every SIGUSR1.
pub fn listen(on_flush_signal: impl Fn() + Send + 'static) -> std::io::Result<ShutdownToken> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!(signal = "SIGTERM", "shutting down"); break; }
                _ = int.recv() => { tracing::info!(signal = "SIGINT", "shutting down"); break; }
                _ = usr1.recv() => { tracing::info!(signal = "SIGUSR1", "flush requested"); on_flush_signal(); }
            }
        }
        cancel.cancel();
    });
    Ok(token)
}
