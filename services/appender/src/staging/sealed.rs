//! Sealed sets, as the committer reads them, one table at a time: counted, then decoded into rows
//! and handed out in the table's order (`service_name, timestamp` for logs), from a DuckDB
//! connection of their own.
//!
//! ```text
//!  DuckDB batches (seq <= the set's last) --dump, in ranges of ~4 MiB--> batches.bin beside the
//!      staging file (+ an index of (seq, part) -> offset in memory)        DuckDB is done here
//!  batches.bin --each batch's parts, in arrival order--> logs: SortedRuns (sorted runs of
//!      encoded records) --> rows (decoded once, from the bytes) --> Arrow batches in order
//!                                                        traces, metrics: prost --> rows
//!      (rows::spans, rows::metrics) --> arrow_sort::SortedBatches (runs spilled as Arrow IPC)
//!      --> Arrow batches in order
//! ```
//!
//! DuckDB is queried only briefly: while a query runs the checkpointer waits (DuckDB 1.5.5
//! corrupted a row group when a checkpoint overlapped other work; see [`QueryGate`]), and
//! batches staged meanwhile stay in DuckDB's memory until the next checkpoint. So the set is
//! first copied out as it lies (no ORDER BY: a sort of blobs takes DuckDB's memory), in
//! sequence ranges of about [`DUMP_BYTES`] so that DuckDB never holds a vector of 2,048 parts;
//! decoding, sorting and writing Parquet then work from that file. Memory stays bounded
//! whatever the set's size: one batch's payload, one sorted run ([`SortedRuns`] spills the
//! rest), one output batch.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, Write},
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::{
        Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError,
        atomic::{AtomicU64, Ordering},
    },
};

use arrow_array::RecordBatch;
use duckdb::Connection;

use telemetry_lake_proto::RowTable;

use super::{arrow_sort::SortedBatches, db::SEALED as BATCHES, sort::SortedRuns, table_bit};
use crate::rows::{self, KafkaPosition};

/// SQL over the staged `tables` column: the batches with rows for `table`.
pub fn table_condition(table: RowTable) -> String {
    format!("(tables & {}) <> 0", table_bit(table))
}

/// About how many payload bytes (before compression: about a quarter of that is read) one
/// query of the dump fetches from DuckDB.
const DUMP_BYTES: u64 = 16 << 20;

/// A staged payload (one zstd frame, written by `Batch::new` with its size in the header)
/// decompressed with a context reused for every batch of a read.
pub(super) fn decompress(
    decompressor: &mut zstd::bulk::Decompressor<'_>,
    frame: &[u8],
) -> std::io::Result<Vec<u8>> {
    match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) if size <= 1 << 30 => decompressor.decompress(frame, size as usize),
        // A frame without its size (none is written so) or claiming more than any batch: the
        // streaming decoder allocates as it goes.
        _ => zstd::stream::decode_all(frame),
    }
}

/// A connection to read a sealed set from.
pub struct SealedReader {
    conn: Connection,
    /// Held by each query (see [`QueryGate`]).
    gate: QueryGate,
    /// The highest sequence number of the set.
    upto: i64,
    /// Memory one sorted run may take.
    run_bytes: u64,
    /// Where reads dump and spill: a directory of their own per read, under the staging file's
    /// spill directory (emptied when staging opens).
    spill_root: PathBuf,
}

/// What a sealed set holds past a condition: records and, per Kafka partition, the next offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealedSummary {
    pub records: u64,
    pub next_offsets: BTreeMap<i32, i64>,
}

/// What [`SealedReader::read_table_sorted`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableRead {
    /// Rows handed out.
    pub rows: u64,
    /// Items of the table's type that the id rule rejected: none, for batches the export path
    /// checked.
    pub rejected: u64,
    /// Items of every table (spans; data points of every metric type) in the batches read: the
    /// sum of what staging counted for them.
    pub items: u64,
}

/// Where one part of a dumped batch is.
struct DumpedPart {
    seq: i64,
    part: i32,
    source: Option<KafkaPosition>,
    received_at: i64,
    offset: u64,
    len: usize,
}

/// Keeps checkpoints apart from the queries of sealed sets (DuckDB 1.5.5 corrupted a row group
/// when a checkpoint overlapped other work): a query holds the gate shared and a checkpoint
/// exclusively, so a query asked for while a checkpoint runs waits for it, and a checkpoint is
/// left for later while a query runs. (A count of running queries, looked at before a
/// checkpoint, let a query start during it.)
#[derive(Clone, Default)]
pub(super) struct QueryGate(Arc<RwLock<()>>);

impl QueryGate {
    /// Held while a query of a sealed set runs.
    fn query(&self) -> RwLockReadGuard<'_, ()> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Held while a checkpoint runs; `None` while a query runs.
    pub(super) fn try_checkpoint(&self) -> Option<RwLockWriteGuard<'_, ()>> {
        match self.0.try_write() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

/// A read's directory: removed with what is in it when the read ends, however it ends.
struct ReadDir(PathBuf);

impl Drop for ReadDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl SealedReader {
    pub(super) fn new(
        conn: Connection,
        gate: &QueryGate,
        upto: i64,
        run_bytes: u64,
        spill_root: PathBuf,
    ) -> Self {
        Self { conn, gate: gate.clone(), upto, run_bytes, spill_root }
    }

    /// Another connection to the same sealed set.
    pub fn try_clone(&self) -> Result<Self, duckdb::Error> {
        Ok(Self::new(self.conn.try_clone()?, &self.gate, self.upto, self.run_bytes, self.spill_root.clone()))
    }

    /// The connection, for tests that break the database on purpose.
    #[cfg(test)]
    pub(super) fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Holds the gate as one of this reader's queries does, for tests of the checkpointer.
    #[cfg(test)]
    pub(super) fn hold_query(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.query()
    }

    /// Holds the gate as a checkpoint does (once the checkpointer's own is over), for tests of
    /// the queries.
    #[cfg(test)]
    pub(super) fn hold_checkpoint(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.0.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The tables the set has rows for, as `staging::table_bits`.
    pub fn tables(&self) -> Result<u32, String> {
        let _query = self.gate.query();
        let sql = format!(
            "SELECT coalesce(bit_or(tables), 0) FROM {BATCHES} WHERE part = 0 AND seq <= {}",
            self.upto
        );
        self.conn
            .query_row(&sql, [], |r| r.get::<_, i32>(0))
            .map(|bits| bits as u32)
            .map_err(|e| format!("reading the sealed set's tables: {e}"))
    }

    /// Counts the sealed records of the batches that pass `condition` (SQL over
    /// `kafka_partition`, `kafka_offset` and `tables`: see [`table_condition`]).
    pub fn summarize(&self, condition: &str) -> Result<SealedSummary, String> {
        let _query = self.gate.query();
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

    /// Decodes the sealed batches of logs that pass `condition` into rows and hands them to
    /// `each` in `service_name, timestamp` order; returns the number of rows. `each` returning
    /// `false` stops the read. Blocking: run it on a thread of its own.
    pub fn read_sorted(
        &self,
        condition: &str,
        mut each: impl FnMut(RecordBatch) -> bool,
    ) -> Result<u64, String> {
        let dir = self.read_dir()?;
        let mut runs = SortedRuns::new(dir.0.join("runs"), self.run_bytes);
        let condition = format!("{} AND ({condition})", table_condition(RowTable::Logs));
        self.for_each_batch(&dir, &condition, |seq, decoded, source, received_at| {
            runs.push_request(decoded, source, received_at).map_err(|e| format!("staged batch {seq}: {e}"))
        })?;
        runs.finish(&mut each)
    }

    /// As [`SealedReader::read_sorted`], for a table of traces or metrics: the sealed batches
    /// with rows for `table` that pass `condition`, decoded (prost), made rows of the table
    /// (`rows::spans`, `rows::metrics`) and handed to `each` ordered by the table's sort
    /// columns (`arrow_sort`). Fails if the sort hands out fewer rows than it was given (unless
    /// `each` stopped it).
    pub fn read_table_sorted(
        &self,
        table: RowTable,
        condition: &str,
        mut each: impl FnMut(RecordBatch) -> bool,
    ) -> Result<TableRead, String> {
        use opentelemetry_proto::tonic::collector::{
            metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest,
        };
        use prost::Message as _;
        use telemetry_lake_common::otlp::signal::{count_data_points, count_spans};
        let dir = self.read_dir()?;
        let mut sorted = SortedBatches::new(
            table.arrow_schema(),
            table.sort_columns(),
            dir.0.join("runs"),
            self.run_bytes,
        )?;
        let mut read = TableRead::default();
        let condition = format!("{} AND ({condition})", table_condition(table));
        self.for_each_batch(&dir, &condition, |seq, decoded, source, received_at| {
            let undecodable = |e: prost::DecodeError| format!("staged batch {seq} does not decode: {e}");
            let rows = match table {
                RowTable::Logs => return Err("logs are read with read_sorted".into()),
                RowTable::Traces => {
                    let request =
                        ExportTraceServiceRequest::decode(decoded.as_slice()).map_err(undecodable)?;
                    read.items += count_spans(&request);
                    rows::spans::to_rows(&request, source, received_at)
                }
                _ => {
                    let request =
                        ExportMetricsServiceRequest::decode(decoded.as_slice()).map_err(undecodable)?;
                    read.items += count_data_points(&request);
                    rows::metrics::to_rows(&request, table, source, received_at)
                }
            }
            .map_err(|e| format!("staged batch {seq}: {e}"))?;
            read.rejected += rows.rejected;
            sorted.push(rows.batch)
        })?;
        let pushed = sorted.rows();
        let mut stopped = false;
        read.rows = sorted.finish(|batch| {
            let more = each(batch);
            stopped |= !more;
            more
        })?;
        if !stopped && read.rows != pushed {
            return Err(format!("the sort handed out {} of the {pushed} rows it was given", read.rows));
        }
        Ok(read)
    }

    /// A fresh directory for one read's dump and spills.
    fn read_dir(&self) -> Result<ReadDir, String> {
        static READS: AtomicU64 = AtomicU64::new(0);
        let dir = ReadDir(self.spill_root.join(format!("read-{}", READS.fetch_add(1, Ordering::Relaxed))));
        std::fs::create_dir_all(&dir.0).map_err(|e| format!("cannot create {}: {e}", dir.0.display()))?;
        Ok(dir)
    }

    /// Dumps the sealed batches that pass `condition` into `dir`, then hands each batch's
    /// payload, decompressed, to `each` in arrival order, with its sequence number, source and
    /// arrival time.
    fn for_each_batch(
        &self,
        dir: &ReadDir,
        condition: &str,
        mut each: impl FnMut(i64, Vec<u8>, Option<KafkaPosition>, i64) -> Result<(), String>,
    ) -> Result<(), String> {
        let dump_path = dir.0.join("batches.bin");
        let file_error =
            |e: std::io::Error| format!("dumping the sealed set to {}: {e}", dump_path.display());
        let mut index = {
            let mut out = BufWriter::new(File::create(&dump_path).map_err(file_error)?);
            let index = self.dump(condition, &mut out)?;
            out.flush().map_err(file_error)?;
            index
        };
        index.sort_unstable_by_key(|p| (p.seq, p.part));
        let dump = File::open(&dump_path).map_err(file_error)?;
        let mut payload = Vec::new();
        let mut decompressor =
            zstd::bulk::Decompressor::new().map_err(|e| format!("cannot make a zstd context: {e}"))?;
        for (i, part) in index.iter().enumerate() {
            let start = payload.len();
            payload.resize(start + part.len, 0);
            dump.read_exact_at(&mut payload[start..], part.offset).map_err(file_error)?;
            if index.get(i + 1).is_some_and(|next| next.seq == part.seq) {
                continue;
            }
            let decoded = decompress(&mut decompressor, &payload)
                .map_err(|e| format!("staged batch {} does not decompress: {e}", part.seq))?;
            each(part.seq, decoded, part.source, part.received_at)?;
            payload.clear();
        }
        Ok(())
    }

    /// Copies the parts of the sealed batches that pass `condition` to `out` as they come;
    /// returns where each is.
    fn dump(&self, condition: &str, out: &mut impl Write) -> Result<Vec<DumpedPart>, String> {
        let failed = |e: duckdb::Error| format!("reading the sealed set: {e}");
        let where_clause = format!("seq <= {} AND ({condition})", self.upto);
        // Sequence ranges of about DUMP_BYTES each, from the small columns only.
        let sizes: Vec<(i64, i64)> = {
            let _query = self.gate.query();
            self.conn
                .prepare(&format!(
                    "SELECT seq, bytes FROM {BATCHES} WHERE part = 0 AND {where_clause} ORDER BY seq"
                ))
                .and_then(|mut stmt| stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(failed)?
        };
        let mut ranges = Vec::new();
        let (mut first, mut bytes) = (None, 0u64);
        for (seq, size) in &sizes {
            let start = *first.get_or_insert(*seq);
            bytes += *size as u64;
            if bytes >= DUMP_BYTES {
                ranges.push((start, *seq));
                (first, bytes) = (None, 0);
            }
        }
        if let (Some(start), Some((last, _))) = (first, sizes.last()) {
            ranges.push((start, *last));
        }
        let mut index = Vec::new();
        let mut offset = 0u64;
        let copy = std::panic::AssertUnwindSafe(|| -> Result<(), String> {
            for (start, end) in ranges {
                let _query = self.gate.query();
                let sql = format!(
                    "SELECT seq, part, kafka_partition, kafka_offset, received_at, payload FROM {BATCHES}
                     WHERE {where_clause} AND seq BETWEEN {start} AND {end}"
                );
                let mut stmt = self.conn.prepare(&sql).map_err(failed)?;
                let mut rows = stmt.query([]).map_err(failed)?;
                while let Some(row) = rows.next().map_err(failed)? {
                    let partition: Option<i32> = row.get(2).map_err(failed)?;
                    let kafka_offset: Option<i64> = row.get(3).map_err(failed)?;
                    let data = row.get_ref(5).map_err(failed)?;
                    let data = data.as_blob().map_err(|e| format!("reading a staged payload: {e}"))?;
                    out.write_all(data).map_err(|e| format!("dumping the sealed set: {e}"))?;
                    index.push(DumpedPart {
                        seq: row.get(0).map_err(failed)?,
                        part: row.get(1).map_err(failed)?,
                        source: partition
                            .zip(kafka_offset)
                            .map(|(partition, offset)| KafkaPosition { partition, offset }),
                        received_at: row.get(4).map_err(failed)?,
                        offset,
                        len: data.len(),
                    });
                    offset += data.len() as u64;
                }
            }
            Ok(())
        });
        // DuckDB's iterator panics on some failures; they become errors of the flush.
        std::panic::catch_unwind(copy).unwrap_or_else(|panic| {
            let message =
                panic.downcast_ref::<String>().cloned().unwrap_or_else(|| "duckdb iterator panicked".into());
            Err(format!("reading the sealed set: {message}"))
        })?;
        Ok(index)
    }
}
