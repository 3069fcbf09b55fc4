//! The embedded appender's two faces: the OTLP export path (records -> rows -> staging, answered
//! once staged durably) and the admin handler (`Flush` goes to the committer, `Stats` reads
//! counters without touching DuckDB).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use telemetry_lake_admin_proto::v1::{FlushResponse, StatsResponse, Totals};
use telemetry_lake_common::{
    admin::{AdminHandler, FlushTrigger},
    health::Health,
    otlp::{ExportError, ExportLogsServiceRequest, ExportOutcome, LogsExporter, count_records},
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    committer::{FlushRequest, FlushState},
    kafka::KafkaSource,
    metrics::AppenderMetrics,
    rows,
    staging::{Staging, StagingError},
};

/// Requests with more records than this are converted off the async workers.
const INLINE_CONVERSION_RECORDS: u64 = 2_000;

#[derive(Debug, Default)]
pub struct ExportTotals {
    pub received: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
}

/// OTLP logs straight into staging (embedded mode).
pub struct EmbeddedExporter {
    pub staging: Staging,
    pub totals: Arc<ExportTotals>,
    pub metrics: Arc<AppenderMetrics>,
    /// Turned NOT_SERVING when staging is full.
    pub health: Health,
}

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as i64
}

impl LogsExporter for EmbeddedExporter {
    async fn export(&self, request: ExportLogsServiceRequest) -> Result<ExportOutcome, ExportError> {
        let received = count_records(&request);
        self.totals.received.fetch_add(received, Ordering::Relaxed);
        let converted = if received > INLINE_CONVERSION_RECORDS {
            tokio::task::spawn_blocking(move || rows::to_rows(&request, None, now_micros()))
                .await
                .map_err(|e| ExportError::Internal(format!("row conversion failed: {e}")))?
        } else {
            rows::to_rows(&request, None, now_micros())
        };
        let (accepted, rejected) = (converted.batch.num_rows() as u64, converted.rejected);
        let rejection = converted.rejection.clone();
        if accepted > 0 {
            if let Err(err) = self.staging.append(converted).await {
                self.totals.rejected.fetch_add(received, Ordering::Relaxed);
                return Err(match err {
                    StagingError::Full { .. } => {
                        // Not ready until a commit makes room (the committer turns it back on).
                        self.health.set_serving(false, "staging is full").await;
                        ExportError::Overloaded {
                            message: err.to_string(),
                            retry_after: Duration::from_secs(5),
                        }
                    }
                    other => {
                        tracing::error!(error = %other, "staging refused records");
                        ExportError::Unavailable {
                            message: other.to_string(),
                            retry_after: Duration::from_secs(5),
                        }
                    }
                });
            }
            self.metrics.observe_staging(self.staging.counters());
        }
        self.totals.accepted.fetch_add(accepted, Ordering::Relaxed);
        self.totals.rejected.fetch_add(rejected, Ordering::Relaxed);
        Ok(if rejected > 0 {
            ExportOutcome::partial(rejected as i64, rejection)
        } else {
            ExportOutcome::ok()
        })
    }
}

/// Flush and Stats for the appender.
pub struct AppenderAdmin {
    pub mode: &'static str,
    pub kafka: Option<Arc<KafkaSource>>,
    pub staging: Staging,
    pub flushes: mpsc::Sender<FlushRequest>,
    pub flush_state: Arc<FlushState>,
    pub totals: Arc<ExportTotals>,
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
        let (partitions, kafka_messages, dead_lettered) = match &self.kafka {
            Some(source) => {
                let asked = source.clone();
                let partitions =
                    tokio::task::spawn_blocking(move || asked.partition_stats()).await.unwrap_or_default();
                (partitions, get(&source.counters.messages), get(&source.counters.dead_lettered))
            }
            None => (Vec::new(), 0, 0),
        };
        StatsResponse {
            mode: self.mode.into(),
            buffer_records: get(&counters.records),
            buffer_size_bytes: get(&counters.bytes),
            time_since_last_flush_seconds: since.elapsed().as_secs_f64(),
            last_flush: Some(last_flush),
            totals: Some(Totals {
                records_received: get(&self.totals.received),
                records_accepted: get(&self.totals.accepted),
                records_rejected: get(&self.totals.rejected),
                records_committed: self.metrics.records_committed.get(),
                bytes_committed: self.metrics.bytes_committed.get(),
                flushes: self.metrics.flush_count(true),
                flush_failures: self.metrics.flush_count(false),
                snapshots: self.metrics.snapshots.get(),
                kafka_messages,
                dead_lettered,
            }),
            serving: self.health.is_serving(),
            partitions,
            producer_queue_messages: 0, // the ingester's producer queue; the appender has none
        }
    }
}
