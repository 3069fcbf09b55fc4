//! Kafka client settings and topic creation, built once for every client both services make.
//!
//! ```text
//!  [kafka] brokers, [kafka.tls], [kafka.sasl], [kafka.client], then the role's table:
//!    + [kafka.producer] --> producer_config: the ingester's producer, the appender's
//!                           dead-letter producer (idempotent, acks=all)
//!    + [kafka.consumer] --> consumer_config: the appender's group consumer
//!    + either, by side  --> admin_config: topic creation, metadata probes, topic ids,
//!                           the start-up access check
//! ```
//!
//! Security reaches every client alike, written as the Collector's and Vector's Kafka
//! components write it, `[kafka.tls]` (`ca_file`, `cert_file` + `key_file` for mTLS,
//! `key_password`) and `[kafka.sasl]` (`mechanism`, `username`, `password`), which
//! [`security_settings`] turns into librdkafka's `security.protocol`, `ssl.*` and `sasl.*`; or
//! as those librdkafka keys in `[kafka.client]`, the table for whatever every client needs alike
//! (timeouts, `client.rack`, other mechanisms). A role's table applies after it and wins; one
//! setting given both ways is refused. Secrets (`password`, `key_password`, `sasl.password`,
//! `ssl.key.password`) can come from `${file:…}` or `${env:…}` and are hidden from every log
//! line and error (see `crate::secrets`).
//!
//! [`check_access`] runs at start-up before the topics are created and before the ingester is
//! ready or the appender consumes: a failed authentication (a wrong SASL password) is an error
//! naming the brokers and the mechanism, which stops the service instead of being retried for
//! ever.
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

use serde::{Deserialize, Serialize};

use crate::{config::ConfigError, settings::KafkaSettings};

/// `[kafka.tls]`: TLS to the brokers (`security.protocol` SSL, or SASL_SSL with `[kafka.sasl]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaTlsConfig {
    /// PEM: the CAs the brokers' certificates must chain to; the system's CAs when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// PEM: our client certificate, for brokers that require one (mTLS); with `key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// PEM: the client certificate's private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// The password of an encrypted `key_file` (a secret: `${file:…}` or `${env:…}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_password: Option<String>,
}

/// `[kafka.sasl]`: SASL authentication (`security.protocol` SASL_SSL with `[kafka.tls]`,
/// SASL_PLAINTEXT without).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSaslConfig {
    pub mechanism: SaslMechanism,
    pub username: String,
    /// A secret: `${file:…}` or `${env:…}`.
    pub password: String,
}

impl std::fmt::Debug for KafkaSaslConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSaslConfig")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// The SASL mechanisms librdkafka has built in with OpenSSL (GSSAPI and OAUTHBEARER need more
/// settings: give them in `[kafka.client]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// The librdkafka settings `[kafka.tls]` and `[kafka.sasl]` stand for: key, value, and the
/// config key that gave it.
pub fn security_settings(
    tls: Option<&KafkaTlsConfig>,
    sasl: Option<&KafkaSaslConfig>,
) -> Vec<(&'static str, String, &'static str)> {
    let mut out = Vec::new();
    let protocol = match (tls.is_some(), sasl.is_some()) {
        (true, true) => "SASL_SSL",
        (true, false) => "SSL",
        (false, true) => "SASL_PLAINTEXT",
        (false, false) => return out,
    };
    let from = if sasl.is_some() { "kafka.sasl" } else { "kafka.tls" };
    out.push(("security.protocol", protocol.to_string(), from));
    if let Some(tls) = tls {
        let files = [
            ("ssl.ca.location", &tls.ca_file, "kafka.tls.ca_file"),
            ("ssl.certificate.location", &tls.cert_file, "kafka.tls.cert_file"),
            ("ssl.key.location", &tls.key_file, "kafka.tls.key_file"),
            ("ssl.key.password", &tls.key_password, "kafka.tls.key_password"),
        ];
        for (key, value, from) in files {
            if let Some(value) = value {
                out.push((key, value.clone(), from));
            }
        }
    }
    if let Some(sasl) = sasl {
        out.push(("sasl.mechanism", sasl.mechanism.as_str().to_string(), "kafka.sasl.mechanism"));
        out.push(("sasl.username", sasl.username.clone(), "kafka.sasl.username"));
        out.push(("sasl.password", sasl.password.clone(), "kafka.sasl.password"));
    }
    out
}

/// Keys `[kafka.tls]` / `[kafka.sasl]` set once given: a table may not set them as well.
const SECURITY_KEYS: [&str; 9] = [
    "security.protocol",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
];

/// Checks `[kafka.tls]` and `[kafka.sasl]` (without touching the files) and refuses a security
/// key in `[kafka.client]`, `[kafka.producer]` or `[kafka.consumer]` when they are given.
pub fn check_security(
    tls: Option<&KafkaTlsConfig>,
    sasl: Option<&KafkaSaslConfig>,
    tables: &[(&str, &BTreeMap<String, String>)],
) -> Result<(), ConfigError> {
    let invalid = |key: &str, value: &str, reason: &str| ConfigError::Invalid {
        key: key.to_string(),
        value: format!("{value:?}"),
        reason: reason.to_string(),
    };
    if let Some(tls) = tls {
        for (key, value) in [
            ("kafka.tls.ca_file", &tls.ca_file),
            ("kafka.tls.cert_file", &tls.cert_file),
            ("kafka.tls.key_file", &tls.key_file),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(invalid(key, "", "must name a PEM file (or be left out)"));
            }
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(cert), None) => {
                return Err(invalid(
                    "kafka.tls.cert_file",
                    cert,
                    "needs kafka.tls.key_file, the certificate's key",
                ));
            }
            (None, Some(key)) => {
                return Err(invalid(
                    "kafka.tls.key_file",
                    key,
                    "needs kafka.tls.cert_file, the key's certificate",
                ));
            }
            _ => {}
        }
        if tls.key_password.is_some() && tls.key_file.is_none() {
            return Err(invalid(
                "kafka.tls.key_password",
                "***",
                "is for an encrypted kafka.tls.key_file, which is not set",
            ));
        }
    }
    if let Some(sasl) = sasl {
        if sasl.username.trim().is_empty() {
            return Err(invalid("kafka.sasl.username", &sasl.username, "must not be empty"));
        }
        if sasl.password.is_empty() {
            return Err(invalid(
                "kafka.sasl.password",
                "",
                "must not be empty (write \"${file:/path}\" or \"${env:NAME}\" to keep it out of the file)",
            ));
        }
    }
    if tls.is_none() && sasl.is_none() {
        return Ok(());
    }
    for (table, settings) in tables {
        if let Some(key) = settings.keys().find(|k| SECURITY_KEYS.contains(&k.as_str())) {
            let value = if crate::secrets::is_secret_key(key) { "***" } else { settings[key].as_str() };
            return Err(invalid(
                &format!("{table}.{key}"),
                value,
                "is set by [kafka.tls] / [kafka.sasl]: give it in one place only",
            ));
        }
    }
    Ok(())
}

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

/// Consumer settings chosen unless `[kafka.consumer]` says otherwise: librdkafka's defaults
/// let the consumer hold 64 MiB of prefetched messages (decompressed) and fetch 50 MB
/// responses, more than the appender's 256 MiB; bounded here so that its peak RSS on a backlog
/// stays within it (guarantee 3). `fetch.max.bytes` counts compressed bytes, and a whole
/// response is decompressed before the queue limit is looked at: OTLP logs compress about ten
/// times, so with 16 MiB of each a heap profile on a 25M-record backlog found librdkafka's
/// decompressed batches holding 55-144 MiB; with 4 MiB and 1 MiB, 15-41 MiB, and the appender
/// committed as many rows per second (`bench/compare/results/kafka-backlog-2026-12-07.md`).
/// A full queue postpones a partition's next fetch by `fetch.queue.backoff.ms` (1 s by default,
/// far longer than 4 MiB lasts at the appender's rate).
const CONSUMER_DEFAULTS: [(&str, &str); 3] = [
    ("queued.max.messages.kbytes", "4096"),
    ("fetch.max.bytes", "1048576"),
    ("fetch.queue.backoff.ms", "20"),
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

/// `config` plus the brokers, the client id, `[kafka.tls]` / `[kafka.sasl]`, `[kafka.client]`
/// and then the role's `table`.
fn apply(
    mut config: ClientConfig,
    kafka: &KafkaSettings,
    client_id: &str,
    table: &BTreeMap<String, String>,
) -> ClientConfig {
    config.set("bootstrap.servers", &kafka.brokers).set("client.id", client_id);
    for (key, value, _) in security_settings(kafka.tls.as_ref(), kafka.sasl.as_ref()) {
        config.set(key, value);
    }
    for (key, value) in kafka.client.iter().chain(table) {
        config.set(key, value);
    }
    config.set_log_level(RDKafkaLogLevel::Warning);
    config
}

/// An idempotent `acks=all` producer: our defaults and the role's own (`role_defaults`), then
/// `[kafka.client]`, `[kafka.producer]`, then the settings guarantee 1 needs.
pub fn producer_config(
    kafka: &KafkaSettings,
    client_id: &str,
    role_defaults: &[(&str, &str)],
) -> ClientConfig {
    let mut defaults = ClientConfig::new();
    for (key, value) in PRODUCER_DEFAULTS.iter().chain(role_defaults) {
        defaults.set(*key, *value);
    }
    let mut config = apply(defaults, kafka, client_id, &kafka.producer);
    for (key, allowed) in PRODUCER_REQUIRED {
        config.set(key, allowed[0]);
    }
    config
}

/// The appender's group consumer: our defaults, then `[kafka.client]`, `[kafka.consumer]`,
/// then the settings exactly-once needs.
pub fn consumer_config(kafka: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut defaults = ClientConfig::new();
    for (key, value) in CONSUMER_DEFAULTS {
        defaults.set(key, value);
    }
    let mut config = apply(defaults, kafka, client_id, &kafka.consumer);
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
    /// librdkafka refused the settings themselves (a key file it cannot read or decrypt, an
    /// unknown key): the service should stop.
    Settings(String),
    /// No broker answered in time (down, unreachable, still starting, a TLS handshake that
    /// failed): worth retrying.
    Unreachable(String),
}

impl AccessError {
    /// Whether the same settings would fail again: stop instead of retrying.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, AccessError::Unreachable(_))
    }
}

impl std::fmt::Display for AccessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessError::Authentication(message)
            | AccessError::Settings(message)
            | AccessError::Unreachable(message) => f.write_str(message),
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
/// (never a secret); settings librdkafka refuses outright as [`AccessError::Settings`];
/// anything else that keeps the cluster from answering is [`AccessError::Unreachable`].
pub fn check_access(kafka: &KafkaSettings, side: Side, timeout: Duration) -> Result<(), AccessError> {
    let config = admin_config(kafka, side, "telemetry-lake-access-check");
    let setting = |key: &str| config.get(key).map(str::to_string);
    let protocol = setting("security.protocol").unwrap_or_else(|| "plaintext".into());
    let mechanism =
        setting("sasl.mechanism").or_else(|| setting("sasl.mechanisms")).unwrap_or_else(|| "GSSAPI".into());
    let user = setting("sasl.username").map(|u| format!(" as user {u:?}")).unwrap_or_default();
    let client: BaseProducer<AuthWatch> =
        config.clone().set("enable.idempotence", "false").create_with_context(AuthWatch::default()).map_err(
            |e| {
                AccessError::Settings(format!(
                    "cannot create a kafka client for {} with these settings: {e} (check [kafka.tls], \
                     [kafka.sasl] and [kafka.client]: a key_file / ssl.key.location that cannot be \
                     read, or a wrong key_password / ssl.key.password, shows as \"ssl.key.location \
                     failed\")",
                    kafka.brokers
                ))
            },
        )?;
    let deadline = Instant::now() + timeout;
    loop {
        // Serves librdkafka's error events to AuthWatch.
        client.poll(Duration::from_millis(50));
        if let Some(reason) = client.context().failure.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(AccessError::Authentication(format!(
                "kafka authentication failed at {} (security.protocol {protocol}, SASL mechanism \
                 {mechanism}{user}): {reason}. Check the SASL username and password ([kafka.sasl], or \
                 sasl.username and sasl.password in [kafka.client]); not retrying with the same \
                 credentials",
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
            traces_topic: "otel-spans".into(),
            metrics_topic: "otel-metrics".into(),
            topic: "otel-logs".into(),
            partitions: 12,
            replication_factor: 1,
            group_id: "g".into(),
            dead_letter_topic: Some("otel-logs-dlq".into()),
            tls: None,
            sasl: None,
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
        let config = producer_config(&kafka(), "dlq", &[]);
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
    fn the_consumer_prefetches_a_bounded_amount_unless_the_table_says_otherwise() {
        let config = consumer_config(&kafka(), "appender");
        assert_eq!(config.get("queued.max.messages.kbytes"), Some("4096"));
        assert_eq!(config.get("fetch.queue.backoff.ms"), Some("20"));
        assert_eq!(config.get("fetch.max.bytes"), Some("1000"), "the table overrides a default");
        let mut plain = kafka();
        plain.consumer.clear();
        assert_eq!(consumer_config(&plain, "appender").get("fetch.max.bytes"), Some("1048576"));
        assert_eq!(
            producer_config(&plain, "p", &[]).get("queued.max.messages.kbytes"),
            None,
            "consumers only"
        );
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
            ("producer", producer_config(&settings, "p", &[])),
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
        assert!(matches!(err, AccessError::Unreachable(_)) && !err.is_fatal(), "{err:?}");
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
    fn security(tls: Option<KafkaTlsConfig>, sasl: Option<KafkaSaslConfig>) -> KafkaSettings {
        KafkaSettings {
            tls,
            sasl,
            client: BTreeMap::new(),
            producer: BTreeMap::new(),
            consumer: BTreeMap::new(),
            ..kafka()
        }
    }

    fn scram() -> KafkaSaslConfig {
        KafkaSaslConfig {
            mechanism: SaslMechanism::ScramSha512,
            username: "lake".into(),
            password: "pw-S3cret".into(),
        }
    }

    #[test]
    fn a_key_file_librdkafka_cannot_read_is_fatal_and_named() {
        let tls = KafkaTlsConfig {
            cert_file: Some("/nonexistent/tls.crt".into()),
            key_file: Some("/nonexistent/tls.key".into()),
            ..Default::default()
        };
        let settings = KafkaSettings { brokers: "127.0.0.1:1".into(), ..security(Some(tls), None) };
        let err = check_access(&settings, Side::Consumer, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, AccessError::Settings(_)) && err.is_fatal(), "{err:?}");
        assert!(
            err.to_string().contains("ssl.key.location") && err.to_string().contains("key_file"),
            "{err}"
        );
    }

    #[test]
    fn tls_and_sasl_sections_reach_every_client_as_librdkafka_keys() {
        let tls = KafkaTlsConfig {
            ca_file: Some("/etc/kafka/ca.crt".into()),
            cert_file: Some("/etc/kafka/tls.crt".into()),
            key_file: Some("/etc/kafka/tls.key".into()),
            key_password: Some("key-S3cret".into()),
        };
        let settings = security(Some(tls), Some(scram()));
        for config in [
            producer_config(&settings, "p", &[]),
            consumer_config(&settings, "c"),
            admin_config(&settings, Side::Producer, "a"),
            admin_config(&settings, Side::Consumer, "a"),
        ] {
            assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
            assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
            assert_eq!(config.get("sasl.username"), Some("lake"));
            assert_eq!(config.get("sasl.password"), Some("pw-S3cret"));
            assert_eq!(config.get("ssl.ca.location"), Some("/etc/kafka/ca.crt"));
            assert_eq!(config.get("ssl.certificate.location"), Some("/etc/kafka/tls.crt"));
            assert_eq!(config.get("ssl.key.location"), Some("/etc/kafka/tls.key"));
            assert_eq!(config.get("ssl.key.password"), Some("key-S3cret"));
        }
        let protocol = |tls: bool, sasl: bool| {
            let settings = security(tls.then(KafkaTlsConfig::default), sasl.then(scram));
            producer_config(&settings, "p", &[]).get("security.protocol").map(str::to_string)
        };
        assert_eq!(protocol(true, false).as_deref(), Some("SSL"));
        assert_eq!(protocol(false, true).as_deref(), Some("SASL_PLAINTEXT"));
        assert_eq!(protocol(false, false), None, "librdkafka's default (plaintext) stays");
    }

    #[test]
    fn tls_and_sasl_sections_are_checked_and_not_doubled_by_a_table() {
        let check = |tls: Option<KafkaTlsConfig>, sasl: Option<KafkaSaslConfig>, table: &[(&str, &str)]| {
            let table: BTreeMap<String, String> =
                table.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            check_security(tls.as_ref(), sasl.as_ref(), &[("kafka.client", &table)])
                .map_err(|e| e.to_string())
        };
        assert!(
            check(Some(KafkaTlsConfig::default()), Some(scram()), &[("socket.timeout.ms", "9000")]).is_ok()
        );
        // Without the sections, the librdkafka keys are the way to say it.
        assert!(check(None, None, &[("security.protocol", "SASL_SSL"), ("sasl.password", "x")]).is_ok());
        let err = check(None, Some(scram()), &[("sasl.password", "other-S3cret")]).unwrap_err();
        assert!(err.contains("kafka.client.sasl.password") && err.contains("one place"), "{err}");
        assert!(!err.contains("other-S3cret"), "{err}");
        let err = check(Some(KafkaTlsConfig::default()), None, &[("security.protocol", "SSL")]).unwrap_err();
        assert!(err.contains("kafka.client.security.protocol = \"SSL\""), "{err}");
        let cert_only = KafkaTlsConfig { cert_file: Some("c.pem".into()), ..Default::default() };
        let err = check(Some(cert_only), None, &[]).unwrap_err();
        assert!(err.contains("kafka.tls.cert_file") && err.contains("key_file"), "{err}");
        let password_only = KafkaTlsConfig { key_password: Some("k-S3cret".into()), ..Default::default() };
        let err = check(Some(password_only), None, &[]).unwrap_err();
        assert!(err.contains("kafka.tls.key_password") && !err.contains("k-S3cret"), "{err}");
        let err = check(None, Some(KafkaSaslConfig { password: String::new(), ..scram() }), &[]).unwrap_err();
        assert!(err.contains("kafka.sasl.password") && err.contains("${file:"), "{err}");
        let err = check(None, Some(KafkaSaslConfig { username: " ".into(), ..scram() }), &[]).unwrap_err();
        assert!(err.contains("kafka.sasl.username"), "{err}");
    }

    #[test]
    fn the_sasl_password_is_not_in_debug_output() {
        let settings = security(None, Some(scram()));
        let debug = format!("{settings:?}");
        assert!(!debug.contains("pw-S3cret") && debug.contains("lake"), "{debug}");
    }

    #[test]
    fn kafka_secrets_are_secret_keys_and_file_names_are_not() {
        // What expand.rs registers for redaction: every value under a secret-looking key.
        for key in [
            "password",
            "key_password",
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
        ] {
            assert!(crate::secrets::is_secret_key(key), "{key}");
        }
        for key in [
            "username",
            "ca_file",
            "key_file",
            "sasl.username",
            "ssl.key.location",
            "ssl.ca.location",
            "mechanism",
        ] {
            assert!(!crate::secrets::is_secret_key(key), "{key}");
        }
    }

    #[test]
    // figment's Jail returns its own large error type.
    #[allow(clippy::result_large_err)]
    fn sections_load_from_toml_with_the_password_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "lake.toml",
                "[kafka]\nbrokers = \"k:9093\"\n[kafka.tls]\nca_file = \"/ca.crt\"\n\
                 [kafka.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"lake\"\n",
            )?;
            jail.set_env("TELEMETRY_LAKE_KAFKA__SASL__PASSWORD", "env-S3cret");
            let settings =
                crate::settings::Settings::load(Some(std::path::Path::new("lake.toml"))).expect("settings");
            let config = producer_config(settings.mode.kafka().expect("kafka mode"), "p", &[]);
            assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
            assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
            assert_eq!(config.get("sasl.password"), Some("env-S3cret"));
            assert_eq!(config.get("ssl.ca.location"), Some("/ca.crt"));
            assert_eq!(crate::secrets::redact_registered("pw env-S3cret"), "pw ***");
            jail.create_file(
                "bad.toml",
                "[kafka]\nbrokers = \"k:9093\"\n[kafka.sasl]\nmechanism = \"GSSAPI\"\n",
            )?;
            let err = crate::settings::Settings::load(Some(std::path::Path::new("bad.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("mechanism") && err.contains("SCRAM-SHA-512"), "{err}");
            Ok(())
        });
    }
}
