//! Dead letters: what the appender cannot stage goes to the dead-letter topic
//! (`kafka.dead_letter_topic`, by default the topic's name plus `-dlq`) with headers saying why
//! (`telemetry-lake-error`) and where it came from (`telemetry-lake-source`: topic/partition/
//! offset), and is counted in `Stats` and `/metrics`. A dead letter is a whole message (one that
//! does not decode, or is larger than staging takes in one piece) sent unchanged, or the
//! malformed items of a message (log records, spans, data points), as an encoded request of the
//! message's type holding just them.
//!
//! [`DeadLetters::send`] reports whether Kafka acknowledged the dead letter; the consumer moves
//! past a message only once it did, so a dead letter is never skipped (it may be sent twice if
//! the appender dies between the delivery and the next commit). The producer is idempotent with
//! `acks=all`, like the ingester's (`telemetry_lake_common::kafka`), and a delivery takes at
//! most [`MAX_DELIVERY_TIMEOUT`] (`message.timeout.ms`, lowered to it), so the consumer never
//! waits on a dead letter for librdkafka's 300 s without saying so.
//! With `kafka.dead_letters = false` there is no topic: the letter is counted and skipped.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use rdkafka::{
    ClientConfig,
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use telemetry_lake_common::{kafka, settings::KafkaSettings};
use tokio::runtime::Handle;

use super::SourceCounters;

/// The longest a dead-letter delivery may take before it counts as failed (and is retried).
pub(super) const MAX_DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// One dead letter, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DeadLetter {
    /// Where the message came from.
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) key: Option<Vec<u8>>,
    /// The whole message, or a request of its type holding only its malformed items.
    pub(super) payload: Vec<u8>,
    /// Why it cannot be staged.
    pub(super) reason: String,
    /// Items (log records, spans, data points) in `payload`; 0 when it does not decode.
    pub(super) records: u64,
}

impl DeadLetter {
    fn source(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

pub(super) struct DeadLetters {
    producer: Option<(FutureProducer, String)>,
    timeout: Duration,
    counters: Arc<SourceCounters>,
}

/// The dead-letter producer's delivery timeout: `message.timeout.ms` as configured (librdkafka's
/// 0, "no limit", included), at most [`MAX_DELIVERY_TIMEOUT`].
fn delivery_timeout(config: &ClientConfig) -> Duration {
    match config.get("message.timeout.ms").and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(ms) if ms > 0 => Duration::from_millis(ms).min(MAX_DELIVERY_TIMEOUT),
        _ => MAX_DELIVERY_TIMEOUT,
    }
}

impl DeadLetters {
    pub(super) fn new(config: &KafkaSettings, counters: Arc<SourceCounters>) -> Result<Self, KafkaError> {
        let mut producer_config = kafka::producer_config(config, "telemetry-lake-appender-dead-letters", &[]);
        let timeout = delivery_timeout(&producer_config);
        producer_config.set("message.timeout.ms", timeout.as_millis().to_string());
        let producer = match &config.dead_letter_topic {
            None => None,
            Some(topic) => Some((producer_config.create::<FutureProducer>()?, topic.clone())),
        };
        Ok(Self { producer, timeout, counters })
    }

    /// Sends `letter` to the dead-letter topic and waits for Kafka's acknowledgement, at most
    /// the delivery timeout; counts it once delivered (or at once when there is no topic).
    /// `Err` says why it was not delivered: the caller must not move past it.
    pub(super) fn send(&self, handle: &Handle, letter: &DeadLetter) -> Result<(), String> {
        let source = letter.source();
        let Some((producer, topic)) = &self.producer else {
            self.count(letter);
            tracing::warn!(%source, reason = %letter.reason, records = letter.records, "record not stageable, counted and skipped (kafka.dead_letters = false)");
            return Ok(());
        };
        let headers = OwnedHeaders::new()
            .insert(Header { key: "telemetry-lake-error", value: Some(letter.reason.as_str()) })
            .insert(Header { key: "telemetry-lake-source", value: Some(source.as_str()) });
        let mut record = FutureRecord::to(topic).payload(letter.payload.as_slice()).headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key.as_slice());
        }
        let delivery = producer.send(record, self.timeout);
        // librdkafka settles a delivery by message.timeout.ms; the extra seconds cover a batch
        // still in flight to a dead broker, which the idempotent producer settles first.
        // (The timer is made inside the runtime: this thread is not one of its threads.)
        let limit = self.timeout + Duration::from_secs(5);
        let waited = handle.block_on(async { tokio::time::timeout(limit, delivery).await });
        let failure = match waited {
            Ok(Ok(_)) => {
                self.count(letter);
                tracing::warn!(%source, reason = %letter.reason, records = letter.records, dead_letter_topic = %topic, "record not stageable, sent to the dead-letter topic");
                return Ok(());
            }
            Ok(Err((error, _))) => format!("dead-letter delivery of {source} to {topic} failed: {error}"),
            Err(_) => format!(
                "dead-letter delivery of {source} to {topic} was not acknowledged within {:?} \
                 (message.timeout.ms, at most {MAX_DELIVERY_TIMEOUT:?})",
                self.timeout
            ),
        };
        self.counters.dead_letter_failures.fetch_add(1, Ordering::Relaxed);
        Err(failure)
    }

    fn count(&self, letter: &DeadLetter) {
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.counters.dead_lettered_records.fetch_add(letter.records, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn settings(brokers: &str, producer: &[(&str, &str)]) -> KafkaSettings {
        let mut config = telemetry_lake_common::config::Config::default();
        config.kafka.brokers = brokers.into();
        config.kafka.producer = producer.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        let settings = telemetry_lake_common::settings::Settings::from_config(config).expect("settings");
        settings.mode.kafka().expect("kafka mode").clone()
    }

    /// `Handle::block_on` drives timers only on a multi-thread runtime (the appender's).
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
    }

    fn letter() -> DeadLetter {
        DeadLetter {
            topic: "otel-logs".into(),
            partition: 2,
            offset: 41,
            key: Some(b"svc".to_vec()),
            payload: b"not protobuf".to_vec(),
            reason: "trace_id must be 16 bytes, got 3".into(),
            records: 3,
        }
    }

    #[test]
    fn the_delivery_timeout_is_bounded() {
        let timeout = |pairs: &[(&str, &str)]| {
            delivery_timeout(&kafka::producer_config(&settings("k:9092", pairs), "t", &[]))
        };
        assert_eq!(timeout(&[]), MAX_DELIVERY_TIMEOUT, "our 30 s default is lowered");
        assert_eq!(timeout(&[("message.timeout.ms", "300000")]), MAX_DELIVERY_TIMEOUT);
        assert_eq!(
            timeout(&[("message.timeout.ms", "0")]),
            MAX_DELIVERY_TIMEOUT,
            "0 is no limit in librdkafka"
        );
        assert_eq!(timeout(&[("message.timeout.ms", "1500")]), Duration::from_millis(1500));
    }

    #[test]
    fn an_undeliverable_dead_letter_fails_within_the_timeout_and_is_not_counted_as_sent() {
        let runtime = runtime();
        let counters = Arc::new(SourceCounters::default());
        // Nothing listens on port 1; the user's 300 s would block the consumer for 5 minutes.
        let dead_letters =
            DeadLetters::new(&settings("127.0.0.1:1", &[("message.timeout.ms", "300000")]), counters.clone())
                .unwrap();
        assert_eq!(dead_letters.timeout, MAX_DELIVERY_TIMEOUT);
        let quick =
            DeadLetters::new(&settings("127.0.0.1:1", &[("message.timeout.ms", "700")]), counters.clone())
                .unwrap();
        assert_eq!(quick.timeout, Duration::from_millis(700));
        let started = Instant::now();
        let error = quick.send(runtime.handle(), &letter()).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(7), "took {:?}", started.elapsed());
        assert!(error.contains("otel-logs/2/41") && error.contains("otel-logs-dlq"), "{error}");
        assert_eq!(counters.dead_letter_failures.load(Ordering::Relaxed), 1);
        assert_eq!(counters.dead_lettered.load(Ordering::Relaxed), 0);
        assert_eq!(counters.dead_lettered_records.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn without_a_topic_a_dead_letter_is_counted_and_skipped() {
        let mut config = settings("127.0.0.1:1", &[]);
        config.dead_letter_topic = None;
        let counters = Arc::new(SourceCounters::default());
        let runtime = runtime();
        let dead_letters = DeadLetters::new(&config, counters.clone()).unwrap();
        dead_letters.send(runtime.handle(), &letter()).unwrap();
        assert_eq!(counters.dead_lettered.load(Ordering::Relaxed), 1);
        assert_eq!(counters.dead_lettered_records.load(Ordering::Relaxed), 3);
    }
}
