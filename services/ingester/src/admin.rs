//! The ingester's admin plane: `Flush` waits for the producer, `Stats` reads counters, and
//! `/metrics` exports the same counters.
//!
//! `Stats` (mode `"ingester"`): `buffer_records` / `buffer_size_bytes` are the records and
//! encoded bytes handed to the producer and not yet acknowledged (or failed) by Kafka;
//! `last_flush` / `time_since_last_flush_seconds` the last `Flush` call (admin, signal or
//! shutdown), which waits until every queued record is delivered; the `ingester` section
//! ([`IngesterStats`]) the running totals and the producer's queue depth (Kafka messages
//! handed to the producer and not yet acknowledged or failed; also the
//! `ingester_producer_queue_messages` gauge of `/metrics`). Records are the items of every signal
//! together (log records, spans, data points); `signals` and the `signal` label of
//! `ingester_records_*` have them per signal served.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use telemetry_lake_admin_proto::v1::{
    FlushResponse, IngesterStats, LastFlush, SignalStats, StatsResponse, stats_response::Service,
};
use telemetry_lake_common::{
    admin::{AdminHandler, FlushTrigger},
    health::Health,
    otlp::ExportError,
};

use telemetry_lake_common::otlp::SignalKind;

use crate::producer::{self, BrokerState, Counters, IngestProducer};

/// The last flush and when the last successful one ended.
pub struct FlushState {
    last: Mutex<LastFlush>,
    last_success: Mutex<Instant>,
    flushes: AtomicU64,
}

impl Default for FlushState {
    fn default() -> Self {
        Self {
            last: Mutex::new(LastFlush { outcome: "none".into(), ..Default::default() }),
            last_success: Mutex::new(Instant::now()),
            flushes: AtomicU64::new(0),
        }
    }
}

/// Flush and Stats for the ingester.
pub struct IngesterAdmin {
    pub producer: Arc<IngestProducer>,
    pub counters: Arc<Counters>,
    /// The signals served, whose counters `Stats` shows.
    pub served: Vec<SignalKind>,
    pub health: Health,
    pub flush_timeout: Duration,
    pub state: FlushState,
}

impl IngesterAdmin {
    /// Waits until every record queued so far is acknowledged (or failed) by Kafka.
    pub async fn flush_producer(&self, trigger: FlushTrigger) -> Result<FlushResponse, ExportError> {
        let started = Instant::now();
        let records = self.counters.records_in_flight.load(Ordering::Relaxed);
        let bytes = self.counters.bytes_in_flight.load(Ordering::Relaxed);
        let result = producer::flush(self.producer.clone(), self.flush_timeout).await;
        let duration = started.elapsed().as_secs_f64();
        let finished = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let mut last = LastFlush {
            outcome: "ok".into(),
            records,
            bytes,
            duration_seconds: duration,
            finished_at_unix_seconds: finished,
            trigger: trigger.as_str().into(),
            ..Default::default()
        };
        let answer = match result {
            Ok(()) => {
                *self.state.last_success.lock().expect("flush state lock") = Instant::now();
                self.state.flushes.fetch_add(1, Ordering::Relaxed);
                tracing::info!(trigger = trigger.as_str(), records, duration, "producer flushed");
                Ok(FlushResponse { records, bytes, duration_seconds: duration, ..Default::default() })
            }
            Err(error) => {
                last.outcome = "failed".into();
                last.error = format!("kafka did not acknowledge every queued record: {error}");
                tracing::warn!(trigger = trigger.as_str(), error = %error, records, "producer flush failed");
                Err(ExportError::Unavailable {
                    message: last.error.clone(),
                    retry_after: Duration::from_secs(5),
                })
            }
        };
        *self.state.last.lock().expect("flush state lock") = last;
        answer
    }
}

impl AdminHandler for IngesterAdmin {
    async fn flush(&self, trigger: FlushTrigger) -> Result<FlushResponse, ExportError> {
        self.flush_producer(trigger).await
    }

    async fn stats(&self) -> StatsResponse {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        let since = *self.state.last_success.lock().expect("flush state lock");
        let last_flush = self.state.last.lock().expect("flush state lock").clone();
        let not_serving_reasons = self.health.reasons().await.into_iter().map(String::from).collect();
        StatsResponse {
            mode: "ingester".into(),
            buffer_records: get(&c.records_in_flight),
            buffer_size_bytes: get(&c.bytes_in_flight),
            time_since_last_flush_seconds: since.elapsed().as_secs_f64(),
            last_flush: Some(last_flush),
            serving: self.health.is_serving(),
            not_serving_reasons,
            // The listeners' refusals, added by the common admin plane.
            refusals: Vec::new(),
            service: Some(Service::Ingester(IngesterStats {
                records_received: get(&c.records_received),
                records_accepted: get(&c.records_accepted),
                records_rejected: get(&c.records_rejected),
                records_delivered: get(&c.records_delivered),
                bytes_delivered: get(&c.bytes_delivered),
                messages_delivered: get(&c.messages_delivered),
                delivery_errors: get(&c.delivery_errors),
                queue_full: get(&c.queue_full),
                producer_queue_messages: get(&c.messages_in_flight),
                flushes: get(&self.state.flushes),
                signals: self
                    .served
                    .iter()
                    .map(|&signal| {
                        let s = c.signal(signal);
                        SignalStats {
                            signal: signal.name().into(),
                            received: get(&s.received),
                            accepted: get(&s.accepted),
                            rejected: get(&s.rejected),
                            delivered: get(&s.delivered),
                        }
                    })
                    .collect(),
            })),
        }
    }
}

/// The ingester's `/metrics`, read from [`Counters`] and the broker state at scrape time.
struct IngesterCollector {
    counters: Arc<Counters>,
    broker: Arc<BrokerState>,
    served: Vec<SignalKind>,
}

/// Which counter of a signal's a metric shows.
type SignalField = fn(&producer::SignalCounters) -> &AtomicU64;

#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
struct SignalLabel {
    signal: &'static str,
}

impl std::fmt::Debug for IngesterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngesterCollector").field("counters", &self.counters).finish_non_exhaustive()
    }
}

impl Collector for IngesterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let per_signal: [(&str, &str, SignalField); 2] = [
            (
                "ingester_kafka_records_delivered",
                "Items (log records, spans, data points) acknowledged by Kafka, by signal",
                |s| &s.delivered,
            ),
            (
                "ingester_records_rejected",
                "Items (log records, spans, data points) refused by the ingester, by signal",
                |s| &s.rejected,
            ),
        ];
        for (name, help, field) in per_signal {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for &signal in &self.served {
                let metric = ConstCounter::new(get(field(c.signal(signal))));
                metric.encode(family.encode_family(&SignalLabel { signal: signal.name() })?)?;
            }
        }
        let counters: [(&str, &str, u64); 4] = [
            (
                "ingester_kafka_bytes_delivered",
                "Encoded bytes acknowledged by Kafka",
                get(&c.bytes_delivered),
            ),
            ("ingester_kafka_messages_delivered", "Kafka messages acknowledged", get(&c.messages_delivered)),
            (
                "ingester_kafka_delivery_errors",
                "Kafka messages whose delivery failed",
                get(&c.delivery_errors),
            ),
            (
                "ingester_producer_queue_full",
                "Exports refused because the producer queue was full",
                get(&c.queue_full),
            ),
        ];
        for (name, help, value) in counters {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        let gauges: [(&str, &str, i64); 4] = [
            (
                "ingester_records_in_flight",
                "Items handed to the producer, not yet acknowledged",
                get(&c.records_in_flight) as i64,
            ),
            (
                "ingester_bytes_in_flight",
                "Encoded bytes handed to the producer, not yet acknowledged",
                get(&c.bytes_in_flight) as i64,
            ),
            (
                "ingester_producer_queue_messages",
                "Kafka messages handed to the producer, not yet acknowledged or failed",
                get(&c.messages_in_flight) as i64,
            ),
            (
                "ingester_kafka_ready",
                "1 when the topic exists and a broker answers",
                i64::from(self.broker.ready.load(Ordering::Relaxed)),
            ),
        ];
        for (name, help, value) in gauges {
            let metric = ConstGauge::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        Ok(())
    }
}

/// Registers the ingester's metrics in `registry`; per-signal series for the `served` signals.
pub fn register_metrics(
    registry: &mut Registry,
    counters: Arc<Counters>,
    broker: Arc<BrokerState>,
    served: Vec<SignalKind>,
) {
    registry.register_collector(Box::new(IngesterCollector { counters, broker, served }));
}

#[cfg(test)]
mod tests {

    use telemetry_lake_common::otlp::{Exporter, Logs};

    use super::*;
    use crate::producer::{IngestContext, KafkaExporter, tests::request};

    /// Records queued for a broker that never answers show as the producer's queue depth in
    /// `Stats`, beside the records in flight, and leave it once their delivery fails.
    #[tokio::test]
    async fn stats_report_the_producer_queue_depth() {
        let kafka = crate::producer::tests::kafka_settings("127.0.0.1:1", &[("message.timeout.ms", "1500")]);
        let config = telemetry_lake_common::kafka::producer_config(&kafka, "t", &[]);
        let counters = Arc::new(Counters::default());
        let broker = Arc::new(BrokerState::default());
        broker.ready.store(true, Ordering::Relaxed);
        let producer: Arc<IngestProducer> = Arc::new(
            config.create_with_context(IngestContext::new(counters.clone(), broker.clone())).unwrap(),
        );
        let exporter = Arc::new(KafkaExporter {
            producer: producer.clone(),
            topic: c"otel-logs".into(),
            signal: SignalKind::Logs,
            budget: 900_000,
            counters: counters.clone(),
            broker,
            delivery_deadline: Duration::from_secs(3),
        });
        let mut registry = Registry::default();
        register_metrics(
            &mut registry,
            counters.clone(),
            Arc::new(BrokerState::default()),
            vec![SignalKind::Logs, SignalKind::Traces],
        );
        let admin = IngesterAdmin {
            producer,
            counters,
            served: vec![SignalKind::Logs, SignalKind::Traces],
            health: Health::default(),
            flush_timeout: Duration::from_secs(3),
            state: FlushState::default(),
        };
        let ingester = |stats: StatsResponse| match stats.service {
            Some(Service::Ingester(ingester)) => (stats.buffer_records, ingester),
            other => panic!("not the ingester's stats: {other:?}"),
        };
        assert_eq!(ingester(admin.stats().await).1.producer_queue_messages, 0);

        let export = tokio::spawn({
            let exporter = exporter.clone();
            async move { Exporter::<Logs>::export(&*exporter, request(&["a", "b", "c"])).await }
        });
        let mut stats = ingester(admin.stats().await);
        for _ in 0..100 {
            if stats.1.producer_queue_messages > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            stats = ingester(admin.stats().await);
        }
        assert_eq!(stats.1.producer_queue_messages, 3, "one message per service");
        assert_eq!(stats.0, 3);

        let failed = export.await.unwrap().unwrap_err();
        assert_eq!(failed.grpc_code(), tonic::Code::Unavailable, "{failed}");
        // The delivery callback settles the counts before it answers the export.
        let (buffered, stats) = ingester(admin.stats().await);
        assert_eq!(stats.producer_queue_messages, 0);
        assert_eq!(buffered, 0);
        assert_eq!(stats.delivery_errors, 3, "three delivery errors");
        let per_signal: Vec<_> = stats
            .signals
            .iter()
            .map(|s| (s.signal.as_str(), s.received, s.accepted, s.rejected, s.delivered))
            .collect();
        assert_eq!(per_signal, [("logs", 3, 0, 3, 0), ("traces", 0, 0, 0, 0)]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("ingester_records_rejected_total{signal=\"logs\"} 3"), "{text}");
        assert!(text.contains("ingester_kafka_records_delivered_total{signal=\"traces\"} 0"), "{text}");
        assert!(!text.contains("signal=\"metrics\""), "only the signals served: {text}");
    }
}
