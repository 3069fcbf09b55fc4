//! The same Loghub lines as traces and metrics, for the per-signal benchmarks: one span or one
//! metric data point per line, so a million items of any signal carry the same text.
//!
//! - a span per line: named `{system} {severity}`, four spans per trace (the first the parent
//!   of the other three), its body as the `message` attribute beside the logs' three, a status
//!   of error for ERROR/FATAL lines, 1-200 µs long;
//! - a metric per line with one data point: in turn a sum (`log.lines`, cumulative, monotonic),
//!   a gauge (`log.line.bytes`) and a histogram of 8 buckets (`log.line.latency`), with the
//!   logs' three attributes and the severity.
//!
//! Requests group lines by system (one resource each, `service.name` the system), as the logs
//! workload does.

use opentelemetry_proto::tonic::{
    collector::{metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{InstrumentationScope, KeyValue},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
    },
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode},
};

use crate::workload::{Line, body_of, id_bytes, int_attribute, severity_of, string_attribute};

/// Spans per trace.
const SPANS_PER_TRACE: usize = 4;

/// Which OTLP signal a load sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Logs,
    Traces,
    Metrics,
}

impl Signal {
    /// The `Export` method of the signal's gRPC service.
    pub fn export_path(self) -> &'static str {
        match self {
            Self::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            Self::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Self::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }
}

fn resource(system: &str) -> Resource {
    Resource {
        attributes: vec![
            string_attribute("service.name", system),
            string_attribute("deployment.environment.name", "bench"),
            string_attribute("host.name", &format!("{}-node-1", system.to_lowercase())),
        ],
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "telemetry-lake-bench".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// The attributes every item of line `n` carries.
fn line_attributes(n: usize, line: &Line) -> Vec<KeyValue> {
    vec![
        string_attribute("log.file.name", &format!("{}_2k.log", line.system)),
        int_attribute("log.file.line", line.number as i64),
        string_attribute("bench.sequence", &n.to_string()),
    ]
}

/// Items grouped by system, in the order the systems first appear.
fn by_system<T>(records: &[(usize, &Line)], item: impl Fn(usize, &Line) -> T) -> Vec<(String, Vec<T>)> {
    let mut groups: Vec<(String, Vec<T>)> = Vec::new();
    for &(n, line) in records {
        let value = item(n, line);
        match groups.iter_mut().find(|(system, _)| *system == line.system) {
            Some((_, items)) => items.push(value),
            None => groups.push((line.system.clone(), vec![value])),
        }
    }
    groups
}

/// One traces request: a span per line.
pub fn spans_request(records: &[(usize, &Line)], time_unix_nano: u64) -> ExportTraceServiceRequest {
    let resource_spans = by_system(records, |n, line| span(n, line, time_unix_nano))
        .into_iter()
        .map(|(system, spans)| ResourceSpans {
            resource: Some(resource(&system)),
            scope_spans: vec![ScopeSpans { scope: Some(scope()), spans, ..Default::default() }],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

fn span(n: usize, line: &Line, time_unix_nano: u64) -> Span {
    let (_, severity) = severity_of(&line.text);
    let trace = (n / SPANS_PER_TRACE) as u64;
    let root = n - n % SPANS_PER_TRACE;
    let start = time_unix_nano + (n % 1_000_000) as u64;
    let mut attributes = line_attributes(n, line);
    attributes.push(string_attribute("message", &body_of(&line.text)));
    let failed = matches!(severity, "ERROR" | "FATAL");
    Span {
        trace_id: id_bytes(trace, 16),
        span_id: id_bytes(n as u64, 8),
        parent_span_id: if n == root { Vec::new() } else { id_bytes(root as u64, 8) },
        name: format!("{} {severity}", line.system),
        kind: if n == root { SpanKind::Server } else { SpanKind::Internal } as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000 * (1 + (line.number % 200) as u64),
        attributes,
        status: Some(Status {
            code: if failed { StatusCode::Error } else { StatusCode::Ok } as i32,
            message: if failed { "failed".into() } else { String::new() },
        }),
        ..Default::default()
    }
}

/// One metrics request: a metric of one data point per line.
pub fn metrics_request(records: &[(usize, &Line)], time_unix_nano: u64) -> ExportMetricsServiceRequest {
    let resource_metrics = by_system(records, |n, line| metric(n, line, time_unix_nano))
        .into_iter()
        .map(|(system, metrics)| ResourceMetrics {
            resource: Some(resource(&system)),
            scope_metrics: vec![ScopeMetrics { scope: Some(scope()), metrics, ..Default::default() }],
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest { resource_metrics }
}

fn metric(n: usize, line: &Line, time_unix_nano: u64) -> Metric {
    let (_, severity) = severity_of(&line.text);
    let mut attributes = line_attributes(n, line);
    attributes.push(string_attribute("severity", severity));
    let time = time_unix_nano + (n % 1_000_000) as u64;
    let start = time_unix_nano - 60_000_000_000;
    let bytes = line.text.len();
    let number = |value| NumberDataPoint {
        attributes: attributes.clone(),
        start_time_unix_nano: start,
        time_unix_nano: time,
        value: Some(value),
        ..Default::default()
    };
    let (name, unit, data) = match n % 3 {
        0 => (
            "log.lines",
            "1",
            Data::Sum(Sum {
                data_points: vec![number(number_data_point::Value::AsInt(line.number as i64))],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
        ),
        1 => (
            "log.line.bytes",
            "By",
            Data::Gauge(Gauge {
                data_points: vec![number(number_data_point::Value::AsDouble(bytes as f64))],
            }),
        ),
        _ => {
            let explicit_bounds = vec![1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0];
            let bucket = explicit_bounds.iter().take_while(|&&b| b < (line.number % 300) as f64).count();
            let mut bucket_counts = vec![0; explicit_bounds.len() + 1];
            bucket_counts[bucket] = 1;
            let latency = (line.number % 300) as f64;
            let point = HistogramDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: time,
                count: 1,
                sum: Some(latency),
                bucket_counts,
                explicit_bounds,
                min: Some(latency),
                max: Some(latency),
                ..Default::default()
            };
            (
                "log.line.latency",
                "ms",
                Data::Histogram(Histogram {
                    data_points: vec![point],
                    aggregation_temporality: AggregationTemporality::Delta as i32,
                }),
            )
        }
    };
    Metric { name: name.into(), unit: unit.into(), data: Some(data), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines() -> Vec<Line> {
        (0..12)
            .map(|i| Line {
                system: ["HDFS", "Linux", "Spark"][i % 3].into(),
                number: i + 1,
                text: format!("2015-10-18 18:01:47,978 {} line {i}", if i == 5 { "ERROR" } else { "INFO" }),
            })
            .collect()
    }

    #[test]
    fn a_span_per_line_grouped_by_system_in_traces_of_four() {
        let lines = lines();
        let records: Vec<(usize, &Line)> = lines.iter().enumerate().collect();
        let request = spans_request(&records, 1_700_000_000_000_000_000);
        assert_eq!(request.resource_spans.len(), 3);
        let spans: Vec<&Span> =
            request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).collect();
        assert_eq!(spans.len(), 12);
        let roots = spans.iter().filter(|s| s.parent_span_id.is_empty()).count();
        assert_eq!(roots, 3, "one root per four spans");
        assert!(spans.iter().all(|s| s.trace_id.len() == 16 && s.span_id.len() == 8));
        assert!(
            spans.iter().any(|s| s.status.as_ref().is_some_and(|st| st.code == StatusCode::Error as i32))
        );
    }

    #[test]
    fn a_metric_of_one_point_per_line_in_turn_sum_gauge_histogram() {
        let lines = lines();
        let records: Vec<(usize, &Line)> = lines.iter().enumerate().collect();
        let request = metrics_request(&records, 1_700_000_000_000_000_000);
        let metrics: Vec<&Metric> =
            request.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics).collect();
        assert_eq!(metrics.len(), 12);
        let kinds: std::collections::BTreeSet<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(kinds, ["log.line.bytes", "log.line.latency", "log.lines"].into());
        for metric in metrics {
            let points = match metric.data.as_ref().unwrap() {
                Data::Sum(s) => s.data_points.len(),
                Data::Gauge(g) => g.data_points.len(),
                Data::Histogram(h) => {
                    assert_eq!(h.data_points[0].bucket_counts.iter().sum::<u64>(), 1);
                    h.data_points.len()
                }
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(points, 1);
        }
    }
}
