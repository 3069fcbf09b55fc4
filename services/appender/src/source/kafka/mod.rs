//! The appender's Kafka source: the topics in, staged messages out, exactly once into Iceberg.
//!
//! ```text
//!  Kafka topics: kafka.topic (logs), kafka.traces_topic, kafka.metrics_topic (of the signals
//!       |        served), one consumer group
//!       +--poll (consumer.rs, its own thread)--> check each message as its topic's OTLP request
//!       |        --> the message's bytes, with (partition, offset), tagged with its tables --> staging
//!       |   \--undecodable, too large, malformed items--> dead_letters.rs
//!       +-- rebalance.rs: on assignment drop unsealed messages of those partitions and start each
//!           at the lowest next offset its signal's tables hold for this topic id, not the group's
//! ```
//!
//! Exactly once rests on the tables, not on Kafka: every commit to a table carries, in its
//! snapshot summary and the table's properties, the next offset of every partition of its
//! signal's topic the table holds rows of, with the topic id and cluster id they belong to, and
//! each commit takes only rows of partitions this appender owns now, past the offsets that table
//! already holds for that topic id (`crate::commit::fence`). A metrics message has rows in up to
//! five tables: it counts for all five, so each records the topic's offsets past it. A topic
//! deleted and created again under the same name is a new topic: its partitions start from their
//! earliest offsets.
//! A commit lands only on the table state whose offsets it checked (`crate::lake`'s pinned
//! catalog), so a zombie appender that lost its partitions without noticing cannot commit rows
//! the new owner committed: its commit is refused and checked again. Rows consumed twice (a
//! rebalance, a restart, a crash mid-commit, between two tables' commits) land once. Kafka's own
//! committed offsets are written after each Iceberg commit, only so lag can be watched with the
//! usual tools.

mod consumer;
mod dead_letters;
mod rebalance;

use std::{
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::Duration,
};

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer},
    error::KafkaError,
};
use telemetry_lake_admin_proto::v1::PartitionStats;
use telemetry_lake_common::{
    kafka::{self, Side, TopicSpec},
    kafka_ids::{IdLookup, TopicIdentity},
    otlp::SignalKind,
    settings::KafkaSettings,
};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use self::{
    consumer::Worker,
    dead_letters::DeadLetters,
    rebalance::{ConsumedTopic, LakeConsumer, LakeContext, Topics},
};
use crate::{commit::summary::PartitionOffsets, lake::Lake, staging::Staging};

/// How long one look-up of the topic id and cluster id may take.
const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long start-up waits for a broker to answer the access check before going on (the
/// consumer keeps trying); a refused authentication ends the wait at once.
const ACCESS_TIMEOUT: Duration = Duration::from_secs(5);

/// What the consumer counts, for Stats.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Held by the committer while it commits Kafka rows; a revocation waits for it at most
    /// `rebalance::REVOKE_WAIT`.
    pub commit_gate: tokio::sync::Mutex<()>,
    pub messages: AtomicU64,
    /// Dead letters delivered (or counted and skipped without a dead-letter topic), the log
    /// records in them, and failed delivery attempts (each retried).
    pub dead_lettered: AtomicU64,
    pub dead_lettered_records: AtomicU64,
    pub dead_letter_failures: AtomicU64,
    /// Per signal's topic, indexed by `SignalKind as usize`.
    pub topics: [TopicCounters; 3],
}

impl SourceCounters {
    pub fn topic(&self, signal: SignalKind) -> &TopicCounters {
        &self.topics[signal as usize]
    }
}

/// What the source knows of one topic it consumes.
#[derive(Debug, Default)]
pub struct TopicCounters {
    pub assigned: Mutex<Vec<i32>>,
    /// The tables' next offsets as last seen (at assignment or after a commit).
    pub table_offsets: Mutex<PartitionOffsets>,
    /// The topic (id and cluster) the partitions were last assigned from.
    pub identity: Mutex<Option<TopicIdentity>>,
}

/// The running source: its consumer (shared with the committer, which commits offsets to Kafka
/// after each Iceberg commit) and its thread.
pub struct KafkaSource {
    consumer: Arc<LakeConsumer>,
    pub counters: Arc<SourceCounters>,
    topics: Topics,
    ids: Arc<IdLookup>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Creates the topics (`kafka.partitions` partitions, as the ingester would) and the dead-letter
/// topic (one partition: it is for people, not speed) unless they exist, so an appender fed by a
/// Collector's kafka exporter needs no ingester and no manual step.
async fn ensure_topics(config: &KafkaSettings, consumed: &Topics) -> Result<(), KafkaError> {
    let mut topics: Vec<TopicSpec> = consumed
        .names()
        .into_iter()
        .map(|name| TopicSpec { name: name.to_string(), partitions: config.partitions })
        .collect();
    if let Some(name) = &config.dead_letter_topic {
        topics.push(TopicSpec { name: name.clone(), partitions: 1 });
    }
    if let Err(error) = kafka::ensure_topics(config, Side::Consumer, &topics, Duration::from_secs(30)).await {
        tracing::warn!(%error, "cannot create the kafka topics");
    }
    Ok(())
}

/// Fails when the brokers refuse our credentials (a wrong SASL password) or librdkafka our
/// settings (a key it cannot read): retrying cannot help. A cluster that does not answer yet
/// only gets a warning, as the consumer keeps trying.
async fn check_access(config: &KafkaSettings) -> anyhow::Result<()> {
    let settings = config.clone();
    let checked =
        tokio::task::spawn_blocking(move || kafka::check_access(&settings, Side::Consumer, ACCESS_TIMEOUT))
            .await?;
    match checked {
        Ok(()) => Ok(()),
        Err(error) if error.is_fatal() => Err(anyhow::Error::msg(error.to_string())),
        Err(error) => {
            tracing::warn!(%error, "kafka does not answer yet; the consumer keeps trying");
            Ok(())
        }
    }
}

impl KafkaSource {
    /// Checks access (a refused authentication is an error), creates the topics and starts
    /// consuming the topic of each signal of `lakes` (the tables of each signal served).
    pub async fn start(
        config: &KafkaSettings,
        staging: Staging,
        lakes: Vec<(SignalKind, Vec<Arc<Lake>>)>,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        check_access(config).await?;
        let counters = Arc::new(SourceCounters::default());
        let ids = Arc::new(IdLookup::new(config, Side::Consumer).map_err(KafkaError::ClientCreation)?);
        let topics = Topics(
            lakes
                .into_iter()
                .map(|(signal, lakes)| ConsumedTopic {
                    signal,
                    name: config.topic_of(signal).1.to_string(),
                    lakes,
                })
                .collect(),
        );
        let context = LakeContext {
            handle: Handle::current(),
            staging: staging.clone(),
            topics: topics.clone(),
            counters: counters.clone(),
            ids: ids.clone(),
            assignments: Default::default(),
        };
        ensure_topics(config, &topics).await?;
        let consumer: Arc<LakeConsumer> =
            Arc::new(kafka::consumer_config(config, "telemetry-lake-appender").create_with_context(context)?);
        consumer.subscribe(&topics.names())?;
        let dead_letters = DeadLetters::new(config, counters.clone())?;
        let worker = Worker {
            consumer: consumer.clone(),
            staging,
            counters: counters.clone(),
            dead_letters,
            handle: Handle::current(),
        };
        let thread = std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || worker.run(stop))
            .map_err(|e| KafkaError::Subscription(format!("cannot start the consumer thread: {e}")))?;
        tracing::info!(brokers = %config.brokers, topics = ?topics.names(), group = %config.group_id, "consuming");
        Ok(Self { consumer, counters, topics, ids, thread: Mutex::new(Some(thread)) })
    }

    /// Whether the source consumes the topic of `signal`.
    pub fn consumes(&self, signal: SignalKind) -> bool {
        self.topics.of(signal).is_some()
    }

    /// The topic of `signal` the partitions were assigned from (`None`: not learnt) and the
    /// topic its name stands for now; when Kafka cannot be asked, the assigned one stands for
    /// now too.
    pub async fn identities(
        &self,
        signal: SignalKind,
    ) -> Result<(Option<TopicIdentity>, TopicIdentity), String> {
        let topic =
            self.topics.of(signal).ok_or_else(|| format!("the {} topic is not consumed", signal.name()))?;
        let assigned = self.counters.topic(signal).identity.lock().expect("identity lock").clone();
        let (ids, topic) = (self.ids.clone(), topic.name.clone());
        let now = tokio::task::spawn_blocking(move || ids.identify(&topic, IDENTIFY_TIMEOUT))
            .await
            .map_err(|e| format!("the kafka id lookup stopped: {e}"))?;
        match (now, assigned) {
            (Ok(now), assigned) => Ok((assigned, now)),
            (Err(error), Some(assigned)) => {
                tracing::warn!(%error, topic = %assigned, "cannot ask kafka which topic the name stands for; keeping the assigned one");
                Ok((Some(assigned.clone()), assigned))
            }
            (Err(error), None) => Err(format!(
                "cannot commit kafka offsets: {error} (the offsets are recorded with the topic id \
                 and cluster id; check that kafka.brokers is reachable)"
            )),
        }
    }

    /// Leaves the group and joins again, so every partition is assigned afresh (from the
    /// table's offsets of the topic the name stands for then).
    pub fn resubscribe(&self) {
        self.consumer.unsubscribe();
        if let Err(error) = self.consumer.subscribe(&self.topics.names()) {
            tracing::error!(%error, topics = ?self.topics.names(), "cannot subscribe to the topics again");
        }
    }

    /// Waits for the consumer thread after its stop token was cancelled.
    pub fn join(&self) {
        if let Some(thread) = self.thread.lock().expect("thread lock").take() {
            let _ = thread.join();
        }
    }

    /// Tells Kafka how far a table of `signal` got, for lag monitoring; failures only matter
    /// to monitoring. (A metrics topic's tables move together: each commit carries its offsets.)
    pub fn commit_to_kafka(&self, signal: SignalKind, offsets: &PartitionOffsets) {
        let Some(topic) = self.topics.of(signal) else { return };
        let counters = self.counters.topic(signal);
        counters.table_offsets.lock().expect("offsets lock").extend(offsets.clone());
        let mut tpl = TopicPartitionList::new();
        let owned = counters.assigned.lock().expect("assignment lock").clone();
        for (partition, next) in offsets.iter().filter(|(p, _)| owned.contains(p)) {
            let _ = tpl.add_partition_offset(&topic.name, *partition, Offset::Offset(*next));
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::debug!(error = %e, "kafka offset commit failed (lag monitoring only)");
        }
    }
}

impl KafkaSource {
    /// Per assigned partition of every topic: the tables' next offset, the broker's end offset
    /// and the lag. Asks the broker, each partition at the same time (one thread each), for up
    /// to a second.
    pub fn partition_stats(&self) -> Vec<PartitionStats> {
        let mut wanted = Vec::new();
        for topic in &self.topics.0 {
            let counters = self.counters.topic(topic.signal);
            let table = counters.table_offsets.lock().expect("offsets lock").clone();
            for partition in counters.assigned.lock().expect("assignment lock").iter().copied() {
                wanted.push((topic.name.as_str(), partition, table.get(&partition).copied().unwrap_or(-1)));
            }
        }
        std::thread::scope(|scope| {
            let asked: Vec<_> = wanted
                .into_iter()
                .map(|(topic, partition, committed)| {
                    scope.spawn(move || {
                        let high = self
                            .consumer
                            .fetch_watermarks(topic, partition, Duration::from_secs(1))
                            .map(|(_, high)| high)
                            .unwrap_or(-1);
                        let lag = if high < 0 { -1 } else { high - committed.max(0) };
                        PartitionStats {
                            partition,
                            committed_offset: committed,
                            high_watermark: high,
                            lag,
                            topic: topic.to_string(),
                        }
                    })
                })
                .collect();
            asked.into_iter().filter_map(|thread| thread.join().ok()).collect()
        })
    }
}
