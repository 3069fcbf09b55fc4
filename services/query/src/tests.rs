//! Output formats and the DuckDB table of a lake schema.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{MapBuilder, StringBuilder};
use arrow_array::{ArrayRef, Int64Array, StringArray, TimestampMicrosecondArray};

use super::*;
use crate::output::*;

/// 2026-11-27T10:00:00Z and 2026-11-28T00:00:00.000001Z in microseconds.
const T1: i64 = 1_795_773_600_000_000;
const T2: i64 = 1_795_824_000_000_001;

/// A result batch as DuckDB hands it out: zoned timestamps labelled with the session zone.
fn duckdb_result() -> RecordBatch {
    let mut map = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    map.keys().append_value("k");
    map.values().append_value("v, \"w\"");
    map.append(true).unwrap();
    map.append(false).unwrap();
    RecordBatch::try_from_iter([
        ("ts", Arc::new(TimestampMicrosecondArray::from(vec![T1, T2]).with_timezone("UTC")) as ArrayRef),
        ("body", Arc::new(StringArray::from(vec![Some("a,b"), None])) as ArrayRef),
        ("empty", Arc::new(StringArray::from(vec![Some(""), Some("x")])) as ArrayRef),
        ("n", Arc::new(Int64Array::from(vec![None, Some(7)])) as ArrayRef),
        ("attrs", Arc::new(map.finish()) as ArrayRef),
    ])
    .unwrap()
}

fn render(format: Format, batches: &[RecordBatch]) -> String {
    let schema = utc_schema(&batches[0].schema());
    let mut out = Vec::new();
    let mut sink = Sink::new(format, schema.clone(), &mut out).unwrap();
    for batch in batches {
        sink.write(to_utc(batch.clone(), &schema).unwrap()).unwrap();
    }
    sink.finish().unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn query_formats_show_nulls_maps_and_utc_timestamps() {
    let batch = duckdb_result();
    assert_eq!(
        render(Format::Table, std::slice::from_ref(&batch)),
        "+-----------------------------+------+-------+------+-------------+\n\
         | ts                          | body | empty | n    | attrs       |\n\
         +-----------------------------+------+-------+------+-------------+\n\
         | 2026-11-27T10:00:00Z        | a,b  |       | NULL | {k: v, \"w\"} |\n\
         | 2026-11-28T00:00:00.000001Z | NULL | x     | 7    | NULL        |\n\
         +-----------------------------+------+-------+------+-------------+\n\
         (2 rows)\n"
    );
    assert_eq!(
        render(Format::Csv, std::slice::from_ref(&batch)),
        "ts,body,empty,n,attrs\n\
         2026-11-27T10:00:00Z,\"a,b\",\"\",,\"{k: v, \"\"w\"\"}\"\n\
         2026-11-28T00:00:00.000001Z,,x,7,\n"
    );
    assert_eq!(
        render(Format::Jsonl, std::slice::from_ref(&batch)),
        "{\"ts\":\"2026-11-27T10:00:00Z\",\"body\":\"a,b\",\"empty\":\"\",\"n\":null,\"attrs\":{\"k\":\"v, \\\"w\\\"\"}}\n\
         {\"ts\":\"2026-11-28T00:00:00.000001Z\",\"body\":null,\"empty\":\"x\",\"n\":7,\"attrs\":null}\n"
    );
    let array: serde_json::Value =
        serde_json::from_str(&render(Format::Json, &[batch.clone(), batch])).unwrap();
    assert_eq!(array.as_array().unwrap().len(), 4);
    assert_eq!(array[3]["ts"], "2026-11-28T00:00:00.000001Z");
}

#[test]
fn query_empty_results_keep_their_header() {
    let empty = duckdb_result().slice(0, 0);
    let schema = utc_schema(&empty.schema());
    let finish = |format| {
        let mut out = Vec::new();
        Sink::new(format, schema.clone(), &mut out).unwrap().finish().unwrap();
        String::from_utf8(out).unwrap()
    };
    assert!(finish(Format::Table).starts_with("+----+------+-------+---+-------+\n| ts | body |"));
    assert!(finish(Format::Table).ends_with("(0 rows)\n"));
    assert_eq!(finish(Format::Csv), "ts,body,empty,n,attrs\n");
    assert_eq!(finish(Format::Json), "[]\n");
    assert_eq!(finish(Format::Jsonl), "");
}

#[test]
fn query_csv_quotes_only_what_needs_it() {
    let mut out = Vec::new();
    let fields = ["plain", "", "a,b", "say \"hi\"", "two\nlines", " lead", "trail "];
    let mut record: Vec<Option<String>> = fields.iter().map(|f| Some(f.to_string())).collect();
    record.push(None);
    write_csv_record(&mut out, &record).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "plain,\"\",\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\" lead\",\"trail \",\n"
    );
}

#[test]
fn query_table_of_the_lake_schema_has_duckdb_types() {
    let schema = schema_to_arrow_schema(&telemetry_lake_proto::RowTable::Logs.iceberg_schema()).unwrap();
    let conn = duckdb::Connection::open_in_memory().unwrap();
    conn.execute_batch(&create_table_sql("my \"logs\"", &schema).unwrap()).unwrap();
    let types: HashMap<String, String> = conn
        .prepare(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'my \"logs\"'",
        )
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(types.len(), schema.fields().len());
    assert_eq!(types["timestamp"], "TIMESTAMP WITH TIME ZONE");
    assert_eq!(types["log_attributes"], "MAP(VARCHAR, VARCHAR)");
    assert_eq!(types["kafka_offset"], "BIGINT");
    assert_eq!(types["severity_number"], "INTEGER");
}

#[test]
fn a_statement_reads_the_tables_it_names_and_logs_when_it_names_none() {
    let named = |name: &str, alias: Option<&str>| NamedTable {
        name: name.into(),
        alias: alias.map(String::from),
        table: (),
    };
    let tables = [named("app_logs", Some("logs")), named("traces", None), named("metrics_sum", None)];
    assert_eq!(referenced("SELECT 1", &tables), vec![0]);
    assert_eq!(referenced("select count(*) from LOGS", &tables), vec![0]);
    assert_eq!(referenced("SELECT * FROM \"app_logs\"", &tables), vec![0]);
    assert_eq!(referenced("SELECT service_name, count(*) FROM traces GROUP BY 1", &tables), vec![1]);
    assert_eq!(
        referenced("SELECT * FROM traces t JOIN metrics_sum m USING (service_name)", &tables),
        vec![1, 2]
    );
    assert_eq!(referenced("SELECT * FROM traces_2", &tables), vec![0], "a word, not a prefix");
}
