//! The DuckDB layer of staging: the database file, its tables, group commits, seals, releases
//! and the checkpointer thread. Only the staging thread (see the parent module) and the
//! checkpointer touch the connection.

use std::{
    sync::mpsc::RecvTimeoutError,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use bytesize::ByteSize;
use duckdb::{Connection, params};
use telemetry_lake_common::{config::FlushConfig, settings::StagingSettings};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{
    Batch, Command, Sealed, SealedReader, StagingCounters, StagingError, Threshold, sealed::QueryGate,
};

/// The staging file's format: 3 since batches carry the tables they have rows for (traces and
/// metrics are staged too), 2 since the staged unit is the encoded batch (1 staged rows).
pub const FORMAT_VERSION: u32 = 3;
/// The table new batches go to, in arrival order (`seq`): each batch's payload in parts of at
/// most [`PART_BYTES`] (`part` 0, 1, …), every part with the batch's Kafka partition, offset and
/// arrival time, part 0 alone with its records and bytes.
const STAGED: &str = "staged_batches";
/// The sealed set: the staged table renamed by a seal, dropped whole by the release (a DELETE
/// of most of one table made DuckDB's next checkpoint rewrite what was left, and run out of
/// memory doing it).
pub(super) const SEALED: &str = "sealed_batches";
/// The largest piece of a payload in one row. DuckDB 1.5.5 keeps a large blob in a block of
/// its own, and its checkpoint pins every such block of a segment at once: with whole 600 KB
/// requests as blobs a checkpoint failed to allocate (and invalidated the database) once the
/// staged bytes passed its memory limit; with parts of 16 KiB it stays within the limit. Parts
/// of 16 KiB still failed every flush's read on a Kafka backlog of payloads compressing 2x
/// ("failed to allocate data of size 16.0 MiB (52.1 MiB/64.0 MiB used)" at the default 64 MiB,
/// whatever the dump's ranges); parts of 8 and 4 KiB did not, and 8 KiB keeps the rows of an
/// embedded export (~80 KB staged) fewer (`bench/compare/results/kafka-backlog-staging-2026-12-07.md`).
/// Files staged with other part sizes read the same.
const PART_BYTES: usize = 8 << 10;
/// Most append requests folded into one DuckDB transaction.
pub(super) const MAX_GROUP: usize = 512;
/// DuckDB's `checkpoint_threshold` that its automatic checkpoint never reaches.
const NO_AUTOMATIC_CHECKPOINT: &str = "1000TB";
/// Memory DuckDB's allocator may keep cached per thread (and after a bulk free) before handing
/// it back: see [`StagingDb::open`].
const ALLOCATOR_FLUSH: &str = "4MiB";

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
    /// Memory one sorted run of a flush may take (see `super::sort`).
    run_bytes: u64,
    /// Keeps checkpoints and queries of sealed sets apart.
    query_gate: QueryGate,
    /// Set after a release: the checkpointer then checkpoints whatever the WAL's size, so that
    /// the released batches' blocks are freed for reuse without stalling the appends.
    checkpoint_wanted: Arc<AtomicBool>,
    pub(super) broken: BrokenFlag,
    writer_id: String,
    pub(super) counters: Arc<StagingCounters>,
    max_bytes: u64,
    /// The most bytes one group commit takes (but always at least one batch).
    max_group_bytes: u64,
    /// The largest batch accepted.
    max_batch_bytes: u64,
    flush_records: u64,
    flush_bytes: u64,
    /// The sequence number the next staged batch gets.
    next_seq: i64,
    /// The sealed set and the highest sequence number it holds.
    sealed: Option<(Sealed, i64)>,
}

/// How `staging.memory_limit` is shared: DuckDB's buffer pool gets a quarter, a flush's sorted
/// run a sixteenth; the rest is for requests in flight, the Kafka consumer's prefetch, Parquet
/// row groups and the allocator.
fn share(memory_limit: ByteSize) -> u64 {
    (memory_limit.as_u64() / 4).max(4 << 20)
}

/// A flush's sorted run: a sixteenth of `staging.memory_limit` (16 MiB at the default). A heap
/// profile on a Kafka backlog found the run at 64-76 MiB with a quarter; runs of a sixteenth
/// cost no more CPU per row than runs four times that size, and lowered the Kafka-mode peak RSS
/// (`bench/compare/results/kafka-backlog-2026-12-07.md`, `kafka-backlog-allocator-2026-12-07.md`).
fn run_share(memory_limit: ByteSize) -> u64 {
    (memory_limit.as_u64() / 16).max(4 << 20)
}

/// The most bytes of batches one group commit takes (a larger batch goes alone). DuckDB holds a
/// group about three times over until its commit (the appender's chunk, the transaction's
/// local storage, the WAL record): groups of 16 MiB filled its 64 MiB at ~60 MB/s.
const GROUP_BYTES: u64 = 4 << 20;

/// DuckDB's memory limit. A commit that cannot allocate fails and the database has to be
/// reopened, so DuckDB gets room for a group of the largest batch (`max_batch`, three times
/// over) and the WAL's worth of batches not yet checkpointed, however small the share, and
/// never less than [`MIN_DUCKDB_MEMORY`].
fn duckdb_memory(config: &StagingSettings) -> u64 {
    share(config.memory_limit).max(3 * config.max_batch.as_u64() + (16 << 20)).max(MIN_DUCKDB_MEMORY)
}

/// The least memory DuckDB gets. With `staging.memory_limit = 16MiB` and 1 MiB requests it got
/// 19 MiB, and DuckDB 1.5.5 invalidated the database while staging 254 of them ("failed to pin
/// block of size 256.0 KiB (18.7 MiB/19.0 MiB used)", tests/test_staging.py); at 64 MiB it
/// staged and flushed 3M records (bench/embedded/results/flush-memory.md).
const MIN_DUCKDB_MEMORY: u64 = 64 << 20;

impl StagingDb {
    pub(super) fn open(config: &StagingSettings, flush: &FlushConfig) -> Result<Self, StagingError> {
        let path = config.path.display().to_string();
        let err = |source| StagingError::DuckDb { path: path.clone(), source };
        let duckdb_memory = duckdb_memory(config);
        let duck_config = duckdb::Config::default()
            .max_memory(&format!("{duckdb_memory}B"))
            .map_err(err)?
            .enable_autoload_extension(false)
            .map_err(err)?;
        let conn = Connection::open_with_flags(&path, duck_config).map_err(err)?;
        // One DuckDB thread: appends and the flush's reads each run on a thread of their own
        // already, and DuckDB's workers would compete with them for the cores. DuckDB's
        // automatic checkpoint is off: it runs inside the committing append; the checkpointer
        // thread checkpoints instead, beside the appends and only while no query of a sealed set runs.
        // Batches not yet checkpointed live in DuckDB's memory, so the threshold stays under it.
        let checkpoint_wal_bytes = (duckdb_memory / 4).max(4 << 20);
        // DuckDB's allocator (its own jemalloc) keeps what its threads freed until their peak
        // passes `allocator_flush_threshold` (128 MiB by default) and purges only when asked:
        // that held ~100 MiB of RSS once a forced flush had read 3M staged records (peak 303 ->
        // 227 MiB with these, bench/embedded/results/flush-memory.md).
        conn.execute_batch(&format!(
            "SET preserve_insertion_order = false;
             SET threads = 1;
             SET checkpoint_threshold = '{NO_AUTOMATIC_CHECKPOINT}';
             SET allocator_flush_threshold = '{ALLOCATOR_FLUSH}';
             SET allocator_bulk_deallocation_flush_threshold = '{ALLOCATOR_FLUSH}';
             SET allocator_background_threads = true;"
        ))
        .map_err(err)?;
        check_format(&conn, &path)?;
        // Runs a flush spilled before a crash are of no use: the flush starts over.
        let _ = std::fs::remove_dir_all(spill_root(&path));
        conn.execute_batch(&format!(
            "{};
             CREATE TABLE IF NOT EXISTS staging_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
             INSERT OR IGNORE INTO staging_meta VALUES
                 ('format_version', '{FORMAT_VERSION}'), ('writer_id', '{}'), ('next_seal_id', '1');",
            create_batches(STAGED),
            uuid::Uuid::new_v4()
        ))
        .map_err(err)?;
        let meta = |key: &str| meta(&conn, key).map_err(err);
        let writer_id = meta("writer_id")?.expect("inserted above");
        let totals = |table: &str| -> Result<(u64, u64, i64), StagingError> {
            conn.query_row(
                &format!(
                    "SELECT coalesce(sum(records), 0)::BIGINT, coalesce(sum(bytes), 0)::BIGINT,
                            coalesce(max(seq), 0) FROM {table}"
                ),
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get(2)?)),
            )
            .map_err(err)
        };
        let (staged_records, staged_bytes, staged_seq) = totals(STAGED)?;
        let (sealed, sealed_seq) = match meta("sealed_id")? {
            Some(id) => {
                let (records, bytes, last) = totals(SEALED)?;
                let seal_id = id.parse().unwrap_or_default();
                (
                    Some((
                        Sealed { writer_id: writer_id.clone(), seal_id, records, bytes, resumed: true },
                        last,
                    )),
                    last,
                )
            }
            None => (None, 0),
        };
        let next_seq = staged_seq.max(sealed_seq) + 1;
        let counters = Arc::new(StagingCounters::default());
        let (sealed_records, sealed_bytes) =
            sealed.as_ref().map(|(s, _)| (s.records, s.bytes)).unwrap_or_default();
        counters.records.store(staged_records + sealed_records, Ordering::Relaxed);
        counters.bytes.store(staged_bytes + sealed_bytes, Ordering::Relaxed);
        counters.unsealed_records.store(staged_records, Ordering::Relaxed);
        counters.unsealed_bytes.store(staged_bytes, Ordering::Relaxed);
        tracing::info!(
            path = %path, staged_records, sealed_records, writer_id = %writer_id, format = FORMAT_VERSION,
            "staging opened"
        );
        Ok(Self {
            conn,
            wal_path: format!("{path}.wal"),
            path: path.clone(),
            checkpoint_wal_bytes,
            run_bytes: run_share(config.memory_limit),
            query_gate: QueryGate::default(),
            checkpoint_wanted: Arc::new(AtomicBool::new(false)),
            broken: BrokenFlag {
                path: path.clone(),
                reason: Arc::new(OnceLock::new()),
                token: CancellationToken::new(),
            },
            writer_id,
            counters,
            max_bytes: config.max_bytes.as_u64(),
            max_group_bytes: GROUP_BYTES.min(config.max_batch.as_u64()),
            max_batch_bytes: config.max_batch.as_u64(),
            flush_records: flush.max_records,
            flush_bytes: flush.max_bytes.as_u64(),
            next_seq,
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
        let mut group_bytes = 0;
        while let Some(first) = commands.blocking_recv() {
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Append { batches, reply } => {
                        let bytes: u64 = batches.iter().map(Batch::bytes).sum();
                        if !group.is_empty() && group_bytes + bytes > self.max_group_bytes {
                            self.append_group(&mut group, &thresholds);
                            group_bytes = 0;
                        }
                        group_bytes += bytes;
                        group.push((batches, reply));
                        if group.len() < MAX_GROUP {
                            next = commands.try_recv().ok();
                        }
                    }
                    other => {
                        self.append_group(&mut group, &thresholds);
                        group_bytes = 0;
                        self.handle(other);
                    }
                }
            }
            self.append_group(&mut group, &thresholds);
            group_bytes = 0;
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
            Command::DiscardUnsealed { tables, partitions, reply } => {
                let result = self.unless_broken(|db| db.discard_unsealed(tables, &partitions));
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

    fn append_group(&mut self, group: &mut Vec<(Vec<Batch>, Reply)>, thresholds: &mpsc::Sender<Threshold>) {
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
        for (batches, reply) in group.drain(..) {
            let bytes: u64 = batches.iter().map(Batch::bytes).sum();
            if let Some(large) = batches.iter().find(|b| b.bytes() > self.max_batch_bytes) {
                let _ = reply.send(Err(StagingError::TooLarge {
                    bytes: ByteSize(large.bytes()),
                    limit: ByteSize(self.max_batch_bytes),
                }));
            } else if bytes > 0 && staged + bytes > self.max_bytes {
                self.counters.full.store(true, Ordering::Relaxed);
                let _ = reply.send(Err(StagingError::Full {
                    staged: ByteSize(staged),
                    limit: ByteSize(self.max_bytes),
                }));
            } else {
                staged += bytes;
                accepted.push((batches, reply));
            }
        }
        let (records, bytes) = accepted
            .iter()
            .flat_map(|(batches, _)| batches)
            .fold((0u64, 0u64), |(r, b), batch| (r + batch.records, b + batch.bytes()));
        let count = accepted.iter().map(|(batches, _)| batches.len()).sum::<usize>();
        let result = if count == 0 { Ok(()) } else { self.append_durably(&accepted) };
        match result {
            Ok(()) => {
                self.next_seq += count as i64;
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

    /// One transaction for the whole group: every batch gets the next sequence number.
    fn append_durably(&mut self, accepted: &[(Vec<Batch>, Reply)]) -> Result<(), StagingError> {
        let path = self.path.clone();
        let err = |source| StagingError::DuckDb { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut appender = tx.appender(STAGED).map_err(err)?;
            let batches = accepted.iter().flat_map(|(batches, _)| batches);
            for (seq, batch) in (self.next_seq..).zip(batches) {
                let (partition, offset) = batch.source.map(|s| (s.partition, s.offset)).unzip();
                // An empty payload still gets its part 0: it carries the offset.
                let payload = batch.compressed();
                let parts = payload.chunks(PART_BYTES).chain(payload.is_empty().then_some(&[][..]));
                for (part, data) in parts.enumerate() {
                    let (records, bytes) = if part == 0 {
                        (Some(batch.records as i64), Some(batch.bytes() as i64))
                    } else {
                        (None, None)
                    };
                    appender
                        .append_row(params![
                            seq,
                            part as i32,
                            partition,
                            offset,
                            records,
                            bytes,
                            batch.received_at_micros,
                            data,
                            batch.tables()
                        ])
                        .map_err(err)?;
                }
            }
            appender.flush().map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// A reader of `sealed` (the batches up to sequence number `upto`).
    fn reader(&self, upto: i64) -> Result<SealedReader, StagingError> {
        let conn = self.conn.try_clone().map_err(|e| self.err(e))?;
        Ok(SealedReader::new(conn, &self.query_gate, upto, self.run_bytes, spill_root(&self.path)))
    }

    /// Checkpoints on the staging thread if the WAL holds at least `min_wal_bytes` (and
    /// something) and no query of a sealed set runs (it does not wait for one).
    fn checkpoint(&self, min_wal_bytes: u64) {
        if wal_len(&self.wal_path) >= min_wal_bytes.max(1)
            && let Some(_checkpointing) = self.query_gate.try_checkpoint()
        {
            checkpoint(&self.conn, &self.broken);
        }
    }

    /// Starts the thread that checkpoints from a connection of its own, so that the staging
    /// thread goes on appending meanwhile. It checks the WAL every [`CHECKPOINT_POLL`], leaves
    /// a due checkpoint for later while a query of a sealed set runs, and
    /// stops when `stop`'s sender is dropped.
    fn start_checkpointer(&self) -> Result<Checkpointer, StagingError> {
        let conn = self.conn.try_clone().map_err(|e| self.err(e))?;
        let (gate, wanted, broken, wal_path) = (
            self.query_gate.clone(),
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
                    let due = broken.error().is_none()
                        && (wanted.load(Ordering::SeqCst) || wal_len(&wal_path) >= threshold);
                    if let Some(_checkpointing) = due.then(|| gate.try_checkpoint()).flatten() {
                        // A release while this checkpoint runs asks for another.
                        wanted.store(false, Ordering::SeqCst);
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
        if let Some((sealed, upto)) = &self.sealed {
            let reader = self.reader(*upto)?;
            return Ok(Some((Sealed { resumed: true, ..sealed.clone() }, reader)));
        }
        let records = self.counters.unsealed_records.load(Ordering::Relaxed);
        let bytes = self.counters.unsealed_bytes.load(Ordering::Relaxed);
        let upto = self.next_seq - 1;
        let any_batch: bool = self
            .conn
            .query_row(&format!("SELECT count(*) > 0 FROM {STAGED}"), [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if !any_batch {
            return Ok(None);
        }
        let seal_id: i64 = meta(&self.conn, "next_seal_id")
            .map_err(|e| self.err(e))?
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        self.conn
            .execute_batch(&format!(
                "BEGIN TRANSACTION;
                 ALTER TABLE {STAGED} RENAME TO {SEALED};
                 {};
                 INSERT OR REPLACE INTO staging_meta VALUES ('next_seal_id', '{}'), ('sealed_id', '{seal_id}');
                 COMMIT;",
                create_batches(STAGED),
                seal_id + 1
            ))
            .map_err(|e| {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.err(e)
            })?;
        self.counters.unsealed_records.fetch_sub(records, Ordering::Relaxed);
        self.counters.unsealed_bytes.fetch_sub(bytes, Ordering::Relaxed);
        let sealed = Sealed { writer_id: self.writer_id.clone(), seal_id, records, bytes, resumed: false };
        let reader = self.reader(upto)?;
        self.sealed = Some((sealed.clone(), upto));
        Ok(Some((sealed, reader)))
    }

    fn discard_unsealed(&mut self, tables: u32, partitions: &[i32]) -> Result<u64, StagingError> {
        let list: Vec<String> = partitions.iter().map(i32::to_string).collect();
        let condition = format!("kafka_partition IN ({}) AND (tables & {tables}) <> 0", list.join(", "));
        let path = self.path.clone();
        let err = |source| StagingError::DuckDb { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(err)?;
        let (records, bytes): (i64, i64) = tx
            .query_row(
                &format!(
                    "SELECT coalesce(sum(records), 0)::BIGINT, coalesce(sum(bytes), 0)::BIGINT
                     FROM {STAGED} WHERE part = 0 AND {condition}"
                ),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(err)?;
        tx.execute(&format!("DELETE FROM {STAGED} WHERE {condition}"), []).map_err(err)?;
        tx.commit().map_err(err)?;
        let (records, bytes) = (records as u64, bytes as u64);
        for (counter, n) in [
            (&self.counters.unsealed_records, records),
            (&self.counters.unsealed_bytes, bytes),
            (&self.counters.records, records),
            (&self.counters.bytes, bytes),
        ] {
            counter.fetch_sub(n, Ordering::Relaxed);
        }
        if bytes > 0 {
            self.counters.full.store(false, Ordering::Relaxed);
        }
        if records > 0 {
            tracing::info!(
                dropped = records,
                ?partitions,
                "dropped unsealed batches of reassigned partitions"
            );
        }
        Ok(records)
    }

    fn release(&mut self, seal_id: i64) -> Result<(), StagingError> {
        let Some((sealed, _)) = self.sealed.as_ref().filter(|(s, _)| s.seal_id == seal_id) else {
            return Ok(());
        };
        let (records, bytes) = (sealed.records, sealed.bytes);
        self.conn
            .execute_batch(&format!(
                "BEGIN TRANSACTION;
                 DROP TABLE {SEALED};
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
        self.counters.full.store(false, Ordering::Relaxed);
        Ok(())
    }
}

type Reply = oneshot::Sender<Result<(), StagingError>>;

fn create_batches(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
             seq BIGINT, part INTEGER, kafka_partition INTEGER, kafka_offset BIGINT,
             records BIGINT, bytes BIGINT, received_at BIGINT, payload BLOB, tables INTEGER)"
    )
}

/// Where flushes spill their sorted runs: beside the staging file.
fn spill_root(path: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("{path}.spill"))
}

fn meta(conn: &Connection, key: &str) -> Result<Option<String>, duckdb::Error> {
    match conn.query_row("SELECT value FROM staging_meta WHERE key = ?", [key], |r| r.get(0)) {
        Ok(v) => Ok(Some(v)),
        Err(duckdb::Error::QueryReturnedNoRows) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Upgrades a format 2 file (logs only) in place: its batches get the `tables` column, all logs.
/// Refuses a file of any other format: format 1 (staged rows, before the staged unit was the
/// encoded batch) has `staged_rows` and no `format_version`.
fn check_format(conn: &Connection, path: &str) -> Result<(), StagingError> {
    let err = |source| StagingError::DuckDb { path: path.to_string(), source };
    let tables: Vec<String> = conn
        .prepare("SELECT table_name FROM duckdb_tables()")
        .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect())
        .map_err(err)?;
    let has = |name: &str| tables.iter().any(|t| t == name);
    let found = if has("staging_meta") {
        meta(conn, "format_version").map_err(err)?.unwrap_or_else(|| "1".into())
    } else if has("staged_rows") || has("sealed_rows") {
        "1".into()
    } else {
        return Ok(());
    };
    if found == FORMAT_VERSION.to_string() {
        return Ok(());
    }
    if found != "2" {
        return Err(StagingError::OldFormat { path: path.to_string(), found });
    }
    let logs = super::table_bit(telemetry_lake_proto::RowTable::Logs);
    let add_column = |table: &str| {
        if has(table) {
            format!("ALTER TABLE {table} ADD COLUMN tables INTEGER DEFAULT {logs};")
        } else {
            String::new()
        }
    };
    conn.execute_batch(&format!(
        "BEGIN TRANSACTION;
         {}{}
         UPDATE staging_meta SET value = '{FORMAT_VERSION}' WHERE key = 'format_version';
         COMMIT;",
        add_column(STAGED),
        add_column(SEALED)
    ))
    .map_err(|source| {
        let _ = conn.execute_batch("ROLLBACK");
        StagingError::DuckDb { path: path.to_string(), source }
    })?;
    tracing::info!(path, "staging file upgraded from format 2 (logs only) to {FORMAT_VERSION}");
    Ok(())
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
            if tracing::enabled!(tracing::Level::TRACE) {
                let usage: Vec<(String, i64)> = conn
                    .prepare("SELECT tag, memory_usage_bytes >> 20 FROM duckdb_memory() WHERE memory_usage_bytes >= 1048576")
                    .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                    .unwrap_or_default();
                tracing::trace!(?usage, "duckdb memory after a checkpoint (MiB)");
            }
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
