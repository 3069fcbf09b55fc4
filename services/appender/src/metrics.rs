//! Prometheus metrics of the appender (the receivers add their own OTLP counters).
//!
//! `appender_*`: flushes, commits (`appender_table_rows_committed{table}` per table) and staging
//! ([`AppenderMetrics`]); in Kafka mode also
//! `appender_kafka_messages_total`, `appender_dead_letters_total`,
//! `appender_dead_lettered_records_total` and `appender_dead_letter_failures_total`, read from
//! the Kafka source's counters at each scrape ([`register_source`]).

use std::sync::{Arc, atomic::Ordering};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::Histogram,
    },
    registry::Registry,
};
use telemetry_lake_admin_proto::v1::FlushResponse;
use telemetry_lake_proto::RowTable;

use crate::{source::kafka::SourceCounters, staging::StagingCounters};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// A table by its default name (`logs`, `traces`, `metrics_sum`, …), whatever it is called.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: &'static str,
}

pub struct AppenderMetrics {
    pub flushes: Family<OutcomeLabel, Counter>,
    pub flush_duration: Histogram,
    pub records_committed: Counter,
    pub bytes_committed: Counter,
    pub snapshots: Counter,
    /// Rows committed per table.
    pub table_rows_committed: Family<TableLabel, Counter>,
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
            table_rows_committed: Family::default(),
            staged_records: Gauge::default(),
            staged_bytes: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("appender");
        r.register("flushes", "Flushes by outcome", metrics.flushes.clone());
        r.register("flush_duration_seconds", "Time a flush took", metrics.flush_duration.clone());
        r.register("records_committed", "Records committed to Iceberg", metrics.records_committed.clone());
        r.register("bytes_committed", "Staged bytes committed to Iceberg", metrics.bytes_committed.clone());
        r.register("snapshots", "Iceberg snapshots committed, to every table", metrics.snapshots.clone());
        r.register(
            "table_rows_committed",
            "Rows committed to each Iceberg table (by its default name)",
            metrics.table_rows_committed.clone(),
        );
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
    }

    /// Counts a snapshot committed to `table` with `rows` rows.
    pub fn record_commit(&self, table: RowTable, rows: u64) {
        self.snapshots.inc();
        self.table_rows_committed.get_or_create(&TableLabel { table: table.default_name() }).inc_by(rows);
    }

    /// Rows committed to `table` so far.
    pub fn rows_committed(&self, table: RowTable) -> u64 {
        self.table_rows_committed
            .get(&TableLabel { table: table.default_name() })
            .map_or(0, |rows| rows.get())
    }
}

/// The Kafka source's counters, encoded at each scrape (the same numbers `Stats` shows).
#[derive(Debug)]
struct SourceCollector(Arc<SourceCounters>);

impl Collector for SourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.0;
        let counters = [
            ("appender_kafka_messages", "Kafka messages consumed", &c.messages),
            (
                "appender_dead_letters",
                "Dead letters delivered to the dead-letter topic (or counted and skipped without one)",
                &c.dead_lettered,
            ),
            ("appender_dead_lettered_records", "Log records in the dead letters", &c.dead_lettered_records),
            (
                "appender_dead_letter_failures",
                "Dead-letter deliveries that failed (each is retried; consumption waits meanwhile)",
                &c.dead_letter_failures,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
        }
        Ok(())
    }
}

/// Adds the Kafka source's counters to `registry` (Kafka mode).
pub fn register_source(registry: &mut Registry, counters: Arc<SourceCounters>) {
    registry.register_collector(Box::new(SourceCollector(counters)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kafka_source_counters_are_exported() {
        let mut registry = Registry::default();
        let counters = Arc::new(SourceCounters::default());
        register_source(&mut registry, counters.clone());
        counters.dead_lettered.fetch_add(2, Ordering::Relaxed);
        counters.dead_lettered_records.fetch_add(5, Ordering::Relaxed);
        counters.dead_letter_failures.fetch_add(1, Ordering::Relaxed);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "appender_kafka_messages_total 0",
            "appender_dead_letters_total 2",
            "appender_dead_lettered_records_total 5",
            "appender_dead_letter_failures_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }
}
