//! The DuckDB layer of staging: the database file, its tables, group commits, seals, releases
//! and the checkpointer thread. Only the staging thread (see the parent module) and the
//! checkpointer touch the connection.

use std::{
    sync::mpsc::RecvTimeoutError,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use bytesize::ByteSize;
use duckdb::{Connection, params};
use telemetry_lake_common::{config::FlushConfig, settings::StagingSettings};
use telemetry_lake_proto::duckdb_create_table;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Command, Sealed, SealedReader, StagingCounters, StagingError, Threshold, sealed::SEALED_ROWS};
use crate::rows::Rows;

pub(super) const STAGED_ROWS: &str = "staged_rows";
/// Most append requests folded into one DuckDB transaction.
pub(super) const MAX_GROUP: usize = 512;
/// DuckDB's `checkpoint_threshold` that its automatic checkpoint never reaches.
const NO_AUTOMATIC_CHECKPOINT: &str = "1000TB";

/// Whether the database failed for good, shared by the staging and checkpointer threads.
///
/// DuckDB does not recover in place from a failed append or checkpoint: a partly applied append
/// left a column longer than its row group ("misaligned count"), and the next checkpoint
/// invalidated the database. The file and its WAL hold every committed group, so a restart
/// recovers; until then the service stops taking records.
#[derive(Clone)]
pub(super) struct BrokenFlag {
    path: String,
    reason: Arc<OnceLock<String>>,
    pub(super) token: CancellationToken,
}

impl BrokenFlag {
    fn mark(&self, reason: String) {
        if self.reason.set(reason.clone()).is_ok() {
            tracing::error!(path = %self.path, reason = %reason, "staging database failed, the appender stops");
            self.token.cancel();
        }
    }

    pub(super) fn error(&self) -> Option<StagingError> {
        let reason = self.reason.get()?.clone();
        Some(StagingError::Broken { path: self.path.clone(), reason })
    }
}

pub(super) struct StagingDb {
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
    pub(super) broken: BrokenFlag,
    writer_id: String,
    pub(super) counters: Arc<StagingCounters>,
    max_bytes: u64,
    flush_records: u64,
    flush_bytes: u64,
    sealed: Option<Sealed>,
}

impl StagingDb {
    pub(super) fn open(config: &StagingSettings, flush: &FlushConfig) -> Result<Self, StagingError> {
        let path = config.path.display().to_string();
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

    pub(super) fn run(mut self, mut commands: mpsc::Receiver<Command>, thresholds: mpsc::Sender<Threshold>) {
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
                    if idle
                        && (wanted.swap(false, Ordering::SeqCst) || wal_len(&wal_path) >= threshold)
                        && !checkpoint(&conn, &broken)
                    {
                        wanted.store(true, Ordering::SeqCst);
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

pub(super) fn wal_len(wal_path: &str) -> u64 {
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
