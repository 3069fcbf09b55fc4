//! OTLP logs -> Arrow rows straight from the protobuf bytes, without prost's owned structs.
//!
//! In: the bytes of an encoded `ExportLogsServiceRequest` (staged batches: the receivers or the
//! Kafka consumer walked them with `otlp::walk`, so they decode). Out, in two steps:
//! - [`index_request`]: each `(resource, scope)` pair once, as a [`Context`] (flattened
//!   attributes, `service.name`, …), and each record as its byte range, its context and its
//!   `timestamp` column value; records that `otlp::records::check_record` rejects are skipped.
//! - [`RowWriter::append`]: one record (its bytes and its context) as one row.
//!
//! Guaranteed, and checked against [`super::to_rows`] by the tests: the rows are exactly those
//! `to_rows` makes of the prost-decoded request, field for field, with prost's merge rules
//! (the last of a repeated scalar field wins; repeated message fields merge; the last `AnyValue`
//! oneof field decides the variant). The common shapes (string bodies, string, int and bool
//! attributes) are read in place; anything else (non-string bodies, array or map attribute
//! values, merged messages) is decoded with prost for that one field, so it goes through the
//! very code `to_rows` uses. The bytes are read with `otlp::wire::Cursor`, the walk's reader,
//! so they are read by prost's rules; malformed bytes give an [`Error`] in prost's words, never a
//! panic.

use std::{borrow::Cow, fmt, ops::Range};

use arrow_array::RecordBatch;
use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, InstrumentationScope, KeyValue},
    resource::v1::Resource,
};
use prost::Message as _;
use telemetry_lake_common::otlp::wire::{Cursor, RECURSION_LIMIT, WalkError};

use super::{
    KafkaPosition, RowBuilders, append_map, body_text, flatten_attributes, nanos_to_micros, plain_json,
};

/// What the records of one `(ResourceLogs, ScopeLogs)` pair share, as their rows show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Context {
    pub service_name: Option<String>,
    pub deployment_environment: Option<String>,
    pub resource_attributes: Vec<(String, String)>,
    pub resource_schema_url: Option<String>,
    pub scope_name: Option<String>,
    pub scope_version: Option<String>,
    pub scope_attributes: Vec<(String, String)>,
    pub scope_schema_url: Option<String>,
}

impl Context {
    /// About how many bytes it takes in memory.
    pub fn size(&self) -> usize {
        let s = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let a = |a: &[(String, String)]| a.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>();
        std::mem::size_of::<Self>()
            + s(&self.service_name)
            + s(&self.deployment_environment)
            + s(&self.resource_schema_url)
            + s(&self.scope_name)
            + s(&self.scope_version)
            + s(&self.scope_schema_url)
            + a(&self.resource_attributes)
            + a(&self.scope_attributes)
    }

    fn new(
        resource: Option<&Resource>,
        resource_schema_url: &str,
        scope: Option<&InstrumentationScope>,
        scope_schema_url: &str,
    ) -> Self {
        let attributes = resource.map(|r| r.attributes.as_slice()).unwrap_or_default();
        let owned = |flat: Vec<(&str, Cow<'_, str>)>| {
            flat.into_iter().map(|(k, v)| (k.to_string(), v.into_owned())).collect::<Vec<_>>()
        };
        Self {
            service_name: super::string_attribute(attributes, "service.name"),
            deployment_environment: super::string_attribute(attributes, "deployment.environment.name")
                .or_else(|| super::string_attribute(attributes, "deployment.environment")),
            resource_attributes: owned(flatten_attributes(attributes)),
            resource_schema_url: non_empty(resource_schema_url),
            scope_name: scope.and_then(|s| non_empty(&s.name)),
            scope_version: scope.and_then(|s| non_empty(&s.version)),
            scope_attributes: owned(flatten_attributes(
                scope.map(|s| s.attributes.as_slice()).unwrap_or_default(),
            )),
            scope_schema_url: non_empty(scope_schema_url),
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Why bytes did not give rows, in prost's words (the wire cursor's or prost's own), after the
/// field they were found in: "LogRecord.attributes: failed to decode Protobuf message: ...".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// Puts the field being read before an error.
    fn within<E: Into<Error>>(field: &'static str) -> impl FnOnce(E) -> Error {
        move |e| Error(format!("{field}: {}", e.into().0))
    }
}

impl From<WalkError> for Error {
    #[cold]
    fn from(e: WalkError) -> Self {
        Self(e.to_string())
    }
}

impl From<prost::DecodeError> for Error {
    #[cold]
    fn from(e: prost::DecodeError) -> Self {
        Self(e.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// One record found by [`index_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedRecord {
    /// Index of its context in the `contexts` given to [`index_request`].
    pub context: usize,
    /// The `LogRecord` message's bytes (without key and length).
    pub bytes: Range<usize>,
    /// Its `timestamp` column: the record's time, else its observed time, else the arrival time.
    pub timestamp: i64,
}

/// Finds the contexts and records of `request` in order: appends each `(resource, scope)` pair's
/// [`Context`] to `contexts` and hands each record that `check_record` accepts to `record`.
/// Returns how many records were rejected.
pub fn index_request(
    request: &[u8],
    received_at_micros: i64,
    contexts: &mut Vec<Context>,
    mut record: impl FnMut(IndexedRecord),
) -> Result<u64, Error> {
    let mut rejected = 0;
    let mut r = Cursor::new(request);
    let mut resource_parts = Vec::new();
    let mut scope_logs = Vec::new();
    let mut scope_parts = Vec::new();
    let mut records = Vec::new();
    while !r.done() {
        let (tag, wire) = r.key()?;
        if tag != 1 {
            r.skip(wire, tag, RECURSION_LIMIT)?;
            continue;
        }
        // ResourceLogs: its resource may follow its scopes, so the fields are gathered first.
        let mut resource_logs = Cursor::within(request, r.bytes(wire)?);
        resource_parts.clear();
        scope_logs.clear();
        let mut resource_schema_url = "";
        while !resource_logs.done() {
            match resource_logs.key()? {
                (1, wire) => resource_parts.push(resource_logs.bytes(wire)?),
                (2, wire) => scope_logs.push(resource_logs.bytes(wire)?),
                (3, wire) => resource_schema_url = resource_logs.string(wire)?,
                (tag, wire) => resource_logs.skip(wire, tag, RECURSION_LIMIT)?,
            }
        }
        let resource =
            merged::<Resource>(request, &resource_parts).map_err(Error::within("ResourceLogs.resource"))?;
        for range in &scope_logs {
            let mut s = Cursor::within(request, range.clone());
            scope_parts.clear();
            records.clear();
            let mut scope_schema_url = "";
            while !s.done() {
                match s.key()? {
                    (1, wire) => scope_parts.push(s.bytes(wire)?),
                    (2, wire) => records.push(s.bytes(wire)?),
                    (3, wire) => scope_schema_url = s.string(wire)?,
                    (tag, wire) => s.skip(wire, tag, RECURSION_LIMIT)?,
                }
            }
            let scope = merged::<InstrumentationScope>(request, &scope_parts)
                .map_err(Error::within("ScopeLogs.scope"))?;
            let context = contexts.len();
            contexts.push(Context::new(
                resource.as_ref(),
                resource_schema_url,
                scope.as_ref(),
                scope_schema_url,
            ));
            for bytes in &records {
                let keys = record_keys(Cursor::within(request, bytes.clone()))
                    .map_err(Error::within("ScopeLogs.log_records"))?;
                if !matches!(keys.trace_id_len, 0 | 16) || !matches!(keys.span_id_len, 0 | 8) {
                    rejected += 1;
                    continue;
                }
                let nanos = if keys.time != 0 { keys.time } else { keys.observed_time };
                let timestamp = if nanos != 0 { nanos_to_micros(nanos) } else { received_at_micros };
                record(IndexedRecord { context, bytes: bytes.clone(), timestamp });
            }
        }
    }
    Ok(rejected)
}

/// A message field that may repeat, as prost merges it: decoding the concatenation of its
/// occurrences. `None` when it does not occur.
fn merged<M: prost::Message + Default>(
    bytes: &[u8],
    parts: &[Range<usize>],
) -> Result<Option<M>, prost::DecodeError> {
    let decoded = match parts {
        [] => return Ok(None),
        [one] => M::decode(&bytes[one.clone()]),
        many => M::decode(
            many.iter().flat_map(|p| bytes[p.clone()].iter().copied()).collect::<Vec<u8>>().as_slice(),
        ),
    };
    decoded.map(Some)
}

/// The fields of a record that decide its key and whether it is kept (the last of each wins).
#[derive(Default)]
struct RecordKeys {
    time: u64,
    observed_time: u64,
    trace_id_len: usize,
    span_id_len: usize,
}

fn record_keys(mut r: Cursor<'_>) -> Result<RecordKeys, WalkError> {
    let mut keys = RecordKeys::default();
    while !r.done() {
        match r.key()? {
            (1, wire) => keys.time = r.fixed64(wire)?,
            (11, wire) => keys.observed_time = r.fixed64(wire)?,
            (9, wire) => keys.trace_id_len = r.bytes(wire)?.len(),
            (10, wire) => keys.span_id_len = r.bytes(wire)?.len(),
            (tag, wire) => r.skip(wire, tag, RECURSION_LIMIT)?,
        }
    }
    Ok(keys)
}

/// Rows appended one record at a time, handed out as Arrow batches of the staging schema.
pub struct RowWriter {
    builders: RowBuilders,
    rows: usize,
    capacity: usize,
    /// Reused for each record's attributes.
    attributes: Vec<Range<usize>>,
    bodies: Vec<Range<usize>>,
}

impl RowWriter {
    /// A writer expecting batches of about `capacity` rows.
    pub fn new(capacity: usize) -> Self {
        Self {
            builders: RowBuilders::new(capacity),
            rows: 0,
            capacity,
            attributes: Vec::new(),
            bodies: Vec::new(),
        }
    }

    /// Rows appended since the last [`RowWriter::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The rows appended so far, as one batch; the writer starts over empty.
    pub fn finish(&mut self) -> RecordBatch {
        self.rows = 0;
        let batch = std::mem::replace(&mut self.builders, RowBuilders::new(0)).finish();
        self.builders = RowBuilders::like(self.capacity, &batch);
        batch
    }

    /// Appends the row of one `LogRecord` (its message bytes) of `context`, with the
    /// `timestamp` [`index_request`] gave it.
    pub fn append(
        &mut self,
        context: &Context,
        record: &[u8],
        timestamp: i64,
        source: Option<KafkaPosition>,
    ) -> Result<(), Error> {
        let mut r = Cursor::new(record);
        let mut observed_time = 0u64;
        let mut severity_number = 0i32;
        let mut severity_text = "";
        let mut dropped_attributes_count = 0u32;
        let mut flags = 0u32;
        let mut trace_id: &[u8] = &[];
        let mut span_id: &[u8] = &[];
        let mut event_name = "";
        self.attributes.clear();
        self.bodies.clear();
        while !r.done() {
            match r.key()? {
                (11, wire) => observed_time = r.fixed64(wire)?,
                (2, wire) => severity_number = r.varint(wire)? as i32,
                (3, wire) => severity_text = r.string(wire)?,
                (5, wire) => self.bodies.push(r.bytes(wire)?),
                (6, wire) => self.attributes.push(r.bytes(wire)?),
                (7, wire) => dropped_attributes_count = r.varint(wire)? as u32,
                (8, wire) => flags = r.fixed32(wire)?,
                (9, wire) => trace_id = &record[r.bytes(wire)?],
                (10, wire) => span_id = &record[r.bytes(wire)?],
                (12, wire) => event_name = r.string(wire)?,
                (tag, wire) => r.skip(wire, tag, RECURSION_LIMIT)?,
            }
        }
        let body = body(record, &self.bodies).map_err(Error::within("LogRecord.body"))?;
        let log_attributes =
            attributes(record, &self.attributes).map_err(Error::within("LogRecord.attributes"))?;
        let b = &mut self.builders;
        b.timestamp.append_value(timestamp);
        b.observed_timestamp.append_option((observed_time != 0).then(|| nanos_to_micros(observed_time)));
        b.severity_number.append_value(severity_number);
        b.severity_text.append_value(severity_text);
        b.body.append_value(body.as_ref());
        append_hex(&mut b.trace_id, trace_id);
        append_hex(&mut b.span_id, span_id);
        b.trace_flags.append_value((flags & 0xff) as i32);
        b.event_name.append_option((!event_name.is_empty()).then_some(event_name));
        b.service_name.append_option(context.service_name.as_deref());
        b.deployment_environment.append_option(context.deployment_environment.as_deref());
        append_owned_map(&mut b.resource_attributes, &context.resource_attributes);
        append_owned_map(&mut b.scope_attributes, &context.scope_attributes);
        append_map(&mut b.log_attributes, &log_attributes);
        b.scope_name.append_option(context.scope_name.as_deref());
        b.scope_version.append_option(context.scope_version.as_deref());
        b.resource_schema_url.append_option(context.resource_schema_url.as_deref());
        b.scope_schema_url.append_option(context.scope_schema_url.as_deref());
        b.dropped_attributes_count.append_value(dropped_attributes_count.min(i32::MAX as u32) as i32);
        b.kafka_partition.append_option(source.map(|s| s.partition));
        b.kafka_offset.append_option(source.map(|s| s.offset));
        self.rows += 1;
        Ok(())
    }
}

/// The rows of a whole request in its order, as [`super::to_rows`] makes them.
pub fn decode_rows(
    request: &[u8],
    source: Option<KafkaPosition>,
    received_at_micros: i64,
) -> Result<RecordBatch, Error> {
    let mut contexts = Vec::new();
    let mut records = Vec::new();
    index_request(request, received_at_micros, &mut contexts, |r| records.push(r))?;
    let mut writer = RowWriter::new(records.len());
    for r in &records {
        writer.append(&contexts[r.context], &request[r.bytes.clone()], r.timestamp, source)?;
    }
    Ok(writer.finish())
}

fn append_hex(builder: &mut arrow_array::builder::StringBuilder, id: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if id.is_empty() {
        builder.append_null();
        return;
    }
    let mut out = [0u8; 64];
    let n = id.len().min(32);
    for (i, byte) in id[..n].iter().enumerate() {
        out[2 * i] = HEX[(byte >> 4) as usize];
        out[2 * i + 1] = HEX[(byte & 0xf) as usize];
    }
    if id.len() <= 32 {
        builder.append_value(std::str::from_utf8(&out[..2 * n]).expect("hex digits are ASCII"));
    } else {
        builder.append_option(super::hex_id(id));
    }
}

fn append_owned_map(
    builder: &mut arrow_array::builder::MapBuilder<
        arrow_array::builder::StringBuilder,
        arrow_array::builder::StringBuilder,
    >,
    entries: &[(String, String)],
) {
    for (key, value) in entries {
        builder.keys().append_value(key);
        builder.values().append_value(value);
    }
    builder.append(true).expect("keys and values are appended in pairs");
}

/// The value of an `AnyValue` read in place.
enum Scalar<'a> {
    None,
    String(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    Strindex,
}

/// Reads the last oneof field of the merged `AnyValue`s; `None` when a message variant is last.
fn scalar<'a>(bytes: &'a [u8], parts: &[Range<usize>]) -> Result<Option<Scalar<'a>>, WalkError> {
    let mut last = Scalar::None;
    let mut message_last = false;
    for part in parts {
        let mut r = Cursor::within(bytes, part.clone());
        while !r.done() {
            let (tag, wire) = r.key()?;
            (last, message_last) = match tag {
                1 => (Scalar::String(r.string(wire)?), false),
                2 => (Scalar::Bool(r.varint(wire)? != 0), false),
                3 => (Scalar::Int(r.varint(wire)? as i64), false),
                4 => (Scalar::Double(f64::from_bits(r.fixed64(wire)?)), false),
                5 | 6 => {
                    r.bytes(wire)?;
                    (Scalar::None, true)
                }
                7 => (Scalar::Bytes(&bytes[r.bytes(wire)?]), false),
                8 => {
                    r.varint(wire)?;
                    (Scalar::Strindex, false)
                }
                _ => {
                    r.skip(wire, tag, RECURSION_LIMIT)?;
                    continue;
                }
            };
        }
    }
    Ok((!message_last).then_some(last))
}

/// The body column: string bodies in place, anything else through prost and `body_text`.
fn body<'a>(record: &'a [u8], parts: &[Range<usize>]) -> Result<Cow<'a, str>, Error> {
    match scalar(record, parts)? {
        _ if parts.is_empty() => Ok(Cow::Borrowed("")),
        Some(Scalar::String(s)) => Ok(Cow::Borrowed(s)),
        Some(Scalar::None) => Ok(Cow::Borrowed("")),
        _ => {
            let value = merged::<AnyValue>(record, parts)?;
            Ok(Cow::Owned(body_text(value.as_ref()).into_owned()))
        }
    }
}

/// The log attributes, flattened as `flatten_attributes` does (last value of a key wins, in
/// the place of its first).
fn attributes<'a>(record: &'a [u8], parts: &[Range<usize>]) -> Result<Vec<(&'a str, Cow<'a, str>)>, Error> {
    use serde_json::Value as J;
    let mut flat: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(parts.len());
    let mut values = Vec::with_capacity(1);
    for part in parts {
        let mut r = Cursor::within(record, part.clone());
        let mut key = "";
        values.clear();
        while !r.done() {
            match r.key()? {
                (1, wire) => key = r.string(wire)?,
                (2, wire) => values.push(r.bytes(wire)?),
                (tag, wire) => r.skip(wire, tag, RECURSION_LIMIT)?,
            }
        }
        let value = match scalar(record, &values)? {
            _ if values.is_empty() => Cow::Borrowed("null"),
            Some(Scalar::String(s)) => Cow::Borrowed(s),
            Some(Scalar::None | Scalar::Strindex) => Cow::Borrowed("null"),
            Some(Scalar::Bool(b)) => Cow::Borrowed(if b { "true" } else { "false" }),
            Some(Scalar::Int(i)) => Cow::Owned(i.to_string()),
            Some(Scalar::Double(d)) => {
                Cow::Owned(serde_json::Number::from_f64(d).map(J::Number).unwrap_or(J::Null).to_string())
            }
            Some(Scalar::Bytes(b)) => {
                use base64::Engine;
                Cow::Owned(J::String(base64::engine::general_purpose::STANDARD.encode(b)).to_string())
            }
            None => {
                let kv = KeyValue::decode(&record[part.clone()])?;
                Cow::Owned(plain_json(kv.value.as_ref().and_then(|v| v.value.as_ref())).to_string())
            }
        };
        match flat.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => flat.push((key, value)),
        }
    }
    Ok(flat)
}
