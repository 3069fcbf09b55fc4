//! Prometheus metrics of the appender (the receivers add their own OTLP counters).

use std::sync::atomic::Ordering;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use telemetry_lake_admin_proto::v1::FlushResponse;

use crate::staging::StagingCounters;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

pub struct AppenderMetrics {
    pub flushes: Family<OutcomeLabel, Counter>,
    pub flush_duration: Histogram,
    pub records_committed: Counter,
    pub bytes_committed: Counter,
    pub snapshots: Counter,
    pub staged_records: Gauge,
    pub staged_bytes: Gauge,
}

impl AppenderMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            flushes: Family::default(),
            flush_duration: Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            records_committed: Counter::default(),
            bytes_committed: Counter::default(),
            snapshots: Counter::default(),
            staged_records: Gauge::default(),
            staged_bytes: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("appender");
        r.register("flushes", "Flushes by outcome", metrics.flushes.clone());
        r.register("flush_duration_seconds", "Time a flush took", metrics.flush_duration.clone());
        r.register("records_committed", "Records committed to Iceberg", metrics.records_committed.clone());
        r.register("bytes_committed", "Staged bytes committed to Iceberg", metrics.bytes_committed.clone());
        r.register("snapshots", "Iceberg snapshots committed", metrics.snapshots.clone());
        r.register("staged_records", "Records staged and not yet committed", metrics.staged_records.clone());
        r.register("staged_bytes", "Bytes staged and not yet committed", metrics.staged_bytes.clone());
        metrics
    }

    pub fn observe_staging(&self, counters: &StagingCounters) {
        self.staged_records.set(counters.records.load(Ordering::Relaxed) as i64);
        self.staged_bytes.set(counters.bytes.load(Ordering::Relaxed) as i64);
    }

    /// Flushes so far with that outcome. The family's guard is dropped before returning: holding
    /// it while creating another label would deadlock.
    pub fn flush_count(&self, ok: bool) -> u64 {
        self.flushes.get_or_create(&Self::outcome(ok)).get()
    }

    fn outcome(ok: bool) -> OutcomeLabel {
        OutcomeLabel { outcome: if ok { "ok" } else { "failed" } }
    }

    /// Counts failed flushes and flushes that committed something.
    pub fn record_flush(&self, ok: bool, done: &FlushResponse) {
        if !ok || done.records > 0 {
            self.flushes.get_or_create(&Self::outcome(ok)).inc();
        }
        self.records_committed.inc_by(done.records);
        self.bytes_committed.inc_by(done.bytes);
        if done.snapshot_id != 0 {
            self.snapshots.inc();
        }
    }
}
