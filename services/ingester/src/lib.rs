//! The ingester: OTLP logs, traces and metrics in over gRPC and HTTP, out to one Kafka topic per
//! signal (`kafka.topic`, `kafka.traces_topic`, `kafka.metrics_topic`).
//!
//! ```text
//!  OTLP gRPC :4317 / HTTP :4318 --> producer::KafkaExporter (one per signal) --split.rs--> librdkafka --> topic
//!                                         ^ answered after acks=all delivery of every batch
//!  broker::watch: create the topics, probe metadata every 2 s --> health SERVING / NOT_SERVING
//!  admin: Flush = producer flush, Stats = counters (admin.rs), SIGUSR1 = flush
//! ```
//!
//! Records are keyed by `service.name` and carry an encoded `ExportLogsServiceRequest`,
//! `ExportTraceServiceRequest` or `ExportMetricsServiceRequest` (the OpenTelemetry Collector's
//! `otlp_proto` Kafka encoding) with headers `content-type: application/x-protobuf` and
//! `telemetry-lake-schema: otlp-logs-v1` (`otlp-traces-v1`, `otlp-metrics-v1`). A signal
//! switched off in `[signals]` is neither served nor given a topic. An export is answered OK
//! only once Kafka acknowledged all of it. Shutdown: health NOT_SERVING, stop accepting, drain
//! the exports in flight (each waits for its deliveries), flush the producer, return.

pub mod admin;
pub mod broker;
pub mod producer;
pub mod split;

use std::{ffi::CString, sync::Arc, time::Duration};

use anyhow::Context;
use prometheus_client::registry::Registry;
use rdkafka::ClientConfig;
use telemetry_lake_common::{
    admin::FlushTrigger,
    health::{Health, Reason},
    otlp::{Logs, Metrics, SignalKind, Traces},
    server::{self, BoundAddrs, Receivers, Service},
    settings::{KafkaSettings, Settings},
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{FlushState, IngesterAdmin},
    producer::{BrokerState, Counters, IngestContext, IngestProducer, KafkaExporter},
};

/// Extra time a flush gets beyond `message.timeout.ms`, after which every queued record has
/// been delivered or failed.
const FLUSH_GRACE: Duration = Duration::from_secs(5);

/// The `[kafka]` settings the ingester needs; the error names the key.
pub fn kafka_settings(settings: &Settings) -> Result<&KafkaSettings, String> {
    settings.mode.kafka().ok_or_else(|| {
        "kafka.brokers = \"\": the ingester needs at least one broker (set [kafka] brokers or \
         TELEMETRY_LAKE_KAFKA__BROKERS)"
            .to_string()
    })
}

/// librdkafka settings of the ingester's producer beyond the shared ones
/// (`telemetry_lake_common::kafka::producer_config`), used unless a `[kafka]` table sets them.
///
/// `message.copy.max.bytes = 0`: record values are not copied into the batch buffer before
/// compression, librdkafka compresses them where they are (the request's own bytes, produced
/// without a copy: `producer`). librdkafka's default copies values up to 64 KiB, which is every
/// record of a typical export; without that copy the ingester peaked at 46-52 MiB RSS instead of
/// 55-58 at saturation (bench/compare/results/ingester-saturation-2026-12-07.md).
const PRODUCER_DEFAULTS: [(&str, &str); 1] = [("message.copy.max.bytes", "0")];

/// The ingester's producer settings: the shared ones plus [`PRODUCER_DEFAULTS`].
pub fn producer_config(kafka: &KafkaSettings) -> ClientConfig {
    telemetry_lake_common::kafka::producer_config(kafka, "telemetry-lake-ingester", &PRODUCER_DEFAULTS)
}

/// Runs the ingester until `shutdown`, then drains, flushes the producer and returns.
/// `flush_signal` is notified on SIGUSR1.
pub async fn run(
    config: &Settings,
    shutdown: CancellationToken,
    flush_signal: Arc<Notify>,
    on_bound: impl FnOnce(BoundAddrs),
) -> anyhow::Result<()> {
    let kafka = kafka_settings(config).map_err(anyhow::Error::msg)?;
    let client_config = producer_config(kafka);
    let delivery_timeout = producer::delivery_timeout(&client_config);
    let flush_timeout = delivery_timeout + FLUSH_GRACE;
    let counters = Arc::new(Counters::default());
    let broker = Arc::new(BrokerState::default());
    let producer: IngestProducer = client_config
        .create_with_context(IngestContext::new(counters.clone(), broker.clone()))
        .context("cannot create the kafka producer")?;
    let producer = Arc::new(producer);

    let health = Health::default();
    health.add(Reason::KafkaUnreachable).await;
    let served: Vec<SignalKind> =
        SignalKind::ALL.into_iter().filter(|&signal| config.signals.serves(signal)).collect();
    if served.is_empty() {
        anyhow::bail!(
            "[signals] logs, traces and metrics are all false: the ingester would take nothing; switch at \
             least one on"
        );
    }
    let mut registry = Registry::default();
    admin::register_metrics(&mut registry, counters.clone(), broker.clone(), served.clone());

    let topics = served.iter().map(|&signal| kafka.topic_of(signal).1.to_owned()).collect();
    let watcher =
        tokio::spawn(broker::watch(kafka.clone(), topics, broker.clone(), health.clone(), shutdown.clone()));
    let exporter = |signal: SignalKind| -> anyhow::Result<Arc<KafkaExporter>> {
        let (key, topic) = kafka.topic_of(signal);
        Ok(Arc::new(KafkaExporter {
            producer: producer.clone(),
            topic: CString::new(topic).map_err(|_| anyhow::anyhow!("{key} = {topic:?} holds a NUL byte"))?,
            signal,
            budget: producer::payload_budget(&kafka.producer),
            counters: counters.clone(),
            broker: broker.clone(),
            delivery_deadline: delivery_timeout + Duration::from_secs(1),
        }))
    };
    let receivers = Receivers::new(config, &mut registry)
        .serve::<Logs, _>(exporter(SignalKind::Logs)?)
        .serve::<Traces, _>(exporter(SignalKind::Traces)?)
        .serve::<Metrics, _>(exporter(SignalKind::Metrics)?);
    let admin = Arc::new(IngesterAdmin {
        producer,
        counters,
        served,
        health: health.clone(),
        flush_timeout,
        state: FlushState::default(),
    });
    let signal_admin = admin.clone();
    let signal_task = tokio::spawn(async move {
        loop {
            flush_signal.notified().await;
            let _ = signal_admin.flush_producer(FlushTrigger::Signal).await;
        }
    });

    let served = server::serve(
        config,
        Service { receivers, admin: admin.clone(), health, registry },
        shutdown,
        on_bound,
    )
    .await;
    signal_task.abort();
    // A failed Kafka authentication at start-up stopped the server: the ingester failed to start.
    if let Ok(Err(error)) = watcher.await {
        return Err(anyhow::Error::msg(error));
    }

    // Drained: every answered export is delivered; wait for what abandoned exports queued.
    if let Err(err) = admin.flush_producer(FlushTrigger::Shutdown).await {
        tracing::warn!(error = %err, "final producer flush incomplete; no acknowledged record is affected");
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_values_are_compressed_where_they_are_unless_configured() {
        let kafka = producer::tests::kafka_settings("k:9092", &[]);
        assert_eq!(producer_config(&kafka).get("message.copy.max.bytes"), Some("0"));
        let kafka = producer::tests::kafka_settings("k:9092", &[("message.copy.max.bytes", "65535")]);
        assert_eq!(producer_config(&kafka).get("message.copy.max.bytes"), Some("65535"));
    }
}
