//! Rows of Arrow `RecordBatch`es sorted by a few key columns in bounded memory: sorted runs
//! spilled to disk as Arrow IPC files, then a k-way merge.
//!
//! ```text
//!  push(batch) ... until the run's batches hold run_bytes of Arrow memory
//!      --> sort the run's rows by key --> write them in order, SPILL_ROWS per batch (run-N.arrow)
//!  finish(each): nothing spilled --> the one run sorted in memory
//!                runs spilled    --> the last run spilled too, then a k-way merge of the files,
//!                                    each read batch by batch
//!  --> batches of at most OUT_ROWS rows of the schema
//! ```
//!
//! Rows come out ordered ascending by the sort columns in turn (nulls first, strings by their
//! bytes), ties in push order; every row pushed comes out exactly once, unchanged. Memory: the
//! batches of one run (plus its keys while it is sorted); when merging, one batch and its keys per
//! run and the output batch being gathered. The spill files are removed when the sorter is
//! dropped (`finish` drops it), and the spill directory too if the sorter created it.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    fs::{self, File},
    io::{BufReader, BufWriter},
    path::{Path, PathBuf},
};

use arrow_array::{ArrayRef, RecordBatch};
use arrow_ipc::{reader::FileReader, writer::FileWriter};
use arrow_row::{OwnedRow, RowConverter, Rows, SortField};
use arrow_schema::{DataType, SchemaRef, SortOptions, TimeUnit};
use arrow_select::interleave::interleave_record_batch;

/// Rows per batch handed out.
pub const OUT_ROWS: usize = 2048;
/// Rows per batch of a spilled run. The merge holds a batch (or two) of every run at once, and
/// spans or data points with their attributes take kilobytes a row: with 2,048-row batches the
/// embedded appender peaked at 467-475 MiB on spans, with 256 at 258 MiB
/// (bench/compare/signals_appender.py).
const SPILL_ROWS: usize = 256;

/// Batches pushed in any order, handed out as sorted rows (see the module docs). After an error,
/// drop it: the run being spilled may be lost.
pub struct SortedBatches {
    schema: SchemaRef,
    /// Indices of the sort columns in `schema`, in sort order.
    key_columns: Vec<usize>,
    converter: RowConverter,
    spill_dir: PathBuf,
    /// Whether the first spill created `spill_dir` (then dropping removes it).
    created_dir: bool,
    run_bytes: u64,
    /// The run being filled, and its Arrow memory.
    run: Vec<RecordBatch>,
    run_memory: u64,
    /// Sorted runs written so far, in push order.
    spilled: Vec<PathBuf>,
    rows: u64,
}

impl SortedBatches {
    /// `sort_columns`: names of columns in `schema`, each Utf8 or Timestamp(Microsecond, _) or Int64; rows are
    /// ordered ascending by them in turn, nulls first, strings by their bytes; ties keep push order.
    /// A run is sorted and spilled to a file under `spill_dir` (created on the first spill) once the
    /// Arrow memory of its batches (`RecordBatch::get_array_memory_size`) reaches `run_bytes`.
    /// Errors (a missing column) name the column.
    pub fn new(
        schema: SchemaRef,
        sort_columns: &[&str],
        spill_dir: PathBuf,
        run_bytes: u64,
    ) -> Result<Self, String> {
        if sort_columns.is_empty() {
            return Err("no sort columns".to_string());
        }
        let mut key_columns = Vec::with_capacity(sort_columns.len());
        let mut fields = Vec::with_capacity(sort_columns.len());
        for name in sort_columns {
            let (index, field) = schema
                .column_with_name(name)
                .ok_or_else(|| format!("no sort column {name} in the schema"))?;
            match field.data_type() {
                DataType::Utf8 | DataType::Int64 | DataType::Timestamp(TimeUnit::Microsecond, _) => {}
                other => {
                    return Err(format!(
                        "sort column {name} is {other}, not Utf8, Int64 or Timestamp(Microsecond)"
                    ));
                }
            }
            key_columns.push(index);
            let options = SortOptions { descending: false, nulls_first: true };
            fields.push(SortField::new_with_options(field.data_type().clone(), options));
        }
        let converter =
            RowConverter::new(fields).map_err(|e| format!("cannot sort by {sort_columns:?}: {e}"))?;
        Ok(Self {
            schema,
            key_columns,
            converter,
            spill_dir,
            created_dir: false,
            run_bytes,
            run: Vec::new(),
            run_memory: 0,
            spilled: Vec::new(),
            rows: 0,
        })
    }

    /// Adds rows (a batch of `schema`; empty batches are ignored).
    pub fn push(&mut self, batch: RecordBatch) -> Result<(), String> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let fields = self.schema.fields();
        if batch.num_columns() != fields.len() {
            return Err(format!("a batch of {} columns, not {}", batch.num_columns(), fields.len()));
        }
        for (field, column) in fields.iter().zip(batch.columns()) {
            if column.data_type() != field.data_type() {
                return Err(format!(
                    "column {} of a batch is {}, not {}",
                    field.name(),
                    column.data_type(),
                    field.data_type()
                ));
            }
        }
        self.rows += batch.num_rows() as u64;
        self.run_memory += batch.get_array_memory_size() as u64;
        self.run.push(batch);
        if self.run_memory >= self.run_bytes {
            self.spill()?;
        }
        Ok(())
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Hands every row out to `each` in order, in batches of at most OUT_ROWS rows (of `schema`); `each`
    /// returning false stops (no more calls). Returns the rows handed out.
    /// Nothing spilled: the one run is sorted in memory. Otherwise the last run is spilled too and all
    /// runs are merged, reading each run file batch by batch (memory: one batch per run plus the output).
    pub fn finish(mut self, mut each: impl FnMut(RecordBatch) -> bool) -> Result<u64, String> {
        if self.spilled.is_empty() {
            let run = std::mem::take(&mut self.run);
            let order = self.sorted_order(&run)?;
            let mut handed_out = 0;
            for chunk in order.chunks(OUT_ROWS) {
                let batch = self.gather_from_run(&run, chunk)?;
                handed_out += batch.num_rows() as u64;
                if !each(batch) {
                    break;
                }
            }
            return Ok(handed_out);
        }
        if !self.run.is_empty() {
            self.spill()?;
        }
        self.merge(each)
    }

    /// The run's rows, as (batch, row) in the run, in key order, ties in push order.
    fn sorted_order(&self, run: &[RecordBatch]) -> Result<Vec<(usize, usize)>, String> {
        let total = run.iter().map(RecordBatch::num_rows).sum();
        let mut keys = self.converter.empty_rows(total, 0);
        let mut positions = Vec::with_capacity(total);
        for (b, batch) in run.iter().enumerate() {
            self.converter
                .append(&mut keys, &self.keys_of(batch))
                .map_err(|e| format!("cannot sort: {e}"))?;
            positions.extend((0..batch.num_rows()).map(|row| (b, row)));
        }
        // `i` is the push sequence of a row: comparing it too makes the order stable.
        let mut sequence: Vec<usize> = (0..total).collect();
        sequence.sort_unstable_by(|&a, &b| keys.row(a).cmp(&keys.row(b)).then(a.cmp(&b)));
        Ok(sequence.into_iter().map(|i| positions[i]).collect())
    }

    fn keys_of(&self, batch: &RecordBatch) -> Vec<ArrayRef> {
        self.key_columns.iter().map(|&c| batch.column(c).clone()).collect()
    }

    /// The batch of the rows `chunk` points to in `run`, taken only from the batches it needs.
    fn gather_from_run(&self, run: &[RecordBatch], chunk: &[(usize, usize)]) -> Result<RecordBatch, String> {
        let mut sources = Vec::new();
        let mut slots = HashMap::new();
        let indices: Vec<(usize, usize)> = chunk
            .iter()
            .map(|&(b, row)| {
                let slot = *slots.entry(b).or_insert_with(|| {
                    sources.push(&run[b]);
                    sources.len() - 1
                });
                (slot, row)
            })
            .collect();
        gather(&self.schema, &sources, &indices)
    }

    /// Sorts the run in memory and writes it to the next run file.
    fn spill(&mut self) -> Result<(), String> {
        let run = std::mem::take(&mut self.run);
        self.run_memory = 0;
        if !self.spill_dir.exists() {
            fs::create_dir_all(&self.spill_dir).map_err(|e| {
                format!("cannot create the spill directory {}: {e}", self.spill_dir.display())
            })?;
            self.created_dir = true;
        }
        let path = self.spill_dir.join(format!("run-{}.arrow", self.spilled.len()));
        let order = self.sorted_order(&run)?;
        let file = File::create(&path).map_err(|e| cannot_write(&path, e))?;
        // Listed before it is written, so that dropping removes even a partial file.
        self.spilled.push(path.clone());
        let mut writer =
            FileWriter::try_new(BufWriter::new(file), &self.schema).map_err(|e| cannot_write(&path, e))?;
        for chunk in order.chunks(SPILL_ROWS) {
            let batch = self.gather_from_run(&run, chunk)?;
            writer.write(&batch).map_err(|e| cannot_write(&path, e))?;
        }
        writer.finish().map_err(|e| cannot_write(&path, e))?;
        Ok(())
    }

    /// K-way merge of the spilled runs (see `finish`).
    fn merge(&self, mut each: impl FnMut(RecordBatch) -> bool) -> Result<u64, String> {
        let mut cursors = Vec::with_capacity(self.spilled.len());
        for path in &self.spilled {
            cursors.push(Cursor::open(path, self)?);
        }
        // The next row of each run not yet handed out, by key, then run (earlier pushes first).
        let mut heap: BinaryHeap<Reverse<(OwnedRow, usize)>> = BinaryHeap::with_capacity(cursors.len());
        for (i, cursor) in cursors.iter().enumerate() {
            if let Some(key) = cursor.key() {
                heap.push(Reverse((key, i)));
            }
        }
        // The output batch being gathered: the batches its rows come from, and (source, row) indices.
        let mut sources: Vec<RecordBatch> = Vec::new();
        let mut indices: Vec<(usize, usize)> = Vec::with_capacity(OUT_ROWS);
        let mut handed_out = 0;
        while let Some(Reverse((_, i))) = heap.pop() {
            let cursor = &mut cursors[i];
            let slot = match cursor.slot {
                Some(slot) => slot,
                None => {
                    sources.push(cursor.batch.clone());
                    cursor.slot = Some(sources.len() - 1);
                    sources.len() - 1
                }
            };
            indices.push((slot, cursor.row));
            cursor.advance(self)?;
            if let Some(key) = cursor.key() {
                heap.push(Reverse((key, i)));
            }
            if indices.len() == OUT_ROWS {
                let batch = gather(&self.schema, &sources.iter().collect::<Vec<_>>(), &indices)?;
                sources.clear();
                indices.clear();
                cursors.iter_mut().for_each(|cursor| cursor.slot = None);
                handed_out += batch.num_rows() as u64;
                if !each(batch) {
                    return Ok(handed_out);
                }
            }
        }
        if !indices.is_empty() {
            let batch = gather(&self.schema, &sources.iter().collect::<Vec<_>>(), &indices)?;
            handed_out += batch.num_rows() as u64;
            each(batch);
        }
        Ok(handed_out)
    }
}

impl Drop for SortedBatches {
    fn drop(&mut self) {
        for path in &self.spilled {
            let _ = fs::remove_file(path);
        }
        if self.created_dir {
            // Fails, and leaves it, if something else was put there.
            let _ = fs::remove_dir(&self.spill_dir);
        }
    }
}

/// A spilled run being merged: its current batch, the batch's keys, and the next row.
struct Cursor {
    path: PathBuf,
    reader: FileReader<BufReader<File>>,
    batch: RecordBatch,
    keys: Rows,
    row: usize,
    /// Where `batch` is in the sources of the output batch being gathered, once it is there.
    slot: Option<usize>,
}

impl Cursor {
    fn open(path: &Path, sorter: &SortedBatches) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| cannot_read(path, e))?;
        let reader = FileReader::try_new_buffered(file, None).map_err(|e| cannot_read(path, e))?;
        let mut cursor = Self {
            path: path.to_path_buf(),
            reader,
            batch: RecordBatch::new_empty(sorter.schema.clone()),
            keys: sorter.converter.empty_rows(0, 0),
            row: 0,
            slot: None,
        };
        cursor.next_batch(sorter)?;
        Ok(cursor)
    }

    /// The key of the next row, or None once the run is merged.
    fn key(&self) -> Option<OwnedRow> {
        (self.row < self.batch.num_rows()).then(|| self.keys.row(self.row).owned())
    }

    /// Moves past the current row, reading the next batch at the end of this one.
    fn advance(&mut self, sorter: &SortedBatches) -> Result<(), String> {
        self.row += 1;
        if self.row == self.batch.num_rows() {
            self.next_batch(sorter)?;
        }
        Ok(())
    }

    /// Reads the next non-empty batch; at the end of the file, the cursor is left empty.
    fn next_batch(&mut self, sorter: &SortedBatches) -> Result<(), String> {
        self.row = 0;
        self.slot = None;
        for batch in self.reader.by_ref() {
            let batch = batch.map_err(|e| cannot_read(&self.path, e))?;
            if batch.num_rows() > 0 {
                self.keys = sorter
                    .converter
                    .convert_columns(&sorter.keys_of(&batch))
                    .map_err(|e| format!("cannot sort run {}: {e}", self.path.display()))?;
                self.batch = batch;
                return Ok(());
            }
        }
        self.batch = RecordBatch::new_empty(sorter.schema.clone());
        self.keys = sorter.converter.empty_rows(0, 0);
        Ok(())
    }
}

/// The rows `indices` point to, as (source, row), as a batch of `schema`.
fn gather(
    schema: &SchemaRef,
    sources: &[&RecordBatch],
    indices: &[(usize, usize)],
) -> Result<RecordBatch, String> {
    let batch =
        interleave_record_batch(sources, indices).map_err(|e| format!("cannot gather sorted rows: {e}"))?;
    // The sources may carry another schema's metadata: hand out `schema` itself.
    RecordBatch::try_new(schema.clone(), batch.columns().to_vec())
        .map_err(|e| format!("cannot gather sorted rows: {e}"))
}

fn cannot_write(path: &Path, e: impl std::fmt::Display) -> String {
    format!("cannot write sorted run {}: {e}", path.display())
}

fn cannot_read(path: &Path, e: impl std::fmt::Display) -> String {
    format!("cannot read sorted run {}: {e}", path.display())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{
        Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
        builder::{
            ArrayBuilder, Int64Builder, ListBuilder, MapBuilder, MapFieldNames, StringBuilder, StructBuilder,
            TimestampMicrosecondBuilder,
        },
    };
    use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
    use arrow_select::{concat::concat_batches, take::take_record_batch};

    use super::{OUT_ROWS, SortedBatches};

    const KEYS: [&str; 3] = ["service_name", "span_name", "timestamp"];

    /// A seeded linear congruential generator.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    fn timestamp_type() -> DataType {
        DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
    }

    fn map_type() -> DataType {
        let entries = Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, true),
        ]);
        DataType::Map(Arc::new(Field::new("key_value", DataType::Struct(entries), false)), false)
    }

    fn event_fields() -> Fields {
        Fields::from(vec![
            Field::new("timestamp", timestamp_type(), true),
            Field::new("name", DataType::Utf8, true),
            Field::new("attributes", map_type(), true),
        ])
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("service_name", DataType::Utf8, true),
            Field::new("span_name", DataType::Utf8, true),
            Field::new("timestamp", timestamp_type(), false),
            Field::new("attrs", map_type(), true),
            Field::new(
                "events",
                DataType::List(Arc::new(Field::new("item", DataType::Struct(event_fields()), true))),
                true,
            ),
            Field::new("buckets", DataType::List(Arc::new(Field::new("item", DataType::Int64, true))), true),
            Field::new("body", DataType::Utf8, true),
        ]))
    }

    fn map_builder() -> MapBuilder<StringBuilder, StringBuilder> {
        let names = MapFieldNames { entry: "key_value".into(), key: "key".into(), value: "value".into() };
        MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new())
    }

    /// A null map, or a few entries, some values null.
    fn append_map(rng: &mut Lcg, map: &mut MapBuilder<StringBuilder, StringBuilder>) {
        if rng.below(6) == 0 {
            map.append(false).unwrap();
            return;
        }
        for _ in 0..rng.below(4) {
            map.keys().append_value(format!("k{}", rng.below(5)));
            match rng.below(4) {
                0 => map.values().append_null(),
                v => map.values().append_value(format!("v{v}")),
            }
        }
        map.append(true).unwrap();
    }

    /// `rows` random rows, the body of each its push sequence number, from `first`. The keys have
    /// many ties and nulls, and "" (which sorts after null).
    fn random_batch(rng: &mut Lcg, first: usize, rows: usize) -> RecordBatch {
        const SERVICES: [&str; 4] = ["api", "", "db", "api-gateway"];
        const SPANS: [&str; 3] = ["GET /", "query", "GET"];
        let mut service = StringBuilder::new();
        let mut span = StringBuilder::new();
        let mut timestamp = TimestampMicrosecondBuilder::new().with_timezone("+00:00");
        let mut attrs = map_builder();
        let event_builders: Vec<Box<dyn ArrayBuilder>> = vec![
            Box::new(TimestampMicrosecondBuilder::new().with_timezone("+00:00")),
            Box::new(StringBuilder::new()),
            Box::new(map_builder()),
        ];
        let mut events = ListBuilder::new(StructBuilder::new(event_fields(), event_builders));
        let mut buckets = ListBuilder::new(Int64Builder::new());
        let mut body = StringBuilder::new();
        for seq in first..first + rows {
            match rng.below(5) {
                0 => service.append_null(),
                _ => service.append_value(SERVICES[rng.below(4) as usize]),
            }
            match rng.below(4) {
                0 => span.append_null(),
                _ => span.append_value(SPANS[rng.below(3) as usize]),
            }
            timestamp.append_value(rng.below(40) as i64 - 20);
            append_map(rng, &mut attrs);
            if rng.below(5) == 0 {
                events.append(false);
            } else {
                for _ in 0..rng.below(3) {
                    let event = events.values();
                    let valid = rng.below(6) != 0;
                    let ts = event.field_builder::<TimestampMicrosecondBuilder>(0).unwrap();
                    ts.append_value(rng.below(1000) as i64);
                    let name = event.field_builder::<StringBuilder>(1).unwrap();
                    name.append_value(format!("event {}", rng.below(3)));
                    append_map(
                        rng,
                        event.field_builder::<MapBuilder<StringBuilder, StringBuilder>>(2).unwrap(),
                    );
                    event.append(valid);
                }
                events.append(true);
            }
            if rng.below(4) == 0 {
                buckets.append(false);
            } else {
                for _ in 0..rng.below(5) {
                    match rng.below(5) {
                        0 => buckets.values().append_null(),
                        v => buckets.values().append_value(v as i64 * 10),
                    }
                }
                buckets.append(true);
            }
            body.append_value(seq.to_string());
        }
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(service.finish()),
                Arc::new(span.finish()),
                Arc::new(timestamp.finish()),
                Arc::new(attrs.finish()),
                Arc::new(events.finish()),
                Arc::new(buckets.finish()),
                Arc::new(body.finish()),
            ],
        )
        .unwrap()
    }

    /// Random batches of 0 to 700 rows (about `batches` * 350 rows in all).
    fn random_batches(seed: u64, batches: usize) -> Vec<RecordBatch> {
        let mut rng = Lcg(seed);
        let mut first = 0;
        (0..batches)
            .map(|_| {
                let rows = rng.below(701) as usize;
                let batch = random_batch(&mut rng, first, rows);
                first += rows;
                batch
            })
            .collect()
    }

    /// The inputs, stably sorted the naive way.
    fn reference(inputs: &[RecordBatch]) -> RecordBatch {
        let all = concat_batches(&schema(), inputs).unwrap();
        let strings = |c: usize| all.column(c).as_any().downcast_ref::<StringArray>().unwrap().clone();
        let (service, span) = (strings(0), strings(1));
        let timestamp = all.column(2).as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
        let key = |i: usize| {
            let string = |a: &StringArray| a.is_valid(i).then(|| a.value(i).to_string());
            (string(&service), string(&span), timestamp.value(i))
        };
        let mut order: Vec<u32> = (0..all.num_rows() as u32).collect();
        order.sort_by_key(|&i| key(i as usize));
        take_record_batch(&all, &UInt32Array::from(order)).unwrap()
    }

    /// Pushes `inputs` and collects what `finish` hands out; `during` sees each batch handed out.
    fn sort(
        inputs: &[RecordBatch],
        spill_dir: std::path::PathBuf,
        run_bytes: u64,
        mut during: impl FnMut(&RecordBatch),
    ) -> (u64, Vec<RecordBatch>) {
        let mut sorter = SortedBatches::new(schema(), &KEYS, spill_dir, run_bytes).unwrap();
        for batch in inputs {
            sorter.push(batch.clone()).unwrap();
        }
        assert_eq!(sorter.rows(), inputs.iter().map(|b| b.num_rows() as u64).sum::<u64>());
        let mut out = Vec::new();
        let handed_out = sorter
            .finish(|batch| {
                during(&batch);
                out.push(batch);
                true
            })
            .unwrap();
        (handed_out, out)
    }

    #[test]
    fn sorts_in_memory_like_a_stable_sort() {
        let inputs = random_batches(1, 30);
        let expected = reference(&inputs);
        assert!(expected.num_rows() > 3 * OUT_ROWS);
        let dir = tempfile::tempdir().unwrap();
        let spill_dir = dir.path().join("spill");
        let (handed_out, out) = sort(&inputs, spill_dir.clone(), u64::MAX, |_| assert!(!spill_dir.exists()));
        assert_eq!(handed_out, expected.num_rows() as u64);
        assert!(out.iter().all(|b| b.num_rows() <= OUT_ROWS));
        assert_eq!(concat_batches(&schema(), &out).unwrap(), expected);
        assert!(!spill_dir.exists());
    }

    #[test]
    fn merges_spilled_runs_like_a_stable_sort() {
        let inputs = random_batches(2, 40);
        let expected = reference(&inputs);
        let memory: usize = inputs.iter().map(RecordBatch::get_array_memory_size).sum();
        let dir = tempfile::tempdir().unwrap();
        let spill_dir = dir.path().join("spill");
        let mut calls = 0;
        let (handed_out, out) = sort(&inputs, spill_dir.clone(), memory as u64 / 6, |_| {
            if calls == 0 {
                let files = std::fs::read_dir(&spill_dir).unwrap().count();
                assert!(files >= 4, "{files} spill files");
                assert!(spill_dir.join("run-0.arrow").exists());
            }
            calls += 1;
        });
        assert_eq!(handed_out, expected.num_rows() as u64);
        assert!(out.iter().all(|b| b.num_rows() <= OUT_ROWS));
        assert_eq!(concat_batches(&schema(), &out).unwrap(), expected);
        assert!(!spill_dir.exists());
        assert!(dir.path().exists());
    }

    #[test]
    fn stops_when_each_returns_false() {
        let inputs = random_batches(3, 30);
        let rows: usize = inputs.iter().map(RecordBatch::num_rows).sum();
        assert!(rows > 3 * OUT_ROWS);
        let memory: usize = inputs.iter().map(RecordBatch::get_array_memory_size).sum();
        for run_bytes in [u64::MAX, memory as u64 / 5] {
            let dir = tempfile::tempdir().unwrap();
            let spill_dir = dir.path().join("spill");
            let mut sorter = SortedBatches::new(schema(), &KEYS, spill_dir.clone(), run_bytes).unwrap();
            for batch in &inputs {
                sorter.push(batch.clone()).unwrap();
            }
            let mut calls = 0;
            let handed_out = sorter
                .finish(|_| {
                    calls += 1;
                    calls < 2
                })
                .unwrap();
            assert_eq!((calls, handed_out), (2, 2 * OUT_ROWS as u64));
            assert!(!spill_dir.exists());
        }
    }

    #[test]
    fn nothing_pushed_hands_nothing_out() {
        let dir = tempfile::tempdir().unwrap();
        for run_bytes in [u64::MAX, 0] {
            let mut sorter =
                SortedBatches::new(schema(), &KEYS, dir.path().join("spill"), run_bytes).unwrap();
            sorter.push(RecordBatch::new_empty(schema())).unwrap();
            assert_eq!(sorter.rows(), 0);
            let mut calls = 0;
            assert_eq!(
                sorter
                    .finish(|_| {
                        calls += 1;
                        true
                    })
                    .unwrap(),
                0
            );
            assert_eq!(calls, 0);
            assert!(!dir.path().join("spill").exists());
        }
    }

    #[test]
    fn bad_sort_columns_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let error = |columns: &[&str]| {
            SortedBatches::new(schema(), columns, dir.path().to_path_buf(), 1 << 20).err().unwrap()
        };
        assert!(error(&["service_name", "no_such_column"]).contains("no_such_column"));
        assert!(error(&["attrs"]).contains("attrs"));
    }

    #[test]
    fn push_rejects_a_batch_of_another_schema() {
        let dir = tempfile::tempdir().unwrap();
        let mut sorter = SortedBatches::new(schema(), &KEYS, dir.path().to_path_buf(), 1 << 20).unwrap();
        let other = Arc::new(Schema::new(vec![Field::new("service_name", DataType::Utf8, true)]));
        let batch = RecordBatch::try_new(other, vec![Arc::new(StringArray::from(vec!["a"]))]).unwrap();
        assert!(sorter.push(batch).is_err());
    }
}
