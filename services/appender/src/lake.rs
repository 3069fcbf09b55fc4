//! The Iceberg side of the appender: staged rows in, one snapshot out.
//!
//! ```text
//!  Arrow batches from staging (DuckDB `query_arrow`; columns matched by name, any order)
//!      |  cast column by column to the table's Arrow schema, derived from the freshly
//!      |  loaded table (its field ids, "+00:00" timestamps, `key_value` map entries)
//!      v
//!  RecordBatchPartitionSplitter          day(timestamp)
//!      v
//!  FanoutWriter -> DataFileWriter -> RollingFileWriter -> Parquet (zstd, bounded row groups)
//!      v
//!  Transaction::fast_append          ONE snapshot; its summary carries the caller's properties
//! ```
//!
//! What [`Lake`] guarantees:
//! - [`Lake::open`] leaves a format v2 table, partitioned by `day(timestamp)` and sorted by
//!   `service_name, timestamp`, behind the configured identifier, and creates nothing when the
//!   namespace and table already exist (a second appender racing to create them is fine).
//! - [`Lake::append`] commits at most one snapshot per call, and the caller's properties (Kafka
//!   offsets, flush ids) land in the very commit that holds the rows, so
//!   [`Lake::snapshot_summaries`] tells a retrying caller whether a flush already landed.
//!   An empty stream commits nothing. Files written by an append that fails before its commit
//!   are referenced by no snapshot: readers never see them (they are orphans until cleaned up).
//! - Memory stays bounded: one input batch at a time, plus one open row group (at most
//!   [`MAX_ROW_GROUP_BYTES`]) per day partition seen in the call.
//! - Rows are written in the order they arrive; the stager orders them (`ORDER BY service_name,
//!   timestamp`) so that files follow the table's sort order. A batch with no rows ends a
//!   sorted run: the rows after it go to new files, so every file holds one sorted run.
//! - Secrets (`*secret*`, `*password*`, `*token*`, `*access-key*`, `*credential*`,
//!   `*authorization*` and `*key` properties, the password of the catalog URI) never appear in
//!   errors, logs (at any level: configured S3 keys reach opendal through a provider whose `Debug`
//!   hides them) or `Debug` output.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, RecordBatch, new_null_array};
use arrow_schema::SchemaRef as ArrowSchemaRef;
use futures::{Stream, StreamExt};
use iceberg::arrow::{RecordBatchPartitionSplitter, schema_to_arrow_schema};
use iceberg::io::{
    S3_ACCESS_KEY_ID, S3_ASSUME_ROLE_ARN, S3_SECRET_ACCESS_KEY, S3_SESSION_TOKEN, StorageFactory,
};
use iceberg::spec::{
    DataFile, DataFileFormat, FormatVersion, NullOrder, PartitionKey, Schema, SchemaRef, SortDirection,
    SortField, SortOrder, Struct, TableMetadata, Transform, Type, UnboundPartitionSpec,
};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::{Catalog, CatalogBuilder, ErrorKind, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_rest::{REST_CATALOG_PROP_URI, REST_CATALOG_PROP_WAREHOUSE, RestCatalogBuilder};
use iceberg_catalog_sql::{
    SQL_CATALOG_PROP_BIND_STYLE, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE, SqlBindStyle,
    SqlCatalogBuilder,
};
use iceberg_storage_opendal::{
    AwsCredential, CustomAwsCredentialLoader, OpenDalResolvingStorageFactory, ProvideCredential,
};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use telemetry_lake_common::config::{CatalogType, IcebergConfig};
use telemetry_lake_proto::{PARTITION_SOURCE_COLUMN, SORT_COLUMNS};
use tracing::{debug, info};
use uuid::Uuid;

use crate::pinned_catalog::PinnedCatalog;

/// Name of the partition field, `day(timestamp)` (the directory is `timestamp_day=YYYY-MM-DD`).
pub const PARTITION_FIELD: &str = "timestamp_day";
/// Upper bound of one Parquet row group; the writer buffers one per open partition.
pub const MAX_ROW_GROUP_BYTES: u64 = 32 * 1024 * 1024;

/// Snapshot summary key: a fresh id per [`Lake::append`], to find a commit whose outcome was unknown.
pub const COMMIT_ID_PROPERTY: &str = "telemetry-lake.commit-id";
/// How often [`Lake::append`] moves its commit onto a newer table state before giving up.
const MAX_REBASES: usize = 10;

/// `(snapshot id, summary properties)`: Iceberg's own keys (`added-records`, …) next to the
/// committer's.
pub type SnapshotSummary = (i64, HashMap<String, String>);

/// The table state a caller checked before [`Lake::append`], and what may change since.
pub struct CheckedBase<'a> {
    /// The current snapshot when the caller read the table (`None`: it had no snapshot).
    pub snapshot_id: Option<i64>,
    /// Shown the snapshots others committed since (newest first); `Err(reason)` when they may
    /// hold rows of this commit, so it must not land on top of them.
    pub still_valid: &'a (dyn Fn(&[SnapshotSummary]) -> Result<(), String> + Sync),
}

/// What one [`Lake::append`] committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    pub snapshot_id: i64,
    pub data_files: u32,
    pub records: u64,
    pub file_bytes: u64,
}

/// Why the lake could not be opened or appended to. Messages never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The `[iceberg]` section cannot work as given; fix it and restart.
    #[error("invalid iceberg configuration: {key}: {reason}")]
    Config { key: &'static str, reason: String },
    /// The catalog failed or could not be reached.
    #[error(
        "iceberg catalog {catalog} failed to {action}: {message} (check that the catalog is \
         reachable and iceberg.catalog_uri and iceberg.properties are right)"
    )]
    Catalog { catalog: String, action: &'static str, message: String, retryable: bool },
    /// Data files could not be written to the warehouse.
    #[error(
        "writing data files under {location} failed: {message} (check that the warehouse storage \
         is reachable and writable with the credentials in iceberg.properties)"
    )]
    Storage { location: String, message: String, retryable: bool },
    /// The staged rows and the table's schema disagree; retrying cannot help.
    #[error(
        "staged rows do not fit table {table}: {reason} (the table schema and the appender's row \
         definition disagree: evolve the table or point iceberg.table at a new one)"
    )]
    Schema { table: String, reason: String },
    /// Other writers committed since the caller's checks, and what they committed may overlap
    /// the rows of this commit; nothing was committed. Check again, then retry.
    #[error("another writer committed to table {table} first: {reason}; nothing was committed")]
    Conflict { table: String, reason: String },
    /// The stream of staged batches failed; the rows stay staged and the flush can be retried.
    #[error("reading staged rows failed: {0}")]
    Staging(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl LakeError {
    /// Wraps an error of the staging side, for the items of the stream given to [`Lake::append`].
    pub fn staging(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        LakeError::Staging(err.into())
    }

    /// Whether the same call may succeed later (catalog or storage down, commit conflict).
    /// Before retrying an append, check [`Lake::snapshot_summaries`]: it may have landed.
    pub fn is_retryable(&self) -> bool {
        match self {
            LakeError::Config { .. } | LakeError::Schema { .. } => false,
            LakeError::Catalog { retryable, .. } | LakeError::Storage { retryable, .. } => *retryable,
            LakeError::Staging(_) | LakeError::Conflict { .. } => true,
        }
    }
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

/// Whether an iceberg error may go away on its own: I/O, network and commit conflicts do; bad
/// data, unsupported features and missing or duplicate objects do not.
fn retryable(err: &iceberg::Error) -> bool {
    err.retryable()
        || !matches!(
            err.kind(),
            ErrorKind::DataInvalid
                | ErrorKind::FeatureUnsupported
                | ErrorKind::NamespaceAlreadyExists
                | ErrorKind::TableAlreadyExists
                | ErrorKind::NamespaceNotFound
                | ErrorKind::TableNotFound
        )
}

/// The appender's Iceberg table behind its catalog.
pub struct Lake {
    catalog: Arc<dyn Catalog>,
    ident: TableIdent,
    /// Catalog name and redacted URI, for messages.
    catalog_label: String,
    target_file_size: u64,
    redactor: Redactor,
}

impl fmt::Debug for Lake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lake")
            .field("table", &self.ident.to_string())
            .field("catalog", &self.catalog_label)
            .field("target_file_size", &self.target_file_size)
            .finish_non_exhaustive()
    }
}

impl Lake {
    /// Connects to the catalog; creates the namespace and the table (format v2, partitioned by
    /// day(timestamp), sort order service_name, timestamp) if missing; reuses them if present.
    /// A relative local warehouse path is made absolute; a sqlite catalog file and its directory
    /// are created. A reused table must have every column of `schema` with the same type.
    pub async fn open(config: &IcebergConfig, schema: Schema) -> Result<Lake, LakeError> {
        let redactor = Redactor::new(config);
        let catalog_label = format!("{} ({})", config.catalog_name, redactor.redact(&config.catalog_uri));
        let namespace = namespace_ident(&config.namespace)?;
        if config.table.trim().is_empty() {
            return Err(LakeError::Config { key: "iceberg.table", reason: "must not be empty".into() });
        }
        if config.target_file_size.as_u64() == 0 {
            return Err(LakeError::Config {
                key: "iceberg.target_file_size",
                reason: "must be larger than 0".into(),
            });
        }
        let catalog = connect(config, &redactor, &catalog_label).await?;
        let lake = Lake {
            catalog,
            ident: TableIdent::new(namespace, config.table.clone()),
            catalog_label,
            target_file_size: config.target_file_size.as_u64(),
            redactor,
        };
        lake.ensure_namespace().await?;
        let table = lake.ensure_table(schema).await?;
        info!(
            table = %lake.ident,
            catalog = %lake.catalog_label,
            location = %lake.redactor.redact(table.metadata().location()),
            table_uuid = %table.metadata().uuid(),
            snapshots = table.metadata().snapshots().len(),
            "iceberg table ready"
        );
        Ok(lake)
    }

    /// Writes the batches as Parquet data files (one or more per day partition) and commits one
    /// fast-append snapshot whose summary carries `properties`. Columns are matched by name and
    /// cast to the table's current schema; a missing optional column is written as nulls.
    /// Returns what was committed, or `None` when the stream held no rows (nothing committed).
    /// A batch with no rows closes the files written so far (the end of a sorted run).
    ///
    /// The commit lands only on top of the snapshot `checked` names (without it: the one current
    /// when the append starts). When other writers committed first, their snapshots are shown to
    /// `checked.still_valid`, and the same files are committed on the newer state only if it
    /// agrees; otherwise the append fails with a retryable [`LakeError::Conflict`] and the
    /// caller checks again. Each commit carries a fresh [`COMMIT_ID_PROPERTY`], so a commit whose
    /// outcome was unknown (a timeout, a 5xx) is recognised in the history instead of repeated.
    pub async fn append<S>(
        &self,
        mut batches: S,
        properties: HashMap<String, String>,
        checked: Option<&CheckedBase<'_>>,
    ) -> Result<Option<CommitInfo>, LakeError>
    where
        S: Stream<Item = Result<RecordBatch, LakeError>> + Send + Unpin,
    {
        let table = self.load_table().await?;
        let metadata = table.metadata();
        let schema = metadata.current_schema().clone();
        let spec = metadata.default_partition_spec().clone();
        let arrow_schema = Arc::new(schema_to_arrow_schema(&schema).map_err(|e| {
            self.schema_error(format!("the table schema has no arrow equivalent: {}", e.message()))
        })?);
        // An unpartitioned table (created by someone else) takes every row under one empty key.
        let splitter = if spec.is_unpartitioned() {
            None
        } else {
            Some(
                RecordBatchPartitionSplitter::try_new_with_computed_values(schema.clone(), spec.clone())
                    .map_err(|e| {
                        self.schema_error(format!("cannot partition by the table's spec: {}", e.message()))
                    })?,
            )
        };
        let unpartitioned = PartitionKey::new(spec.as_ref().clone(), schema.clone(), Struct::empty());

        let commit_uuid = Uuid::new_v4();
        // Building the writer creates no file: files appear on the first write to a partition.
        let mut run = 0;
        let mut writer = self.new_writer(&table, schema.clone(), &commit_uuid.to_string())?;
        let mut run_rows = 0u64;
        let mut data_files = Vec::new();
        let mut input_rows = 0u64;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            if batch.num_rows() == 0 {
                // The end of a sorted run: its rows go to files of their own.
                if run_rows > 0 {
                    run += 1;
                    let next = self.new_writer(&table, schema.clone(), &format!("{commit_uuid}-{run}"))?;
                    let done = std::mem::replace(&mut writer, next);
                    data_files.extend(done.close().await.map_err(|e| self.storage_error(&table, e))?);
                    run_rows = 0;
                }
                continue;
            }
            input_rows += batch.num_rows() as u64;
            run_rows += batch.num_rows() as u64;
            let batch = conform(&batch, &arrow_schema).map_err(|reason| self.schema_error(reason))?;
            match &splitter {
                Some(splitter) => {
                    let parts = splitter.split(&batch).map_err(|e| {
                        self.schema_error(format!("cannot compute the partition of a row: {}", e.message()))
                    })?;
                    for (key, part) in parts {
                        writer.write(key, part).await.map_err(|e| self.storage_error(&table, e))?;
                    }
                }
                None => writer
                    .write(unpartitioned.clone(), batch)
                    .await
                    .map_err(|e| self.storage_error(&table, e))?,
            }
        }
        data_files.extend(writer.close().await.map_err(|e| self.storage_error(&table, e))?);
        if data_files.is_empty() {
            debug!(table = %self.ident, "nothing to append");
            return Ok(None);
        }

        let records: u64 = data_files.iter().map(|f| f.record_count()).sum();
        if records != input_rows {
            return Err(self.schema_error(format!(
                "wrote {records} rows but {input_rows} arrived; nothing was committed"
            )));
        }
        let mut properties = properties;
        properties.insert(COMMIT_ID_PROPERTY.into(), commit_uuid.to_string());
        let mut base = match checked {
            Some(checked) => checked.snapshot_id,
            None => table.metadata().current_snapshot_id(),
        };
        for _ in 0..MAX_REBASES {
            let pinned = PinnedCatalog::new(self.catalog.clone(), self.ident.clone(), base);
            let tx = Transaction::new(&table);
            let tx = tx
                .fast_append()
                .set_commit_uuid(commit_uuid)
                .add_data_files(data_files.clone())
                .set_snapshot_properties(properties.clone())
                .apply(tx)
                .map_err(|e| self.catalog_error("prepare the snapshot", e))?;
            let err = match tx.commit(&pinned).await {
                Ok(committed) => {
                    let snapshot_id =
                        committed.metadata().current_snapshot_id().ok_or_else(|| LakeError::Catalog {
                            catalog: self.catalog_label.clone(),
                            action: "commit the snapshot",
                            message: "the committed table has no current snapshot".into(),
                            retryable: false,
                        })?;
                    return Ok(Some(self.committed(snapshot_id, &data_files)));
                }
                Err(err) => err,
            };
            // Whatever failed, the table may have moved, perhaps by this very commit (a timeout
            // or a 5xx after the catalog applied it): look before deciding.
            let now = match self.load_table().await {
                Ok(now) if now.metadata().current_snapshot_id() != base => now,
                _ => return Err(self.catalog_error("commit the snapshot", err)),
            };
            let Some(newer) = snapshots_since(now.metadata(), base) else {
                return Err(self.conflict(format!(
                    "snapshot {base:?} that the commit was checked against is no longer in the \
                     table's history"
                )));
            };
            let commit_id = commit_uuid.to_string();
            if let Some((id, _)) =
                newer.iter().find(|(_, summary)| summary.get(COMMIT_ID_PROPERTY) == Some(&commit_id))
            {
                info!(table = %self.ident, snapshot_id = id, "the commit had landed before its error");
                return Ok(Some(self.committed(*id, &data_files)));
            }
            if let Some(checked) = checked {
                (checked.still_valid)(&newer).map_err(|reason| self.conflict(reason))?;
            }
            debug!(table = %self.ident, newer = newer.len(), "other writers committed first; rebasing");
            base = now.metadata().current_snapshot_id();
        }
        Err(self.conflict(format!("other writers kept committing first, {MAX_REBASES} times in a row")))
    }

    fn committed(&self, snapshot_id: i64, data_files: &[DataFile]) -> CommitInfo {
        let info = CommitInfo {
            snapshot_id,
            data_files: data_files.len() as u32,
            records: data_files.iter().map(|f| f.record_count()).sum(),
            file_bytes: data_files.iter().map(|f| f.file_size_in_bytes()).sum(),
        };
        info!(
            table = %self.ident,
            snapshot_id,
            data_files = info.data_files,
            records = info.records,
            file_bytes = info.file_bytes,
            "committed snapshot"
        );
        info
    }

    /// `(snapshot_id, summary properties)` of every snapshot of the table's current state (the
    /// current snapshot and its ancestors still in the metadata), newest first. The summary holds
    /// Iceberg's own keys (`added-records`, …) next to the caller's properties.
    pub async fn snapshot_summaries(&self) -> Result<Vec<SnapshotSummary>, LakeError> {
        let table = self.load_table().await?;
        Ok(snapshots_since(table.metadata(), None).unwrap_or_default())
    }

    pub fn table_ident(&self) -> &TableIdent {
        &self.ident
    }

    async fn load_table(&self) -> Result<Table, LakeError> {
        self.catalog.load_table(&self.ident).await.map_err(|e| self.catalog_error("load the table", e))
    }

    async fn ensure_namespace(&self) -> Result<(), LakeError> {
        let namespace = self.ident.namespace();
        let exists = self
            .catalog
            .namespace_exists(namespace)
            .await
            .map_err(|e| self.catalog_error("look up the namespace", e))?;
        if exists {
            return Ok(());
        }
        match self.catalog.create_namespace(namespace, HashMap::new()).await {
            Ok(_) => {
                info!(namespace = %namespace.join("."), "created iceberg namespace");
                Ok(())
            }
            // Another appender created it between our check and our create.
            Err(e) if e.kind() == ErrorKind::NamespaceAlreadyExists => Ok(()),
            Err(e) => Err(self.catalog_error("create the namespace", e)),
        }
    }

    async fn ensure_table(&self, schema: Schema) -> Result<Table, LakeError> {
        let exists = self
            .catalog
            .table_exists(&self.ident)
            .await
            .map_err(|e| self.catalog_error("look up the table", e))?;
        let table = if exists {
            self.load_table().await?
        } else {
            let creation = self.table_creation(schema.clone())?;
            match self.catalog.create_table(self.ident.namespace(), creation).await {
                Ok(table) => {
                    info!(table = %self.ident, "created iceberg table");
                    table
                }
                Err(e) if e.kind() == ErrorKind::TableAlreadyExists => self.load_table().await?,
                Err(e) => return Err(self.catalog_error("create the table", e)),
            }
        };
        check_columns(&schema, table.metadata().current_schema())
            .map_err(|reason| self.schema_error(reason))?;
        Ok(table)
    }

    fn table_creation(&self, schema: Schema) -> Result<TableCreation, LakeError> {
        let field_id = |name: &str| {
            schema
                .as_struct()
                .field_by_name(name)
                .map(|f| f.id)
                .ok_or_else(|| self.schema_error(format!("the row definition has no column {name}")))
        };
        let partition_source = field_id(PARTITION_SOURCE_COLUMN)?;
        // A REST catalog in Java parses the spec with PartitionSpecParser, which requires
        // `spec-id`; iceberg-rust leaves it out of the request unless it is set.
        let spec = UnboundPartitionSpec::builder()
            .with_spec_id(0)
            .add_partition_field(partition_source, PARTITION_FIELD, Transform::Day)
            .map_err(|e| self.schema_error(format!("cannot partition by day: {}", e.message())))?
            .build();
        let mut sort = SortOrder::builder();
        sort.with_order_id(1);
        for name in SORT_COLUMNS {
            sort.with_sort_field(
                SortField::builder()
                    .source_id(field_id(name)?)
                    .transform(Transform::Identity)
                    .direction(SortDirection::Ascending)
                    .null_order(NullOrder::First)
                    .build(),
            );
        }
        let sort = sort
            .build(&schema)
            .map_err(|e| self.schema_error(format!("cannot sort by {SORT_COLUMNS:?}: {}", e.message())))?;
        let properties = [
            ("write.format.default", "parquet".to_string()),
            ("write.parquet.compression-codec", "zstd".to_string()),
            ("write.target-file-size-bytes", self.target_file_size.to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v));
        Ok(TableCreation::builder()
            .name(self.ident.name().to_string())
            .schema(schema)
            .partition_spec(spec)
            .sort_order(sort)
            .properties(properties)
            .format_version(FormatVersion::V2)
            .build())
    }

    fn new_writer(
        &self,
        table: &Table,
        schema: SchemaRef,
        file_prefix: &str,
    ) -> Result<LakeWriter, LakeError> {
        let row_group_bytes = self.target_file_size.clamp(1, MAX_ROW_GROUP_BYTES);
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
            .set_max_row_group_bytes(Some(usize::try_from(row_group_bytes).unwrap_or(usize::MAX)))
            .build();
        let locations =
            DefaultLocationGenerator::new(table.metadata()).map_err(|e| self.storage_error(table, e))?;
        let names = DefaultFileNameGenerator::new(file_prefix.to_string(), None, DataFileFormat::Parquet);
        let rolling = RollingFileWriterBuilder::new(
            ParquetWriterBuilder::new(props, schema),
            usize::try_from(self.target_file_size).unwrap_or(usize::MAX),
            table.file_io().clone(),
            locations,
            names,
        );
        Ok(FanoutWriter::new(DataFileWriterBuilder::new(rolling)))
    }

    fn catalog_error(&self, action: &'static str, err: iceberg::Error) -> LakeError {
        LakeError::Catalog {
            catalog: self.catalog_label.clone(),
            action,
            message: self.redactor.redact(&err.to_string()),
            retryable: retryable(&err),
        }
    }

    fn storage_error(&self, table: &Table, err: iceberg::Error) -> LakeError {
        LakeError::Storage {
            location: self.redactor.redact(table.metadata().location()),
            message: self.redactor.redact(&err.to_string()),
            retryable: retryable(&err),
        }
    }

    fn conflict(&self, reason: String) -> LakeError {
        LakeError::Conflict { table: self.ident.to_string(), reason: self.redactor.redact(&reason) }
    }

    fn schema_error(&self, reason: String) -> LakeError {
        LakeError::Schema { table: self.ident.to_string(), reason: self.redactor.redact(&reason) }
    }
}

type LakeWriter = FanoutWriter<
    DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>,
>;

/// Connects the configured catalog, with a FileIO that picks its storage from each path's
/// scheme (`file://`, `s3://`) and gets `iceberg.properties`.
pub(crate) async fn connect(
    config: &IcebergConfig,
    redactor: &Redactor,
    catalog_label: &str,
) -> Result<Arc<dyn Catalog>, LakeError> {
    let storage: Arc<dyn StorageFactory> = Arc::new(storage_factory(&config.properties));
    let mut props: HashMap<String, String> =
        config.properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let connect_error = |e: iceberg::Error| LakeError::Catalog {
        catalog: catalog_label.to_string(),
        action: "connect",
        message: redactor.redact(&e.to_string()),
        retryable: retryable(&e) && !refused_credentials(&e),
    };
    match config.catalog_type {
        CatalogType::Sql => {
            let (uri, bind_style) = sql_catalog_uri(&config.catalog_uri)?;
            props.insert(SQL_CATALOG_PROP_URI.into(), uri);
            props.insert(SQL_CATALOG_PROP_WAREHOUSE.into(), warehouse_location(&config.warehouse)?);
            props.insert(SQL_CATALOG_PROP_BIND_STYLE.into(), bind_style.to_string());
            let catalog = SqlCatalogBuilder::default()
                .with_storage_factory(storage)
                .load(config.catalog_name.clone(), props)
                .await
                .map_err(connect_error)?;
            Ok(Arc::new(catalog))
        }
        CatalogType::Rest => {
            props.insert(REST_CATALOG_PROP_URI.into(), config.catalog_uri.clone());
            // For REST the server owns locations; the warehouse may be a name, so it goes as is.
            if !config.warehouse.trim().is_empty() {
                props.insert(REST_CATALOG_PROP_WAREHOUSE.into(), config.warehouse.trim().to_string());
            }
            let catalog = RestCatalogBuilder::default()
                .with_client(rest_http_client(&props)?)
                .with_storage_factory(storage)
                .load(config.catalog_name.clone(), props)
                .await
                .map_err(connect_error)?;
            Ok(Arc::new(catalog))
        }
    }
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

/// Property (Iceberg Java's name) bounding how long connecting to a REST catalog may take.
pub const REST_CONNECT_TIMEOUT_PROPERTY: &str = "rest.client.connection-timeout-ms";
/// Property (Iceberg Java's name) bounding how long a REST catalog may stay silent mid-request.
pub const REST_SOCKET_TIMEOUT_PROPERTY: &str = "rest.client.socket-timeout-ms";
const REST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REST_SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

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

/// `(snapshot_id, summary properties)` of the current snapshot and its ancestors, newest first,
/// down to but not including `base` (all of them for `None`). `None` when `base` is not an
/// ancestor of the current snapshot: the history was rewritten (a rollback, say).
fn snapshots_since(metadata: &TableMetadata, base: Option<i64>) -> Option<Vec<SnapshotSummary>> {
    let mut summaries = Vec::new();
    let mut next = metadata.current_snapshot_id();
    while let Some(id) = next {
        // The bound guards against a corrupt parent chain that loops.
        if Some(id) == base || summaries.len() > metadata.snapshots().len() {
            break;
        }
        let Some(snapshot) = metadata.snapshot_by_id(id) else { break };
        summaries.push((id, snapshot.summary().additional_properties.clone()));
        next = snapshot.parent_snapshot_id();
    }
    (base.is_none() || next == base).then_some(summaries)
}

pub(crate) fn namespace_ident(namespace: &str) -> Result<NamespaceIdent, LakeError> {
    let parts: Vec<&str> = namespace.split('.').collect();
    if parts.iter().any(|p| p.trim().is_empty()) {
        return Err(LakeError::Config {
            key: "iceberg.namespace",
            reason: format!("{namespace:?} is not a namespace (dot-separated, non-empty parts)"),
        });
    }
    NamespaceIdent::from_strs(parts)
        .map_err(|e| LakeError::Config { key: "iceberg.namespace", reason: e.message().to_string() })
}

/// The sqlx URI and bind style for `iceberg.catalog_uri`. A sqlite file path becomes absolute,
/// its directory is created and `mode=rwc` lets sqlite create the file.
fn sql_catalog_uri(uri: &str) -> Result<(String, SqlBindStyle), LakeError> {
    let invalid = |reason: String| LakeError::Config { key: "iceberg.catalog_uri", reason };
    if uri.starts_with("postgres://") || uri.starts_with("postgresql://") {
        return Ok((uri.to_string(), SqlBindStyle::DollarNumeric));
    }
    let Some(rest) = uri.strip_prefix("sqlite:") else {
        return Err(invalid(
            "a sql catalog needs sqlite://PATH or postgres://… (for a rest catalog set \
             iceberg.catalog_type = \"rest\")"
                .into(),
        ));
    };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, query),
        None => (rest, ""),
    };
    if path.is_empty() {
        return Err(invalid("the sqlite uri names no file, e.g. sqlite://data/catalog.db".into()));
    }
    if path == ":memory:" {
        return Ok((uri.to_string(), SqlBindStyle::QMark));
    }
    let path = absolute(Path::new(path), "iceberg.catalog_uri")?;
    if let Some(dir) = path.parent() {
        create_dir(dir, "iceberg.catalog_uri")?;
    }
    let query = if query.is_empty() {
        "mode=rwc".to_string()
    } else if query.split('&').any(|p| p.starts_with("mode=")) {
        query.to_string()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok((format!("sqlite:{}?{query}", path.display()), SqlBindStyle::QMark))
}

/// The warehouse as a URL: `s3://…` and `file:///…` as given, a plain path as an absolute
/// `file://` URL. Local directories are created.
fn warehouse_location(warehouse: &str) -> Result<String, LakeError> {
    let warehouse = warehouse.trim();
    let invalid = |reason: &str| LakeError::Config { key: "iceberg.warehouse", reason: reason.into() };
    if warehouse.is_empty() {
        return Err(invalid("must name a path, file:///… or s3://bucket/prefix"));
    }
    if let Some(path) = warehouse.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(invalid(
                "a file:// warehouse needs an absolute path (file:///…); or give a plain path",
            ));
        }
        create_dir(Path::new(path), "iceberg.warehouse")?;
        return Ok(trim_slash(warehouse));
    }
    if warehouse.contains("://") {
        return Ok(trim_slash(warehouse));
    }
    let path = absolute(Path::new(warehouse), "iceberg.warehouse")?;
    create_dir(&path, "iceberg.warehouse")?;
    Ok(trim_slash(&format!("file://{}", path.display())))
}

fn trim_slash(location: &str) -> String {
    let trimmed = location.trim_end_matches('/');
    if trimmed.ends_with(':') { location.to_string() } else { trimmed.to_string() }
}

fn absolute(path: &Path, key: &'static str) -> Result<PathBuf, LakeError> {
    std::path::absolute(path).map_err(|e| LakeError::Config {
        key,
        reason: format!("cannot make {} absolute: {e}", path.display()),
    })
}

fn create_dir(dir: &Path, key: &'static str) -> Result<(), LakeError> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| LakeError::Config {
        key,
        reason: format!("cannot create directory {}: {e}", dir.display()),
    })
}

/// Casts the staged batch to the table's Arrow schema, matching columns by name.
fn conform(batch: &RecordBatch, target: &ArrowSchemaRef) -> Result<RecordBatch, String> {
    let source = batch.schema();
    if let Some(extra) = source.fields().iter().find(|f| target.field_with_name(f.name()).is_err()) {
        return Err(format!("staged column {} is not in the table", extra.name()));
    }
    let columns = target
        .fields()
        .iter()
        .map(|field| match source.index_of(field.name()) {
            Ok(index) => {
                let column = batch.column(index);
                arrow_cast::cast(column, field.data_type()).map_err(|e| {
                    format!(
                        "column {} cannot be cast from {} to {}: {e}",
                        field.name(),
                        column.data_type(),
                        field.data_type()
                    )
                })
            }
            Err(_) if field.is_nullable() => Ok(new_null_array(field.data_type(), batch.num_rows())),
            Err(_) => Err(format!("required column {} is missing from the staged rows", field.name())),
        })
        .collect::<Result<Vec<ArrayRef>, String>>()?;
    RecordBatch::try_new(target.clone(), columns).map_err(|e| format!("{e}"))
}

/// Checks that the table has every column the appender writes, with the same type, and does
/// not require one the appender may leave null.
fn check_columns(expected: &Schema, table: &Schema) -> Result<(), String> {
    for field in expected.as_struct().fields() {
        let Some(actual) = table.as_struct().field_by_name(&field.name) else {
            return Err(format!("the table has no column {}", field.name));
        };
        if !same_shape(&field.field_type, &actual.field_type) {
            return Err(format!(
                "column {} is {} in the table but {} in the row definition",
                field.name, actual.field_type, field.field_type
            ));
        }
        if actual.required && !field.required {
            return Err(format!(
                "column {} is required in the table but optional in the row definition",
                field.name
            ));
        }
    }
    Ok(())
}

/// Type equality that ignores field ids (the table assigns its own).
fn same_shape(a: &Type, b: &Type) -> bool {
    match (a, b) {
        (Type::Primitive(a), Type::Primitive(b)) => a == b,
        (Type::Map(a), Type::Map(b)) => {
            same_shape(&a.key_field.field_type, &b.key_field.field_type)
                && same_shape(&a.value_field.field_type, &b.value_field.field_type)
        }
        (Type::List(a), Type::List(b)) => {
            same_shape(&a.element_field.field_type, &b.element_field.field_type)
        }
        (Type::Struct(a), Type::Struct(b)) => {
            a.fields().len() == b.fields().len()
                && a.fields()
                    .iter()
                    .zip(b.fields())
                    .all(|(a, b)| a.name == b.name && same_shape(&a.field_type, &b.field_type))
        }
        _ => false,
    }
}

/// Replaces secret values (credentials in properties, the catalog URI's password) with `***`.
#[derive(Clone, Default)]
pub(crate) struct Redactor {
    /// Longest first, so a secret containing another is replaced whole.
    secrets: Vec<String>,
}

impl Redactor {
    pub(crate) fn new(config: &IcebergConfig) -> Self {
        let mut secrets: Vec<String> =
            config.properties.iter().filter(|(k, _)| is_secret_key(k)).map(|(_, v)| v.clone()).collect();
        secrets.extend(uri_secrets(&config.catalog_uri));
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    pub(crate) fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "***");
            }
        }
        text
    }
}

/// Whether a property holds a secret: credentials, tokens, an `Authorization` header
/// (`header.authorization`), and keys such as `s3.sse.key` (SSE-C) or `adls.account-key`.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.ends_with("key")
        || ["secret", "password", "token", "access-key", "credential", "authorization"]
            .iter()
            .any(|s| key.contains(s))
}

/// The password in `scheme://user:password@host/…` and secret-looking query parameters.
fn uri_secrets(uri: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    if let Some((_, rest)) = uri.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
        {
            secrets.push(password.to_string());
        }
    }
    if let Some((_, query)) = uri.split_once('?') {
        for pair in query.split('&') {
            if let Some((key, value)) = pair.split_once('=')
                && is_secret_key(key)
            {
                secrets.push(value.to_string());
            }
        }
    }
    secrets
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow_array::builder::{Int32Builder, Int64Builder, MapBuilder, MapFieldNames, StringBuilder};
    use arrow_array::{Array, TimestampMicrosecondArray};
    use arrow_schema::{DataType, TimeUnit};
    use iceberg::spec::{NestedField, PrimitiveType};

    use super::*;

    /// The lake's columns, as DESIGN.md lists them.
    const COLUMNS: [&str; 21] = [
        "timestamp",
        "observed_timestamp",
        "severity_number",
        "severity_text",
        "body",
        "trace_id",
        "span_id",
        "trace_flags",
        "event_name",
        "service_name",
        "deployment_environment",
        "resource_attributes",
        "scope_attributes",
        "log_attributes",
        "scope_name",
        "scope_version",
        "resource_schema_url",
        "scope_schema_url",
        "dropped_attributes_count",
        "kafka_partition",
        "kafka_offset",
    ];

    fn test_schema() -> Schema {
        telemetry_lake_proto::iceberg_schema()
    }

    struct TestLake {
        dir: tempfile::TempDir,
        config: IcebergConfig,
    }

    fn test_lake() -> TestLake {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = IcebergConfig {
            catalog_uri: format!("sqlite://{}/catalog/catalog.db", dir.path().display()),
            warehouse: format!("{}/warehouse", dir.path().display()),
            ..IcebergConfig::default()
        };
        TestLake { dir, config }
    }

    /// 2026-11-27T10:00:00Z in microseconds.
    const DAY1: i64 = 1_795_773_600_000_000;
    const DAY: i64 = 86_400_000_000;

    struct Row {
        ts: i64,
        service: &'static str,
        body: &'static str,
        severity: i32,
        attributes: Vec<(&'static str, &'static str)>,
        offset: Option<i64>,
    }

    fn row(ts: i64, service: &'static str, body: &'static str, offset: i64) -> Row {
        Row {
            ts,
            service,
            body,
            severity: 9,
            attributes: vec![("http.method", "GET"), ("n", body)],
            offset: Some(offset),
        }
    }

    /// A batch in the staging shape: "Etc/UTC" timestamps, maps with `entries`/`key`/`value`.
    fn staging_batch(rows: &[Row]) -> RecordBatch {
        let ts = |f: fn(&Row) -> i64| {
            Arc::new(
                TimestampMicrosecondArray::from(rows.iter().map(f).collect::<Vec<_>>())
                    .with_timezone("Etc/UTC"),
            ) as ArrayRef
        };
        let strings = |f: fn(&Row) -> Option<&'static str>| {
            let mut b = StringBuilder::new();
            rows.iter().for_each(|r| b.append_option(f(r)));
            Arc::new(b.finish()) as ArrayRef
        };
        let ints = |f: fn(&Row) -> Option<i32>| {
            let mut b = Int32Builder::new();
            rows.iter().for_each(|r| b.append_option(f(r)));
            Arc::new(b.finish()) as ArrayRef
        };
        let map = |f: fn(&Row) -> Vec<(&'static str, &'static str)>| {
            let names = MapFieldNames { entry: "entries".into(), key: "key".into(), value: "value".into() };
            let mut b = MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new());
            for r in rows {
                for (k, v) in f(r) {
                    b.keys().append_value(k);
                    b.values().append_value(v);
                }
                b.append(true).expect("map entry");
            }
            Arc::new(b.finish()) as ArrayRef
        };
        let mut offsets = Int64Builder::new();
        rows.iter().for_each(|r| offsets.append_option(r.offset));
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("timestamp", ts(|r| r.ts)),
            ("observed_timestamp", ts(|r| r.ts + 1)),
            ("severity_number", ints(|r| Some(r.severity))),
            ("severity_text", strings(|_| Some("INFO"))),
            ("body", strings(|r| Some(r.body))),
            ("trace_id", strings(|_| Some("5b8efff798038103d269b633813fc60c"))),
            ("span_id", strings(|_| None)),
            ("trace_flags", ints(|_| Some(1))),
            ("event_name", strings(|_| None)),
            ("service_name", strings(|r| Some(r.service))),
            ("deployment_environment", strings(|_| Some("prod"))),
            ("resource_attributes", map(|r| vec![("service.name", r.service)])),
            ("scope_attributes", map(|_| vec![])),
            ("log_attributes", map(|r| r.attributes.clone())),
            ("scope_name", strings(|_| Some("io.test"))),
            ("scope_version", strings(|_| Some("1.0"))),
            ("resource_schema_url", strings(|_| None)),
            ("scope_schema_url", strings(|_| None)),
            ("dropped_attributes_count", ints(|_| Some(0))),
            ("kafka_partition", ints(|r| r.offset.map(|_| 3))),
            ("kafka_offset", Arc::new(offsets.finish()) as ArrayRef),
        ];
        RecordBatch::try_from_iter(columns).expect("staging batch")
    }

    /// Every row as strings, in `COLUMNS` order, sorted: comparable across Arrow shapes.
    fn rows_of(batches: &[RecordBatch]) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for batch in batches {
            for i in 0..batch.num_rows() {
                let row = COLUMNS
                    .iter()
                    .map(|name| {
                        let column = batch.column_by_name(name).unwrap_or_else(|| panic!("column {name}"));
                        if column.is_null(i) {
                            return "NULL".to_string();
                        }
                        // Timestamps compare as instants, whatever their timezone label.
                        let column = match column.data_type() {
                            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                                arrow_cast::cast(column, &DataType::Int64).expect("timestamp as int")
                            }
                            _ => column.clone(),
                        };
                        arrow_cast::display::array_value_to_string(&column, i).expect("displayable")
                    })
                    .collect();
                rows.push(row);
            }
        }
        rows.sort();
        rows
    }

    async fn scan(lake: &Lake) -> Vec<RecordBatch> {
        let table = lake.load_table().await.expect("load");
        let stream = table.scan().build().expect("scan").to_arrow().await.expect("to_arrow");
        futures::TryStreamExt::try_collect(stream).await.expect("read table")
    }

    fn parquet_files(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.extension().is_some_and(|e| e == "parquet") {
                    found.push(path);
                }
            }
        }
        found.sort();
        found
    }

    fn batches(list: Vec<RecordBatch>) -> impl Stream<Item = Result<RecordBatch, LakeError>> + Send + Unpin {
        futures::stream::iter(list.into_iter().map(Ok))
    }

    fn props(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[tokio::test]
    async fn lake_open_creates_namespace_and_table_then_reuses_it() {
        let t = test_lake();
        let lake = Lake::open(&t.config, test_schema()).await.expect("open");
        assert!(t.dir.path().join("catalog/catalog.db").is_file(), "sqlite catalog file created");
        assert_eq!(
            lake.table_ident().to_string(),
            TableIdent::from_strs(["default", "logs"]).unwrap().to_string()
        );
        assert!(lake.catalog.namespace_exists(&NamespaceIdent::new("default".into())).await.unwrap());

        let table = lake.load_table().await.expect("load");
        let metadata = table.metadata();
        assert_eq!(metadata.format_version(), FormatVersion::V2);
        let warehouse = format!("file://{}/warehouse", t.dir.path().display());
        assert_eq!(metadata.location(), format!("{warehouse}/default/logs"));
        let schema = metadata.current_schema();
        let names: Vec<&str> = schema.as_struct().fields().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, COLUMNS);
        let ts_id = schema.field_by_name("timestamp").unwrap().id;
        let service_id = schema.field_by_name("service_name").unwrap().id;
        let spec = metadata.default_partition_spec();
        assert_eq!(spec.fields().len(), 1);
        assert_eq!(
            (spec.fields()[0].source_id, spec.fields()[0].transform, spec.fields()[0].name.as_str()),
            (ts_id, Transform::Day, PARTITION_FIELD)
        );
        let sort: Vec<i32> = metadata.default_sort_order().fields.iter().map(|f| f.source_id).collect();
        assert_eq!(sort, vec![service_id, ts_id]);
        assert_eq!(metadata.snapshots().len(), 0);
        let uuid = metadata.uuid();

        drop(lake);
        let again = Lake::open(&t.config, test_schema()).await.expect("reopen");
        assert_eq!(again.load_table().await.unwrap().metadata().uuid(), uuid, "same table reused");
    }

    #[tokio::test]
    async fn lake_open_refuses_a_table_whose_columns_differ() {
        let t = test_lake();
        Lake::open(&t.config, test_schema()).await.expect("open");
        let mut fields: Vec<_> = test_schema().as_struct().fields().to_vec();
        fields[20] =
            Arc::new(NestedField::optional(21, "kafka_offset", Type::Primitive(PrimitiveType::String)));
        let changed = Schema::builder().with_fields(fields).build().unwrap();
        let err = Lake::open(&t.config, changed).await.expect_err("type changed");
        assert!(matches!(err, LakeError::Schema { .. }), "{err}");
        assert!(err.to_string().contains("kafka_offset"), "{err}");
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn lake_append_two_days_commits_one_snapshot_readable_by_scan() {
        let t = test_lake();
        let lake = Lake::open(&t.config, test_schema()).await.expect("open");
        let first = staging_batch(&[
            row(DAY1, "checkout", "one", 10),
            row(DAY1 + DAY, "cart", "two", 11),
            row(DAY1 + 60_000_000, "cart", "three", 12),
        ]);
        let second =
            staging_batch(&[row(DAY1 + DAY + 5, "checkout", "four", 13), row(DAY1 + 7, "auth", "five", 14)]);
        let expected = rows_of(&[first.clone(), second.clone()]);

        let info = lake
            .append(batches(vec![first, second]), props(&[("telemetry-lake.offsets", "3:15")]), None)
            .await
            .expect("append")
            .expect("committed");
        assert_eq!((info.data_files, info.records), (2, 5));
        assert!(info.file_bytes > 0);

        let table = lake.load_table().await.unwrap();
        assert_eq!(table.metadata().snapshots().len(), 1, "exactly one snapshot");
        let snapshot = table.metadata().current_snapshot().unwrap();
        assert_eq!(snapshot.snapshot_id(), info.snapshot_id);
        let summary = &snapshot.summary().additional_properties;
        assert_eq!(summary.get("telemetry-lake.offsets").map(String::as_str), Some("3:15"));
        assert_eq!(summary.get("added-records").map(String::as_str), Some("5"));

        let files = parquet_files(&t.dir.path().join("warehouse"));
        assert_eq!(files.len(), 2, "one file per day: {files:?}");
        let days: Vec<String> = files
            .iter()
            .map(|f| f.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(days, vec!["timestamp_day=2026-11-27", "timestamp_day=2026-11-28"]);

        let read = scan(&lake).await;
        assert_eq!(rows_of(&read), expected, "rows read back equal rows appended");
        assert_eq!(
            read[0].schema().field_with_name("timestamp").unwrap().data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
        );
    }

    #[tokio::test]
    async fn lake_snapshot_summaries_lists_newest_first() {
        let t = test_lake();
        let lake = Lake::open(&t.config, test_schema()).await.expect("open");
        assert!(lake.snapshot_summaries().await.unwrap().is_empty());
        let mut ids = Vec::new();
        for (i, body) in ["a", "b", "c"].into_iter().enumerate() {
            let batch = staging_batch(&[row(DAY1 + i as i64, "svc", body, i as i64)]);
            let flush = i.to_string();
            let info =
                lake.append(batches(vec![batch]), props(&[("flush", &flush)]), None).await.unwrap().unwrap();
            ids.push(info.snapshot_id);
        }
        let summaries = lake.snapshot_summaries().await.unwrap();
        let seen: Vec<(i64, &str)> = summaries
            .iter()
            .map(|(id, props)| (*id, props.get("flush").map(String::as_str).unwrap_or("-")))
            .collect();
        assert_eq!(seen, vec![(ids[2], "2"), (ids[1], "1"), (ids[0], "0")]);
        assert_eq!(rows_of(&scan(&lake).await).len(), 3);
    }

    fn one_row(
        body: &'static str,
        offset: i64,
    ) -> impl Stream<Item = Result<RecordBatch, LakeError>> + Send + Unpin {
        batches(vec![staging_batch(&[row(DAY1 + offset, "svc", body, offset)])])
    }

    #[tokio::test]
    async fn lake_append_lands_on_a_newer_state_only_if_the_check_accepts_it() {
        let t = test_lake();
        let ours = Lake::open(&t.config, test_schema()).await.expect("open");
        let other = Lake::open(&t.config, test_schema()).await.expect("open a second writer");
        ours.append(one_row("first", 1), props(&[]), None).await.unwrap().unwrap();
        let checked_at = ours.snapshot_summaries().await.unwrap()[0].0;
        // Another writer commits between our check and our commit.
        let theirs =
            other.append(one_row("theirs", 2), props(&[("who", "other")]), None).await.unwrap().unwrap();

        let refuse = |newer: &[SnapshotSummary]| {
            assert_eq!(newer.len(), 1, "shown exactly the snapshot committed since the check");
            assert_eq!(newer[0].1.get("who").map(String::as_str), Some("other"));
            Err("they took partition 3".to_string())
        };
        let checked = CheckedBase { snapshot_id: Some(checked_at), still_valid: &refuse };
        let err = ours.append(one_row("mine", 3), props(&[]), Some(&checked)).await.expect_err("refused");
        assert!(matches!(err, LakeError::Conflict { .. }) && err.is_retryable(), "{err}");
        assert!(err.to_string().contains("they took partition 3"), "{err}");
        assert_eq!(ours.snapshot_summaries().await.unwrap().len(), 2, "nothing committed");

        let accept = |_: &[SnapshotSummary]| Ok(());
        let checked = CheckedBase { snapshot_id: Some(checked_at), still_valid: &accept };
        let mine = ours.append(one_row("mine", 3), props(&[]), Some(&checked)).await.unwrap().unwrap();
        let history: Vec<i64> = ours.snapshot_summaries().await.unwrap().iter().map(|(id, _)| *id).collect();
        assert_eq!(history, vec![mine.snapshot_id, theirs.snapshot_id, checked_at], "rebased on theirs");
        let bodies: Vec<String> = rows_of(&scan(&ours).await).into_iter().map(|r| r[4].clone()).collect();
        assert_eq!(bodies.len(), 3, "{bodies:?}");
    }

    /// A catalog that applies every commit and then reports a timeout, as a catalog behind a
    /// flaky network does.
    #[derive(Debug)]
    struct LosesCommitReplies(Arc<dyn Catalog>);

    #[async_trait::async_trait]
    impl Catalog for LosesCommitReplies {
        async fn update_table(&self, commit: iceberg::TableCommit) -> iceberg::Result<Table> {
            self.0.update_table(commit).await?;
            Err(iceberg::Error::new(ErrorKind::Unexpected, "timed out waiting for the catalog"))
        }
        async fn load_table(&self, table: &TableIdent) -> iceberg::Result<Table> {
            self.0.load_table(table).await
        }
        async fn list_namespaces(&self, p: Option<&NamespaceIdent>) -> iceberg::Result<Vec<NamespaceIdent>> {
            self.0.list_namespaces(p).await
        }
        async fn create_namespace(
            &self,
            n: &NamespaceIdent,
            p: HashMap<String, String>,
        ) -> iceberg::Result<iceberg::Namespace> {
            self.0.create_namespace(n, p).await
        }
        async fn get_namespace(&self, n: &NamespaceIdent) -> iceberg::Result<iceberg::Namespace> {
            self.0.get_namespace(n).await
        }
        async fn namespace_exists(&self, n: &NamespaceIdent) -> iceberg::Result<bool> {
            self.0.namespace_exists(n).await
        }
        async fn update_namespace(
            &self,
            n: &NamespaceIdent,
            p: HashMap<String, String>,
        ) -> iceberg::Result<()> {
            self.0.update_namespace(n, p).await
        }
        async fn drop_namespace(&self, n: &NamespaceIdent) -> iceberg::Result<()> {
            self.0.drop_namespace(n).await
        }
        async fn list_tables(&self, n: &NamespaceIdent) -> iceberg::Result<Vec<TableIdent>> {
            self.0.list_tables(n).await
        }
        async fn create_table(&self, n: &NamespaceIdent, c: TableCreation) -> iceberg::Result<Table> {
            self.0.create_table(n, c).await
        }
        async fn drop_table(&self, t: &TableIdent) -> iceberg::Result<()> {
            self.0.drop_table(t).await
        }
        async fn purge_table(&self, t: &TableIdent) -> iceberg::Result<()> {
            self.0.purge_table(t).await
        }
        async fn table_exists(&self, t: &TableIdent) -> iceberg::Result<bool> {
            self.0.table_exists(t).await
        }
        async fn rename_table(&self, a: &TableIdent, b: &TableIdent) -> iceberg::Result<()> {
            self.0.rename_table(a, b).await
        }
        async fn register_table(&self, t: &TableIdent, location: String) -> iceberg::Result<Table> {
            self.0.register_table(t, location).await
        }
    }

    #[tokio::test]
    async fn lake_append_whose_reply_was_lost_is_found_in_the_history_not_repeated() {
        let t = test_lake();
        let mut lake = Lake::open(&t.config, test_schema()).await.expect("open");
        lake.catalog = Arc::new(LosesCommitReplies(lake.catalog.clone()));

        let info =
            lake.append(one_row("once", 1), props(&[]), None).await.expect("found").expect("committed");
        let history = lake.snapshot_summaries().await.unwrap();
        assert_eq!(history.len(), 1, "committed exactly once");
        assert_eq!(history[0].0, info.snapshot_id);
        assert!(history[0].1.contains_key(COMMIT_ID_PROPERTY));
        assert_eq!(rows_of(&scan(&lake).await).len(), 1);
    }

    #[tokio::test]
    async fn lake_empty_stream_commits_nothing() {
        let t = test_lake();
        let lake = Lake::open(&t.config, test_schema()).await.expect("open");
        let none = lake.append(batches(vec![]), props(&[("flush", "1")]), None).await.expect("empty append");
        assert_eq!(none, None);
        let empty = staging_batch(&[]);
        let none =
            lake.append(batches(vec![empty]), props(&[("flush", "2")]), None).await.expect("empty batch");
        assert_eq!(none, None);
        assert!(lake.snapshot_summaries().await.unwrap().is_empty(), "no snapshot");
        assert!(parquet_files(&t.dir.path().join("warehouse")).is_empty(), "no file");
    }

    #[tokio::test]
    async fn lake_an_empty_batch_ends_a_sorted_run_and_its_files_in_one_snapshot() {
        let t = test_lake();
        let lake = Lake::open(&t.config, test_schema()).await.expect("open");
        let run =
            |service: &'static str| staging_batch(&[row(DAY1, service, "a", 1), row(DAY1, service, "b", 2)]);
        let empty = staging_batch(&[]);
        let stream = batches(vec![run("a"), empty.clone(), empty.clone(), run("b"), run("c"), empty]);
        let info = lake.append(stream, props(&[("flush", "1")]), None).await.expect("append").expect("rows");
        assert_eq!((info.data_files, info.records), (2, 6), "{info:?}");
        assert_eq!(parquet_files(&t.dir.path().join("warehouse")).len(), 2, "one file per run");
        assert_eq!(lake.snapshot_summaries().await.unwrap().len(), 1, "one snapshot");
    }

    #[tokio::test]
    async fn lake_failed_stream_commits_nothing_and_is_retryable() {
        let t = test_lake();
        let lake = Lake::open(&t.config, test_schema()).await.expect("open");
        let items = vec![
            Ok(staging_batch(&[row(DAY1, "svc", "a", 1)])),
            Err(LakeError::staging(std::io::Error::other("staging database closed"))),
        ];
        let err =
            lake.append(futures::stream::iter(items), props(&[]), None).await.expect_err("stream failed");
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("staging database closed"), "{err}");
        assert!(lake.snapshot_summaries().await.unwrap().is_empty(), "nothing committed");
    }

    #[tokio::test]
    async fn lake_appends_duckdb_staging_batches_by_column_name() {
        let t = test_lake();
        let lake = Lake::open(&t.config, test_schema()).await.expect("open");
        let db = duckdb::Connection::open_in_memory().expect("duckdb");
        db.execute_batch(&telemetry_lake_proto::duckdb_create_table("staging")).expect("staging table");
        db.execute_batch(
            "SET TimeZone = 'UTC';
             INSERT INTO staging VALUES
               ('2026-11-27 10:00:00+00', '2026-11-27 10:00:01+00', 9, 'INFO', 'hello', NULL, NULL, 0, NULL,
                'checkout', 'prod', MAP {'service.name': 'checkout'}, MAP {}, MAP {'k': 'v', 'n': '1'},
                'scope', '1.0', NULL, NULL, 0, 2, 41),
               ('2026-11-27 23:59:59.999999+00', NULL, 17, 'ERROR', 'boom', 'ab', 'cd', 1, 'ev',
                'cart', NULL, MAP {}, MAP {'s': 't'}, MAP {}, NULL, NULL, 'https://r', 'https://s', 3, 2, 42),
               ('2026-11-28 00:00:00+00', '2026-11-28 00:00:00+00', NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
        )
        .expect("staged rows");
        // Columns deliberately out of table order: matching is by name.
        let mut stmt = db
            .prepare("SELECT kafka_offset, body, * EXCLUDE (kafka_offset, body) FROM staging ORDER BY service_name, timestamp")
            .expect("prepare");
        let staged: Vec<RecordBatch> = stmt.query_arrow([]).expect("query_arrow").collect();
        let staged_schema = staged[0].schema();
        assert_eq!(staged_schema.field(0).name(), "kafka_offset");
        assert!(matches!(
            staged_schema.field_with_name("timestamp").unwrap().data_type(),
            DataType::Timestamp(TimeUnit::Microsecond, Some(_))
        ));
        assert!(matches!(
            staged_schema.field_with_name("log_attributes").unwrap().data_type(),
            DataType::Map(..)
        ));
        let expected = rows_of(&staged);
        assert_eq!(expected.len(), 3);

        let info = lake.append(batches(staged), props(&[("flush", "duckdb")]), None).await.unwrap().unwrap();
        assert_eq!((info.records, info.data_files), (3, 2));
        assert_eq!(rows_of(&scan(&lake).await), expected);
    }

    #[test]
    fn lake_conform_names_the_column_that_does_not_fit() {
        let target = Arc::new(schema_to_arrow_schema(&test_schema()).unwrap());
        let batch = staging_batch(&[row(DAY1, "svc", "a", 1)]);

        let extra = RecordBatch::try_from_iter(
            batch
                .schema()
                .fields()
                .iter()
                .zip(batch.columns())
                .map(|(f, c)| (f.name().clone(), c.clone()))
                .chain([(
                    "surprise".to_string(),
                    Arc::new(arrow_array::Int32Array::from(vec![1])) as ArrayRef,
                )]),
        )
        .unwrap();
        assert!(conform(&extra, &target).unwrap_err().contains("surprise"));

        let without_timestamp = batch.project(&(1..batch.num_columns()).collect::<Vec<_>>()).unwrap();
        assert!(conform(&without_timestamp, &target).unwrap_err().contains("timestamp"));

        let without_body = {
            let keep: Vec<usize> =
                (0..batch.num_columns()).filter(|i| batch.schema().field(*i).name() != "body").collect();
            batch.project(&keep).unwrap()
        };
        let conformed = conform(&without_body, &target).expect("optional column filled with nulls");
        assert_eq!(conformed.column_by_name("body").unwrap().null_count(), 1);
        assert_eq!(conformed.schema(), target);
    }

    #[tokio::test]
    async fn lake_debug_and_errors_of_an_open_lake_hide_secrets() {
        let mut t = test_lake();
        t.config.properties.insert("s3.secret-access-key".into(), "AKsecretVALUE".into());
        let lake = Lake::open(&t.config, test_schema()).await.expect("open");
        assert!(!format!("{lake:?}").contains("AKsecretVALUE"));
        let err = lake.catalog_error(
            "commit the snapshot",
            iceberg::Error::new(ErrorKind::Unexpected, "signing with AKsecretVALUE failed"),
        );
        assert!(err.is_retryable());
        let text = err.to_string();
        assert!(!text.contains("AKsecretVALUE") && text.contains("commit the snapshot"), "{text}");
    }

    #[test]
    fn lake_redactor_hides_uri_passwords_and_credentials() {
        let config = IcebergConfig {
            catalog_uri: "postgres://lake:pg-Pa55word@db:5432/catalog?sslpassword=ssl-Secret1".into(),
            properties: BTreeMap::from([
                ("s3.secret-access-key".to_string(), "AKsecretVALUE".to_string()),
                ("s3.access-key-id".to_string(), "AKIDVALUE".to_string()),
                ("s3.sse.key".to_string(), "SSEcustomerKEY".to_string()),
                ("header.Authorization".to_string(), "Bearer hdrTOKEN".to_string()),
                ("s3.region".to_string(), "eu-west-1".to_string()),
            ]),
            ..IcebergConfig::default()
        };
        let redactor = Redactor::new(&config);
        let text = "connect postgres://lake:pg-Pa55word@db:5432/catalog?sslpassword=ssl-Secret1 \
                    with AKIDVALUE/AKsecretVALUE in eu-west-1, SSEcustomerKEY, Bearer hdrTOKEN";
        let redacted = redactor.redact(text);
        for secret in
            ["pg-Pa55word", "ssl-Secret1", "AKsecretVALUE", "AKIDVALUE", "SSEcustomerKEY", "hdrTOKEN"]
        {
            assert!(!redacted.contains(secret), "{secret} leaked: {redacted}");
        }
        assert!(
            redacted.contains("postgres://lake:***@db:5432") && redacted.contains("eu-west-1"),
            "{redacted}"
        );
    }

    #[test]
    fn lake_sql_uri_and_warehouse_are_normalised() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a/b/catalog.db");
        let (uri, style) = sql_catalog_uri(&format!("sqlite://{}", db.display())).unwrap();
        assert_eq!(uri, format!("sqlite:{}?mode=rwc", db.display()));
        assert_eq!(style, SqlBindStyle::QMark);
        assert!(db.parent().unwrap().is_dir(), "catalog directory created");
        let (uri, _) = sql_catalog_uri("sqlite:x.db?mode=ro").unwrap();
        assert!(uri.starts_with("sqlite:/") && uri.ends_with("/x.db?mode=ro"), "{uri}");
        let (uri, style) = sql_catalog_uri("postgres://u:p@h/db").unwrap();
        assert_eq!((uri.as_str(), style), ("postgres://u:p@h/db", SqlBindStyle::DollarNumeric));
        assert!(matches!(sql_catalog_uri("http://localhost:8181"), Err(LakeError::Config { .. })));

        let wh = dir.path().join("wh");
        assert_eq!(
            warehouse_location(&format!("{}/", wh.display())).unwrap(),
            format!("file://{}", wh.display())
        );
        assert!(wh.is_dir());
        assert_eq!(warehouse_location("s3://bucket/prefix/").unwrap(), "s3://bucket/prefix");
        assert!(warehouse_location("file://relative").is_err());
        assert!(warehouse_location(" ").is_err());
    }

    #[test]
    fn lake_configured_s3_keys_never_show_in_debug_output() {
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
    fn lake_rest_timeouts_come_from_properties() {
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
}
