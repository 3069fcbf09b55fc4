//! How an OTLP export request becomes Kafka records: pure functions, no broker.
//!
//! ```text
//!  Export{Logs,Trace,Metrics}ServiceRequest --group by service.name--> one group per key (first-seen order)
//!       each group --pack under the size budget--> payloads of the same message type (Batch)
//! ```
//!
//! In: a decoded request and the largest value a Kafka record may carry. Out: [`Batch`]es, each
//! an encoded request of the same signal (the OpenTelemetry Collector's `otlp_proto` Kafka
//! encoding) whose resources all share one key, plus the items that could not be carried. The
//! decoding path ([`split_request`]) works on any signal through [`Levels`]: resources, their
//! scopes, the scopes' items (log records, spans, metrics).
//! [`check_and_split`] first leaves out the records the appender could not stage (the shared
//! check of `telemetry_lake_common::otlp::records`, with its messages), so nothing that reaches
//! Kafka from here is refused later. [`split_encoded`] is the common case without decoding: a
//! request whose walk found no malformed record and no resource over the budget is cut from its
//! own bytes, whole `ResourceLogs` fields packed per key (the same records in the same batches;
//! only empty scopes, which carry no log, may remain).
//!
//! Guarantees:
//! - every item of the request (log record, span, data point) is in exactly one batch, or
//!   counted in [`Split::rejected`]; an item is rejected only when it alone, wrapped in its
//!   resource and scope (and metric), is larger than the budget;
//! - a batch never encodes to more than the budget;
//! - records keep their order within a key: batches of one key come out in request order, so
//!   producing them in order onto one partition keeps a service's order;
//! - a resource or scope too large for one batch is split along scope and then record
//!   boundaries (for metrics: metrics, then a metric's data points); each piece carries a full
//!   copy of its resource and scope (attributes, schema URL) and metric (name, unit, type), so
//!   every batch is a self-contained request;
//! - resources and scopes without items are dropped (they carry nothing to land).

use std::{collections::HashMap, ops::Range};

use bytes::Bytes;

use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    },
    common::v1::any_value,
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    metrics::v1::{Metric, ResourceMetrics, ScopeMetrics, metric::Data},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use prost::{Message, encoding::encoded_len_varint};
use telemetry_lake_common::otlp::records;
use telemetry_lake_common::otlp::signal::data_points;
use telemetry_lake_common::otlp::walk::{ResourceLogsRange, Walk};
use telemetry_lake_common::otlp::wire::Cursor;

/// The key of resources without a `service.name`: the value OpenTelemetry SDKs report for an
/// unnamed service, so they still share one partition and keep their order.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// One Kafka record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The resources' `service.name`.
    pub key: String,
    /// An encoded request of the signal (on the byte path, a slice of the request itself when
    /// its resources are contiguous).
    pub payload: Bytes,
    /// Items (log records, spans, data points) in `payload`.
    pub records: u64,
}

/// The result of [`split_request`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    pub batches: Vec<Batch>,
    /// Items dropped: too large (each alone is larger than the budget) or malformed.
    pub rejected: u64,
    /// Why they were dropped (empty when none were).
    pub rejection: String,
}

/// The Kafka key of a resource: its `service.name` string value.
pub fn resource_key(resource: Option<&Resource>) -> String {
    resource
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| UNKNOWN_SERVICE.to_owned())
}

/// Bytes a nested message of `len` bytes takes in its parent: a one-byte tag (every repeated
/// field used here has a field number below 16), the length varint and the body.
fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// The most a length varint can add on top of the tag (bodies stay below 32 GiB).
const NESTING_OVERHEAD: usize = 1 + 5;

/// The fast path: batches cut from the request's own bytes, without decoding it. Each batch
/// is the concatenation of whole `ResourceLogs` fields of one key, in request order, packed
/// under `budget`, so the records and their bytes go out exactly as the client sent them
/// (empty scopes inside a resource included). Resources without records are left out.
///
/// `None` when the request needs [`check_and_split`]: it has malformed records, or one resource
/// alone is larger than `budget` (it must be cut along scope and record boundaries).
pub fn split_encoded(bytes: &Bytes, walk: &Walk, budget: usize) -> Option<Split> {
    if walk.malformed > 0 || walk.resources.iter().any(|r| r.field.len() > budget) {
        return None;
    }
    let fields = walk.resources.iter().map(|resource: &ResourceLogsRange| Field {
        key: resource.service(bytes).unwrap_or(UNKNOWN_SERVICE),
        range: resource.field.clone(),
        items: resource.records,
    });
    Some(pack_fields(bytes, fields.collect(), budget))
}

/// One resource's whole field encoding in a request (key, length, body), its Kafka key and the
/// items it holds.
struct Field<'a> {
    key: &'a str,
    range: Range<usize>,
    items: u64,
}

/// Batches of whole resource fields of one key, in request order, packed under `budget` (each
/// field fits it); fields without items are left out. A batch is a slice of `bytes` when its
/// fields follow each other there.
fn pack_fields(bytes: &Bytes, fields: Vec<Field<'_>>, budget: usize) -> Split {
    let mut order: Vec<(&str, Vec<Field<'_>>)> = Vec::new();
    for field in fields.into_iter().filter(|f| f.items > 0) {
        match order.iter_mut().find(|(k, _)| *k == field.key) {
            Some((_, same_key)) => same_key.push(field),
            None => order.push((field.key, vec![field])),
        }
    }
    let mut split = Split::default();
    for (key, same_key) in order {
        for group in pack(same_key, budget, |f| f.range.len()) {
            let payload = match contiguous(&group) {
                Some(range) => bytes.slice(range),
                None => {
                    let mut payload = Vec::with_capacity(group.iter().map(|f| f.range.len()).sum());
                    for field in &group {
                        payload.extend_from_slice(&bytes[field.range.clone()]);
                    }
                    Bytes::from(payload)
                }
            };
            let records = group.iter().map(|f| f.items).sum();
            split.batches.push(Batch { key: key.to_owned(), payload, records });
        }
    }
    split
}

/// The one range the fields of `group` cover, if they follow each other in the request.
fn contiguous(group: &[Field<'_>]) -> Option<Range<usize>> {
    let (first, last) = (group.first()?, group.last()?);
    group.windows(2).all(|w| w[0].range.end == w[1].range.start).then_some(first.range.start..last.range.end)
}

/// The whole encodings (key, length, body) of the request's resources (field 1 of every OTLP
/// export request), in order; `None` if `bytes` do not scan (they decoded, so they do).
fn resource_fields(bytes: &[u8]) -> Option<Vec<Range<usize>>> {
    let mut cursor = Cursor::new(bytes);
    let mut fields = Vec::new();
    while !cursor.done() {
        let start = cursor.pos();
        let (tag, wire) = cursor.key().ok()?;
        if tag == 1 {
            cursor.bytes(wire).ok()?;
            fields.push(start..cursor.pos());
        } else {
            cursor.skip(wire, tag, 0).ok()?;
        }
    }
    Some(fields)
}

/// Leaves out the items `drop_malformed` removes (the shared id rule of
/// `telemetry_lake_common::otlp::records`: for logs, what the appender would refuse), then splits
/// the rest as [`split_request`] does. `rejected` counts both kinds of refusal; the message names
/// the first malformed item's fault exactly as the shared check words it, then the size refusal.
pub fn check_and_split<L: Levels>(
    mut request: L,
    budget: usize,
    drop_malformed: fn(&mut L) -> records::Checked,
) -> Split {
    let checked = drop_malformed(&mut request);
    with_malformed(split_request(request, budget), checked)
}

/// [`check_and_split`] for a decoded request that came as `bytes`: when nothing in it is
/// malformed and each resource fits the budget, the batches are cut from `bytes` as
/// [`split_encoded`] cuts logs (whole resource fields, nothing re-encoded; the keys and item
/// counts from the decoded request, whose resources are those fields in the same order).
pub fn check_and_split_bytes<L: Levels>(
    bytes: &Bytes,
    mut request: L,
    budget: usize,
    drop_malformed: fn(&mut L) -> records::Checked,
) -> Split {
    let checked = drop_malformed(&mut request);
    if checked.rejected == 0
        && let Some(ranges) = resource_fields(bytes)
        && ranges.len() == request.resources().len()
        && ranges.iter().all(|range| range.len() <= budget)
    {
        let mut resources = request.into_resources();
        let keys: Vec<String> = resources.iter().map(|r| resource_key(L::resource(r))).collect();
        let fields = ranges
            .into_iter()
            .zip(&keys)
            .zip(resources.iter_mut())
            .map(|((range, key), resource)| Field { key, range, items: resource_items::<L>(resource) })
            .collect();
        return pack_fields(bytes, fields, budget);
    }
    with_malformed(split_request(request, budget), checked)
}

/// `split` with the malformed items of `checked` counted and named first.
fn with_malformed(mut split: Split, checked: records::Checked) -> Split {
    if checked.rejected > 0 {
        split.rejected += checked.rejected;
        split.rejection = if split.rejection.is_empty() {
            checked.rejection
        } else {
            format!("{}; {}", checked.rejection, split.rejection)
        };
    }
    split
}

/// The levels of an export request the decoding path splits along: the request's resources,
/// their scopes and the scopes' items.
pub trait Levels: Message + Default + Sized {
    type Resource: Message + Clone;
    type Scope: Message + Clone;
    type Item: Message;
    /// What the signal's items are called in a rejection.
    const ITEMS: &'static str;

    fn resources(&self) -> &[Self::Resource];
    fn into_resources(self) -> Vec<Self::Resource>;
    fn from_resources(resources: Vec<Self::Resource>) -> Self;
    fn resource(resource: &Self::Resource) -> Option<&Resource>;
    fn scopes(resource: &mut Self::Resource) -> &mut Vec<Self::Scope>;
    fn items(scope: &mut Self::Scope) -> &mut Vec<Self::Item>;
    /// The signal's items one item holds: 1, or a metric's data points.
    fn weight(_item: &Self::Item) -> u64 {
        1
    }
    /// An item whose field is larger than `budget`: the pieces of it that fit, the signal's
    /// items rejected and the field size of the largest rejected part. By default the item is
    /// the smallest part (a log record, a span) and is rejected whole.
    fn fit_item(item: Self::Item, _budget: usize) -> (Vec<Self::Item>, u64, Option<usize>) {
        (Vec::new(), Self::weight(&item), Some(field_len(item.encoded_len())))
    }
}

macro_rules! levels {
    ($request:ty, $resources:ident: $resource:ty, $scopes:ident: $scope:ty, $items:ident: $item:ty, $noun:literal) => {
        impl Levels for $request {
            type Resource = $resource;
            type Scope = $scope;
            type Item = $item;
            const ITEMS: &'static str = $noun;

            fn resources(&self) -> &[$resource] {
                &self.$resources
            }
            fn into_resources(self) -> Vec<$resource> {
                self.$resources
            }
            fn from_resources($resources: Vec<$resource>) -> Self {
                Self { $resources }
            }
            fn resource(resource: &$resource) -> Option<&Resource> {
                resource.resource.as_ref()
            }
            fn scopes(resource: &mut $resource) -> &mut Vec<$scope> {
                &mut resource.$scopes
            }
            fn items(scope: &mut $scope) -> &mut Vec<$item> {
                &mut scope.$items
            }
        }
    };
}

levels!(ExportLogsServiceRequest, resource_logs: ResourceLogs, scope_logs: ScopeLogs, log_records: LogRecord, "log record(s)");
levels!(ExportTraceServiceRequest, resource_spans: ResourceSpans, scope_spans: ScopeSpans, spans: Span, "span(s)");

impl Levels for ExportMetricsServiceRequest {
    type Resource = ResourceMetrics;
    type Scope = ScopeMetrics;
    type Item = Metric;
    const ITEMS: &'static str = "data point(s)";

    fn resources(&self) -> &[ResourceMetrics] {
        &self.resource_metrics
    }
    fn into_resources(self) -> Vec<ResourceMetrics> {
        self.resource_metrics
    }
    fn from_resources(resource_metrics: Vec<ResourceMetrics>) -> Self {
        Self { resource_metrics }
    }
    fn resource(resource: &ResourceMetrics) -> Option<&Resource> {
        resource.resource.as_ref()
    }
    fn scopes(resource: &mut ResourceMetrics) -> &mut Vec<ScopeMetrics> {
        &mut resource.scope_metrics
    }
    fn items(scope: &mut ScopeMetrics) -> &mut Vec<Metric> {
        &mut scope.metrics
    }
    fn weight(metric: &Metric) -> u64 {
        data_points(metric)
    }
    /// A metric is cut along its data points: each piece is the metric (name, unit, type,
    /// temporality...) with some of its points.
    fn fit_item(mut metric: Metric, budget: usize) -> (Vec<Metric>, u64, Option<usize>) {
        macro_rules! cut {
            ($variant:ident, $data:ident) => {{
                let points = std::mem::take(&mut $data.data_points);
                let shell = Metric { data: Some(Data::$variant($data.clone())), ..metric.clone() };
                let inner = budget.saturating_sub(shell.encoded_len() + 2 * NESTING_OVERHEAD);
                let (runs, rejected, largest) = fit_points(points, inner);
                let pieces = runs
                    .into_iter()
                    .map(|data_points| {
                        let mut piece = shell.clone();
                        if let Some(Data::$variant(data)) = &mut piece.data {
                            data.data_points = data_points;
                        }
                        piece
                    })
                    .collect();
                (pieces, rejected, largest)
            }};
        }
        match metric.data.take() {
            Some(Data::Gauge(mut data)) => cut!(Gauge, data),
            Some(Data::Sum(mut data)) => cut!(Sum, data),
            Some(Data::Histogram(mut data)) => cut!(Histogram, data),
            Some(Data::ExponentialHistogram(mut data)) => cut!(ExponentialHistogram, data),
            Some(Data::Summary(mut data)) => cut!(Summary, data),
            // No points: nothing to cut, and nothing of the signal's to count.
            None => (Vec::new(), 0, Some(field_len(metric.encoded_len()))),
        }
    }
}

/// Data points packed in runs whose fields fit `budget`, the points rejected (each alone
/// larger) and the field size of the largest of those.
fn fit_points<P: Message>(points: Vec<P>, budget: usize) -> (Vec<Vec<P>>, u64, Option<usize>) {
    let (mut fitting, mut rejected, mut largest) = (Vec::with_capacity(points.len()), 0, None);
    for point in points {
        let len = field_len(point.encoded_len());
        if len <= budget {
            fitting.push(point);
        } else {
            rejected += 1;
            largest = largest.max(Some(len));
        }
    }
    (pack(fitting, budget, |p| field_len(p.encoded_len())), rejected, largest)
}

/// Splits `request` into batches of at most `budget` encoded bytes, grouped by key.
pub fn split_request<L: Levels>(request: L, budget: usize) -> Split {
    let mut order: Vec<(String, Vec<L::Resource>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for resource in request.into_resources() {
        let key = resource_key(L::resource(&resource));
        let slot = *index.entry(key.clone()).or_insert_with(|| {
            order.push((key, Vec::new()));
            order.len() - 1
        });
        order[slot].1.push(resource);
    }

    let mut split = Split::default();
    let mut too_large: Option<usize> = None;
    for (key, resources) in order {
        let mut pieces = Vec::new();
        for resource in resources {
            let (fitting, rejected, largest) = fit_resource::<L>(resource, budget);
            pieces.extend(fitting);
            split.rejected += rejected;
            too_large = too_large.max(largest);
        }
        for mut group in pack(pieces, budget, |r| field_len(r.encoded_len())) {
            let records = group.iter_mut().map(resource_items::<L>).sum();
            let payload = L::from_resources(group).encode_to_vec().into();
            split.batches.push(Batch { key: key.clone(), payload, records });
        }
    }
    if let Some(largest) = too_large {
        split.rejection = format!(
            "{} {} dropped: each is larger than the kafka message limit of {budget} bytes \
             (largest {largest} bytes with its resource and scope)",
            split.rejected,
            L::ITEMS,
        );
    }
    split
}

/// Items in `resource`, as the signal counts them.
fn resource_items<L: Levels>(resource: &mut L::Resource) -> u64 {
    L::scopes(resource).iter_mut().map(|scope| L::items(scope).iter().map(L::weight).sum::<u64>()).sum()
}

/// Groups `items` in order into runs whose summed `len` stays within `budget`; an item larger
/// than `budget` gets a run of its own (callers only pass items that fit).
fn pack<T>(items: Vec<T>, budget: usize, len: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    let mut used = 0;
    for item in items {
        let n = len(&item);
        if !run.is_empty() && used + n > budget {
            runs.push(std::mem::take(&mut run));
            used = 0;
        }
        used += n;
        run.push(item);
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// Pieces of `resource` that each fit `budget` as a field of the request, the items
/// rejected and the size of the largest rejected one.
fn fit_resource<L: Levels>(
    mut resource: L::Resource,
    budget: usize,
) -> (Vec<L::Resource>, u64, Option<usize>) {
    L::scopes(&mut resource).retain_mut(|s| !L::items(s).is_empty());
    if L::scopes(&mut resource).is_empty() {
        return (Vec::new(), 0, None);
    }
    if field_len(resource.encoded_len()) <= budget {
        return (vec![resource], 0, None);
    }
    let scopes = std::mem::take(L::scopes(&mut resource));
    let shell_len = resource.encoded_len();
    let inner = budget.saturating_sub(shell_len + NESTING_OVERHEAD);
    let (mut fitting, mut rejected, mut largest) = (Vec::new(), 0, None);
    for scope in scopes {
        if field_len(scope.encoded_len()) <= inner {
            fitting.push(scope);
            continue;
        }
        let (pieces, dropped, big) = fit_scope::<L>(scope, inner, shell_len);
        fitting.extend(pieces);
        rejected += dropped;
        largest = largest.max(big);
    }
    let pieces = pack(fitting, inner, |s| field_len(s.encoded_len()))
        .into_iter()
        .map(|scopes| {
            let mut piece = resource.clone();
            *L::scopes(&mut piece) = scopes;
            piece
        })
        .collect();
    (pieces, rejected, largest)
}

/// Pieces of `scope` that each fit `budget` as a field of its resource; `outer` is what the
/// resource around it adds, for the size reported for a rejected item.
fn fit_scope<L: Levels>(
    mut scope: L::Scope,
    budget: usize,
    outer: usize,
) -> (Vec<L::Scope>, u64, Option<usize>) {
    let items = std::mem::take(L::items(&mut scope));
    let shell_len = scope.encoded_len();
    let inner = budget.saturating_sub(shell_len + NESTING_OVERHEAD);
    let (mut fitting, mut rejected, mut largest) = (Vec::with_capacity(items.len()), 0, None);
    for item in items {
        if field_len(item.encoded_len()) <= inner {
            fitting.push(item);
            continue;
        }
        let (pieces, dropped, big) = L::fit_item(item, inner);
        fitting.extend(pieces);
        rejected += dropped;
        largest = largest.max(big.map(|len| len + shell_len + outer + 2 * NESTING_OVERHEAD));
    }
    let pieces = pack(fitting, inner, |r| field_len(r.encoded_len()))
        .into_iter()
        .map(|items| {
            let mut piece = scope.clone();
            *L::items(&mut piece) = items;
            piece
        })
        .collect();
    (pieces, rejected, largest)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};

    use super::*;

    fn string(s: &str) -> Option<AnyValue> {
        Some(AnyValue { value: Some(any_value::Value::StringValue(s.into())) })
    }

    fn record(body: &str) -> LogRecord {
        LogRecord { time_unix_nano: 1, body: string(body), ..Default::default() }
    }

    fn resource(service: Option<&str>, scopes: Vec<(&str, Vec<LogRecord>)>) -> ResourceLogs {
        let attributes = service
            .map(|s| vec![KeyValue { key: "service.name".into(), value: string(s), ..Default::default() }])
            .unwrap_or_default();
        ResourceLogs {
            resource: Some(Resource { attributes, ..Default::default() }),
            scope_logs: scopes
                .into_iter()
                .map(|(name, log_records)| ScopeLogs {
                    scope: Some(InstrumentationScope { name: name.into(), ..Default::default() }),
                    log_records,
                    schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
                })
                .collect(),
            schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
        }
    }

    fn bodies(records: &[LogRecord]) -> Vec<String> {
        records
            .iter()
            .map(|r| match r.body.as_ref().and_then(|b| b.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                other => panic!("unexpected body {other:?}"),
            })
            .collect()
    }

    /// (key, scope name, body) of every record in the batches, in batch order.
    fn flatten(split: &Split) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for batch in &split.batches {
            let request = ExportLogsServiceRequest::decode(batch.payload.as_ref()).expect("valid protobuf");
            assert_eq!(telemetry_lake_common::otlp::count_records(&request), batch.records);
            for r in &request.resource_logs {
                assert_eq!(
                    resource_key(r.resource.as_ref()),
                    batch.key,
                    "every resource of a batch has its key"
                );
                for s in &r.scope_logs {
                    let scope = s.scope.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                    for body in bodies(&s.log_records) {
                        out.push((batch.key.clone(), scope.clone(), body));
                    }
                }
            }
        }
        out
    }

    fn lines(prefix: &str, n: usize, width: usize) -> Vec<LogRecord> {
        (0..n).map(|i| record(&format!("{prefix}-{i:05}-{}", "x".repeat(width)))).collect()
    }

    #[test]
    fn keys_come_from_service_name_with_a_fallback() {
        assert_eq!(resource_key(resource(Some("checkout"), vec![]).resource.as_ref()), "checkout");
        assert_eq!(resource_key(resource(None, vec![]).resource.as_ref()), UNKNOWN_SERVICE);
        assert_eq!(resource_key(resource(Some(""), vec![]).resource.as_ref()), UNKNOWN_SERVICE);
        assert_eq!(resource_key(ResourceLogs::default().resource.as_ref()), UNKNOWN_SERVICE);
    }

    #[test]
    fn small_request_is_one_batch_per_service_in_first_seen_order() {
        let request = ExportLogsServiceRequest {
            resource_logs: vec![
                resource(Some("b"), vec![("s", lines("b1", 2, 4))]),
                resource(Some("a"), vec![("s", lines("a1", 1, 4))]),
                resource(Some("b"), vec![("t", lines("b2", 3, 4))]),
            ],
        };
        let split = split_request(request, 900_000);
        assert_eq!(split.rejected, 0);
        assert!(split.rejection.is_empty());
        let keys: Vec<_> = split.batches.iter().map(|b| (b.key.as_str(), b.records)).collect();
        assert_eq!(keys, [("b", 5), ("a", 1)]);
        let b = ExportLogsServiceRequest::decode(split.batches[0].payload.as_ref()).unwrap();
        assert_eq!(b.resource_logs.len(), 2, "both resources of service b share one record");
    }

    #[test]
    fn unsplit_payload_is_byte_identical_to_the_request() {
        let request = ExportLogsServiceRequest {
            resource_logs: vec![resource(Some("svc"), vec![("s", lines("r", 10, 10))])],
        };
        let encoded = request.encode_to_vec();
        let split = split_request(request, 900_000);
        assert_eq!(split.batches.len(), 1);
        assert_eq!(split.batches[0].payload, encoded);
    }

    #[test]
    fn large_request_splits_along_records_and_keeps_order() {
        let budget = 10_000;
        let request = ExportLogsServiceRequest {
            resource_logs: vec![
                resource(Some("big"), vec![("s1", lines("one", 300, 50)), ("s2", lines("two", 200, 50))]),
                resource(Some("small"), vec![("s", lines("small", 3, 5))]),
            ],
        };
        let expected: Vec<_> = ["one", "two"]
            .iter()
            .zip([300, 200])
            .flat_map(|(p, n)| (0..n).map(move |i| format!("{p}-{i:05}-{}", "x".repeat(50))))
            .collect();
        let split = split_request(request, budget);
        assert_eq!(split.rejected, 0);
        assert!(split.batches.len() > 5, "{} batches", split.batches.len());
        for batch in &split.batches {
            assert!(batch.payload.len() <= budget, "batch of {} bytes", batch.payload.len());
        }
        let flat = flatten(&split);
        let big: Vec<_> = flat.iter().filter(|(k, ..)| k == "big").map(|(_, _, b)| b.clone()).collect();
        assert_eq!(big, expected, "every record once, in order");
        assert_eq!(flat.iter().filter(|(k, ..)| k == "small").count(), 3);
        // Each piece carries its scope.
        assert!(flat.iter().filter(|(_, s, b)| b.starts_with("two") && s != "s2").count() == 0);
    }

    #[test]
    fn every_piece_keeps_resource_and_scope() {
        let split = split_request(
            ExportLogsServiceRequest {
                resource_logs: vec![resource(Some("svc"), vec![("scope", lines("r", 100, 100))])],
            },
            2_000,
        );
        assert!(split.batches.len() > 1);
        for batch in &split.batches {
            let request = ExportLogsServiceRequest::decode(batch.payload.as_ref()).unwrap();
            for r in &request.resource_logs {
                assert_eq!(r.schema_url, "https://opentelemetry.io/schemas/1.30.0");
                for s in &r.scope_logs {
                    assert_eq!(s.scope.as_ref().unwrap().name, "scope");
                    assert_eq!(s.schema_url, "https://opentelemetry.io/schemas/1.30.0");
                }
            }
        }
    }

    #[test]
    fn oversized_single_record_is_rejected_alone() {
        let mut records = lines("ok", 3, 10);
        records.insert(1, record(&"y".repeat(5_000)));
        let split = split_request(
            ExportLogsServiceRequest { resource_logs: vec![resource(Some("svc"), vec![("s", records)])] },
            1_000,
        );
        assert_eq!(split.rejected, 1);
        assert!(split.rejection.contains("1 log record(s) dropped"), "{}", split.rejection);
        assert!(split.rejection.contains("1000 bytes"), "{}", split.rejection);
        let kept: Vec<_> = flatten(&split).into_iter().map(|(.., b)| b).collect();
        assert_eq!(kept.len(), 3);
        assert!(kept.iter().all(|b| b.starts_with("ok-")));
    }

    #[test]
    fn malformed_ids_are_left_out_with_the_appenders_message() {
        let mut short_trace = record("short trace");
        short_trace.trace_id = vec![1, 2, 3];
        let mut long_span = record("long span");
        long_span.span_id = vec![1; 9];
        let mut good = record("good");
        good.trace_id = vec![1; 16];
        good.span_id = vec![2; 8];
        let request = ExportLogsServiceRequest {
            resource_logs: vec![
                resource(Some("svc"), vec![("s", vec![short_trace, good, record("no ids")])]),
                resource(Some("other"), vec![("s", vec![long_span])]),
            ],
        };
        let expected = records::check(&request);
        let split = check_and_split(request, 900_000, records::drop_malformed);
        assert_eq!(split.rejected, 2);
        assert_eq!(split.rejection, "trace_id must be 16 bytes, got 3");
        assert_eq!(split.rejection, expected.rejection, "the appender's words");
        let kept: Vec<_> = flatten(&split).into_iter().map(|(.., b)| b).collect();
        assert_eq!(kept, ["good", "no ids"]);
        assert_eq!(split.batches.len(), 1, "a resource left without records is not produced");

        let mut only_bad = record("bad");
        only_bad.span_id = vec![1; 5];
        let split = check_and_split(
            ExportLogsServiceRequest {
                resource_logs: vec![resource(Some("svc"), vec![("s", vec![only_bad])])],
            },
            900_000,
            records::drop_malformed,
        );
        assert!(split.batches.is_empty());
        assert_eq!((split.rejected, split.rejection.as_str()), (1, "span_id must be 8 bytes, got 5"));
    }

    #[test]
    fn malformed_and_oversized_records_are_both_counted_and_named() {
        let mut bad = record("bad");
        bad.trace_id = vec![1; 3];
        let records = vec![bad, record(&"y".repeat(5_000)), record("ok")];
        let split = check_and_split(
            ExportLogsServiceRequest { resource_logs: vec![resource(Some("svc"), vec![("s", records)])] },
            1_000,
            records::drop_malformed,
        );
        assert_eq!(split.rejected, 2);
        assert!(
            split.rejection.starts_with("trace_id must be 16 bytes, got 3; 1 log record(s) dropped"),
            "{}",
            split.rejection
        );
        assert_eq!(flatten(&split).len(), 1);
    }

    #[test]
    fn empty_resources_and_scopes_are_dropped() {
        let split = split_request(
            ExportLogsServiceRequest {
                resource_logs: vec![
                    resource(Some("empty"), vec![("s", vec![])]),
                    resource(Some("svc"), vec![("none", vec![]), ("some", lines("r", 1, 1))]),
                ],
            },
            900_000,
        );
        assert_eq!(split.batches.len(), 1);
        let request = ExportLogsServiceRequest::decode(split.batches[0].payload.as_ref()).unwrap();
        assert_eq!(request.resource_logs[0].scope_logs.len(), 1);
        assert!(split_request(ExportLogsServiceRequest::default(), 10).batches.is_empty());
    }

    #[test]
    fn budget_is_tight_not_wasteful() {
        // Records of ~100 bytes in a 10 kB budget: batches should be mostly full.
        let split = split_request(
            ExportLogsServiceRequest {
                resource_logs: vec![resource(Some("svc"), vec![("s", lines("r", 1_000, 80))])],
            },
            10_000,
        );
        let total: usize = split.batches.iter().map(|b| b.payload.len()).sum();
        assert!(
            split.batches.len() <= total / 9_000 + 1,
            "{} batches for {total} bytes",
            split.batches.len()
        );
    }

    fn split_both_ways(request: &ExportLogsServiceRequest, budget: usize) -> (Option<Split>, Split) {
        let bytes = Bytes::from(request.encode_to_vec());
        let walk = telemetry_lake_common::otlp::walk::walk_logs_request(&bytes).expect("valid request");
        (
            split_encoded(&bytes, &walk, budget),
            check_and_split(request.clone(), budget, records::drop_malformed),
        )
    }

    #[test]
    fn the_byte_path_cuts_what_the_decoding_path_cuts() {
        let request = ExportLogsServiceRequest {
            resource_logs: vec![
                resource(Some("checkout"), vec![("a", lines("c1", 30, 40))]),
                resource(None, vec![("b", lines("u1", 5, 10))]),
                resource(Some("cart"), vec![]),
                resource(Some("checkout"), vec![("a", lines("c2", 30, 40)), ("b", lines("c3", 3, 5))]),
                resource(Some(""), vec![("c", lines("u2", 2, 10))]),
            ],
        };
        for budget in [1 << 20, 4096, 2600] {
            let (fast, slow) = split_both_ways(&request, budget);
            let fast = fast.expect("no malformed records, every resource fits");
            assert_eq!(flatten(&fast), flatten(&slow), "budget {budget}");
            assert!(fast.batches.iter().all(|b| b.payload.len() <= budget), "budget {budget}");
            assert_eq!(fast.rejected, 0);
        }
        // One resource per key fits whole: its bytes go out untouched.
        let (fast, _) = split_both_ways(&request, 1 << 20);
        let first = &request.resource_logs[0];
        let mut expected =
            ExportLogsServiceRequest { resource_logs: vec![first.clone(), request.resource_logs[3].clone()] }
                .encode_to_vec();
        assert_eq!(fast.expect("fast").batches[0].payload, std::mem::take(&mut expected));
    }

    #[test]
    fn the_byte_path_declines_malformed_records_and_resources_over_the_budget() {
        let mut bad = record("bad");
        bad.trace_id = vec![1, 2, 3];
        let malformed = ExportLogsServiceRequest {
            resource_logs: vec![resource(Some("checkout"), vec![("a", vec![record("good"), bad])])],
        };
        assert_eq!(split_both_ways(&malformed, 1 << 20).0, None);
        let large = ExportLogsServiceRequest {
            resource_logs: vec![resource(Some("checkout"), vec![("a", lines("c", 100, 100))])],
        };
        let (fast, slow) = split_both_ways(&large, 4096);
        assert_eq!(fast, None);
        assert!(slow.batches.len() > 1);
    }

    fn service(name: &str) -> Option<Resource> {
        Some(Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: string(name),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn spans(service_name: &str, names: &[String]) -> ResourceSpans {
        let spans = names
            .iter()
            .map(|name| Span {
                name: name.clone(),
                trace_id: vec![1; 16],
                span_id: vec![2; 8],
                ..Default::default()
            })
            .collect();
        ResourceSpans {
            resource: service(service_name),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }
    }

    #[test]
    fn traces_split_by_service_under_the_budget_and_keep_every_span() {
        let names = |prefix: &str, n: usize| -> Vec<String> {
            (0..n).map(|i| format!("{prefix}-{i:04}-{}", "s".repeat(50))).collect()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![spans("checkout", &names("c", 200)), spans("cart", &names("k", 3))],
        };
        let bytes = Bytes::from(request.encode_to_vec());
        let split = check_and_split_bytes(&bytes, request.clone(), 4096, records::drop_malformed_spans);
        assert_eq!(split.rejected, 0);
        assert!(split.batches.len() > 2);
        assert!(split.batches.iter().all(|b| b.payload.len() <= 4096));
        let mut seen = Vec::new();
        for batch in &split.batches {
            let decoded = ExportTraceServiceRequest::decode(batch.payload.as_ref()).unwrap();
            let resource = &decoded.resource_spans[0];
            assert_eq!(resource_key(resource.resource.as_ref()), batch.key);
            assert_eq!(telemetry_lake_common::otlp::signal::count_spans(&decoded), batch.records);
            seen.extend(
                decoded.resource_spans.iter().flat_map(|r| &r.scope_spans[0].spans).map(|s| s.name.clone()),
            );
        }
        let mut expected = names("c", 200);
        expected.extend(names("k", 3));
        assert_eq!(seen, expected, "every span once, in order within its service");
    }

    #[test]
    fn a_request_of_one_service_that_fits_goes_out_as_it_came() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![spans("checkout", &["a".into()]), spans("checkout", &["b".into()])],
        };
        let bytes = Bytes::from(request.encode_to_vec());
        let split = check_and_split_bytes(&bytes, request.clone(), 900_000, records::drop_malformed_spans);
        assert_eq!(split.batches, vec![Batch { key: "checkout".into(), payload: bytes.clone(), records: 2 }]);

        // Two services: one batch each, each the resource's own bytes.
        let mut two = request.clone();
        two.resource_spans[1] = spans("cart", &["b".into()]);
        let two_bytes = Bytes::from(two.encode_to_vec());
        let split = check_and_split_bytes(&two_bytes, two.clone(), 900_000, records::drop_malformed_spans);
        assert_eq!(split.batches.iter().map(|b| b.key.as_str()).collect::<Vec<_>>(), ["checkout", "cart"]);
        let concatenated: Vec<u8> = split.batches.iter().flat_map(|b| b.payload.iter().copied()).collect();
        assert_eq!(concatenated, two_bytes.to_vec(), "slices of the request, nothing re-encoded");
        // The same batches as the decoding path would cut.
        assert_eq!(split, check_and_split(two, 900_000, records::drop_malformed_spans));

        // A malformed span: cut from the decoded request.
        let mut bad = request;
        bad.resource_spans[1].scope_spans[0].spans[0].span_id = vec![1; 3];
        let split = check_and_split_bytes(&bytes, bad, 900_000, records::drop_malformed_spans);
        assert_eq!((split.rejected, split.rejection.as_str()), (1, "span_id must be 8 bytes, got 3"));
        assert_eq!(split.batches.iter().map(|b| b.records).sum::<u64>(), 1);
    }

    #[test]
    fn a_metric_over_the_budget_is_cut_along_its_data_points() {
        use opentelemetry_proto::tonic::metrics::v1::{Gauge, NumberDataPoint, Sum};
        let point = |i: u64, note: &str| NumberDataPoint {
            time_unix_nano: i,
            attributes: vec![KeyValue { key: "note".into(), value: string(note), ..Default::default() }],
            ..Default::default()
        };
        let metric = |name: &str, data| Metric {
            name: name.into(),
            unit: "ms".into(),
            data: Some(data),
            ..Default::default()
        };
        let mut huge: Vec<NumberDataPoint> = (0..2_000).map(|i| point(i, "n")).collect();
        huge[7] = point(7, &"too big alone ".repeat(100));
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: service("api"),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        metric(
                            "small",
                            Data::Gauge(Gauge { data_points: (0..3).map(|i| point(i, "s")).collect() }),
                        ),
                        metric(
                            "huge",
                            Data::Sum(Sum {
                                data_points: huge,
                                aggregation_temporality: 2,
                                is_monotonic: true,
                            }),
                        ),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let bytes = Bytes::from(request.encode_to_vec());
        let split = check_and_split_bytes(&bytes, request, 1_000, records::drop_malformed_points);
        assert_eq!(split.rejected, 1, "only the point too large on its own");
        assert!(split.rejection.starts_with("1 data point(s) dropped"), "{}", split.rejection);
        assert!(split.batches.len() > 10);
        assert!(split.batches.iter().all(|b| b.payload.len() <= 1_000));
        assert_eq!(split.batches.iter().map(|b| b.records).sum::<u64>(), 2_002);
        let mut times = Vec::new();
        for batch in &split.batches {
            let decoded = ExportMetricsServiceRequest::decode(batch.payload.as_ref()).unwrap();
            assert_eq!(telemetry_lake_common::otlp::signal::count_data_points(&decoded), batch.records);
            for metric in
                decoded.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics)
            {
                match &metric.data {
                    Some(Data::Sum(sum)) => {
                        assert_eq!((metric.name.as_str(), metric.unit.as_str()), ("huge", "ms"));
                        assert_eq!(
                            (sum.aggregation_temporality, sum.is_monotonic),
                            (2, true),
                            "every piece keeps its type"
                        );
                        times.extend(sum.data_points.iter().map(|p| p.time_unix_nano));
                    }
                    Some(Data::Gauge(gauge)) => assert_eq!(gauge.data_points.len(), 3),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(times, (0..2_000).filter(|&i| i != 7).collect::<Vec<u64>>(), "every point once, in order");
    }
}
