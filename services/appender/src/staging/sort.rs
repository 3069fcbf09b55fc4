//! Rows in `service_name, timestamp` order in bounded memory: sorted runs, spilled, merged.
//!
//! ```text
//!  push(batch) ... until the batches take run_bytes --> sort the run --> spill it as an Arrow
//!                                                       IPC stream file (run-N.arrow)
//!  finish(each): one run, never spilled --> sorted from memory
//!                several runs           --> k-way merge, one small batch of each run at a time
//! ```
//!
//! Keys are arrow-row encodings of (`service_name` ascending, nulls first; `timestamp`
//! ascending), so comparing two rows is comparing bytes; rows are gathered with
//! `interleave_record_batch`, never by concatenating a run (which would double its memory).
//! Equal keys keep their arrival order. Every row pushed comes out exactly once; the spill
//! files are removed when the runs are dropped.

use std::{
    fs::File,
    io::{BufReader, BufWriter},
    path::PathBuf,
};

use arrow_array::RecordBatch;
use arrow_ipc::{reader::StreamReader, writer::StreamWriter};
use arrow_row::{RowConverter, Rows, SortField};
use arrow_schema::{SchemaRef, SortOptions};
use arrow_select::interleave::interleave_record_batch;

/// The columns rows are ordered by, in order.
pub const SORT_COLUMNS: [&str; 2] = ["service_name", "timestamp"];
/// Rows per batch handed out.
const OUT_ROWS: usize = 8192;
/// Rows per batch in a spill file: what the merge holds per run.
const SPILL_ROWS: usize = 1024;

/// Rows pushed in any order, handed out sorted (see the module docs).
pub struct SortedRuns {
    spill_dir: PathBuf,
    run_bytes: u64,
    pending: Vec<RecordBatch>,
    pending_bytes: u64,
    spilled: Vec<PathBuf>,
    converter: Option<RowConverter>,
}

impl SortedRuns {
    /// Runs of about `run_bytes` of Arrow memory; spill files go under `spill_dir`, which is
    /// created when the first run spills and removed on drop.
    pub fn new(spill_dir: PathBuf, run_bytes: u64) -> Self {
        Self {
            spill_dir,
            run_bytes,
            pending: Vec::new(),
            pending_bytes: 0,
            spilled: Vec::new(),
            converter: None,
        }
    }

    pub fn push(&mut self, batch: RecordBatch) -> Result<(), String> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.converter.is_none() {
            self.converter = Some(converter(&batch.schema())?);
        }
        self.pending_bytes += batch.get_array_memory_size() as u64;
        self.pending.push(batch);
        if self.pending_bytes >= self.run_bytes {
            self.spill()?;
        }
        Ok(())
    }

    /// Hands every row to `each` in order, in batches of up to 8,192 rows; returns how many
    /// rows. Stops early, without an error, when `each` returns `false`.
    pub fn finish(mut self, mut each: impl FnMut(RecordBatch) -> bool) -> Result<u64, String> {
        let Some(converter) = self.converter.take() else { return Ok(0) };
        if self.spilled.is_empty() {
            let order = sorted_order(&converter, &self.pending)?;
            return emit(&self.pending, &order, OUT_ROWS, |batch| Ok(each(batch)));
        }
        self.converter = Some(converter);
        if !self.pending.is_empty() {
            self.spill()?;
        }
        let converter = self.converter.take().expect("set above");
        merge(&converter, &self.spilled, &mut each)
    }

    fn spill(&mut self) -> Result<(), String> {
        let converter = self.converter.as_ref().expect("set by the first push");
        let order = sorted_order(converter, &self.pending)?;
        std::fs::create_dir_all(&self.spill_dir)
            .map_err(|e| format!("cannot create the spill directory {}: {e}", self.spill_dir.display()))?;
        let path = self.spill_dir.join(format!("run-{}.arrow", self.spilled.len()));
        let failed =
            |e: &dyn std::fmt::Display| format!("cannot spill a sorted run to {}: {e}", path.display());
        let file = File::create(&path).map_err(|e| failed(&e))?;
        let mut writer =
            StreamWriter::try_new(BufWriter::new(file), &self.pending[0].schema()).map_err(|e| failed(&e))?;
        emit(&self.pending, &order, SPILL_ROWS, |batch| {
            writer.write(&batch).map(|()| true).map_err(|e| failed(&e))
        })?;
        writer.finish().map_err(|e| failed(&e))?;
        self.spilled.push(path);
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(())
    }
}

impl Drop for SortedRuns {
    fn drop(&mut self) {
        for path in &self.spilled {
            let _ = std::fs::remove_file(path);
        }
        let _ = std::fs::remove_dir(&self.spill_dir);
    }
}

fn converter(schema: &SchemaRef) -> Result<RowConverter, String> {
    let fields = SORT_COLUMNS
        .iter()
        .map(|name| {
            let field =
                schema.field_with_name(name).map_err(|e| format!("rows to sort have no {name}: {e}"))?;
            let options = SortOptions { descending: false, nulls_first: true };
            Ok(SortField::new_with_options(field.data_type().clone(), options))
        })
        .collect::<Result<Vec<_>, String>>()?;
    RowConverter::new(fields).map_err(|e| format!("cannot build the sort keys: {e}"))
}

fn keys(converter: &RowConverter, batch: &RecordBatch) -> Result<Rows, String> {
    let columns: Vec<_> =
        SORT_COLUMNS.iter().map(|name| batch.column_by_name(name).expect("checked").clone()).collect();
    converter.convert_columns(&columns).map_err(|e| format!("cannot compute sort keys: {e}"))
}

/// `(batch, row)` of every row of `batches`, sorted by key; equal keys keep arrival order.
fn sorted_order(converter: &RowConverter, batches: &[RecordBatch]) -> Result<Vec<(usize, usize)>, String> {
    let keys = batches.iter().map(|b| keys(converter, b)).collect::<Result<Vec<Rows>, String>>()?;
    let mut order: Vec<(usize, usize)> = batches
        .iter()
        .enumerate()
        .flat_map(|(b, batch)| (0..batch.num_rows()).map(move |r| (b, r)))
        .collect();
    order.sort_by(|x, y| keys[x.0].row(x.1).cmp(&keys[y.0].row(y.1)));
    Ok(order)
}

/// Gathers the rows of `order` from `batches` in chunks of `chunk_rows` and hands them out.
fn emit(
    batches: &[RecordBatch],
    order: &[(usize, usize)],
    chunk_rows: usize,
    mut each: impl FnMut(RecordBatch) -> Result<bool, String>,
) -> Result<u64, String> {
    let sources: Vec<&RecordBatch> = batches.iter().collect();
    let mut rows = 0;
    for chunk in order.chunks(chunk_rows) {
        let batch = interleave_record_batch(&sources, chunk)
            .map_err(|e| format!("cannot gather sorted rows: {e}"))?;
        rows += batch.num_rows() as u64;
        if !each(batch)? {
            break;
        }
    }
    Ok(rows)
}

/// One spilled run being merged: its current batch, that batch's keys and the next row.
struct Cursor {
    reader: StreamReader<BufReader<File>>,
    batch: RecordBatch,
    keys: Rows,
    next: usize,
}

impl Cursor {
    /// Moves to the run's next non-empty batch; `false` at the end of the run.
    fn advance(&mut self, converter: &RowConverter) -> Result<bool, String> {
        for batch in self.reader.by_ref() {
            let batch = batch.map_err(|e| format!("cannot read a spilled run: {e}"))?;
            if batch.num_rows() > 0 {
                self.keys = keys(converter, &batch)?;
                self.batch = batch;
                self.next = 0;
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// k-way merge of the spilled runs: the smallest current row of all runs goes next (the
/// earliest run on ties, which keeps arrival order).
fn merge(
    converter: &RowConverter,
    runs: &[PathBuf],
    each: &mut impl FnMut(RecordBatch) -> bool,
) -> Result<u64, String> {
    let mut cursors = Vec::with_capacity(runs.len());
    for path in runs {
        let file =
            File::open(path).map_err(|e| format!("cannot open spilled run {}: {e}", path.display()))?;
        let reader = StreamReader::try_new(BufReader::new(file), None)
            .map_err(|e| format!("cannot read spilled run {}: {e}", path.display()))?;
        let schema = reader.schema();
        let mut cursor = Cursor {
            reader,
            batch: RecordBatch::new_empty(schema.clone()),
            keys: keys(converter, &RecordBatch::new_empty(schema))?,
            next: 0,
        };
        if cursor.advance(converter)? {
            cursors.push(cursor);
        }
    }
    let mut live: Vec<usize> = (0..cursors.len()).collect();
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(OUT_ROWS);
    let mut rows = 0u64;
    let mut flush =
        |cursors: &[Cursor], out: &mut Vec<(usize, usize)>, rows: &mut u64| -> Result<bool, String> {
            if out.is_empty() {
                return Ok(true);
            }
            let sources: Vec<&RecordBatch> = cursors.iter().map(|c| &c.batch).collect();
            let batch = interleave_record_batch(&sources, out)
                .map_err(|e| format!("cannot merge sorted runs: {e}"))?;
            out.clear();
            *rows += batch.num_rows() as u64;
            Ok(each(batch))
        };
    while !live.is_empty() {
        let (slot, &run) = live
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| {
                let (a, b) = (&cursors[**a], &cursors[**b]);
                a.keys.row(a.next).cmp(&b.keys.row(b.next))
            })
            .expect("live is not empty");
        out.push((run, cursors[run].next));
        cursors[run].next += 1;
        let exhausted = cursors[run].next == cursors[run].batch.num_rows();
        if out.len() == OUT_ROWS || exhausted {
            // Before the run moves to its next batch, which `out` may not refer to.
            if !flush(&cursors, &mut out, &mut rows)? {
                return Ok(rows);
            }
        }
        if exhausted && !cursors[run].advance(converter)? {
            live.remove(slot);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Array, StringArray, TimestampMicrosecondArray, UInt32Array};
    use arrow_schema::{DataType, Field, Schema, TimeUnit};

    use super::*;

    /// A batch of (service, timestamp, id) rows.
    fn batch(rows: &[(Option<&str>, i64, u32)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("service_name", DataType::Utf8, true),
            Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())), false),
            Field::new("id", DataType::UInt32, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
                Arc::new(
                    TimestampMicrosecondArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())
                        .with_timezone("+00:00"),
                ),
                Arc::new(UInt32Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    /// Pseudo-random rows: a few services, timestamps in a small range (many ties).
    fn rows(n: u32, seed: u64) -> Vec<(Option<&'static str>, i64, u32)> {
        const SERVICES: [Option<&str>; 4] = [Some("web"), Some("db"), None, Some("api")];
        let mut x = seed;
        (0..n)
            .map(|id| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (SERVICES[(x >> 33) as usize % 4], ((x >> 40) % 500) as i64, id)
            })
            .collect()
    }

    fn sorted(runs: SortedRuns) -> (Vec<(Option<String>, i64, u32)>, usize) {
        let mut out = Vec::new();
        let mut batches = 0;
        let n = runs
            .finish(|b| {
                batches += 1;
                let s = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                let t = b.column(1).as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
                let i = b.column(2).as_any().downcast_ref::<UInt32Array>().unwrap();
                for r in 0..b.num_rows() {
                    out.push((s.is_valid(r).then(|| s.value(r).to_string()), t.value(r), i.value(r)));
                }
                true
            })
            .unwrap();
        assert_eq!(n as usize, out.len());
        (out, batches)
    }

    fn expected(input: &[(Option<&str>, i64, u32)]) -> Vec<(Option<String>, i64, u32)> {
        let mut all: Vec<_> = input.iter().map(|(s, t, i)| (s.map(String::from), *t, *i)).collect();
        // Stable: equal keys stay in arrival (id) order; None sorts first.
        all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        all
    }

    #[test]
    fn one_run_in_memory_comes_out_sorted_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let input = rows(5_000, 1);
        let mut runs = SortedRuns::new(dir.path().join("spill"), u64::MAX);
        for chunk in input.chunks(700) {
            runs.push(batch(chunk)).unwrap();
        }
        let (out, _) = sorted(runs);
        assert_eq!(out, expected(&input));
        assert!(!dir.path().join("spill").exists(), "nothing spilled");
    }

    #[test]
    fn many_spilled_runs_merge_into_every_row_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join("spill");
        let input = rows(20_000, 7);
        let mut runs = SortedRuns::new(spill.clone(), 64 << 10);
        for chunk in input.chunks(900) {
            runs.push(batch(chunk)).unwrap();
        }
        assert!(runs.spilled.len() >= 4, "{} runs spilled", runs.spilled.len());
        let (out, batches) = sorted(runs);
        assert_eq!(out.len(), 20_000);
        assert_eq!(out, expected(&input), "merged in key order, ties in arrival order");
        assert!(batches >= 3, "{batches} batches");
        assert!(!spill.exists(), "spill files removed");
    }

    #[test]
    fn nothing_pushed_hands_out_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs = SortedRuns::new(dir.path().join("s"), 1);
        runs.push(batch(&[])).unwrap();
        assert_eq!(sorted(runs).0, vec![]);
    }
}
