//! OTLP logs -> Arrow rows of the lake's shape.
//!
//! In: an `ExportLogsServiceRequest` (and, in Kafka mode, the source partition and offset).
//! Out: a `RecordBatch` whose columns are the `LogRow` columns of `telemetry-lake-proto`, in
//! order, plus how many records were rejected and why. A record is rejected only when it fails
//! `telemetry_lake_common::otlp::records::check_record` (a trace or span id of the wrong
//! length), the check the ingester and the embedded export path apply before anything is
//! staged; everything else is kept.
//!
//! Two ways there: [`to_rows`] from the prost-decoded request (the reference), and [`wire`]
//! straight from the encoded bytes, which the flush uses (same rows, checked by the tests).

use std::{
    borrow::Cow,
    sync::{Arc, LazyLock},
};

use arrow_array::{
    ArrayRef, RecordBatch,
    builder::{
        Int32Builder, Int64Builder, MapBuilder, MapFieldNames, StringBuilder, TimestampMicrosecondBuilder,
    },
};
use arrow_schema::{Field, Schema, SchemaRef};
use base64::Engine;
use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    resource::v1::Resource,
};
use telemetry_lake_common::otlp::records;
use telemetry_lake_proto::{MAP_ENTRIES, RowTable, UTC};

pub mod metrics;
pub mod spans;
pub mod wire;
#[cfg(test)]
mod wire_tests;

/// Where a request came from in Kafka; `None` in embedded mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaPosition {
    pub partition: i32,
    pub offset: i64,
}

/// The rows of one request.
#[derive(Debug, Clone)]
pub struct Rows {
    pub batch: RecordBatch,
    pub rejected: u64,
    /// Why the first rejected record was rejected; empty when none was.
    pub rejection: String,
}

/// Attributes as a `map<string, string>` column of a serde row (`spans`, `metrics`), in their
/// order, as [`flatten_attributes`] gives them.
#[derive(Debug, Default)]
pub(crate) struct AttributeMap<'a>(pub Vec<(&'a str, Cow<'a, str>)>);

impl<'a> AttributeMap<'a> {
    pub(crate) fn of(attributes: &'a [KeyValue]) -> Self {
        Self(flatten_attributes(attributes))
    }
}

impl serde::Serialize for AttributeMap<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value.as_ref())?;
        }
        map.end()
    }
}

/// A resource's service name (`service.name`) and attributes: what every row of its items
/// carries (`spans`, `metrics`).
pub(crate) fn resource_columns(resource: Option<&Resource>) -> (Option<String>, AttributeMap<'_>) {
    let attributes = resource.map(|r| r.attributes.as_slice()).unwrap_or_default();
    (string_attribute(attributes, "service.name"), AttributeMap::of(attributes))
}

/// Rows of a table made with serde (`spans`, `metrics`): `rows` serialized against the
/// table's Arrow schema.
pub(crate) fn serde_batch<T: serde::Serialize>(table: RowTable, rows: &[T]) -> Result<RecordBatch, String> {
    let schema = table.arrow_schema();
    serde_arrow::to_record_batch(schema.fields(), &rows)
        .map_err(|e| format!("rows of {} do not fit its schema: {e}", table.default_name()))
}

/// Arrow schema of the staging batches: the row's names with plain (id-less) Arrow types,
/// which DuckDB's appender takes as they are.
pub fn staging_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| RowBuilders::new(0).finish().schema());
    SCHEMA.clone()
}

/// Converts a request. `received_at_micros` stands in for records with neither timestamp.
pub fn to_rows(
    request: &ExportLogsServiceRequest,
    source: Option<KafkaPosition>,
    received_at_micros: i64,
) -> Rows {
    let capacity =
        request.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len()).sum();
    let mut b = RowBuilders::new(capacity);
    let mut rejected = 0u64;
    let mut rejection = String::new();
    for resource_logs in &request.resource_logs {
        let resource_attributes =
            resource_logs.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default();
        let service_name = string_attribute(resource_attributes, "service.name");
        let environment = string_attribute(resource_attributes, "deployment.environment.name")
            .or_else(|| string_attribute(resource_attributes, "deployment.environment"));
        let resource_attributes = flatten_attributes(resource_attributes);
        for scope_logs in &resource_logs.scope_logs {
            let scope = scope_logs.scope.as_ref();
            let scope_attributes =
                flatten_attributes(scope.map(|s| s.attributes.as_slice()).unwrap_or_default());
            for record in &scope_logs.log_records {
                if let Err(reason) = records::check_record(record) {
                    if rejected == 0 {
                        rejection = reason;
                    }
                    rejected += 1;
                    continue;
                }
                let timestamp_nanos = if record.time_unix_nano != 0 {
                    record.time_unix_nano
                } else {
                    record.observed_time_unix_nano
                };
                let timestamp =
                    if timestamp_nanos != 0 { nanos_to_micros(timestamp_nanos) } else { received_at_micros };
                b.timestamp.append_value(timestamp);
                b.observed_timestamp.append_option(
                    (record.observed_time_unix_nano != 0)
                        .then(|| nanos_to_micros(record.observed_time_unix_nano)),
                );
                b.severity_number.append_value(record.severity_number);
                b.severity_text.append_value(&record.severity_text);
                let body = body_text(record.body.as_ref());
                b.body.append_value(body.as_ref());
                b.trace_id.append_option(hex_id(&record.trace_id));
                b.span_id.append_option(hex_id(&record.span_id));
                b.trace_flags.append_value((record.flags & 0xff) as i32);
                b.event_name.append_option(non_empty(&record.event_name));
                b.service_name.append_option(service_name.as_deref());
                b.deployment_environment.append_option(environment.as_deref());
                append_map(&mut b.resource_attributes, &resource_attributes);
                append_map(&mut b.scope_attributes, &scope_attributes);
                let log_attributes = flatten_attributes(&record.attributes);
                append_map(&mut b.log_attributes, &log_attributes);
                b.scope_name.append_option(scope.and_then(|s| non_empty(&s.name)));
                b.scope_version.append_option(scope.and_then(|s| non_empty(&s.version)));
                b.resource_schema_url.append_option(non_empty(&resource_logs.schema_url));
                b.scope_schema_url.append_option(non_empty(&scope_logs.schema_url));
                b.dropped_attributes_count
                    .append_value(record.dropped_attributes_count.min(i32::MAX as u32) as i32);
                b.kafka_partition.append_option(source.map(|s| s.partition));
                b.kafka_offset.append_option(source.map(|s| s.offset));
            }
        }
    }
    Rows { batch: b.finish(), rejected, rejection }
}

pub(crate) fn nanos_to_micros(nanos: u64) -> i64 {
    (nanos / 1_000).min(i64::MAX as u64) as i64
}

pub(crate) fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

pub(crate) fn hex_id(id: &[u8]) -> Option<String> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if id.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(id.len() * 2);
    for byte in id {
        out.push(HEX[(byte >> 4) as usize] as char);
        out.push(HEX[(byte & 0xf) as usize] as char);
    }
    Some(out)
}

pub(crate) fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().rev().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

/// String bodies as they are; any other value as its OTLP/JSON encoding.
fn body_text(body: Option<&AnyValue>) -> Cow<'_, str> {
    match body.and_then(|b| b.value.as_ref()) {
        None => Cow::Borrowed(""),
        Some(Value::StringValue(s)) => Cow::Borrowed(s),
        Some(_) => Cow::Owned(serde_json::to_string(body.expect("matched Some")).unwrap_or_default()),
    }
}

/// Attribute values as strings: strings as they are, anything else as plain JSON. OTLP forbids
/// repeated keys but senders do repeat them; a map with a repeated key is unreadable for DuckDB,
/// so the last value wins, as in the Collector's exporters.
pub(crate) fn flatten_attributes(attributes: &[KeyValue]) -> Vec<(&str, Cow<'_, str>)> {
    let mut flat: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(attributes.len());
    for kv in attributes {
        let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => Cow::Borrowed(s.as_str()),
            other => Cow::Owned(plain_json(other).to_string()),
        };
        match flat.iter_mut().find(|(key, _)| *key == kv.key) {
            Some(entry) => entry.1 = value,
            None => flat.push((kv.key.as_str(), value)),
        }
    }
    flat
}

fn plain_json(value: Option<&Value>) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        None => J::Null,
        Some(Value::StringValue(s)) => J::String(s.clone()),
        Some(Value::BoolValue(b)) => J::Bool(*b),
        Some(Value::IntValue(i)) => J::from(*i),
        Some(Value::DoubleValue(d)) => serde_json::Number::from_f64(*d).map(J::Number).unwrap_or(J::Null),
        Some(Value::BytesValue(b)) => J::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Some(Value::ArrayValue(a)) => {
            J::Array(a.values.iter().map(|v| plain_json(v.value.as_ref())).collect())
        }
        Some(Value::KvlistValue(kv)) => J::Object(
            kv.values
                .iter()
                .map(|kv| (kv.key.clone(), plain_json(kv.value.as_ref().and_then(|v| v.value.as_ref()))))
                .collect(),
        ),
        Some(_) => J::Null,
    }
}

fn append_map(builder: &mut MapBuilder<StringBuilder, StringBuilder>, entries: &[(&str, Cow<'_, str>)]) {
    for (key, value) in entries {
        builder.keys().append_value(key);
        builder.values().append_value(value);
    }
    builder.append(true).expect("keys and values are appended in pairs");
}

struct RowBuilders {
    timestamp: TimestampMicrosecondBuilder,
    observed_timestamp: TimestampMicrosecondBuilder,
    severity_number: Int32Builder,
    severity_text: StringBuilder,
    body: StringBuilder,
    trace_id: StringBuilder,
    span_id: StringBuilder,
    trace_flags: Int32Builder,
    event_name: StringBuilder,
    service_name: StringBuilder,
    deployment_environment: StringBuilder,
    resource_attributes: MapBuilder<StringBuilder, StringBuilder>,
    scope_attributes: MapBuilder<StringBuilder, StringBuilder>,
    log_attributes: MapBuilder<StringBuilder, StringBuilder>,
    scope_name: StringBuilder,
    scope_version: StringBuilder,
    resource_schema_url: StringBuilder,
    scope_schema_url: StringBuilder,
    dropped_attributes_count: Int32Builder,
    kafka_partition: Int32Builder,
    kafka_offset: Int64Builder,
}

impl RowBuilders {
    /// Builders for `capacity` rows sized like `previous` (a batch of about as many rows), so
    /// that filling them needs no reallocation.
    fn like(capacity: usize, previous: &RecordBatch) -> Self {
        use arrow_array::{Array, cast::AsArray};
        let mut b = Self::new(capacity);
        let room = |bytes: usize| bytes + bytes / 8 + 64;
        let string = |name: &str| {
            let bytes = previous.column_by_name(name).map_or(0, |c| c.as_string::<i32>().values().len());
            StringBuilder::with_capacity(capacity, room(bytes))
        };
        let map = |name: &str| {
            let names = MapFieldNames { entry: MAP_ENTRIES.into(), key: "key".into(), value: "value".into() };
            let (entries, keys, values) = previous.column_by_name(name).map_or((0, 0, 0), |c| {
                let map = c.as_map();
                (
                    map.keys().len(),
                    map.keys().as_string::<i32>().values().len(),
                    map.values().as_string::<i32>().values().len(),
                )
            });
            MapBuilder::with_capacity(
                Some(names),
                StringBuilder::with_capacity(room(entries), room(keys)),
                StringBuilder::with_capacity(room(entries), room(values)),
                capacity,
            )
        };
        b.severity_text = string("severity_text");
        b.body = string("body");
        b.trace_id = string("trace_id");
        b.span_id = string("span_id");
        b.event_name = string("event_name");
        b.service_name = string("service_name");
        b.deployment_environment = string("deployment_environment");
        b.resource_attributes = map("resource_attributes");
        b.scope_attributes = map("scope_attributes");
        b.log_attributes = map("log_attributes");
        b.scope_name = string("scope_name");
        b.scope_version = string("scope_version");
        b.resource_schema_url = string("resource_schema_url");
        b.scope_schema_url = string("scope_schema_url");
        b
    }

    fn new(capacity: usize) -> Self {
        let timestamp = || TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone(UTC);
        let string = || StringBuilder::with_capacity(capacity, capacity * 16);
        let map = || {
            let names = MapFieldNames { entry: MAP_ENTRIES.into(), key: "key".into(), value: "value".into() };
            MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new())
        };
        Self {
            timestamp: timestamp(),
            observed_timestamp: timestamp(),
            severity_number: Int32Builder::with_capacity(capacity),
            severity_text: string(),
            body: StringBuilder::with_capacity(capacity, capacity * 256),
            trace_id: string(),
            span_id: string(),
            trace_flags: Int32Builder::with_capacity(capacity),
            event_name: string(),
            service_name: string(),
            deployment_environment: string(),
            resource_attributes: map(),
            scope_attributes: map(),
            log_attributes: map(),
            scope_name: string(),
            scope_version: string(),
            resource_schema_url: string(),
            scope_schema_url: string(),
            dropped_attributes_count: Int32Builder::with_capacity(capacity),
            kafka_partition: Int32Builder::with_capacity(capacity),
            kafka_offset: Int64Builder::with_capacity(capacity),
        }
    }

    /// Arrays in the order of the row definition, picked by column name so a column added to
    /// the proto without a converter fails loudly (and in the tests).
    fn finish(mut self) -> RecordBatch {
        let mut fields = Vec::with_capacity(RowTable::Logs.columns().len());
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(RowTable::Logs.columns().len());
        for column in RowTable::Logs.columns() {
            let array: ArrayRef = match column.name.as_str() {
                "timestamp" => Arc::new(self.timestamp.finish()),
                "observed_timestamp" => Arc::new(self.observed_timestamp.finish()),
                "severity_number" => Arc::new(self.severity_number.finish()),
                "severity_text" => Arc::new(self.severity_text.finish()),
                "body" => Arc::new(self.body.finish()),
                "trace_id" => Arc::new(self.trace_id.finish()),
                "span_id" => Arc::new(self.span_id.finish()),
                "trace_flags" => Arc::new(self.trace_flags.finish()),
                "event_name" => Arc::new(self.event_name.finish()),
                "service_name" => Arc::new(self.service_name.finish()),
                "deployment_environment" => Arc::new(self.deployment_environment.finish()),
                "resource_attributes" => Arc::new(self.resource_attributes.finish()),
                "scope_attributes" => Arc::new(self.scope_attributes.finish()),
                "log_attributes" => Arc::new(self.log_attributes.finish()),
                "scope_name" => Arc::new(self.scope_name.finish()),
                "scope_version" => Arc::new(self.scope_version.finish()),
                "resource_schema_url" => Arc::new(self.resource_schema_url.finish()),
                "scope_schema_url" => Arc::new(self.scope_schema_url.finish()),
                "dropped_attributes_count" => Arc::new(self.dropped_attributes_count.finish()),
                "kafka_partition" => Arc::new(self.kafka_partition.finish()),
                "kafka_offset" => Arc::new(self.kafka_offset.finish()),
                other => panic!("column {other} of the row definition has no converter in rows.rs"),
            };
            fields.push(Field::new(&column.name, array.data_type().clone(), true));
            arrays.push(array);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .expect("builders produce equal-length columns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, Int32Array, MapArray, StringArray, TimestampMicrosecondArray, cast::AsArray};
    use opentelemetry_proto::tonic::{
        common::v1::{ArrayValue, InstrumentationScope, KeyValueList},
        logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
        resource::v1::Resource,
    };

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
    }

    fn request(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", Value::StringValue("checkout".into())),
                        kv("deployment.environment", Value::StringValue("old".into())),
                        kv("deployment.environment.name", Value::StringValue("prod".into())),
                        kv("host.cpus", Value::IntValue(8)),
                    ],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "app.logger".into(),
                        version: "1.2.3".into(),
                        attributes: vec![kv("lib", Value::StringValue("slog".into()))],
                        dropped_attributes_count: 0,
                    }),
                    log_records: records,
                    schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn record(body: Value) -> LogRecord {
        LogRecord {
            time_unix_nano: 1_700_000_000_123_456_789,
            observed_time_unix_nano: 1_700_000_001_000_000_000,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: Some(AnyValue { value: Some(body) }),
            attributes: vec![
                kv("http.status", Value::IntValue(503)),
                kv("ok", Value::BoolValue(false)),
                kv(
                    "tags",
                    Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue { value: Some(Value::StringValue("a".into())) }],
                    }),
                ),
                kv("user", Value::StringValue("ana".into())),
            ],
            dropped_attributes_count: 2,
            flags: 0x101,
            trace_id: (1..=16).collect(),
            span_id: vec![0xab; 8],
            event_name: "checkout.failed".into(),
        }
    }

    fn map_entries(array: &MapArray, row: usize) -> Vec<(String, String)> {
        let entries = array.value(row);
        let keys = entries.column(0).as_string::<i32>();
        let values = entries.column(1).as_string::<i32>();
        (0..entries.len()).map(|i| (keys.value(i).to_string(), values.value(i).to_string())).collect()
    }

    #[test]
    fn staging_schema_has_every_row_column_in_order() {
        let names: Vec<String> = staging_schema().fields().iter().map(|f| f.name().clone()).collect();
        let expected: Vec<String> = RowTable::Logs.columns().iter().map(|c| c.name.clone()).collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn a_record_becomes_a_row_with_every_column_mapped() {
        let rows = to_rows(&request(vec![record(Value::StringValue("payment declined".into()))]), None, 0);
        assert_eq!((rows.batch.num_rows(), rows.rejected), (1, 0));
        let b = &rows.batch;
        let col = |name: &str| b.column_by_name(name).unwrap().clone();
        let ts = col("timestamp");
        let ts = ts.as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
        assert_eq!(ts.value(0), 1_700_000_000_123_456);
        let observed = col("observed_timestamp");
        assert_eq!(
            observed.as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap().value(0),
            1_700_000_001_000_000
        );
        let s = |name: &str| col(name).as_string::<i32>().value(0).to_string();
        assert_eq!(s("body"), "payment declined");
        assert_eq!(s("severity_text"), "INFO");
        assert_eq!(s("trace_id"), "0102030405060708090a0b0c0d0e0f10");
        assert_eq!(s("span_id"), "abababababababab");
        assert_eq!(s("event_name"), "checkout.failed");
        assert_eq!(s("service_name"), "checkout");
        assert_eq!(s("deployment_environment"), "prod");
        assert_eq!(s("scope_name"), "app.logger");
        assert_eq!(s("scope_version"), "1.2.3");
        assert_eq!(s("scope_schema_url"), "https://opentelemetry.io/schemas/1.30.0");
        assert!(col("resource_schema_url").is_null(0));
        let int = |name: &str| col(name).as_any().downcast_ref::<Int32Array>().unwrap().value(0);
        assert_eq!((int("severity_number"), int("trace_flags"), int("dropped_attributes_count")), (9, 1, 2));
        assert!(col("kafka_partition").is_null(0) && col("kafka_offset").is_null(0));
        let log_attributes = col("log_attributes");
        assert_eq!(
            map_entries(log_attributes.as_map(), 0),
            vec![
                ("http.status".into(), "503".into()),
                ("ok".into(), "false".into()),
                ("tags".into(), "[\"a\"]".into()),
                ("user".into(), "ana".into())
            ]
        );
        let resource_attributes = col("resource_attributes");
        assert!(map_entries(resource_attributes.as_map(), 0).contains(&("host.cpus".into(), "8".into())));
        let scope_attributes = col("scope_attributes");
        assert_eq!(map_entries(scope_attributes.as_map(), 0), vec![("lib".into(), "slog".into())]);
    }

    #[test]
    fn non_string_bodies_are_otlp_json_and_missing_times_fall_back() {
        let mut r = record(Value::KvlistValue(KeyValueList { values: vec![kv("k", Value::IntValue(7))] }));
        r.time_unix_nano = 0;
        let mut no_times = record(Value::BoolValue(true));
        no_times.time_unix_nano = 0;
        no_times.observed_time_unix_nano = 0;
        let rows =
            to_rows(&request(vec![r, no_times]), Some(KafkaPosition { partition: 3, offset: 42 }), 5_000_000);
        let body = rows.batch.column_by_name("body").unwrap().as_string::<i32>().value(0).to_string();
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["kvlistValue"]["values"][0]["key"], "k");
        let ts = rows.batch.column_by_name("timestamp").unwrap().clone();
        let ts = ts.as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
        assert_eq!(ts.value(0), 1_700_000_001_000_000, "observed time stands in for a missing time");
        assert_eq!(ts.value(1), 5_000_000, "receive time stands in when both are missing");
        assert!(rows.batch.column_by_name("observed_timestamp").unwrap().is_null(1));
        let partition = rows.batch.column_by_name("kafka_partition").unwrap().clone();
        assert_eq!(partition.as_any().downcast_ref::<Int32Array>().unwrap().value(1), 3);
    }

    #[test]
    fn repeated_attribute_keys_keep_the_last_value() {
        let mut r = record(Value::StringValue("dup".into()));
        r.attributes = vec![kv("k", Value::StringValue("first".into())), kv("k", Value::IntValue(2))];
        let rows = to_rows(&request(vec![r]), None, 0);
        let log_attributes = rows.batch.column_by_name("log_attributes").unwrap().clone();
        assert_eq!(map_entries(log_attributes.as_map(), 0), vec![("k".into(), "2".into())]);
    }

    #[test]
    fn records_with_malformed_ids_are_rejected_alone() {
        let mut bad = record(Value::StringValue("bad".into()));
        bad.trace_id = vec![1, 2, 3];
        let mut empty_ids = record(Value::StringValue("no ids".into()));
        empty_ids.trace_id.clear();
        empty_ids.span_id.clear();
        let rows = to_rows(&request(vec![bad, empty_ids]), None, 0);
        assert_eq!((rows.batch.num_rows(), rows.rejected), (1, 1));
        assert!(rows.rejection.contains("trace_id"), "{}", rows.rejection);
        let b = &rows.batch;
        let bodies =
            b.column_by_name("body").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
        assert_eq!(bodies.value(0), "no ids");
        assert!(b.column_by_name("trace_id").unwrap().is_null(0));
    }
}
