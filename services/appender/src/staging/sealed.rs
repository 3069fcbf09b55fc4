//! Sealed sets, as the committer reads them: counted, then decoded into rows and handed out in
//! `service_name, timestamp` order, from a DuckDB connection of their own.
//!
//! Memory stays bounded whatever the set's size: payloads are read in chunks of about
//! [`CHUNK_BYTES`] (by ranges of sequence numbers, so DuckDB never holds a vector of 2,048
//! large blobs), decoded one batch at a time, and the rows go through [`SortedRuns`], which
//! holds one run of `run_bytes` and spills the rest to disk.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use arrow_array::RecordBatch;
use duckdb::Connection;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message as _;

use super::{db::BATCHES, sort::SortedRuns};
use crate::rows::{self, KafkaPosition};

/// About how many payload bytes one read of a sealed set fetches from DuckDB.
const CHUNK_BYTES: u64 = 8 << 20;

/// A connection to read a sealed set from. While one is open the staging thread does not
/// checkpoint: DuckDB 1.5.5 corrupted a row group when a checkpoint overlapped other work.
pub struct SealedReader {
    conn: Connection,
    open_readers: Arc<AtomicUsize>,
    /// The highest sequence number of the set.
    upto: i64,
    /// Memory one sorted run may take.
    run_bytes: u64,
    /// Where sorted runs spill: a directory of its own per read, under the staging file's
    /// spill directory (emptied when staging opens).
    spill_root: PathBuf,
}

/// What a sealed set holds past a condition: records and, per Kafka partition, the next offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealedSummary {
    pub records: u64,
    pub next_offsets: BTreeMap<i32, i64>,
}

impl SealedReader {
    pub(super) fn new(
        conn: Connection,
        open_readers: &Arc<AtomicUsize>,
        upto: i64,
        run_bytes: u64,
        spill_root: PathBuf,
    ) -> Self {
        open_readers.fetch_add(1, Ordering::SeqCst);
        Self { conn, open_readers: open_readers.clone(), upto, run_bytes, spill_root }
    }

    /// Another connection to the same sealed set, counted as open too.
    pub fn try_clone(&self) -> Result<Self, duckdb::Error> {
        Ok(Self::new(
            self.conn.try_clone()?,
            &self.open_readers,
            self.upto,
            self.run_bytes,
            self.spill_root.clone(),
        ))
    }

    /// The connection, for tests that break the database on purpose.
    #[cfg(test)]
    pub(super) fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Counts the sealed records of the batches that pass `condition` (SQL over
    /// `kafka_partition` and `kafka_offset`).
    pub fn summarize(&self, condition: &str) -> Result<SealedSummary, String> {
        let sql = format!(
            "SELECT kafka_partition, max(kafka_offset) + 1, sum(records)::BIGINT FROM {BATCHES}
             WHERE part = 0 AND seq <= {} AND ({condition}) GROUP BY 1",
            self.upto
        );
        let failed = |e: duckdb::Error| format!("summarizing the sealed set: {e}");
        let mut stmt = self.conn.prepare(&sql).map_err(failed)?;
        let mut rows = stmt.query([]).map_err(failed)?;
        let mut summary = SealedSummary::default();
        while let Some(row) = rows.next().map_err(failed)? {
            let partition: Option<i32> = row.get(0).map_err(failed)?;
            let next: Option<i64> = row.get(1).map_err(failed)?;
            let records: i64 = row.get(2).map_err(failed)?;
            summary.records += records as u64;
            if let (Some(partition), Some(next)) = (partition, next) {
                summary.next_offsets.insert(partition, next);
            }
        }
        Ok(summary)
    }

    /// Decodes the sealed batches that pass `condition` into rows and hands them to `each` in
    /// `service_name, timestamp` order; returns the number of rows. `each` returning `false`
    /// stops the read. Blocking: run it on a thread of its own.
    pub fn read_sorted(
        &self,
        condition: &str,
        mut each: impl FnMut(RecordBatch) -> bool,
    ) -> Result<u64, String> {
        static READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let spill_dir = self.spill_root.join(format!("read-{}", READS.fetch_add(1, Ordering::Relaxed)));
        let mut runs = SortedRuns::new(spill_dir, self.run_bytes);
        self.for_each_batch(condition, |payload, source, received_at| {
            let request = ExportLogsServiceRequest::decode(payload)
                .map_err(|e| format!("a staged batch does not decode: {e}"))?;
            let converted = rows::to_rows(&request, source, received_at);
            runs.push(converted.batch)
        })?;
        runs.finish(&mut each)
    }

    /// Calls `each` with every sealed batch that passes `condition`, in arrival order.
    fn for_each_batch(
        &self,
        condition: &str,
        mut each: impl FnMut(&[u8], Option<KafkaPosition>, i64) -> Result<(), String>,
    ) -> Result<(), String> {
        let failed = |e: duckdb::Error| format!("reading the sealed set: {e}");
        let where_clause = format!("seq <= {} AND ({condition})", self.upto);
        // Sequence ranges of about CHUNK_BYTES each, from the small columns only.
        let sizes: Vec<(i64, i64)> = self
            .conn
            .prepare(&format!(
                "SELECT seq, bytes FROM {BATCHES} WHERE part = 0 AND {where_clause} ORDER BY seq"
            ))
            .and_then(|mut stmt| stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(failed)?;
        let mut ranges = Vec::new();
        let (mut first, mut bytes) = (None, 0u64);
        for (seq, size) in &sizes {
            let start = *first.get_or_insert(*seq);
            bytes += *size as u64;
            if bytes >= CHUNK_BYTES {
                ranges.push((start, *seq));
                (first, bytes) = (None, 0);
            }
        }
        if let (Some(start), Some((last, _))) = (first, sizes.last()) {
            ranges.push((start, *last));
        }
        let read = std::panic::AssertUnwindSafe(|| -> Result<(), String> {
            // One batch's parts, joined; handed out when the next batch starts.
            let mut payload = Vec::new();
            let mut current: Option<(i64, Option<KafkaPosition>, i64)> = None;
            for (start, end) in ranges {
                let sql = format!(
                    "SELECT seq, kafka_partition, kafka_offset, received_at, payload FROM {BATCHES}
                     WHERE {where_clause} AND seq BETWEEN {start} AND {end} ORDER BY seq, part"
                );
                let mut stmt = self.conn.prepare(&sql).map_err(failed)?;
                let mut rows = stmt.query([]).map_err(failed)?;
                while let Some(row) = rows.next().map_err(failed)? {
                    let seq: i64 = row.get(0).map_err(failed)?;
                    if let Some((_, source, received_at)) = current.filter(|(s, _, _)| *s != seq) {
                        each(&payload, source, received_at)?;
                        payload.clear();
                    }
                    let partition: Option<i32> = row.get(1).map_err(failed)?;
                    let offset: Option<i64> = row.get(2).map_err(failed)?;
                    let source =
                        partition.zip(offset).map(|(partition, offset)| KafkaPosition { partition, offset });
                    current = Some((seq, source, row.get(3).map_err(failed)?));
                    let part = row.get_ref(4).map_err(failed)?;
                    payload.extend_from_slice(
                        part.as_blob().map_err(|e| format!("reading a staged payload: {e}"))?,
                    );
                }
            }
            if let Some((_, source, received_at)) = current {
                each(&payload, source, received_at)?;
            }
            Ok(())
        });
        // DuckDB's iterator panics on some failures; they become errors of the flush.
        std::panic::catch_unwind(read).unwrap_or_else(|panic| {
            let message =
                panic.downcast_ref::<String>().cloned().unwrap_or_else(|| "duckdb iterator panicked".into());
            Err(format!("reading the sealed set: {message}"))
        })
    }
}

impl Drop for SealedReader {
    fn drop(&mut self) {
        self.open_readers.fetch_sub(1, Ordering::SeqCst);
    }
}
