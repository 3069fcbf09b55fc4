//! OTLP spans -> Arrow rows of the `traces` table (`SpanRow` in `proto/span_row.proto`).
//!
//! In: an `ExportTraceServiceRequest` (and, in Kafka mode, its partition and offset). Out: a
//! batch of the table's Arrow schema, one row per span, and how many spans were rejected: only
//! those failing `telemetry_lake_common::otlp::records::check_span` (the id rule the ingester
//! and the export path apply before anything is staged). Rows are serialized with serde_arrow
//! from [`SpanRow`], whose fields are the table's columns by name; a test checks that every
//! column is filled.

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    trace::v1::{span::SpanKind, status::StatusCode},
};
use serde::Serialize;
use telemetry_lake_common::otlp::records;
use telemetry_lake_proto::RowTable;

use super::{
    AttributeMap, KafkaPosition, Rows, hex_id, nanos_to_micros, non_empty, resource_columns, serde_batch,
};

#[derive(Serialize)]
struct SpanRow<'a> {
    timestamp: i64,
    end_timestamp: Option<i64>,
    duration_ns: Option<i64>,
    trace_id: Option<String>,
    span_id: Option<String>,
    parent_span_id: Option<String>,
    trace_state: Option<&'a str>,
    span_name: Option<&'a str>,
    span_kind: Option<&'static str>,
    service_name: Option<&'a str>,
    resource_attributes: &'a AttributeMap<'a>,
    scope_name: Option<&'a str>,
    scope_version: Option<&'a str>,
    span_attributes: AttributeMap<'a>,
    status_code: Option<&'static str>,
    status_message: Option<&'a str>,
    events: Vec<EventRow<'a>>,
    links: Vec<LinkRow<'a>>,
    kafka_partition: Option<i32>,
    kafka_offset: Option<i64>,
}

#[derive(Serialize)]
struct EventRow<'a> {
    timestamp: Option<i64>,
    name: Option<&'a str>,
    attributes: AttributeMap<'a>,
}

#[derive(Serialize)]
struct LinkRow<'a> {
    trace_id: Option<String>,
    span_id: Option<String>,
    trace_state: Option<&'a str>,
    attributes: AttributeMap<'a>,
}

/// `Server`, `Client`, … as the Collector's ClickHouse exporter spells them; `None` for a value
/// OTLP does not define.
fn kind_name(kind: i32) -> Option<&'static str> {
    Some(match SpanKind::try_from(kind).ok()? {
        SpanKind::Unspecified => "Unspecified",
        SpanKind::Internal => "Internal",
        SpanKind::Server => "Server",
        SpanKind::Client => "Client",
        SpanKind::Producer => "Producer",
        SpanKind::Consumer => "Consumer",
    })
}

fn status_name(code: i32) -> Option<&'static str> {
    Some(match StatusCode::try_from(code).ok()? {
        StatusCode::Unset => "Unset",
        StatusCode::Ok => "Ok",
        StatusCode::Error => "Error",
    })
}

/// A time in nanoseconds as microseconds; `None` for 0 (not set).
fn optional_micros(nanos: u64) -> Option<i64> {
    (nanos != 0).then(|| nanos_to_micros(nanos))
}

/// Converts a request. `received_at_micros` stands in for spans without a start time.
pub fn to_rows(
    request: &ExportTraceServiceRequest,
    source: Option<KafkaPosition>,
    received_at_micros: i64,
) -> Result<Rows, String> {
    let mut rows = Vec::new();
    let mut rejected = 0u64;
    let mut rejection = String::new();
    // Every row of a resource points at its service name and attributes.
    let resources: Vec<_> =
        request.resource_spans.iter().map(|r| resource_columns(r.resource.as_ref())).collect();
    for (resource_spans, (service_name, resource_attributes)) in request.resource_spans.iter().zip(&resources)
    {
        let service_name = service_name.as_deref();
        for scope_spans in &resource_spans.scope_spans {
            let scope = scope_spans.scope.as_ref();
            for span in &scope_spans.spans {
                if let Err(reason) = records::check_span(span) {
                    if rejected == 0 {
                        rejection = reason;
                    }
                    rejected += 1;
                    continue;
                }
                let start = span.start_time_unix_nano;
                let end = span.end_time_unix_nano;
                let status = span.status.as_ref();
                let row = SpanRow {
                    timestamp: optional_micros(start).unwrap_or(received_at_micros),
                    end_timestamp: optional_micros(end),
                    duration_ns: (start != 0 && end >= start)
                        .then(|| (end - start).min(i64::MAX as u64) as i64),
                    trace_id: hex_id(&span.trace_id),
                    span_id: hex_id(&span.span_id),
                    parent_span_id: hex_id(&span.parent_span_id),
                    trace_state: non_empty(&span.trace_state),
                    span_name: non_empty(&span.name),
                    span_kind: kind_name(span.kind),
                    service_name,
                    resource_attributes,
                    scope_name: scope.and_then(|s| non_empty(&s.name)),
                    scope_version: scope.and_then(|s| non_empty(&s.version)),
                    span_attributes: AttributeMap::of(&span.attributes),
                    status_code: status_name(status.map_or(0, |s| s.code)),
                    status_message: status.and_then(|s| non_empty(&s.message)),
                    events: span
                        .events
                        .iter()
                        .map(|e| EventRow {
                            timestamp: optional_micros(e.time_unix_nano),
                            name: non_empty(&e.name),
                            attributes: AttributeMap::of(&e.attributes),
                        })
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|l| LinkRow {
                            trace_id: hex_id(&l.trace_id),
                            span_id: hex_id(&l.span_id),
                            trace_state: non_empty(&l.trace_state),
                            attributes: AttributeMap::of(&l.attributes),
                        })
                        .collect(),
                    kafka_partition: source.map(|s| s.partition),
                    kafka_offset: source.map(|s| s.offset),
                };
                rows.push(row);
            }
        }
    }
    Ok(Rows { batch: serde_batch(RowTable::Traces, &rows)?, rejected, rejection })
}

#[cfg(test)]
mod tests {
    use arrow_array::{Array, Int64Array, ListArray, StructArray, TimestampMicrosecondArray, cast::AsArray};
    use opentelemetry_proto::tonic::{
        common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span},
    };

    use super::*;

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
    }

    fn span_with_everything() -> Span {
        Span {
            trace_id: (1..=16).collect(),
            span_id: vec![0xab; 8],
            parent_span_id: vec![0xcd; 8],
            trace_state: "k=v".into(),
            name: "GET /cart".into(),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: 1_700_000_000_000_001_000,
            end_time_unix_nano: 1_700_000_000_250_001_000,
            attributes: vec![
                kv("http.status", Value::IntValue(503)),
                kv("user", Value::StringValue("ana".into())),
            ],
            events: vec![span::Event {
                time_unix_nano: 1_700_000_000_100_000_000,
                name: "retry".into(),
                attributes: vec![kv("attempt", Value::IntValue(2))],
                dropped_attributes_count: 0,
            }],
            links: vec![span::Link {
                trace_id: vec![7; 16],
                span_id: vec![8; 8],
                trace_state: "a=b".into(),
                attributes: vec![kv("why", Value::StringValue("batch".into()))],
                ..Default::default()
            }],
            status: Some(Status { message: "upstream down".into(), code: StatusCode::Error as i32 }),
            ..Default::default()
        }
    }

    fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", Value::StringValue("checkout".into()))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "tracer".into(),
                        version: "1.0".into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    #[test]
    fn a_span_fills_every_column_of_the_table() {
        let rows = to_rows(
            &request(vec![span_with_everything()]),
            Some(KafkaPosition { partition: 2, offset: 9 }),
            0,
        )
        .unwrap();
        let b = &rows.batch;
        assert_eq!((b.num_rows(), rows.rejected), (1, 0));
        assert_eq!(b.schema(), RowTable::Traces.arrow_schema());
        for (i, field) in b.schema().fields().iter().enumerate() {
            assert!(b.column(i).is_valid(0), "column {} is null", field.name());
        }
        let s = |name: &str| b.column_by_name(name).unwrap().as_string::<i32>().value(0).to_string();
        assert_eq!(s("trace_id"), "0102030405060708090a0b0c0d0e0f10");
        assert_eq!(s("parent_span_id"), "cdcdcdcdcdcdcdcd");
        assert_eq!(
            (s("span_kind"), s("status_code"), s("status_message")),
            ("Server".into(), "Error".into(), "upstream down".into())
        );
        assert_eq!(
            (s("service_name"), s("scope_name"), s("span_name")),
            ("checkout".into(), "tracer".into(), "GET /cart".into())
        );
        let ts = |name: &str| {
            b.column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap()
                .value(0)
        };
        assert_eq!((ts("timestamp"), ts("end_timestamp")), (1_700_000_000_000_001, 1_700_000_000_250_001));
        let duration = b.column_by_name("duration_ns").unwrap();
        assert_eq!(duration.as_any().downcast_ref::<Int64Array>().unwrap().value(0), 250_000_000);
        let events =
            b.column_by_name("events").unwrap().as_any().downcast_ref::<ListArray>().unwrap().value(0);
        let events = events.as_any().downcast_ref::<StructArray>().unwrap();
        assert_eq!(events.column_by_name("name").unwrap().as_string::<i32>().value(0), "retry");
        let attributes = events.column_by_name("attributes").unwrap().as_map().value(0);
        assert_eq!(attributes.column(1).as_string::<i32>().value(0), "2");
        let links = b.column_by_name("links").unwrap().as_any().downcast_ref::<ListArray>().unwrap().value(0);
        let links = links.as_any().downcast_ref::<StructArray>().unwrap();
        assert_eq!(links.column_by_name("span_id").unwrap().as_string::<i32>().value(0), "0808080808080808");
    }

    #[test]
    fn spans_with_malformed_ids_are_rejected_alone_and_missing_times_fall_back() {
        let mut bad = span_with_everything();
        bad.links[0].span_id = vec![1, 2];
        let mut bare = Span { trace_id: vec![1; 16], span_id: vec![2; 8], kind: 42, ..Default::default() };
        bare.status = None;
        let rows = to_rows(&request(vec![bad, bare]), None, 5_000_000).unwrap();
        assert_eq!((rows.batch.num_rows(), rows.rejected), (1, 1));
        assert!(rows.rejection.contains("links.span_id"), "{}", rows.rejection);
        let b = &rows.batch;
        let ts = b
            .column_by_name("timestamp")
            .unwrap()
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap()
            .value(0);
        assert_eq!(ts, 5_000_000, "the receive time stands in for a missing start");
        for null in
            ["end_timestamp", "duration_ns", "parent_span_id", "span_kind", "status_message", "kafka_offset"]
        {
            assert!(b.column_by_name(null).unwrap().is_null(0), "{null}");
        }
        assert_eq!(b.column_by_name("status_code").unwrap().as_string::<i32>().value(0), "Unset");
        let events =
            b.column_by_name("events").unwrap().as_any().downcast_ref::<ListArray>().unwrap().clone();
        assert_eq!(events.value_length(0), 0, "an empty list, not null");
    }
}
