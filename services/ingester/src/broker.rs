//! Kafka reachability: creates the topics, then keeps health in step with the brokers.
//!
//! ```text
//!  start-up: check access (common's check_access), then create the topic of every signal served
//!            (kafka.topic, kafka.traces_topic, kafka.metrics_topic) with kafka.partitions
//!            partitions (common's ensure_topics; an existing topic is fine),
//!            retried every probe interval until it succeeds; a failed authentication (a wrong
//!            SASL password) or settings librdkafka refuses are not retried: watch returns the
//!            error and stops the ingester
//!  then:     metadata probe of the topics every 2 s, or at once when librdkafka reports every
//!            broker down --> BrokerState::ready + health SERVING / NOT_SERVING
//! ```
//!
//! Probes go through a metadata client of their own, replaced after [`FRESH_CLIENT_AFTER`]
//! failures in a row: after a broker was frozen (SIGSTOP, a stalled VM) and thawed, probes over
//! the producer's connections kept failing for over a minute while the broker answered new
//! connections, and an ingester that is not ready refuses the exports that could have shown
//! Kafka back.
//!
//! Health starts NOT_SERVING and turns SERVING only once every topic exists and a broker
//! answered, so a load balancer sends nothing before Kafka can take it. Once shutdown starts
//! the watcher stops and never turns health back on.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    producer::{BaseProducer, Producer},
};
use telemetry_lake_common::{
    health::{Health, Reason},
    kafka::{self, AccessError, Side, TopicSpec},
    settings::KafkaSettings,
};
use tokio_util::sync::CancellationToken;

use crate::producer::BrokerState;

const PROBE_INTERVAL: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// librdkafka may report brokers down many times a second; probes stay this far apart.
const MIN_PROBE_GAP: Duration = Duration::from_millis(500);
/// Failed probes in a row after which the next one starts from a new client (new connections).
const FRESH_CLIENT_AFTER: u32 = 3;

/// The client metadata probes go through.
pub struct Prober {
    kafka: KafkaSettings,
    client: Option<Arc<BaseProducer>>,
    failures: u32,
}

impl Prober {
    pub fn new(kafka: &KafkaSettings) -> Self {
        Self { kafka: kafka.clone(), client: None, failures: 0 }
    }

    /// Asks a broker for the topic's metadata; the partition count if it has any.
    pub async fn probe(&mut self, topic: &str) -> Result<usize, String> {
        let client = match &self.client {
            Some(client) => client.clone(),
            None => {
                // No producer session: metadata only.
                let client: BaseProducer =
                    kafka::admin_config(&self.kafka, Side::Producer, "telemetry-lake-ingester-probe")
                        .set("enable.idempotence", "false")
                        .create()
                        .map_err(|e| format!("cannot create the kafka metadata client: {e}"))?;
                self.client.insert(Arc::new(client)).clone()
            }
        };
        let result = probe(client, topic).await;
        match &result {
            Ok(_) => self.failures = 0,
            Err(_) => {
                self.failures += 1;
                if self.failures >= FRESH_CLIENT_AFTER {
                    self.client = None;
                    self.failures = 0;
                }
            }
        }
        result
    }
}

/// Checks that the brokers let us in and creates the `topics` that do not exist yet. A fatal
/// [`AccessError`] is for good; `Unreachable` may pass.
pub async fn ensure_topics(
    kafka: &KafkaSettings,
    topics: &[String],
    prober: &mut Prober,
) -> Result<(), AccessError> {
    let settings = kafka.clone();
    tokio::task::spawn_blocking(move || kafka::check_access(&settings, Side::Producer, PROBE_TIMEOUT))
        .await
        .map_err(|e| AccessError::Unreachable(format!("the kafka access check stopped: {e}")))??;
    let specs: Vec<TopicSpec> =
        topics.iter().map(|name| TopicSpec { name: name.clone(), partitions: kafka.partitions }).collect();
    kafka::ensure_topics(kafka, Side::Producer, &specs, PROBE_TIMEOUT)
        .await
        .map_err(AccessError::Unreachable)?;
    for topic in topics {
        let partitions = prober.probe(topic).await.map_err(AccessError::Unreachable)?;
        if partitions != kafka.partitions as usize {
            tracing::warn!(
                topic = %topic,
                partitions,
                configured = kafka.partitions,
                "the topic exists with another partition count than kafka.partitions; keeping it"
            );
        }
        tracing::info!(topic = %topic, partitions, "kafka topic ready");
    }
    Ok(())
}

/// Probes every topic of `topics`; the first failure.
async fn probe_all(prober: &mut Prober, topics: &[String]) -> Result<(), String> {
    for topic in topics {
        prober.probe(topic).await?;
    }
    Ok(())
}

async fn probe(client: Arc<BaseProducer>, topic: &str) -> Result<usize, String> {
    let name = topic.to_owned();
    let metadata = tokio::task::spawn_blocking(move || {
        let metadata = client.client().fetch_metadata(Some(&name), PROBE_TIMEOUT)?;
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

/// Keeps `state` and `health` in step with Kafka until `shutdown`. When the brokers refuse our
/// credentials (or librdkafka our settings) before the topic was ever ready, cancels `shutdown`
/// and returns why: start-up failed, and the same settings would fail again.
pub async fn watch(
    kafka: KafkaSettings,
    topics: Vec<String>,
    state: Arc<BrokerState>,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let mut prober = Prober::new(&kafka);
    let mut topics_ready = false;
    let mut last_error = String::new();
    loop {
        let outcome = if topics_ready {
            probe_all(&mut prober, &topics).await
        } else {
            match ensure_topics(&kafka, &topics, &mut prober).await {
                Ok(()) => {
                    topics_ready = true;
                    Ok(())
                }
                Err(error) if error.is_fatal() => {
                    tracing::error!(%error, "kafka refused the ingester's settings; stopping");
                    shutdown.cancel();
                    return Err(error.to_string());
                }
                Err(error) => Err(error.to_string()),
            }
        };
        if shutdown.is_cancelled() {
            return Ok(());
        }
        match outcome {
            Ok(()) => {
                state.ready.store(true, Ordering::Relaxed);
                health.remove(Reason::KafkaUnreachable).await;
                last_error.clear();
            }
            Err(error) => {
                state.ready.store(false, Ordering::Relaxed);
                if error != last_error {
                    tracing::warn!(error = %error, brokers = %kafka.brokers, "kafka unreachable");
                    last_error = error;
                }
                health.add(Reason::KafkaUnreachable).await;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = state.changed.notified() => tokio::time::sleep(MIN_PROBE_GAP).await,
        }
    }
}
