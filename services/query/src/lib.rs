//! `appender query SQL`: runs one SQL statement over the Iceberg table with DuckDB and prints
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
//!      table `<iceberg.table>` (and a view `logs` when that name differs), columns and types
//!      from the table's schema (timestamptz -> TIMESTAMPTZ, map<string,string> -> MAP)
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
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, Field, Schema as ArrowSchema, SchemaRef as ArrowSchemaRef, TimeUnit};
use bytesize::ByteSize;
use futures::StreamExt;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::SchemaRef;
use iceberg::table::Table;
use telemetry_lake_common::secrets::Redactor;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

/// The name every query can use for the table, whatever `iceberg.table` is.
pub const TABLE_ALIAS: &str = "logs";
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
         `appender query \"DESCRIBE {alias}\"` lists its columns"
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

/// The subcommand: runs the statement over `table` (or reports why it could not be opened),
/// prints the result on stdout and errors on stderr, and returns the exit code. `table_name`
/// is `iceberg.table`, the name the statement uses besides `logs`.
pub async fn main(
    args: QueryArgs,
    table: Result<Table, String>,
    table_name: &str,
    redactor: &Redactor,
) -> ExitCode {
    const NAME: &str = "appender query";
    let table = match table {
        Ok(table) => table,
        Err(message) => {
            eprintln!("{NAME}: {message}");
            return ExitCode::from(1);
        }
    };
    let sql = if args.sql == "-" {
        let mut sql = String::new();
        if let Err(e) = io::stdin().read_to_string(&mut sql) {
            eprintln!("{NAME}: cannot read the statement from stdin: {e}");
            return ExitCode::from(2);
        }
        sql
    } else {
        args.sql
    };
    let request = QueryRequest {
        sql,
        format: args.format,
        snapshot: args.snapshot,
        memory_limit: args.memory_limit,
        temp_dir: std::env::temp_dir(),
    };
    match run(table, table_name, redactor, request, io::BufWriter::new(io::stdout())).await {
        Ok(_) => ExitCode::SUCCESS,
        // `appender query … | head`: the reader has all it wanted.
        Err(QueryError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{NAME}: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// Runs `request` over `table` (called `table_name` and `logs` in the statement) and writes the
/// result to `out`; returns the number
/// of result rows and `out`.
pub async fn run<W: Write + Send + 'static>(
    table: Table,
    table_name: &str,
    redactor: &Redactor,
    request: QueryRequest,
    out: W,
) -> Result<(u64, W), QueryError> {
    let ident = table.identifier().to_string();
    let snapshot = request.snapshot;
    let schema: SchemaRef = match snapshot {
        Some(id) => {
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
            snapshot.schema(metadata).map_err(|e| QueryError::Scan {
                table: ident.clone(),
                message: redactor.redact(&e.to_string()),
            })?
        }
        None => table.metadata().current_schema().clone(),
    };
    let arrow_schema = schema_to_arrow_schema(&schema).map_err(|e| QueryError::Scan {
        table: ident.clone(),
        message: format!("the table schema has no arrow equivalent: {}", e.message()),
    })?;

    let (batches_tx, batches_rx) = mpsc::channel::<Loaded>(2);
    let (ready_tx, ready_rx) = oneshot::channel();
    let duck = DuckSide {
        table_name: table_name.to_string(),
        iceberg_table: ident.clone(),
        schema: arrow_schema,
        request,
    };
    let worker = tokio::task::spawn_blocking(move || duck.run(batches_rx, ready_tx, out));

    // Nothing is read until DuckDB has accepted the statement; when it refuses it, the worker
    // has returned and says why.
    let scanned = match ready_rx.await {
        Ok(()) => Some(scan(&table, snapshot, redactor, &batches_tx).await),
        Err(_) => None,
    };
    if let Some(Ok(rows)) = &scanned {
        debug!(table = %ident, rows, "table scanned into duckdb");
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

/// The worker's error action when the scan stopped before the end.
const ABORTED: &str = "load the table (the scan stopped)";

enum Loaded {
    Batch(RecordBatch),
    /// Every batch was sent: the table is complete.
    End,
}

/// Streams the rows of `snapshot` (the current one for `None`) into `tx`; returns how many.
/// Stops early, without an error, when the receiver is gone (DuckDB failed; it reports why).
async fn scan(
    table: &Table,
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
        if tx.send(Loaded::Batch(batch)).await.is_err() {
            break;
        }
    }
    Ok(rows)
}

/// The DuckDB side: owns the connection on a blocking thread.
struct DuckSide {
    /// `iceberg.table`: the DuckDB table's name.
    table_name: String,
    /// `namespace.table`, for messages.
    iceberg_table: String,
    schema: arrow_schema::Schema,
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
        conn.execute_batch(&create_table_sql(&self.table_name, &self.schema)?)
            .map_err(QueryError::duckdb("create the table"))?;
        if self.table_name != TABLE_ALIAS {
            conn.execute_batch(&format!(
                "CREATE VIEW {} AS SELECT * FROM {}",
                quote_ident(TABLE_ALIAS),
                quote_ident(&self.table_name)
            ))
            .map_err(QueryError::duckdb("create the view logs"))?;
        }
        // Parse and bind over the empty table: a wrong statement fails before any file is read.
        drop(conn.prepare(&self.request.sql).map_err(|e| self.sql_error(e))?);
        if ready.send(()).is_err() {
            return Err(QueryError::DuckDb { action: ABORTED, message: "the scan was cancelled".into() });
        }

        let mut appender = conn.appender(&self.table_name).map_err(QueryError::duckdb("open an appender"))?;
        let load_error = |e: duckdb::Error| self.duckdb_error("load the table's rows", e.to_string());
        let mut unflushed = 0;
        loop {
            match batches.blocking_recv() {
                Some(Loaded::Batch(batch)) => {
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
        appender.flush().map_err(&load_error)?;
        drop(appender);

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
        QueryError::Sql { message, table: self.iceberg_table.clone(), alias: TABLE_ALIAS.to_string() }
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

/// `data_type` with every zoned timestamp labelled `+00:00`. DuckDB labels them with its
/// session zone (UTC), which arrow cannot format without its time zone database; the values
/// are UTC instants either way, so only the label changes.
fn utc_type(data_type: &DataType) -> DataType {
    let field = |f: &Arc<Field>| Arc::new(f.as_ref().clone().with_data_type(utc_type(f.data_type())));
    match data_type {
        DataType::Timestamp(unit, Some(_)) => DataType::Timestamp(*unit, Some("+00:00".into())),
        DataType::List(item) => DataType::List(field(item)),
        DataType::LargeList(item) => DataType::LargeList(field(item)),
        DataType::FixedSizeList(item, n) => DataType::FixedSizeList(field(item), *n),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(field).collect()),
        DataType::Map(entries, sorted) => DataType::Map(field(entries), *sorted),
        other => other.clone(),
    }
}

fn utc_schema(schema: &ArrowSchemaRef) -> ArrowSchemaRef {
    Arc::new(ArrowSchema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_data_type(utc_type(f.data_type())))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

fn to_utc(batch: RecordBatch, schema: &ArrowSchemaRef) -> Result<RecordBatch, QueryError> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                arrow_cast::cast(column, field.data_type())
            }
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn format_options() -> FormatOptions<'static> {
    FormatOptions::new().with_null("NULL").with_timestamp_tz_format(Some(TIMESTAMP_TZ_FORMAT))
}

/// Writes result batches in one [`Format`].
enum Sink<'w, W: Write> {
    /// Rows are held until the end to align the columns.
    Table {
        out: &'w mut W,
        schema: ArrowSchemaRef,
        batches: Vec<RecordBatch>,
    },
    Csv {
        out: &'w mut W,
        rows: u64,
    },
    JsonArray {
        writer: arrow_json::ArrayWriter<&'w mut W>,
        rows: u64,
    },
    JsonLines {
        writer: arrow_json::LineDelimitedWriter<&'w mut W>,
        rows: u64,
    },
}

impl<'w, W: Write> Sink<'w, W> {
    fn new(format: Format, schema: ArrowSchemaRef, out: &'w mut W) -> Result<Self, QueryError> {
        let json = || {
            arrow_json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .with_timestamp_tz_format(TIMESTAMP_TZ_FORMAT.to_string())
        };
        Ok(match format {
            Format::Table => Sink::Table { out, schema, batches: Vec::new() },
            Format::Csv => {
                let header: Vec<Option<String>> =
                    schema.fields().iter().map(|f| Some(f.name().clone())).collect();
                write_csv_record(out, &header).map_err(QueryError::Output)?;
                Sink::Csv { out, rows: 0 }
            }
            Format::Json => Sink::JsonArray { writer: json().build(out), rows: 0 },
            Format::Jsonl => Sink::JsonLines { writer: json().build(out), rows: 0 },
        })
    }

    fn write(&mut self, batch: RecordBatch) -> Result<(), QueryError> {
        match self {
            Sink::Table { batches, .. } => batches.push(batch),
            Sink::Csv { out, rows } => {
                write_csv_batch(out, &batch)?;
                *rows += batch.num_rows() as u64;
            }
            Sink::JsonArray { writer, rows } => {
                writer.write(&batch)?;
                *rows += batch.num_rows() as u64;
            }
            Sink::JsonLines { writer, rows } => {
                writer.write(&batch)?;
                *rows += batch.num_rows() as u64;
            }
        }
        Ok(())
    }

    /// Ends the output; returns the number of rows written.
    fn finish(self) -> Result<u64, QueryError> {
        match self {
            Sink::Table { out, schema, batches } => {
                let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                write_table(out, schema, &batches)?;
                let noun = if rows == 1 { "row" } else { "rows" };
                writeln!(out, "({rows} {noun})").map_err(QueryError::Output)?;
                Ok(rows as u64)
            }
            Sink::Csv { rows, .. } => Ok(rows),
            Sink::JsonArray { mut writer, rows } => {
                writer.finish()?;
                writeln!(writer.get_mut()).map_err(QueryError::Output)?;
                Ok(rows)
            }
            Sink::JsonLines { mut writer, rows } => {
                writer.finish()?;
                Ok(rows)
            }
        }
    }
}

fn write_table<W: Write>(
    out: &mut W,
    schema: ArrowSchemaRef,
    batches: &[RecordBatch],
) -> Result<(), QueryError> {
    let table = if batches.is_empty() {
        // Only this variant prints the header of an empty result.
        arrow_cast::pretty::pretty_format_batches_with_schema(schema, batches)?.to_string()
    } else {
        arrow_cast::pretty::pretty_format_batches_with_options(batches, &format_options())?.to_string()
    };
    writeln!(out, "{table}").map_err(QueryError::Output)
}

fn write_csv_batch<W: Write>(out: &mut W, batch: &RecordBatch) -> Result<(), QueryError> {
    let options = format_options();
    let columns = batch
        .columns()
        .iter()
        .map(|c| Ok((ArrayFormatter::try_new(c.as_ref(), &options)?, c.logical_nulls())))
        .collect::<Result<Vec<_>, arrow_schema::ArrowError>>()?;
    let mut record = Vec::with_capacity(columns.len());
    for row in 0..batch.num_rows() {
        record.clear();
        for (formatter, nulls) in &columns {
            if nulls.as_ref().is_some_and(|n| n.is_null(row)) {
                record.push(None);
            } else {
                record.push(Some(formatter.value(row).try_to_string()?));
            }
        }
        write_csv_record(out, &record).map_err(QueryError::Output)?;
    }
    Ok(())
}

/// One CSV line (RFC 4180): `None` (NULL) as an empty field, an empty string as `""`, fields
/// with a comma, quote, line break or edge spaces quoted.
fn write_csv_record<W: Write>(out: &mut W, fields: &[Option<String>]) -> io::Result<()> {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        let Some(value) = field else { continue };
        let quote = value.is_empty()
            || value.contains([',', '"', '\n', '\r'])
            || value.starts_with(' ')
            || value.ends_with(' ');
        if quote {
            write!(out, "\"{}\"", value.replace('"', "\"\""))?;
        } else {
            out.write_all(value.as_bytes())?;
        }
    }
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use arrow_array::builder::{MapBuilder, StringBuilder};
    use arrow_array::{Int64Array, StringArray, TimestampMicrosecondArray};

    use super::*;

    /// 2026-11-27T10:00:00Z and 2026-11-28T00:00:00.000001Z in microseconds.
    const T1: i64 = 1_795_773_600_000_000;
    const T2: i64 = 1_795_824_000_000_001;

    /// A result batch as DuckDB hands it out: zoned timestamps labelled with the session zone.
    fn duckdb_result() -> RecordBatch {
        let mut map = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        map.keys().append_value("k");
        map.values().append_value("v, \"w\"");
        map.append(true).unwrap();
        map.append(false).unwrap();
        RecordBatch::try_from_iter([
            ("ts", Arc::new(TimestampMicrosecondArray::from(vec![T1, T2]).with_timezone("UTC")) as ArrayRef),
            ("body", Arc::new(StringArray::from(vec![Some("a,b"), None])) as ArrayRef),
            ("empty", Arc::new(StringArray::from(vec![Some(""), Some("x")])) as ArrayRef),
            ("n", Arc::new(Int64Array::from(vec![None, Some(7)])) as ArrayRef),
            ("attrs", Arc::new(map.finish()) as ArrayRef),
        ])
        .unwrap()
    }

    fn render(format: Format, batches: &[RecordBatch]) -> String {
        let schema = utc_schema(&batches[0].schema());
        let mut out = Vec::new();
        let mut sink = Sink::new(format, schema.clone(), &mut out).unwrap();
        for batch in batches {
            sink.write(to_utc(batch.clone(), &schema).unwrap()).unwrap();
        }
        sink.finish().unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn query_formats_show_nulls_maps_and_utc_timestamps() {
        let batch = duckdb_result();
        assert_eq!(
            render(Format::Table, std::slice::from_ref(&batch)),
            "+-----------------------------+------+-------+------+-------------+\n\
             | ts                          | body | empty | n    | attrs       |\n\
             +-----------------------------+------+-------+------+-------------+\n\
             | 2026-11-27T10:00:00Z        | a,b  |       | NULL | {k: v, \"w\"} |\n\
             | 2026-11-28T00:00:00.000001Z | NULL | x     | 7    | NULL        |\n\
             +-----------------------------+------+-------+------+-------------+\n\
             (2 rows)\n"
        );
        assert_eq!(
            render(Format::Csv, std::slice::from_ref(&batch)),
            "ts,body,empty,n,attrs\n\
             2026-11-27T10:00:00Z,\"a,b\",\"\",,\"{k: v, \"\"w\"\"}\"\n\
             2026-11-28T00:00:00.000001Z,,x,7,\n"
        );
        assert_eq!(
            render(Format::Jsonl, std::slice::from_ref(&batch)),
            "{\"ts\":\"2026-11-27T10:00:00Z\",\"body\":\"a,b\",\"empty\":\"\",\"n\":null,\"attrs\":{\"k\":\"v, \\\"w\\\"\"}}\n\
             {\"ts\":\"2026-11-28T00:00:00.000001Z\",\"body\":null,\"empty\":\"x\",\"n\":7,\"attrs\":null}\n"
        );
        let array: serde_json::Value =
            serde_json::from_str(&render(Format::Json, &[batch.clone(), batch])).unwrap();
        assert_eq!(array.as_array().unwrap().len(), 4);
        assert_eq!(array[3]["ts"], "2026-11-28T00:00:00.000001Z");
    }

    #[test]
    fn query_empty_results_keep_their_header() {
        let empty = duckdb_result().slice(0, 0);
        let schema = utc_schema(&empty.schema());
        let finish = |format| {
            let mut out = Vec::new();
            Sink::new(format, schema.clone(), &mut out).unwrap().finish().unwrap();
            String::from_utf8(out).unwrap()
        };
        assert!(finish(Format::Table).starts_with("+----+------+-------+---+-------+\n| ts | body |"));
        assert!(finish(Format::Table).ends_with("(0 rows)\n"));
        assert_eq!(finish(Format::Csv), "ts,body,empty,n,attrs\n");
        assert_eq!(finish(Format::Json), "[]\n");
        assert_eq!(finish(Format::Jsonl), "");
    }

    #[test]
    fn query_csv_quotes_only_what_needs_it() {
        let mut out = Vec::new();
        let fields = ["plain", "", "a,b", "say \"hi\"", "two\nlines", " lead", "trail "];
        let mut record: Vec<Option<String>> = fields.iter().map(|f| Some(f.to_string())).collect();
        record.push(None);
        write_csv_record(&mut out, &record).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "plain,\"\",\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\" lead\",\"trail \",\n"
        );
    }

    #[test]
    fn query_table_of_the_lake_schema_has_duckdb_types() {
        let schema = schema_to_arrow_schema(&telemetry_lake_proto::iceberg_schema()).unwrap();
        let conn = duckdb::Connection::open_in_memory().unwrap();
        conn.execute_batch(&create_table_sql("my \"logs\"", &schema).unwrap()).unwrap();
        let types: HashMap<String, String> = conn
            .prepare("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'my \"logs\"'")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(types.len(), schema.fields().len());
        assert_eq!(types["timestamp"], "TIMESTAMP WITH TIME ZONE");
        assert_eq!(types["log_attributes"], "MAP(VARCHAR, VARCHAR)");
        assert_eq!(types["kafka_offset"], "BIGINT");
        assert_eq!(types["severity_number"], "INTEGER");
    }
}
