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
//!  Transaction::fast_append          ONE snapshot; its summary carries the caller's properties,
//!  (+ update_table_properties)       and the caller's table properties are set in that commit
//! ```
//!
//! What [`Lake`] guarantees:
//! - [`Lake::open`] leaves a format v2 table, partitioned by `day(timestamp)` and sorted by
//!   `service_name, timestamp`, behind the configured identifier, and creates nothing when the
//!   namespace and table already exist (a second appender racing to create them is fine).
//! - [`Lake::append`] commits at most one snapshot per call, and the caller's properties (Kafka
//!   offsets, flush ids; table properties too) land in the very commit that holds the rows, so
//!   [`Lake::snapshot_summaries`] tells a retrying caller whether a flush already landed.
//!   An empty stream commits nothing, unless the properties carry Kafka offsets (then a
//!   snapshot without data files records them). Files written by an append that fails before
//!   its commit are referenced by no snapshot: readers never see them (they are orphans until
//!   cleaned up).
//! - Memory stays bounded: one input batch at a time, plus one open row group (at most
//!   [`MAX_ROW_GROUP_BYTES`]) per day partition seen in the call.
//! - Rows are written in the order they arrive; the stager orders them (`ORDER BY service_name,
//!   timestamp`) so that files follow the table's sort order. A batch with no rows ends a
//!   sorted run: the rows after it go to new files, so every file holds one sorted run.
//! - Secrets (see `telemetry_lake_common::secrets`) never appear in errors, logs (at any
//!   level: configured S3 keys reach opendal through a provider whose `Debug` hides them) or
//!   `Debug` output.
//!
//! Rooms: `catalog` connects the configured catalog and storage, `schema` creates, checks and
//! conforms to the table's shape, `pinned` keeps a commit on the table state its caller checked.

mod catalog;
mod pinned;
mod schema;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow_array::RecordBatch;
use futures::{Stream, StreamExt};
use iceberg::arrow::{RecordBatchPartitionSplitter, schema_to_arrow_schema};
use iceberg::spec::{DataFile, DataFileFormat, PartitionKey, Schema, SchemaRef, Struct, TableMetadata};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::{Catalog, ErrorKind, NamespaceIdent, TableIdent};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use telemetry_lake_common::secrets::Redactor;
use telemetry_lake_common::settings::IcebergSettings;
use telemetry_lake_proto::RowTable;
use tracing::{debug, info};
use uuid::Uuid;

pub use self::catalog::{REST_CONNECT_TIMEOUT_PROPERTY, REST_SOCKET_TIMEOUT_PROPERTY, connect};
use self::pinned::PinnedCatalog;
use self::schema::{check_columns, conform};
use crate::commit::summary::{self, SnapshotSummary};

/// Name of the partition field, `day(timestamp)` (the directory is `timestamp_day=YYYY-MM-DD`).
pub const PARTITION_FIELD: &str = "timestamp_day";
/// Upper bound of one Parquet row group; the writer buffers one per open partition.
pub const MAX_ROW_GROUP_BYTES: u64 = 16 * 1024 * 1024;

/// How often [`Lake::append`] moves its commit onto a newer table state before giving up.
const MAX_REBASES: usize = 10;

/// What a commit records besides its rows, in the same commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitProperties {
    /// Into the new snapshot's summary.
    pub summary: HashMap<String, String>,
    /// Set as table properties.
    pub table: HashMap<String, String>,
}

/// The table state a caller checked before [`Lake::append`], and what may change since.
pub struct CheckedBase<'a> {
    /// The current snapshot when the caller read the table (`None`: it had no snapshot).
    pub snapshot_id: Option<i64>,
    /// Shown the snapshots others committed since (newest first): the properties to commit on
    /// top of them instead, or `Err(reason)` when they may hold rows of this commit, so it must
    /// not land on top of them.
    pub rebase: &'a (dyn Fn(&[SnapshotSummary]) -> Result<CommitProperties, String> + Sync),
}

/// The table as one load found it: its snapshots' summaries and its properties.
#[derive(Debug, Clone, Default)]
pub struct TableState {
    /// `(snapshot_id, summary)` of the current snapshot and its ancestors, newest first.
    pub summaries: Vec<SnapshotSummary>,
    pub properties: HashMap<String, String>,
}

impl TableState {
    /// The current snapshot (`None`: the table has none).
    pub fn current(&self) -> Option<i64> {
        self.summaries.first().map(|(id, _)| *id)
    }
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
    /// Which of the lake's tables this is.
    row: RowTable,
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
    /// Connects to the catalog; creates the namespace and the table of `row` (format v2,
    /// partitioned by day(timestamp), sorted by the row's sort columns) if missing; reuses them
    /// if present. A sqlite catalog file and a local warehouse are created with their
    /// directories. A reused table must have every column of the row with the same type.
    pub async fn open(config: &IcebergSettings, row: RowTable) -> Result<Lake, LakeError> {
        let mut lakes = Self::open_tables(config, &[row]).await?;
        Ok(lakes.remove(0))
    }

    /// [`Lake::open`] for each of `rows`, over one connection to the catalog.
    pub async fn open_tables(config: &IcebergSettings, rows: &[RowTable]) -> Result<Vec<Lake>, LakeError> {
        let redactor = Redactor::for_iceberg(config);
        let catalog = catalog::connect(config, &redactor).await?;
        let mut lakes = Vec::with_capacity(rows.len());
        for row in rows {
            lakes.push(
                Self::open_in(catalog.clone(), config, *row, row.iceberg_schema(), redactor.clone()).await?,
            );
        }
        Ok(lakes)
    }

    /// Opens the table of `row` as if its row were `schema` (tests of a table that differs).
    pub(crate) async fn open_in(
        catalog: Arc<dyn Catalog>,
        config: &IcebergSettings,
        row: RowTable,
        schema: Schema,
        redactor: Redactor,
    ) -> Result<Lake, LakeError> {
        let lake = Lake {
            catalog,
            row,
            ident: table_ident(config, row)?,
            catalog_label: catalog::label(config, &redactor),
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
    /// `checked.rebase`, and the same files are committed on the newer state, with the
    /// properties it returns, only if it agrees; otherwise the append fails with a retryable [`LakeError::Conflict`] and the
    /// caller checks again. Each commit carries a fresh [`summary::COMMIT_ID`], so a commit whose
    /// outcome was unknown (a timeout, a 5xx) is recognised in the history instead of repeated.
    pub async fn append<S>(
        &self,
        mut batches: S,
        properties: CommitProperties,
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
        // No rows: nothing to commit, unless the commit moves Kafka offsets past messages that
        // held no stageable record (dead letters), which must land exactly once too.
        if data_files.is_empty() && !properties.summary.contains_key(summary::KAFKA_OFFSETS) {
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
        properties.summary.insert(summary::COMMIT_ID.into(), commit_uuid.to_string());
        let mut base = match checked {
            Some(checked) => checked.snapshot_id,
            None => table.metadata().current_snapshot_id(),
        };
        for _ in 0..MAX_REBASES {
            let pinned = PinnedCatalog::pinned(self.catalog.clone(), self.ident.clone(), base);
            let mut tx = Transaction::new(&table);
            if !properties.table.is_empty() {
                let update = properties
                    .table
                    .iter()
                    .fold(tx.update_table_properties(), |update, (k, v)| update.set(k.clone(), v.clone()));
                tx = update.apply(tx).map_err(|e| self.catalog_error("prepare the table properties", e))?;
            }
            let tx = tx
                .fast_append()
                .set_commit_uuid(commit_uuid)
                .add_data_files(data_files.clone())
                .set_snapshot_properties(properties.summary.clone())
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
                newer.iter().find(|(_, summary)| summary.get(summary::COMMIT_ID) == Some(&commit_id))
            {
                info!(table = %self.ident, snapshot_id = id, "the commit had landed before its error");
                return Ok(Some(self.committed(*id, &data_files)));
            }
            if let Some(checked) = checked {
                properties = (checked.rebase)(&newer).map_err(|reason| self.conflict(reason))?;
                properties.summary.insert(summary::COMMIT_ID.into(), commit_id.clone());
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
        Ok(self.state().await?.summaries)
    }

    /// The snapshot summaries (as [`Lake::snapshot_summaries`]) and the table's properties,
    /// from one load of the table.
    pub async fn state(&self) -> Result<TableState, LakeError> {
        let table = self.load_table().await?;
        let metadata = table.metadata();
        Ok(TableState {
            summaries: snapshots_since(metadata, None).unwrap_or_default(),
            properties: metadata.properties().clone(),
        })
    }

    pub fn table_ident(&self) -> &TableIdent {
        &self.ident
    }

    /// Which of the lake's tables this is.
    pub fn row(&self) -> RowTable {
        self.row
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

    fn new_writer(
        &self,
        table: &Table,
        schema: SchemaRef,
        file_prefix: &str,
    ) -> Result<LakeWriter, LakeError> {
        let row_group_bytes = self.target_file_size.clamp(1, MAX_ROW_GROUP_BYTES);
        let props = writer_properties(row_group_bytes, self.row.high_cardinality_columns());
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

/// How data files are written: zstd, row groups of at most `row_group_bytes`, and neither a
/// dictionary nor statistics for the table's `high_cardinality` columns.
fn writer_properties(row_group_bytes: u64, high_cardinality: &[&str]) -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_max_row_group_bytes(Some(usize::try_from(row_group_bytes).unwrap_or(usize::MAX)));
    // Log lines and per-record attribute values rarely repeat within a file: a dictionary of
    // them is mostly hashing that Parquet abandons once it is full, and their min/max statistics
    // are compared value by value for bounds no query prunes on.
    for column in high_cardinality {
        let path = ColumnPath::from(column.split('.').map(String::from).collect::<Vec<_>>());
        props = props
            .set_column_dictionary_enabled(path.clone(), false)
            .set_column_statistics_enabled(path, EnabledStatistics::None);
    }
    props.build()
}

type LakeWriter = FanoutWriter<
    DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>,
>;

/// The table's identifier: `iceberg.namespace` (dot-separated) and the table's name
/// (`iceberg.table`, `iceberg.traces_table`, `iceberg.metrics_table_prefix` + the type).
pub fn table_ident(config: &IcebergSettings, row: RowTable) -> Result<TableIdent, LakeError> {
    let namespace = NamespaceIdent::from_strs(&config.namespace)
        .map_err(|e| LakeError::Config { key: "iceberg.namespace", reason: e.message().to_string() })?;
    Ok(TableIdent::new(namespace, table_name(config, row)))
}

/// The configured name of the table of `row`.
pub fn table_name(config: &IcebergSettings, row: RowTable) -> String {
    match row {
        RowTable::Logs => config.table.clone(),
        RowTable::Traces => config.traces_table.clone(),
        _ => format!("{}{}", config.metrics_table_prefix, row.metric_type().expect("a metrics table")),
    }
}

/// Loads the configured table for reading (`appender query`): connects the catalog and
/// creates nothing, the table's namespace included. A SQLite catalog file that does not exist
/// is refused, since opening it would create an empty catalog.
pub async fn load_existing(
    config: &IcebergSettings,
    row: RowTable,
    redactor: &Redactor,
) -> Result<Table, String> {
    let label = catalog::label(config, redactor);
    if let telemetry_lake_common::settings::Catalog::Sqlite { path, .. } = &config.catalog
        && path.as_os_str() != ":memory:"
        && !path.exists()
    {
        return Err(format!(
            "no lake here: the catalog file {} does not exist (iceberg.catalog_uri = {:?}); run \
             the appender first, or give the lake's config with --config or TELEMETRY_LAKE_*",
            path.display(),
            redactor.redact(&config.catalog_uri)
        ));
    }
    let ident = table_ident(config, row).map_err(|e| e.to_string())?;
    let catalog =
        catalog::connect(config, redactor).await.map_err(|e| format!("cannot open the catalog: {e}"))?;
    catalog.load_table(&ident).await.map_err(|e| match e.kind() {
        ErrorKind::TableNotFound | ErrorKind::NamespaceNotFound => format!(
            "table {ident} does not exist in catalog {label}: the appender creates it when it \
             starts; check iceberg.namespace and iceberg.table"
        ),
        _ => format!(
            "cannot load table {ident} from catalog {label}: {} (check that the catalog is \
             reachable and iceberg.catalog_uri and iceberg.properties are right)",
            redactor.redact(&e.to_string())
        ),
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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod writer_properties_tests {
    use super::*;

    #[test]
    fn high_cardinality_columns_have_no_dictionary_and_no_statistics() {
        let props = writer_properties(MAX_ROW_GROUP_BYTES, RowTable::Logs.high_cardinality_columns());
        let path = |p: &str| ColumnPath::from(p.split('.').map(String::from).collect::<Vec<_>>());
        for column in ["body", "log_attributes.key_value.value"] {
            assert!(!props.dictionary_enabled(&path(column)), "{column}");
            assert_eq!(props.statistics_enabled(&path(column)), EnabledStatistics::None, "{column}");
        }
        // The sort columns keep theirs: readers prune files on them.
        for column in ["service_name", "timestamp", "resource_attributes.key_value.value"] {
            assert!(props.dictionary_enabled(&path(column)), "{column}");
            assert_ne!(props.statistics_enabled(&path(column)), EnabledStatistics::None, "{column}");
        }
    }
}
