//! How results are printed: timestamps labelled UTC, then an aligned table, CSV, a JSON array
//! or JSON lines, written batch by batch (only the table holds the whole result, to align it).

use std::io::{self, Write};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, Field, Schema as ArrowSchema, SchemaRef as ArrowSchemaRef};

use crate::{Format, QueryError, TIMESTAMP_TZ_FORMAT};

/// `data_type` with every zoned timestamp labelled `+00:00`. DuckDB labels them with its
/// session zone (UTC), which arrow cannot format without its time zone database; the values
/// are UTC instants either way, so only the label changes.
fn utc_type(data_type: &DataType) -> DataType {
    let field = |f: &Arc<Field>| Arc::new(f.as_ref().clone().with_data_type(utc_type(f.data_type())));
    match data_type {
        DataType::Timestamp(unit, Some(_)) => DataType::Timestamp(*unit, Some("+00:00".into())),
        DataType::List(item) => DataType::List(field(item)),
        DataType::LargeList(item) => DataType::LargeList(field(item)),
        DataType::FixedSizeList(item, n) => DataType::FixedSizeList(field(item), *n),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(field).collect()),
        DataType::Map(entries, sorted) => DataType::Map(field(entries), *sorted),
        other => other.clone(),
    }
}

pub(crate) fn utc_schema(schema: &ArrowSchemaRef) -> ArrowSchemaRef {
    Arc::new(ArrowSchema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_data_type(utc_type(f.data_type())))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

pub(crate) fn to_utc(batch: RecordBatch, schema: &ArrowSchemaRef) -> Result<RecordBatch, QueryError> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                arrow_cast::cast(column, field.data_type())
            }
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

pub(crate) fn format_options() -> FormatOptions<'static> {
    FormatOptions::new().with_null("NULL").with_timestamp_tz_format(Some(TIMESTAMP_TZ_FORMAT))
}

/// Writes result batches in one [`Format`].
pub(crate) enum Sink<'w, W: Write> {
    /// Rows are held until the end to align the columns.
    Table {
        out: &'w mut W,
        schema: ArrowSchemaRef,
        batches: Vec<RecordBatch>,
    },
    Csv {
        out: &'w mut W,
        rows: u64,
    },
    JsonArray {
        writer: arrow_json::ArrayWriter<&'w mut W>,
        rows: u64,
    },
    JsonLines {
        writer: arrow_json::LineDelimitedWriter<&'w mut W>,
        rows: u64,
    },
}

impl<'w, W: Write> Sink<'w, W> {
    pub(crate) fn new(format: Format, schema: ArrowSchemaRef, out: &'w mut W) -> Result<Self, QueryError> {
        let json = || {
            arrow_json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .with_timestamp_tz_format(TIMESTAMP_TZ_FORMAT.to_string())
        };
        Ok(match format {
            Format::Table => Sink::Table { out, schema, batches: Vec::new() },
            Format::Csv => {
                let header: Vec<Option<String>> =
                    schema.fields().iter().map(|f| Some(f.name().clone())).collect();
                write_csv_record(out, &header).map_err(QueryError::Output)?;
                Sink::Csv { out, rows: 0 }
            }
            Format::Json => Sink::JsonArray { writer: json().build(out), rows: 0 },
            Format::Jsonl => Sink::JsonLines { writer: json().build(out), rows: 0 },
        })
    }

    pub(crate) fn write(&mut self, batch: RecordBatch) -> Result<(), QueryError> {
        match self {
            Sink::Table { batches, .. } => batches.push(batch),
            Sink::Csv { out, rows } => {
                write_csv_batch(out, &batch)?;
                *rows += batch.num_rows() as u64;
            }
            Sink::JsonArray { writer, rows } => {
                writer.write(&batch)?;
                *rows += batch.num_rows() as u64;
            }
            Sink::JsonLines { writer, rows } => {
                writer.write(&batch)?;
                *rows += batch.num_rows() as u64;
            }
        }
        Ok(())
    }

    /// Ends the output; returns the number of rows written.
    pub(crate) fn finish(self) -> Result<u64, QueryError> {
        match self {
            Sink::Table { out, schema, batches } => {
                let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                write_table(out, schema, &batches)?;
                let noun = if rows == 1 { "row" } else { "rows" };
                writeln!(out, "({rows} {noun})").map_err(QueryError::Output)?;
                Ok(rows as u64)
            }
            Sink::Csv { rows, .. } => Ok(rows),
            Sink::JsonArray { mut writer, rows } => {
                writer.finish()?;
                writeln!(writer.get_mut()).map_err(QueryError::Output)?;
                Ok(rows)
            }
            Sink::JsonLines { mut writer, rows } => {
                writer.finish()?;
                Ok(rows)
            }
        }
    }
}

pub(crate) fn write_table<W: Write>(
    out: &mut W,
    schema: ArrowSchemaRef,
    batches: &[RecordBatch],
) -> Result<(), QueryError> {
    let table = if batches.is_empty() {
        // Only this variant prints the header of an empty result.
        arrow_cast::pretty::pretty_format_batches_with_schema(schema, batches)?.to_string()
    } else {
        arrow_cast::pretty::pretty_format_batches_with_options(batches, &format_options())?.to_string()
    };
    writeln!(out, "{table}").map_err(QueryError::Output)
}

pub(crate) fn write_csv_batch<W: Write>(out: &mut W, batch: &RecordBatch) -> Result<(), QueryError> {
    let options = format_options();
    let columns = batch
        .columns()
        .iter()
        .map(|c| Ok((ArrayFormatter::try_new(c.as_ref(), &options)?, c.logical_nulls())))
        .collect::<Result<Vec<_>, arrow_schema::ArrowError>>()?;
    let mut record = Vec::with_capacity(columns.len());
    for row in 0..batch.num_rows() {
        record.clear();
        for (formatter, nulls) in &columns {
            if nulls.as_ref().is_some_and(|n| n.is_null(row)) {
                record.push(None);
            } else {
                record.push(Some(formatter.value(row).try_to_string()?));
            }
        }
        write_csv_record(out, &record).map_err(QueryError::Output)?;
    }
    Ok(())
}

/// One CSV line (RFC 4180): `None` (NULL) as an empty field, an empty string as `""`, fields
/// with a comma, quote, line break or edge spaces quoted.
pub(crate) fn write_csv_record<W: Write>(out: &mut W, fields: &[Option<String>]) -> io::Result<()> {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        let Some(value) = field else { continue };
        let quote = value.is_empty()
            || value.contains([',', '"', '\n', '\r'])
            || value.starts_with(' ')
            || value.ends_with(' ');
        if quote {
            write!(out, "\"{}\"", value.replace('"', "\"\""))?;
        } else {
            out.write_all(value.as_bytes())?;
        }
    }
    out.write_all(b"\n")
}
