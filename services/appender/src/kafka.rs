//! The appender's Kafka source: the topic in, staged rows out, exactly once into Iceberg.
//!
//! ```text
//!  Kafka topic --poll (consumer thread)--> decode OTLP --> rows with (partition, offset) --> staging
//!       |                                     \--undecodable--> dead-letter topic (counted)
//!       +-- on assignment: drop unsealed rows of those partitions, start each at the table's
//!           next offset (read from the Iceberg snapshot summaries), not the group's
//! ```
//!
//! Exactly once rests on the table, not on Kafka: every commit carries, in its snapshot summary,
//! the next offset of each partition it covers ([`OFFSETS_PROPERTY`]), and each commit takes
//! only rows of partitions this appender owns now, past the offsets the table already holds
//! ([`OffsetFence`]). A revocation waits for the commit in flight and drops the unsealed rows of
//! the revoked partitions before it returns; with the eager protocol the new owner is assigned
//! only after that, and starts from the table's offsets. So rows consumed twice (a rebalance, a
//! restart, a crash mid-commit) land once. Kafka's own committed offsets are written after each
//! Iceberg commit, only so lag can be watched with the usual tools.
//!
//! What this cannot fence: an appender that lost its group membership without noticing (a
//! session timeout while it was stalled) and commits, at that same moment, rows the new owner
//! commits too. iceberg-rust rebases a conflicting commit onto the new table state without
//! asking, so two commits cannot be made conditional on each other's offsets.
//!
//! One dedicated thread owns the consumer; it blocks on staging (group commit) and, during a
//! rebalance, on reading the table. When staging is full it pauses its partitions and retries.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use arrow_select::concat::concat_batches;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message as _;
use rdkafka::{
    ClientConfig, ClientContext, Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol},
    error::{KafkaError, RDKafkaErrorCode},
    message::{BorrowedMessage, Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    types::RDKafkaRespErr,
};
use telemetry_lake_admin_proto::v1::PartitionStats;
use telemetry_lake_common::config::KafkaConfig;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::{
    lake::Lake,
    rows::{self, KafkaPosition, Rows},
    staging::{Staging, StagingError},
};

/// Snapshot summary key: `{"<partition>": <next offset>, ...}` of the rows the commit holds.
pub const OFFSETS_PROPERTY: &str = "telemetry-lake.kafka.offsets";
/// Snapshot summary key: the topic those offsets belong to.
pub const TOPIC_PROPERTY: &str = "telemetry-lake.kafka.topic";
/// Rows gathered from the topic before they are staged in one append.
const MAX_BATCH_RECORDS: u64 = 10_000;
const MAX_BATCH_WAIT: Duration = Duration::from_millis(200);

/// The next offset of each partition, as the table knows it.
pub type PartitionOffsets = BTreeMap<i32, i64>;

/// Reads, newest snapshot first, the next offset of every partition of `topic` in the table.
pub async fn table_offsets(lake: &Lake, topic: &str) -> Result<PartitionOffsets, crate::lake::LakeError> {
    Ok(offsets_from_summaries(lake.snapshot_summaries().await?, topic))
}

/// The newest offset per partition wins: summaries come newest first.
pub fn offsets_from_summaries(
    summaries: impl IntoIterator<Item = (i64, HashMap<String, String>)>,
    topic: &str,
) -> PartitionOffsets {
    let mut offsets = PartitionOffsets::new();
    for (_, summary) in summaries {
        if summary.get(TOPIC_PROPERTY).map(String::as_str) != Some(topic) {
            continue;
        }
        let Some(encoded) = summary.get(OFFSETS_PROPERTY) else { continue };
        let Ok(committed) = serde_json::from_str::<BTreeMap<String, i64>>(encoded) else {
            tracing::warn!(property = OFFSETS_PROPERTY, value = %encoded, "unreadable offsets in a snapshot summary");
            continue;
        };
        for (partition, next) in committed {
            if let Ok(partition) = partition.parse() {
                offsets.entry(partition).or_insert(next);
            }
        }
    }
    offsets
}

/// Encodes offsets for [`OFFSETS_PROPERTY`].
pub fn encode_offsets(offsets: &PartitionOffsets) -> String {
    let as_strings: BTreeMap<String, i64> = offsets.iter().map(|(p, o)| (p.to_string(), *o)).collect();
    serde_json::to_string(&as_strings).expect("a map of numbers encodes")
}

/// Which staged rows a commit may take: rows not from Kafka, and rows of partitions this
/// appender owns now past the offsets the table already holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetFence {
    pub table: PartitionOffsets,
    pub owned: Vec<i32>,
}

impl OffsetFence {
    pub fn sql_condition(&self) -> String {
        if self.owned.is_empty() {
            return "kafka_partition IS NULL".into();
        }
        let owned: Vec<String> = self.owned.iter().map(i32::to_string).collect();
        let cases: Vec<String> = self.table.iter().map(|(p, o)| format!("WHEN {p} THEN {o}")).collect();
        let past = if cases.is_empty() {
            String::new()
        } else {
            format!(" AND kafka_offset >= CASE kafka_partition {} ELSE 0 END", cases.join(" "))
        };
        format!("(kafka_partition IS NULL OR (kafka_partition IN ({}){past}))", owned.join(", "))
    }
}

/// What the consumer counts, for Stats.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Held by the committer while it commits Kafka rows; a revocation waits for it.
    pub commit_gate: tokio::sync::Mutex<()>,
    pub messages: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub assigned: Mutex<Vec<i32>>,
    /// The table's next offsets as last seen (at assignment or after a commit).
    pub table_offsets: Mutex<PartitionOffsets>,
}

struct LakeContext {
    handle: Handle,
    staging: Staging,
    lake: Arc<Lake>,
    topic: String,
    counters: Arc<SourceCounters>,
}

impl ClientContext for LakeContext {}

impl ConsumerContext for LakeContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.start_from_table(tpl, &partitions);
                let assigned =
                    if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                match assigned {
                    Ok(()) => {
                        let mut owned = self.counters.assigned.lock().expect("assignment lock");
                        owned.extend(&partitions);
                        owned.sort_unstable();
                        owned.dedup();
                        tracing::info!(?partitions, "partitions assigned");
                    }
                    Err(e) => tracing::error!(error = %e, ?partitions, "cannot assign partitions"),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Commits from now on leave these partitions out; the one in flight (if any) may
                // still hold them, so wait for it before the new owner can start.
                self.counters.assigned.lock().expect("assignment lock").retain(|p| !partitions.contains(p));
                let dropped = self.block_on(async {
                    let _in_flight = self.counters.commit_gate.lock().await;
                    self.staging
                        .discard_unsealed_partitions(partitions.clone())
                        .await
                        .map_err(|e| e.to_string())
                });
                if let Err(e) = dropped {
                    tracing::error!(error = %e, ?partitions, "cannot drop staged rows of revoked partitions");
                }
                let revoked =
                    if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = revoked {
                    tracing::error!(error = %e, ?partitions, "cannot unassign partitions");
                }
                tracing::info!(?partitions, "partitions revoked");
            }
            other => tracing::error!(error = ?other, "rebalance failed"),
        }
    }
}

impl LakeContext {
    /// Runs `work` from a rebalance callback. Callbacks normally run on the consumer thread,
    /// which may block; the last one can run where the consumer is dropped, on a runtime thread
    /// at shutdown, after the final flush: there it is skipped (the rows stay staged and are
    /// dropped at the next assignment).
    fn block_on<T>(&self, work: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
        if Handle::try_current().is_ok() {
            return Err("rebalance outside the consumer thread (shutting down), skipped".into());
        }
        self.handle.block_on(work)
    }

    /// Drops unsealed rows of newly assigned partitions (they will be read again from the
    /// table's offsets, and must not be staged twice) and sets each start offset.
    fn start_from_table(&self, tpl: &mut TopicPartitionList, partitions: &[i32]) {
        let found = self.block_on(async {
            self.staging.discard_unsealed_partitions(partitions.to_vec()).await.map_err(|e| e.to_string())?;
            table_offsets(&self.lake, &self.topic).await.map_err(|e| e.to_string())
        });
        match found {
            Ok(offsets) => {
                self.counters.table_offsets.lock().expect("offsets lock").extend(offsets.clone());
                for partition in partitions {
                    if let Some(next) = offsets.get(partition) {
                        let _ = tpl.set_partition_offset(&self.topic, *partition, Offset::Offset(*next));
                    }
                }
                tracing::info!(?offsets, "starting assigned partitions from the table's offsets");
            }
            // Safe, only slower: the fence drops rows the table already holds.
            Err(error) => {
                tracing::warn!(%error, "table offsets unavailable, starting from the group's committed offsets")
            }
        }
    }
}

type LakeConsumer = BaseConsumer<LakeContext>;

/// The running source: its consumer (shared with the committer, which commits offsets to Kafka
/// after each Iceberg commit) and its thread.
pub struct KafkaSource {
    consumer: Arc<LakeConsumer>,
    pub counters: Arc<SourceCounters>,
    pub topic: String,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Creates the topic (`kafka.partitions` partitions, as the ingester would) and the dead-letter
/// topic (one partition: it is for people, not speed) unless they exist, so an appender fed by a
/// Collector's kafka exporter needs no ingester and no manual step.
async fn ensure_topics(config: &KafkaConfig) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = admin_client_config(config).create()?;
    let replication = || TopicReplication::Fixed(config.replication_factor);
    let mut topics = vec![NewTopic::new(&config.topic, config.partitions, replication())];
    let dead_letters = config.dead_letters();
    if let Some(name) = &dead_letters {
        topics.push(NewTopic::new(name, 1, replication()));
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                tracing::warn!(topic = %name, error = %code, "cannot create kafka topic")
            }
        }
    }
    Ok(())
}

/// The topic-creating client's settings: the `[kafka.consumer]` table too, so that it reaches
/// the cluster the way the consumer does (security protocol, SASL, TLS, client addresses).
/// librdkafka logs and ignores the consumer-only keys among them.
fn admin_client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    for (key, value) in &config.consumer {
        client.set(key, value);
    }
    client
}

impl KafkaSource {
    pub async fn start(
        config: &KafkaConfig,
        staging: Staging,
        lake: Arc<Lake>,
        stop: CancellationToken,
    ) -> Result<Self, KafkaError> {
        let counters = Arc::new(SourceCounters::default());
        let context = LakeContext {
            handle: Handle::current(),
            staging: staging.clone(),
            lake,
            topic: config.topic.clone(),
            counters: counters.clone(),
        };
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        for (key, value) in &config.consumer {
            client.set(key, value);
        }
        ensure_topics(config).await?;
        let consumer: Arc<LakeConsumer> = Arc::new(client.create_with_context(context)?);
        consumer.subscribe(&[&config.topic])?;
        let dead_letters = match config.dead_letters() {
            None => None,
            Some(topic) => {
                let mut producer = ClientConfig::new();
                producer.set("bootstrap.servers", &config.brokers).set("acks", "all");
                for (key, value) in &config.producer {
                    producer.set(key, value);
                }
                Some((producer.create::<FutureProducer>()?, topic))
            }
        };
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
        Ok(Self { consumer, counters, topic: config.topic.clone(), thread: Mutex::new(Some(thread)) })
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

struct Worker {
    consumer: Arc<LakeConsumer>,
    staging: Staging,
    counters: Arc<SourceCounters>,
    dead_letters: Option<(FutureProducer, String)>,
    handle: Handle,
}

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as i64
}

impl Worker {
    fn run(self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let batch = self.gather(&stop);
            if batch.is_empty() {
                continue;
            }
            self.stage(batch, &stop);
        }
        // Leave the group here, so the revocation runs on this thread rather than wherever the
        // consumer is dropped.
        self.consumer.unsubscribe();
        let leaving = Instant::now();
        while !self.counters.assigned.lock().expect("assignment lock").is_empty()
            && leaving.elapsed() < Duration::from_secs(5)
        {
            let _ = self.consumer.poll(Duration::from_millis(100));
        }
        tracing::info!("kafka consumer stopped");
    }

    /// Polls until enough rows or enough time; undecodable messages go to the dead letters.
    fn gather(&self, stop: &CancellationToken) -> Vec<Rows> {
        let started = Instant::now();
        let mut batch = Vec::new();
        let mut records = 0u64;
        while records < MAX_BATCH_RECORDS && !stop.is_cancelled() {
            let Some(wait) = MAX_BATCH_WAIT.checked_sub(started.elapsed()) else { break };
            match self.consumer.poll(wait) {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka poll failed");
                    break;
                }
                Some(Ok(message)) => {
                    self.counters.messages.fetch_add(1, Ordering::Relaxed);
                    let position = KafkaPosition { partition: message.partition(), offset: message.offset() };
                    match ExportLogsServiceRequest::decode(message.payload().unwrap_or_default()) {
                        Ok(request) => {
                            let converted = rows::to_rows(&request, Some(position), now_micros());
                            records += converted.batch.num_rows() as u64;
                            batch.push(converted);
                        }
                        Err(e) => self.dead_letter(&message, &e.to_string()),
                    }
                }
            }
        }
        batch
    }

    fn dead_letter(&self, message: &BorrowedMessage<'_>, reason: &str) {
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            partition = message.partition(),
            offset = message.offset(),
            reason,
            "undecodable record sent to the dead-letter topic"
        );
        let Some((producer, topic)) = &self.dead_letters else { return };
        let source = format!("{}/{}/{}", message.topic(), message.partition(), message.offset());
        let headers = OwnedHeaders::new()
            .insert(Header { key: "telemetry-lake-error", value: Some(reason) })
            .insert(Header { key: "telemetry-lake-source", value: Some(source.as_str()) });
        let mut record =
            FutureRecord::to(topic).payload(message.payload().unwrap_or_default()).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        let delivered = self.handle.block_on(producer.send(record, Duration::from_secs(30)));
        if let Err((e, _)) = delivered {
            tracing::error!(error = %e, %source, "dead-letter delivery failed; the record is counted and skipped");
        }
    }

    /// Stages one append; while staging is full, pauses the partitions and retries.
    fn stage(&self, batch: Vec<Rows>, stop: &CancellationToken) {
        let Some(rows) = merge(batch) else { return };
        let mut paused: Option<TopicPartitionList> = None;
        loop {
            match self.handle.block_on(self.staging.append(rows.clone())) {
                Ok(()) => break,
                // These rows are past everything staged, so stopping without them loses
                // nothing: the next start reads them again from the table's offsets.
                Err(e) if stop.is_cancelled() => {
                    tracing::warn!(error = %e, "stopping with a batch not staged; it is read again at the next start");
                    break;
                }
                // Never move past rows that are not staged: pause, keep serving the group, retry.
                Err(e) => {
                    if paused.is_none() {
                        let assignment = self.consumer.assignment().unwrap_or_default();
                        if self.consumer.pause(&assignment).is_ok() {
                            paused = Some(assignment);
                        }
                        match e {
                            StagingError::Full { .. } => {
                                tracing::warn!(error = %e, "staging is full, consumption paused until commits catch up")
                            }
                            _ => tracing::error!(error = %e, "staging failed, consumption paused, retrying"),
                        }
                    }
                    self.wait_paused(Duration::from_secs(1));
                }
            }
        }
        if let Some(assignment) = paused {
            let _ = self.consumer.resume(&assignment);
            tracing::info!("consumption resumed");
        }
    }

    /// Serves the group (rebalances, heartbeats) while paused. A message that still arrives is
    /// not consumed: the partition is sought back to it, so it is delivered again later.
    fn wait_paused(&self, wait: Duration) {
        if let Some(Ok(message)) = self.consumer.poll(wait) {
            let (topic, partition, offset) =
                (message.topic().to_string(), message.partition(), message.offset());
            drop(message);
            if let Err(e) =
                self.consumer.seek(&topic, partition, Offset::Offset(offset), Duration::from_secs(5))
            {
                tracing::error!(error = %e, partition, offset, "cannot seek back while paused");
            }
        }
    }
}

/// One append for many messages: fewer, larger DuckDB transactions.
fn merge(batch: Vec<Rows>) -> Option<Rows> {
    let first = batch.first()?;
    let schema = first.batch.schema();
    let bytes = batch.iter().map(|r| r.bytes).sum();
    let rejected = batch.iter().map(|r| r.rejected).sum();
    let rejection =
        batch.iter().find(|r| !r.rejection.is_empty()).map(|r| r.rejection.clone()).unwrap_or_default();
    let merged =
        concat_batches(&schema, batch.iter().map(|r| &r.batch)).expect("rows share the staging schema");
    Some(Rows { batch: merged, bytes, rejected, rejection })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(topic: &str, offsets: &str) -> HashMap<String, String> {
        HashMap::from([
            (TOPIC_PROPERTY.to_string(), topic.to_string()),
            (OFFSETS_PROPERTY.to_string(), offsets.to_string()),
        ])
    }

    #[test]
    fn newest_snapshot_wins_per_partition_and_other_topics_are_ignored() {
        let summaries = vec![
            (3, summary("otel-logs", r#"{"0":120}"#)),
            (2, summary("other", r#"{"1":999}"#)),
            (1, summary("otel-logs", r#"{"0":100,"1":50}"#)),
            (0, HashMap::new()),
        ];
        let offsets = offsets_from_summaries(summaries, "otel-logs");
        assert_eq!(offsets, PartitionOffsets::from([(0, 120), (1, 50)]));
        assert_eq!(encode_offsets(&offsets), r#"{"0":120,"1":50}"#);
    }

    #[test]
    fn the_fence_keeps_owned_rows_past_the_table_offsets_and_embedded_rows() {
        assert_eq!(OffsetFence::default().sql_condition(), "kafka_partition IS NULL");
        let fence = OffsetFence { table: PartitionOffsets::from([(0, 120), (3, 7)]), owned: vec![0, 1] };
        assert_eq!(
            fence.sql_condition(),
            "(kafka_partition IS NULL OR (kafka_partition IN (0, 1) AND kafka_offset >= \
             CASE kafka_partition WHEN 0 THEN 120 WHEN 3 THEN 7 ELSE 0 END))"
        );
        let fresh = OffsetFence { table: PartitionOffsets::new(), owned: vec![2] };
        assert_eq!(fresh.sql_condition(), "(kafka_partition IS NULL OR (kafka_partition IN (2)))");
    }

    #[test]
    fn the_fence_really_filters_staged_rows() {
        let conn = duckdb::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (kafka_partition INTEGER, kafka_offset BIGINT);
             INSERT INTO t VALUES (NULL, NULL), (0, 119), (0, 120), (1, 5), (2, 9), (3, 7);",
        )
        .unwrap();
        let fence = OffsetFence { table: PartitionOffsets::from([(0, 120), (1, 6)]), owned: vec![0, 1, 3] };
        let sql = format!("SELECT count(*) FROM t WHERE {}", fence.sql_condition());
        let kept: i64 = conn.query_row(&sql, [], |r| r.get(0)).unwrap();
        // kept: the embedded row, (0,120) and (3,7); dropped: below the table, or not owned
        assert_eq!(kept, 3);
    }

    #[test]
    fn the_topic_creating_client_connects_like_the_consumer() {
        let config = KafkaConfig {
            brokers: "kafka-0:9093".into(),
            consumer: [("security.protocol", "SASL_SSL"), ("sasl.mechanism", "SCRAM-SHA-512")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..KafkaConfig::default()
        };
        let admin = admin_client_config(&config);
        assert_eq!(admin.get("bootstrap.servers"), Some("kafka-0:9093"));
        assert_eq!(admin.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(admin.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
    }
}
