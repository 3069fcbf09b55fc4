//! `appender query` over a lake the appender's own code wrote: the table opened by
//! `lake::load_existing` and queried by the `telemetry-lake-query` crate, as the binary does.

use std::path::Path;

use arrow_array::RecordBatch;
use bytesize::ByteSize;
use telemetry_lake_appender::lake::{self, Lake, LakeError};
use telemetry_lake_common::{config::Config, secrets::Redactor, settings::Settings};
use telemetry_lake_query::{Format, QueryRequest, QueryTable};

fn settings(dir: &Path) -> Settings {
    let mut config = Config::default();
    config.iceberg.catalog_uri = format!("sqlite://{}/catalog.db", dir.display());
    config.iceberg.warehouse = format!("{}/warehouse", dir.display());
    Settings::from_config(config).expect("settings")
}

async fn csv(settings: &Settings, sql: &str) -> Result<String, String> {
    let redactor = Redactor::for_iceberg(&settings.iceberg);
    let table =
        lake::load_existing(&settings.iceberg, telemetry_lake_proto::RowTable::Logs, &redactor).await?;
    let request = QueryRequest {
        sql: sql.into(),
        format: Format::Csv,
        snapshot: None,
        memory_limit: ByteSize::mib(256),
        temp_dir: std::env::temp_dir(),
    };
    let table = QueryTable { name: settings.iceberg.table.clone(), alias: None, table };
    let result = telemetry_lake_query::run(vec![table], &redactor, request, Vec::new()).await;
    match result {
        Ok((_, out)) => Ok(String::from_utf8(out).unwrap()),
        Err(err) => Err(format!("{}: {err}", err.exit_code())),
    }
}

#[tokio::test]
async fn query_runs_over_the_lake_and_fails_with_the_documented_codes() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let missing = csv(&settings, "SELECT 1").await.unwrap_err();
    assert!(missing.contains("catalog.db does not exist"), "{missing}");
    assert!(!dir.path().join("catalog.db").exists(), "a query creates no catalog");

    let lake = Lake::open(&settings.iceberg, telemetry_lake_proto::RowTable::Logs).await.unwrap();
    assert_eq!(csv(&settings, "SELECT count(*) AS n FROM logs").await.unwrap(), "n\n0\n");

    let staging = duckdb::Connection::open_in_memory().unwrap();
    staging.execute_batch(&telemetry_lake_proto::RowTable::Logs.duckdb_create_table("staging")).unwrap();
    staging
        .execute_batch(
            "INSERT INTO staging (timestamp, severity_text, body, service_name, log_attributes) VALUES
               ('2026-11-27 10:00:00+00', 'INFO', 'one', 'a', MAP {'k': 'v1'}),
               ('2026-11-27 11:00:00+00', 'ERROR', 'two', 'a', MAP {'k': 'v2'}),
               ('2026-11-28 00:00:00.5+00', 'INFO', NULL, 'b', MAP {})",
        )
        .unwrap();
    let staged: Vec<RecordBatch> =
        staging.prepare("SELECT * FROM staging").unwrap().query_arrow([]).unwrap().collect();
    let stream = futures::stream::iter(staged.into_iter().map(Ok::<_, LakeError>));
    lake.append(stream, lake::CommitProperties::default(), None).await.unwrap().expect("committed");

    assert_eq!(
        csv(&settings, "SELECT severity_text, count(*) AS n FROM logs GROUP BY 1 ORDER BY 1").await.unwrap(),
        "severity_text,n\nERROR,1\nINFO,2\n"
    );
    assert_eq!(
        csv(&settings, "SELECT timestamp, body FROM logs WHERE log_attributes['k'] IS NULL").await.unwrap(),
        "timestamp,body\n2026-11-28T00:00:00.500Z,\n"
    );
    let bad = csv(&settings, "SELECT nope FROM logs").await.unwrap_err();
    assert!(bad.starts_with("2: "), "statement errors exit 2: {bad}");
    assert!(bad.contains("Binder Error") && bad.contains("`logs` (iceberg table default.logs)"), "{bad}");
}
