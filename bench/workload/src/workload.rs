//! The workload: real Loghub lines turned into OTLP `ExportLogsServiceRequest`s and encoded
//! once, before the clock starts, so the load generator only copies bytes onto the wire.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::signals::{self, Signal};
use anyhow::{Context, bail};
use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    resource::v1::Resource,
};
use prost::{
    Message,
    bytes::{Buf, BufMut, Bytes},
    encoding::{DecodeContext, WireType},
};

/// Bodies are cut or padded to about this many bytes.
pub const BODY_BYTES: usize = 200;
/// One record in this many carries a trace id and a span id.
const TRACED_EVERY: usize = 4;

/// One Loghub line and the system it came from.
#[derive(Debug, Clone)]
pub struct Line {
    pub system: String,
    pub number: usize,
    pub text: String,
}

/// An `ExportLogsServiceRequest` already in protobuf; sent as is by [`PreEncoded`]'s codec.
#[derive(Debug, Clone)]
pub struct PreEncoded {
    pub bytes: Bytes,
    pub records: u64,
}

impl Message for PreEncoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.bytes);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    fn clear(&mut self) {
        self.bytes = Bytes::new();
        self.records = 0;
    }
}

/// The `loghub` directory: `$TELEMETRY_LAKE_SHARED_DIR/data/loghub`, else `shared/` beside the
/// checkout.
pub fn loghub_dir() -> PathBuf {
    let shared = std::env::var_os("TELEMETRY_LAKE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    shared.join("data/loghub")
}

/// Every line of every `*.log` file in `dir`, the system named after the file (`HDFS_2k.log`
/// gives `HDFS`).
pub fn load_lines(dir: &Path) -> anyhow::Result<Vec<Line>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    files.sort();
    let mut per_system = Vec::new();
    for file in &files {
        let system = system_name(file);
        let text = fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<Line> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| Line { system: system.clone(), number: i + 1, text: l.to_string() })
            .collect();
        per_system.push(lines);
    }
    let lines = interleave(per_system);
    if lines.is_empty() {
        bail!("no log lines in {}/*.log", dir.display());
    }
    Ok(lines)
}

/// One line of each system in turn, so that every request mixes the systems as a collector's
/// batch would.
fn interleave(per_system: Vec<Vec<Line>>) -> Vec<Line> {
    let longest = per_system.iter().map(Vec::len).max().unwrap_or(0);
    let mut iters: Vec<_> = per_system.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::new();
    for _ in 0..longest {
        out.extend(iters.iter_mut().filter_map(Iterator::next));
    }
    out
}

fn system_name(file: &Path) -> String {
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    stem.split('_').next().unwrap_or(&stem).to_string()
}

/// Requests of `batch` records each, covering every line at least once and at least
/// `min_requests` requests, encoded.
pub fn build_requests(lines: &[Line], batch: usize, min_requests: usize) -> Vec<PreEncoded> {
    build_signal_requests(Signal::Logs, lines, batch, min_requests)
}

/// [`build_requests`] for any signal: `batch` log records, spans or metric data points (one per
/// line, see [`crate::signals`]) per request.
pub fn build_signal_requests(
    signal: Signal,
    lines: &[Line],
    batch: usize,
    min_requests: usize,
) -> Vec<PreEncoded> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let count = lines.len().div_ceil(batch).max(min_requests);
    (0..count)
        .map(|r| {
            let records: Vec<(usize, &Line)> =
                (0..batch).map(|i| r * batch + i).map(|n| (n, &lines[n % lines.len()])).collect();
            let time = now + r as u64 * 1_000_000;
            let bytes = match signal {
                Signal::Logs => request_of(&records, time).encode_to_vec(),
                Signal::Traces => signals::spans_request(&records, time).encode_to_vec(),
                Signal::Metrics => signals::metrics_request(&records, time).encode_to_vec(),
            };
            PreEncoded { bytes: Bytes::from(bytes), records: batch as u64 }
        })
        .collect()
}

/// One request: a `ResourceLogs` per system, in the order the systems first appear.
fn request_of(records: &[(usize, &Line)], time_unix_nano: u64) -> ExportLogsServiceRequest {
    let mut resource_logs: Vec<ResourceLogs> = Vec::new();
    for &(n, line) in records {
        let record = log_record(n, line, time_unix_nano + n as u64 % 1_000_000);
        match resource_logs.iter_mut().find(|r| service_of(r) == Some(line.system.as_str())) {
            Some(existing) => existing.scope_logs[0].log_records.push(record),
            None => resource_logs.push(resource_logs_for(&line.system, record)),
        }
    }
    ExportLogsServiceRequest { resource_logs }
}

fn service_of(resource_logs: &ResourceLogs) -> Option<&str> {
    let resource = resource_logs.resource.as_ref()?;
    let attribute = resource.attributes.iter().find(|kv| kv.key == "service.name")?;
    match attribute.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn resource_logs_for(system: &str, first: LogRecord) -> ResourceLogs {
    ResourceLogs {
        resource: Some(Resource {
            attributes: vec![
                string_attribute("service.name", system),
                string_attribute("deployment.environment.name", "bench"),
                string_attribute("host.name", &format!("{}-node-1", system.to_lowercase())),
            ],
            ..Default::default()
        }),
        scope_logs: vec![ScopeLogs {
            scope: Some(InstrumentationScope {
                name: "telemetry-lake-bench".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            }),
            log_records: vec![first],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn log_record(n: usize, line: &Line, time_unix_nano: u64) -> LogRecord {
    let (severity_number, severity_text) = severity_of(&line.text);
    let traced = n.is_multiple_of(TRACED_EVERY);
    LogRecord {
        time_unix_nano,
        observed_time_unix_nano: time_unix_nano,
        severity_number: severity_number as i32,
        severity_text: severity_text.into(),
        body: Some(AnyValue { value: Some(Value::StringValue(body_of(&line.text))) }),
        attributes: vec![
            string_attribute("log.file.name", &format!("{}_2k.log", line.system)),
            int_attribute("log.file.line", line.number as i64),
            string_attribute("bench.sequence", &n.to_string()),
        ],
        trace_id: if traced { id_bytes(n as u64, 16) } else { Vec::new() },
        span_id: if traced { id_bytes(n as u64 ^ 0x5eed, 8) } else { Vec::new() },
        flags: u32::from(traced),
        ..Default::default()
    }
}

/// The line cut (on a character boundary) or padded with spaces to about [`BODY_BYTES`].
pub fn body_of(line: &str) -> String {
    if line.len() >= BODY_BYTES {
        let mut end = BODY_BYTES;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        return line[..end].to_string();
    }
    format!("{line:<BODY_BYTES$}")
}

/// The severity a line names, INFO when it names none.
pub fn severity_of(line: &str) -> (SeverityNumber, &'static str) {
    let upper = line.to_ascii_uppercase();
    let has = |word: &str| upper.contains(word);
    if has("FATAL") || has("CRITICAL") {
        (SeverityNumber::Fatal, "FATAL")
    } else if has("ERROR") || has("FAIL") || has("[ERROR]") {
        (SeverityNumber::Error, "ERROR")
    } else if has("WARN") {
        (SeverityNumber::Warn, "WARN")
    } else if has("DEBUG") {
        (SeverityNumber::Debug, "DEBUG")
    } else {
        (SeverityNumber::Info, "INFO")
    }
}

/// Deterministic, non-zero id bytes (splitmix64 of `seed`).
pub(crate) fn id_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out[0] |= 1;
    out
}

pub(crate) fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

pub(crate) fn int_attribute(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(Value::IntValue(value)) }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines() -> Vec<Line> {
        ["HDFS", "Spark"]
            .iter()
            .flat_map(|s| {
                (1..=3).map(move |n| Line {
                    system: s.to_string(),
                    number: n,
                    text: format!("081109 WARN line {n} of {s}"),
                })
            })
            .collect()
    }

    #[test]
    fn requests_decode_with_the_batch_size_and_one_resource_per_system() {
        let requests = build_requests(&lines(), 4, 3);
        assert_eq!(requests.len(), 3);
        let decoded = ExportLogsServiceRequest::decode(requests[1].bytes.clone()).unwrap();
        let records: usize = decoded.resource_logs.iter().map(|r| r.scope_logs[0].log_records.len()).sum();
        assert_eq!(records, 4);
        // Records 4..8 are Spark's three lines, then HDFS's first.
        let services: Vec<_> = decoded.resource_logs.iter().filter_map(service_of).collect();
        assert_eq!(services, ["Spark", "HDFS"]);
        let first = &decoded.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(first.severity_text, "WARN");
        assert_eq!(first.trace_id.len(), 16);
    }

    #[test]
    fn bodies_are_cut_or_padded_on_char_boundaries() {
        assert_eq!(body_of("short").len(), BODY_BYTES);
        let long = "é".repeat(BODY_BYTES);
        let body = body_of(&long);
        assert!(body.len() <= BODY_BYTES && body.len() >= BODY_BYTES - 1);
    }

    #[test]
    fn pre_encoded_is_sent_verbatim() {
        let bytes = Bytes::from_static(b"\x0a\x00");
        let message = PreEncoded { bytes: bytes.clone(), records: 0 };
        assert_eq!(message.encode_to_vec(), bytes.to_vec());
    }

    #[test]
    fn interleaving_takes_one_line_of_each_system_in_turn() {
        let mixed = interleave(vec![lines()[..3].to_vec(), lines()[3..4].to_vec()]);
        let order: Vec<_> = mixed.iter().map(|l| (l.system.as_str(), l.number)).collect();
        assert_eq!(order, [("HDFS", 1), ("Spark", 1), ("HDFS", 2), ("HDFS", 3)]);
    }

    #[test]
    fn systems_are_named_after_their_file() {
        assert_eq!(system_name(Path::new("/x/OpenSSH_2k.log")), "OpenSSH");
    }
}
