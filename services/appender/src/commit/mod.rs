//! The committer: sealed staging sets in, Iceberg snapshots out.
//!
//! It wakes on `flush.interval`, on a threshold note from staging (`flush.max_records`,
//! `flush.max_bytes`) and on flush requests (admin gRPC/HTTP, SIGUSR1, start-up, shutdown).
//! Each flush commits a leftover sealed set first, then seals what is staged and commits it:
//! one snapshot per table the sealed set has rows for (logs, traces, each metrics table), whose
//! summary carries this staging file's writer id and the seal id. A sealed set is released from
//! staging only after every table's commit; each table's attempt looks the set up in that
//! table's snapshot summaries first (an earlier attempt, or a run that crashed between two
//! tables' commits, may have landed it), and an attempt moved onto newer snapshots stops when
//! one of them holds it, so a retry never commits it twice to any table. Failures keep the rows
//! staged, turn health NOT_SERVING and are retried with backoff.

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use telemetry_lake_admin_proto::v1::{FlushResponse, LastFlush};
use telemetry_lake_common::{
    admin::FlushTrigger,
    health::{Health, Reason},
    otlp::ExportError,
};
use telemetry_lake_proto::RowTable;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

pub mod fence;
pub mod summary;
#[cfg(test)]
mod tests;

use self::fence::Fencer;
use self::summary::SnapshotSummary;
use crate::{
    lake::{CheckedBase, Lake, LakeError},
    metrics::AppenderMetrics,
    staging::{self, Sealed, Staging, StagingError, Threshold, table_bit, table_condition},
};

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often one flush re-checks the table after other writers committed overlapping rows first.
const MAX_CONFLICTS: u32 = 3;

/// A request to flush now; `reply` (if any) gets the outcome.
pub struct FlushRequest {
    pub trigger: FlushTrigger,
    pub reply: Option<oneshot::Sender<Result<FlushResponse, ExportError>>>,
}

#[derive(Debug, thiserror::Error)]
enum FlushError {
    #[error(transparent)]
    Staging(#[from] StagingError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// Kafka cannot tell which topic the offsets are of (unreachable); retried.
    #[error("{0}")]
    Kafka(String),
}

/// What `Stats` reports about flushing.
pub struct FlushState {
    pub last_success: Mutex<Instant>,
    pub last_flush: Mutex<LastFlush>,
}

impl Default for FlushState {
    fn default() -> Self {
        Self {
            last_success: Mutex::new(Instant::now()),
            last_flush: Mutex::new(LastFlush { outcome: "none".into(), ..Default::default() }),
        }
    }
}

/// What one sealed set added to the table.
#[derive(Debug, Default)]
struct Committed {
    snapshot_id: i64,
    data_files: u32,
    records: u64,
}

pub struct Committer {
    /// Which staged rows each commit to a table may take (all of them, or Kafka rows past the
    /// table's offsets of its signal's topic), and what its summary records.
    pub fencer: Fencer,
    pub staging: Staging,
    /// Every table served, logs first.
    pub lakes: Vec<Arc<Lake>>,
    pub health: Health,
    pub state: Arc<FlushState>,
    pub metrics: Arc<AppenderMetrics>,
    pub interval: Duration,
}

impl Committer {
    /// Runs until `requests` is closed; every request gets an answer.
    pub async fn run(
        self,
        mut requests: mpsc::Receiver<FlushRequest>,
        mut thresholds: mpsc::Receiver<Threshold>,
    ) {
        let mut failures = 0u32;
        let mut due = tokio::time::Instant::now() + self.interval;
        loop {
            let (trigger, mut replies) = tokio::select! {
                request = requests.recv() => match request {
                    Some(request) => {
                        let mut replies = vec![request.reply];
                        // Requests queued meanwhile are answered by the same flush.
                        while let Ok(more) = requests.try_recv() { replies.push(more.reply); }
                        (request.trigger, replies)
                    }
                    None => break,
                },
                // After a failure only the backoff timer retries: a threshold note arrives with
                // every staged group once past the threshold, and would hammer a down catalog.
                Some(threshold) = thresholds.recv(), if failures == 0 => {
                    let trigger = match threshold {
                        Threshold::MaxRecords => FlushTrigger::MaxRecords,
                        Threshold::MaxBytes => FlushTrigger::MaxBytes,
                    };
                    (trigger, Vec::new())
                }
                _ = tokio::time::sleep_until(due) => {
                    // Bytes without records: markers of dead-lettered messages, to be committed.
                    let staged = self.staging.counters();
                    let idle = staged.records.load(Ordering::Relaxed) == 0
                        && staged.bytes.load(Ordering::Relaxed) == 0;
                    if idle {
                        due = tokio::time::Instant::now() + self.interval;
                        continue;
                    }
                    (FlushTrigger::Interval, Vec::new())
                }
            };
            let result = self.flush(trigger).await;
            due = match &result {
                Ok(_) => {
                    failures = 0;
                    tokio::time::Instant::now() + self.interval
                }
                Err(_) => {
                    failures += 1;
                    let backoff =
                        Duration::from_secs(1 << failures.min(5)).min(MAX_BACKOFF).min(self.interval);
                    tokio::time::Instant::now() + backoff
                }
            };
            for reply in replies.drain(..).flatten() {
                let _ = reply.send(result.clone());
            }
        }
        tracing::debug!("committer stopped");
    }

    async fn flush(&self, trigger: FlushTrigger) -> Result<FlushResponse, ExportError> {
        let started = Instant::now();
        let result = self.flush_staged().await;
        let duration = started.elapsed();
        let finished_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let mut last = LastFlush {
            trigger: trigger.as_str().into(),
            duration_seconds: duration.as_secs_f64(),
            finished_at_unix_seconds: finished_at,
            ..Default::default()
        };
        self.metrics.flush_duration.observe(duration.as_secs_f64());
        self.metrics.observe_staging(self.staging.counters());
        match result {
            Ok(mut done) => {
                done.duration_seconds = duration.as_secs_f64();
                last.outcome = "ok".into();
                (last.records, last.bytes, last.data_files, last.snapshot_id) =
                    (done.records, done.bytes, done.data_files, done.snapshot_id);
                *self.state.last_success.lock().expect("flush state lock") = Instant::now();
                *self.state.last_flush.lock().expect("flush state lock") = last;
                self.metrics.record_flush(true, &done);
                if done.records > 0 {
                    tracing::info!(
                        trigger = trigger.as_str(),
                        records = done.records,
                        data_files = done.data_files,
                        snapshot_id = done.snapshot_id,
                        seconds = done.duration_seconds,
                        "flushed"
                    );
                }
                self.health.remove(Reason::FlushFailing).await;
                // The flush released what it committed: staging has room again (an export that
                // still finds it full says so again).
                self.health.remove(Reason::StagingFull).await;
                Ok(done)
            }
            Err(err) => {
                tracing::error!(trigger = trigger.as_str(), error = %err, "flush failed, rows stay staged");
                last.outcome = "failed".into();
                last.error = err.to_string();
                *self.state.last_flush.lock().expect("flush state lock") = last;
                self.metrics.record_flush(false, &FlushResponse::default());
                let retryable = match &err {
                    FlushError::Lake(e) => e.is_retryable(),
                    FlushError::Staging(_) | FlushError::Kafka(_) => true,
                };
                if retryable {
                    self.health.add(Reason::FlushFailing).await;
                }
                let message = format!("flush failed, rows stay staged and will be retried: {err}");
                Err(if retryable {
                    ExportError::Unavailable { message, retry_after: Duration::from_secs(5) }
                } else {
                    ExportError::Internal(message)
                })
            }
        }
    }

    /// Commits a leftover sealed set (if any), then everything staged now.
    async fn flush_staged(&self) -> Result<FlushResponse, FlushError> {
        let mut done = FlushResponse::default();
        for _ in 0..2 {
            let Some((sealed, reader)) = self.staging.seal().await? else { break };
            let tables = reader.tables().map_err(LakeError::staging)?;
            for lake in self.lakes.iter().filter(|lake| tables & table_bit(lake.row()) != 0) {
                let reader = reader.try_clone().map_err(|e| LakeError::staging(e.to_string()))?;
                let committed = self.commit_sealed(lake, &sealed, reader).await?;
                done.records += committed.records;
                done.data_files += committed.data_files;
                if committed.snapshot_id != 0 {
                    done.snapshot_id = committed.snapshot_id;
                }
            }
            self.staging.release(sealed.seal_id).await?;
            done.bytes += sealed.bytes;
            if !sealed.resumed {
                break;
            }
        }
        Ok(done)
    }

    /// Commits one sealed set to `lake` unless it is already there. In Kafka mode only the rows
    /// past the table's offsets are committed, with their next offsets in the snapshot summary.
    async fn commit_sealed(
        &self,
        lake: &Lake,
        sealed: &Sealed,
        reader: staging::SealedReader,
    ) -> Result<Committed, FlushError> {
        if sealed.resumed
            && let Some(committed) = sealed_set_in(&lake.snapshot_summaries().await?, sealed)
        {
            tracing::info!(
                table = %lake.table_ident(),
                seal_id = sealed.seal_id,
                snapshot_id = committed.snapshot_id,
                "sealed rows were already committed to the table"
            );
            return Ok(committed);
        }
        let _held = self.fencer.hold().await;
        let mut conflicts = 0;
        loop {
            let reader = reader.try_clone().map_err(|e| LakeError::staging(e.to_string()))?;
            match self.commit_checked(lake, sealed, reader).await {
                Err(FlushError::Lake(err @ LakeError::Conflict { .. })) if conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    tracing::warn!(seal_id = sealed.seal_id, error = %err, "checking the table again");
                }
                result => return result,
            }
        }
    }

    /// Reads the table, decides which sealed rows it still lacks (in Kafka mode: rows of the
    /// partitions this appender owns, past the table's offsets) and commits those on top of
    /// exactly the state it read, or on a newer one only if nothing there overlaps them.
    async fn commit_checked(
        &self,
        lake: &Lake,
        sealed: &Sealed,
        reader: staging::SealedReader,
    ) -> Result<Committed, FlushError> {
        let fencer = &self.fencer;
        let row = lake.row();
        let state = lake.state().await?;
        let seal_id = sealed.seal_id.to_string();
        // An earlier attempt whose outcome was unknown (a timeout) may have been applied since.
        if let Some(committed) = sealed_set_in(&state.summaries, sealed) {
            tracing::info!(
                table = %lake.table_ident(),
                seal_id = sealed.seal_id,
                snapshot_id = committed.snapshot_id,
                "an earlier attempt committed the sealed rows"
            );
            return Ok(committed);
        }
        let base = state.current();
        let fence = fencer.fence(&state, crate::signal_of(row)).await.map_err(FlushError::Kafka)?;
        let condition = format!("{} AND {}", table_condition(row), fence.sql_condition());
        let (summary_tx, summary_rx) = oneshot::channel();
        // One batch queued while the lake writes another: the reader stays ahead, and no more
        // rows than that wait in memory.
        let (tx, rx) = mpsc::channel(1);
        std::thread::Builder::new()
            .name("staging-reader".into())
            .spawn(move || {
                let expected = match reader.summarize(&condition) {
                    Ok(summary) => {
                        let records = summary.records;
                        let _ = summary_tx.send(Ok(summary));
                        records
                    }
                    Err(e) => {
                        let _ = summary_tx.send(Err(e));
                        return;
                    }
                };
                if expected == 0 {
                    return;
                }
                let send = |batch| tx.blocking_send(Ok(batch)).is_ok();
                let problem = if row == RowTable::Logs {
                    match reader.read_sorted(&condition, send) {
                        Ok(rows) if rows == expected => return,
                        Ok(rows) => format!("read {rows} sealed rows where {expected} were counted"),
                        Err(e) => e,
                    }
                } else {
                    // A metrics batch holds rows of several tables: its count is of all of them.
                    match reader.read_table_sorted(row, &condition, send) {
                        Ok(read) if read.items == expected => {
                            if read.rejected > 0 {
                                let rejected = read.rejected;
                                tracing::warn!(?row, rejected, "staged items failed the id rule, left out");
                            }
                            return;
                        }
                        Ok(read) => {
                            format!("read {} sealed items where {expected} were counted", read.items)
                        }
                        Err(e) => e,
                    }
                };
                let _ = tx.blocking_send(Err(LakeError::staging(problem)));
            })
            .map_err(|e| LakeError::staging(format!("cannot start the staging reader: {e}")))?;
        let summary = summary_rx
            .await
            .map_err(|_| LakeError::staging("the staging reader stopped before counting"))?
            .map_err(LakeError::staging)?;
        // A set of records-less batches past the table's offsets (markers of dead-lettered
        // messages) is still committed: its offsets move the table past those messages.
        if summary.records == 0 && summary.next_offsets.is_empty() {
            tracing::info!(seal_id = sealed.seal_id, "every sealed row is already in the table");
            return Ok(Committed::default());
        }
        let mut properties = fence.commit_properties(&summary.next_offsets);
        properties.summary.extend(summary::sealed_set(&sealed.writer_id, &seal_id));
        let rebase = |newer: &[SnapshotSummary]| {
            fence.rebase(newer, &properties, &sealed.writer_id, &seal_id, &summary.next_offsets)
        };
        let checked = CheckedBase { snapshot_id: base, rebase: &rebase };
        let info = lake.append(ReceiverStream::new(rx), properties.clone(), Some(&checked)).await?;
        fencer.committed(fence, &properties);
        if let Some(info) = &info {
            self.metrics.record_commit(row, info.records);
        }
        Ok(info.map_or_else(Committed::default, |i| Committed {
            snapshot_id: i.snapshot_id,
            data_files: i.data_files,
            records: i.records,
        }))
    }
}

/// The commit of `sealed` among `summaries`, if one is there: its snapshot and the rows it
/// added (Iceberg's `added-records`).
fn sealed_set_in(summaries: &[SnapshotSummary], sealed: &Sealed) -> Option<Committed> {
    let seal_id = sealed.seal_id.to_string();
    summaries.iter().find(|(_, props)| summary::is_sealed_set(props, &sealed.writer_id, &seal_id)).map(
        |(snapshot_id, props)| Committed {
            snapshot_id: *snapshot_id,
            data_files: 0,
            records: props.get("added-records").and_then(|n| n.parse().ok()).unwrap_or_default(),
        },
    )
}
