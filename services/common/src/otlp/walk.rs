//! A validating, non-allocating walk of an encoded OTLP `ExportLogsServiceRequest`, for
//! forwarding the request's bytes instead of decoding them into structs.
//!
//! In: the protobuf bytes of an `ExportLogsServiceRequest` (opentelemetry-proto 0.33, as prost
//! 0.14 decodes it). Out: a [`Walk`] that names, for each `ResourceLogs` in order, the byte range
//! of its whole field encoding (key, length, body: concatenating any of these slices gives a
//! valid request holding those resources), its `service.name`, how many log records it holds and
//! how many of them have malformed ids; or a [`WalkError`].
//!
//! Guaranteed, and checked against prost by the tests (`walk/tests.rs`):
//! - `Err` exactly when `ExportLogsServiceRequest::decode` fails (wire types, truncation, varints,
//!   UTF-8 of every `string` at any depth, group tags, prost's recursion limit of 100), and the
//!   error's text is prost's, byte for byte; [`WalkError::offset`] adds where in the bytes.
//! - Record counts are those of the decoded request; a record is malformed when its (last)
//!   `trace_id` is not 0 or 16 bytes or its (last) `span_id` is not 0 or 8 bytes, trace id first,
//!   with the reason text of `otlp::records::check_record` ("trace_id must be 16 bytes, got 3").
//! - `service_name` is what the ingester's `resource_key` reads from the decoded resource, with
//!   prost's merge rules: repeated `resource` fields are merged (their attributes concatenated),
//!   a repeated `KeyValue.key` or string is last-wins, and the last `AnyValue.value` oneof field
//!   decides the variant.
//! - Unknown fields (groups included) are skipped as prost skips them; resources without records
//!   are reported too. It never panics, and allocates only the resource list, the rejection text
//!   (once) and the error.
//!
//! The bytes are read with [`super::wire::Cursor`], which holds prost's wire-format rules; this
//! module holds the messages: one function per message type, mirroring prost's `merge_field`.
//!
//! Fuzzing (agreement with prost on structured, mutated and truncated inputs, real Loghub
//! requests among them): the proptests run with every `cargo test`; the long run is
//!
//! ```text
//! WALK_FUZZ_SECONDS=1800 nice cargo test --release -p telemetry-lake-common --lib \
//!     otlp::walk::tests::fuzz_against_prost -- --ignored --nocapture
//! ```
//!
//! which runs for that many CPU-seconds (one thread) and prints the cases it ran, how the
//! invalid ones failed, and on a disagreement the round's seed (`WALK_FUZZ_SEED=<seed>` replays
//! it; proptest shrinks the input).
//! The micro-benchmark: `cargo run --release -p telemetry-lake-common --example walk_bench`.

use std::{fmt, ops::Range};

pub use super::wire::WalkError;
use super::wire::{Cursor, RECURSION_LIMIT, WireType};

/// What a walk found in a valid request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walk {
    /// Every `ResourceLogs`, in the order of the request, those without records included.
    pub resources: Vec<ResourceLogsRange>,
    /// Log records in the request.
    pub records: u64,
    /// Records with a malformed trace or span id (see [`ResourceLogsRange::malformed`]).
    pub malformed: u64,
    /// Why the first malformed record is malformed; empty when none is.
    pub rejection: String,
}

/// One `ResourceLogs` of a walked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceLogsRange {
    /// The field's whole encoding in the request: key, length and body. The slice alone is a
    /// valid `ExportLogsServiceRequest` holding this one resource.
    pub field: Range<usize>,
    /// The bytes of the resource's `service.name` string value: `None` when the first
    /// `service.name` attribute has no value, an empty one or a non-string one, or there is none.
    /// [`ResourceLogsRange::service`] gives the `&str`.
    pub service_name: Option<Range<usize>>,
    /// Log records in this resource.
    pub records: u64,
    /// Of those, records whose `trace_id` is not 0 or 16 bytes or whose `span_id` is not 0 or 8.
    pub malformed: u64,
}

impl ResourceLogsRange {
    /// The `service.name` of this resource, read from the walked `bytes`.
    pub fn service<'a>(&self, bytes: &'a [u8]) -> Option<&'a str> {
        let range = self.service_name.clone()?;
        std::str::from_utf8(bytes.get(range)?).ok()
    }
}

/// Walks `bytes` as an `ExportLogsServiceRequest`; see the module docs for what is guaranteed.
pub fn walk_logs_request(bytes: &[u8]) -> Result<Walk, WalkError> {
    let mut cursor = Cursor::new(bytes);
    let mut walk = Walk { resources: Vec::with_capacity(8), ..Walk::default() };
    let mut first_problem = None;
    while !cursor.done() {
        let start = cursor.pos();
        let (tag, wire) = cursor.key()?;
        if tag != 1 {
            cursor.skip(wire, tag, RECURSION_LIMIT)?;
            continue;
        }
        let mut resource = ResourceState::default();
        resource_logs(&mut cursor, wire, RECURSION_LIMIT, &mut resource, &mut first_problem)
            .map_err(at("ExportLogsServiceRequest", "resource_logs"))?;
        walk.records += resource.records;
        walk.malformed += resource.malformed;
        walk.resources.push(ResourceLogsRange {
            field: start..cursor.pos(),
            service_name: match resource.service {
                Service::Found(name) => name,
                Service::Searching => None,
            },
            records: resource.records,
            malformed: resource.malformed,
        });
    }
    if let Some(problem) = first_problem {
        walk.rejection = problem.to_string();
    }
    Ok(walk)
}

/// Adds the field being decoded to an error, as prost's derived `merge_field` does.
fn at(message: &'static str, field: &'static str) -> impl Fn(WalkError) -> WalkError {
    move |error| error.push(message, field)
}

/// Why a record's ids are malformed: the rule and text of [`super::records::check_record`] (a
/// contract; the tests compare the two on every generated record).
#[derive(Debug, Clone, Copy)]
enum IdProblem {
    TraceId(usize),
    SpanId(usize),
}

impl IdProblem {
    fn of(trace_id_len: usize, span_id_len: usize) -> Option<Self> {
        if !matches!(trace_id_len, 0 | 16) {
            Some(Self::TraceId(trace_id_len))
        } else if !matches!(span_id_len, 0 | 8) {
            Some(Self::SpanId(span_id_len))
        } else {
            None
        }
    }
}

impl fmt::Display for IdProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TraceId(len) => write!(f, "trace_id must be 16 bytes, got {len}"),
            Self::SpanId(len) => write!(f, "span_id must be 8 bytes, got {len}"),
        }
    }
}

/// The search for a resource's `service.name`: the first attribute with that key decides.
#[derive(Debug, Default)]
enum Service {
    #[default]
    Searching,
    Found(Option<Range<usize>>),
}

#[derive(Debug, Default)]
struct ResourceState {
    service: Service,
    records: u64,
    malformed: u64,
}

// One function per message type, each mirroring the `merge_field` prost derives for it: the
// same fields, wire types, error locations and recursion budget.

fn resource_logs(
    c: &mut Cursor,
    wire: WireType,
    depth: u32,
    state: &mut ResourceState,
    first_problem: &mut Option<IdProblem>,
) -> Result<(), WalkError> {
    c.message(wire, depth, |c, tag, wire, depth| match tag {
        1 => resource(c, wire, depth, &mut state.service).map_err(at("ResourceLogs", "resource")),
        2 => scope_logs(c, wire, depth, state, first_problem).map_err(at("ResourceLogs", "scope_logs")),
        3 => c.string_range(wire).map(drop).map_err(at("ResourceLogs", "schema_url")),
        _ => c.skip(wire, tag, depth),
    })
}

fn resource(c: &mut Cursor, wire: WireType, depth: u32, service: &mut Service) -> Result<(), WalkError> {
    c.message(wire, depth, |c, tag, wire, depth| match tag {
        1 => {
            let attribute = key_value(c, wire, depth).map_err(at("Resource", "attributes"))?;
            if matches!(service, Service::Searching)
                && c.get(attribute.key) == Some(b"service.name".as_slice())
            {
                *service = Service::Found(match attribute.value {
                    Some((1, value)) if !value.is_empty() => Some(value),
                    _ => None,
                });
            }
            Ok(())
        }
        2 => c.varint(wire).map(drop).map_err(at("Resource", "dropped_attributes_count")),
        3 => entity_ref(c, wire, depth).map_err(at("Resource", "entity_refs")),
        _ => c.skip(wire, tag, depth),
    })
}

fn entity_ref(c: &mut Cursor, wire: WireType, depth: u32) -> Result<(), WalkError> {
    c.message(wire, depth, |c, tag, wire, depth| match tag {
        1 => c.string_range(wire).map(drop).map_err(at("EntityRef", "schema_url")),
        2 => c.string_range(wire).map(drop).map_err(at("EntityRef", "r#type")),
        3 => c.string_range(wire).map(drop).map_err(at("EntityRef", "id_keys")),
        4 => c.string_range(wire).map(drop).map_err(at("EntityRef", "description_keys")),
        _ => c.skip(wire, tag, depth),
    })
}

fn scope_logs(
    c: &mut Cursor,
    wire: WireType,
    depth: u32,
    state: &mut ResourceState,
    first_problem: &mut Option<IdProblem>,
) -> Result<(), WalkError> {
    c.message(wire, depth, |c, tag, wire, depth| match tag {
        1 => instrumentation_scope(c, wire, depth).map_err(at("ScopeLogs", "scope")),
        2 => {
            let (trace_id_len, span_id_len) =
                log_record(c, wire, depth).map_err(at("ScopeLogs", "log_records"))?;
            state.records += 1;
            if let Some(problem) = IdProblem::of(trace_id_len, span_id_len) {
                state.malformed += 1;
                first_problem.get_or_insert(problem);
            }
            Ok(())
        }
        3 => c.string_range(wire).map(drop).map_err(at("ScopeLogs", "schema_url")),
        _ => c.skip(wire, tag, depth),
    })
}

fn instrumentation_scope(c: &mut Cursor, wire: WireType, depth: u32) -> Result<(), WalkError> {
    c.message(wire, depth, |c, tag, wire, depth| match tag {
        1 => c.string_range(wire).map(drop).map_err(at("InstrumentationScope", "name")),
        2 => c.string_range(wire).map(drop).map_err(at("InstrumentationScope", "version")),
        3 => key_value(c, wire, depth).map(drop).map_err(at("InstrumentationScope", "attributes")),
        4 => c.varint(wire).map(drop).map_err(at("InstrumentationScope", "dropped_attributes_count")),
        _ => c.skip(wire, tag, depth),
    })
}

/// Returns the lengths of the record's (last) trace id and span id.
fn log_record(c: &mut Cursor, wire: WireType, depth: u32) -> Result<(usize, usize), WalkError> {
    let (mut trace_id_len, mut span_id_len) = (0, 0);
    c.message(wire, depth, |c, tag, wire, depth| match tag {
        1 => c.fixed64(wire).map(drop).map_err(at("LogRecord", "time_unix_nano")),
        11 => c.fixed64(wire).map(drop).map_err(at("LogRecord", "observed_time_unix_nano")),
        2 => c.varint(wire).map(drop).map_err(at("LogRecord", "severity_number")),
        3 => c.string_range(wire).map(drop).map_err(at("LogRecord", "severity_text")),
        5 => any_value(c, wire, depth).map(drop).map_err(at("LogRecord", "body")),
        6 => key_value(c, wire, depth).map(drop).map_err(at("LogRecord", "attributes")),
        7 => c.varint(wire).map(drop).map_err(at("LogRecord", "dropped_attributes_count")),
        8 => c.fixed32(wire).map(drop).map_err(at("LogRecord", "flags")),
        9 => {
            trace_id_len = c.bytes(wire).map_err(at("LogRecord", "trace_id"))?.len();
            Ok(())
        }
        10 => {
            span_id_len = c.bytes(wire).map_err(at("LogRecord", "span_id"))?.len();
            Ok(())
        }
        12 => c.string_range(wire).map(drop).map_err(at("LogRecord", "event_name")),
        _ => c.skip(wire, tag, depth),
    })?;
    Ok((trace_id_len, span_id_len))
}

/// What a `KeyValue` decodes to, as ranges: its (last) key, and its value's oneof as
/// [`any_value`] gives it, merged over repeated `value` fields.
struct Attribute {
    key: Range<usize>,
    value: Option<(u32, Range<usize>)>,
}

fn key_value(c: &mut Cursor, wire: WireType, depth: u32) -> Result<Attribute, WalkError> {
    let mut attribute = Attribute { key: 0..0, value: None };
    c.message(wire, depth, |c, tag, wire, depth| match tag {
        1 => {
            attribute.key = c.string_range(wire).map_err(at("KeyValue", "key"))?;
            Ok(())
        }
        2 => {
            // A repeated `value` is merged: a later oneof field replaces an earlier one.
            if let Some(value) = any_value(c, wire, depth).map_err(at("KeyValue", "value"))? {
                attribute.value = Some(value);
            }
            Ok(())
        }
        3 => c.varint(wire).map(drop).map_err(at("KeyValue", "key_strindex")),
        _ => c.skip(wire, tag, depth),
    })?;
    Ok(attribute)
}

/// Returns the last oneof field of the `AnyValue` (the one prost keeps): its field number and,
/// for strings and bytes, the contents' range (an empty range otherwise).
fn any_value(c: &mut Cursor, wire: WireType, depth: u32) -> Result<Option<(u32, Range<usize>)>, WalkError> {
    let mut last = None;
    c.message(wire, depth, |c, tag, wire, depth| {
        let contents = match tag {
            1 => c.string_range(wire),
            2 | 3 | 8 => c.varint(wire).map(|_| 0..0),
            4 => c.fixed64(wire).map(|_| 0..0),
            5 => array_value(c, wire, depth).map(|()| 0..0),
            6 => key_value_list(c, wire, depth).map(|()| 0..0),
            7 => c.bytes(wire),
            _ => return c.skip(wire, tag, depth),
        }
        .map_err(at("AnyValue", "value"))?;
        last = Some((tag, contents));
        Ok(())
    })?;
    Ok(last)
}

fn array_value(c: &mut Cursor, wire: WireType, depth: u32) -> Result<(), WalkError> {
    c.message(wire, depth, |c, tag, wire, depth| match tag {
        1 => any_value(c, wire, depth).map(drop).map_err(at("ArrayValue", "values")),
        _ => c.skip(wire, tag, depth),
    })
}

fn key_value_list(c: &mut Cursor, wire: WireType, depth: u32) -> Result<(), WalkError> {
    c.message(wire, depth, |c, tag, wire, depth| match tag {
        1 => key_value(c, wire, depth).map(drop).map_err(at("KeyValueList", "values")),
        _ => c.skip(wire, tag, depth),
    })
}

#[cfg(test)]
mod tests;
