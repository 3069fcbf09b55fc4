//! DuckDB staging: the on-disk buffer between OTLP (or Kafka) and Iceberg.
//!
//! ```text
//!  source::otlp / source::kafka --Batch (one OTLP request or Kafka message, protobuf)-->
//!      staging thread: group commit into the DuckDB file (one row per batch)
//!  committer --seal--> sealed set --SealedReader (its own connection)--> decompress in
//!      bounded chunks --> sort::SortedRuns (a 32-byte entry per record; runs spilled as the
//!      records' encoded bytes; k-way merge) --> rows::wire (protobuf straight into Arrow)
//!      --> Arrow batches in service_name, timestamp order --> lake --> release
//! ```
//!
//! The staged unit is the encoded batch, not the row: appending one costs a copy of its bytes,
//! and records become rows once, at flush (decoding OTLP and building Arrow cost a fraction of
//! what appending exploded rows to DuckDB did). Logs are never held in memory beyond a bounded
//! batch: staged bytes live in the database file, and a flush holds one sorted run at a time.
//!
//! One dedicated thread owns the DuckDB connection and takes [`Command`]s; nothing async blocks
//! on DuckDB. Appends that arrive together share one transaction (group commit: DuckDB fsyncs
//! its WAL on every commit) and every caller is answered only after that commit, so an
//! acknowledged record survives `kill -9`. Sealing records the highest batch sequence number in
//! one small transaction, so appends go on while a sealed set is committed; a sealed set stays
//! on disk until released, so a failed or interrupted commit is retried, never dropped.
//!
//! The file (format [`FORMAT_VERSION`]): `batches` (sequence number, Kafka partition and
//! offset or NULL, records, bytes, arrival time, the OTLP export request's protobuf, the tables
//! it has rows for) and `staging_meta` (format version, this writer's id, the seal sequence,
//! the sealed set). A format 2 file (logs only) is upgraded in place when opened; a format 1
//! file is refused with what to do (see [`StagingError::OldFormat`]).
//!
//! Logs, spans and data points share the file and the sealed sets: a sealed set is read once
//! per table it has rows for ([`SealedReader::read_sorted`] for logs, the wire walk into
//! sorted runs; [`SealedReader::read_table_sorted`] for traces and metrics: prost, rows,
//! `arrow_sort`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
};

use bytesize::ByteSize;
use telemetry_lake_common::{config::FlushConfig, settings::StagingSettings};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use telemetry_lake_proto::RowTable;

use crate::rows::KafkaPosition;

pub mod arrow_sort;
mod db;
mod sealed;
pub mod sort;
#[cfg(test)]
mod tests;

pub use self::db::FORMAT_VERSION;
use self::db::{BrokenFlag, MAX_GROUP, StagingDb};
pub use self::sealed::{SealedReader, SealedSummary, TableRead, table_condition};

#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error(
        "a batch of {bytes} is larger than staging takes in one piece ({limit}, \
         otlp.max_recv_msg_size); it can never be staged"
    )]
    TooLarge { bytes: ByteSize, limit: ByteSize },
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
        "staging file {path} has format {found}, this release reads format {FORMAT_VERSION}: it may \
         hold acknowledged records not yet in the lake. Drain it with the release that wrote it \
         (start it with the same config: it commits what is staged at start-up, then stop it \
         with SIGTERM), then start this release; or move the file away to start empty"
    )]
    OldFormat { path: String, found: String },
    #[error(
        "staging database {path} failed and must be reopened: {reason}; restart the appender: \
         acknowledged records are in the staging file and are committed at the next start"
    )]
    Broken { path: String, reason: String },
}

/// One batch to stage: an OTLP export request in protobuf (logs, unless [`Batch::holding`] says
/// otherwise), holding `records` items (log records, spans, data points), from `source` in
/// Kafka (one message) or from an OTLP export (`None`).
#[derive(Debug, Clone)]
pub struct Batch {
    /// The tables it has rows for ([`table_bits`]).
    tables: u32,
    /// The request, zstd-compressed (level 1): DuckDB's cost grows with the bytes it stores,
    /// and a quarter of the bytes cut the staging and checkpoint threads' CPU more than the
    /// compression costs.
    compressed: Vec<u8>,
    /// The request's encoded size.
    bytes: u64,
    pub records: u64,
    pub source: Option<KafkaPosition>,
    /// When it arrived, in microseconds since the epoch: the timestamp of records with none.
    pub received_at_micros: i64,
}

impl Batch {
    /// A batch of `payload`, an encoded `ExportLogsServiceRequest` holding `records` records.
    /// (An empty payload is a marker: no rows, only its Kafka offset.)
    pub fn new(payload: &[u8], records: u64, source: Option<KafkaPosition>, received_at_micros: i64) -> Self {
        type Compressor = std::cell::RefCell<zstd::bulk::Compressor<'static>>;
        thread_local! {
            // One context per thread, reused: making one per batch cost a third as much as
            // compressing (perf, Kafka mode).
            static COMPRESSOR: Compressor =
                Compressor::new(zstd::bulk::Compressor::new(1).expect("zstd makes a level 1 context"));
        }
        let compressed = COMPRESSOR
            .with_borrow_mut(|c| c.compress(payload))
            .expect("zstd compresses any input into a Vec");
        Self {
            tables: table_bits(&[RowTable::Logs]),
            compressed,
            bytes: payload.len() as u64,
            records,
            source,
            received_at_micros,
        }
    }

    /// The same batch, of a request with rows for `tables` instead: an encoded
    /// `ExportTraceServiceRequest` for [`RowTable::Traces`], an `ExportMetricsServiceRequest`
    /// for metrics tables.
    pub fn holding(mut self, tables: &[RowTable]) -> Self {
        self.tables = table_bits(tables);
        self
    }

    /// The tables it has rows for, as [`table_bits`].
    pub(crate) fn tables(&self) -> u32 {
        self.tables
    }

    /// What `flush.max_bytes` and `staging.max_bytes` count: the encoded (uncompressed) size.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn compressed(&self) -> &[u8] {
        &self.compressed
    }
}

/// The staged `tables` column: bit `1 << table` for each table a batch has rows for. Format 2
/// files held logs only: their batches become `1` (logs).
pub fn table_bits(tables: &[RowTable]) -> u32 {
    tables.iter().fold(0, |bits, table| bits | table_bit(*table))
}

/// The bit of `table` in [`table_bits`].
pub fn table_bit(table: RowTable) -> u32 {
    1 << (table as u32)
}

/// Counters read without asking the staging thread. `records`/`bytes` are everything not yet
/// committed, sealed included; `unsealed_*` is what the next seal will take. Bytes are encoded
/// OTLP bytes.
#[derive(Debug, Default)]
pub struct StagingCounters {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub unsealed_records: AtomicU64,
    pub unsealed_bytes: AtomicU64,
    /// Set when an append was refused for want of room; cleared when a release or a discard
    /// makes room. While set, [`Staging::refusing`] refuses before a batch is even made.
    pub full: AtomicBool,
}

/// Which threshold a group commit crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    MaxRecords,
    MaxBytes,
}

/// A set of staged batches to be committed as one snapshot.
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

enum Command {
    Append { batches: Vec<Batch>, reply: oneshot::Sender<Result<(), StagingError>> },
    Seal { reply: oneshot::Sender<Result<Option<(Sealed, SealedReader)>, StagingError>> },
    Release { seal_id: i64, reply: oneshot::Sender<Result<(), StagingError>> },
    DiscardUnsealed { tables: u32, partitions: Vec<i32>, reply: oneshot::Sender<Result<u64, StagingError>> },
}

/// Handle to the staging thread; cheap to clone.
#[derive(Clone)]
pub struct Staging {
    commands: mpsc::Sender<Command>,
    max_batch_bytes: u64,
    max_bytes: u64,
    counters: Arc<StagingCounters>,
    broken: BrokenFlag,
}

impl Staging {
    /// Opens (or creates) the database file and starts the staging thread. `thresholds`
    /// receives a note whenever unsealed rows reach `flush.max_records` or `flush.max_bytes`.
    pub fn open(
        config: &StagingSettings,
        flush: &FlushConfig,
        thresholds: mpsc::Sender<Threshold>,
    ) -> Result<Self, StagingError> {
        let path = config.path.display().to_string();
        if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
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
        Ok(Self {
            commands,
            max_batch_bytes: config.max_batch.as_u64(),
            max_bytes: config.max_bytes.as_u64(),
            counters,
            broken,
        })
    }

    /// The largest batch staging takes (larger ones get [`StagingError::TooLarge`]).
    pub fn max_batch_bytes(&self) -> u64 {
        self.max_batch_bytes
    }

    pub fn counters(&self) -> &StagingCounters {
        &self.counters
    }

    /// [`StagingError::Full`] once an append was refused for want of room, until a flush (or a
    /// discard) makes room: an export can be refused with it before its batch is compressed.
    /// `append` still decides for itself; this only spares the work of a batch bound to be
    /// refused.
    pub fn refusing(&self) -> Option<StagingError> {
        self.counters.full.load(Ordering::Relaxed).then(|| StagingError::Full {
            staged: ByteSize(self.counters.bytes.load(Ordering::Relaxed)),
            limit: ByteSize(self.max_bytes),
        })
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

    /// Stages batches durably, all or none; returns once they are committed to the database
    /// file.
    pub async fn append(&self, batches: Vec<Batch>) -> Result<(), StagingError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Append { batches, reply }).await.map_err(|_| StagingError::Stopped)?;
        answer.await.map_err(|_| StagingError::Stopped)?
    }

    /// The sealed set to commit next: a leftover one if there is one, else everything staged
    /// now; `None` when nothing is staged. Comes with a connection to read it from.
    pub async fn seal(&self) -> Result<Option<(Sealed, SealedReader)>, StagingError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Seal { reply }).await.map_err(|_| StagingError::Stopped)?;
        answer.await.map_err(|_| StagingError::Stopped)?
    }

    /// Drops the unsealed batches of these Kafka partitions of the topic whose batches have rows
    /// for `tables` ([`table_bits`] of its signal's tables: they will be read from Kafka
    /// again); returns how many records they held.
    pub async fn discard_unsealed_partitions(
        &self,
        tables: u32,
        partitions: Vec<i32>,
    ) -> Result<u64, StagingError> {
        if partitions.is_empty() {
            return Ok(0);
        }
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::DiscardUnsealed { tables, partitions, reply })
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
