//! Kafka reachability: creates the topic, then keeps health in step with the brokers.
//!
//! ```text
//!  start-up: AdminClient CreateTopics(kafka.topic, kafka.partitions, kafka.replication_factor)
//!            (TopicAlreadyExists is fine), retried every probe interval until it succeeds
//!  then:     metadata probe of the topic every 2 s, or at once when librdkafka reports every
//!            broker down --> BrokerState::ready + health SERVING / NOT_SERVING
//! ```
//!
//! Health starts NOT_SERVING and turns SERVING only once the topic exists and a broker
//! answered, so a load balancer sends nothing before Kafka can take it. Once shutdown starts
//! the watcher stops and never turns health back on.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::{KafkaError, RDKafkaErrorCode},
    producer::Producer,
};
use telemetry_lake_common::{config::KafkaConfig, health::Health};
use tokio_util::sync::CancellationToken;

use crate::producer::{BrokerState, IngestProducer};

const PROBE_INTERVAL: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// librdkafka may report brokers down many times a second; probes stay this far apart.
const MIN_PROBE_GAP: Duration = Duration::from_millis(500);

/// Creates the topic unless it exists; returns the partition count it has.
pub async fn ensure_topic(kafka: &KafkaConfig, producer: &Arc<IngestProducer>) -> Result<usize, String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", "telemetry-lake-ingester-admin")
        .create()
        .map_err(|e| format!("cannot create the kafka admin client: {e}"))?;
    let topic =
        NewTopic::new(&kafka.topic, kafka.partitions, TopicReplication::Fixed(kafka.replication_factor));
    let options =
        AdminOptions::new().request_timeout(Some(PROBE_TIMEOUT)).operation_timeout(Some(PROBE_TIMEOUT));
    let results = admin.create_topics([&topic], &options).await.map_err(|e| format!("create topic: {e}"))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(
                topic = %name,
                partitions = kafka.partitions,
                replication_factor = kafka.replication_factor,
                "created kafka topic"
            ),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(format!("cannot create topic {name}: {code}")),
        }
    }
    let partitions = probe(producer, &kafka.topic).await?;
    if partitions != kafka.partitions as usize {
        tracing::warn!(
            topic = %kafka.topic,
            partitions,
            configured = kafka.partitions,
            "the topic exists with another partition count than kafka.partitions; keeping it"
        );
    }
    tracing::info!(topic = %kafka.topic, partitions, "kafka topic ready");
    Ok(partitions)
}

/// Asks a broker for the topic's metadata; the partition count if it has any.
pub async fn probe(producer: &Arc<IngestProducer>, topic: &str) -> Result<usize, String> {
    let producer = producer.clone();
    let name = topic.to_owned();
    let metadata = tokio::task::spawn_blocking(move || {
        let metadata = producer.client().fetch_metadata(Some(&name), PROBE_TIMEOUT)?;
        let topic = metadata.topics().iter().find(|t| t.name() == name);
        match topic {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len()),
            Some(t) => Err(KafkaError::MetadataFetch(
                t.error().map(RDKafkaErrorCode::from).unwrap_or(RDKafkaErrorCode::UnknownTopicOrPartition),
            )),
            None => Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition)),
        }
    })
    .await
    .map_err(|e| format!("metadata probe failed: {e}"))?;
    metadata.map_err(|e| format!("no kafka broker answered for topic {topic}: {e}"))
}

/// Keeps `state` and `health` in step with Kafka until `shutdown`.
pub async fn watch(
    kafka: KafkaConfig,
    producer: Arc<IngestProducer>,
    state: Arc<BrokerState>,
    health: Health,
    shutdown: CancellationToken,
) {
    let mut topic_ready = false;
    let mut last_error = String::new();
    loop {
        let outcome = if topic_ready {
            probe(&producer, &kafka.topic).await.map(|_| ())
        } else {
            ensure_topic(&kafka, &producer).await.map(|_| {
                topic_ready = true;
            })
        };
        if shutdown.is_cancelled() {
            return;
        }
        match outcome {
            Ok(()) => {
                state.ready.store(true, Ordering::Relaxed);
                health.set_serving(true, "kafka reachable").await;
                last_error.clear();
            }
            Err(error) => {
                state.ready.store(false, Ordering::Relaxed);
                if error != last_error {
                    tracing::warn!(error = %error, brokers = %kafka.brokers, "kafka unreachable");
                    last_error = error;
                }
                health.set_serving(false, "no kafka broker reachable").await;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = state.changed.notified() => tokio::time::sleep(MIN_PROBE_GAP).await,
        }
    }
}
