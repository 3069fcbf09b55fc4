//! Compiles log_row.proto with a vendored protoc and keeps its descriptor set, from which the
//! crate derives the DuckDB, Arrow and Iceberg schemas at run time.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded.
    unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    let include = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .file_descriptor_set_path(out_dir.join("log_row_descriptor.bin"))
        .compile_protos(&[PathBuf::from("proto/log_row.proto")], &[PathBuf::from("proto"), include])?;
    println!("cargo:rerun-if-changed=proto/log_row.proto");
    Ok(())
}
