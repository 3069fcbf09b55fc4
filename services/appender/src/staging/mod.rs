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
    sync::{Arc, atomic::AtomicU64},
    thread,
};

use bytesize::ByteSize;
use telemetry_lake_common::{config::FlushConfig, settings::StagingSettings};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::rows::Rows;

mod db;
mod sealed;
#[cfg(test)]
mod tests;

use self::db::{BrokenFlag, MAX_GROUP, StagingDb};
pub use self::sealed::{SealedReader, SealedSummary, read_sealed, summarize_sealed};

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
