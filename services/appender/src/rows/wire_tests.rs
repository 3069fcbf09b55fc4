//! `wire` (rows from the bytes) against `to_rows` (rows from prost's structs): identical
//! `RecordBatch`es on real Loghub requests, on seeded random requests of every shape, and on
//! requests whose fields repeat (prost's merge rules).

use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    resource::v1::Resource,
};
use prost::Message as _;

use super::{KafkaPosition, to_rows, wire};

/// Both ways over the same bytes; panics with the first difference.
fn assert_same_rows(bytes: &[u8], source: Option<KafkaPosition>, received_at: i64) -> usize {
    let request = ExportLogsServiceRequest::decode(bytes).expect("the test's bytes decode");
    let expected = to_rows(&request, source, received_at).batch;
    let actual = wire::decode_rows(bytes, source, received_at).expect("wire decodes what prost decodes");
    assert_eq!(actual.schema(), expected.schema());
    assert_eq!(actual.num_rows(), expected.num_rows());
    for (i, (a, e)) in actual.columns().iter().zip(expected.columns()).enumerate() {
        assert_eq!(a, e, "column {} differs", expected.schema().field(i).name());
    }
    assert_eq!(actual, expected);
    expected.num_rows()
}

/// A small deterministic generator (PCG-style LCG), so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn string(&mut self) -> String {
        const WORDS: [&str; 8] = ["", "a", "checkout", "ünïcødé", "x y z", "service.name", "k", "日本"];
        WORDS[self.below(WORDS.len() as u64) as usize].to_string()
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn any_value(rng: &mut Rng, depth: u32) -> Option<AnyValue> {
    let value = match rng.below(if depth > 1 { 7 } else { 10 }) {
        0 => return None,
        1 => None,
        2 => Some(Value::BoolValue(rng.chance(50))),
        3 => Some(Value::IntValue(rng.next() as i64 - (1 << 30))),
        4 => Some(Value::DoubleValue(match rng.below(4) {
            0 => f64::NAN,
            1 => 0.5,
            2 => -1e300,
            _ => rng.next() as f64 / 7.0,
        })),
        5 => {
            let len = rng.below(5) as usize;
            Some(Value::BytesValue(rng.bytes(len)))
        }
        6 => Some(Value::StringValueStrindex(rng.next() as i32)),
        7 => Some(Value::ArrayValue(ArrayValue {
            values: (0..rng.below(3)).map(|_| any_value(rng, depth + 1).unwrap_or_default()).collect(),
        })),
        8 => Some(Value::KvlistValue(KeyValueList { values: attributes(rng, depth + 1) })),
        _ => Some(Value::StringValue(rng.string())),
    };
    Some(AnyValue { value })
}

fn attributes(rng: &mut Rng, depth: u32) -> Vec<KeyValue> {
    (0..rng.below(5))
        .map(|_| KeyValue {
            key: rng.string(),
            value: if rng.chance(60) {
                Some(AnyValue { value: Some(Value::StringValue(rng.string())) })
            } else {
                any_value(rng, depth)
            },
            key_strindex: if rng.chance(10) { 3 } else { 0 },
        })
        .collect()
}

fn record(rng: &mut Rng) -> LogRecord {
    let id_len = |rng: &mut Rng, good: usize| match rng.below(10) {
        0 => 3,
        1..=3 => 0,
        _ => good,
    };
    let (trace, span) = (id_len(rng, 16), id_len(rng, 8));
    LogRecord {
        time_unix_nano: if rng.chance(20) { 0 } else { 1_700_000_000_000_000_000 + rng.next() },
        observed_time_unix_nano: if rng.chance(30) { 0 } else { 1_700_000_000_000_000_000 + rng.next() },
        severity_number: rng.below(25) as i32 - 1,
        severity_text: rng.string(),
        body: if rng.chance(70) {
            Some(AnyValue { value: Some(Value::StringValue(rng.string())) })
        } else {
            any_value(rng, 0)
        },
        attributes: attributes(rng, 0),
        dropped_attributes_count: if rng.chance(10) { u32::MAX } else { rng.below(3) as u32 },
        flags: rng.next() as u32,
        trace_id: rng.bytes(trace),
        span_id: rng.bytes(span),
        event_name: rng.string(),
    }
}

fn request(rng: &mut Rng) -> ExportLogsServiceRequest {
    let resource_attributes = |rng: &mut Rng| {
        let mut a = attributes(rng, 0);
        if rng.chance(70) {
            a.insert(
                rng.below(a.len() as u64 + 1) as usize,
                KeyValue { key: "service.name".into(), value: any_value(rng, 0), key_strindex: 0 },
            );
        }
        if rng.chance(40) {
            let key = if rng.chance(50) { "deployment.environment" } else { "deployment.environment.name" };
            a.push(KeyValue { key: key.into(), value: any_value(rng, 0), key_strindex: 0 });
        }
        a
    };
    ExportLogsServiceRequest {
        resource_logs: (0..rng.below(4))
            .map(|_| ResourceLogs {
                resource: rng.chance(80).then(|| Resource {
                    attributes: resource_attributes(rng),
                    dropped_attributes_count: rng.below(2) as u32,
                    entity_refs: Vec::new(),
                }),
                scope_logs: (0..rng.below(3))
                    .map(|_| ScopeLogs {
                        scope: rng.chance(70).then(|| InstrumentationScope {
                            name: rng.string(),
                            version: rng.string(),
                            attributes: attributes(rng, 0),
                            dropped_attributes_count: 0,
                        }),
                        log_records: (0..rng.below(6)).map(|_| record(rng)).collect(),
                        schema_url: rng.string(),
                    })
                    .collect(),
                schema_url: rng.string(),
            })
            .collect(),
    }
}

#[test]
fn random_requests_of_every_shape_give_the_same_rows() {
    let mut rng = Rng(0x5eed);
    let mut rows = 0;
    for case in 0..3_000 {
        let request = request(&mut rng);
        let source = rng.chance(50).then(|| KafkaPosition { partition: case % 7, offset: case as i64 * 3 });
        rows += assert_same_rows(&request.encode_to_vec(), source, 1_234_567 + case as i64);
    }
    assert!(rows > 5_000, "only {rows} rows compared");
}

/// A length-delimited field `tag` holding `body`.
fn field(tag: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

#[test]
fn repeated_fields_merge_as_prost_merges_them() {
    let mut rng = Rng(42);
    for _ in 0..1_000 {
        // Every message of the request is the concatenation of two encodings of it (prost
        // merges them: scalars and strings last-wins, repeated fields appended, sub-messages
        // merged, the last oneof field wins), and unknown fields are sprinkled in.
        let mut unknown = Vec::new();
        prost::encoding::encode_key(99, prost::encoding::WireType::Varint, &mut unknown);
        prost::encoding::encode_varint(7, &mut unknown);
        let twice = |rng: &mut Rng, a: Vec<u8>, b: Vec<u8>| {
            let mut out = a;
            if rng.chance(30) {
                out.extend_from_slice(&unknown);
            }
            out.extend(b);
            out
        };
        let mut scope_logs = Vec::new();
        for _ in 0..rng.below(3) {
            let (a, b) = (record(&mut rng), record(&mut rng));
            let log_record = twice(&mut rng, a.encode_to_vec(), b.encode_to_vec());
            let scope = InstrumentationScope {
                name: rng.string(),
                version: rng.string(),
                attributes: attributes(&mut rng, 0),
                dropped_attributes_count: 0,
            }
            .encode_to_vec();
            let scope = twice(&mut rng, scope, Vec::new());
            let mut body = field(1, &scope);
            body.extend(field(2, &log_record));
            body.extend(field(
                1,
                &InstrumentationScope { name: rng.string(), ..Default::default() }.encode_to_vec(),
            ));
            body.extend(field(3, rng.string().as_bytes()));
            body.extend(field(2, &record(&mut rng).encode_to_vec()));
            scope_logs.push(body);
        }
        let resource_a = Resource { attributes: attributes(&mut rng, 0), ..Default::default() };
        let resource_b = Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue { value: Some(Value::StringValue(rng.string())) }),
                key_strindex: 0,
            }],
            ..Default::default()
        };
        let mut resource_logs = Vec::new();
        for (i, scope) in scope_logs.iter().enumerate() {
            resource_logs.extend(field(2, scope));
            if i == 0 {
                // The resource after a scope, and repeated: merged.
                resource_logs.extend(field(1, &resource_a.encode_to_vec()));
            }
        }
        resource_logs.extend(field(1, &resource_b.encode_to_vec()));
        resource_logs.extend(field(3, rng.string().as_bytes()));
        let mut bytes = field(1, &resource_logs);
        bytes.extend_from_slice(&unknown);
        bytes.extend(field(1, &ResourceLogs::default().encode_to_vec()));
        assert_same_rows(&bytes, None, 99);
    }
}

#[test]
fn loghub_requests_give_the_same_rows() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/loghub");
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let system = path.file_stem().unwrap().to_string_lossy().split('_').next().unwrap().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            lines.extend(text.lines().map(|l| (system.clone(), l.to_string())));
        }
    }
    assert!(lines.len() >= 16_000, "{} lines in {}", lines.len(), dir.display());
    let mut rows = 0;
    for (n, chunk) in lines.chunks(1_000).enumerate() {
        let mut resource_logs: Vec<ResourceLogs> = Vec::new();
        for (i, (system, text)) in chunk.iter().enumerate() {
            let record = LogRecord {
                time_unix_nano: 1_765_000_000_000_000_000 + (n * 1_000 + i) as u64 * 1_000,
                observed_time_unix_nano: 1_765_000_000_000_000_000,
                severity_number: 9,
                severity_text: "INFO".into(),
                body: Some(AnyValue { value: Some(Value::StringValue(text.clone())) }),
                attributes: vec![
                    KeyValue {
                        key: "log.file.name".into(),
                        value: Some(AnyValue { value: Some(Value::StringValue(format!("{system}_2k.log"))) }),
                        key_strindex: 0,
                    },
                    KeyValue {
                        key: "log.file.line".into(),
                        value: Some(AnyValue { value: Some(Value::IntValue(i as i64)) }),
                        key_strindex: 0,
                    },
                ],
                trace_id: if i % 10 == 0 { vec![7; 16] } else { Vec::new() },
                span_id: if i % 10 == 0 { vec![9; 8] } else { Vec::new() },
                ..Default::default()
            };
            let service = |r: &ResourceLogs| {
                r.resource.as_ref().and_then(|r| r.attributes.first()).map(|kv| {
                    matches!(&kv.value, Some(AnyValue { value: Some(Value::StringValue(s)) }) if s == system)
                }) == Some(true)
            };
            match resource_logs.iter_mut().find(|r| service(r)) {
                Some(r) => r.scope_logs[0].log_records.push(record),
                None => resource_logs.push(ResourceLogs {
                    resource: Some(Resource {
                        attributes: vec![
                            KeyValue {
                                key: "service.name".into(),
                                value: Some(AnyValue { value: Some(Value::StringValue(system.clone())) }),
                                key_strindex: 0,
                            },
                            KeyValue {
                                key: "host.name".into(),
                                value: Some(AnyValue { value: Some(Value::StringValue("node-1".into())) }),
                                key_strindex: 0,
                            },
                        ],
                        ..Default::default()
                    }),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(InstrumentationScope { name: "loghub".into(), ..Default::default() }),
                        log_records: vec![record],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }
        }
        let request = ExportLogsServiceRequest { resource_logs };
        rows += assert_same_rows(
            &request.encode_to_vec(),
            Some(KafkaPosition { partition: 1, offset: n as i64 }),
            5,
        );
    }
    assert_eq!(rows, lines.len());
}

#[test]
fn malformed_bytes_are_an_error_not_a_panic() {
    let mut rng = Rng(3);
    let mut errors = 0;
    for _ in 0..500 {
        let bytes = request(&mut rng).encode_to_vec();
        if bytes.is_empty() {
            continue;
        }
        let cut = rng.below(bytes.len() as u64) as usize;
        let mut broken = bytes[..cut].to_vec();
        if rng.chance(50) {
            broken.push(0xff);
        }
        match wire::decode_rows(&broken, None, 0) {
            Err(_) => errors += 1,
            Ok(batch) => {
                // Whatever decodes must decode as prost decodes it.
                if ExportLogsServiceRequest::decode(broken.as_slice()).is_ok() {
                    assert_same_rows(&broken, None, 0);
                } else {
                    let _ = batch;
                }
            }
        }
    }
    assert!(errors > 100, "{errors} errors");
}
