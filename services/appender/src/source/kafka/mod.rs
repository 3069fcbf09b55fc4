//! The appender's Kafka source: the topic in, staged rows out, exactly once into Iceberg.
//!
//! ```text
//!  Kafka topic --poll (consumer.rs, its own thread)--> decode OTLP --> rows with
//!       |                                              (partition, offset) --> staging
//!       |                   \--undecodable, too large, malformed records--> dead_letters.rs
//!       +-- rebalance.rs: on assignment drop unsealed rows of those partitions and start each at
//!           the table's next offset of this topic id (from the Iceberg table), not the group's
//! ```
//!
//! Exactly once rests on the table, not on Kafka: every commit carries, in its snapshot summary
//! and the table's properties, the next offset of every partition the table holds rows of, with
//! the topic id and cluster id they belong to, and each commit takes only rows of partitions
//! this appender owns now, past the offsets the table already holds for that topic id
//! (`crate::commit::fence`). A topic deleted and created again under the same name is a new
//! topic: its partitions start from their earliest offsets.
//! A commit lands only on the table state whose offsets it checked (`crate::lake`'s pinned
//! catalog), so a zombie appender that lost its partitions without noticing cannot commit rows
//! the new owner committed: its commit is refused and checked again. Rows consumed twice (a
//! rebalance, a restart, a crash mid-commit) land once. Kafka's own committed offsets are
//! written after each Iceberg commit, only so lag can be watched with the usual tools.

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
    settings::KafkaSettings,
};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use self::{
    consumer::Worker,
    dead_letters::DeadLetters,
    rebalance::{LakeConsumer, LakeContext},
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
    pub assigned: Mutex<Vec<i32>>,
    /// The table's next offsets as last seen (at assignment or after a commit).
    pub table_offsets: Mutex<PartitionOffsets>,
    /// The topic (id and cluster) the partitions were last assigned from.
    pub identity: Mutex<Option<TopicIdentity>>,
}

/// The running source: its consumer (shared with the committer, which commits offsets to Kafka
/// after each Iceberg commit) and its thread.
pub struct KafkaSource {
    consumer: Arc<LakeConsumer>,
    pub counters: Arc<SourceCounters>,
    pub topic: String,
    ids: Arc<IdLookup>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Creates the topic (`kafka.partitions` partitions, as the ingester would) and the dead-letter
/// topic (one partition: it is for people, not speed) unless they exist, so an appender fed by a
/// Collector's kafka exporter needs no ingester and no manual step.
async fn ensure_topics(config: &KafkaSettings) -> Result<(), KafkaError> {
    let mut topics = vec![TopicSpec { name: config.topic.clone(), partitions: config.partitions }];
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
    /// consuming.
    pub async fn start(
        config: &KafkaSettings,
        staging: Staging,
        lake: Arc<Lake>,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        check_access(config).await?;
        let counters = Arc::new(SourceCounters::default());
        let ids = Arc::new(IdLookup::new(config, Side::Consumer).map_err(KafkaError::ClientCreation)?);
        let context = LakeContext {
            handle: Handle::current(),
            staging: staging.clone(),
            lake,
            topic: config.topic.clone(),
            counters: counters.clone(),
            ids: ids.clone(),
            assignments: Default::default(),
        };
        ensure_topics(config).await?;
        let consumer: Arc<LakeConsumer> =
            Arc::new(kafka::consumer_config(config, "telemetry-lake-appender").create_with_context(context)?);
        consumer.subscribe(&[&config.topic])?;
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
        tracing::info!(brokers = %config.brokers, topic = %config.topic, group = %config.group_id, "consuming");
        Ok(Self { consumer, counters, topic: config.topic.clone(), ids, thread: Mutex::new(Some(thread)) })
    }

    /// The topic the partitions were assigned from (`None`: not learnt) and the topic the name
    /// stands for now; when Kafka cannot be asked, the assigned one stands for now too.
    pub async fn identities(&self) -> Result<(Option<TopicIdentity>, TopicIdentity), String> {
        let assigned = self.counters.identity.lock().expect("identity lock").clone();
        let (ids, topic) = (self.ids.clone(), self.topic.clone());
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
        if let Err(error) = self.consumer.subscribe(&[&self.topic]) {
            tracing::error!(%error, topic = %self.topic, "cannot subscribe to the topic again");
        }
    }

    /// Waits for the consumer thread after its stop token was cancelled.
    pub fn join(&self) {
        if let Some(thread) = self.thread.lock().expect("thread lock").take() {
            let _ = thread.join();
        }
    }

    /// Tells Kafka how far the table got, for lag monitoring; failures only matter to monitoring.
    pub fn commit_to_kafka(&self, offsets: &PartitionOffsets) {
        self.counters.table_offsets.lock().expect("offsets lock").extend(offsets.clone());
        let mut tpl = TopicPartitionList::new();
        let owned = self.counters.assigned.lock().expect("assignment lock").clone();
        for (partition, next) in offsets.iter().filter(|(p, _)| owned.contains(p)) {
            let _ = tpl.add_partition_offset(&self.topic, *partition, Offset::Offset(*next));
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::debug!(error = %e, "kafka offset commit failed (lag monitoring only)");
        }
    }
}

impl KafkaSource {
    /// Per assigned partition: the table's next offset, the broker's end offset and the lag.
    /// Asks the broker, so it blocks for up to a second per partition.
    pub fn partition_stats(&self) -> Vec<PartitionStats> {
        let assigned = self.counters.assigned.lock().expect("assignment lock").clone();
        let table = self.counters.table_offsets.lock().expect("offsets lock").clone();
        assigned
            .into_iter()
            .map(|partition| {
                let committed = table.get(&partition).copied().unwrap_or(-1);
                let high = self
                    .consumer
                    .fetch_watermarks(&self.topic, partition, Duration::from_secs(1))
                    .map(|(_, high)| high)
                    .unwrap_or(-1);
                let lag = if high < 0 { -1 } else { high - committed.max(0) };
                PartitionStats { partition, committed_offset: committed, high_watermark: high, lag }
            })
            .collect()
    }
}
