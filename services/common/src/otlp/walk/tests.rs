//! The walk against prost: [`agree`] decodes the same bytes with prost and checks that the walk
//! says exactly what prost (plus the appender's id rule and the ingester's `service.name` rule)
//! says. Unit tests aim it at each rule; proptests at structured, mutated and truncated requests;
//! `fuzz_against_prost` (ignored) at as many of those as a time budget allows.

use std::{
    cell::Cell,
    sync::OnceLock,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    resource::v1::Resource,
};
use proptest::{
    collection::vec,
    prelude::*,
    sample::Index,
    strategy::ValueTree,
    test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner},
};
use prost::Message;

use super::*;
use crate::otlp::{records::check_record, wire::ErrorKind};

// ---------------------------------------------------------------------------------------------
// The reference: prost's decoding, with the record check both services apply
// (`otlp::records::check_record`) and the ingester's `service.name` rule.

/// `services/ingester/src/split.rs` `resource_key`, `None` where it falls back to the default.
fn resource_key(resource: &ResourceLogs) -> Option<String> {
    resource
        .resource
        .as_ref()
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        })
}

/// Checks that the walk of `bytes` says what prost says; `Err` describes the first difference.
fn agree(bytes: &[u8]) -> Result<Option<Walk>, String> {
    let walked = walk_logs_request(bytes);
    let decoded = ExportLogsServiceRequest::decode(bytes);
    let (walk, request) = match (walked, decoded) {
        (Err(walk), Err(prost)) => {
            if walk.to_string() != prost.to_string() {
                return Err(format!("both fail, differently:\n walk:  {walk}\n prost: {prost}"));
            }
            if walk.offset() > bytes.len() {
                return Err(format!("error offset {} past the end ({})", walk.offset(), bytes.len()));
            }
            return Ok(None);
        }
        (Ok(walk), Err(prost)) => return Err(format!("walk accepts what prost rejects ({prost}): {walk:?}")),
        (Err(walk), Ok(_)) => return Err(format!("walk rejects what prost accepts: {walk}")),
        (Ok(walk), Ok(request)) => (walk, request),
    };
    if walk.resources.len() != request.resource_logs.len() {
        return Err(format!(
            "{} resources walked, prost {}",
            walk.resources.len(),
            request.resource_logs.len()
        ));
    }
    let mut records = 0;
    let mut malformed = 0;
    let mut rejection = String::new();
    let mut previous_end = 0;
    let mut concatenated = Vec::new();
    for (i, (range, resource)) in walk.resources.iter().zip(&request.resource_logs).enumerate() {
        let mut expected = (0u64, 0u64);
        for record in resource.scope_logs.iter().flat_map(|s| &s.log_records) {
            expected.0 += 1;
            if let Err(reason) = check_record(record) {
                expected.1 += 1;
                if malformed + expected.1 == 1 {
                    rejection = reason;
                }
            }
        }
        if (range.records, range.malformed) != expected {
            return Err(format!(
                "resource {i}: walk (records, malformed) = {:?}, prost {expected:?}",
                (range.records, range.malformed)
            ));
        }
        records += expected.0;
        malformed += expected.1;
        let service = range.service(bytes).map(str::to_owned);
        if service != resource_key(resource) || service.is_some() != range.service_name.is_some() {
            return Err(format!(
                "resource {i}: service {service:?} ({:?}), prost {:?}",
                range.service_name,
                resource_key(resource)
            ));
        }
        if range.field.start < previous_end || range.field.end > bytes.len() || range.field.is_empty() {
            return Err(format!("resource {i}: field {:?} overlaps or is out of bounds", range.field));
        }
        previous_end = range.field.end;
        let slice = &bytes[range.field.clone()];
        concatenated.extend_from_slice(slice);
        match ExportLogsServiceRequest::decode(slice) {
            Ok(alone)
                if alone.resource_logs.len() == 1
                    && alone.resource_logs[0].encode_to_vec() == resource.encode_to_vec() => {}
            other => return Err(format!("resource {i}: field {:?} alone decodes to {other:?}", range.field)),
        }
    }
    let whole = ExportLogsServiceRequest::decode(concatenated.as_slice())
        .map_err(|e| format!("concatenated fields: {e}"))?;
    if whole.encode_to_vec() != request.encode_to_vec() {
        return Err("the concatenated fields decode to another request".into());
    }
    if (walk.records, walk.malformed, walk.rejection.as_str()) != (records, malformed, rejection.as_str()) {
        return Err(format!(
            "walk (records, malformed, rejection) = {:?}, prost {:?}",
            (walk.records, walk.malformed, &walk.rejection),
            (records, malformed, &rejection)
        ));
    }
    Ok(Some(walk))
}

#[track_caller]
fn walk_ok(bytes: &[u8]) -> Walk {
    agree(bytes).unwrap_or_else(|e| panic!("{e}")).expect("prost accepts the request")
}

#[track_caller]
fn walk_err(bytes: &[u8]) -> String {
    match agree(bytes) {
        Ok(None) => walk_logs_request(bytes).unwrap_err().to_string(),
        Ok(Some(walk)) => panic!("expected an error, walked {walk:?}"),
        Err(e) => panic!("{e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing protobuf by hand: repeated singular fields, unknown fields, groups, wrong wire types.

#[derive(Debug, Clone)]
enum F {
    Varint(u32, u64),
    Fixed64(u32, u64),
    Fixed32(u32, u32),
    Bytes(u32, Vec<u8>),
    Message(u32, Vec<F>),
    Group(u32, Vec<F>),
    /// Bytes written as they are (keys with odd wire types, garbage).
    Raw(Vec<u8>),
}

fn put_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_key(tag: u32, wire: u8, out: &mut Vec<u8>) {
    put_varint(u64::from(tag) << 3 | u64::from(wire), out);
}

fn encode(fields: &[F]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(fields, &mut out);
    out
}

fn encode_into(fields: &[F], out: &mut Vec<u8>) {
    for field in fields {
        match field {
            F::Varint(tag, value) => {
                put_key(*tag, 0, out);
                put_varint(*value, out);
            }
            F::Fixed64(tag, value) => {
                put_key(*tag, 1, out);
                out.extend_from_slice(&value.to_le_bytes());
            }
            F::Fixed32(tag, value) => {
                put_key(*tag, 5, out);
                out.extend_from_slice(&value.to_le_bytes());
            }
            F::Bytes(tag, bytes) => {
                put_key(*tag, 2, out);
                put_varint(bytes.len() as u64, out);
                out.extend_from_slice(bytes);
            }
            F::Message(tag, inner) => {
                let body = encode(inner);
                put_key(*tag, 2, out);
                put_varint(body.len() as u64, out);
                out.extend_from_slice(&body);
            }
            F::Group(tag, inner) => {
                put_key(*tag, 3, out);
                encode_into(inner, out);
                put_key(*tag, 4, out);
            }
            F::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
}

fn s(tag: u32, text: &str) -> F {
    F::Bytes(tag, text.as_bytes().to_vec())
}

/// A `KeyValue` with a string value.
fn kv(key: &str, value: &str) -> F {
    F::Message(1, vec![s(1, key), F::Message(2, vec![s(1, value)])])
}

/// A request of one resource with `resource_fields` and records with the given ids.
fn request_with(resource_fields: Vec<F>, ids: &[(usize, usize)]) -> Vec<u8> {
    let records = ids
        .iter()
        .map(|&(trace, span)| {
            F::Message(2, vec![F::Fixed64(1, 7), F::Bytes(9, vec![1; trace]), F::Bytes(10, vec![2; span])])
        })
        .collect();
    encode(&[F::Message(1, vec![F::Message(1, resource_fields), F::Message(2, records)])])
}

/// `shared/data/loghub`: under `$TELEMETRY_LAKE_SHARED_DIR`, else beside the checkout.
fn loghub_dir() -> std::path::PathBuf {
    std::env::var_os("TELEMETRY_LAKE_SHARED_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared").into())
        .join("data/loghub")
}

/// Real Loghub lines as the benchmarks send them: requests of `batch` records.
fn real_requests(batch: usize, count: usize) -> Vec<Vec<u8>> {
    use telemetry_lake_bench_workload::workload::{build_requests, load_lines};
    let lines = load_lines(&loghub_dir()).expect("the Loghub lines of shared/data/loghub");
    build_requests(&lines, batch, count).into_iter().take(count).map(|r| r.bytes.to_vec()).collect()
}

// ---------------------------------------------------------------------------------------------
// Unit tests, one rule each.

#[test]
fn a_real_request_is_walked_as_prost_decodes_it() {
    let bytes = &real_requests(1000, 1)[0];
    let walk = walk_ok(bytes);
    assert_eq!(walk.records, 1000);
    assert_eq!(walk.malformed, 0);
    assert_eq!(walk.rejection, "");
    let services: Vec<_> = walk.resources.iter().map(|r| r.service(bytes).unwrap()).collect();
    assert_eq!(services.len(), 8, "{services:?}");
    assert!(services.contains(&"HDFS") && services.contains(&"OpenSSH"), "{services:?}");
    assert_eq!(walk.resources.iter().map(|r| r.records).sum::<u64>(), 1000);
    // The fields tile the request: nothing but the resources in it.
    assert_eq!(walk.resources[0].field.start, 0);
    assert_eq!(walk.resources.last().unwrap().field.end, bytes.len());
}

#[test]
fn any_subset_of_the_fields_is_a_request_of_those_resources() {
    let bytes = &real_requests(200, 1)[0];
    let walk = walk_ok(bytes);
    let decoded = ExportLogsServiceRequest::decode(bytes.as_slice()).unwrap();
    let picked = [3, 0, 5];
    let framed: Vec<u8> =
        picked.iter().flat_map(|&i| bytes[walk.resources[i].field.clone()].to_vec()).collect();
    let again = ExportLogsServiceRequest::decode(framed.as_slice()).unwrap();
    let expected: Vec<_> = picked.iter().map(|&i| decoded.resource_logs[i].clone()).collect();
    assert_eq!(again.resource_logs, expected);
}

#[test]
fn malformed_ids_are_counted_with_the_appenders_reasons() {
    let ok = walk_ok(&request_with(vec![], &[(16, 8), (0, 0), (16, 0), (0, 8)]));
    assert_eq!((ok.records, ok.malformed, ok.rejection.as_str()), (4, 0, ""));

    let walk = walk_ok(&request_with(vec![], &[(16, 8), (3, 8), (16, 5), (7, 9)]));
    assert_eq!((walk.records, walk.malformed), (4, 3));
    assert_eq!(walk.rejection, "trace_id must be 16 bytes, got 3");
    assert_eq!((walk.resources[0].records, walk.resources[0].malformed), (4, 3));

    let span = walk_ok(&request_with(vec![], &[(16, 5), (3, 8)]));
    assert_eq!(span.rejection, "span_id must be 8 bytes, got 5");
    // Both wrong: the trace id is named.
    assert_eq!(walk_ok(&request_with(vec![], &[(7, 9)])).rejection, "trace_id must be 16 bytes, got 7");
}

#[test]
fn the_first_rejection_is_the_requests_first_across_resources() {
    let first = request_with(vec![kv("service.name", "a")], &[(16, 8), (16, 1)]);
    let second = request_with(vec![kv("service.name", "b")], &[(2, 8)]);
    let bytes = [first, second].concat();
    let walk = walk_ok(&bytes);
    assert_eq!((walk.records, walk.malformed), (3, 2));
    assert_eq!(walk.rejection, "span_id must be 8 bytes, got 1");
    assert_eq!(walk.resources.iter().map(|r| r.malformed).collect::<Vec<_>>(), [1, 1]);
}

#[test]
fn a_repeated_id_field_counts_as_its_last_value() {
    let record = |fields| encode(&[F::Message(1, vec![F::Message(2, vec![F::Message(2, fields)])])]);
    let fixed = walk_ok(&record(vec![F::Bytes(9, vec![1; 3]), F::Bytes(9, vec![1; 16])]));
    assert_eq!(fixed.malformed, 0);
    let broken =
        walk_ok(&record(vec![F::Bytes(9, vec![1; 16]), F::Bytes(10, vec![1; 8]), F::Bytes(10, vec![1; 2])]));
    assert_eq!((broken.malformed, broken.rejection.as_str()), (1, "span_id must be 8 bytes, got 2"));
    // An id in an unknown field number is not an id.
    assert_eq!(walk_ok(&record(vec![F::Bytes(13, vec![1; 3])])).malformed, 0);
}

#[test]
fn service_name_is_the_first_service_name_attribute_if_a_non_empty_string() {
    let name = |resource_fields: Vec<F>| {
        let bytes = request_with(resource_fields, &[(0, 0)]);
        walk_ok(&bytes).resources[0].service(&bytes).map(str::to_owned)
    };
    assert_eq!(name(vec![kv("host.name", "h"), kv("service.name", "checkout")]), Some("checkout".into()));
    assert_eq!(name(vec![kv("service.name", "first"), kv("service.name", "second")]), Some("first".into()));
    // The first one decides even when it gives no name.
    assert_eq!(name(vec![kv("service.name", ""), kv("service.name", "second")]), None);
    let int_value = F::Message(1, vec![s(1, "service.name"), F::Message(2, vec![F::Varint(3, 5)])]);
    assert_eq!(name(vec![int_value, kv("service.name", "second")]), None);
    let no_value = F::Message(1, vec![s(1, "service.name")]);
    assert_eq!(name(vec![no_value]), None);
    let empty_value = F::Message(1, vec![s(1, "service.name"), F::Message(2, vec![])]);
    assert_eq!(name(vec![empty_value]), None);
    assert_eq!(name(vec![kv("service.names", "x"), kv("Service.name", "y")]), None);
    assert_eq!(name(vec![]), None);
    // Without a resource field at all.
    let bytes = encode(&[F::Message(1, vec![F::Message(2, vec![])])]);
    assert_eq!(walk_ok(&bytes).resources[0].service_name, None);
}

#[test]
fn service_name_follows_prosts_merge_rules() {
    let name = |resource_logs_fields: Vec<F>| {
        let bytes = encode(&[F::Message(1, resource_logs_fields)]);
        walk_ok(&bytes).resources[0].service(&bytes).map(str::to_owned)
    };
    let resource = |attributes: Vec<F>| F::Message(1, attributes);
    // A repeated `resource` is merged: its attributes are concatenated, scope logs between them.
    assert_eq!(
        name(vec![
            resource(vec![kv("host.name", "h")]),
            F::Message(2, vec![]),
            resource(vec![kv("service.name", "late")])
        ]),
        Some("late".into())
    );
    assert_eq!(
        name(vec![resource(vec![kv("service.name", "early")]), resource(vec![kv("service.name", "late")])]),
        Some("early".into())
    );
    // A repeated key: the last one is the key.
    let renamed = F::Message(1, vec![s(1, "service.name"), F::Message(2, vec![s(1, "x")]), s(1, "other")]);
    assert_eq!(name(vec![resource(vec![renamed, kv("service.name", "real")])]), Some("real".into()));
    let named_late = F::Message(1, vec![s(1, "other"), F::Message(2, vec![s(1, "x")]), s(1, "service.name")]);
    assert_eq!(name(vec![resource(vec![named_late])]), Some("x".into()));
    // A repeated value is merged: the last oneof field decides.
    let kv_values = |values: Vec<Vec<F>>| {
        let mut fields = vec![s(1, "service.name")];
        fields.extend(values.into_iter().map(|v| F::Message(2, v)));
        resource(vec![F::Message(1, fields)])
    };
    assert_eq!(name(vec![kv_values(vec![vec![s(1, "a")], vec![F::Varint(2, 1)]])]), None);
    assert_eq!(name(vec![kv_values(vec![vec![F::Varint(2, 1)], vec![s(1, "b")]])]), Some("b".into()));
    assert_eq!(name(vec![kv_values(vec![vec![s(1, "a")], vec![]])]), Some("a".into()));
    assert_eq!(name(vec![kv_values(vec![vec![s(1, "a"), s(1, "b")]])]), Some("b".into()));
    assert_eq!(name(vec![kv_values(vec![vec![s(1, "a")], vec![s(1, "")]])]), None);
    assert_eq!(name(vec![kv_values(vec![vec![s(1, "a"), F::Message(5, vec![])]])]), None);
    assert_eq!(name(vec![kv_values(vec![vec![F::Bytes(7, b"a".to_vec())]])]), None);
    // Unknown fields in the value change nothing.
    assert_eq!(name(vec![kv_values(vec![vec![s(1, "a"), F::Varint(9, 1)]])]), Some("a".into()));
}

#[test]
fn unknown_fields_and_groups_are_skipped_everywhere() {
    let unknown = || {
        vec![
            F::Varint(99, u64::MAX),
            F::Fixed32(100, 1),
            F::Fixed64(101, 2),
            F::Bytes(102, vec![0xff, 0xfe]),
            F::Group(103, vec![F::Varint(1, 1), F::Group(4, vec![F::Bytes(2, vec![0xff])])]),
            F::Varint((1 << 29) - 1, 3),
        ]
    };
    let with = |mut fields: Vec<F>| {
        fields.extend(unknown());
        fields
    };
    let any = F::Message(
        2,
        with(vec![
            s(1, "svc"),
            F::Message(5, with(vec![F::Message(1, with(vec![F::Varint(3, 1)]))])),
            s(1, "svc"),
        ]),
    );
    let attribute = F::Message(1, with(vec![s(1, "service.name"), any]));
    let scope = F::Message(1, with(vec![s(1, "scope"), F::Message(3, with(vec![s(1, "k")]))]));
    let record =
        F::Message(2, with(vec![F::Bytes(9, vec![1; 3]), F::Varint(4, 1), F::Message(5, with(vec![]))]));
    let entity = F::Message(3, with(vec![s(2, "service"), s(3, "id")]));
    let resource_logs = F::Message(
        1,
        with(vec![F::Message(1, with(vec![attribute, entity])), F::Message(2, with(vec![scope, record]))]),
    );
    let mut top = unknown();
    top.push(resource_logs);
    top.extend(unknown());
    let bytes = encode(&top);
    let walk = walk_ok(&bytes);
    assert_eq!((walk.records, walk.malformed, walk.resources.len()), (1, 1, 1));
    assert_eq!(walk.resources[0].service(&bytes), Some("svc"));
}

#[test]
fn an_empty_request_and_resources_without_records_are_reported() {
    assert_eq!(walk_ok(&[]), Walk::default());
    let bytes = encode(&[
        F::Message(1, vec![]),
        F::Message(1, vec![F::Message(1, vec![kv("service.name", "idle")]), F::Message(2, vec![])]),
    ]);
    let walk = walk_ok(&bytes);
    assert_eq!(walk.records, 0);
    assert_eq!(walk.resources.len(), 2);
    assert_eq!(walk.resources[0].field, 0..2);
    assert_eq!(walk.resources[1].service(&bytes), Some("idle"));
    assert_eq!(walk.resources[1].records, 0);
}

#[test]
fn errors_are_prosts_errors() {
    let record = |fields: Vec<F>| encode(&[F::Message(1, vec![F::Message(2, vec![F::Message(2, fields)])])]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x0a], "invalid varint"),
        (vec![0x0a, 0x05, 0x00], "ExportLogsServiceRequest.resource_logs: buffer underflow"),
        (vec![0x80; 11], "invalid varint"),
        ([&[0xff; 9][..], &[0x02]].concat(), "invalid varint"),
        ([&[0xff; 9][..], &[0x01]].concat(), "invalid key value: 18446744073709551615"),
        (vec![0x0e], "invalid wire type value: 6"),
        (vec![0x0f], "invalid wire type value: 7"),
        (vec![0x02, 0x00], "invalid tag value: 0"),
        (
            vec![0x08, 0x01],
            "ExportLogsServiceRequest.resource_logs: invalid wire type: Varint (expected LengthDelimited)",
        ),
        (
            vec![0x0c],
            "ExportLogsServiceRequest.resource_logs: invalid wire type: EndGroup (expected LengthDelimited)",
        ),
        (vec![0x14], "unexpected end group tag"),
        (vec![0x1b, 0x08, 0x01, 0x24], "unexpected end group tag"),
        (vec![0x1b, 0x08, 0x01], "invalid varint"),
        (vec![0x11, 0x01], "buffer underflow"),
        (
            record(vec![F::Varint(9, 1)]),
            "LogRecord.trace_id: ScopeLogs.log_records: ResourceLogs.scope_logs: \
             ExportLogsServiceRequest.resource_logs: invalid wire type: Varint (expected LengthDelimited)",
        ),
        (record(vec![F::Varint(1, 1)]), "LogRecord.time_unix_nano: ScopeLogs.log_records"),
        (record(vec![F::Fixed64(8, 1)]), "LogRecord.flags: ScopeLogs.log_records"),
        (record(vec![F::Bytes(2, vec![])]), "LogRecord.severity_number: ScopeLogs.log_records"),
        (record(vec![F::Bytes(3, vec![0xc3])]), "LogRecord.severity_text: ScopeLogs.log_records"),
        (
            record(vec![F::Message(
                5,
                vec![F::Message(6, vec![F::Message(1, vec![F::Bytes(1, vec![0xff])])])],
            )]),
            "KeyValue.key: KeyValueList.values: AnyValue.value: LogRecord.body: ScopeLogs.log_records: \
             ResourceLogs.scope_logs: ExportLogsServiceRequest.resource_logs: invalid string value: data is not UTF-8 encoded",
        ),
        (
            encode(&[F::Message(1, vec![F::Message(1, vec![F::Message(3, vec![F::Bytes(2, vec![0x80])])])])]),
            "EntityRef.r#type: Resource.entity_refs: ResourceLogs.resource",
        ),
        // A record whose last field runs past the record's length: prost reads on, then objects.
        (
            {
                let mut bytes = record(vec![F::Fixed64(1, 0)]);
                // Shrink the record's length by one, and the enclosing lengths stay as they are.
                let at = bytes.len() - 10;
                bytes[at] -= 1;
                bytes
            },
            "delimited length exceeded",
        ),
    ];
    for (bytes, expected) in cases {
        let error = walk_err(&bytes);
        assert!(error.contains(expected), "{bytes:02x?}: {error} lacks {expected}");
        assert!(error.starts_with("failed to decode Protobuf message: "), "{error}");
    }
}

/// An `AnyValue` body nested `depth` arrays deep.
fn nested_body(depth: usize) -> Vec<u8> {
    let mut any = vec![s(1, "leaf")];
    for _ in 0..depth {
        any = vec![F::Message(5, vec![F::Message(1, any)])];
    }
    encode(&[F::Message(1, vec![F::Message(2, vec![F::Message(2, vec![F::Message(5, any)])])])])
}

#[test]
fn the_recursion_limit_is_prosts() {
    // Request, ResourceLogs, ScopeLogs, LogRecord, AnyValue, then two per array level.
    let mut accepted = 0;
    for depth in 40..52 {
        if agree(&nested_body(depth)).unwrap_or_else(|e| panic!("depth {depth}: {e}")).is_some() {
            accepted = depth;
        }
    }
    assert!((45..51).contains(&accepted), "deepest accepted {accepted}");
    assert!(walk_err(&nested_body(accepted + 1)).ends_with("recursion limit reached"));
    // Unknown groups count too.
    let mut group = F::Varint(1, 1);
    for _ in 0..101 {
        group = F::Group(20, vec![group]);
    }
    assert!(walk_err(&encode(&[group])).ends_with("recursion limit reached"));
}

#[test]
fn every_truncation_of_a_request_agrees_with_prost() {
    let mut bytes = real_requests(3, 1).remove(0);
    bytes.extend(request_with(vec![kv("service.name", "x")], &[(16, 8), (3, 0)]));
    for end in 0..=bytes.len() {
        agree(&bytes[..end]).unwrap_or_else(|e| panic!("prefix of {end} bytes: {e}"));
    }
}

#[test]
fn the_error_names_its_offset() {
    let bytes = request_with(vec![], &[(16, 8)]);
    let mut broken = bytes.clone();
    broken.extend_from_slice(&[0x0a, 0x7f]);
    let error = walk_logs_request(&broken).unwrap_err();
    assert_eq!(error.offset(), bytes.len() + 2);
    assert!(format!("{error:?}").contains(&format!("at byte {}", bytes.len() + 2)), "{error:?}");
}

// ---------------------------------------------------------------------------------------------
// Generators: requests following the schema loosely (repeats, unknown and misplaced fields, bad
// UTF-8, odd id lengths, nesting), real requests, and byte mutations of both.

fn text() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![
        12 => prop::sample::select(vec!["service.name", "host.name", "", "svc-a", "svc-b", "é"])
            .prop_map(|t| t.as_bytes().to_vec()),
        4 => "[a-z.é]{0,6}".prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 0..4),
    ]
}

fn id() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![Just(0usize), Just(8), Just(16), 0usize..20].prop_flat_map(|len| vec(any::<u8>(), len))
}

fn int() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![0u64..300, any::<u64>()]
}

/// An unknown field, or now and then a known field number with any wire type.
fn stray() -> impl Strategy<Value = F> + Clone {
    let tag = prop_oneof![12 => 13u32..40, 1 => 1u32..13, 1 => Just((1u32 << 29) - 1)];
    (tag, 0u8..6, int(), vec(any::<u8>(), 0..6)).prop_map(|(tag, kind, n, bytes)| match kind {
        0 => F::Varint(tag, n),
        1 => F::Fixed64(tag, n),
        2 => F::Fixed32(tag, n as u32),
        3 => F::Bytes(tag, bytes),
        4 => F::Group(tag, vec![F::Varint(1, n), F::Bytes(2, bytes)]),
        _ => F::Raw(bytes),
    })
}

fn any_value_fields() -> BoxedStrategy<Vec<F>> {
    let scalar = prop_oneof![
        6 => text().prop_map(|t| F::Bytes(1, t)),
        1 => int().prop_map(|n| F::Varint(2, n)),
        2 => int().prop_map(|n| F::Varint(3, n)),
        1 => any::<u64>().prop_map(|n| F::Fixed64(4, n)),
        1 => vec(any::<u8>(), 0..4).prop_map(|b| F::Bytes(7, b)),
        1 => int().prop_map(|n| F::Varint(8, n)),
        1 => stray(),
    ];
    vec(scalar.clone(), 0..3)
        .prop_recursive(3, 24, 3, move |inner| {
            let array =
                vec(inner.clone().prop_map(|v| F::Message(1, v)), 0..3).prop_map(|v| F::Message(5, v));
            let kvlist = vec(key_value_fields(inner).prop_map(|v| F::Message(1, v)), 0..3)
                .prop_map(|v| F::Message(6, v));
            vec(prop_oneof![4 => scalar.clone(), 1 => array, 1 => kvlist], 0..3)
        })
        .boxed()
}

fn key_value_fields(value: impl Strategy<Value = Vec<F>> + Clone) -> impl Strategy<Value = Vec<F>> + Clone {
    let field = prop_oneof![
        4 => text().prop_map(|t| F::Bytes(1, t)),
        4 => value.prop_map(|v| F::Message(2, v)),
        1 => int().prop_map(|n| F::Varint(3, n)),
        1 => stray(),
    ];
    // Mostly a key then a value; sometimes anything in any order.
    prop_oneof![
        3 => (text(), value_of_text(), vec(field.clone(), 0..2)).prop_map(|(k, v, mut rest)| {
            let mut fields = vec![F::Bytes(1, k), v];
            fields.append(&mut rest);
            fields
        }),
        1 => vec(field, 0..4),
    ]
}

fn value_of_text() -> impl Strategy<Value = F> + Clone {
    text().prop_map(|t| F::Message(2, vec![F::Bytes(1, t)]))
}

fn attribute() -> impl Strategy<Value = F> + Clone {
    key_value_fields(any_value_fields()).prop_map(|v| F::Message(1, v))
}

fn resource_fields() -> impl Strategy<Value = Vec<F>> + Clone {
    let entity =
        vec(prop_oneof![4 => (1u32..5, text()).prop_map(|(tag, t)| F::Bytes(tag, t)), 1 => stray()], 0..3);
    vec(
        prop_oneof![
            8 => attribute(),
            4 => value_of_text().prop_map(|v| F::Message(1, vec![s(1, "service.name"), v])),
            1 => int().prop_map(|n| F::Varint(2, n)),
            1 => entity.prop_map(|v| F::Message(3, v)),
            1 => stray(),
        ],
        0..5,
    )
}

fn record_fields() -> impl Strategy<Value = Vec<F>> + Clone {
    vec(
        prop_oneof![
            1 => any::<u64>().prop_map(|n| F::Fixed64(1, n)),
            1 => any::<u64>().prop_map(|n| F::Fixed64(11, n)),
            1 => int().prop_map(|n| F::Varint(2, n)),
            1 => text().prop_map(|t| F::Bytes(3, t)),
            2 => any_value_fields().prop_map(|v| F::Message(5, v)),
            1 => attribute().prop_map(|a| match a {
                F::Message(_, v) => F::Message(6, v),
                other => other,
            }),
            1 => int().prop_map(|n| F::Varint(7, n)),
            1 => any::<u32>().prop_map(|n| F::Fixed32(8, n)),
            3 => id().prop_map(|b| F::Bytes(9, b)),
            3 => id().prop_map(|b| F::Bytes(10, b)),
            1 => text().prop_map(|t| F::Bytes(12, t)),
            1 => stray(),
        ],
        0..8,
    )
}

fn scope_logs_fields() -> impl Strategy<Value = Vec<F>> + Clone {
    let scope = vec(
        prop_oneof![
            2 => (1u32..3, text()).prop_map(|(tag, t)| F::Bytes(tag, t)),
            1 => attribute().prop_map(|a| match a {
                F::Message(_, v) => F::Message(3, v),
                other => other,
            }),
            1 => int().prop_map(|n| F::Varint(4, n)),
            1 => stray(),
        ],
        0..3,
    );
    vec(
        prop_oneof![
            1 => scope.prop_map(|v| F::Message(1, v)),
            6 => record_fields().prop_map(|v| F::Message(2, v)),
            1 => text().prop_map(|t| F::Bytes(3, t)),
            1 => stray(),
        ],
        0..6,
    )
}

fn request_fields() -> impl Strategy<Value = Vec<F>> + Clone {
    let resource_logs = vec(
        prop_oneof![
            3 => resource_fields().prop_map(|v| F::Message(1, v)),
            4 => scope_logs_fields().prop_map(|v| F::Message(2, v)),
            1 => text().prop_map(|t| F::Bytes(3, t)),
            1 => stray(),
        ],
        0..5,
    );
    vec(prop_oneof![8 => resource_logs.prop_map(|v| F::Message(1, v)), 1 => stray()], 0..4)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Truncate(Index),
    Delete(Index, usize),
    Insert(Index, Vec<u8>),
    Duplicate(Index, usize),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> + Clone {
    let one = prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, bit)),
        3 => (any::<Index>(), prop_oneof![Just(0x00u8), Just(0x7f), Just(0x80), Just(0xff), any::<u8>()])
            .prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1usize..8).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), vec(any::<u8>(), 1..6)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..40).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ];
    vec(one, 1..4)
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        let len = bytes.len();
        match mutation {
            Mutation::Insert(i, new) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, new.iter().copied());
            }
            _ if len == 0 => {}
            Mutation::Flip(i, bit) => bytes[i.index(len)] ^= 1 << bit,
            Mutation::Set(i, byte) => bytes[i.index(len)] = *byte,
            Mutation::Truncate(i) => bytes.truncate(i.index(len)),
            Mutation::Delete(i, n) => {
                let at = i.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Duplicate(i, n) => {
                let at = i.index(len);
                let copy = bytes[at..(at + n).min(len)].to_vec();
                bytes.splice(at..at, copy);
            }
        }
    }
    bytes
}

/// Small real requests (Loghub lines as the benchmarks send them), some with ids broken.
fn real_corpus() -> &'static [Vec<u8>] {
    static CORPUS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut corpus = real_requests(6, 12);
        for bytes in corpus.iter_mut().step_by(3) {
            // Widen the first trace id of the request to 17 bytes, keeping the encoding valid.
            let decoded = ExportLogsServiceRequest::decode(bytes.as_slice()).unwrap();
            let mut decoded = decoded;
            if let Some(record) = decoded
                .resource_logs
                .iter_mut()
                .flat_map(|r| &mut r.scope_logs)
                .flat_map(|s| &mut s.log_records)
                .find(|r| !r.trace_id.is_empty())
            {
                record.trace_id.push(0);
            }
            *bytes = decoded.encode_to_vec();
        }
        corpus
    })
}

/// A record body nested around prost's recursion limit: unknown groups (0 to 100 deep) inside
/// 25 to 50 levels of arrays and key-value lists.
fn deep() -> impl Strategy<Value = Vec<u8>> {
    (0usize..100, vec(any::<bool>(), 25..50)).prop_map(|(groups, levels)| {
        let mut any = vec![s(1, "leaf")];
        for _ in 0..groups {
            any = vec![F::Group(20, any)];
        }
        for array in levels {
            any = if array {
                vec![F::Message(5, vec![F::Message(1, any)])]
            } else {
                vec![F::Message(6, vec![F::Message(1, vec![s(1, "k"), F::Message(2, any)])])]
            };
        }
        encode(&[F::Message(1, vec![F::Message(2, vec![F::Message(2, vec![F::Message(5, any)])])])])
    })
}

/// Everything the fuzzing feeds the walk.
fn inputs() -> impl Strategy<Value = Vec<u8>> {
    let structured = request_fields().prop_map(|f| encode(&f));
    prop_oneof![
        2 => structured.clone(),
        2 => (structured, mutations()).prop_map(|(bytes, m)| mutate(bytes, &m)),
        2 => (prop::sample::select(real_corpus()), mutations()).prop_map(|(bytes, m)| mutate(bytes, &m)),
        1 => vec(any::<u8>(), 0..64),
        1 => (deep(), prop_oneof![Just(vec![]), mutations()]).prop_map(|(bytes, m)| mutate(bytes, &m)),
    ]
}

fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn structured_requests_agree_with_prost(fields in request_fields()) {
        agree(&encode(&fields)).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn mutated_requests_agree_with_prost(fields in request_fields(), m in mutations()) {
        agree(&mutate(encode(&fields), &m)).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn mutated_real_requests_agree_with_prost(
        bytes in prop::sample::select(real_corpus()),
        m in mutations(),
    ) {
        agree(&mutate(bytes, &m)).map_err(TestCaseError::fail)?;
    }
}

/// Enough of the generated requests are valid, with records and malformed ids, for the
/// agreement above to test more than error paths.
#[test]
fn the_generators_reach_valid_requests_with_records_and_bad_ids() {
    let mut runner = TestRunner::new_with_rng(config(1), TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]));
    let strategy = request_fields();
    let (mut valid, mut with_records, mut with_malformed, mut named) = (0, 0, 0, 0);
    for _ in 0..500 {
        let bytes = encode(&strategy.new_tree(&mut runner).unwrap().current());
        if let Ok(walk) = walk_logs_request(&bytes) {
            valid += 1;
            with_records += usize::from(walk.records > 0);
            with_malformed += usize::from(walk.malformed > 0);
            named += usize::from(walk.resources.iter().any(|r| r.service_name.is_some()));
        }
    }
    assert!(
        valid > 150 && with_records > 75 && with_malformed > 25 && named > 25,
        "{valid} {with_records} {with_malformed} {named}"
    );
}

/// CPU time of this thread (`/proc/thread-self/schedstat`), wall time where that is missing.
fn thread_cpu(started: Instant) -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_else(|| started.elapsed())
}

/// The long fuzz run: `WALK_FUZZ_SECONDS` (default 60) of this thread's CPU time spent on
/// [`inputs`], in rounds of 5000 cases, each from its own seed; a disagreement names its round's
/// seed, and `WALK_FUZZ_SEED=<seed>` replays that round alone. Prints progress every 30 s, then
/// the cases run, how many were valid requests and why the others failed (prost's and the walk's
/// identical reasons). See the module docs of `walk.rs`.
#[test]
#[ignore = "long run; see the module docs of otlp::walk"]
fn fuzz_against_prost() {
    let seconds = std::env::var("WALK_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let replay: Option<u64> = std::env::var("WALK_FUZZ_SEED").ok().and_then(|s| s.parse().ok());
    let strategy = inputs();
    let (cases, valid, records) = (Cell::new(0u64), Cell::new(0u64), Cell::new(0u64));
    let reasons = std::cell::RefCell::new(std::collections::BTreeMap::<String, u64>::new());
    let started = Instant::now();
    let cpu_at_start = thread_cpu(started);
    let mut last_report = Instant::now();
    let mut round = 0u64;
    loop {
        let seed = replay.unwrap_or_else(|| {
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            (nanos as u64) ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        });
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let mut runner =
            TestRunner::new_with_rng(config(5000), TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
        let result = runner.run(&strategy, |bytes| {
            cases.set(cases.get() + 1);
            match agree(&bytes).map_err(TestCaseError::fail)? {
                Some(walk) => {
                    valid.set(valid.get() + 1);
                    records.set(records.get() + walk.records);
                }
                None => {
                    let reason = match walk_logs_request(&bytes).unwrap_err().kind() {
                        ErrorKind::InvalidKey(_) => "InvalidKey".to_owned(),
                        kind => format!("{kind:?}"),
                    };
                    *reasons.borrow_mut().entry(reason).or_default() += 1;
                }
            }
            Ok(())
        });
        if let Err(failure) = result {
            panic!("round {round} (WALK_FUZZ_SEED={seed}) found a disagreement: {failure}");
        }
        round += 1;
        let cpu = thread_cpu(started) - cpu_at_start;
        if last_report.elapsed() >= Duration::from_secs(30) {
            eprintln!("walk fuzz: {} cases, {:.0} CPU-s, last seed {seed}", cases.get(), cpu.as_secs_f64());
            last_report = Instant::now();
        }
        if replay.is_some() || cpu.as_secs() >= seconds {
            break;
        }
    }
    println!(
        "walk fuzz: {} cases in {round} rounds ({:.0} CPU-s, {:.0} s), all agreeing with prost; {} valid requests \
         holding {} records; the others failed with:",
        cases.get(),
        (thread_cpu(started) - cpu_at_start).as_secs_f64(),
        started.elapsed().as_secs_f64(),
        valid.get(),
        records.get(),
    );
    for (reason, count) in reasons.borrow().iter() {
        println!("  {count:>10}  {reason}");
    }
}

/// The request types the tests build with prost too, so the hand encoder is checked against
/// prost's own encoding once.
#[test]
fn the_hand_encoder_writes_what_prost_writes() {
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue { value: Some(any_value::Value::StringValue("a".into())) }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: 7,
                    trace_id: vec![1; 3],
                    span_id: vec![2; 8],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    assert_eq!(request_with(vec![kv("service.name", "a")], &[(3, 8)]), request.encode_to_vec());
}
