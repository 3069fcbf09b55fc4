//! Compiles the row definitions (log_row.proto, span_row.proto, metric_rows.proto) with a
//! vendored protoc and keeps their descriptor set, from which the crate derives the DuckDB,
//! Arrow and Iceberg schemas at run time.

use std::{env, path::PathBuf};

const PROTOS: [&str; 3] = ["proto/log_row.proto", "proto/span_row.proto", "proto/metric_rows.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded.
    unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    let include = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .file_descriptor_set_path(out_dir.join("row_descriptor.bin"))
        .compile_protos(&PROTOS.map(PathBuf::from), &[PathBuf::from("proto"), include])?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
