//! `appender query SQL`: runs one SQL statement over the lake's Iceberg tables with DuckDB and prints
//! the result as an aligned table, CSV, a JSON array or JSON lines. The way a user checks what
//! landed, with the same config as the service (`--config`, `TELEMETRY_LAKE_*`, defaults: the
//! embedded lake under `./data`), and no network beyond the catalog and the object store.
//!
//! The `appender` binary opens the table with the service's own catalog code and hands it
//! here, so this crate knows nothing of catalogs or credentials:
//!
//! ```text
//!  appender's lake::load_existing (sqlite/postgres or REST; file or S3; creates nothing)
//!      |  Table                                       --snapshot ID or the current snapshot
//!      v
//!  iceberg TableScan::to_arrow    Arrow batches of 2,048 rows, two data files read at a time
//!      |  bounded channel (2 batches)
//!      v
//!  DuckDB thread: in-memory database, memory_limit + a temporary spill directory
//!      a table per table the statement names (`logs`, `traces`, `metrics_sum`, … or their
//!      configured names, with a view of the default name when that differs), columns and types
//!      from the table's schema (timestamptz -> TIMESTAMPTZ, map -> MAP, list -> [], struct)
//!      |  the statement, streamed out chunk by chunk
//!      v
//!  stdout: table (arrow's pretty printer) | csv | json | jsonl
//! ```
//!
//! Why this shape:
//! - Scanning with iceberg-rust reads exactly what the service's readers and writers see (the
//!   same catalog code, credentials and FileIO, delete files applied, schema by field id), for
//!   every catalog and storage the appender supports. DuckDB's own `iceberg` extension would
//!   need its extension files on disk and, for S3, `httpfs` and a second copy of the settings.
//! - The statement is checked against the empty table before any data file is read, so a typo
//!   fails in milliseconds, then prepared again once the rows are in (a plan made over an empty
//!   table may have been simplified using its statistics).
//! - Memory stays bounded: batches go one at a time through a channel of two into DuckDB's
//!   appender, and DuckDB spills past `--memory-limit` to a temporary directory that is removed
//!   afterwards. CSV and JSON are written chunk by chunk as DuckDB streams the result; only
//!   `--format table` holds the whole result, to align the columns.
//! - No filter is pushed into the scan: every query reads the whole snapshot once.
//!
//! Output conventions: timestamps with a time zone are printed in UTC as RFC 3339
//! (`2026-11-27T10:00:00Z`); NULL is `NULL` in the table, an unquoted empty field in CSV (an
//! empty string is `""`) and `null` in JSON, whose maps are objects.
//!
//! Exit codes (see [`QueryError::exit_code`]): 0 done, 1 the catalog, the table or its files
//! cannot be read, 2 the statement or the configuration is wrong.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Schema as ArrowSchema, TimeUnit};
use bytesize::ByteSize;
use futures::StreamExt;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::SchemaRef;
use iceberg::table::Table;
use telemetry_lake_common::secrets::Redactor;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::output::{Sink, to_utc, utc_schema};

mod output;

/// Rows per batch of the scan: DuckDB's vector size, so a batch goes in as one chunk.
const SCAN_BATCH_ROWS: usize = 2048;
/// Rows the DuckDB appender may buffer (outside DuckDB's memory limit; about 16 MiB of logs)
/// before they are flushed into the table; its own threshold is 204,800 rows.
const APPENDER_FLUSH_ROWS: usize = 16 * SCAN_BATCH_ROWS;
/// Data files read at the same time.
const SCAN_FILE_CONCURRENCY: usize = 2;
/// RFC 3339 in UTC; the zone label of every zoned timestamp is set to UTC before formatting.
const TIMESTAMP_TZ_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.fZ";

/// `appender query`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct QueryArgs {
    /// One SQL statement (DuckDB's dialect) over the table `logs`; `-` reads it from stdin.
    #[arg(value_name = "SQL")]
    pub sql: String,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Query this snapshot instead of the table's current one.
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<i64>,
    /// DuckDB's memory limit; past it the copy of the table spills to a temporary directory.
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    pub memory_limit: ByteSize,
}

/// Output formats of `appender query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns in a box, then `(N rows)`.
    Table,
    /// A header line, then one line per row.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Jsonl,
}

/// What to run: the statement, where and how to print it.
#[derive(Debug, Clone)]
pub struct QueryRequest {
    pub sql: String,
    pub format: Format,
    pub snapshot: Option<i64>,
    pub memory_limit: ByteSize,
    /// Where DuckDB's spill directory is created (a fresh one, removed afterwards).
    pub temp_dir: PathBuf,
}

/// Why a query produced no (complete) result. Messages never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The catalog or the table cannot be opened.
    #[error("{0}")]
    Lake(String),
    /// The table's metadata or data files cannot be read.
    #[error("reading table {table} failed: {message} (check that the warehouse storage is reachable)")]
    Scan { table: String, message: String },
    /// DuckDB refused or failed the statement.
    #[error(
        "the query failed: {message}\nhint: query the table as `{alias}` (iceberg table {table}); \
         `appender query \"DESCRIBE {alias}\"` lists its columns; the lake's tables are logs, \
         traces, metrics_gauge, metrics_sum, metrics_histogram, metrics_exponential_histogram and \
         metrics_summary"
    )]
    Sql { message: String, table: String, alias: String },
    /// DuckDB could not be set up or loaded (not the statement's fault).
    #[error("duckdb failed to {action}: {message}")]
    DuckDb { action: &'static str, message: String },
    /// A value could not be formatted.
    #[error("cannot format the result: {0}")]
    Format(String),
    /// Writing the result failed.
    #[error("cannot write the result: {0}")]
    Output(#[source] io::Error),
}

impl QueryError {
    /// 2 when the statement is wrong, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            QueryError::Sql { .. } => 2,
            _ => 1,
        }
    }

    fn duckdb(action: &'static str) -> impl Fn(duckdb::Error) -> QueryError {
        move |e| QueryError::DuckDb { action, message: e.to_string() }
    }
}

impl From<arrow_schema::ArrowError> for QueryError {
    fn from(e: arrow_schema::ArrowError) -> Self {
        match e {
            arrow_schema::ArrowError::IoError(_, e) => QueryError::Output(e),
            e => QueryError::Format(e.to_string()),
        }
    }
}

/// A table a statement may use: the name it goes by (`iceberg.table`, `iceberg.traces_table`,
/// …), the table's default name when that differs (a view of that name is made too, so
/// `logs` always works), and `table`: what [`main`] opens it from, or the table opened.
pub struct NamedTable<T> {
    pub name: String,
    pub alias: Option<String>,
    pub table: T,
}

/// A table opened for a statement, with its names.
pub type QueryTable = NamedTable<Table>;

/// The tables among `tables` that `sql` names (as a word, any case); the first one (the logs
/// table) when it names none, as `SELECT 1` does.
pub fn referenced<T>(sql: &str, tables: &[NamedTable<T>]) -> Vec<usize> {
    let words: std::collections::HashSet<String> = sql
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let named = |t: &NamedTable<T>| {
        std::iter::once(&t.name).chain(&t.alias).any(|n| words.contains(&n.to_ascii_lowercase()))
    };
    let found: Vec<usize> = (0..tables.len()).filter(|i| named(&tables[*i])).collect();
    if found.is_empty() && !tables.is_empty() { vec![0] } else { found }
}

/// The subcommand: opens the tables the statement names among `tables` with `open` (or reports
/// why one cannot be opened), runs the statement over them, prints the result on stdout and
/// errors on stderr, and returns the exit code.
pub async fn main<T>(
    args: QueryArgs,
    tables: Vec<NamedTable<T>>,
    open: impl AsyncFn(&T) -> Result<Table, String>,
    redactor: &Redactor,
) -> ExitCode {
    const NAME: &str = "appender query";
    // Errors are redacted where they are made; this holds for any that is not.
    let report = |message: String| eprintln!("{NAME}: {}", redactor.redact(&message));
    let sql = if args.sql == "-" {
        let mut sql = String::new();
        if let Err(e) = io::stdin().read_to_string(&mut sql) {
            report(format!("cannot read the statement from stdin: {e}"));
            return ExitCode::from(2);
        }
        sql
    } else {
        args.sql
    };
    let wanted = referenced(&sql, &tables);
    let mut opened = Vec::with_capacity(wanted.len());
    for named in tables.into_iter().enumerate().filter(|(i, _)| wanted.contains(i)).map(|(_, t)| t) {
        match open(&named.table).await {
            Ok(table) => opened.push(QueryTable { name: named.name, alias: named.alias, table }),
            Err(message) => {
                report(message);
                return ExitCode::from(1);
            }
        }
    }
    let request = QueryRequest {
        sql,
        format: args.format,
        snapshot: args.snapshot,
        memory_limit: args.memory_limit,
        temp_dir: std::env::temp_dir(),
    };
    match run(opened, redactor, request, io::BufWriter::new(io::stdout())).await {
        Ok(_) => ExitCode::SUCCESS,
        // `appender query … | head`: the reader has all it wanted.
        Err(QueryError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            report(err.to_string());
            ExitCode::from(err.exit_code())
        }
    }
}

/// Runs `request` over `tables` (each called by its name and alias in the statement) and writes
/// the result to `out`; returns the number of result rows and `out`. `--snapshot` applies when
/// the statement uses one table.
pub async fn run<W: Write + Send + 'static>(
    tables: Vec<QueryTable>,
    redactor: &Redactor,
    request: QueryRequest,
    out: W,
) -> Result<(u64, W), QueryError> {
    let snapshot = request.snapshot;
    if snapshot.is_some() && tables.len() != 1 {
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        return Err(QueryError::Lake(format!(
            "--snapshot picks a snapshot of one table, but the statement uses {}",
            names.join(", ")
        )));
    }
    let mut duck_tables = Vec::with_capacity(tables.len());
    for t in &tables {
        let schema = table_schema(&t.table, snapshot, redactor)?;
        let ident = t.table.identifier().to_string();
        let arrow_schema = schema_to_arrow_schema(&schema).map_err(|e| QueryError::Scan {
            table: ident.clone(),
            message: format!("the table schema has no arrow equivalent: {}", e.message()),
        })?;
        duck_tables.push(DuckTable {
            name: t.name.clone(),
            alias: t.alias.clone(),
            iceberg_table: ident,
            schema: arrow_schema,
        });
    }

    let (batches_tx, batches_rx) = mpsc::channel::<Loaded>(2);
    let (ready_tx, ready_rx) = oneshot::channel();
    let duck = DuckSide { tables: duck_tables, request };
    let worker = tokio::task::spawn_blocking(move || duck.run(batches_rx, ready_tx, out));

    // Nothing is read until DuckDB has accepted the statement; when it refuses it, the worker
    // has returned and says why.
    let scanned = match ready_rx.await {
        Ok(()) => Some(scan_all(&tables, snapshot, redactor, &batches_tx).await),
        Err(_) => None,
    };
    if let Some(Ok(_)) = &scanned {
        // Without this the worker takes the closed channel for a failed scan.
        let _ = batches_tx.send(Loaded::End).await;
    }
    drop(batches_tx);
    let result = worker.await.map_err(|e| QueryError::DuckDb { action: "run", message: e.to_string() })?;
    match (scanned, result) {
        // A failed scan stops the worker with `ABORTED`; report the cause instead.
        (Some(Err(scan_err)), Err(QueryError::DuckDb { action: ABORTED, .. })) => Err(scan_err),
        (_, result) => result,
    }
}

/// The schema of `snapshot` of `table` (its current one for `None`).
fn table_schema(table: &Table, snapshot: Option<i64>, redactor: &Redactor) -> Result<SchemaRef, QueryError> {
    let ident = table.identifier().to_string();
    let Some(id) = snapshot else { return Ok(table.metadata().current_schema().clone()) };
    let metadata = table.metadata();
    let snapshot = metadata.snapshot_by_id(id).ok_or_else(|| {
        let mut snapshots: Vec<_> = metadata.snapshots().collect();
        snapshots.sort_by_key(|s| s.sequence_number());
        let known: Vec<String> = snapshots.iter().map(|s| s.snapshot_id().to_string()).collect();
        QueryError::Lake(format!(
            "table {ident} has no snapshot {id} (it has, oldest first: {})",
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        ))
    })?;
    snapshot
        .schema(metadata)
        .map_err(|e| QueryError::Scan { table: ident.clone(), message: redactor.redact(&e.to_string()) })
}

/// The worker's error action when the scan stopped before the end.
const ABORTED: &str = "load the table (the scan stopped)";

enum Loaded {
    /// Rows of the table at this index of the statement's tables.
    Batch(usize, RecordBatch),
    /// Every batch was sent: the table is complete.
    End,
}

/// Streams every table's rows into `tx`, in turn (see [`scan`]); stops at the first failure.
async fn scan_all(
    tables: &[QueryTable],
    snapshot: Option<i64>,
    redactor: &Redactor,
    tx: &mpsc::Sender<Loaded>,
) -> Result<(), QueryError> {
    for (index, t) in tables.iter().enumerate() {
        let rows = scan(&t.table, index, snapshot, redactor, tx).await?;
        debug!(table = %t.table.identifier(), rows, "table scanned into duckdb");
    }
    Ok(())
}

/// Streams the rows of `snapshot` (the current one for `None`) into `tx`; returns how many.
/// Stops early, without an error, when the receiver is gone (DuckDB failed; it reports why).
async fn scan(
    table: &Table,
    index: usize,
    snapshot: Option<i64>,
    redactor: &Redactor,
    tx: &mpsc::Sender<Loaded>,
) -> Result<u64, QueryError> {
    let failed = |e: iceberg::Error| QueryError::Scan {
        table: table.identifier().to_string(),
        message: redactor.redact(&e.to_string()),
    };
    let mut builder = table
        .scan()
        .select_all()
        .with_batch_size(Some(SCAN_BATCH_ROWS))
        .with_data_file_concurrency_limit(SCAN_FILE_CONCURRENCY);
    if let Some(id) = snapshot {
        builder = builder.snapshot_id(id);
    }
    let mut batches = builder.build().map_err(failed)?.to_arrow().await.map_err(failed)?;
    let mut rows = 0u64;
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(failed)?;
        rows += batch.num_rows() as u64;
        if tx.send(Loaded::Batch(index, batch)).await.is_err() {
            break;
        }
    }
    Ok(rows)
}

/// A table as DuckDB gets it.
struct DuckTable {
    /// The DuckDB table's name (`iceberg.table`, …).
    name: String,
    /// A view of the table under its default name, when that differs.
    alias: Option<String>,
    /// `namespace.table`, for messages.
    iceberg_table: String,
    schema: arrow_schema::Schema,
}

/// The DuckDB side: owns the connection on a blocking thread.
struct DuckSide {
    tables: Vec<DuckTable>,
    request: QueryRequest,
}

impl DuckSide {
    fn run<W: Write>(
        self,
        mut batches: mpsc::Receiver<Loaded>,
        ready: oneshot::Sender<()>,
        mut out: W,
    ) -> Result<(u64, W), QueryError> {
        let spill = tempfile::Builder::new()
            .prefix("appender-query-")
            .tempdir_in(&self.request.temp_dir)
            .map_err(|e| QueryError::DuckDb {
                action: "create its spill directory",
                message: format!("{}: {e}", self.request.temp_dir.display()),
            })?;
        let conn = open_duckdb(self.request.memory_limit, spill.path())?;
        for table in &self.tables {
            conn.execute_batch(&create_table_sql(&table.name, &table.schema)?)
                .map_err(QueryError::duckdb("create the table"))?;
            if let Some(alias) = table.alias.as_ref().filter(|alias| **alias != table.name) {
                conn.execute_batch(&format!(
                    "CREATE VIEW {} AS SELECT * FROM {}",
                    quote_ident(alias),
                    quote_ident(&table.name)
                ))
                .map_err(QueryError::duckdb("create the view of the table's default name"))?;
            }
        }
        // Parse and bind over the empty table: a wrong statement fails before any file is read.
        drop(conn.prepare(&self.request.sql).map_err(|e| self.sql_error(e))?);
        if ready.send(()).is_err() {
            return Err(QueryError::DuckDb { action: ABORTED, message: "the scan was cancelled".into() });
        }

        let load_error = |e: duckdb::Error| self.duckdb_error("load the table's rows", e.to_string());
        let mut appender = None;
        let mut unflushed = 0;
        loop {
            match batches.blocking_recv() {
                Some(Loaded::Batch(index, batch)) => {
                    if appender.as_ref().is_none_or(|(at, _)| *at != index) {
                        if let Some((_, mut done)) = appender.take() {
                            duckdb::Appender::flush(&mut done).map_err(&load_error)?;
                        }
                        let next = conn
                            .appender(&self.tables[index].name)
                            .map_err(QueryError::duckdb("open an appender"))?;
                        appender = Some((index, next));
                        unflushed = 0;
                    }
                    let (_, appender) = appender.as_mut().expect("opened above");
                    unflushed += batch.num_rows();
                    appender.append_record_batch(batch).map_err(&load_error)?;
                    // The appender buffers rows outside DuckDB's memory limit until it flushes.
                    if unflushed >= APPENDER_FLUSH_ROWS {
                        appender.flush().map_err(&load_error)?;
                        unflushed = 0;
                    }
                }
                Some(Loaded::End) => break,
                None => {
                    return Err(QueryError::DuckDb { action: ABORTED, message: "the scan failed".into() });
                }
            }
        }
        if let Some((_, mut appender)) = appender {
            appender.flush().map_err(&load_error)?;
        }

        let mut stmt = conn.prepare(&self.request.sql).map_err(|e| self.sql_error(e))?;
        // Executes (streaming); the chunks are then fetched with `step`, which returns errors
        // where the iterator would panic.
        drop(stmt.stream_arrow([]).map_err(|e| self.sql_error(e))?);
        let schema = utc_schema(&stmt.schema());
        let mut sink = Sink::new(self.request.format, schema.clone(), &mut out)?;
        while let Some(chunk) = stmt.step().map_err(|e| self.sql_error(e))? {
            let batch = to_utc(RecordBatch::from(&chunk), &schema)?;
            if batch.num_rows() > 0 {
                sink.write(batch)?;
            }
        }
        let rows = sink.finish()?;
        out.flush().map_err(QueryError::Output)?;
        Ok((rows, out))
    }

    /// The statement's fault (exit 2), unless DuckDB ran out of memory.
    fn sql_error(&self, e: duckdb::Error) -> QueryError {
        let message = match &e {
            duckdb::Error::DuckDBFailure(_, Some(message)) => message.clone(),
            _ => e.to_string(),
        };
        if out_of_memory(&message) {
            return self.duckdb_error("run the query", message);
        }
        let first = self.tables.first();
        QueryError::Sql {
            message,
            table: first.map(|t| t.iceberg_table.clone()).unwrap_or_default(),
            alias: first.map(|t| t.alias.clone().unwrap_or_else(|| t.name.clone())).unwrap_or_default(),
        }
    }

    fn duckdb_error(&self, action: &'static str, message: String) -> QueryError {
        if !out_of_memory(&message) {
            return QueryError::DuckDb { action, message };
        }
        // DuckDB's own advice names its SET commands; say which option to change here.
        let message = message.split("\n\nPossible solutions").next().unwrap_or_default();
        QueryError::DuckDb {
            action,
            message: format!(
                "{message} (past --memory-limit {}: give it more, e.g. --memory-limit {})",
                self.request.memory_limit.display().iec(),
                ByteSize(self.request.memory_limit.as_u64().saturating_mul(4)).display().iec()
            ),
        }
    }
}

fn out_of_memory(message: &str) -> bool {
    message.contains("Out of Memory") || message.contains("could not allocate")
}

/// An in-memory DuckDB that spills to `spill_dir`, in UTC, that never loads or installs
/// extensions on its own (no network).
fn open_duckdb(memory_limit: ByteSize, spill_dir: &Path) -> Result<duckdb::Connection, QueryError> {
    let setup = QueryError::duckdb("start");
    let config = duckdb::Config::default()
        .max_memory(&format!("{}B", memory_limit.as_u64()))
        .map_err(&setup)?
        .enable_autoload_extension(false)
        .map_err(&setup)?
        .with("autoinstall_known_extensions", "false")
        .map_err(&setup)?
        .with("temp_directory", spill_dir.to_string_lossy())
        .map_err(&setup)?;
    let conn = duckdb::Connection::open_in_memory_with_flags(config).map_err(&setup)?;
    conn.execute_batch("SET TimeZone = 'UTC'").map_err(&setup)?;
    Ok(conn)
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `CREATE TABLE` with the columns of the table's Arrow schema.
fn create_table_sql(name: &str, schema: &ArrowSchema) -> Result<String, QueryError> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| Ok(format!("{} {}", quote_ident(f.name()), duckdb_type(f.data_type())?)))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|reason| QueryError::DuckDb { action: "create the table", message: reason })?;
    Ok(format!("CREATE TABLE {} ({})", quote_ident(name), columns.join(", ")))
}

/// The DuckDB type of an Arrow type made from an Iceberg type.
fn duckdb_type(data_type: &DataType) -> Result<String, String> {
    Ok(match data_type {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int32 => "INTEGER".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal128(precision, scale) => format!("DECIMAL({precision}, {scale})"),
        DataType::Date32 => "DATE".into(),
        DataType::Time64(_) => "TIME".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMPTZ".into(),
        DataType::Timestamp(TimeUnit::Nanosecond, None) => "TIMESTAMP_NS".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            "BLOB".into()
        }
        DataType::List(item) | DataType::LargeList(item) => format!("{}[]", duckdb_type(item.data_type())?),
        DataType::Struct(fields) => {
            let fields = fields
                .iter()
                .map(|f| Ok(format!("{} {}", quote_ident(f.name()), duckdb_type(f.data_type())?)))
                .collect::<Result<Vec<_>, String>>()?;
            format!("STRUCT({})", fields.join(", "))
        }
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => {
                format!("MAP({}, {})", duckdb_type(kv[0].data_type())?, duckdb_type(kv[1].data_type())?)
            }
            other => return Err(format!("map entries of type {other} are not a key and a value")),
        },
        other => return Err(format!("no duckdb type for arrow type {other}")),
    })
}

#[cfg(test)]
mod tests;
