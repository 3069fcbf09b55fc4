//! Settings: the configuration, checked once at start-up into types the services trust.
//!
//! ```text
//!  Config (config.rs: the file format, strings as users write them)
//!      |  Settings::from_config: every rule checked here, once; errors name the key and value
//!      v
//!  Settings { mode: Embedded | Kafka(KafkaSettings), staging, flush,
//!             iceberg: { catalog: Sqlite(path) | Postgres(url) | Rest(url), warehouse, ... } }
//! ```
//!
//! Nothing downstream parses a URI or a path again. Checking touches neither the disk nor the
//! network: relative paths are made absolute against the working directory, and the
//! directories they name are created by whoever opens them (staging, the catalog, the lake).

use std::{collections::BTreeMap, fmt, path::PathBuf};

use bytesize::ByteSize;

use crate::config::{
    AdminConfig, CatalogType, Config, ConfigError, FlushConfig, IcebergConfig, KafkaConfig, LogConfig,
    OtlpConfig, SignalsConfig, StagingConfig,
};

/// The checked configuration of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub otlp: OtlpConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// `[signals]`: which OTLP signals are served.
    pub signals: SignalsConfig,
    /// Embedded when `kafka.brokers` is empty (the appender's default), else Kafka.
    pub mode: Mode,
    pub staging: StagingSettings,
    pub flush: FlushConfig,
    pub iceberg: IcebergSettings,
}

/// Where records come from (appender) or go to (ingester).
// Made once at start-up: the size of the Kafka variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// No Kafka: the appender takes OTLP straight into staging.
    Embedded,
    Kafka(KafkaSettings),
}

impl Mode {
    pub fn kafka(&self) -> Option<&KafkaSettings> {
        match self {
            Mode::Embedded => None,
            Mode::Kafka(kafka) => Some(kafka),
        }
    }
}

/// `[kafka]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma separated; never empty.
    pub brokers: String,
    /// The logs topic (`kafka.topic`).
    pub topic: String,
    /// `kafka.traces_topic` and `kafka.metrics_topic`.
    pub traces_topic: String,
    pub metrics_topic: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub group_id: String,
    /// Where the appender sends records it cannot stage; `None` when `kafka.dead_letters =
    /// false` (they are then counted and skipped).
    pub dead_letter_topic: Option<String>,
    /// `[kafka.tls]` and `[kafka.sasl]`, for every client (see `crate::kafka`).
    pub tls: Option<crate::kafka::KafkaTlsConfig>,
    pub sasl: Option<crate::kafka::KafkaSaslConfig>,
    /// `[kafka.client]`, passed to every librdkafka client before the role's table.
    pub client: BTreeMap<String, String>,
    /// `[kafka.producer]`, passed to librdkafka (see `crate::kafka` for what it may not change).
    pub producer: BTreeMap<String, String>,
    /// `[kafka.consumer]`, likewise.
    pub consumer: BTreeMap<String, String>,
}

impl KafkaSettings {
    /// The topic of `signal`, and the key that sets it.
    pub fn topic_of(&self, signal: crate::otlp::SignalKind) -> (&'static str, &str) {
        use crate::otlp::SignalKind;
        match signal {
            SignalKind::Logs => ("kafka.topic", &self.topic),
            SignalKind::Traces => ("kafka.traces_topic", &self.traces_topic),
            SignalKind::Metrics => ("kafka.metrics_topic", &self.metrics_topic),
        }
    }
}

/// `[staging]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct StagingSettings {
    /// The DuckDB database file, absolute.
    pub path: PathBuf,
    pub memory_limit: ByteSize,
    pub max_bytes: ByteSize,
    /// The largest batch (one encoded request or Kafka message) staging takes in one piece:
    /// `otlp.max_recv_msg_size`, which no OTLP request exceeds once decoded, or `max_bytes` if
    /// that is smaller (a larger batch could never be staged, and would be refused as "full"
    /// for ever instead of as too large).
    pub max_batch: ByteSize,
}

/// The catalog behind `iceberg.catalog_type` and `iceberg.catalog_uri`.
#[derive(Clone, PartialEq, Eq)]
pub enum Catalog {
    /// A SQL catalog in a SQLite file: its absolute path (or `:memory:`) and the URI's query
    /// string (without `?`), if any.
    Sqlite { path: PathBuf, query: String },
    /// A SQL catalog in PostgreSQL: the `postgres://` URL as given.
    Postgres(String),
    /// An Iceberg REST catalog: its `http(s)://` base URL as given.
    Rest(String),
}

impl fmt::Debug for Catalog {
    // The URLs may hold a password: never print them whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Catalog::Sqlite { path, .. } => f.debug_tuple("Sqlite").field(path).finish(),
            Catalog::Postgres(_) => f.write_str("Postgres(..)"),
            Catalog::Rest(_) => f.write_str("Rest(..)"),
        }
    }
}

/// Where the table's files live (`iceberg.warehouse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warehouse {
    /// A local directory (a plain path or `file:///…`), absolute.
    Local(PathBuf),
    /// An object store URL such as `s3://bucket/prefix`, without a trailing slash.
    Url(String),
    /// A REST catalog's warehouse name, which the server resolves; passed on as given, and
    /// empty when not set.
    Named(String),
}

impl Warehouse {
    /// The location as a URL (`file:///…`, `s3://…`) or, for a named warehouse, the name.
    pub fn location(&self) -> String {
        match self {
            Warehouse::Local(path) => format!("file://{}", path.display()),
            Warehouse::Url(url) | Warehouse::Named(url) => url.clone(),
        }
    }
}

/// `[iceberg]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct IcebergSettings {
    pub catalog: Catalog,
    pub catalog_name: String,
    /// `iceberg.catalog_uri` as given, for messages (redact it before printing).
    pub catalog_uri: String,
    pub warehouse: Warehouse,
    /// The namespace's dot-separated parts, each non-empty.
    pub namespace: Vec<String>,
    /// The logs table (`iceberg.table`).
    pub table: String,
    /// `iceberg.traces_table`.
    pub traces_table: String,
    /// `iceberg.metrics_table_prefix`.
    pub metrics_table_prefix: String,
    pub target_file_size: ByteSize,
    pub properties: BTreeMap<String, String>,
}

/// A refused value: `value` as the message shows it (see [`quoted`]).
fn invalid(key: &str, value: impl fmt::Display, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), value: value.to_string(), reason: reason.into() }
}

/// A text value as the error shows it: quoted, as in the TOML file.
fn quoted(value: &str) -> String {
    format!("{value:?}")
}

fn absolute(path: &str, key: &str) -> Result<PathBuf, ConfigError> {
    std::path::absolute(path).map_err(|e| invalid(key, quoted(path), format!("cannot be made absolute: {e}")))
}

impl Settings {
    /// Loads defaults < `file` < `TELEMETRY_LAKE_*` environment and checks the result.
    pub fn load(file: Option<&std::path::Path>) -> Result<Settings, ConfigError> {
        Settings::from_config(Config::load(file)?)
    }

    /// Checks `config` and turns it into settings; the error names the key and its value.
    pub fn from_config(config: Config) -> Result<Settings, ConfigError> {
        let Config { otlp, admin, log, signals, kafka, staging, flush, iceberg } = config;
        if otlp.max_recv_msg_size.as_u64() == 0 {
            return Err(invalid("otlp.max_recv_msg_size", otlp.max_recv_msg_size, "must be larger than 0"));
        }
        check_flush(&flush)?;
        let staging = staging_settings(staging, &flush, otlp.max_recv_msg_size)?;
        let mode = if kafka.brokers.trim().is_empty() {
            // The other [kafka] keys still have to make sense: the same file serves the ingester.
            kafka_settings(KafkaConfig { brokers: "-".into(), ..kafka })?;
            Mode::Embedded
        } else {
            Mode::Kafka(kafka_settings(kafka)?)
        };
        let iceberg = iceberg_settings(iceberg)?;
        Ok(Settings { otlp, admin, log, signals, mode, staging, flush, iceberg })
    }
}

fn check_flush(flush: &FlushConfig) -> Result<(), ConfigError> {
    if flush.interval.is_zero() {
        return Err(invalid("flush.interval", quoted("0s"), "must be longer than 0s"));
    }
    if flush.max_records == 0 {
        return Err(invalid("flush.max_records", flush.max_records, "must be larger than 0"));
    }
    if flush.max_bytes.as_u64() == 0 {
        return Err(invalid("flush.max_bytes", flush.max_bytes, "must be larger than 0"));
    }
    Ok(())
}

fn staging_settings(
    staging: StagingConfig,
    flush: &FlushConfig,
    max_batch: ByteSize,
) -> Result<StagingSettings, ConfigError> {
    if staging.path.trim().is_empty() {
        return Err(invalid("staging.path", quoted(&staging.path), "must name a file"));
    }
    if staging.max_bytes < flush.max_bytes {
        return Err(invalid(
            "staging.max_bytes",
            staging.max_bytes,
            format!("must be at least flush.max_bytes ({})", flush.max_bytes),
        ));
    }
    if staging.memory_limit < ByteSize::mib(16) {
        return Err(invalid("staging.memory_limit", staging.memory_limit, "must be at least 16MiB"));
    }
    Ok(StagingSettings {
        path: absolute(&staging.path, "staging.path")?,
        memory_limit: staging.memory_limit,
        max_bytes: staging.max_bytes,
        max_batch: max_batch.min(staging.max_bytes),
    })
}

fn kafka_settings(kafka: KafkaConfig) -> Result<KafkaSettings, ConfigError> {
    let topics = [
        ("kafka.topic", &kafka.topic),
        ("kafka.traces_topic", &kafka.traces_topic),
        ("kafka.metrics_topic", &kafka.metrics_topic),
    ];
    for (i, (key, topic)) in topics.iter().enumerate() {
        if topic.trim().is_empty() {
            return Err(invalid(key, quoted(topic), "must not be empty"));
        }
        if let Some((other, _)) = topics[..i].iter().find(|(_, earlier)| earlier == topic) {
            return Err(invalid(
                key,
                quoted(topic),
                format!("must differ from {other}: each signal has a topic of its own"),
            ));
        }
    }
    if kafka.partitions < 2 {
        return Err(invalid(
            "kafka.partitions",
            kafka.partitions,
            "must be at least 2 so the topic can scale out",
        ));
    }
    if kafka.replication_factor < 1 {
        return Err(invalid("kafka.replication_factor", kafka.replication_factor, "must be at least 1"));
    }
    if kafka.group_id.trim().is_empty() {
        return Err(invalid("kafka.group_id", quoted(&kafka.group_id), "must not be empty"));
    }
    let dead_letter_topic = match (kafka.dead_letters, kafka.dead_letter_topic) {
        (false, _) => None,
        (true, None) => Some(format!("{}-dlq", kafka.topic)),
        (true, Some(name)) if name.trim().is_empty() => {
            return Err(invalid(
                "kafka.dead_letter_topic",
                quoted(&name),
                "must name a topic (leave it out for the topic's name plus -dlq); to skip \
                 undecodable records instead, set kafka.dead_letters = false",
            ));
        }
        (true, Some(name)) if topics.iter().any(|(_, topic)| **topic == name) => {
            return Err(invalid(
                "kafka.dead_letter_topic",
                quoted(&name),
                "must differ from kafka.topic, kafka.traces_topic and kafka.metrics_topic",
            ));
        }
        (true, Some(name)) => Some(name),
    };
    crate::kafka::check_user_settings("kafka.client", &kafka.client)?;
    crate::kafka::check_security(
        kafka.tls.as_ref(),
        kafka.sasl.as_ref(),
        &[
            ("kafka.client", &kafka.client),
            ("kafka.producer", &kafka.producer),
            ("kafka.consumer", &kafka.consumer),
        ],
    )?;
    crate::kafka::check_user_settings("kafka.producer", &kafka.producer)?;
    crate::kafka::check_user_settings("kafka.consumer", &kafka.consumer)?;
    Ok(KafkaSettings {
        brokers: kafka.brokers.trim().to_string(),
        topic: kafka.topic,
        traces_topic: kafka.traces_topic,
        metrics_topic: kafka.metrics_topic,
        partitions: kafka.partitions,
        replication_factor: kafka.replication_factor,
        group_id: kafka.group_id,
        dead_letter_topic,
        tls: kafka.tls,
        sasl: kafka.sasl,
        client: kafka.client,
        producer: kafka.producer,
        consumer: kafka.consumer,
    })
}

fn iceberg_settings(iceberg: IcebergConfig) -> Result<IcebergSettings, ConfigError> {
    let namespace: Vec<String> = iceberg.namespace.split('.').map(str::to_string).collect();
    if namespace.iter().any(|part| part.trim().is_empty()) {
        return Err(invalid(
            "iceberg.namespace",
            quoted(&iceberg.namespace),
            "must be dot-separated non-empty names, e.g. \"default\" or \"telemetry.prod\"",
        ));
    }
    for (key, name) in [("iceberg.table", &iceberg.table), ("iceberg.traces_table", &iceberg.traces_table)] {
        if name.trim().is_empty() {
            return Err(invalid(key, quoted(name), "must not be empty"));
        }
    }
    if iceberg.metrics_table_prefix.trim().is_empty() {
        return Err(invalid(
            "iceberg.metrics_table_prefix",
            quoted(&iceberg.metrics_table_prefix),
            "must not be empty (the tables are this followed by gauge, sum, histogram, …)",
        ));
    }
    let metrics_tables = ["gauge", "sum", "histogram", "exponential_histogram", "summary"]
        .map(|kind| format!("{}{kind}", iceberg.metrics_table_prefix));
    if iceberg.traces_table == iceberg.table
        || metrics_tables.iter().any(|t| *t == iceberg.table || *t == iceberg.traces_table)
    {
        return Err(invalid(
            "iceberg.traces_table",
            quoted(&iceberg.traces_table),
            format!(
                "iceberg.table ({:?}), iceberg.traces_table and the metrics tables ({}) must all differ",
                iceberg.table,
                metrics_tables.join(", ")
            ),
        ));
    }
    if iceberg.catalog_name.trim().is_empty() {
        return Err(invalid("iceberg.catalog_name", quoted(&iceberg.catalog_name), "must not be empty"));
    }
    if iceberg.target_file_size.as_u64() == 0 {
        return Err(invalid("iceberg.target_file_size", iceberg.target_file_size, "must be larger than 0"));
    }
    let catalog = catalog(iceberg.catalog_type, &iceberg.catalog_uri)?;
    let warehouse = warehouse(&iceberg.warehouse, matches!(catalog, Catalog::Rest(_)))?;
    Ok(IcebergSettings {
        catalog,
        catalog_name: iceberg.catalog_name,
        catalog_uri: iceberg.catalog_uri,
        warehouse,
        namespace,
        table: iceberg.table,
        traces_table: iceberg.traces_table,
        metrics_table_prefix: iceberg.metrics_table_prefix,
        target_file_size: iceberg.target_file_size,
        properties: iceberg.properties,
    })
}

/// The catalog named by `iceberg.catalog_type` and `iceberg.catalog_uri`. The error shows the
/// URI's scheme only: the rest may hold a password.
fn catalog(kind: CatalogType, uri: &str) -> Result<Catalog, ConfigError> {
    let uri = uri.trim();
    let scheme = uri.split_once(':').map_or(uri, |(scheme, _)| scheme);
    let shown = format!("{scheme}:…");
    match kind {
        CatalogType::Rest if uri.starts_with("http://") || uri.starts_with("https://") => {
            Ok(Catalog::Rest(uri.to_string()))
        }
        CatalogType::Rest => Err(invalid(
            "iceberg.catalog_uri",
            quoted(&shown),
            "a rest catalog needs an http:// or https:// uri",
        )),
        CatalogType::Sql if uri.starts_with("postgres://") || uri.starts_with("postgresql://") => {
            Ok(Catalog::Postgres(uri.to_string()))
        }
        CatalogType::Sql => {
            let Some(rest) = uri.strip_prefix("sqlite:") else {
                return Err(invalid(
                    "iceberg.catalog_uri",
                    quoted(&shown),
                    "a sql catalog needs sqlite://PATH or postgres://… (for a rest catalog set \
                     iceberg.catalog_type = \"rest\")",
                ));
            };
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if path.is_empty() {
                return Err(invalid(
                    "iceberg.catalog_uri",
                    quoted(uri),
                    "the sqlite uri names no file, e.g. sqlite://data/catalog.db",
                ));
            }
            let path =
                if path == ":memory:" { PathBuf::from(path) } else { absolute(path, "iceberg.catalog_uri")? };
            Ok(Catalog::Sqlite { path, query: query.to_string() })
        }
    }
}

fn warehouse(warehouse: &str, rest_catalog: bool) -> Result<Warehouse, ConfigError> {
    let trimmed = warehouse.trim();
    let without_slash = |s: &str| {
        let t = s.trim_end_matches('/');
        if t.ends_with(':') { s.to_string() } else { t.to_string() }
    };
    if let Some(path) = trimmed.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(invalid(
                "iceberg.warehouse",
                quoted(warehouse),
                "a file:// warehouse needs an absolute path (file:///…); or give a plain path",
            ));
        }
        return Ok(Warehouse::Local(PathBuf::from(without_slash(path))));
    }
    if trimmed.contains("://") {
        return Ok(Warehouse::Url(without_slash(trimmed)));
    }
    // For REST the server owns locations: anything else is a warehouse name, passed as is.
    if rest_catalog {
        return Ok(Warehouse::Named(trimmed.to_string()));
    }
    if trimmed.is_empty() {
        return Err(invalid(
            "iceberg.warehouse",
            quoted(warehouse),
            "must name a path, file:///… or s3://bucket/prefix",
        ));
    }
    Ok(Warehouse::Local(absolute(&without_slash(trimmed), "iceberg.warehouse")?))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings(edit: impl FnOnce(&mut Config)) -> Result<Settings, String> {
        let mut config = Config::default();
        edit(&mut config);
        Settings::from_config(config).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_embedded_lake_under_data() {
        let s = settings(|_| {}).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(s.mode, Mode::Embedded);
        assert_eq!(s.staging.path, cwd.join("data/staging.duckdb"));
        assert_eq!(
            s.iceberg.catalog,
            Catalog::Sqlite { path: cwd.join("data/catalog.db"), query: String::new() }
        );
        assert_eq!(s.iceberg.warehouse, Warehouse::Local(cwd.join("data/warehouse")));
        assert_eq!(s.iceberg.namespace, vec!["default".to_string()]);
        assert_eq!(s.flush.interval, Duration::from_secs(30));
        assert!(!cwd.join("nowhere-created").exists());
    }

    #[test]
    fn catalogs_and_warehouses_become_types() {
        let s = settings(|c| {
            c.iceberg.catalog_uri = "postgres://u:p@db/lake".into();
            c.iceberg.warehouse = "s3://bucket/prefix/".into();
        })
        .unwrap();
        assert_eq!(s.iceberg.catalog, Catalog::Postgres("postgres://u:p@db/lake".into()));
        assert_eq!(s.iceberg.warehouse, Warehouse::Url("s3://bucket/prefix".into()));
        assert!(!format!("{:?}", s.iceberg.catalog).contains("u:p"), "the password is never printed");

        let s = settings(|c| {
            c.iceberg.catalog_type = CatalogType::Rest;
            c.iceberg.catalog_uri = "http://rest:8181".into();
            c.iceberg.warehouse = "lake".into();
        })
        .unwrap();
        assert_eq!(s.iceberg.catalog, Catalog::Rest("http://rest:8181".into()));
        assert_eq!(s.iceberg.warehouse, Warehouse::Named("lake".into()));

        let s = settings(|c| {
            c.iceberg.catalog_uri = "sqlite:/tmp/x/cat.db?mode=ro".into();
            c.iceberg.warehouse = "file:///tmp/wh/".into();
        })
        .unwrap();
        assert_eq!(
            s.iceberg.catalog,
            Catalog::Sqlite { path: "/tmp/x/cat.db".into(), query: "mode=ro".into() }
        );
        assert_eq!(s.iceberg.warehouse, Warehouse::Local("/tmp/wh".into()));
        assert_eq!(s.iceberg.warehouse.location(), "file:///tmp/wh");
    }

    #[test]
    fn staging_takes_batches_up_to_the_smaller_of_the_message_limit_and_its_size() {
        let settings = |max_bytes: ByteSize| {
            let mut c = Config::default();
            c.flush.max_bytes = ByteSize::kib(64);
            c.staging.max_bytes = max_bytes;
            Settings::from_config(c).unwrap().staging.max_batch
        };
        assert_eq!(settings(ByteSize::gib(2)), ByteSize::mib(16), "otlp.max_recv_msg_size");
        assert_eq!(settings(ByteSize::kib(64)), ByteSize::kib(64), "staging.max_bytes");
    }

    #[test]
    fn kafka_mode_and_its_dead_letters() {
        let s = settings(|c| c.kafka.brokers = " k:9092 ".into()).unwrap();
        let kafka = s.mode.kafka().expect("kafka mode");
        assert_eq!(kafka.brokers, "k:9092");
        assert_eq!(kafka.dead_letter_topic.as_deref(), Some("otel-logs-dlq"));
        let s = settings(|c| {
            c.kafka.brokers = "k:9092".into();
            c.kafka.dead_letters = false;
        })
        .unwrap();
        assert_eq!(s.mode.kafka().unwrap().dead_letter_topic, None);
        let err = settings(|c| {
            c.kafka.brokers = "k:9092".into();
            c.kafka.dead_letter_topic = Some(String::new());
        })
        .unwrap_err();
        assert!(
            err.contains("kafka.dead_letter_topic = \"\"") && err.contains("kafka.dead_letters = false"),
            "{err}"
        );
    }

    #[test]
    fn each_signal_has_a_topic_of_its_own() {
        let s = settings(|c| c.kafka.brokers = "k:9092".into()).unwrap();
        let kafka = s.mode.kafka().unwrap();
        assert_eq!(
            (kafka.topic.as_str(), kafka.traces_topic.as_str(), kafka.metrics_topic.as_str()),
            ("otel-logs", "otel-spans", "otel-metrics")
        );
        assert_eq!(s.signals, SignalsConfig { logs: true, traces: true, metrics: true });
        let err = settings(|c| {
            c.kafka.brokers = "k:9092".into();
            c.kafka.metrics_topic = "otel-spans".into();
        })
        .unwrap_err();
        assert!(
            err.contains("kafka.metrics_topic = \"otel-spans\"") && err.contains("kafka.traces_topic"),
            "{err}"
        );
        let err = settings(|c| c.kafka.traces_topic = " ".into()).unwrap_err();
        assert!(err.contains("kafka.traces_topic = \" \"") && err.contains("must not be empty"), "{err}");
        let err = settings(|c| {
            c.kafka.brokers = "k:9092".into();
            c.kafka.dead_letter_topic = Some("otel-metrics".into());
        })
        .unwrap_err();
        assert!(err.contains("kafka.dead_letter_topic = \"otel-metrics\""), "{err}");
    }

    #[test]
    fn every_error_names_the_key_and_the_value() {
        type Edit = Box<dyn FnOnce(&mut Config)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|c| c.kafka.partitions = 1), "kafka.partitions = 1"),
            (Box::new(|c| c.flush.max_records = 0), "flush.max_records = 0"),
            (Box::new(|c| c.iceberg.namespace = "a..b".into()), "iceberg.namespace = \"a..b\""),
            (Box::new(|c| c.iceberg.warehouse = "file://rel".into()), "iceberg.warehouse = \"file://rel\""),
            (
                Box::new(|c| c.iceberg.catalog_uri = "mysql://u:secret@h/db".into()),
                "iceberg.catalog_uri = \"mysql:…\"",
            ),
            (Box::new(|c| c.staging.max_bytes = ByteSize::mib(1)), "staging.max_bytes = 1.0 MiB"),
            (
                Box::new(|c| {
                    c.kafka.brokers = "k:9092".into();
                    c.kafka.producer.insert("acks".into(), "1".into());
                }),
                "kafka.producer.acks = \"1\"",
            ),
            (
                Box::new(|c| {
                    c.kafka.brokers = "k:9092".into();
                    c.kafka.consumer.insert("enable.auto.commit".into(), "true".into());
                }),
                "kafka.consumer.enable.auto.commit = \"true\"",
            ),
        ];
        for (edit, expected) in cases {
            let err = settings(edit).unwrap_err();
            assert!(err.contains(expected), "{err} should name {expected}");
            assert!(!err.contains("secret"), "{err}");
        }
    }
}
