//! Kafka client settings and topic creation, built once for every client both services make.
//!
//! ```text
//!  [kafka] brokers + [kafka.client] + [kafka.producer] --> producer_config: the ingester's
//!          producer, the appender's dead-letter producer (idempotent, acks=all)
//!  [kafka] brokers + [kafka.client] + [kafka.consumer] --> consumer_config: the appender's
//!          group consumer
//!  [kafka] brokers + [kafka.client] + the role's table --> admin_config: topic creation,
//!          metadata probes, topic ids
//! ```
//!
//! `[kafka.client]` is for what every client needs alike: security (`security.protocol`,
//! `sasl.*`, `ssl.*`), timeouts, `client.rack`. A role's table applies after it and wins.
//! Secrets in them (`sasl.password`, `ssl.key.password`) can come from `${file:…}` or
//! `${env:…}` and are hidden from every log line and error (see `crate::secrets`).
//!
//! [`check_access`] runs at start-up before anything else talks to Kafka: a failed
//! authentication (a wrong SASL password) is an error naming the brokers and the mechanism,
//! which stops the service instead of being retried for ever.
//!
//! What the guarantees rest on cannot be changed from the tables: producers are idempotent with
//! `acks=all` (no acknowledged record lost), and the consumer never commits or resets offsets
//! on its own (the Iceberg table holds the offsets). [`check_user_settings`] refuses such a
//! value at start-up, naming the key and the value; the builders set them last anyway.

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, ClientContext,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    config::RDKafkaLogLevel,
    error::{KafkaError, RDKafkaErrorCode},
    producer::{BaseProducer, DeliveryResult, Producer, ProducerContext},
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

/// Refuses a `[kafka.client]` / `[kafka.producer]` / `[kafka.consumer]` value that would break a
/// guarantee, or a key that `[kafka]` sets itself. `table` is `kafka.client`, `kafka.producer`
/// or `kafka.consumer`; `[kafka.client]` reaches producers and the consumer, so both lists
/// apply to it.
pub fn check_user_settings(table: &str, settings: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    let required: Vec<(&str, &[&str])> = if table.ends_with("producer") {
        PRODUCER_REQUIRED.to_vec()
    } else if table.ends_with("consumer") {
        CONSUMER_REQUIRED.to_vec()
    } else {
        PRODUCER_REQUIRED.iter().chain(&CONSUMER_REQUIRED).copied().collect()
    };
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

/// `config` plus the brokers, the client id, `[kafka.client]` and then the role's `table`.
fn apply(
    mut config: ClientConfig,
    kafka: &KafkaSettings,
    client_id: &str,
    table: &BTreeMap<String, String>,
) -> ClientConfig {
    config.set("bootstrap.servers", &kafka.brokers).set("client.id", client_id);
    for (key, value) in kafka.client.iter().chain(table) {
        config.set(key, value);
    }
    config.set_log_level(RDKafkaLogLevel::Warning);
    config
}

/// An idempotent `acks=all` producer: our defaults, then `[kafka.client]`, `[kafka.producer]`,
/// then the settings guarantee 1 needs.
pub fn producer_config(kafka: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut defaults = ClientConfig::new();
    for (key, value) in PRODUCER_DEFAULTS {
        defaults.set(key, value);
    }
    let mut config = apply(defaults, kafka, client_id, &kafka.producer);
    for (key, allowed) in PRODUCER_REQUIRED {
        config.set(key, allowed[0]);
    }
    config
}

/// The appender's group consumer: `[kafka.client]`, `[kafka.consumer]`, then the settings
/// exactly-once needs.
pub fn consumer_config(kafka: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut config = apply(ClientConfig::new(), kafka, client_id, &kafka.consumer);
    config.set("group.id", &kafka.group_id);
    for (key, allowed) in CONSUMER_REQUIRED {
        config.set(key, allowed[0]);
    }
    config
}

/// Which role's table an admin or metadata client takes its settings from after
/// `[kafka.client]`: the one of the service it works for.
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
    apply(ClientConfig::new(), kafka, client_id, table)
}

/// Why [`check_access`] could not reach the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessError {
    /// The brokers refused our credentials: retrying cannot help, the service should stop.
    Authentication(String),
    /// No broker answered in time (down, unreachable, still starting): worth retrying.
    Unreachable(String),
}

impl std::fmt::Display for AccessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessError::Authentication(message) | AccessError::Unreachable(message) => f.write_str(message),
        }
    }
}

/// A metadata client's context that keeps the first authentication failure librdkafka reports
/// (it reports them as errors, then keeps reconnecting).
#[derive(Default)]
struct AuthWatch {
    failure: Mutex<Option<String>>,
}

impl ClientContext for AuthWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication) {
            self.failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| reason.to_string());
        } else {
            tracing::debug!(%error, reason, "kafka access check");
        }
    }
}

impl ProducerContext for AuthWatch {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// Connects to the cluster as `side`'s clients do and asks for its metadata, for at most
/// `timeout`. Blocks: call it off the async workers.
///
/// A failed authentication comes back as [`AccessError::Authentication`] as soon as librdkafka
/// reports it, with a message naming the brokers, the security protocol and the SASL mechanism
/// (never a secret); anything else that keeps the cluster from answering is
/// [`AccessError::Unreachable`].
pub fn check_access(kafka: &KafkaSettings, side: Side, timeout: Duration) -> Result<(), AccessError> {
    let config = admin_config(kafka, side, "telemetry-lake-access-check");
    let setting = |key: &str| config.get(key).map(str::to_string);
    let protocol = setting("security.protocol").unwrap_or_else(|| "plaintext".into());
    let mechanism =
        setting("sasl.mechanism").or_else(|| setting("sasl.mechanisms")).unwrap_or_else(|| "GSSAPI".into());
    let user = setting("sasl.username").map(|u| format!(" as user {u:?}")).unwrap_or_default();
    let client: BaseProducer<AuthWatch> =
        config.clone().set("enable.idempotence", "false").create_with_context(AuthWatch::default()).map_err(
            |e| AccessError::Unreachable(format!("cannot create a kafka client for {}: {e}", kafka.brokers)),
        )?;
    let deadline = Instant::now() + timeout;
    loop {
        // Serves librdkafka's error events to AuthWatch.
        client.poll(Duration::from_millis(50));
        if let Some(reason) = client.context().failure.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(AccessError::Authentication(format!(
                "kafka authentication failed at {} (security.protocol {protocol}, SASL mechanism \
                 {mechanism}{user}): {reason}. Check sasl.username and sasl.password in \
                 [kafka.client]; not retrying with the same credentials",
                kafka.brokers
            )));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match client.client().fetch_metadata(None, left.min(Duration::from_millis(250))) {
            Ok(_) => return Ok(()),
            Err(error) if left.is_zero() => {
                return Err(AccessError::Unreachable(format!(
                    "no kafka broker at {} answered within {timeout:?}: {error}",
                    kafka.brokers
                )));
            }
            Err(_) => {}
        }
    }
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
            client: [
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "lake"),
                ("socket.timeout.ms", "9000"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
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
    fn the_client_table_reaches_every_client_and_a_role_table_wins() {
        let mut settings = kafka();
        settings.producer.insert("socket.timeout.ms".into(), "7000".into());
        let configs = [
            ("producer", producer_config(&settings, "p")),
            ("consumer", consumer_config(&settings, "c")),
            ("producer-side admin", admin_config(&settings, Side::Producer, "a")),
            ("consumer-side admin", admin_config(&settings, Side::Consumer, "a")),
        ];
        for (what, config) in &configs {
            assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"), "{what}");
            assert_eq!(config.get("sasl.username"), Some("lake"), "{what}");
        }
        assert_eq!(configs[0].1.get("socket.timeout.ms"), Some("7000"), "[kafka.producer] wins");
        assert_eq!(configs[1].1.get("socket.timeout.ms"), Some("9000"));
        assert_eq!(configs[2].1.get("socket.timeout.ms"), Some("7000"));
        assert_eq!(configs[3].1.get("socket.timeout.ms"), Some("9000"));
    }

    #[test]
    fn the_client_table_may_not_break_a_producer_or_consumer_guarantee() {
        let table = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(check_user_settings("kafka.client", &table("sasl.mechanism", "SCRAM-SHA-512")).is_ok());
        let err = check_user_settings("kafka.client", &table("acks", "1")).unwrap_err();
        assert!(err.to_string().contains("kafka.client.acks = \"1\""), "{err}");
        let err = check_user_settings("kafka.client", &table("enable.auto.commit", "true")).unwrap_err();
        assert!(err.to_string().contains("kafka.client.enable.auto.commit"), "{err}");
        let err = check_user_settings("kafka.client", &table("bootstrap.servers", "x:9092")).unwrap_err();
        assert!(err.to_string().contains("kafka.brokers"), "{err}");
    }

    #[test]
    fn no_broker_is_unreachable_not_an_authentication_failure() {
        let mut settings = kafka();
        settings.brokers = "127.0.0.1:1".into();
        settings.producer.clear();
        settings.client.clear();
        let started = Instant::now();
        let err = check_access(&settings, Side::Producer, Duration::from_millis(800)).unwrap_err();
        assert!(matches!(err, AccessError::Unreachable(_)), "{err:?}");
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
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
