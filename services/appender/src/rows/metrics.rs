//! OTLP metrics -> Arrow rows of one of the five metrics tables (`proto/metric_rows.proto`).
//!
//! In: an `ExportMetricsServiceRequest` (and, in Kafka mode, its partition and offset) and the
//! table wanted. Out: a batch of that table's Arrow schema, one row per data point of the
//! metrics of its type (gauge, sum, histogram, exponential histogram, summary), and how many of
//! those points were rejected: only points with an exemplar failing the id rule of
//! `telemetry_lake_common::otlp::records` (the check the ingester and the export path apply
//! before anything is staged). A request's points land in up to five tables, one call each.
//!
//! Rows are serialized with serde_arrow: [`PointRow`] writes the columns every metrics table
//! shares, then its type's own ([`PointValues`]), by name; a test checks every column is filled.

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::KeyValue,
    metrics::v1::{
        AggregationTemporality, Exemplar, ExponentialHistogramDataPoint, HistogramDataPoint, Metric,
        NumberDataPoint, SummaryDataPoint, exemplar, metric::Data, number_data_point,
    },
};
use serde::{Serialize, Serializer, ser::SerializeStruct};
use telemetry_lake_common::otlp::records;
use telemetry_lake_proto::RowTable;

use super::{
    AttributeMap, KafkaPosition, Rows, hex_id, nanos_to_micros, non_empty, resource_columns, serde_batch,
};

/// The resource and scope a point belongs to, shared by the rows of a scope.
struct Context<'a> {
    service_name: Option<&'a str>,
    resource_attributes: &'a AttributeMap<'a>,
    resource_schema_url: Option<&'a str>,
    scope_name: Option<&'a str>,
    scope_version: Option<&'a str>,
    scope_attributes: &'a AttributeMap<'a>,
    scope_schema_url: Option<&'a str>,
}

/// One data point's row: the shared columns, then the type's own values.
struct PointRow<'a, V> {
    context: &'a Context<'a>,
    metric: &'a Metric,
    timestamp: i64,
    start_timestamp: Option<i64>,
    attributes: AttributeMap<'a>,
    flags: i32,
    exemplars: Vec<ExemplarRow<'a>>,
    values: V,
    source: Option<KafkaPosition>,
}

/// The columns of one metric type.
trait PointValues {
    fn write<S: SerializeStruct>(&self, row: &mut S) -> Result<(), S::Error>;
}

impl<V: PointValues> Serialize for PointRow<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self.context;
        let mut row = serializer.serialize_struct("PointRow", 0)?;
        row.serialize_field("timestamp", &self.timestamp)?;
        row.serialize_field("start_timestamp", &self.start_timestamp)?;
        row.serialize_field("service_name", &c.service_name)?;
        row.serialize_field("metric_name", &non_empty(&self.metric.name))?;
        row.serialize_field("metric_description", &non_empty(&self.metric.description))?;
        row.serialize_field("metric_unit", &non_empty(&self.metric.unit))?;
        row.serialize_field("resource_attributes", c.resource_attributes)?;
        row.serialize_field("resource_schema_url", &c.resource_schema_url)?;
        row.serialize_field("scope_name", &c.scope_name)?;
        row.serialize_field("scope_version", &c.scope_version)?;
        row.serialize_field("scope_attributes", c.scope_attributes)?;
        row.serialize_field("scope_schema_url", &c.scope_schema_url)?;
        row.serialize_field("attributes", &self.attributes)?;
        row.serialize_field("flags", &self.flags)?;
        row.serialize_field("exemplars", &self.exemplars)?;
        self.values.write(&mut row)?;
        row.serialize_field("kafka_partition", &self.source.map(|s| s.partition))?;
        row.serialize_field("kafka_offset", &self.source.map(|s| s.offset))?;
        row.end()
    }
}

#[derive(Serialize)]
struct ExemplarRow<'a> {
    timestamp: Option<i64>,
    value: Option<f64>,
    trace_id: Option<String>,
    span_id: Option<String>,
    filtered_attributes: AttributeMap<'a>,
}

struct GaugeValues {
    value: Option<f64>,
}

impl PointValues for GaugeValues {
    fn write<S: SerializeStruct>(&self, row: &mut S) -> Result<(), S::Error> {
        row.serialize_field("value", &self.value)
    }
}

struct SumValues {
    value: Option<f64>,
    aggregation_temporality: Option<&'static str>,
    is_monotonic: bool,
}

impl PointValues for SumValues {
    fn write<S: SerializeStruct>(&self, row: &mut S) -> Result<(), S::Error> {
        row.serialize_field("value", &self.value)?;
        row.serialize_field("aggregation_temporality", &self.aggregation_temporality)?;
        row.serialize_field("is_monotonic", &Some(self.is_monotonic))
    }
}

struct HistogramValues<'a> {
    count: i64,
    sum: Option<f64>,
    bucket_counts: Vec<i64>,
    explicit_bounds: &'a [f64],
    min: Option<f64>,
    max: Option<f64>,
    aggregation_temporality: Option<&'static str>,
}

impl PointValues for HistogramValues<'_> {
    fn write<S: SerializeStruct>(&self, row: &mut S) -> Result<(), S::Error> {
        row.serialize_field("count", &self.count)?;
        row.serialize_field("sum", &self.sum)?;
        row.serialize_field("bucket_counts", &self.bucket_counts)?;
        row.serialize_field("explicit_bounds", self.explicit_bounds)?;
        row.serialize_field("min", &self.min)?;
        row.serialize_field("max", &self.max)?;
        row.serialize_field("aggregation_temporality", &self.aggregation_temporality)
    }
}

struct ExponentialHistogramValues {
    count: i64,
    sum: Option<f64>,
    scale: i32,
    zero_count: i64,
    positive_offset: Option<i32>,
    positive_bucket_counts: Vec<i64>,
    negative_offset: Option<i32>,
    negative_bucket_counts: Vec<i64>,
    min: Option<f64>,
    max: Option<f64>,
    aggregation_temporality: Option<&'static str>,
}

impl PointValues for ExponentialHistogramValues {
    fn write<S: SerializeStruct>(&self, row: &mut S) -> Result<(), S::Error> {
        row.serialize_field("count", &self.count)?;
        row.serialize_field("sum", &self.sum)?;
        row.serialize_field("scale", &self.scale)?;
        row.serialize_field("zero_count", &self.zero_count)?;
        row.serialize_field("positive_offset", &self.positive_offset)?;
        row.serialize_field("positive_bucket_counts", &self.positive_bucket_counts)?;
        row.serialize_field("negative_offset", &self.negative_offset)?;
        row.serialize_field("negative_bucket_counts", &self.negative_bucket_counts)?;
        row.serialize_field("min", &self.min)?;
        row.serialize_field("max", &self.max)?;
        row.serialize_field("aggregation_temporality", &self.aggregation_temporality)
    }
}

#[derive(Serialize)]
struct QuantileRow {
    quantile: f64,
    value: f64,
}

struct SummaryValues {
    count: i64,
    sum: f64,
    quantile_values: Vec<QuantileRow>,
}

impl PointValues for SummaryValues {
    fn write<S: SerializeStruct>(&self, row: &mut S) -> Result<(), S::Error> {
        row.serialize_field("count", &self.count)?;
        row.serialize_field("sum", &self.sum)?;
        row.serialize_field("quantile_values", &self.quantile_values)
    }
}

fn temporality(value: i32) -> Option<&'static str> {
    Some(match AggregationTemporality::try_from(value).ok()? {
        AggregationTemporality::Unspecified => "Unspecified",
        AggregationTemporality::Delta => "Delta",
        AggregationTemporality::Cumulative => "Cumulative",
    })
}

fn number(value: Option<&number_data_point::Value>) -> Option<f64> {
    match value? {
        number_data_point::Value::AsDouble(d) => Some(*d),
        number_data_point::Value::AsInt(i) => Some(*i as f64),
    }
}

fn counts(counts: &[u64]) -> Vec<i64> {
    counts.iter().map(|c| (*c).min(i64::MAX as u64) as i64).collect()
}

fn long(count: u64) -> i64 {
    count.min(i64::MAX as u64) as i64
}

/// The exemplars of a point; `Err` with the id rule's reason when one breaks it.
fn exemplars(exemplars: &[Exemplar]) -> Result<Vec<ExemplarRow<'_>>, String> {
    exemplars
        .iter()
        .map(|e| {
            records::check_exemplar(e)?;
            Ok(ExemplarRow {
                timestamp: (e.time_unix_nano != 0).then(|| nanos_to_micros(e.time_unix_nano)),
                value: match e.value {
                    Some(exemplar::Value::AsDouble(d)) => Some(d),
                    Some(exemplar::Value::AsInt(i)) => Some(i as f64),
                    None => None,
                },
                trace_id: hex_id(&e.trace_id),
                span_id: hex_id(&e.span_id),
                filtered_attributes: AttributeMap::of(&e.filtered_attributes),
            })
        })
        .collect()
}

/// Rows being gathered for one table.
struct Gathered<'a, V> {
    received_at_micros: i64,
    source: Option<KafkaPosition>,
    rows: Vec<PointRow<'a, V>>,
    rejected: u64,
    rejection: String,
}

/// The shared part of a data point, as its fields are named in every point type.
struct Point<'a> {
    attributes: &'a [KeyValue],
    start_time_unix_nano: u64,
    time_unix_nano: u64,
    flags: u32,
    exemplars: &'a [Exemplar],
}

/// The point types' shared part.
trait SharedFields {
    fn shared(&self) -> Point<'_>;
}

macro_rules! shared_fields {
    ($($point:ty),*) => {$(
        impl SharedFields for $point {
            fn shared(&self) -> Point<'_> {
                Point {
                    attributes: &self.attributes,
                    start_time_unix_nano: self.start_time_unix_nano,
                    time_unix_nano: self.time_unix_nano,
                    flags: self.flags,
                    exemplars: &self.exemplars,
                }
            }
        }
    )*};
}

shared_fields!(NumberDataPoint, HistogramDataPoint, ExponentialHistogramDataPoint);

impl SharedFields for SummaryDataPoint {
    fn shared(&self) -> Point<'_> {
        Point {
            attributes: &self.attributes,
            start_time_unix_nano: self.start_time_unix_nano,
            time_unix_nano: self.time_unix_nano,
            flags: self.flags,
            exemplars: &[],
        }
    }
}

impl<'a, V> Gathered<'a, V> {
    fn new(received_at_micros: i64, source: Option<KafkaPosition>) -> Self {
        Self { received_at_micros, source, rows: Vec::new(), rejected: 0, rejection: String::new() }
    }

    fn push(
        &mut self,
        context: &'a Context<'a>,
        metric: &'a Metric,
        point: Point<'a>,
        values: impl FnOnce() -> V,
    ) {
        let exemplars = match exemplars(point.exemplars) {
            Ok(exemplars) => exemplars,
            Err(reason) => {
                if self.rejected == 0 {
                    self.rejection = reason;
                }
                self.rejected += 1;
                return;
            }
        };
        let attributes = AttributeMap::of(point.attributes);
        let time = point.time_unix_nano;
        self.rows.push(PointRow {
            context,
            metric,
            timestamp: if time != 0 { nanos_to_micros(time) } else { self.received_at_micros },
            start_timestamp: (point.start_time_unix_nano != 0)
                .then(|| nanos_to_micros(point.start_time_unix_nano)),
            attributes,
            flags: point.flags.min(i32::MAX as u32) as i32,
            exemplars,
            values: values(),
            source: self.source,
        });
    }
}

impl<V: PointValues> Gathered<'_, V> {
    fn finish(self, table: RowTable) -> Result<Rows, String> {
        Ok(Rows {
            batch: serde_batch(table, &self.rows)?,
            rejected: self.rejected,
            rejection: self.rejection,
        })
    }
}

/// Converts the points of `table`'s metric type in `request`. `received_at_micros` stands in
/// for points without a time. `table` must be one of [`RowTable::METRICS`].
pub fn to_rows(
    request: &ExportMetricsServiceRequest,
    table: RowTable,
    source: Option<KafkaPosition>,
    received_at_micros: i64,
) -> Result<Rows, String> {
    let resources: Vec<_> =
        request.resource_metrics.iter().map(|r| resource_columns(r.resource.as_ref())).collect();
    let scopes: Vec<AttributeMap<'_>> = request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .map(|s| AttributeMap::of(s.scope.as_ref().map(|s| s.attributes.as_slice()).unwrap_or_default()))
        .collect();
    let mut contexts = Vec::with_capacity(scopes.len());
    let mut scope_index = 0;
    for (resource_metrics, (service_name, resource_attributes)) in
        request.resource_metrics.iter().zip(&resources)
    {
        for scope_metrics in &resource_metrics.scope_metrics {
            let scope = scope_metrics.scope.as_ref();
            contexts.push(Context {
                service_name: service_name.as_deref(),
                resource_attributes,
                resource_schema_url: non_empty(&resource_metrics.schema_url),
                scope_name: scope.and_then(|s| non_empty(&s.name)),
                scope_version: scope.and_then(|s| non_empty(&s.version)),
                scope_attributes: &scopes[scope_index],
                scope_schema_url: non_empty(&scope_metrics.schema_url),
            });
            scope_index += 1;
        }
    }
    let metrics = request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .zip(&contexts)
        .flat_map(|(scope, context)| scope.metrics.iter().map(move |metric| (context, metric)));
    match table {
        RowTable::MetricsGauge => {
            let mut out = Gathered::new(received_at_micros, source);
            for (context, metric) in metrics {
                let Some(Data::Gauge(gauge)) = &metric.data else { continue };
                for p in &gauge.data_points {
                    out.push(context, metric, p.shared(), || GaugeValues { value: number(p.value.as_ref()) });
                }
            }
            out.finish(table)
        }
        RowTable::MetricsSum => {
            let mut out = Gathered::new(received_at_micros, source);
            for (context, metric) in metrics {
                let Some(Data::Sum(sum)) = &metric.data else { continue };
                for p in &sum.data_points {
                    out.push(context, metric, p.shared(), || SumValues {
                        value: number(p.value.as_ref()),
                        aggregation_temporality: temporality(sum.aggregation_temporality),
                        is_monotonic: sum.is_monotonic,
                    });
                }
            }
            out.finish(table)
        }
        RowTable::MetricsHistogram => {
            let mut out = Gathered::new(received_at_micros, source);
            for (context, metric) in metrics {
                let Some(Data::Histogram(histogram)) = &metric.data else { continue };
                for p in &histogram.data_points {
                    out.push(context, metric, p.shared(), || HistogramValues {
                        count: long(p.count),
                        sum: p.sum,
                        bucket_counts: counts(&p.bucket_counts),
                        explicit_bounds: &p.explicit_bounds,
                        min: p.min,
                        max: p.max,
                        aggregation_temporality: temporality(histogram.aggregation_temporality),
                    });
                }
            }
            out.finish(table)
        }
        RowTable::MetricsExponentialHistogram => {
            let mut out = Gathered::new(received_at_micros, source);
            for (context, metric) in metrics {
                let Some(Data::ExponentialHistogram(histogram)) = &metric.data else { continue };
                for p in &histogram.data_points {
                    out.push(context, metric, p.shared(), || ExponentialHistogramValues {
                        count: long(p.count),
                        sum: p.sum,
                        scale: p.scale,
                        zero_count: long(p.zero_count),
                        positive_offset: p.positive.as_ref().map(|b| b.offset),
                        positive_bucket_counts: p
                            .positive
                            .as_ref()
                            .map(|b| counts(&b.bucket_counts))
                            .unwrap_or_default(),
                        negative_offset: p.negative.as_ref().map(|b| b.offset),
                        negative_bucket_counts: p
                            .negative
                            .as_ref()
                            .map(|b| counts(&b.bucket_counts))
                            .unwrap_or_default(),
                        min: p.min,
                        max: p.max,
                        aggregation_temporality: temporality(histogram.aggregation_temporality),
                    });
                }
            }
            out.finish(table)
        }
        RowTable::MetricsSummary => {
            let mut out = Gathered::new(received_at_micros, source);
            for (context, metric) in metrics {
                let Some(Data::Summary(summary)) = &metric.data else { continue };
                for p in &summary.data_points {
                    out.push(context, metric, p.shared(), || SummaryValues {
                        count: long(p.count),
                        sum: p.sum,
                        quantile_values: p
                            .quantile_values
                            .iter()
                            .map(|q| QuantileRow { quantile: q.quantile, value: q.value })
                            .collect(),
                    });
                }
            }
            out.finish(table)
        }
        RowTable::Logs | RowTable::Traces => Err(format!("{table:?} is not a metrics table")),
    }
}

/// The metrics tables `request` has points for.
pub fn tables_of(request: &ExportMetricsServiceRequest) -> Vec<RowTable> {
    let mut tables = Vec::new();
    for metric in request.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics) {
        let table = match &metric.data {
            Some(Data::Gauge(_)) => RowTable::MetricsGauge,
            Some(Data::Sum(_)) => RowTable::MetricsSum,
            Some(Data::Histogram(_)) => RowTable::MetricsHistogram,
            Some(Data::ExponentialHistogram(_)) => RowTable::MetricsExponentialHistogram,
            Some(Data::Summary(_)) => RowTable::MetricsSummary,
            None => continue,
        };
        if !tables.contains(&table) {
            tables.push(table);
        }
    }
    tables
}

#[cfg(test)]
mod tests {
    use arrow_array::{Array, Float64Array, ListArray, StructArray, cast::AsArray};
    use opentelemetry_proto::tonic::{
        common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
        metrics::v1::{
            ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
            NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
            exponential_histogram_data_point::Buckets, summary_data_point::ValueAtQuantile,
        },
        resource::v1::Resource,
    };

    use super::*;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(Value::StringValue(value.into())) }),
            ..Default::default()
        }
    }

    const T0: u64 = 1_700_000_000_000_000_000;

    fn exemplar(span_id: Vec<u8>) -> Exemplar {
        Exemplar {
            filtered_attributes: vec![kv("user", "ana")],
            time_unix_nano: T0 + 5_000,
            span_id,
            trace_id: vec![3; 16],
            value: Some(exemplar::Value::AsInt(7)),
        }
    }

    fn number(value: number_data_point::Value, exemplars: Vec<Exemplar>) -> NumberDataPoint {
        NumberDataPoint {
            attributes: vec![kv("route", "/cart")],
            start_time_unix_nano: T0 - 1_000_000,
            time_unix_nano: T0,
            exemplars,
            flags: 1,
            value: Some(value),
        }
    }

    fn metric(name: &str, data: Data) -> Metric {
        Metric {
            name: name.into(),
            description: "what".into(),
            unit: "ms".into(),
            data: Some(data),
            ..Default::default()
        }
    }

    /// One metric of each type, and a gauge point with a malformed exemplar.
    fn request() -> ExportMetricsServiceRequest {
        let histogram = HistogramDataPoint {
            attributes: vec![kv("route", "/cart")],
            start_time_unix_nano: T0 - 1_000_000,
            time_unix_nano: T0,
            count: 6,
            sum: Some(21.5),
            bucket_counts: vec![1, 2, 3],
            explicit_bounds: vec![1.0, 10.0],
            exemplars: vec![exemplar(vec![4; 8])],
            flags: 0,
            min: Some(0.5),
            max: Some(12.0),
        };
        let exponential = ExponentialHistogramDataPoint {
            attributes: vec![kv("route", "/cart")],
            start_time_unix_nano: T0 - 1_000_000,
            time_unix_nano: T0,
            count: 5,
            sum: Some(9.0),
            scale: 3,
            zero_count: 1,
            positive: Some(Buckets { offset: -2, bucket_counts: vec![1, 2] }),
            negative: Some(Buckets { offset: 1, bucket_counts: vec![1] }),
            flags: 0,
            exemplars: vec![exemplar(vec![4; 8])],
            min: Some(-1.0),
            max: Some(4.0),
            zero_threshold: 0.0,
        };
        let summary = SummaryDataPoint {
            attributes: vec![kv("route", "/cart")],
            start_time_unix_nano: T0 - 1_000_000,
            time_unix_nano: T0,
            count: 4,
            sum: 10.0,
            quantile_values: vec![
                ValueAtQuantile { quantile: 0.5, value: 2.0 },
                ValueAtQuantile { quantile: 0.99, value: 4.0 },
            ],
            flags: 0,
        };
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "checkout")],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "meter".into(),
                        version: "1.0".into(),
                        attributes: vec![kv("lib", "sdk")],
                        dropped_attributes_count: 0,
                    }),
                    metrics: vec![
                        metric(
                            "queue.depth",
                            Data::Gauge(Gauge {
                                data_points: vec![
                                    number(number_data_point::Value::AsInt(42), vec![exemplar(vec![4; 8])]),
                                    number(
                                        number_data_point::Value::AsDouble(1.0),
                                        vec![exemplar(vec![4; 3])],
                                    ),
                                ],
                            }),
                        ),
                        metric(
                            "requests",
                            Data::Sum(Sum {
                                data_points: vec![number(
                                    number_data_point::Value::AsDouble(3.5),
                                    vec![exemplar(vec![4; 8])],
                                )],
                                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                                is_monotonic: true,
                            }),
                        ),
                        metric(
                            "latency",
                            Data::Histogram(Histogram {
                                data_points: vec![histogram],
                                aggregation_temporality: AggregationTemporality::Delta as i32,
                            }),
                        ),
                        metric(
                            "latency.exp",
                            Data::ExponentialHistogram(ExponentialHistogram {
                                data_points: vec![exponential],
                                aggregation_temporality: AggregationTemporality::Delta as i32,
                            }),
                        ),
                        metric("rpc", Data::Summary(Summary { data_points: vec![summary] })),
                    ],
                    schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
                }],
                schema_url: "https://opentelemetry.io/schemas/1.29.0".into(),
            }],
        }
    }

    #[test]
    fn every_metric_type_fills_every_column_of_its_table() {
        let request = request();
        assert_eq!(tables_of(&request), RowTable::METRICS.to_vec());
        let source = Some(KafkaPosition { partition: 1, offset: 2 });
        for table in RowTable::METRICS {
            let rows = to_rows(&request, table, source, 0).unwrap();
            let b = &rows.batch;
            assert_eq!(b.schema(), table.arrow_schema(), "{table:?}");
            let expected = if table == RowTable::MetricsGauge { (1, 1) } else { (1, 0) };
            assert_eq!((b.num_rows(), rows.rejected), expected, "{table:?}");
            for (i, field) in b.schema().fields().iter().enumerate() {
                // A summary has no exemplars: an empty list, not null.
                assert!(b.column(i).is_valid(0), "{table:?}: column {} is null", field.name());
            }
            let s = |name: &str| b.column_by_name(name).unwrap().as_string::<i32>().value(0).to_string();
            assert_eq!(
                (s("service_name"), s("metric_unit"), s("scope_name")),
                ("checkout".into(), "ms".into(), "meter".into())
            );
            assert_eq!(s("scope_schema_url"), "https://opentelemetry.io/schemas/1.30.0");
        }
        let gauge = to_rows(&request, RowTable::MetricsGauge, None, 0).unwrap();
        assert!(gauge.rejection.contains("exemplars.span_id must be 8 bytes"), "{}", gauge.rejection);
        let value = gauge
            .batch
            .column_by_name("value")
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .value(0);
        assert_eq!(value, 42.0, "as_int becomes a double");
        let exemplars = gauge
            .batch
            .column_by_name("exemplars")
            .unwrap()
            .as_any()
            .downcast_ref::<ListArray>()
            .unwrap()
            .value(0);
        let exemplars = exemplars.as_any().downcast_ref::<StructArray>().unwrap();
        assert_eq!(
            exemplars.column_by_name("trace_id").unwrap().as_string::<i32>().value(0),
            "03".repeat(16)
        );
        assert_eq!(
            exemplars
                .column_by_name("value")
                .unwrap()
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .value(0),
            7.0
        );

        let sum = to_rows(&request, RowTable::MetricsSum, None, 0).unwrap().batch;
        assert_eq!(
            sum.column_by_name("aggregation_temporality").unwrap().as_string::<i32>().value(0),
            "Cumulative"
        );
        assert!(sum.column_by_name("is_monotonic").unwrap().as_boolean().value(0));
        let histogram = to_rows(&request, RowTable::MetricsHistogram, None, 0).unwrap().batch;
        let buckets = histogram
            .column_by_name("bucket_counts")
            .unwrap()
            .as_any()
            .downcast_ref::<ListArray>()
            .unwrap()
            .value(0);
        assert_eq!(buckets.as_primitive::<arrow_array::types::Int64Type>().values().to_vec(), vec![1, 2, 3]);
        let exponential = to_rows(&request, RowTable::MetricsExponentialHistogram, None, 0).unwrap().batch;
        let offset = exponential
            .column_by_name("positive_offset")
            .unwrap()
            .as_primitive::<arrow_array::types::Int32Type>()
            .value(0);
        assert_eq!(offset, -2);
        let summary = to_rows(&request, RowTable::MetricsSummary, None, 0).unwrap().batch;
        let quantiles = summary
            .column_by_name("quantile_values")
            .unwrap()
            .as_any()
            .downcast_ref::<ListArray>()
            .unwrap()
            .value(0);
        let quantiles = quantiles.as_any().downcast_ref::<StructArray>().unwrap();
        assert_eq!(quantiles.len(), 2);
        assert_eq!(
            quantiles
                .column_by_name("value")
                .unwrap()
                .as_primitive::<arrow_array::types::Float64Type>()
                .value(1),
            4.0
        );
    }

    #[test]
    fn logs_and_traces_are_not_metrics_tables() {
        assert!(to_rows(&request(), RowTable::Traces, None, 0).is_err());
    }
}
