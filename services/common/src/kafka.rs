//! Kafka client settings and topic creation, built once for every client both services make.
//!
//! ```text
//!  [kafka] brokers + [kafka.producer] --> producer_config: the ingester's producer, the
//!                                         appender's dead-letter producer (idempotent, acks=all)
//!  [kafka] brokers + [kafka.consumer] --> consumer_config: the appender's group consumer
//!  either table, as the client's role --> admin_config: topic creation, metadata probes
//! ```
//!
//! What the guarantees rest on cannot be changed from the tables: producers are idempotent with
//! `acks=all` (no acknowledged record lost), and the consumer never commits or resets offsets
//! on its own (the Iceberg table holds the offsets). [`check_user_settings`] refuses such a
//! value at start-up, naming the key and the value; the builders set them last anyway.

use std::{collections::BTreeMap, time::Duration};

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    config::RDKafkaLogLevel,
    error::RDKafkaErrorCode,
};

use crate::{config::ConfigError, settings::KafkaSettings};

/// Producer settings chosen unless `[kafka.producer]` says otherwise.
const PRODUCER_DEFAULTS: [(&str, &str); 7] = [
    // zstd level 1 against librdkafka's default level (3) and lz4, at saturation (bench/compare):
    // 0.98 / 1.08 / 0.78 CPU-s per million logs, 29.9 / 29.3 / 53.8 bytes per log on the broker.
    ("compression.type", "zstd"),
    ("compression.level", "1"),
    // A client must not wait longer than this for an answer when Kafka is down.
    ("message.timeout.ms", "30000"),
    // No wait for more records: an export is already a batch, and every answer waits for its
    // deliveries. Measured against 5 ms (bench/compare, 20k logs/s): p50 9.2 -> 3.8 ms, p99
    // 15.4 -> 9.4 ms, CPU per log and broker CPU no higher (README, Benchmarks).
    ("linger.ms", "0"),
    // Java clients' hashing, so other producers keyed by service land on the same partition.
    ("partitioner", "murmur2_random"),
    // Bounded memory: the queue, not the heap, absorbs a slow broker (guarantee 3).
    ("queue.buffering.max.kbytes", "262144"),
    ("queue.buffering.max.messages", "100000"),
];

/// Producer settings guarantee 1 rests on: the table may repeat them, not change them.
const PRODUCER_REQUIRED: [(&str, &[&str]); 2] = [("enable.idempotence", &["true"]), ("acks", &["all", "-1"])];

/// Consumer settings exactly-once rests on: offsets come from the Iceberg table, so the
/// consumer must neither commit nor store offsets by itself, and a partition the table knows
/// nothing of starts at its beginning.
const CONSUMER_REQUIRED: [(&str, &[&str]); 4] = [
    ("enable.auto.commit", &["false"]),
    ("enable.auto.offset.store", &["false"]),
    ("auto.offset.reset", &["earliest"]),
    ("enable.partition.eof", &["false"]),
];

/// Keys that have a `[kafka]` setting of their own.
const OWN_KEYS: [(&str, &str); 2] = [("bootstrap.servers", "kafka.brokers"), ("group.id", "kafka.group_id")];

/// Refuses a `[kafka.producer]` / `[kafka.consumer]` value that would break a guarantee, or a
/// key that `[kafka]` sets itself. `table` is `kafka.producer` or `kafka.consumer`.
pub fn check_user_settings(table: &str, settings: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    let required: &[(&str, &[&str])] =
        if table.ends_with("producer") { &PRODUCER_REQUIRED } else { &CONSUMER_REQUIRED };
    for (key, value) in settings {
        if let Some((_, own)) = OWN_KEYS.iter().find(|(k, _)| k == key) {
            return Err(ConfigError::Invalid {
                key: format!("{table}.{key}"),
                value: format!("{value:?}"),
                reason: format!("set {own} instead"),
            });
        }
        if let Some((_, allowed)) = required.iter().find(|(k, _)| k == key)
            && !allowed.contains(&value.trim().to_ascii_lowercase().as_str())
        {
            return Err(ConfigError::Invalid {
                key: format!("{table}.{key}"),
                value: format!("{value:?}"),
                reason: format!(
                    "must be {:?} (or left out): exactly-once and no-loss delivery depend on it",
                    allowed[0]
                ),
            });
        }
    }
    Ok(())
}

fn base(brokers: &str, client_id: &str, table: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers).set("client.id", client_id);
    for (key, value) in table {
        config.set(key, value);
    }
    config.set_log_level(RDKafkaLogLevel::Warning);
    config
}

/// An idempotent `acks=all` producer: our defaults, then `[kafka.producer]`, then the settings
/// guarantee 1 needs.
pub fn producer_config(kafka: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in PRODUCER_DEFAULTS {
        config.set(key, value);
    }
    config.set("bootstrap.servers", &kafka.brokers).set("client.id", client_id);
    for (key, value) in &kafka.producer {
        config.set(key, value);
    }
    for (key, allowed) in PRODUCER_REQUIRED {
        config.set(key, allowed[0]);
    }
    config.set_log_level(RDKafkaLogLevel::Warning);
    config
}

/// The appender's group consumer: `[kafka.consumer]`, then the settings exactly-once needs.
pub fn consumer_config(kafka: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut config = base(&kafka.brokers, client_id, &kafka.consumer);
    config.set("group.id", &kafka.group_id);
    for (key, allowed) in CONSUMER_REQUIRED {
        config.set(key, allowed[0]);
    }
    config
}

/// Which table an admin or metadata client takes its settings (security, addresses) from: the
/// one of the service it works for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Producer,
    Consumer,
}

/// A client for topic creation or metadata, reaching the cluster as `side`'s clients do.
/// librdkafka logs and ignores the producer- or consumer-only keys among them.
pub fn admin_config(kafka: &KafkaSettings, side: Side, client_id: &str) -> ClientConfig {
    let table = match side {
        Side::Producer => &kafka.producer,
        Side::Consumer => &kafka.consumer,
    };
    base(&kafka.brokers, client_id, table)
}

/// A topic to create if missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
}

/// Creates each topic unless it exists (with `kafka.replication_factor`); returns the names of
/// those it created. Another client creating one at the same time is fine.
pub async fn ensure_topics(
    kafka: &KafkaSettings,
    side: Side,
    topics: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let admin: AdminClient<DefaultClientContext> = admin_config(kafka, side, "telemetry-lake-admin")
        .create()
        .map_err(|e| format!("cannot create the kafka admin client: {e}"))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(kafka.replication_factor)))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(timeout)).operation_timeout(Some(timeout));
    let results = admin.create_topics(&new, &options).await.map_err(|e| format!("create topics: {e}"))?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => {
                tracing::info!(topic = %name, replication_factor = kafka.replication_factor, "created kafka topic");
                created.push(name);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(format!("cannot create topic {name}: {code}")),
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka() -> KafkaSettings {
        KafkaSettings {
            brokers: "kafka-0:9093".into(),
            topic: "otel-logs".into(),
            partitions: 12,
            replication_factor: 1,
            group_id: "g".into(),
            dead_letter_topic: Some("otel-logs-dlq".into()),
            producer: [("security.protocol", "SASL_SSL"), ("linger.ms", "20"), ("acks", "-1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            consumer: [("security.protocol", "SSL"), ("fetch.max.bytes", "1000")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn producers_are_idempotent_with_acks_all_and_keep_the_table() {
        let config = producer_config(&kafka(), "dlq");
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("linger.ms"), Some("20"), "the table overrides a default");
        assert_eq!(config.get("compression.type"), Some("zstd"));
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("bootstrap.servers"), Some("kafka-0:9093"));
        assert_eq!(config.get("client.id"), Some("dlq"));
    }

    #[test]
    fn the_consumer_never_commits_or_resets_by_itself() {
        let config = consumer_config(&kafka(), "appender");
        assert_eq!(config.get("group.id"), Some("g"));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        assert_eq!(config.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(config.get("fetch.max.bytes"), Some("1000"));
        assert_eq!(config.get("security.protocol"), Some("SSL"));
    }

    #[test]
    fn admin_clients_reach_the_cluster_like_their_side() {
        assert_eq!(admin_config(&kafka(), Side::Consumer, "a").get("security.protocol"), Some("SSL"));
        assert_eq!(admin_config(&kafka(), Side::Producer, "a").get("security.protocol"), Some("SASL_SSL"));
    }

    #[test]
    fn settings_that_break_a_guarantee_are_refused_with_key_and_value() {
        let table = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(check_user_settings("kafka.producer", &table("acks", "all")).is_ok());
        let err = check_user_settings("kafka.producer", &table("enable.idempotence", "false")).unwrap_err();
        assert!(err.to_string().contains("kafka.producer.enable.idempotence = \"false\""), "{err}");
        let err = check_user_settings("kafka.consumer", &table("auto.offset.reset", "latest")).unwrap_err();
        assert!(err.to_string().contains("kafka.consumer.auto.offset.reset = \"latest\""), "{err}");
        let err = check_user_settings("kafka.consumer", &table("group.id", "x")).unwrap_err();
        assert!(err.to_string().contains("kafka.group_id"), "{err}");
    }
}
