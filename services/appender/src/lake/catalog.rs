//! Connecting to the configured Iceberg catalog, with a FileIO for the warehouse's storage.
//!
//! In: `[iceberg]` as checked settings. Out: an `Arc<dyn Catalog>` (SQLite or PostgreSQL SQL
//! catalog, or a REST catalog with timeouts) whose FileIO picks its storage from each path's
//! scheme (`file://`, `s3://`) and gets `iceberg.properties`. Local directories (the SQLite
//! file's, a local warehouse) are created here, when the catalog is opened, and nowhere else.
//! Errors never hold a secret: they go through the caller's [`Redactor`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use iceberg::io::{
    S3_ACCESS_KEY_ID, S3_ASSUME_ROLE_ARN, S3_SECRET_ACCESS_KEY, S3_SESSION_TOKEN, StorageFactory,
};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent};
use iceberg_catalog_rest::{REST_CATALOG_PROP_URI, REST_CATALOG_PROP_WAREHOUSE, RestCatalogBuilder};
use iceberg_catalog_sql::{
    SQL_CATALOG_PROP_BIND_STYLE, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE, SqlBindStyle,
    SqlCatalogBuilder,
};
use iceberg_storage_opendal::{
    AwsCredential, CustomAwsCredentialLoader, OpenDalResolvingStorageFactory, ProvideCredential,
};
use telemetry_lake_common::secrets::Redactor;
use telemetry_lake_common::settings::{Catalog as CatalogSettings, IcebergSettings, Warehouse};

use super::{LakeError, retryable};

/// Property (Iceberg Java's name) bounding how long connecting to a REST catalog may take.
pub const REST_CONNECT_TIMEOUT_PROPERTY: &str = "rest.client.connection-timeout-ms";
/// Property (Iceberg Java's name) bounding how long a REST catalog may stay silent mid-request.
pub const REST_SOCKET_TIMEOUT_PROPERTY: &str = "rest.client.socket-timeout-ms";
const REST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REST_SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// `catalog_name (redacted catalog_uri)`, for messages.
pub fn label(iceberg: &IcebergSettings, redactor: &Redactor) -> String {
    format!("{} ({})", iceberg.catalog_name, redactor.redact(&iceberg.catalog_uri))
}

/// Connects the configured catalog. A catalog database or REST catalog refusing the credentials
/// is not retryable; a catalog that cannot be reached is. A REST catalog is asked once here
/// (whether the namespace exists), with `iceberg.properties` `token` (a static bearer token) or
/// `credential` (`client_id:client_secret`, traded for a token at `oauth2-server-uri`, by default
/// the catalog's `/v1/oauth/tokens`, with `scope`, by default `catalog`).
pub async fn connect(iceberg: &IcebergSettings, redactor: &Redactor) -> Result<Arc<dyn Catalog>, LakeError> {
    let catalog_label = label(iceberg, redactor);
    let storage: Arc<dyn StorageFactory> = Arc::new(storage_factory(&iceberg.properties));
    let mut props: HashMap<String, String> =
        iceberg.properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let connect_error = |e: iceberg::Error| LakeError::Catalog {
        catalog: catalog_label.clone(),
        action: "connect",
        message: redactor.redact(&e.to_string()),
        retryable: retryable(&e) && !refused_credentials(&e),
    };
    let sql = |uri: String, style: SqlBindStyle, mut props: HashMap<String, String>| {
        props.insert(SQL_CATALOG_PROP_URI.into(), uri);
        props.insert(SQL_CATALOG_PROP_BIND_STYLE.into(), style.to_string());
        props
    };
    let props = match &iceberg.catalog {
        CatalogSettings::Sqlite { path, query } => {
            if let Some(dir) = path.parent().filter(|_| path.as_os_str() != ":memory:") {
                create_dir(dir, "iceberg.catalog_uri")?;
            }
            // `mode=rwc` lets SQLite create the file.
            let query = if query.is_empty() {
                "mode=rwc".to_string()
            } else if query.split('&').any(|p| p.starts_with("mode=")) {
                query.clone()
            } else {
                format!("{query}&mode=rwc")
            };
            sql(format!("sqlite:{}?{query}", path.display()), SqlBindStyle::QMark, props)
        }
        CatalogSettings::Postgres(url) => sql(url.clone(), SqlBindStyle::DollarNumeric, props),
        CatalogSettings::Rest(url) => {
            props.insert(REST_CATALOG_PROP_URI.into(), url.clone());
            let location = iceberg.warehouse.location();
            if !location.is_empty() {
                props.insert(REST_CATALOG_PROP_WAREHOUSE.into(), location);
            }
            let catalog = RestCatalogBuilder::default()
                .with_client(rest_http_client(&props)?)
                .with_storage_factory(storage)
                .load(iceberg.catalog_name.clone(), props)
                .await
                .map_err(connect_error)?;
            // iceberg-rust asks the server (and trades OAuth2 credentials for a token) on first
            // use: ask now, so that refused credentials stop start-up here, said plainly.
            let namespace = NamespaceIdent::from_strs(&iceberg.namespace).map_err(connect_error)?;
            catalog.namespace_exists(&namespace).await.map_err(|e| match refused_by_rest(&e) {
                Some(status) => LakeError::Catalog {
                    catalog: catalog_label.clone(),
                    action: "authenticate",
                    message: format!(
                        "the rest catalog refused the credentials ({status}): check iceberg.properties \
                         token, or credential (client_id:client_secret), oauth2-server-uri and scope; \
                         {}",
                        redactor.redact(&e.to_string())
                    ),
                    retryable: false,
                },
                None => connect_error(e),
            })?;
            return Ok(Arc::new(catalog));
        }
    };
    let mut props = props;
    if let Warehouse::Local(dir) = &iceberg.warehouse {
        create_dir(dir, "iceberg.warehouse")?;
    }
    props.insert(SQL_CATALOG_PROP_WAREHOUSE.into(), iceberg.warehouse.location());
    let catalog = SqlCatalogBuilder::default()
        .with_storage_factory(storage)
        .load(iceberg.catalog_name.clone(), props)
        .await
        .map_err(connect_error)?;
    Ok(Arc::new(catalog))
}

fn create_dir(dir: &Path, key: &'static str) -> Result<(), LakeError> {
    std::fs::create_dir_all(dir).map_err(|e| LakeError::Config {
        key,
        reason: format!("cannot create directory {}: {e}", dir.display()),
    })
}

/// Whether a SQL catalog's database refused the configured credentials (SQLSTATE class 28,
/// "invalid authorization specification": a wrong PostgreSQL user or password). Waiting cannot
/// help an appender that keeps sending the same ones, so start-up stops instead of retrying.
fn refused_credentials(err: &iceberg::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() {
            return db.code().is_some_and(|code| code.starts_with("28"));
        }
        cause = e.source();
    }
    false
}

/// The HTTP status with which a REST catalog (or its OAuth2 token endpoint) refused the
/// credentials: 401 or 403. iceberg-rust keeps the status only in the error's text (`status: 401
/// Unauthorized` from the catalog, `code: 401 Unauthorized` from the token endpoint).
fn refused_by_rest(err: &iceberg::Error) -> Option<&'static str> {
    let text = err.to_string();
    [("401", "HTTP 401 Unauthorized"), ("403", "HTTP 403 Forbidden")].into_iter().find_map(|(code, shown)| {
        (text.contains(&format!("status: {code}")) || text.contains(&format!("code: {code}")))
            .then_some(shown)
    })
}

/// The FileIO's storage: by each path's scheme. Static S3 keys from `iceberg.properties` go to
/// opendal as a credential provider of ours rather than as its config: from config keys opendal
/// builds reqsign's `StaticCredentialProvider`, whose `Debug` (which reqsign logs at debug level
/// on every signed request) prints the secret key in plain text. Not with an assumed role, which
/// opendal builds from the config keys and a provider would replace.
fn storage_factory(properties: &BTreeMap<String, String>) -> OpenDalResolvingStorageFactory {
    let factory = OpenDalResolvingStorageFactory::new();
    match (properties.get(S3_ACCESS_KEY_ID), properties.get(S3_SECRET_ACCESS_KEY)) {
        (Some(id), Some(secret)) if !properties.contains_key(S3_ASSUME_ROLE_ARN) => factory
            .with_s3_credential_loader(CustomAwsCredentialLoader::new(StaticS3Keys(AwsCredential {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
                session_token: properties.get(S3_SESSION_TOKEN).cloned(),
                expires_in: None,
            }))),
        _ => factory,
    }
}

/// S3 keys given in the configuration; `AwsCredential`'s `Debug` redacts them.
#[derive(Debug)]
struct StaticS3Keys(AwsCredential);

impl ProvideCredential for StaticS3Keys {
    type Credential = AwsCredential;

    async fn provide_credential(
        &self,
        _: &reqsign_core::Context,
    ) -> reqsign_core::Result<Option<AwsCredential>> {
        Ok(Some(self.0.clone()))
    }
}

/// The HTTP client of a REST catalog, with timeouts: iceberg-rust's default client has none, so
/// a catalog that hangs (or retries its own storage for minutes before answering) would hold a
/// flush forever while staging fills and health stays SERVING. A timed-out commit is an unknown
/// outcome, which the append reconciles from the snapshot summaries.
fn rest_http_client(props: &HashMap<String, String>) -> Result<reqwest::Client, LakeError> {
    let millis = |key: &'static str, default: Duration| match props.get(key) {
        None => Ok(default),
        Some(value) => match value.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
            _ => Err(LakeError::Config {
                key: "iceberg.properties",
                reason: format!("{key} must be a positive number of milliseconds, not {value:?}"),
            }),
        },
    };
    reqwest::Client::builder()
        .connect_timeout(millis(REST_CONNECT_TIMEOUT_PROPERTY, REST_CONNECT_TIMEOUT)?)
        .read_timeout(millis(REST_SOCKET_TIMEOUT_PROPERTY, REST_SOCKET_TIMEOUT)?)
        .build()
        .map_err(|e| LakeError::Config {
            key: "iceberg.catalog_uri",
            reason: format!("cannot build the http client of the rest catalog: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_s3_keys_never_show_in_debug_output() {
        let keys = StaticS3Keys(AwsCredential {
            access_key_id: "AKIDVALUE1234".into(),
            secret_access_key: "AKsecretVALUE".into(),
            session_token: Some("TOKENvalue99".into()),
            expires_in: None,
        });
        let shown = format!("{keys:?}");
        for secret in ["AKIDVALUE1234", "AKsecretVALUE", "TOKENvalue99"] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
    }

    #[test]
    fn a_rest_catalog_refusing_credentials_is_told_apart() {
        let catalog = |status: &str| {
            iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                "Received response with unexpected status code",
            )
            .with_context("status", status.to_string())
        };
        let token_endpoint = |code: &str| {
            iceberg::Error::new(iceberg::ErrorKind::Unexpected, "Received unexpected response")
                .with_context("code", code.to_string())
                .with_context("operation", "auth")
        };
        assert_eq!(refused_by_rest(&catalog("401 Unauthorized")), Some("HTTP 401 Unauthorized"));
        assert_eq!(refused_by_rest(&token_endpoint("401 Unauthorized")), Some("HTTP 401 Unauthorized"));
        assert_eq!(refused_by_rest(&catalog("403 Forbidden")), Some("HTTP 403 Forbidden"));
        assert_eq!(refused_by_rest(&catalog("503 Service Unavailable")), None);
        assert_eq!(refused_by_rest(&token_endpoint("500 Internal Server Error")), None);
    }

    #[test]
    fn rest_timeouts_come_from_properties() {
        let props =
            |value: &str| HashMap::from([(REST_SOCKET_TIMEOUT_PROPERTY.to_string(), value.to_string())]);
        assert!(rest_http_client(&HashMap::new()).is_ok());
        assert!(rest_http_client(&props("2500")).is_ok());
        for bad in ["0", "2.5s", "-1"] {
            let err = rest_http_client(&props(bad)).expect_err(bad);
            assert!(
                matches!(err, LakeError::Config { .. })
                    && err.to_string().contains(REST_SOCKET_TIMEOUT_PROPERTY)
            );
        }
    }

    #[tokio::test]
    async fn connecting_creates_the_sqlite_file_and_the_local_warehouse() {
        let dir = tempfile::tempdir().unwrap();
        let iceberg = IcebergSettings {
            catalog: CatalogSettings::Sqlite {
                path: dir.path().join("a/b/catalog.db"),
                query: String::new(),
            },
            catalog_name: "t".into(),
            catalog_uri: "sqlite://…".into(),
            warehouse: Warehouse::Local(dir.path().join("wh")),
            namespace: vec!["default".into()],
            table: "logs".into(),
            traces_table: "traces".into(),
            metrics_table_prefix: "metrics_".into(),
            target_file_size: bytesize::ByteSize::mib(1),
            properties: BTreeMap::new(),
        };
        connect(&iceberg, &Redactor::default()).await.expect("connect");
        assert!(dir.path().join("a/b/catalog.db").is_file());
        assert!(dir.path().join("wh").is_dir());
    }
}
