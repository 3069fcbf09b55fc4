//! Sealed sets: rows taken out of the staged table to be committed as one snapshot, and how the
//! committer reads them (counted, then as sorted runs) from a connection of its own.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use arrow_array::RecordBatch;
use duckdb::Connection;

/// The table a sealed set's rows are in.
pub(super) const SEALED_ROWS: &str = "sealed_rows";

/// A connection to read a sealed set from. While one is open the staging thread does not
/// checkpoint: DuckDB 1.5.5 corrupted a row group when a checkpoint overlapped other work.
pub struct SealedReader {
    conn: Connection,
    open_readers: Arc<AtomicUsize>,
    /// About how many rows one sort of [`read_sealed`] may hold.
    pub(super) sort_rows: u64,
}

impl SealedReader {
    pub(super) fn new(conn: Connection, open_readers: &Arc<AtomicUsize>, sort_rows: u64) -> Self {
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
