//! Compiles admin.proto with a vendored protoc and emits the descriptor set for reflection.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded.
    unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("admin_descriptor.bin"))
        .type_attribute(".", "#[derive(serde::Serialize)]")
        // `GET /stats` shows a service's own section as `"appender": {…}` / `"ingester": {…}`.
        .field_attribute("StatsResponse.service", "#[serde(flatten)]")
        .type_attribute("StatsResponse.service", "#[serde(rename_all = \"snake_case\")]")
        .compile_protos(&["proto/admin.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/admin.proto");
    Ok(())
}
