//! The appender's admin plane: `Flush` is a message to the committer (answered when its flush
//! is done), `Stats` reads counters without touching DuckDB.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use telemetry_lake_admin_proto::v1::{
    AppenderSignalStats, AppenderStats, FlushResponse, StatsResponse, stats_response::Service,
};
use telemetry_lake_common::{
    admin::{AdminHandler, FlushTrigger},
    health::Health,
    otlp::{ExportError, SignalKind},
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    commit::{FlushRequest, FlushState},
    metrics::AppenderMetrics,
    source::{kafka::KafkaSource, otlp::ExportTotals},
    staging::Staging,
    tables_of,
};

/// Flush and Stats for the appender.
pub struct AppenderAdmin {
    pub mode: &'static str,
    pub kafka: Option<Arc<KafkaSource>>,
    pub staging: Staging,
    pub flushes: mpsc::Sender<FlushRequest>,
    pub flush_state: Arc<FlushState>,
    pub totals: Arc<ExportTotals>,
    /// The signals served, in the order logs, traces, metrics.
    pub signals: Vec<SignalKind>,
    pub metrics: Arc<AppenderMetrics>,
    pub health: Health,
}

impl AdminHandler for AppenderAdmin {
    async fn flush(&self, trigger: FlushTrigger) -> Result<FlushResponse, ExportError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || ExportError::Unavailable {
            message: "the committer has stopped (shutting down)".into(),
            retry_after: Duration::from_secs(1),
        };
        self.flushes.send(FlushRequest { trigger, reply: Some(reply) }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn stats(&self) -> StatsResponse {
        let counters = self.staging.counters();
        let last_flush = self.flush_state.last_flush.lock().expect("flush state lock").clone();
        let since: Instant = *self.flush_state.last_success.lock().expect("flush state lock");
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (partitions, kafka_messages, dead_lettered, dead_lettered_records, dead_letter_failures) =
            match &self.kafka {
                Some(source) => {
                    let asked = source.clone();
                    let partitions = tokio::task::spawn_blocking(move || asked.partition_stats())
                        .await
                        .unwrap_or_default();
                    let c = &source.counters;
                    (
                        partitions,
                        get(&c.messages),
                        get(&c.dead_lettered),
                        get(&c.dead_lettered_records),
                        get(&c.dead_letter_failures),
                    )
                }
                None => (Vec::new(), 0, 0, 0, 0),
            };
        let (received, accepted, rejected) = self.totals.sum();
        let signals = self
            .signals
            .iter()
            .map(|kind| {
                let totals = self.totals.of(*kind);
                AppenderSignalStats {
                    signal: kind.name().into(),
                    received: get(&totals.received),
                    accepted: get(&totals.accepted),
                    rejected: get(&totals.rejected),
                    committed: tables_of(*kind).iter().map(|t| self.metrics.rows_committed(*t)).sum(),
                }
            })
            .collect();
        StatsResponse {
            mode: self.mode.into(),
            buffer_records: get(&counters.records),
            buffer_size_bytes: get(&counters.bytes),
            time_since_last_flush_seconds: since.elapsed().as_secs_f64(),
            last_flush: Some(last_flush),
            serving: self.health.is_serving(),
            not_serving_reasons: self.health.reasons().await.into_iter().map(String::from).collect(),
            // The listeners' refusals, added by the common admin plane.
            refusals: Vec::new(),
            service: Some(Service::Appender(AppenderStats {
                records_received: received,
                records_accepted: accepted,
                records_rejected: rejected,
                records_committed: self.metrics.records_committed.get(),
                bytes_committed: self.metrics.bytes_committed.get(),
                snapshots: self.metrics.snapshots.get(),
                flushes: self.metrics.flush_count(true),
                flush_failures: self.metrics.flush_count(false),
                kafka_messages,
                dead_lettered,
                partitions,
                dead_lettered_records,
                dead_letter_failures,
                signals,
            })),
        }
    }
}
