//! Records in `service_name, timestamp` order in bounded memory: sorted runs of encoded
//! records, spilled, merged, and made rows once, on the way out.
//!
//! ```text
//!  push_request(OTLP bytes) --rows::wire::index_request--> contexts (resource + scope, once
//!      each per run) + one 32-byte entry per record (service, timestamp, where its bytes are)
//!  ... until the run's bytes reach run_bytes --> sort the entries --> spill the run: its
//!      records' bytes in order, each context written before the first record that needs it
//!      (run-N.bin)
//!  finish(each): one run, never spilled --> rows straight from the payloads in memory
//!                several runs           --> k-way merge of the spill files, read sequentially,
//!                                           and of the last run, still in memory
//!  --> rows::wire::RowWriter (each record decoded once, into the Arrow builders) --> batches
//! ```
//!
//! Rows come out ordered by `service_name` (nulls first, then by bytes) and `timestamp` (the
//! column's value), ties in push order; every record `check_record` accepts comes out exactly
//! once, with the rows `rows::to_rows` would give it (see `rows::wire`). Memory: one run (its
//! decompressed payloads, entries and contexts), a read buffer and the current context per
//! spilled run, one output batch. The spill files are removed when the runs are dropped.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    path::PathBuf,
};

use arrow_array::RecordBatch;

use crate::rows::{
    KafkaPosition,
    wire::{Context, RowWriter, index_request},
};

/// Rows per batch handed out. Each row carries its resource's and scope's attributes, so a
/// batch of real logs takes 1-3 KB per row: at 8192 rows the batches being built, queued and
/// written held 26 MiB at the peak of a flush on a Kafka backlog (a jemalloc heap profile).
const OUT_ROWS: usize = 2048;
/// Buffer of each spill file, writing or reading.
const SPILL_BUFFER: usize = 128 << 10;

/// One record of the run in memory.
#[derive(Debug, Clone, Copy)]
struct Entry {
    service: u32,
    timestamp: i64,
    payload: u32,
    context: u32,
    start: u32,
    len: u32,
}

/// Service names seen so far, numbered in order of appearance (0 is "no service name").
#[derive(Default)]
struct Services {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Services {
    fn id(&mut self, name: Option<&str>) -> u32 {
        let Some(name) = name else { return 0 };
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        self.names.push(name.to_string());
        let id = self.names.len() as u32;
        self.ids.insert(name.to_string(), id);
        id
    }

    /// The sort rank of every id: no name first, then names in byte order.
    fn ranks(&self) -> Vec<u32> {
        let mut by_name: Vec<u32> = (1..=self.names.len() as u32).collect();
        by_name.sort_by(|a, b| self.names[*a as usize - 1].cmp(&self.names[*b as usize - 1]));
        let mut ranks = vec![0; self.names.len() + 1];
        for (rank, id) in by_name.into_iter().enumerate() {
            ranks[id as usize] = rank as u32 + 1;
        }
        ranks
    }
}

/// The run being filled.
#[derive(Default)]
struct Run {
    payloads: Vec<(Vec<u8>, Option<KafkaPosition>)>,
    contexts: Vec<Context>,
    context_ids: HashMap<Context, u32>,
    entries: Vec<Entry>,
    bytes: u64,
}

/// Records pushed request by request in any order, handed out as sorted rows (see the module
/// docs).
pub struct SortedRuns {
    spill_dir: PathBuf,
    run_bytes: u64,
    run: Run,
    services: Services,
    spilled: Vec<PathBuf>,
    /// Reused by each push.
    scratch_contexts: Vec<Context>,
}

impl SortedRuns {
    /// Runs of about `run_bytes` of memory; spill files go under `spill_dir`, which is created
    /// when the first run spills and removed on drop.
    pub fn new(spill_dir: PathBuf, run_bytes: u64) -> Self {
        Self {
            spill_dir,
            run_bytes,
            run: Run::default(),
            services: Services::default(),
            spilled: Vec::new(),
            scratch_contexts: Vec::new(),
        }
    }

    /// Adds the records of one encoded `ExportLogsServiceRequest` (those `check_record`
    /// accepts); records without a time get `received_at_micros`.
    pub fn push_request(
        &mut self,
        request: Vec<u8>,
        source: Option<KafkaPosition>,
        received_at_micros: i64,
    ) -> Result<(), String> {
        if request.len() > u32::MAX as usize || self.run.payloads.len() >= u32::MAX as usize {
            return Err(format!("a batch of {} bytes is too large to sort", request.len()));
        }
        let payload = self.run.payloads.len() as u32;
        let first_entry = self.run.entries.len();
        self.scratch_contexts.clear();
        let entries = &mut self.run.entries;
        index_request(&request, received_at_micros, &mut self.scratch_contexts, |record| {
            entries.push(Entry {
                service: 0,
                timestamp: record.timestamp,
                payload,
                context: record.context as u32,
                start: record.bytes.start as u32,
                len: record.bytes.len() as u32,
            })
        })
        .map_err(|e| format!("does not decode: {e}"))?;
        // Contexts equal in content share one id in the run: fewer to spill and to switch.
        let mut local = Vec::with_capacity(self.scratch_contexts.len());
        for context in self.scratch_contexts.drain(..) {
            let service = self.services.id(context.service_name.as_deref());
            let id = match self.run.context_ids.get(&context) {
                Some(id) => *id,
                None => {
                    let id = self.run.contexts.len() as u32;
                    self.run.bytes += 2 * context.size() as u64;
                    self.run.context_ids.insert(context.clone(), id);
                    self.run.contexts.push(context);
                    id
                }
            };
            local.push((id, service));
        }
        for entry in &mut self.run.entries[first_entry..] {
            (entry.context, entry.service) = local[entry.context as usize];
        }
        self.run.bytes += request.len() as u64
            + ((self.run.entries.len() - first_entry) * std::mem::size_of::<Entry>()) as u64;
        self.run.payloads.push((request, source));
        if self.run.bytes >= self.run_bytes {
            self.spill()?;
        }
        Ok(())
    }

    /// Hands every row to `each` in order, in batches of up to [`OUT_ROWS`] rows; returns how many
    /// rows. Stops early, without an error, when `each` returns `false`.
    pub fn finish(mut self, mut each: impl FnMut(RecordBatch) -> bool) -> Result<u64, String> {
        let mut out = Output { writer: RowWriter::new(OUT_ROWS), rows: 0, each: &mut each, stopped: false };
        if self.spilled.is_empty() {
            let ranks = self.services.ranks();
            let run = std::mem::take(&mut self.run);
            for entry in sorted(&run.entries, &ranks) {
                let (payload, source) = &run.payloads[entry.payload as usize];
                let bytes = &payload[entry.start as usize..(entry.start + entry.len) as usize];
                if !out.append(&run.contexts[entry.context as usize], bytes, entry.timestamp, *source)? {
                    return Ok(out.rows);
                }
            }
            return out.finish();
        }
        // The last run is merged from memory, as the run after every spilled one.
        let ranks = self.services.ranks();
        let run = std::mem::take(&mut self.run);
        let mut in_memory = sorted(&run.entries, &ranks).peekable();
        let memory = self.spilled.len();
        let mut cursors = Vec::with_capacity(self.spilled.len());
        let mut heap = BinaryHeap::with_capacity(self.spilled.len() + 1);
        for path in &self.spilled {
            let file =
                File::open(path).map_err(|e| format!("cannot open spilled run {}: {e}", path.display()))?;
            let mut cursor = Cursor::new(BufReader::with_capacity(SPILL_BUFFER, file), path.clone());
            if cursor.advance()? {
                heap.push(Reverse((ranks[cursor.service as usize], cursor.timestamp, cursors.len())));
            }
            cursors.push(cursor);
        }
        if let Some(entry) = in_memory.peek() {
            heap.push(Reverse((ranks[entry.service as usize], entry.timestamp, memory)));
        }
        // The smallest current record of all runs goes next; the earliest run on ties, which
        // keeps push order.
        while let Some(Reverse((_, _, next))) = heap.pop() {
            if next == memory {
                let entry = in_memory.next().expect("peeked");
                let (payload, source) = &run.payloads[entry.payload as usize];
                let bytes = &payload[entry.start as usize..(entry.start + entry.len) as usize];
                if !out.append(&run.contexts[entry.context as usize], bytes, entry.timestamp, *source)? {
                    return Ok(out.rows);
                }
                if let Some(entry) = in_memory.peek() {
                    heap.push(Reverse((ranks[entry.service as usize], entry.timestamp, memory)));
                }
                continue;
            }
            let cursor = &mut cursors[next];
            if !out.append(&cursor.context, &cursor.record, cursor.timestamp, cursor.source)? {
                return Ok(out.rows);
            }
            if cursor.advance()? {
                heap.push(Reverse((ranks[cursor.service as usize], cursor.timestamp, next)));
            }
        }
        out.finish()
    }

    /// Writes the run in memory to a file in order and starts a new one.
    fn spill(&mut self) -> Result<(), String> {
        let run = std::mem::take(&mut self.run);
        let ranks = self.services.ranks();
        std::fs::create_dir_all(&self.spill_dir)
            .map_err(|e| format!("cannot create the spill directory {}: {e}", self.spill_dir.display()))?;
        let path = self.spill_dir.join(format!("run-{}.bin", self.spilled.len()));
        let failed = |e: std::io::Error| format!("cannot spill a sorted run to {}: {e}", path.display());
        let mut out = BufWriter::with_capacity(SPILL_BUFFER, File::create(&path).map_err(failed)?);
        let mut current = None;
        for entry in sorted(&run.entries, &ranks) {
            let (payload, source) = &run.payloads[entry.payload as usize];
            let switch = current != Some(entry.context);
            out.write_all(&[u8::from(switch)]).map_err(failed)?;
            if switch {
                write_context(&mut out, &run.contexts[entry.context as usize]).map_err(failed)?;
                current = Some(entry.context);
            }
            let (partition, offset) = source.map_or((None, 0), |s| (Some(s.partition), s.offset));
            out.write_all(&entry.service.to_le_bytes()).map_err(failed)?;
            out.write_all(&entry.timestamp.to_le_bytes()).map_err(failed)?;
            out.write_all(&[u8::from(partition.is_some())]).map_err(failed)?;
            out.write_all(&partition.unwrap_or(0).to_le_bytes()).map_err(failed)?;
            out.write_all(&offset.to_le_bytes()).map_err(failed)?;
            out.write_all(&entry.len.to_le_bytes()).map_err(failed)?;
            out.write_all(&payload[entry.start as usize..(entry.start + entry.len) as usize])
                .map_err(failed)?;
        }
        out.into_inner().map_err(|e| failed(e.into_error()))?;
        self.spilled.push(path);
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

/// The entries in key order, ties in push order.
fn sorted<'a>(entries: &'a [Entry], ranks: &[u32]) -> impl Iterator<Item = &'a Entry> + 'a {
    let mut order: Vec<(u32, i64, u32)> =
        entries.iter().enumerate().map(|(i, e)| (ranks[e.service as usize], e.timestamp, i as u32)).collect();
    order.sort_unstable();
    order.into_iter().map(move |(_, _, i)| &entries[i as usize])
}

/// Rows being gathered into batches for `each`.
struct Output<'a, F: FnMut(RecordBatch) -> bool> {
    writer: RowWriter,
    rows: u64,
    each: &'a mut F,
    stopped: bool,
}

impl<F: FnMut(RecordBatch) -> bool> Output<'_, F> {
    /// Appends one row; `false` once `each` asked to stop.
    fn append(
        &mut self,
        context: &Context,
        record: &[u8],
        timestamp: i64,
        source: Option<KafkaPosition>,
    ) -> Result<bool, String> {
        self.writer
            .append(context, record, timestamp, source)
            .map_err(|e| format!("a staged record does not decode: {e}"))?;
        if self.writer.len() == OUT_ROWS {
            return Ok(self.hand_out());
        }
        Ok(true)
    }

    fn hand_out(&mut self) -> bool {
        let batch = self.writer.finish();
        self.rows += batch.num_rows() as u64;
        self.stopped = !(self.each)(batch);
        !self.stopped
    }

    fn finish(mut self) -> Result<u64, String> {
        if !self.writer.is_empty() {
            self.hand_out();
        }
        Ok(self.rows)
    }
}

/// One spilled run being merged: its current record and the context it belongs to.
struct Cursor {
    reader: BufReader<File>,
    path: PathBuf,
    context: Context,
    service: u32,
    timestamp: i64,
    source: Option<KafkaPosition>,
    record: Vec<u8>,
}

impl Cursor {
    fn new(reader: BufReader<File>, path: PathBuf) -> Self {
        Self {
            reader,
            path,
            context: Context::default(),
            service: 0,
            timestamp: 0,
            source: None,
            record: Vec::new(),
        }
    }

    /// Reads the run's next record; `false` at the end of the run.
    fn advance(&mut self) -> Result<bool, String> {
        let failed = |e: std::io::Error| format!("cannot read spilled run {}: {e}", self.path.display());
        let mut flag = [0u8; 1];
        match self.reader.read(&mut flag) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(e) => return Err(failed(e)),
        }
        if flag[0] == 1 {
            self.context = read_context(&mut self.reader).map_err(failed)?;
        }
        let mut fixed = [0u8; 4 + 8 + 1 + 4 + 8 + 4];
        self.reader.read_exact(&mut fixed).map_err(failed)?;
        let u32_at = |i: usize| u32::from_le_bytes(fixed[i..i + 4].try_into().expect("4 bytes"));
        let i64_at = |i: usize| i64::from_le_bytes(fixed[i..i + 8].try_into().expect("8 bytes"));
        self.service = u32_at(0);
        self.timestamp = i64_at(4);
        self.source =
            (fixed[12] == 1).then(|| KafkaPosition { partition: u32_at(13) as i32, offset: i64_at(17) });
        let len = u32_at(25) as usize;
        self.record.resize(len, 0);
        self.reader.read_exact(&mut self.record).map_err(failed)?;
        Ok(true)
    }
}

fn write_str(out: &mut impl Write, s: &str) -> std::io::Result<()> {
    out.write_all(&(s.len() as u32).to_le_bytes())?;
    out.write_all(s.as_bytes())
}

fn write_option(out: &mut impl Write, s: &Option<String>) -> std::io::Result<()> {
    out.write_all(&[u8::from(s.is_some())])?;
    write_str(out, s.as_deref().unwrap_or_default())
}

fn write_attributes(out: &mut impl Write, attributes: &[(String, String)]) -> std::io::Result<()> {
    out.write_all(&(attributes.len() as u32).to_le_bytes())?;
    for (k, v) in attributes {
        write_str(out, k)?;
        write_str(out, v)?;
    }
    Ok(())
}

fn write_context(out: &mut impl Write, c: &Context) -> std::io::Result<()> {
    write_option(out, &c.service_name)?;
    write_option(out, &c.deployment_environment)?;
    write_attributes(out, &c.resource_attributes)?;
    write_option(out, &c.resource_schema_url)?;
    write_option(out, &c.scope_name)?;
    write_option(out, &c.scope_version)?;
    write_attributes(out, &c.scope_attributes)?;
    write_option(out, &c.scope_schema_url)
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_str(r: &mut impl Read) -> std::io::Result<String> {
    let mut s = vec![0u8; read_u32(r)? as usize];
    r.read_exact(&mut s)?;
    String::from_utf8(s).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn read_option(r: &mut impl Read) -> std::io::Result<Option<String>> {
    let mut some = [0u8; 1];
    r.read_exact(&mut some)?;
    let s = read_str(r)?;
    Ok((some[0] == 1).then_some(s))
}

fn read_attributes(r: &mut impl Read) -> std::io::Result<Vec<(String, String)>> {
    let n = read_u32(r)? as usize;
    (0..n).map(|_| Ok((read_str(r)?, read_str(r)?))).collect()
}

fn read_context(r: &mut impl Read) -> std::io::Result<Context> {
    Ok(Context {
        service_name: read_option(r)?,
        deployment_environment: read_option(r)?,
        resource_attributes: read_attributes(r)?,
        resource_schema_url: read_option(r)?,
        scope_name: read_option(r)?,
        scope_version: read_option(r)?,
        scope_attributes: read_attributes(r)?,
        scope_schema_url: read_option(r)?,
    })
}

#[cfg(test)]
mod tests {
    use arrow_array::{Array, TimestampMicrosecondArray, cast::AsArray};
    use arrow_select::{concat::concat_batches, take::take_record_batch};
    use opentelemetry_proto::tonic::{
        collector::logs::v1::ExportLogsServiceRequest,
        common::v1::{AnyValue, KeyValue, any_value::Value},
        logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
        resource::v1::Resource,
    };
    use prost::Message as _;

    use super::*;
    use crate::rows::{staging_schema, to_rows};

    fn string(s: &str) -> Option<AnyValue> {
        Some(AnyValue { value: Some(Value::StringValue(s.into())) })
    }

    /// Pseudo-random requests: a few services (and none), timestamps in a small range (many
    /// ties, some records without a time), each record's body its number.
    fn requests(n: usize, seed: u64) -> Vec<(Vec<u8>, Option<KafkaPosition>, i64)> {
        const SERVICES: [Option<&str>; 4] = [Some("web"), Some("db"), None, Some("api")];
        let mut x = seed;
        let mut next = move || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            x >> 33
        };
        let mut id = 0;
        (0..n)
            .map(|r| {
                let resource_logs = (0..1 + next() % 3)
                    .map(|_| {
                        let service = SERVICES[next() as usize % 4];
                        ResourceLogs {
                            resource: Some(Resource {
                                attributes: [("host.name", "h1")]
                                    .into_iter()
                                    .chain(service.map(|s| ("service.name", s)))
                                    .map(|(k, v)| KeyValue {
                                        key: k.into(),
                                        value: string(v),
                                        key_strindex: 0,
                                    })
                                    .collect(),
                                ..Default::default()
                            }),
                            scope_logs: vec![ScopeLogs {
                                log_records: (0..next() % 40)
                                    .map(|_| {
                                        id += 1;
                                        LogRecord {
                                            time_unix_nano: if next() % 10 == 0 {
                                                0
                                            } else {
                                                (next() % 500) * 1_000
                                            },
                                            body: string(&id.to_string()),
                                            trace_id: if next() % 50 == 0 { vec![1; 3] } else { vec![] },
                                            ..Default::default()
                                        }
                                    })
                                    .collect(),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }
                    })
                    .collect();
                let bytes = ExportLogsServiceRequest { resource_logs }.encode_to_vec();
                let source = (r % 2 == 0).then_some(KafkaPosition { partition: 1, offset: r as i64 });
                (bytes, source, 250_000 + r as i64)
            })
            .collect()
    }

    /// What the runs must hand out: every request's `to_rows`, stably sorted by
    /// (service_name nulls first, timestamp).
    fn expected(input: &[(Vec<u8>, Option<KafkaPosition>, i64)]) -> RecordBatch {
        let batches: Vec<RecordBatch> = input
            .iter()
            .map(|(bytes, source, at)| {
                to_rows(&ExportLogsServiceRequest::decode(bytes.as_slice()).unwrap(), *source, *at).batch
            })
            .collect();
        let all = concat_batches(&staging_schema(), &batches).unwrap();
        let services = all.column_by_name("service_name").unwrap().as_string::<i32>().clone();
        let ts = all
            .column_by_name("timestamp")
            .unwrap()
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap()
            .clone();
        let key = |i: usize| (services.is_valid(i).then(|| services.value(i).to_string()), ts.value(i));
        let mut order: Vec<u32> = (0..all.num_rows() as u32).collect();
        order.sort_by_key(|i| key(*i as usize));
        take_record_batch(&all, &arrow_array::UInt32Array::from(order)).unwrap()
    }

    fn sorted(runs: SortedRuns) -> (RecordBatch, usize) {
        let mut out = Vec::new();
        let n = runs
            .finish(|b| {
                out.push(b);
                true
            })
            .unwrap();
        let batches = out.len();
        let all = concat_batches(&staging_schema(), &out).unwrap();
        assert_eq!(n as usize, all.num_rows());
        assert!(out.iter().all(|b| b.num_rows() <= OUT_ROWS));
        (all, batches)
    }

    #[test]
    fn one_run_in_memory_comes_out_sorted_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let input = requests(300, 1);
        let mut runs = SortedRuns::new(dir.path().join("spill"), u64::MAX);
        for (bytes, source, at) in &input {
            runs.push_request(bytes.clone(), *source, *at).unwrap();
        }
        let (out, _) = sorted(runs);
        let want = expected(&input);
        assert!(want.num_rows() > 3_000, "{} rows", want.num_rows());
        assert_eq!(out, want);
        assert!(!dir.path().join("spill").exists(), "nothing spilled");
    }

    #[test]
    fn many_spilled_runs_merge_into_every_row_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join("spill");
        let input = requests(1_000, 7);
        let mut runs = SortedRuns::new(spill.clone(), 64 << 10);
        for (bytes, source, at) in &input {
            runs.push_request(bytes.clone(), *source, *at).unwrap();
        }
        assert!(runs.spilled.len() >= 4, "{} runs spilled", runs.spilled.len());
        assert!(!runs.run.entries.is_empty(), "the last run is still in memory");
        let spilled = runs.spilled.len();
        let files = || std::fs::read_dir(&spill).unwrap().count();
        let mut out = Vec::new();
        let mut files_while_merging = None;
        runs.finish(|b| {
            files_while_merging.get_or_insert_with(files);
            out.push(b);
            true
        })
        .unwrap();
        assert_eq!(files_while_merging, Some(spilled), "the last run is merged from memory, not spilled");
        let batches = out.len();
        let out = concat_batches(&staging_schema(), &out).unwrap();
        let want = expected(&input);
        assert!(want.num_rows() > 20_000, "{} rows", want.num_rows());
        assert_eq!(out, want, "merged in key order, ties in push order, rows as to_rows makes them");
        assert!(batches >= 3, "{batches} batches");
        assert!(!spill.exists(), "spill files removed");
    }

    #[test]
    fn stopping_early_hands_out_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs = SortedRuns::new(dir.path().join("spill"), 64 << 10);
        for (bytes, source, at) in requests(1_000, 3) {
            runs.push_request(bytes, source, at).unwrap();
        }
        let mut calls = 0;
        let n = runs
            .finish(|_| {
                calls += 1;
                calls < 2
            })
            .unwrap();
        assert_eq!((calls, n), (2, 2 * OUT_ROWS as u64));
    }

    #[test]
    fn nothing_pushed_hands_out_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs = SortedRuns::new(dir.path().join("s"), 1);
        runs.push_request(Vec::new(), None, 0).unwrap();
        let (out, batches) = sorted(runs);
        assert_eq!((out.num_rows(), batches), (0, 0));
    }

    #[test]
    fn undecodable_bytes_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs = SortedRuns::new(dir.path().join("s"), u64::MAX);
        let err = runs.push_request(vec![0x0a, 0x05, 1], None, 0).unwrap_err();
        assert!(err.contains("does not decode"), "{err}");
    }
}
