//! DuckDB staging: the on-disk buffer between OTLP (or Kafka) and Iceberg.
//!
//! In: row batches from [`crate::rows`]. Out: sealed sets of rows, read back in
//! `service_name, timestamp` order by the committer, then released once committed.
//!
//! One dedicated thread owns the DuckDB connection and takes [`Command`]s; nothing async blocks
//! on DuckDB. Appends that arrive together share one transaction (group commit: DuckDB fsyncs
//! its WAL on every commit) and every caller is answered only after that commit, so an
//! acknowledged record survives `kill -9`. Sealing renames the staged table in one transaction,
//! so appends go on while a sealed set is committed; a sealed set stays on disk until released,
//! so a failed or interrupted commit is retried, never dropped.
//!
//! Tables: `staged_rows` / `sealed_rows` (the row DDL from `telemetry-lake-proto`),
//! `staged_batches` / `sealed_batches` (records and bytes per group commit, so counters survive
//! restarts) and `staging_meta` (this writer's id, the seal sequence, the sealed set's id).

use std::{
    path::Path,
    sync::mpsc::RecvTimeoutError,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use arrow_array::RecordBatch;
use bytesize::ByteSize;
use duckdb::{Connection, params};
use telemetry_lake_common::config::{FlushConfig, StagingConfig};
use telemetry_lake_proto::duckdb_create_table;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::rows::Rows;

const STAGED_ROWS: &str = "staged_rows";
const SEALED_ROWS: &str = "sealed_rows";
/// Most append requests folded into one DuckDB transaction.
const MAX_GROUP: usize = 512;
/// DuckDB's `checkpoint_threshold` that its automatic checkpoint never reaches.
const NO_AUTOMATIC_CHECKPOINT: &str = "1000TB";

#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("staging is full ({staged} staged, staging.max_bytes = {limit}): commits to the lake are behind")]
    Full { staged: ByteSize, limit: ByteSize },
    #[error("staging database {path}: {source}")]
    DuckDb { path: String, source: duckdb::Error },
    #[error("staging directory {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("staging append failed: {0}")]
    AppendFailed(String),
    #[error("staging thread has stopped")]
    Stopped,
    #[error(
        "staging database {path} failed and must be reopened: {reason}; restart the appender: \
         acknowledged records are in the staging file and are committed at the next start"
    )]
    Broken { path: String, reason: String },
}

/// Counters read without asking the staging thread. `records`/`bytes` are everything not yet
/// committed, sealed included; `unsealed_*` is what the next seal will take.
#[derive(Debug, Default)]
pub struct StagingCounters {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub unsealed_records: AtomicU64,
    pub unsealed_bytes: AtomicU64,
}

/// Which threshold a group commit crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    MaxRecords,
    MaxBytes,
}

/// A set of rows taken out of the staged table to be committed as one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub writer_id: String,
    pub seal_id: i64,
    pub records: u64,
    pub bytes: u64,
    /// It was sealed before this call: by an earlier run or an earlier failed commit, so it may
    /// already be in the lake.
    pub resumed: bool,
}

/// A connection to read a sealed set from. While one is open the staging thread does not
/// checkpoint: DuckDB 1.5.5 corrupted a row group when a checkpoint overlapped other work.
pub struct SealedReader {
    conn: Connection,
    open_readers: Arc<AtomicUsize>,
    /// About how many rows one sort of [`read_sealed`] may hold.
    sort_rows: u64,
}

impl SealedReader {
    fn new(conn: Connection, open_readers: &Arc<AtomicUsize>, sort_rows: u64) -> Self {
        open_readers.fetch_add(1, Ordering::SeqCst);
        Self { conn, open_readers: open_readers.clone(), sort_rows }
    }

    /// Another connection to the same sealed set, counted as open too.
    pub fn try_clone(&self) -> Result<Self, duckdb::Error> {
        Ok(Self::new(self.conn.try_clone()?, &self.open_readers, self.sort_rows))
    }
}

impl std::ops::Deref for SealedReader {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl Drop for SealedReader {
    fn drop(&mut self) {
        self.open_readers.fetch_sub(1, Ordering::SeqCst);
    }
}

enum Command {
    Append { rows: Rows, reply: oneshot::Sender<Result<(), StagingError>> },
    Seal { reply: oneshot::Sender<Result<Option<(Sealed, SealedReader)>, StagingError>> },
    Release { seal_id: i64, reply: oneshot::Sender<Result<(), StagingError>> },
    DiscardUnsealed { partitions: Vec<i32>, reply: oneshot::Sender<Result<u64, StagingError>> },
}

/// Handle to the staging thread; cheap to clone.
#[derive(Clone)]
pub struct Staging {
    commands: mpsc::Sender<Command>,
    counters: Arc<StagingCounters>,
    broken: BrokenFlag,
}

impl Staging {
    /// Opens (or creates) the database file and starts the staging thread. `thresholds`
    /// receives a note whenever unsealed rows reach `flush.max_records` or `flush.max_bytes`.
    pub fn open(
        config: &StagingConfig,
        flush: &FlushConfig,
        thresholds: mpsc::Sender<Threshold>,
    ) -> Result<Self, StagingError> {
        let path = config.path.clone();
        if let Some(parent) = Path::new(&path).parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| StagingError::Io { path: path.clone(), source })?;
        }
        let db = StagingDb::open(config, flush)?;
        let counters = db.counters.clone();
        let broken = db.broken.clone();
        let (commands, receiver) = mpsc::channel(4 * MAX_GROUP);
        thread::Builder::new()
            .name("staging".into())
            .spawn(move || db.run(receiver, thresholds))
            .map_err(|source| StagingError::Io { path, source })?;
        Ok(Self { commands, counters, broken })
    }

    pub fn counters(&self) -> &StagingCounters {
        &self.counters
    }

    /// Cancelled when the database failed in a way only reopening it repairs (see
    /// [`StagingError::Broken`]); every later command gets that error.
    pub fn broken(&self) -> &CancellationToken {
        &self.broken.token
    }

    /// The [`StagingError::Broken`] every command gets once the database failed for good.
    pub fn broken_error(&self) -> Option<StagingError> {
        self.broken.error()
    }

    /// Stages rows durably; returns once they are committed to the database file.
    pub async fn append(&self, rows: Rows) -> Result<(), StagingError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Append { rows, reply }).await.map_err(|_| StagingError::Stopped)?;
        answer.await.map_err(|_| StagingError::Stopped)?
    }

    /// The sealed set to commit next: a leftover one if there is one, else everything staged
    /// now; `None` when nothing is staged. Comes with a connection to read it from.
    pub async fn seal(&self) -> Result<Option<(Sealed, SealedReader)>, StagingError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Seal { reply }).await.map_err(|_| StagingError::Stopped)?;
        answer.await.map_err(|_| StagingError::Stopped)?
    }

    /// Drops the unsealed rows of these Kafka partitions (they will be read from Kafka again);
    /// returns how many were dropped.
    pub async fn discard_unsealed_partitions(&self, partitions: Vec<i32>) -> Result<u64, StagingError> {
        if partitions.is_empty() {
            return Ok(0);
        }
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::DiscardUnsealed { partitions, reply })
            .await
            .map_err(|_| StagingError::Stopped)?;
        answer.await.map_err(|_| StagingError::Stopped)?
    }

    /// Drops a sealed set once it is in the lake.
    pub async fn release(&self, seal_id: i64) -> Result<(), StagingError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Release { seal_id, reply }).await.map_err(|_| StagingError::Stopped)?;
        answer.await.map_err(|_| StagingError::Stopped)?
    }
}

/// What a sealed set holds past a condition: rows and, per Kafka partition, the next offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealedSummary {
    pub records: u64,
    pub next_offsets: std::collections::BTreeMap<i32, i64>,
}

/// Counts the sealed rows that pass `condition` (SQL over the row's columns).
pub fn summarize_sealed(conn: &Connection, condition: &str) -> Result<SealedSummary, String> {
    let sql = format!(
        "SELECT kafka_partition, max(kafka_offset) + 1, count(*) FROM {SEALED_ROWS} WHERE {condition} GROUP BY 1"
    );
    let mut stmt = conn.prepare(&sql).map_err(|e| format!("summarizing sealed rows: {e}"))?;
    let mut rows = stmt.query([]).map_err(|e| format!("summarizing sealed rows: {e}"))?;
    let mut summary = SealedSummary::default();
    while let Some(row) = rows.next().map_err(|e| format!("summarizing sealed rows: {e}"))? {
        let partition: Option<i32> = row.get(0).map_err(|e| e.to_string())?;
        let next: Option<i64> = row.get(1).map_err(|e| e.to_string())?;
        let count: i64 = row.get(2).map_err(|e| e.to_string())?;
        summary.records += count as u64;
        if let (Some(partition), Some(next)) = (partition, next) {
            summary.next_offsets.insert(partition, next);
        }
    }
    Ok(summary)
}

/// Reads the sealed rows that pass `condition` as sorted runs, each in the order data files
/// want (`service_name, timestamp`), one DuckDB chunk at a time; a batch with no rows ends each
/// run, so every run becomes data files of its own ([`crate::lake::Lake::append`]). Blocking,
/// so run it on its own thread. Panics inside DuckDB's iterator are turned into an error.
///
/// A run is a range of row ids of about [`SealedReader::sort_rows`] rows, so one sort holds at
/// most that many and each row is read once: one sort of a whole 128 MiB sealed set took all of
/// DuckDB's memory, and the appends running meanwhile failed to allocate.
pub fn read_sealed(
    reader: &SealedReader,
    condition: &str,
    mut each: impl FnMut(RecordBatch) -> bool,
) -> Result<u64, String> {
    let (first, last): (Option<i64>, Option<i64>) = reader
        .query_row(&format!("SELECT min(rowid), max(rowid) FROM {SEALED_ROWS} WHERE {condition}"), [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(|e| format!("reading sealed rows: {e}"))?;
    let (Some(first), Some(last)) = (first, last) else { return Ok(0) };
    let run_rows = i64::try_from(reader.sort_rows.max(1)).unwrap_or(i64::MAX);
    let run = std::panic::AssertUnwindSafe(|| -> Result<u64, String> {
        let mut rows = 0u64;
        let mut start = first;
        while start <= last {
            let end = start.saturating_add(run_rows);
            let sql = format!(
                "SELECT * FROM {SEALED_ROWS} WHERE ({condition}) AND rowid >= {start} AND rowid < {end}
                 ORDER BY service_name, \"timestamp\""
            );
            let mut stmt = reader.prepare(&sql).map_err(|e| format!("reading sealed rows: {e}"))?;
            let mut schema = None;
            for batch in stmt.stream_arrow([]).map_err(|e| format!("reading sealed rows: {e}"))? {
                rows += batch.num_rows() as u64;
                schema = Some(batch.schema());
                if !each(batch) {
                    return Ok(rows);
                }
            }
            if let Some(schema) = schema
                && !each(RecordBatch::new_empty(schema))
            {
                return Ok(rows);
            }
            start = end;
        }
        Ok(rows)
    });
    std::panic::catch_unwind(run).unwrap_or_else(|panic| {
        let message =
            panic.downcast_ref::<String>().cloned().unwrap_or_else(|| "duckdb iterator panicked".into());
        Err(format!("reading sealed rows: {message}"))
    })
}

/// Whether the database failed for good, shared by the staging and checkpointer threads.
///
/// DuckDB does not recover in place from a failed append or checkpoint: a partly applied append
/// left a column longer than its row group ("misaligned count"), and the next checkpoint
/// invalidated the database. The file and its WAL hold every committed group, so a restart
/// recovers; until then the service stops taking records.
#[derive(Clone)]
struct BrokenFlag {
    path: String,
    reason: Arc<OnceLock<String>>,
    token: CancellationToken,
}

impl BrokenFlag {
    fn mark(&self, reason: String) {
        if self.reason.set(reason.clone()).is_ok() {
            tracing::error!(path = %self.path, reason = %reason, "staging database failed, the appender stops");
            self.token.cancel();
        }
    }

    fn error(&self) -> Option<StagingError> {
        let reason = self.reason.get()?.clone();
        Some(StagingError::Broken { path: self.path.clone(), reason })
    }
}

struct StagingDb {
    conn: Connection,
    path: String,
    wal_path: String,
    /// Checkpoint once the WAL is this large.
    checkpoint_wal_bytes: u64,
    memory_limit: u64,
    open_readers: Arc<AtomicUsize>,
    /// Set after a release: the checkpointer then checkpoints whatever the WAL's size, so that
    /// the released rows' blocks are freed for reuse without stalling the appends.
    checkpoint_wanted: Arc<AtomicBool>,
    broken: BrokenFlag,
    writer_id: String,
    counters: Arc<StagingCounters>,
    max_bytes: u64,
    flush_records: u64,
    flush_bytes: u64,
    sealed: Option<Sealed>,
}

impl StagingDb {
    fn open(config: &StagingConfig, flush: &FlushConfig) -> Result<Self, StagingError> {
        let path = config.path.clone();
        let err = |source| StagingError::DuckDb { path: path.clone(), source };
        let duck_config = duckdb::Config::default()
            .max_memory(&format!("{}B", config.memory_limit.as_u64()))
            .map_err(err)?
            .enable_autoload_extension(false)
            .map_err(err)?;
        let conn = Connection::open_with_flags(&path, duck_config).map_err(err)?;
        // Checkpoints were half the CPU at DuckDB's defaults (16 MiB of WAL, compressed
        // segments). Staged rows are short-lived, so they are stored uncompressed and
        // checkpointed less often; but rows not yet checkpointed stay in memory, so the
        // threshold stays well under the memory limit, and each release has the checkpointer run one.
        // One DuckDB thread: appends and the flush's reads each run on their own thread
        // already, and DuckDB's workers competing with them for the cores cost more than their
        // parallel scans and sorts saved (14.3 instead of 17.8 CPU-s per million rows, 2 cores).
        // DuckDB's automatic checkpoint is off: it runs inside the committing append and
        // whenever the WAL is large, also while a flush's sort holds most of the memory (a
        // checkpoint that fails to allocate invalidates the database). The checkpointer thread
        // checkpoints instead, beside the appends and only while no sealed set is being read.
        let checkpoint_wal_bytes = (config.memory_limit.as_u64() / 4).max(16 << 20);
        conn.execute_batch(&format!(
            "SET preserve_insertion_order = false;
             SET threads = 1;
             SET force_compression = 'uncompressed';
             SET checkpoint_threshold = '{NO_AUTOMATIC_CHECKPOINT}';
             {};
             CREATE TABLE IF NOT EXISTS staged_batches (records BIGINT, bytes BIGINT);
             CREATE TABLE IF NOT EXISTS staging_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
             INSERT OR IGNORE INTO staging_meta VALUES ('writer_id', '{}'), ('next_seal_id', '1');",
            duckdb_create_table(STAGED_ROWS),
            uuid::Uuid::new_v4()
        ))
        .map_err(err)?;
        let meta = |key: &str| -> Result<Option<String>, duckdb::Error> {
            match conn.query_row("SELECT value FROM staging_meta WHERE key = ?", [key], |r| r.get(0)) {
                Ok(v) => Ok(Some(v)),
                Err(duckdb::Error::QueryReturnedNoRows) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let writer_id = meta("writer_id").map_err(err)?.expect("inserted above");
        let totals = |table: &str| -> Result<(u64, u64), duckdb::Error> {
            conn.query_row(
                &format!(
                    "SELECT coalesce(sum(records), 0)::BIGINT, coalesce(sum(bytes), 0)::BIGINT FROM {table}"
                ),
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
        };
        let (staged_records, staged_bytes) = totals("staged_batches").map_err(err)?;
        let sealed = match meta("sealed_id").map_err(err)? {
            Some(id) => {
                let (records, bytes) = totals("sealed_batches").map_err(err)?;
                let seal_id = id.parse().unwrap_or_default();
                Some(Sealed { writer_id: writer_id.clone(), seal_id, records, bytes, resumed: true })
            }
            None => None,
        };
        let counters = Arc::new(StagingCounters::default());
        let (sealed_records, sealed_bytes) =
            sealed.as_ref().map(|s| (s.records, s.bytes)).unwrap_or_default();
        counters.records.store(staged_records + sealed_records, Ordering::Relaxed);
        counters.bytes.store(staged_bytes + sealed_bytes, Ordering::Relaxed);
        counters.unsealed_records.store(staged_records, Ordering::Relaxed);
        counters.unsealed_bytes.store(staged_bytes, Ordering::Relaxed);
        tracing::info!(
            path = %path, staged_records, sealed_records, writer_id = %writer_id, "staging opened"
        );
        Ok(Self {
            conn,
            wal_path: format!("{path}.wal"),
            path: path.clone(),
            checkpoint_wal_bytes,
            memory_limit: config.memory_limit.as_u64(),
            open_readers: Arc::new(AtomicUsize::new(0)),
            checkpoint_wanted: Arc::new(AtomicBool::new(false)),
            broken: BrokenFlag {
                path: path.clone(),
                reason: Arc::new(OnceLock::new()),
                token: CancellationToken::new(),
            },
            writer_id,
            counters,
            max_bytes: config.max_bytes.as_u64(),
            flush_records: flush.max_records,
            flush_bytes: flush.max_bytes.as_u64(),
            sealed,
        })
    }

    fn err(&self, source: duckdb::Error) -> StagingError {
        StagingError::DuckDb { path: self.path.clone(), source }
    }

    fn run(mut self, mut commands: mpsc::Receiver<Command>, thresholds: mpsc::Sender<Threshold>) {
        let checkpointer = match self.start_checkpointer() {
            Ok(checkpointer) => Some(checkpointer),
            Err(e) => {
                tracing::warn!(error = %e, "no checkpointer thread; the staging thread checkpoints");
                None
            }
        };
        let mut group = Vec::with_capacity(MAX_GROUP);
        while let Some(first) = commands.blocking_recv() {
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Append { rows, reply } => {
                        group.push((rows, reply));
                        if group.len() < MAX_GROUP {
                            next = commands.try_recv().ok();
                        }
                    }
                    other => {
                        self.append_group(&mut group, &thresholds);
                        self.handle(other);
                    }
                }
            }
            self.append_group(&mut group, &thresholds);
        }
        if let Some(Checkpointer { stop, thread }) = checkpointer {
            drop(stop);
            let _ = thread.join();
        }
        tracing::debug!("staging thread stopped");
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Append { .. } => unreachable!("appends are grouped by run"),
            Command::Seal { reply } => {
                let result = self.unless_broken(|db| db.seal());
                let _ = reply.send(result);
            }
            Command::Release { seal_id, reply } => {
                let result = self.unless_broken(|db| db.release(seal_id));
                let _ = reply.send(result);
            }
            Command::DiscardUnsealed { partitions, reply } => {
                let result = self.unless_broken(|db| db.discard_unsealed(&partitions));
                let _ = reply.send(result);
            }
        }
    }

    /// Runs `action` unless the database is broken; an error saying DuckDB invalidated the
    /// database breaks it.
    fn unless_broken<T>(
        &mut self,
        action: impl FnOnce(&mut Self) -> Result<T, StagingError>,
    ) -> Result<T, StagingError> {
        if let Some(err) = self.broken.error() {
            return Err(err);
        }
        let result = action(self);
        if let Err(StagingError::DuckDb { source, .. }) = &result
            && is_invalidated(source)
        {
            self.broken.mark(source.to_string());
        }
        result
    }

    fn append_group(
        &mut self,
        group: &mut Vec<(Rows, oneshot::Sender<Result<(), StagingError>>)>,
        thresholds: &mpsc::Sender<Threshold>,
    ) {
        if group.is_empty() {
            return;
        }
        if self.broken.error().is_some() {
            for (_, reply) in group.drain(..) {
                let _ = reply.send(Err(self.broken.error().expect("checked above")));
            }
            return;
        }
        let mut staged = self.counters.bytes.load(Ordering::Relaxed);
        let mut accepted = Vec::with_capacity(group.len());
        for (rows, reply) in group.drain(..) {
            if staged + rows.bytes > self.max_bytes && rows.batch.num_rows() > 0 {
                let _ = reply.send(Err(StagingError::Full {
                    staged: ByteSize(staged),
                    limit: ByteSize(self.max_bytes),
                }));
            } else {
                staged += rows.bytes;
                accepted.push((rows, reply));
            }
        }
        let (records, bytes) = accepted
            .iter()
            .fold((0u64, 0u64), |(r, b), (rows, _)| (r + rows.batch.num_rows() as u64, b + rows.bytes));
        let result = if records == 0 { Ok(()) } else { self.append_durably(&accepted, records, bytes) };
        match result {
            Ok(()) => {
                self.counters.records.fetch_add(records, Ordering::Relaxed);
                self.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
                let unsealed_records =
                    self.counters.unsealed_records.fetch_add(records, Ordering::Relaxed) + records;
                let unsealed_bytes = self.counters.unsealed_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
                if unsealed_records >= self.flush_records {
                    let _ = thresholds.try_send(Threshold::MaxRecords);
                } else if unsealed_bytes >= self.flush_bytes {
                    let _ = thresholds.try_send(Threshold::MaxBytes);
                }
                for (_, reply) in accepted {
                    let _ = reply.send(Ok(()));
                }
                // The checkpointer's work, should it keep finding a write transaction open.
                self.checkpoint(2 * self.checkpoint_wal_bytes);
            }
            Err(e) => {
                tracing::error!(error = %e, records, "staging append failed");
                let message = e.to_string();
                self.broken.mark(format!("an append failed: {message}"));
                for (_, reply) in accepted {
                    let _ = reply.send(Err(StagingError::AppendFailed(message.clone())));
                }
            }
        }
    }

    fn append_durably(
        &mut self,
        accepted: &[(Rows, oneshot::Sender<Result<(), StagingError>>)],
        records: u64,
        bytes: u64,
    ) -> Result<(), StagingError> {
        let path = self.path.clone();
        let err = |source| StagingError::DuckDb { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut appender = tx.appender(STAGED_ROWS).map_err(err)?;
            for (rows, _) in accepted {
                if rows.batch.num_rows() > 0 {
                    appender.append_record_batch(rows.batch.clone()).map_err(err)?;
                }
            }
            appender.flush().map_err(err)?;
        }
        tx.execute("INSERT INTO staged_batches VALUES (?, ?)", params![records as i64, bytes as i64])
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// A reader of `sealed`, whose sorts may take a third of DuckDB's memory. A row takes
    /// about three times its OTLP size in the staging table (uncompressed, with its maps).
    fn reader(&self, sealed: &Sealed) -> Result<SealedReader, StagingError> {
        let conn = self.conn.try_clone().map_err(|e| self.err(e))?;
        let row_bytes = 3 * (sealed.bytes / sealed.records.max(1)).max(100);
        let sort_rows = (self.memory_limit / 3 / row_bytes).max(1_000);
        Ok(SealedReader::new(conn, &self.open_readers, sort_rows))
    }

    /// Checkpoints on the staging thread if no reader is open and the WAL holds at least
    /// `min_wal_bytes` (and something).
    fn checkpoint(&self, min_wal_bytes: u64) {
        if self.open_readers.load(Ordering::SeqCst) == 0 && wal_len(&self.wal_path) >= min_wal_bytes.max(1) {
            checkpoint(&self.conn, &self.broken);
        }
    }

    /// Starts the thread that checkpoints from a connection of its own, so that the staging
    /// thread goes on appending meanwhile (checkpoints were a third of its time; with them
    /// elsewhere the embedded appender went from ~95,000 to ~104,000 logs/s on 2 cores). It
    /// checks the WAL every [`CHECKPOINT_POLL`], and stops when `stop`'s sender is dropped.
    fn start_checkpointer(&self) -> Result<Checkpointer, StagingError> {
        let conn = self.conn.try_clone().map_err(|e| self.err(e))?;
        let (readers, wanted, broken, wal_path) = (
            self.open_readers.clone(),
            self.checkpoint_wanted.clone(),
            self.broken.clone(),
            self.wal_path.clone(),
        );
        let threshold = self.checkpoint_wal_bytes;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("checkpointer".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_POLL) {
                    let idle = readers.load(Ordering::SeqCst) == 0 && broken.error().is_none();
                    if idle && (wanted.swap(false, Ordering::SeqCst) || wal_len(&wal_path) >= threshold) {
                        if !checkpoint(&conn, &broken) {
                            wanted.store(true, Ordering::SeqCst);
                        }
                    }
                }
            })
            .map_err(|source| StagingError::Io { path: self.path.clone(), source })?;
        Ok(Checkpointer { stop, thread })
    }

    fn seal(&mut self) -> Result<Option<(Sealed, SealedReader)>, StagingError> {
        // A failed read of the last sealed set may have invalidated the database; ask first.
        self.conn.execute_batch("SELECT 1").map_err(|e| self.err(e))?;
        if let Some(sealed) = &self.sealed {
            let reader = self.reader(sealed)?;
            return Ok(Some((Sealed { resumed: true, ..sealed.clone() }, reader)));
        }
        let records = self.counters.unsealed_records.load(Ordering::Relaxed);
        if records == 0 {
            return Ok(None);
        }
        let bytes = self.counters.unsealed_bytes.load(Ordering::Relaxed);
        let seal_id: i64 = self
            .conn
            .query_row("SELECT value::BIGINT FROM staging_meta WHERE key = 'next_seal_id'", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        self.conn
            .execute_batch(&format!(
                "BEGIN TRANSACTION;
                 ALTER TABLE {STAGED_ROWS} RENAME TO {SEALED_ROWS};
                 ALTER TABLE staged_batches RENAME TO sealed_batches;
                 {};
                 CREATE TABLE staged_batches (records BIGINT, bytes BIGINT);
                 INSERT OR REPLACE INTO staging_meta VALUES ('next_seal_id', '{}'), ('sealed_id', '{seal_id}');
                 COMMIT;",
                duckdb_create_table(STAGED_ROWS),
                seal_id + 1
            ))
            .map_err(|e| {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.err(e)
            })?;
        self.counters.unsealed_records.fetch_sub(records, Ordering::Relaxed);
        self.counters.unsealed_bytes.fetch_sub(bytes, Ordering::Relaxed);
        let sealed = Sealed { writer_id: self.writer_id.clone(), seal_id, records, bytes, resumed: false };
        let reader = self.reader(&sealed)?;
        self.sealed = Some(sealed.clone());
        Ok(Some((sealed, reader)))
    }

    fn discard_unsealed(&mut self, partitions: &[i32]) -> Result<u64, StagingError> {
        let list: Vec<String> = partitions.iter().map(i32::to_string).collect();
        let records_before = self.counters.unsealed_records.load(Ordering::Relaxed);
        let bytes_before = self.counters.unsealed_bytes.load(Ordering::Relaxed);
        let tx = self
            .conn
            .transaction()
            .map_err(|e| StagingError::DuckDb { path: self.path.clone(), source: e })?;
        let path = self.path.clone();
        let err = |source| StagingError::DuckDb { path: path.clone(), source };
        let dropped = tx
            .execute(&format!("DELETE FROM {STAGED_ROWS} WHERE kafka_partition IN ({})", list.join(", ")), [])
            .map_err(err)? as u64;
        // Bytes are not kept per row: the remaining rows keep their share.
        let records_after = records_before.saturating_sub(dropped);
        let bytes_after = if records_before == 0 {
            0
        } else {
            (bytes_before as u128 * records_after as u128 / records_before as u128) as u64
        };
        tx.execute_batch(&format!(
            "DELETE FROM staged_batches; INSERT INTO staged_batches VALUES ({records_after}, {bytes_after});"
        ))
        .map_err(err)?;
        tx.commit().map_err(err)?;
        self.counters.unsealed_records.store(records_after, Ordering::Relaxed);
        self.counters.unsealed_bytes.store(bytes_after, Ordering::Relaxed);
        self.counters.records.fetch_sub(records_before - records_after, Ordering::Relaxed);
        self.counters.bytes.fetch_sub(bytes_before - bytes_after, Ordering::Relaxed);
        if dropped > 0 {
            tracing::info!(dropped, ?partitions, "dropped unsealed rows of reassigned partitions");
        }
        Ok(dropped)
    }

    fn release(&mut self, seal_id: i64) -> Result<(), StagingError> {
        let Some(sealed) = self.sealed.as_ref().filter(|s| s.seal_id == seal_id) else {
            return Ok(());
        };
        let (records, bytes) = (sealed.records, sealed.bytes);
        self.conn
            .execute_batch(&format!(
                "BEGIN TRANSACTION;
                 DROP TABLE {SEALED_ROWS};
                 DROP TABLE sealed_batches;
                 DELETE FROM staging_meta WHERE key = 'sealed_id';
                 COMMIT;"
            ))
            .map_err(|e| {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.err(e)
            })?;
        self.sealed = None;
        self.checkpoint_wanted.store(true, Ordering::SeqCst);
        self.counters.records.fetch_sub(records, Ordering::Relaxed);
        self.counters.bytes.fetch_sub(bytes, Ordering::Relaxed);
        Ok(())
    }
}

/// How often the checkpointer looks at the WAL's size.
const CHECKPOINT_POLL: Duration = Duration::from_millis(100);

/// The checkpointer thread and what stops it.
struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

fn wal_len(wal_path: &str) -> u64 {
    std::fs::metadata(wal_path).map(|m| m.len()).unwrap_or(0)
}

/// Runs `CHECKPOINT` and tells whether it did. DuckDB refuses one while another connection is
/// inside a write transaction; that is retried later. A fatal error breaks the database.
fn checkpoint(conn: &Connection, broken: &BrokenFlag) -> bool {
    let started = std::time::Instant::now();
    match conn.execute_batch("CHECKPOINT") {
        Ok(()) => {
            tracing::debug!(seconds = started.elapsed().as_secs_f64(), "staging checkpointed");
            return true;
        }
        Err(e) if is_invalidated(&e) => broken.mark(format!("a checkpoint failed: {e}")),
        Err(e) if e.to_string().contains("other write transactions active") => {
            tracing::trace!(error = %e, "staging checkpoint deferred");
        }
        Err(e) => {
            tracing::warn!(error = %e, "staging checkpoint failed; the wal keeps growing until one succeeds")
        }
    }
    false
}

/// Whether DuckDB refuses all further work on this database until it is reopened: a fatal
/// error invalidates it.
fn is_invalidated(err: &duckdb::Error) -> bool {
    let message = err.to_string();
    message.contains("FATAL Error") || message.contains("database has been invalidated")
}

#[cfg(test)]
mod tests {
    use arrow_array::{Array, StringArray, TimestampMicrosecondArray, cast::AsArray};
    use opentelemetry_proto::tonic::{
        collector::logs::v1::ExportLogsServiceRequest,
        common::v1::{AnyValue, KeyValue, any_value::Value},
        logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
        resource::v1::Resource,
    };

    use super::*;

    /// `records` records of each service, timestamps in reverse order of arrival.
    fn request(services: &[&str], records: u64) -> ExportLogsServiceRequest {
        let string = |s: &str| Some(AnyValue { value: Some(Value::StringValue(s.into())) });
        let resource_logs = services
            .iter()
            .map(|service| ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: string(service),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: (0..records)
                        .map(|n| LogRecord {
                            time_unix_nano: 1_700_000_000_000_000_000 + (records - n) * 1_000,
                            body: string(&format!("{service} line {n}")),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        ExportLogsServiceRequest { resource_logs }
    }

    fn open(dir: &Path, memory_limit: ByteSize) -> Staging {
        let config = StagingConfig {
            path: dir.join("staging.duckdb").display().to_string(),
            memory_limit,
            ..Default::default()
        };
        let (thresholds, _) = mpsc::channel(1);
        Staging::open(&config, &FlushConfig::default(), thresholds).expect("open staging")
    }

    #[tokio::test]
    async fn a_large_sealed_set_is_read_as_sorted_runs_holding_every_row_once() {
        let dir = tempfile::tempdir().unwrap();
        let staging = open(dir.path(), ByteSize::mib(16));
        for _ in 0..3 {
            let mut rows = crate::rows::to_rows(&request(&["web", "db", "api"], 700), None, 0);
            // Charged as large rows, so a sort may hold only the minimum 1,000 of them.
            rows.bytes = rows.batch.num_rows() as u64 * 10_000;
            staging.append(rows).await.expect("append");
        }
        let (sealed, reader) = staging.seal().await.expect("seal").expect("rows staged");
        assert_eq!(sealed.records, 6_300);
        assert_eq!(reader.sort_rows, 1_000);

        let mut runs: Vec<Vec<(String, i64, String)>> = vec![Vec::new()];
        let read = read_sealed(&reader, "TRUE", |batch| {
            if batch.num_rows() == 0 {
                runs.push(Vec::new());
                return true;
            }
            let column = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
            let (services, times, bodies) = (column("service_name"), column("timestamp"), column("body"));
            let services = services.as_any().downcast_ref::<StringArray>().unwrap();
            let times = times.as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
            let bodies = bodies.as_string::<i32>();
            let run = runs.last_mut().unwrap();
            for i in 0..batch.num_rows() {
                run.push((services.value(i).to_string(), times.value(i), bodies.value(i).to_string()));
            }
            true
        })
        .expect("read");
        assert_eq!(read, 6_300);
        assert_eq!(runs.pop(), Some(Vec::new()), "every run ends with an empty batch");
        assert_eq!(runs.len(), 7, "6,300 rows in runs of 1,000 rows");
        for run in &runs {
            assert!(run.len() <= 1_000, "a run of {} rows", run.len());
            let keys: Vec<_> = run.iter().map(|(s, t, _)| (s.clone(), *t)).collect();
            assert!(keys.is_sorted(), "a run is not in service_name, timestamp order");
        }
        let mut bodies: Vec<String> = runs.into_iter().flatten().map(|(_, _, body)| body).collect();
        bodies.sort();
        let before = bodies.len();
        bodies.dedup();
        assert_eq!((before, bodies.len()), (6_300, 2_100), "each of 2,100 distinct records three times");
    }

    #[tokio::test]
    async fn a_failed_append_stops_staging_until_it_is_reopened_and_keeps_what_was_staged() {
        let dir = tempfile::tempdir().unwrap();
        let staging = open(dir.path(), ByteSize::mib(64));
        staging.append(crate::rows::to_rows(&request(&["web"], 10), None, 0)).await.expect("append");
        let (_, reader) = staging.seal().await.unwrap().unwrap();
        staging.append(crate::rows::to_rows(&request(&["web"], 5), None, 0)).await.expect("append");
        // Any failure inside an append counts: here the table it appends to is gone.
        reader.execute_batch(&format!("ALTER TABLE {STAGED_ROWS} RENAME TO elsewhere")).unwrap();
        drop(reader);

        let failed = staging.append(crate::rows::to_rows(&request(&["web"], 3), None, 0)).await;
        assert!(matches!(failed, Err(StagingError::AppendFailed(_))), "{failed:?}");
        assert!(staging.broken().is_cancelled(), "the service is told to stop");
        let refused = staging.append(crate::rows::to_rows(&request(&["web"], 3), None, 0)).await;
        assert!(matches!(refused, Err(StagingError::Broken { .. })), "{refused:?}");
        let message = staging.broken_error().expect("broken").to_string();
        assert!(message.contains("restart the appender"), "{message}");
        assert!(matches!(staging.seal().await, Err(StagingError::Broken { .. })));
        assert!(matches!(staging.release(1).await, Err(StagingError::Broken { .. })));

        drop(staging);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let reopened = open(dir.path(), ByteSize::mib(64));
        assert!(!reopened.broken().is_cancelled());
        let (sealed, _) = reopened.seal().await.unwrap().unwrap();
        assert_eq!((sealed.records, sealed.resumed), (10, true), "the sealed set survived");
    }

    #[tokio::test]
    async fn the_checkpointer_folds_the_wal_into_the_file_while_appends_go_on() {
        let dir = tempfile::tempdir().unwrap();
        // memory_limit 64 MiB: checkpoint at 16 MiB of WAL; the staging thread itself only at 32.
        let staging = open(dir.path(), ByteSize::mib(64));
        let wal = dir.path().join("staging.duckdb.wal").display().to_string();
        let mut request = request(&["web"], 1_000);
        for record in &mut request.resource_logs[0].scope_logs[0].log_records {
            record.body = Some(AnyValue { value: Some(Value::StringValue("x".repeat(1_000))) });
        }
        let mut appended = 0;
        while wal_len(&wal) < 17 << 20 {
            staging.append(crate::rows::to_rows(&request, None, 0)).await.expect("append");
            appended += 1;
            assert!(appended < 100, "the WAL did not grow: {} bytes", wal_len(&wal));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while wal_len(&wal) >= 16 << 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint: the WAL holds {} bytes",
                wal_len(&wal)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!staging.broken().is_cancelled());
        assert_eq!(staging.counters().records.load(Ordering::Relaxed), appended * 1_000);
    }

    #[tokio::test]
    async fn a_release_is_checkpointed_by_the_checkpointer_however_small_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let staging = open(dir.path(), ByteSize::mib(64));
        let wal = dir.path().join("staging.duckdb.wal").display().to_string();
        staging.append(crate::rows::to_rows(&request(&["web"], 100), None, 0)).await.expect("append");
        let (sealed, reader) = staging.seal().await.expect("seal").expect("rows staged");
        drop(reader);
        staging.release(sealed.seal_id).await.expect("release");
        // Far below the 16 MiB threshold: only the release's request checkpoints it.
        assert!(wal_len(&wal) > 0, "the release is in the WAL");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while wal_len(&wal) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the release was not checkpointed: {} bytes",
                wal_len(&wal)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(staging.counters().records.load(Ordering::Relaxed), 0);
    }
}
