//! The embedded export path: an OTLP request, less its malformed records, staged as one encoded
//! batch and answered once staged durably.
//!
//! A request is staged as the bytes it arrived as (compressed): the receivers' walk has already
//! checked it as prost would and counted its records. Records with a malformed trace or span id
//! are rejected one by one (OTLP partial success, with the reasons of
//! `telemetry_lake_common::otlp::records`, the check the ingester applies too); only such a
//! request is decoded, has them removed, and is encoded again.
//! a full staging is a retryable "overloaded" answer and turns health NOT_SERVING
//! ([`Reason::StagingFull`]) until a flush makes room.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prost::Message as _;
use telemetry_lake_common::{
    health::{Health, Reason},
    otlp::{ExportError, ExportOutcome, Exporter, Logs, LogsRequest, records},
};

use crate::{
    metrics::AppenderMetrics,
    staging::{Batch, Staging, StagingError},
};

/// Requests with more records than this are compressed (and, with malformed records, decoded
/// and encoded again) off the async workers (a 1,000-record request takes about a millisecond).
const INLINE_CONVERSION_RECORDS: u64 = 200;

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

impl Exporter<Logs> for EmbeddedExporter {
    async fn export(&self, request: LogsRequest) -> Result<ExportOutcome, ExportError> {
        let received = request.records();
        self.totals.received.fetch_add(received, Ordering::Relaxed);
        let walk = request.walk();
        let (rejected, rejection) = (walk.malformed, walk.rejection.clone());
        let accepted = received - rejected;
        let prepare = move || -> Result<Option<Batch>, ExportError> {
            if accepted == 0 {
                return Ok(None);
            }
            if rejected == 0 {
                return Ok(Some(Batch::new(request.bytes(), accepted, None, now_micros())));
            }
            let mut decoded = request.decode()?;
            records::drop_malformed(&mut decoded);
            Ok(Some(Batch::new(&decoded.encode_to_vec(), accepted, None, now_micros())))
        };
        let batch = if received > INLINE_CONVERSION_RECORDS {
            tokio::task::spawn_blocking(prepare)
                .await
                .map_err(|e| ExportError::Internal(format!("encoding the request failed: {e}")))??
        } else {
            prepare()?
        };
        if let Some(batch) = batch {
            if let Err(err) = self.staging.append(vec![batch]).await {
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
                    StagingError::TooLarge { limit, .. } => {
                        ExportError::PayloadTooLarge { limit: limit.as_u64() }
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
