//! The lake's rows, each defined once in `proto/` (`LogRow`, `SpanRow` and one message per
//! metric type), and every schema derived from them.
//!
//! [`RowTable`] names a table; [`RowTable::columns`] reads its message from the compiled
//! descriptor set, and the DuckDB DDL ([`RowTable::duckdb_create_table`]), the Arrow schema
//! ([`RowTable::arrow_schema`]) and the Iceberg schema ([`RowTable::iceberg_schema`]) are all
//! built from that one list, so they cannot disagree. Top-level field ids are the proto field
//! numbers (1, 2, … in order); the ids of map keys and values, list elements and struct fields
//! follow the last top-level id in the order Iceberg's `create_table` assigns fresh ids: a
//! struct's own fields first, then each field's type in turn (a list: its element, then the
//! element's type; a map: its key, then its value).

use std::{collections::HashMap, sync::Arc, sync::LazyLock};

use arrow_schema::{DataType, Field, Fields, TimeUnit};
use iceberg::spec::{
    ListType, MapType, NestedField, NestedFieldRef, PrimitiveType, Schema as IcebergSchema, StructType, Type,
};
use prost::Message;
use prost_types::{
    DescriptorProto, FileDescriptorSet,
    field_descriptor_proto::{Label, Type as ProtoType},
};

/// Generated `telemetry_lake.row.v1` types: [`row::v1::LogRow`], [`row::v1::SpanRow`], …
pub mod row {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/telemetry_lake.row.v1.rs"));
    }
}

const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/row_descriptor.bin"));
const PACKAGE: &str = "telemetry_lake.row.v1";
/// Name of the column every table is partitioned on, by day.
pub const PARTITION_SOURCE_COLUMN: &str = "timestamp";
/// Time zone Iceberg's Arrow mapping uses for timestamptz.
pub const UTC: &str = "+00:00";
/// Arrow metadata key carrying Iceberg field ids into Parquet.
pub const FIELD_ID_KEY: &str = "PARQUET:field_id";
/// Name of a map's entries field, as Iceberg's Arrow mapping spells it.
pub const MAP_ENTRIES: &str = "key_value";
/// Name of a list's element field, as Iceberg's Arrow mapping spells it.
pub const LIST_ELEMENT: &str = "element";

/// A table of the lake, by the row it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RowTable {
    Logs,
    Traces,
    MetricsGauge,
    MetricsSum,
    MetricsHistogram,
    MetricsExponentialHistogram,
    MetricsSummary,
}

impl RowTable {
    pub const ALL: [Self; 7] = [
        Self::Logs,
        Self::Traces,
        Self::MetricsGauge,
        Self::MetricsSum,
        Self::MetricsHistogram,
        Self::MetricsExponentialHistogram,
        Self::MetricsSummary,
    ];
    /// The tables of metric data points, one per metric type.
    pub const METRICS: [Self; 5] = [
        Self::MetricsGauge,
        Self::MetricsSum,
        Self::MetricsHistogram,
        Self::MetricsExponentialHistogram,
        Self::MetricsSummary,
    ];

    /// The row message in `proto/`.
    pub const fn message(self) -> &'static str {
        match self {
            Self::Logs => "LogRow",
            Self::Traces => "SpanRow",
            Self::MetricsGauge => "GaugeRow",
            Self::MetricsSum => "SumRow",
            Self::MetricsHistogram => "HistogramRow",
            Self::MetricsExponentialHistogram => "ExponentialHistogramRow",
            Self::MetricsSummary => "SummaryRow",
        }
    }

    /// What the table is called by default; a metrics table's name is
    /// `iceberg.metrics_table_prefix` followed by [`RowTable::metric_type`].
    pub const fn default_name(self) -> &'static str {
        match self {
            Self::Logs => "logs",
            Self::Traces => "traces",
            Self::MetricsGauge => "metrics_gauge",
            Self::MetricsSum => "metrics_sum",
            Self::MetricsHistogram => "metrics_histogram",
            Self::MetricsExponentialHistogram => "metrics_exponential_histogram",
            Self::MetricsSummary => "metrics_summary",
        }
    }

    /// `gauge`, `sum`, `histogram`, `exponential_histogram`, `summary`; `None` for logs and
    /// traces.
    pub const fn metric_type(self) -> Option<&'static str> {
        match self {
            Self::Logs | Self::Traces => None,
            Self::MetricsGauge => Some("gauge"),
            Self::MetricsSum => Some("sum"),
            Self::MetricsHistogram => Some("histogram"),
            Self::MetricsExponentialHistogram => Some("exponential_histogram"),
            Self::MetricsSummary => Some("summary"),
        }
    }

    /// Columns each data file is ordered by (ascending, nulls first), which the table declares
    /// as its sort order.
    pub const fn sort_columns(self) -> &'static [&'static str] {
        match self {
            Self::Logs => &["service_name", "timestamp"],
            Self::Traces => &["service_name", "span_name", "timestamp"],
            _ => &["service_name", "metric_name", "timestamp"],
        }
    }

    /// Columns whose values rarely repeat within a file: written without a Parquet dictionary
    /// and without statistics (dotted Parquet paths).
    pub const fn high_cardinality_columns(self) -> &'static [&'static str] {
        match self {
            Self::Logs => &["body", "log_attributes.key_value.value"],
            Self::Traces => &["trace_id", "span_id", "parent_span_id", "span_attributes.key_value.value"],
            _ => &[],
        }
    }

    /// The table's columns in order, read from its row message.
    pub fn columns(self) -> &'static [Column] {
        static COLUMNS: LazyLock<HashMap<RowTable, Vec<Column>>> = LazyLock::new(|| {
            let set = FileDescriptorSet::decode(DESCRIPTOR_SET).expect("the row descriptor set decodes");
            RowTable::ALL
                .into_iter()
                .map(|table| {
                    let columns = columns_from_descriptor(&set, table.message())
                        .unwrap_or_else(|e| panic!("proto/ holds no valid {}: {e}", table.message()));
                    (table, columns)
                })
                .collect()
        });
        &COLUMNS[&self]
    }

    /// Position of a column by name.
    pub fn column_index(self, name: &str) -> Option<usize> {
        self.columns().iter().position(|c| c.name == name)
    }

    /// `CREATE TABLE IF NOT EXISTS` for a DuckDB table of these rows. Its columns are all
    /// nullable: the Iceberg writer enforces required columns when it casts.
    pub fn duckdb_create_table(self, table: &str) -> String {
        let body: Vec<String> = self
            .columns()
            .iter()
            .map(|c| format!("\"{}\" {}", c.name, duckdb_type(&c.column_type)))
            .collect();
        format!("CREATE TABLE IF NOT EXISTS \"{table}\" ({})", body.join(", "))
    }

    /// The Arrow schema of a row batch, identical to Iceberg's own Arrow mapping of
    /// [`RowTable::iceberg_schema`] (field ids in `PARQUET:field_id`, `+00:00`, `key_value`
    /// map entries, `element` list items).
    pub fn arrow_schema(self) -> arrow_schema::SchemaRef {
        static SCHEMAS: LazyLock<HashMap<RowTable, arrow_schema::SchemaRef>> = LazyLock::new(|| {
            RowTable::ALL
                .into_iter()
                .map(|table| {
                    let fields: Vec<Field> = table.columns().iter().map(arrow_field).collect();
                    (table, Arc::new(arrow_schema::Schema::new(fields)))
                })
                .collect()
        });
        SCHEMAS[&self].clone()
    }

    /// The Iceberg schema of the table, with the row's field ids.
    pub fn iceberg_schema(self) -> IcebergSchema {
        IcebergSchema::builder()
            .with_schema_id(0)
            .with_fields(self.columns().iter().map(iceberg_field))
            .build()
            .expect("the row definition is a valid Iceberg schema")
    }
}

/// The type of a column, in the row's own terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    /// Microseconds since the epoch, UTC.
    Timestamptz,
    Int,
    Long,
    Double,
    Boolean,
    String,
    /// map<string, string>; the ids of its key and value fields.
    StringMap {
        key_id: i32,
        value_id: i32,
    },
    /// A list of required elements; the id of its element field.
    List {
        element_id: i32,
        element: Box<ColumnType>,
    },
    /// A struct of these fields.
    Struct(Vec<Column>),
}

/// One column of a table (or one field of a struct column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub field_id: i32,
    pub column_type: ColumnType,
    pub nullable: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RowDefinitionError {
    #[error("row descriptor set has no message {0}")]
    MissingMessage(String),
    #[error("row field {field}: {reason}")]
    Field { field: String, reason: String },
}

/// The columns of `message`, with their Iceberg field ids.
fn columns_from_descriptor(
    set: &FileDescriptorSet,
    message: &str,
) -> Result<Vec<Column>, RowDefinitionError> {
    let messages: HashMap<String, &DescriptorProto> = set
        .file
        .iter()
        .flat_map(|f| f.message_type.iter().map(move |m| (format!(".{}.{}", f.package(), m.name()), m)))
        .collect();
    let full_name = format!(".{PACKAGE}.{message}");
    let row = messages.get(&full_name).ok_or_else(|| RowDefinitionError::MissingMessage(message.into()))?;
    let mut columns = fields_of(row, &full_name, &messages, 0)?;
    for (i, column) in columns.iter().enumerate() {
        if column.field_id != i as i32 + 1 {
            return Err(RowDefinitionError::Field {
                field: column.name.clone(),
                reason: format!(
                    "is field {}, but top-level fields must be numbered 1, 2, … in order",
                    column.field_id
                ),
            });
        }
    }
    let mut next_id = columns.len() as i32 + 1;
    for column in &mut columns {
        assign_nested_ids(&mut column.column_type, &mut next_id);
    }
    Ok(columns)
}

/// The fields of a message as columns: top-level ones (`depth` 0) keep their field numbers,
/// nested ones get their ids from [`assign_nested_ids`].
fn fields_of(
    message: &DescriptorProto,
    full_name: &str,
    messages: &HashMap<String, &DescriptorProto>,
    depth: usize,
) -> Result<Vec<Column>, RowDefinitionError> {
    let map_entries: HashMap<String, &DescriptorProto> = message
        .nested_type
        .iter()
        .filter(|n| n.options.as_ref().is_some_and(|o| o.map_entry()))
        .map(|n| (format!("{full_name}.{}", n.name()), n))
        .collect();
    let mut columns = Vec::with_capacity(message.field.len());
    for field in &message.field {
        let fail = |reason: &str| RowDefinitionError::Field {
            field: field.name().to_string(),
            reason: reason.into(),
        };
        let repeated = field.label() == Label::Repeated;
        let scalar = |t: ProtoType| -> Result<ColumnType, RowDefinitionError> {
            Ok(match t {
                ProtoType::Int32 => ColumnType::Int,
                ProtoType::Int64 => ColumnType::Long,
                ProtoType::Double => ColumnType::Double,
                ProtoType::Bool => ColumnType::Boolean,
                ProtoType::String => ColumnType::String,
                _ => return Err(fail("type has no column mapping")),
            })
        };
        let (column_type, nullable) = match field.r#type() {
            ProtoType::Message if repeated => {
                if let Some(entry) = map_entries.get(field.type_name()) {
                    if !entry.field.iter().all(|f| f.r#type() == ProtoType::String) {
                        return Err(fail("only map<string, string> is supported"));
                    }
                    (ColumnType::StringMap { key_id: 0, value_id: 0 }, true)
                } else {
                    let element = messages
                        .get(field.type_name())
                        .ok_or_else(|| fail("its message is not in the row package"))?;
                    if depth > 0 {
                        return Err(fail("lists inside lists are not supported"));
                    }
                    let fields = fields_of(element, field.type_name(), messages, depth + 1)?;
                    (ColumnType::List { element_id: 0, element: Box::new(ColumnType::Struct(fields)) }, true)
                }
            }
            ProtoType::Message if field.type_name() == ".google.protobuf.Timestamp" => {
                (ColumnType::Timestamptz, field.proto3_optional())
            }
            ProtoType::Message => return Err(fail("messages other than Timestamp must be repeated")),
            t if repeated => (ColumnType::List { element_id: 0, element: Box::new(scalar(t)?) }, true),
            t => (scalar(t)?, field.proto3_optional()),
        };
        columns.push(Column {
            name: field.name().to_string(),
            field_id: field.number(),
            column_type,
            nullable,
        });
    }
    Ok(columns)
}

/// Gives the fields nested in `column_type` their ids, from `next`, in create_table's order.
fn assign_nested_ids(column_type: &mut ColumnType, next: &mut i32) {
    match column_type {
        ColumnType::StringMap { key_id, value_id } => {
            *key_id = *next;
            *value_id = *next + 1;
            *next += 2;
        }
        ColumnType::List { element_id, element } => {
            *element_id = *next;
            *next += 1;
            assign_nested_ids(element, next);
        }
        ColumnType::Struct(fields) => {
            for field in fields.iter_mut() {
                field.field_id = *next;
                *next += 1;
            }
            for field in fields.iter_mut() {
                assign_nested_ids(&mut field.column_type, next);
            }
        }
        _ => {}
    }
}

fn duckdb_type(column_type: &ColumnType) -> String {
    match column_type {
        ColumnType::Timestamptz => "TIMESTAMPTZ".into(),
        ColumnType::Int => "INTEGER".into(),
        ColumnType::Long => "BIGINT".into(),
        ColumnType::Double => "DOUBLE".into(),
        ColumnType::Boolean => "BOOLEAN".into(),
        ColumnType::String => "VARCHAR".into(),
        ColumnType::StringMap { .. } => "MAP(VARCHAR, VARCHAR)".into(),
        ColumnType::List { element, .. } => format!("{}[]", duckdb_type(element)),
        ColumnType::Struct(fields) => {
            let fields: Vec<String> =
                fields.iter().map(|f| format!("\"{}\" {}", f.name, duckdb_type(&f.column_type))).collect();
            format!("STRUCT({})", fields.join(", "))
        }
    }
}

fn with_field_id(field: Field, id: i32) -> Field {
    field.with_metadata(HashMap::from([(FIELD_ID_KEY.to_string(), id.to_string())]))
}

fn arrow_field(column: &Column) -> Field {
    with_field_id(Field::new(&column.name, arrow_type(&column.column_type), column.nullable), column.field_id)
}

fn arrow_type(column_type: &ColumnType) -> DataType {
    match column_type {
        ColumnType::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
        ColumnType::Int => DataType::Int32,
        ColumnType::Long => DataType::Int64,
        ColumnType::Double => DataType::Float64,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::String => DataType::Utf8,
        ColumnType::StringMap { key_id, value_id } => {
            let entries = Fields::from(vec![
                with_field_id(Field::new("key", DataType::Utf8, false), *key_id),
                with_field_id(Field::new("value", DataType::Utf8, true), *value_id),
            ]);
            DataType::Map(Arc::new(Field::new(MAP_ENTRIES, DataType::Struct(entries), false)), false)
        }
        ColumnType::List { element_id, element } => DataType::List(Arc::new(with_field_id(
            Field::new(LIST_ELEMENT, arrow_type(element), false),
            *element_id,
        ))),
        ColumnType::Struct(fields) => DataType::Struct(fields.iter().map(arrow_field).collect()),
    }
}

fn iceberg_field(column: &Column) -> NestedFieldRef {
    Arc::new(NestedField::new(
        column.field_id,
        &column.name,
        iceberg_type(&column.column_type),
        !column.nullable,
    ))
}

fn iceberg_type(column_type: &ColumnType) -> Type {
    let primitive = |p| Type::Primitive(p);
    match column_type {
        ColumnType::Timestamptz => primitive(PrimitiveType::Timestamptz),
        ColumnType::Int => primitive(PrimitiveType::Int),
        ColumnType::Long => primitive(PrimitiveType::Long),
        ColumnType::Double => primitive(PrimitiveType::Double),
        ColumnType::Boolean => primitive(PrimitiveType::Boolean),
        ColumnType::String => primitive(PrimitiveType::String),
        ColumnType::StringMap { key_id, value_id } => Type::Map(MapType::new(
            NestedField::map_key_element(*key_id, primitive(PrimitiveType::String)).into(),
            NestedField::map_value_element(*value_id, primitive(PrimitiveType::String), false).into(),
        )),
        ColumnType::List { element_id, element } => Type::List(ListType::new(
            NestedField::list_element(*element_id, iceberg_type(element), true).into(),
        )),
        ColumnType::Struct(fields) => {
            Type::Struct(StructType::new(fields.iter().map(iceberg_field).collect()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT: [(&str, &str); 21] = [
        ("timestamp", "timestamptz"),
        ("observed_timestamp", "timestamptz"),
        ("severity_number", "int"),
        ("severity_text", "string"),
        ("body", "string"),
        ("trace_id", "string"),
        ("span_id", "string"),
        ("trace_flags", "int"),
        ("event_name", "string"),
        ("service_name", "string"),
        ("deployment_environment", "string"),
        ("resource_attributes", "map<string,string>"),
        ("scope_attributes", "map<string,string>"),
        ("log_attributes", "map<string,string>"),
        ("scope_name", "string"),
        ("scope_version", "string"),
        ("resource_schema_url", "string"),
        ("scope_schema_url", "string"),
        ("dropped_attributes_count", "int"),
        ("kafka_partition", "int"),
        ("kafka_offset", "long"),
    ];

    #[test]
    fn iceberg_schema_is_the_documented_table() {
        let schema = RowTable::Logs.iceberg_schema();
        let actual: Vec<(String, String)> =
            schema.as_struct().fields().iter().map(|f| (f.name.clone(), type_name(&f.field_type))).collect();
        let expected: Vec<(String, String)> =
            CONTRACT.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
        assert_eq!(actual, expected);
        let timestamp = schema.field_by_name("timestamp").unwrap();
        assert!(timestamp.required, "timestamp is the partition source and must be required");
        assert!(!schema.field_by_name("trace_id").unwrap().required);
    }

    #[test]
    fn field_ids_are_stable_and_follow_create_table_order() {
        let schema = RowTable::Logs.iceberg_schema();
        let top: Vec<i32> = schema.as_struct().fields().iter().map(|f| f.id).collect();
        assert_eq!(top, (1..=21).collect::<Vec<_>>());
        let Type::Map(m) = &schema.field_by_name("resource_attributes").unwrap().field_type.as_ref().clone()
        else {
            panic!("resource_attributes is a map")
        };
        assert_eq!((m.key_field.id, m.value_field.id), (22, 23));
        let Type::Map(m) = &schema.field_by_name("log_attributes").unwrap().field_type.as_ref().clone()
        else {
            panic!("log_attributes is a map")
        };
        assert_eq!((m.key_field.id, m.value_field.id), (26, 27));
        assert_eq!(schema.highest_field_id(), 27);
    }

    #[test]
    fn arrow_schema_equals_icebergs_own_mapping() {
        for table in RowTable::ALL {
            let from_iceberg = iceberg::arrow::schema_to_arrow_schema(&table.iceberg_schema()).unwrap();
            assert_eq!(table.arrow_schema().as_ref(), &from_iceberg, "{table:?}");
        }
    }

    #[test]
    fn duckdb_ddl_names_every_column_in_order_with_its_type() {
        let ddl = RowTable::Logs.duckdb_create_table("staged_rows");
        assert!(
            ddl.starts_with("CREATE TABLE IF NOT EXISTS \"staged_rows\" (\"timestamp\" TIMESTAMPTZ, "),
            "{ddl}"
        );
        let mut at = 0;
        for (name, ty) in CONTRACT {
            let duck = match ty {
                "timestamptz" => "TIMESTAMPTZ",
                "int" => "INTEGER",
                "long" => "BIGINT",
                "string" => "VARCHAR",
                _ => "MAP(VARCHAR, VARCHAR)",
            };
            let piece = format!("\"{name}\" {duck}");
            let found =
                ddl[at..].find(&piece).unwrap_or_else(|| panic!("{piece} missing or out of order in {ddl}"));
            at += found + piece.len();
        }
    }

    #[test]
    fn unsupported_row_fields_are_refused_with_the_field_name() {
        use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};
        let bad = FileDescriptorSet {
            file: vec![FileDescriptorProto {
                package: Some(PACKAGE.into()),
                message_type: vec![DescriptorProto {
                    name: Some("LogRow".into()),
                    field: vec![FieldDescriptorProto {
                        name: Some("ratio".into()),
                        number: Some(1),
                        r#type: Some(ProtoType::Float as i32),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let err = columns_from_descriptor(&bad, "LogRow").unwrap_err().to_string();
        assert!(err.contains("ratio"), "{err}");
        let err = columns_from_descriptor(&bad, "SpanRow").unwrap_err().to_string();
        assert!(err.contains("SpanRow"), "{err}");
    }

    /// Iceberg's create_table gives every table exactly our field ids (so the Arrow schema's
    /// ids are the table's), nested ones included.
    #[test]
    fn create_table_assigns_exactly_the_row_definitions_ids() {
        use iceberg::spec::{TableMetadataBuilder, UnboundPartitionSpec};
        for table in RowTable::ALL {
            let ours = table.iceberg_schema();
            let creation = iceberg::TableCreation::builder()
                .name(table.default_name().into())
                .location("memory://lake/t".into())
                .schema(ours.clone())
                .partition_spec(UnboundPartitionSpec::builder().build())
                .build();
            let metadata =
                TableMetadataBuilder::from_table_creation(creation).unwrap().build().unwrap().metadata;
            let theirs = metadata.current_schema();
            assert_eq!(theirs.as_struct(), ours.as_struct(), "{table:?}");
            assert!(
                ours.highest_field_id() > ours.as_struct().fields().len() as i32 || table == RowTable::Logs
            );
        }
    }

    #[test]
    fn traces_and_metrics_tables_have_the_documented_columns() {
        let names = |table: RowTable| -> Vec<String> {
            table
                .iceberg_schema()
                .as_struct()
                .fields()
                .iter()
                .map(|f| format!("{}:{}", f.name, type_name(&f.field_type)))
                .collect()
        };
        assert_eq!(
            names(RowTable::Traces),
            [
                "timestamp:timestamptz",
                "end_timestamp:timestamptz",
                "duration_ns:long",
                "trace_id:string",
                "span_id:string",
                "parent_span_id:string",
                "trace_state:string",
                "span_name:string",
                "span_kind:string",
                "service_name:string",
                "resource_attributes:map<string,string>",
                "scope_name:string",
                "scope_version:string",
                "span_attributes:map<string,string>",
                "status_code:string",
                "status_message:string",
                "events:list<struct<timestamp:timestamptz,name:string,attributes:map<string,string>>>",
                "links:list<struct<trace_id:string,span_id:string,trace_state:string,attributes:map<string,string>>>",
                "kafka_partition:int",
                "kafka_offset:long",
            ]
        );
        let common = [
            "timestamp:timestamptz",
            "start_timestamp:timestamptz",
            "service_name:string",
            "metric_name:string",
            "metric_description:string",
            "metric_unit:string",
            "resource_attributes:map<string,string>",
            "resource_schema_url:string",
            "scope_name:string",
            "scope_version:string",
            "scope_attributes:map<string,string>",
            "scope_schema_url:string",
            "attributes:map<string,string>",
            "flags:int",
            "exemplars:list<struct<timestamp:timestamptz,value:double,trace_id:string,span_id:string,filtered_attributes:map<string,string>>>",
        ];
        let own: [(RowTable, &[&str]); 5] = [
            (RowTable::MetricsGauge, &["value:double"]),
            (
                RowTable::MetricsSum,
                &["value:double", "aggregation_temporality:string", "is_monotonic:boolean"],
            ),
            (
                RowTable::MetricsHistogram,
                &[
                    "count:long",
                    "sum:double",
                    "bucket_counts:list<long>",
                    "explicit_bounds:list<double>",
                    "min:double",
                    "max:double",
                    "aggregation_temporality:string",
                ],
            ),
            (
                RowTable::MetricsExponentialHistogram,
                &[
                    "count:long",
                    "sum:double",
                    "scale:int",
                    "zero_count:long",
                    "positive_offset:int",
                    "positive_bucket_counts:list<long>",
                    "negative_offset:int",
                    "negative_bucket_counts:list<long>",
                    "min:double",
                    "max:double",
                    "aggregation_temporality:string",
                ],
            ),
            (
                RowTable::MetricsSummary,
                &["count:long", "sum:double", "quantile_values:list<struct<quantile:double,value:double>>"],
            ),
        ];
        for (table, own) in own {
            let expected: Vec<&str> = common
                .iter()
                .chain(own)
                .copied()
                .chain(["kafka_partition:int", "kafka_offset:long"])
                .collect();
            assert_eq!(names(table), expected, "{table:?}");
            assert_eq!(table.sort_columns(), ["service_name", "metric_name", "timestamp"]);
        }
        assert_eq!(RowTable::Traces.sort_columns(), ["service_name", "span_name", "timestamp"]);
        for table in RowTable::ALL {
            assert!(table.iceberg_schema().field_by_name("timestamp").unwrap().required, "{table:?}");
            for column in table.sort_columns() {
                assert!(table.column_index(column).is_some(), "{table:?} sorts by {column}");
            }
        }
    }

    fn type_name(t: &Type) -> String {
        match t {
            Type::Map(m) => format!(
                "map<{},{}>",
                type_name(&m.key_field.field_type),
                type_name(&m.value_field.field_type)
            ),
            Type::List(l) => format!("list<{}>", type_name(&l.element_field.field_type)),
            Type::Struct(s) => {
                let fields: Vec<String> =
                    s.fields().iter().map(|f| format!("{}:{}", f.name, type_name(&f.field_type))).collect();
                format!("struct<{}>", fields.join(","))
            }
            other => other.to_string(),
        }
    }

    #[test]
    fn duckdb_ddl_spells_nested_types() {
        let ddl = RowTable::MetricsSummary.duckdb_create_table("s");
        assert!(ddl.contains("\"quantile_values\" STRUCT(\"quantile\" DOUBLE, \"value\" DOUBLE)[]"), "{ddl}");
        assert!(RowTable::MetricsHistogram.duckdb_create_table("h").contains("\"bucket_counts\" BIGINT[]"));
        let conn_ddl = RowTable::Traces.duckdb_create_table("t");
        assert!(conn_ddl.contains("\"events\" STRUCT(\"timestamp\" TIMESTAMPTZ, \"name\" VARCHAR, \"attributes\" MAP(VARCHAR, VARCHAR))[]"), "{conn_ddl}");
    }
}
