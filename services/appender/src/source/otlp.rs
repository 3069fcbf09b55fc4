//! The export path of both modes: an OTLP request (logs, traces or metrics), less its malformed
//! items, staged as one encoded batch and answered once staged durably.
//!
//! A request is staged as the bytes it arrived as (compressed): the receivers' walk has already
//! checked it as prost would and counted its records. Records with a malformed trace or span id
//! are rejected one by one (OTLP partial success, with the reasons of
//! `telemetry_lake_common::otlp::records`, the check the ingester applies too); only such a
//! request is decoded, has them removed, and is encoded again.
//!
//! A full staging is a retryable "overloaded" answer and turns health NOT_SERVING
//! ([`Reason::StagingFull`]) until a flush makes room. Until then every export is refused at
//! once, before its batch is compressed ([`Staging::refusing`]), so shedding load costs no
//! compression.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::collector::{
    metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest,
};
use prost::Message;
use telemetry_lake_common::{
    health::{Health, Reason},
    otlp::{
        ExportError, ExportOutcome, Exporter, Logs, LogsRequest, Metrics, SignalKind, Traces,
        records::{self, Checked},
        signal::Decoded,
    },
};
use telemetry_lake_proto::RowTable;

use crate::{
    metrics::AppenderMetrics,
    rows,
    staging::{Batch, Staging, StagingError},
};

/// Requests with more records than this are compressed (and, with malformed records, decoded
/// and encoded again) off the async workers (a 1,000-record request takes about a millisecond).
const INLINE_CONVERSION_RECORDS: u64 = 200;

/// What the exports of one signal brought: items received, staged and refused.
#[derive(Debug, Default)]
pub struct SignalTotals {
    pub received: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
}

/// [`SignalTotals`] per signal, indexed by `SignalKind as usize`.
#[derive(Debug, Default)]
pub struct ExportTotals {
    pub signals: [SignalTotals; 3],
}

impl ExportTotals {
    pub fn of(&self, kind: SignalKind) -> &SignalTotals {
        &self.signals[kind as usize]
    }

    /// Received, accepted and rejected items of every signal together.
    pub fn sum(&self) -> (u64, u64, u64) {
        self.signals.iter().fold((0, 0, 0), |(r, a, j), s| {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            (r + get(&s.received), a + get(&s.accepted), j + get(&s.rejected))
        })
    }
}

/// OTLP logs, spans and data points straight into staging.
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
        let walk = request.walk();
        let checked = Checked {
            accepted: received - walk.malformed,
            rejected: walk.malformed,
            rejection: walk.rejection.clone(),
        };
        let (accepted, rejected) = (checked.accepted, checked.rejected);
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
        self.stage(SignalKind::Logs, received, checked, prepare).await
    }
}

impl Exporter<Traces> for EmbeddedExporter {
    async fn export(
        &self,
        request: Decoded<ExportTraceServiceRequest>,
    ) -> Result<ExportOutcome, ExportError> {
        let tables = |_: &ExportTraceServiceRequest| vec![RowTable::Traces];
        self.export_decoded(SignalKind::Traces, request, records::drop_malformed_spans, tables).await
    }
}

impl Exporter<Metrics> for EmbeddedExporter {
    async fn export(
        &self,
        request: Decoded<ExportMetricsServiceRequest>,
    ) -> Result<ExportOutcome, ExportError> {
        let tables = rows::metrics::tables_of;
        self.export_decoded(SignalKind::Metrics, request, records::drop_malformed_points, tables).await
    }
}

impl EmbeddedExporter {
    /// Stages a traces or metrics request, less the items `drop_malformed` removes, as a batch
    /// with rows for the tables `tables_of` names.
    async fn export_decoded<M: Message + Default + Send + 'static>(
        &self,
        kind: SignalKind,
        request: Decoded<M>,
        drop_malformed: fn(&mut M) -> Checked,
        tables_of: fn(&M) -> Vec<RowTable>,
    ) -> Result<ExportOutcome, ExportError> {
        let received = request.items();
        let bytes = request.bytes().clone();
        let mut message = request.into_message();
        let checked = drop_malformed(&mut message);
        let accepted = checked.accepted;
        let unchanged = checked.rejected == 0;
        let prepare = move || -> Result<Option<Batch>, ExportError> {
            if accepted == 0 {
                return Ok(None);
            }
            let tables = tables_of(&message);
            // A clean request is staged as the bytes it came as, without a copy.
            let batch = if unchanged {
                Batch::new(&bytes, accepted, None, now_micros())
            } else {
                Batch::new(&message.encode_to_vec(), accepted, None, now_micros())
            };
            Ok(Some(batch.holding(&tables)))
        };
        self.stage(kind, received, checked, prepare).await
    }

    /// Stages the batch `prepare` makes (off the async workers for a large request) and
    /// answers the export: OK, partial success for what `checked` rejected, or why staging
    /// refused it.
    async fn stage(
        &self,
        kind: SignalKind,
        received: u64,
        checked: Checked,
        prepare: impl FnOnce() -> Result<Option<Batch>, ExportError> + Send + 'static,
    ) -> Result<ExportOutcome, ExportError> {
        let totals = self.totals.of(kind);
        totals.received.fetch_add(received, Ordering::Relaxed);
        if let Some(full) = self.staging.refusing() {
            // Refused before its batch is compressed: at saturation, about half the exports.
            totals.rejected.fetch_add(received, Ordering::Relaxed);
            return Err(self.refusal(full).await);
        }
        let batch = if received > INLINE_CONVERSION_RECORDS {
            tokio::task::spawn_blocking(prepare)
                .await
                .map_err(|e| ExportError::Internal(format!("encoding the request failed: {e}")))??
        } else {
            prepare()?
        };
        if let Some(batch) = batch {
            if let Err(err) = self.staging.append(vec![batch]).await {
                totals.rejected.fetch_add(received, Ordering::Relaxed);
                return Err(self.refusal(err).await);
            }
            self.metrics.observe_staging(self.staging.counters());
        }
        totals.accepted.fetch_add(checked.accepted, Ordering::Relaxed);
        totals.rejected.fetch_add(checked.rejected, Ordering::Relaxed);
        Ok(if checked.rejected > 0 {
            ExportOutcome::partial(checked.rejected as i64, checked.rejection)
        } else {
            ExportOutcome::ok()
        })
    }

    /// The answer to an export staging refused.
    async fn refusal(&self, err: StagingError) -> ExportError {
        match err {
            StagingError::Full { .. } => {
                // Not ready until a flush makes room.
                self.health.add(Reason::StagingFull).await;
                ExportError::Overloaded { message: err.to_string(), retry_after: Duration::from_secs(5) }
            }
            StagingError::TooLarge { limit, .. } => ExportError::PayloadTooLarge { limit: limit.as_u64() },
            other => {
                tracing::error!(error = %other, "staging refused records");
                ExportError::Unavailable { message: other.to_string(), retry_after: Duration::from_secs(5) }
            }
        }
    }
}
