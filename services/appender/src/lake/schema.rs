//! The table's shape: how the appender creates it, checks a table it finds, and fits staged
//! batches to it.
//!
//! - [`Lake::table_creation`]: format v2, partitioned by `day(timestamp)`, sorted by the row's
//!   sort columns (`service_name, timestamp` for logs), zstd Parquet, the target file size.
//! - [`check_columns`]: a table found in the catalog must have every column of the row
//!   definition with the same type (field ids may differ: the catalog assigns its own).
//! - [`conform`]: staged batches (DuckDB's Arrow: `Etc/UTC`, `entries` maps, any column order)
//!   are cast column by column, by name, to the table's Arrow schema.

use arrow_array::{ArrayRef, RecordBatch, new_null_array};
use arrow_schema::SchemaRef as ArrowSchemaRef;
use iceberg::TableCreation;
use iceberg::spec::{
    FormatVersion, NullOrder, Schema, SortDirection, SortField, SortOrder, Transform, Type,
    UnboundPartitionSpec,
};
use telemetry_lake_proto::PARTITION_SOURCE_COLUMN;

use super::{Lake, LakeError, PARTITION_FIELD};

impl Lake {
    /// The creation request of the table (see the module docs).
    pub(super) fn table_creation(&self, schema: Schema) -> Result<TableCreation, LakeError> {
        let field_id = |name: &str| {
            schema
                .as_struct()
                .field_by_name(name)
                .map(|f| f.id)
                .ok_or_else(|| self.schema_error(format!("the row definition has no column {name}")))
        };
        let partition_source = field_id(PARTITION_SOURCE_COLUMN)?;
        // A REST catalog in Java parses the spec with PartitionSpecParser, which requires
        // `spec-id`; iceberg-rust leaves it out of the request unless it is set.
        let spec = UnboundPartitionSpec::builder()
            .with_spec_id(0)
            .add_partition_field(partition_source, PARTITION_FIELD, Transform::Day)
            .map_err(|e| self.schema_error(format!("cannot partition by day: {}", e.message())))?
            .build();
        let mut sort = SortOrder::builder();
        sort.with_order_id(1);
        let sort_columns = self.row.sort_columns();
        for name in sort_columns {
            sort.with_sort_field(
                SortField::builder()
                    .source_id(field_id(name)?)
                    .transform(Transform::Identity)
                    .direction(SortDirection::Ascending)
                    .null_order(NullOrder::First)
                    .build(),
            );
        }
        let sort = sort
            .build(&schema)
            .map_err(|e| self.schema_error(format!("cannot sort by {sort_columns:?}: {}", e.message())))?;
        let properties = [
            ("write.format.default", "parquet".to_string()),
            ("write.parquet.compression-codec", "zstd".to_string()),
            ("write.target-file-size-bytes", self.target_file_size.to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v));
        Ok(TableCreation::builder()
            .name(self.ident.name().to_string())
            .schema(schema)
            .partition_spec(spec)
            .sort_order(sort)
            .properties(properties)
            .format_version(FormatVersion::V2)
            .build())
    }
}

/// Casts the staged batch to the table's Arrow schema, matching columns by name.
pub(super) fn conform(batch: &RecordBatch, target: &ArrowSchemaRef) -> Result<RecordBatch, String> {
    let source = batch.schema();
    if let Some(extra) = source.fields().iter().find(|f| target.field_with_name(f.name()).is_err()) {
        return Err(format!("staged column {} is not in the table", extra.name()));
    }
    let columns = target
        .fields()
        .iter()
        .map(|field| match source.index_of(field.name()) {
            Ok(index) => {
                let column = batch.column(index);
                arrow_cast::cast(column, field.data_type()).map_err(|e| {
                    format!(
                        "column {} cannot be cast from {} to {}: {e}",
                        field.name(),
                        column.data_type(),
                        field.data_type()
                    )
                })
            }
            Err(_) if field.is_nullable() => Ok(new_null_array(field.data_type(), batch.num_rows())),
            Err(_) => Err(format!("required column {} is missing from the staged rows", field.name())),
        })
        .collect::<Result<Vec<ArrayRef>, String>>()?;
    RecordBatch::try_new(target.clone(), columns).map_err(|e| format!("{e}"))
}

/// Checks that the table has every column the appender writes, with the same type, and does
/// not require one the appender may leave null.
pub(super) fn check_columns(expected: &Schema, table: &Schema) -> Result<(), String> {
    for field in expected.as_struct().fields() {
        let Some(actual) = table.as_struct().field_by_name(&field.name) else {
            return Err(format!("the table has no column {}", field.name));
        };
        if !same_shape(&field.field_type, &actual.field_type) {
            return Err(format!(
                "column {} is {} in the table but {} in the row definition",
                field.name, actual.field_type, field.field_type
            ));
        }
        if actual.required && !field.required {
            return Err(format!(
                "column {} is required in the table but optional in the row definition",
                field.name
            ));
        }
    }
    Ok(())
}

/// Type equality that ignores field ids (the table assigns its own).
fn same_shape(a: &Type, b: &Type) -> bool {
    match (a, b) {
        (Type::Primitive(a), Type::Primitive(b)) => a == b,
        (Type::Map(a), Type::Map(b)) => {
            same_shape(&a.key_field.field_type, &b.key_field.field_type)
                && same_shape(&a.value_field.field_type, &b.value_field.field_type)
        }
        (Type::List(a), Type::List(b)) => {
            same_shape(&a.element_field.field_type, &b.element_field.field_type)
        }
        (Type::Struct(a), Type::Struct(b)) => {
            a.fields().len() == b.fields().len()
                && a.fields()
                    .iter()
                    .zip(b.fields())
                    .all(|(a, b)| a.name == b.name && same_shape(&a.field_type, &b.field_type))
        }
        _ => false,
    }
}
