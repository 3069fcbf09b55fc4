//! `telemetry_lake.admin.v1`: the Admin service (`Flush`, `Stats`) both services serve.
//!
//! Messages derive `serde::Serialize` so `GET /stats` returns the same fields as gRPC `Stats`.

pub mod v1 {
    tonic::include_proto!("telemetry_lake.admin.v1");
}

/// Encoded `FileDescriptorSet` of admin.proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("admin_descriptor");
