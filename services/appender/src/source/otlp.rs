//! The embedded export path: OTLP records -> rows -> staging, answered once staged durably.
//!
//! Records with a malformed trace or span id are rejected one by one (OTLP partial success);
//! a full staging is a retryable "overloaded" answer and turns health NOT_SERVING
//! ([`Reason::StagingFull`]) until a flush makes room.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use telemetry_lake_common::{
    health::{Health, Reason},
    otlp::{ExportError, ExportLogsServiceRequest, ExportOutcome, LogsExporter, count_records},
};

use crate::{
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
                        // Not ready until a flush makes room.
                        self.health.add(Reason::StagingFull).await;
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
