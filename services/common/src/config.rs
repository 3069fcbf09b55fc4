//! Configuration shared by both services: defaults < TOML file < `TELEMETRY_LAKE_` environment.
//!
//! This is the file format, as users write it. Both binaries read the same file, so every
//! section is known to both and unknown keys are an error naming the key. The services never
//! use a `Config` directly: [`crate::settings::Settings::load`] checks it once into types.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use bytesize::ByteSize;
use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "TELEMETRY_LAKE_CONFIG";
/// Prefix of environment overrides; `__` separates nested keys.
pub const ENV_PREFIX: &str = "TELEMETRY_LAKE_";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub otlp: OtlpConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub signals: SignalsConfig,
    pub kafka: KafkaConfig,
    pub staging: StagingConfig,
    pub flush: FlushConfig,
    pub iceberg: IcebergConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// OTLP/gRPC `LogsService` and `grpc.health.v1`.
    pub grpc_endpoint: SocketAddr,
    /// OTLP/HTTP `POST /v1/logs`.
    pub http_endpoint: SocketAddr,
    /// Largest request accepted, checked after decompression.
    pub max_recv_msg_size: ByteSize,
    /// TLS on both OTLP ports; plain text when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Bearer tokens required on both OTLP ports; none when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            grpc_endpoint: ([0, 0, 0, 0], 4317).into(),
            http_endpoint: ([0, 0, 0, 0], 4318).into(),
            max_recv_msg_size: ByteSize::mib(16),
            tls: None,
            auth: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Admin gRPC (`Flush`, `Stats`), health and reflection.
    pub grpc_endpoint: SocketAddr,
    /// `POST /flush`, `GET /stats`, `GET /metrics`, `GET /healthz`, `GET /readyz`.
    pub http_endpoint: SocketAddr,
    /// TLS on both admin ports; plain text when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Bearer tokens required on both admin ports; none when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// A plain-text port serving only `grpc.health.v1` and `GET /healthz`, `/readyz`, with no
    /// TLS and no token, for Kubernetes probes; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_endpoint: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            grpc_endpoint: ([0, 0, 0, 0], 4320).into(),
            http_endpoint: ([0, 0, 0, 0], 8080).into(),
            tls: None,
            auth: None,
            health_endpoint: None,
        }
    }
}

/// `otlp.tls` / `admin.tls`: the server certificate, and client certificates (mTLS) when
/// `client_ca_file` is set. The files are read again when they change on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM: the server certificate, then any intermediates (cert-manager's `tls.crt`).
    pub cert_file: PathBuf,
    /// PEM: its private key, PKCS#8, PKCS#1 or SEC1 (`tls.key`).
    pub key_file: PathBuf,
    /// PEM: the CAs a client certificate must chain to (`ca.crt`); set, a client without
    /// such a certificate is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// The oldest TLS version accepted.
    #[serde(default)]
    pub min_version: TlsVersion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// `otlp.auth` / `admin.auth`: the bearer tokens a client may send (`authorization: Bearer
/// <token>`), from a file, an environment variable or both (every token of either is valid).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// One token a line (blank lines and `#` comments skipped); read again when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_file: Option<PathBuf>,
    /// The name of an environment variable holding tokens separated by commas or whitespace;
    /// read once at start-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing `EnvFilter` directive; `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Text }
    }
}

/// `[signals]`: which OTLP signals a service takes. A signal switched off is not served: its
/// gRPC service answers `UNIMPLEMENTED` and its HTTP path 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalsConfig {
    pub logs: bool,
    pub traces: bool,
    pub metrics: bool,
}

impl Default for SignalsConfig {
    fn default() -> Self {
        Self { logs: true, traces: true, metrics: true }
    }
}

impl SignalsConfig {
    /// Whether `signal` is on.
    pub fn serves(&self, signal: crate::otlp::SignalKind) -> bool {
        use crate::otlp::SignalKind;
        match signal {
            SignalKind::Logs => self.logs,
            SignalKind::Traces => self.traces,
            SignalKind::Metrics => self.metrics,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated. Empty in the appender means embedded mode.
    pub brokers: String,
    /// The topic of logs (`ExportLogsServiceRequest` values).
    pub topic: String,
    /// The topic of traces (`ExportTraceServiceRequest` values).
    pub traces_topic: String,
    /// The topic of metrics (`ExportMetricsServiceRequest` values).
    pub metrics_topic: String,
    /// Partitions of each topic when the ingester creates it; more than one.
    pub partitions: i32,
    pub replication_factor: i32,
    pub group_id: String,
    /// Whether the appender sends records it cannot stage to `dead_letter_topic` (else they are
    /// counted and skipped).
    pub dead_letters: bool,
    /// Topic for records the appender cannot stage; unset means `{topic}-dlq`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// TLS to the brokers, for every client (see `crate::kafka`); plain text when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::kafka::KafkaTlsConfig>,
    /// SASL authentication, for every client; none when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sasl: Option<crate::kafka::KafkaSaslConfig>,
    /// Passed through to every librdkafka client (producers, the consumer, admin and metadata
    /// clients) before the role's table: security (`security.protocol`, `sasl.*`, `ssl.*`).
    pub client: BTreeMap<String, String>,
    /// Passed through to librdkafka's producer (e.g. `compression.type`, `linger.ms`).
    pub producer: BTreeMap<String, String>,
    /// Passed through to librdkafka's consumer.
    pub consumer: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic: "otel-logs".into(),
            traces_topic: "otel-spans".into(),
            metrics_topic: "otel-metrics".into(),
            partitions: 12,
            replication_factor: 1,
            group_id: "telemetry-lake-appender".into(),
            dead_letters: true,
            dead_letter_topic: None,
            tls: None,
            sasl: None,
            client: BTreeMap::new(),
            producer: BTreeMap::new(),
            consumer: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StagingConfig {
    /// The DuckDB database file rows are staged in until they are committed.
    pub path: String,
    /// DuckDB's own `memory_limit`.
    pub memory_limit: ByteSize,
    /// Staged bytes past which new records are refused with a retryable error.
    pub max_bytes: ByteSize,
}

impl Default for StagingConfig {
    fn default() -> Self {
        Self {
            path: "data/staging.duckdb".into(),
            memory_limit: ByteSize::mib(256),
            max_bytes: ByteSize::gib(2),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlushConfig {
    /// Commit at least this often while anything is staged.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Commit once this many records are staged.
    pub max_records: u64,
    /// Commit once this many bytes are staged.
    pub max_bytes: ByteSize,
}

impl Default for FlushConfig {
    fn default() -> Self {
        Self { interval: Duration::from_secs(30), max_records: 500_000, max_bytes: ByteSize::mib(128) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatalogType {
    #[default]
    Sql,
    Rest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IcebergConfig {
    pub catalog_type: CatalogType,
    pub catalog_name: String,
    /// `sqlite://PATH`, `postgres://…` (sql) or `http://host:8181` (rest).
    pub catalog_uri: String,
    /// A local path, `file://…` or `s3://bucket/prefix`.
    pub warehouse: String,
    pub namespace: String,
    /// The logs table.
    pub table: String,
    /// The traces table.
    pub traces_table: String,
    /// The metrics tables are this followed by the metric type (`metrics_gauge`, `metrics_sum`,
    /// `metrics_histogram`, `metrics_exponential_histogram`, `metrics_summary`).
    pub metrics_table_prefix: String,
    /// Target size of a Parquet data file.
    pub target_file_size: ByteSize,
    /// Passed to the catalog and FileIO (`s3.endpoint`, `s3.access-key-id`, …).
    pub properties: BTreeMap<String, String>,
}

impl Default for IcebergConfig {
    fn default() -> Self {
        Self {
            catalog_type: CatalogType::Sql,
            catalog_name: "telemetry_lake".into(),
            catalog_uri: "sqlite://data/catalog.db".into(),
            warehouse: "data/warehouse".into(),
            namespace: "default".into(),
            table: "logs".into(),
            traces_table: "traces".into(),
            metrics_table_prefix: "metrics_".into(),
            target_file_size: ByteSize::mib(128),
            properties: BTreeMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// `value` is shown as given (quoted when it is text), unless it may hold a secret.
    #[error("invalid configuration: {key} = {value}: {reason}")]
    Invalid { key: String, value: String, reason: String },
}

impl Config {
    /// Loads defaults, then `file` (if any), then `TELEMETRY_LAKE_*` variables, and expands
    /// `${env:…}` / `${file:…}` references in them (see [`crate::expand`]).
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid {
                    key: "--config".into(),
                    value: format!("{:?}", file.display().to_string()),
                    reason: "no such file".into(),
                });
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).ignore(&["CONFIG"]).split("__").lowercase(true));
        // `${env:NAME}` / `${file:PATH}` in any string, and every secret registered for redaction.
        let figment = crate::expand::resolve(figment)?;
        // Lossy: a number or boolean may come from a reference, as text ("12", "true").
        Ok(figment.extract_lossy().map_err(Box::new)?)
    }
}

#[cfg(test)]
// figment's Jail returns its own large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_contract() {
        let c = Config::default();
        assert_eq!(c.otlp.grpc_endpoint.to_string(), "0.0.0.0:4317");
        assert_eq!(c.otlp.http_endpoint.to_string(), "0.0.0.0:4318");
        assert_eq!(c.admin.grpc_endpoint.to_string(), "0.0.0.0:4320");
        assert_eq!(c.admin.http_endpoint.to_string(), "0.0.0.0:8080");
        assert_eq!(c.otlp.max_recv_msg_size, ByteSize::mib(16));
        assert_eq!(c.kafka.topic, "otel-logs");
        assert_eq!(c.kafka.partitions, 12);
        assert_eq!(c.kafka.group_id, "telemetry-lake-appender");
        assert_eq!(c.staging.path, "data/staging.duckdb");
        assert_eq!(c.staging.memory_limit, ByteSize::mib(256));
        assert_eq!(c.flush.interval, Duration::from_secs(30));
        assert_eq!(c.flush.max_records, 500_000);
        assert_eq!(c.flush.max_bytes, ByteSize::mib(128));
        assert_eq!(c.iceberg.catalog_name, "telemetry_lake");
        assert_eq!((c.iceberg.namespace.as_str(), c.iceberg.table.as_str()), ("default", "logs"));
    }

    #[test]
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "lake.toml",
                r#"
                [flush]
                interval = "10s"
                max_bytes = "64MiB"
                [kafka.producer]
                "linger.ms" = "5"
                [iceberg.properties]
                "s3.region" = "eu-west-1"
                "#,
            )?;
            jail.set_env("TELEMETRY_LAKE_FLUSH__MAX_RECORDS", "1000");
            jail.set_env("TELEMETRY_LAKE_OTLP__GRPC_ENDPOINT", "127.0.0.1:14317");
            let c = Config::load(Some(Path::new("lake.toml"))).expect("valid config");
            assert_eq!(c.flush.interval, Duration::from_secs(10));
            assert_eq!(c.flush.max_bytes, ByteSize::mib(64));
            assert_eq!(c.flush.max_records, 1000);
            assert_eq!(c.otlp.grpc_endpoint.to_string(), "127.0.0.1:14317");
            assert_eq!(c.kafka.producer.get("linger.ms").map(String::as_str), Some("5"));
            assert_eq!(c.iceberg.properties.get("s3.region").map(String::as_str), Some("eu-west-1"));
            Ok(())
        });
    }

    #[test]
    fn iceberg_properties_with_dots_can_come_from_one_variable() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("lake.toml", "[iceberg.properties]\n\"s3.region\" = \"eu-west-1\"\n")?;
            jail.set_env(
                "TELEMETRY_LAKE_ICEBERG__PROPERTIES",
                r#"{"s3.endpoint"="http://minio:9000", "s3.access-key-id"="AKIA/x+y=="}"#,
            );
            let c = Config::load(Some(Path::new("lake.toml"))).expect("valid config");
            let get = |k: &str| c.iceberg.properties.get(k).map(String::as_str);
            assert_eq!(get("s3.endpoint"), Some("http://minio:9000"));
            assert_eq!(get("s3.access-key-id"), Some("AKIA/x+y=="));
            assert_eq!(get("s3.region"), Some("eu-west-1"), "the file's properties stay");
            Ok(())
        });
    }

    #[test]
    fn security_keys_per_listener_group() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "lake.toml",
                r#"
                [otlp.tls]
                cert_file = "/tls/tls.crt"
                key_file = "/tls/tls.key"
                client_ca_file = "/tls/ca.crt"
                [otlp.auth]
                tokens_file = "/tokens/otlp"
                [admin]
                health_endpoint = "0.0.0.0:8081"
                [admin.tls]
                cert_file = "/admin-tls/tls.crt"
                key_file = "/admin-tls/tls.key"
                min_version = "1.3"
                "#,
            )?;
            jail.set_env("TELEMETRY_LAKE_ADMIN__AUTH__TOKENS_ENV", "ADMIN_TOKENS");
            let c = Config::load(Some(Path::new("lake.toml"))).expect("valid config");
            let otlp_tls = c.otlp.tls.expect("otlp.tls");
            assert_eq!(otlp_tls.client_ca_file.as_deref(), Some(Path::new("/tls/ca.crt")));
            assert_eq!(otlp_tls.min_version, TlsVersion::Tls12, "1.2 unless set");
            assert_eq!(c.otlp.auth.unwrap().tokens_file.as_deref(), Some(Path::new("/tokens/otlp")));
            let admin_tls = c.admin.tls.expect("admin.tls");
            assert_eq!((admin_tls.min_version, admin_tls.client_ca_file), (TlsVersion::Tls13, None));
            assert_eq!(c.admin.auth.unwrap().tokens_env.as_deref(), Some("ADMIN_TOKENS"));
            assert_eq!(c.admin.health_endpoint.map(|a| a.to_string()).as_deref(), Some("0.0.0.0:8081"));

            let plain = Config::default();
            assert!(
                plain.otlp.tls.is_none()
                    && plain.otlp.auth.is_none()
                    && plain.admin.health_endpoint.is_none()
            );

            jail.create_file(
                "lake.toml",
                "[otlp.tls]\ncert_file = \"a\"\nkey_file = \"b\"\nmin_version = \"1.1\"\n",
            )?;
            let err = Config::load(Some(Path::new("lake.toml"))).unwrap_err().to_string();
            assert!(err.contains("min_version") || err.contains("1.1"), "{err}");
            jail.create_file("lake.toml", "[otlp.tls]\ncert_file = \"a\"\n")?;
            let err = Config::load(Some(Path::new("lake.toml"))).unwrap_err().to_string();
            assert!(err.contains("key_file"), "{err}");
            jail.create_file("lake.toml", "[admin.auth]\ntoken_file = \"a\"\n")?;
            let err = Config::load(Some(Path::new("lake.toml"))).unwrap_err().to_string();
            assert!(err.contains("token_file"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("lake.toml", "[flush]\nintervall = \"10s\"\n")?;
            let err = Config::load(Some(Path::new("lake.toml"))).unwrap_err().to_string();
            assert!(err.contains("intervall"), "{err}");
            jail.create_file("lake.toml", "")?;
            jail.set_env("TELEMETRY_LAKE_STAGING__PATHH", "x");
            let err = Config::load(Some(Path::new("lake.toml"))).unwrap_err().to_string();
            assert!(err.contains("pathh"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn values_that_do_not_parse_are_refused_with_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("lake.toml", "[flush]\ninterval = \"soon\"\n")?;
            let err = Config::load(Some(Path::new("lake.toml"))).unwrap_err().to_string();
            assert!(err.contains("interval"), "{err}");
            Ok(())
        });
    }
}
