//! The lake's row, defined once in `proto/log_row.proto`, and every schema derived from it.
//!
//! [`columns`] reads the `LogRow` message from the compiled descriptor set; the DuckDB staging
//! DDL ([`duckdb_create_table`]), the Arrow schema ([`arrow_schema`]) and the Iceberg schema
//! ([`iceberg_schema`]) are all built from that one list, so they cannot disagree. Field ids are
//! the proto field numbers for top-level columns; map key and value ids follow the last
//! top-level id in field order, the order in which Iceberg's `create_table` assigns fresh ids.

use std::{collections::HashMap, sync::Arc, sync::LazyLock};

use arrow_schema::{DataType, Field, Fields, TimeUnit};
use iceberg::spec::{MapType, NestedField, PrimitiveType, Schema as IcebergSchema, Type};
use prost::Message;
use prost_types::{
    FileDescriptorSet,
    field_descriptor_proto::{Label, Type as ProtoType},
};

/// Generated `telemetry_lake.row.v1` types: [`row::v1::LogRow`] is the typed row.
pub mod row {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/telemetry_lake.row.v1.rs"));
    }
}

const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/log_row_descriptor.bin"));
const ROW_MESSAGE: &str = "LogRow";
/// Name of the column the table is partitioned on, by day.
pub const PARTITION_SOURCE_COLUMN: &str = "timestamp";
/// Columns each data file is ordered by.
pub const SORT_COLUMNS: [&str; 2] = ["service_name", "timestamp"];
/// Time zone Iceberg's Arrow mapping uses for timestamptz.
pub const UTC: &str = "+00:00";
/// Arrow metadata key carrying Iceberg field ids into Parquet.
pub const FIELD_ID_KEY: &str = "PARQUET:field_id";
/// Name of a map's entries field, as Iceberg's Arrow mapping spells it.
pub const MAP_ENTRIES: &str = "key_value";

/// The type of a column, in the row's own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// Microseconds since the epoch, UTC.
    Timestamptz,
    Int,
    Long,
    String,
    /// map<string, string>; the ids of its key and value fields.
    StringMap {
        key_id: i32,
        value_id: i32,
    },
}

/// One column of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub field_id: i32,
    pub column_type: ColumnType,
    pub nullable: bool,
}

/// The table's columns in order, read from `LogRow`.
pub fn columns() -> &'static [Column] {
    static COLUMNS: LazyLock<Vec<Column>> = LazyLock::new(|| {
        columns_from_descriptor(DESCRIPTOR_SET).expect("log_row.proto compiled into a valid row definition")
    });
    &COLUMNS
}

/// Position of a column by name.
pub fn column_index(name: &str) -> Option<usize> {
    columns().iter().position(|c| c.name == name)
}

#[derive(Debug, thiserror::Error)]
pub enum RowDefinitionError {
    #[error("row descriptor set does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("row descriptor set has no message {0}")]
    MissingMessage(&'static str),
    #[error("row field {field}: {reason}")]
    Field { field: String, reason: String },
}

fn columns_from_descriptor(bytes: &[u8]) -> Result<Vec<Column>, RowDefinitionError> {
    let set = FileDescriptorSet::decode(bytes)?;
    let file = set
        .file
        .iter()
        .find(|f| f.message_type.iter().any(|m| m.name() == ROW_MESSAGE))
        .ok_or(RowDefinitionError::MissingMessage(ROW_MESSAGE))?;
    let message = file.message_type.iter().find(|m| m.name() == ROW_MESSAGE).expect("found above");
    let map_entries: HashMap<String, &prost_types::DescriptorProto> = message
        .nested_type
        .iter()
        .filter(|n| n.options.as_ref().is_some_and(|o| o.map_entry()))
        .map(|n| (format!(".{}.{}.{}", file.package(), ROW_MESSAGE, n.name()), n))
        .collect();

    let mut next_nested_id = message.field.iter().map(|f| f.number()).max().unwrap_or(0) + 1;
    let mut columns = Vec::with_capacity(message.field.len());
    for field in &message.field {
        let fail = |reason: &str| RowDefinitionError::Field {
            field: field.name().to_string(),
            reason: reason.into(),
        };
        let repeated = field.label() == Label::Repeated;
        let (column_type, nullable) = match field.r#type() {
            ProtoType::Message if repeated => {
                let entry = map_entries
                    .get(field.type_name())
                    .ok_or_else(|| fail("repeated fields other than maps are not supported"))?;
                let all_strings = entry.field.iter().all(|f| f.r#type() == ProtoType::String);
                if !all_strings {
                    return Err(fail("only map<string, string> is supported"));
                }
                let ids = ColumnType::StringMap { key_id: next_nested_id, value_id: next_nested_id + 1 };
                next_nested_id += 2;
                (ids, true)
            }
            _ if repeated => return Err(fail("repeated fields other than maps are not supported")),
            ProtoType::Message if field.type_name() == ".google.protobuf.Timestamp" => {
                (ColumnType::Timestamptz, field.proto3_optional())
            }
            ProtoType::Int32 => (ColumnType::Int, field.proto3_optional()),
            ProtoType::Int64 => (ColumnType::Long, field.proto3_optional()),
            ProtoType::String => (ColumnType::String, field.proto3_optional()),
            _ => return Err(fail("type has no column mapping")),
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

/// `CREATE TABLE IF NOT EXISTS` for the staging table in DuckDB. Staging columns are all
/// nullable: the Iceberg writer enforces required columns when it casts.
pub fn duckdb_create_table(table: &str) -> String {
    let body: Vec<String> = columns()
        .iter()
        .map(|c| {
            let ty = match c.column_type {
                ColumnType::Timestamptz => "TIMESTAMPTZ",
                ColumnType::Int => "INTEGER",
                ColumnType::Long => "BIGINT",
                ColumnType::String => "VARCHAR",
                ColumnType::StringMap { .. } => "MAP(VARCHAR, VARCHAR)",
            };
            format!("\"{}\" {ty}", c.name)
        })
        .collect();
    format!("CREATE TABLE IF NOT EXISTS \"{table}\" ({})", body.join(", "))
}

fn with_field_id(field: Field, id: i32) -> Field {
    field.with_metadata(HashMap::from([(FIELD_ID_KEY.to_string(), id.to_string())]))
}

/// The Arrow schema of a row batch, identical to Iceberg's own Arrow mapping of
/// [`iceberg_schema`] (field ids in `PARQUET:field_id`, `+00:00`, `key_value` map entries).
pub fn arrow_schema() -> arrow_schema::SchemaRef {
    static SCHEMA: LazyLock<arrow_schema::SchemaRef> = LazyLock::new(|| {
        let fields: Vec<Field> = columns()
            .iter()
            .map(|c| {
                let data_type = match c.column_type {
                    ColumnType::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
                    ColumnType::Int => DataType::Int32,
                    ColumnType::Long => DataType::Int64,
                    ColumnType::String => DataType::Utf8,
                    ColumnType::StringMap { key_id, value_id } => {
                        let entries = Fields::from(vec![
                            with_field_id(Field::new("key", DataType::Utf8, false), key_id),
                            with_field_id(Field::new("value", DataType::Utf8, true), value_id),
                        ]);
                        DataType::Map(
                            Arc::new(Field::new(MAP_ENTRIES, DataType::Struct(entries), false)),
                            false,
                        )
                    }
                };
                with_field_id(Field::new(&c.name, data_type, c.nullable), c.field_id)
            })
            .collect();
        Arc::new(arrow_schema::Schema::new(fields))
    });
    SCHEMA.clone()
}

/// The Iceberg schema of the table, with the row's field ids.
pub fn iceberg_schema() -> IcebergSchema {
    let fields: Vec<iceberg::spec::NestedFieldRef> = columns()
        .iter()
        .map(|c| {
            let field_type = match c.column_type {
                ColumnType::Timestamptz => Type::Primitive(PrimitiveType::Timestamptz),
                ColumnType::Int => Type::Primitive(PrimitiveType::Int),
                ColumnType::Long => Type::Primitive(PrimitiveType::Long),
                ColumnType::String => Type::Primitive(PrimitiveType::String),
                ColumnType::StringMap { key_id, value_id } => Type::Map(MapType::new(
                    NestedField::map_key_element(key_id, Type::Primitive(PrimitiveType::String)).into(),
                    NestedField::map_value_element(value_id, Type::Primitive(PrimitiveType::String), false)
                        .into(),
                )),
            };
            Arc::new(NestedField::new(c.field_id, &c.name, field_type, !c.nullable))
        })
        .collect();
    IcebergSchema::builder()
        .with_schema_id(0)
        .with_fields(fields)
        .build()
        .expect("the row definition is a valid Iceberg schema")
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

    fn iceberg_type_name(t: &Type) -> String {
        match t {
            Type::Map(m) => format!("map<{},{}>", m.key_field.field_type, m.value_field.field_type),
            other => other.to_string(),
        }
    }

    #[test]
    fn iceberg_schema_is_the_documented_table() {
        let schema = iceberg_schema();
        let actual: Vec<(String, String)> = schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| (f.name.clone(), iceberg_type_name(&f.field_type)))
            .collect();
        let expected: Vec<(String, String)> =
            CONTRACT.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
        assert_eq!(actual, expected);
        let timestamp = schema.field_by_name("timestamp").unwrap();
        assert!(timestamp.required, "timestamp is the partition source and must be required");
        assert!(!schema.field_by_name("trace_id").unwrap().required);
    }

    #[test]
    fn field_ids_are_stable_and_follow_create_table_order() {
        let schema = iceberg_schema();
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
        let from_iceberg = iceberg::arrow::schema_to_arrow_schema(&iceberg_schema()).unwrap();
        assert_eq!(arrow_schema().as_ref(), &from_iceberg);
    }

    #[test]
    fn duckdb_ddl_names_every_column_in_order_with_its_type() {
        let ddl = duckdb_create_table("staged_rows");
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
                package: Some("p".into()),
                message_type: vec![DescriptorProto {
                    name: Some(ROW_MESSAGE.into()),
                    field: vec![FieldDescriptorProto {
                        name: Some("ratio".into()),
                        number: Some(1),
                        r#type: Some(ProtoType::Double as i32),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let err = columns_from_descriptor(&bad.encode_to_vec()).unwrap_err().to_string();
        assert!(err.contains("ratio"), "{err}");
    }
}
