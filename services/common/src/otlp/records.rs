//! Which log records the lake takes: the one check both services apply, so the ingester refuses
//! exactly what the appender could not stage. Spans and metric data points get the same id rule
//! ([`drop_malformed_spans`], [`drop_malformed_points`]): it is also what the OpenTelemetry
//! Collector's decoder accepts, so every record on a topic can be read by it.
//!
//! In: an `ExportLogsServiceRequest`. Out: how many of its records pass, how many do not, and
//! why the first one did not ([`Checked`]); [`drop_malformed`] also removes the failing records
//! and [`split_malformed`] moves them into a request of their own (for the appender's dead
//! letters). A record fails only when its trace or span id has the wrong length; everything
//! else is kept. The messages ("trace_id must be 16 bytes, got 3", "span_id must be 8 bytes,
//! got 5") are a contract: clients read them in `partial_success`, dead letters carry them,
//! and any other validator of these records must produce the same ones.

use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    },
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    metrics::v1::{Exemplar, metric::Data},
    trace::v1::Span,
};

use super::signal::data_points;

/// What checking a request's records found: how many pass, how many fail, and why the first
/// failed (empty when none did).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    pub accepted: u64,
    pub rejected: u64,
    pub rejection: String,
}

impl Checked {
    fn count(&mut self, record: &LogRecord) -> bool {
        self.tally(check_record(record))
    }

    /// Counts one item by `verdict`; whether it passed.
    fn tally(&mut self, verdict: Result<(), String>) -> bool {
        match verdict {
            Ok(()) => {
                self.accepted += 1;
                true
            }
            Err(reason) => {
                if self.rejected == 0 {
                    self.rejection = reason;
                }
                self.rejected += 1;
                false
            }
        }
    }
}

/// Why `record` cannot be staged, if it cannot: a trace id that is neither empty nor 16 bytes,
/// or a span id that is neither empty nor 8 bytes.
pub fn check_record(record: &LogRecord) -> Result<(), String> {
    check_ids("", &record.trace_id, &record.span_id)
}

/// The id rule, for ids named with `prefix` (`links.`, `exemplars.`).
fn check_ids(prefix: &str, trace_id: &[u8], span_id: &[u8]) -> Result<(), String> {
    if !matches!(trace_id.len(), 0 | 16) {
        return Err(format!("{prefix}trace_id must be 16 bytes, got {}", trace_id.len()));
    }
    if !matches!(span_id.len(), 0 | 8) {
        return Err(format!("{prefix}span_id must be 8 bytes, got {}", span_id.len()));
    }
    Ok(())
}

/// Why `span` cannot be carried, if it cannot: the id rule for its own ids, its parent's and
/// those of its links.
pub fn check_span(span: &Span) -> Result<(), String> {
    check_ids("", &span.trace_id, &span.span_id)?;
    if !matches!(span.parent_span_id.len(), 0 | 8) {
        return Err(format!("parent_span_id must be 8 bytes, got {}", span.parent_span_id.len()));
    }
    span.links.iter().try_for_each(|link| check_ids("links.", &link.trace_id, &link.span_id))
}

/// Removes from `request` the spans that fail [`check_span`] (OTLP partial success).
pub fn drop_malformed_spans(request: &mut ExportTraceServiceRequest) -> Checked {
    let mut checked = Checked::default();
    for scope in request.resource_spans.iter_mut().flat_map(|r| &mut r.scope_spans) {
        scope.spans.retain(|span| checked.tally(check_span(span)));
    }
    checked
}

/// Why `exemplar` cannot be carried, if it cannot: the id rule.
pub fn check_exemplar(exemplar: &Exemplar) -> Result<(), String> {
    check_ids("exemplars.", &exemplar.trace_id, &exemplar.span_id)
}

/// Removes from `request` the data points with an exemplar that fails the id rule (OTLP partial
/// success); a metric left without points stays, empty.
pub fn drop_malformed_points(request: &mut ExportMetricsServiceRequest) -> Checked {
    retain_points(request, true)
}

/// Whether a point with these exemplars passes the id rule.
fn check_exemplars(exemplars: &[Exemplar]) -> Result<(), String> {
    exemplars.iter().try_for_each(check_exemplar)
}

/// Keeps the data points that pass the id rule (`passing`), or those that fail it; counts them
/// all. Summary points have no exemplars: they always pass.
fn retain_points(request: &mut ExportMetricsServiceRequest, passing: bool) -> Checked {
    let mut checked = Checked::default();
    let mut keep = |exemplars: &[Exemplar]| checked.tally(check_exemplars(exemplars)) == passing;
    let metrics =
        request.resource_metrics.iter_mut().flat_map(|r| &mut r.scope_metrics).flat_map(|s| &mut s.metrics);
    for metric in metrics {
        match &mut metric.data {
            Some(Data::Gauge(gauge)) => gauge.data_points.retain(|p| keep(&p.exemplars)),
            Some(Data::Sum(sum)) => sum.data_points.retain(|p| keep(&p.exemplars)),
            Some(Data::Histogram(h)) => h.data_points.retain(|p| keep(&p.exemplars)),
            Some(Data::ExponentialHistogram(h)) => h.data_points.retain(|p| keep(&p.exemplars)),
            Some(Data::Summary(summary)) => summary.data_points.retain(|_| keep(&[])),
            None => {}
        }
    }
    checked
}

/// As [`split_malformed`], for spans: removes the spans failing [`check_span`] from `request`
/// and returns them as a request of their own (under copies of their resources and scopes).
pub fn split_malformed_spans(
    request: &mut ExportTraceServiceRequest,
) -> (Checked, ExportTraceServiceRequest) {
    let spans = || request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans);
    if spans().all(|span| check_span(span).is_ok()) {
        return (drop_malformed_spans(request), ExportTraceServiceRequest::default());
    }
    let mut malformed = request.clone();
    let checked = drop_malformed_spans(request);
    for resource in &mut malformed.resource_spans {
        for scope in &mut resource.scope_spans {
            scope.spans.retain(|span| check_span(span).is_err());
        }
        resource.scope_spans.retain(|scope| !scope.spans.is_empty());
    }
    malformed.resource_spans.retain(|resource| !resource.scope_spans.is_empty());
    (checked, malformed)
}

/// As [`split_malformed`], for data points: removes the points with an exemplar failing the id
/// rule from `request` and returns them as a request of their own (under copies of their
/// resources, scopes and metrics).
pub fn split_malformed_points(
    request: &mut ExportMetricsServiceRequest,
) -> (Checked, ExportMetricsServiceRequest) {
    let bad = |exemplars: &Vec<Exemplar>| check_exemplars(exemplars).is_err();
    let any_bad =
        request.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics).any(
            |metric| match &metric.data {
                Some(Data::Gauge(g)) => g.data_points.iter().any(|p| bad(&p.exemplars)),
                Some(Data::Sum(s)) => s.data_points.iter().any(|p| bad(&p.exemplars)),
                Some(Data::Histogram(h)) => h.data_points.iter().any(|p| bad(&p.exemplars)),
                Some(Data::ExponentialHistogram(h)) => h.data_points.iter().any(|p| bad(&p.exemplars)),
                Some(Data::Summary(_)) | None => false,
            },
        );
    if !any_bad {
        return (drop_malformed_points(request), ExportMetricsServiceRequest::default());
    }
    let mut malformed = request.clone();
    let checked = retain_points(request, true);
    retain_points(&mut malformed, false);
    for resource in &mut malformed.resource_metrics {
        for scope in &mut resource.scope_metrics {
            scope.metrics.retain(|metric| data_points(metric) > 0);
        }
        resource.scope_metrics.retain(|scope| !scope.metrics.is_empty());
    }
    malformed.resource_metrics.retain(|resource| !resource.scope_metrics.is_empty());
    (checked, malformed)
}

/// Counts the records of `request` that pass and fail [`check_record`].
pub fn check(request: &ExportLogsServiceRequest) -> Checked {
    let mut checked = Checked::default();
    for record in request.resource_logs.iter().flat_map(|r| &r.scope_logs).flat_map(|s| &s.log_records) {
        checked.count(record);
    }
    checked
}

/// Removes from `request` the records that fail [`check_record`] (OTLP partial success), so
/// what is kept holds only records that become rows.
pub fn drop_malformed(request: &mut ExportLogsServiceRequest) -> Checked {
    let mut checked = Checked::default();
    for scope in request.resource_logs.iter_mut().flat_map(|r| &mut r.scope_logs) {
        scope.log_records.retain(|record| checked.count(record));
    }
    checked
}

/// Moves the records that fail [`check_record`] out of `request` into a request of their own,
/// each under a copy of its resource and scope (so it reads as it was sent); resources and
/// scopes left without a failing record are not copied. `request` keeps its good records.
pub fn split_malformed(request: &mut ExportLogsServiceRequest) -> (Checked, ExportLogsServiceRequest) {
    let mut checked = Checked::default();
    let mut malformed = ExportLogsServiceRequest::default();
    for resource in &mut request.resource_logs {
        let mut bad_scopes = Vec::new();
        for scope in &mut resource.scope_logs {
            let records = std::mem::take(&mut scope.log_records);
            let (good, bad): (Vec<LogRecord>, Vec<LogRecord>) =
                records.into_iter().partition(|record| checked.count(record));
            scope.log_records = good;
            if !bad.is_empty() {
                bad_scopes.push(ScopeLogs {
                    scope: scope.scope.clone(),
                    log_records: bad,
                    schema_url: scope.schema_url.clone(),
                });
            }
        }
        if !bad_scopes.is_empty() {
            malformed.resource_logs.push(ResourceLogs {
                resource: resource.resource.clone(),
                scope_logs: bad_scopes,
                schema_url: resource.schema_url.clone(),
            });
        }
    }
    (checked, malformed)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
        resource::v1::Resource,
    };

    use super::*;

    fn record(body: &str, trace_id: usize, span_id: usize) -> LogRecord {
        LogRecord {
            body: Some(AnyValue { value: Some(Value::StringValue(body.into())) }),
            trace_id: vec![7; trace_id],
            span_id: vec![9; span_id],
            ..Default::default()
        }
    }

    fn resource(service: &str, scopes: Vec<Vec<LogRecord>>) -> ResourceLogs {
        ResourceLogs {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue { value: Some(Value::StringValue(service.into())) }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_logs: scopes
                .into_iter()
                .enumerate()
                .map(|(i, log_records)| ScopeLogs {
                    scope: Some(InstrumentationScope { name: format!("scope-{i}"), ..Default::default() }),
                    log_records,
                    schema_url: format!("https://example.com/{i}"),
                })
                .collect(),
            schema_url: "https://example.com/resource".into(),
        }
    }

    fn bodies(request: &ExportLogsServiceRequest) -> Vec<String> {
        request
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| &s.log_records)
            .map(|r| match r.body.as_ref().and_then(|b| b.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn ids_must_be_empty_or_of_their_length_and_the_messages_say_which() {
        assert_eq!(check_record(&record("ok", 16, 8)), Ok(()));
        assert_eq!(check_record(&record("no ids", 0, 0)), Ok(()));
        assert_eq!(
            check_record(&record("short trace", 3, 8)),
            Err("trace_id must be 16 bytes, got 3".into())
        );
        assert_eq!(check_record(&record("long span", 16, 9)), Err("span_id must be 8 bytes, got 9".into()));
        assert_eq!(
            check_record(&record("both", 5, 5)),
            Err("trace_id must be 16 bytes, got 5".into()),
            "the trace id is named first"
        );
    }

    #[test]
    fn check_counts_and_names_the_first_rejection() {
        let request = ExportLogsServiceRequest {
            resource_logs: vec![
                resource("a", vec![vec![record("good", 16, 8), record("bad", 3, 0)]]),
                resource("b", vec![vec![record("bad span", 0, 5)]]),
            ],
        };
        let checked = check(&request);
        assert_eq!(
            checked,
            Checked { accepted: 1, rejected: 2, rejection: "trace_id must be 16 bytes, got 3".into() }
        );
        let mut dropped = request.clone();
        assert_eq!(drop_malformed(&mut dropped), checked);
        assert_eq!(bodies(&dropped), ["good"]);
    }

    #[test]
    fn split_malformed_keeps_the_good_and_moves_the_bad_with_their_resource_and_scope() {
        let mut request = ExportLogsServiceRequest {
            resource_logs: vec![
                resource(
                    "a",
                    vec![vec![record("a1", 16, 8), record("a-bad", 3, 8)], vec![record("a2", 0, 0)]],
                ),
                resource("b", vec![vec![record("b-bad", 0, 5)]]),
                resource("c", vec![vec![record("c1", 0, 8)]]),
            ],
        };
        let original = request.clone();
        let (checked, malformed) = split_malformed(&mut request);
        assert_eq!((checked.accepted, checked.rejected), (3, 2));
        assert_eq!(checked.rejection, "trace_id must be 16 bytes, got 3");
        assert_eq!(bodies(&request), ["a1", "a2", "c1"]);
        assert_eq!(bodies(&malformed), ["a-bad", "b-bad"]);
        // Each bad record keeps its own resource and scope, and only those are copied.
        assert_eq!(malformed.resource_logs.len(), 2);
        assert_eq!(malformed.resource_logs[0].resource, original.resource_logs[0].resource);
        assert_eq!(malformed.resource_logs[0].schema_url, original.resource_logs[0].schema_url);
        assert_eq!(malformed.resource_logs[0].scope_logs.len(), 1);
        assert_eq!(
            malformed.resource_logs[0].scope_logs[0].scope,
            original.resource_logs[0].scope_logs[0].scope
        );
        assert_eq!(malformed.resource_logs[1].resource, original.resource_logs[1].resource);
        assert_eq!(check(&request).rejected, 0);
        assert_eq!(check(&malformed).accepted, 0);
    }

    #[test]
    fn a_request_without_malformed_records_is_left_as_it_is() {
        let mut request =
            ExportLogsServiceRequest { resource_logs: vec![resource("a", vec![vec![record("a1", 16, 8)]])] };
        let original = request.clone();
        let (checked, malformed) = split_malformed(&mut request);
        assert_eq!(checked, Checked { accepted: 1, rejected: 0, rejection: String::new() });
        assert_eq!(request, original);
        assert_eq!(malformed, ExportLogsServiceRequest::default());
    }

    #[test]
    fn spans_and_data_points_follow_the_same_id_rule() {
        use opentelemetry_proto::tonic::{
            metrics::v1::{
                Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Summary, SummaryDataPoint,
            },
            trace::v1::{ResourceSpans, ScopeSpans, span::Link},
        };
        let span = |name: &str, trace_id: usize, parent: usize, link_span: usize| Span {
            name: name.into(),
            trace_id: vec![1; trace_id],
            span_id: vec![2; 8],
            parent_span_id: vec![3; parent],
            links: vec![Link { trace_id: vec![4; 16], span_id: vec![5; link_span], ..Default::default() }],
            ..Default::default()
        };
        let mut traces = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![
                        span("ok", 16, 8, 8),
                        span("root", 0, 0, 0),
                        span("bad", 3, 8, 8),
                        span("bad link", 16, 0, 2),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let mut split = traces.clone();
        let checked = drop_malformed_spans(&mut traces);
        assert_eq!((checked.accepted, checked.rejected), (2, 2));
        let (split_checked, bad) = split_malformed_spans(&mut split);
        assert_eq!((split, split_checked), (traces.clone(), checked.clone()), "split keeps what drop keeps");
        let bad_names: Vec<_> =
            bad.resource_spans[0].scope_spans[0].spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(bad_names, ["bad", "bad link"]);
        let (clean, none) = split_malformed_spans(&mut traces.clone());
        assert_eq!((clean.rejected, none), (0, ExportTraceServiceRequest::default()));
        assert_eq!(checked.rejection, "trace_id must be 16 bytes, got 3");
        let names: Vec<_> =
            traces.resource_spans[0].scope_spans[0].spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ok", "root"]);
        assert_eq!(check_span(&span("p", 16, 5, 8)).unwrap_err(), "parent_span_id must be 8 bytes, got 5");
        assert_eq!(check_span(&span("l", 16, 8, 2)).unwrap_err(), "links.span_id must be 8 bytes, got 2");

        let point = |value: f64, exemplar_trace_id: usize| NumberDataPoint {
            value: Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(value)),
            exemplars: vec![Exemplar { trace_id: vec![6; exemplar_trace_id], ..Default::default() }],
            ..Default::default()
        };
        let mut metrics = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        Metric {
                            name: "g".into(),
                            data: Some(Data::Gauge(Gauge {
                                data_points: vec![point(1.0, 16), point(2.0, 9), point(3.0, 0)],
                            })),
                            ..Default::default()
                        },
                        Metric {
                            name: "s".into(),
                            data: Some(Data::Summary(Summary {
                                data_points: vec![SummaryDataPoint::default()],
                            })),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let mut split = metrics.clone();
        let checked = drop_malformed_points(&mut metrics);
        assert_eq!((checked.accepted, checked.rejected), (3, 1));
        let (split_checked, bad) = split_malformed_points(&mut split);
        assert_eq!((split, split_checked), (metrics.clone(), checked.clone()), "split keeps what drop keeps");
        assert_eq!(bad.resource_metrics[0].scope_metrics[0].metrics.len(), 1, "the summary has no bad point");
        let Some(Data::Gauge(bad_gauge)) = &bad.resource_metrics[0].scope_metrics[0].metrics[0].data else {
            panic!("the gauge's bad point")
        };
        assert_eq!(bad_gauge.data_points[0].exemplars[0].trace_id.len(), 9);
        let (clean, none) = split_malformed_points(&mut metrics.clone());
        assert_eq!((clean.rejected, none), (0, ExportMetricsServiceRequest::default()));
        assert_eq!(checked.rejection, "exemplars.trace_id must be 16 bytes, got 9");
        let Some(Data::Gauge(gauge)) = &metrics.resource_metrics[0].scope_metrics[0].metrics[0].data else {
            panic!("gauge kept")
        };
        assert_eq!(gauge.data_points.len(), 2);
    }
}
