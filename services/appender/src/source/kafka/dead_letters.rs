//! Dead letters: messages the appender cannot stage go, unchanged, to the dead-letter topic
//! (`kafka.dead_letter_topic`, by default the topic's name plus `-dlq`) with headers saying why
//! and where they came from, and are counted in `Stats` either way. The producer is idempotent
//! with `acks=all`, like the ingester's (`telemetry_lake_common::kafka`).

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use rdkafka::{
    Message,
    error::KafkaError,
    message::{BorrowedMessage, Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use telemetry_lake_common::{kafka, settings::KafkaSettings};
use tokio::runtime::Handle;

use super::SourceCounters;

pub(super) struct DeadLetters {
    producer: Option<(FutureProducer, String)>,
    counters: Arc<SourceCounters>,
}

impl DeadLetters {
    pub(super) fn new(config: &KafkaSettings, counters: Arc<SourceCounters>) -> Result<Self, KafkaError> {
        let producer = match &config.dead_letter_topic {
            None => None,
            Some(topic) => Some((
                kafka::producer_config(config, "telemetry-lake-appender-dead-letters")
                    .create::<FutureProducer>()?,
                topic.clone(),
            )),
        };
        Ok(Self { producer, counters })
    }

    /// Sends `message` to the dead-letter topic (or only counts it when there is none) and
    /// waits for the delivery.
    pub fn send(&self, handle: &Handle, message: &BorrowedMessage<'_>, reason: &str) {
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            partition = message.partition(),
            offset = message.offset(),
            reason,
            "undecodable record sent to the dead-letter topic"
        );
        let Some((producer, topic)) = &self.producer else { return };
        let source = format!("{}/{}/{}", message.topic(), message.partition(), message.offset());
        let headers = OwnedHeaders::new()
            .insert(Header { key: "telemetry-lake-error", value: Some(reason) })
            .insert(Header { key: "telemetry-lake-source", value: Some(source.as_str()) });
        let mut record =
            FutureRecord::to(topic).payload(message.payload().unwrap_or_default()).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        let delivered = handle.block_on(producer.send(record, Duration::from_secs(30)));
        if let Err((e, _)) = delivered {
            tracing::error!(error = %e, %source, "dead-letter delivery failed; the record is counted and skipped");
        }
    }
}
