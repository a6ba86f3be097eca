//! Generates the etcd v3 message types plus tonic servers and clients from the
//! `.proto` files under `proto/`. Uses the protoc shipped in
//! `protoc-bin-vendored`, so no system protobuf compiler is required.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/mvccpb/kv.proto",
    "proto/authpb/auth.proto",
    "proto/etcdserverpb/rpc.proto",
    "proto/v3lockpb/v3lock.proto",
    "proto/v3electionpb/v3election.proto",
    "proto/peerpb/peer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build reads PROTOC; build scripts run single-threaded here.
    std::env::set_var("PROTOC", protoc);

    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let include = manifest_dir.join("proto");
    let protos: Vec<PathBuf> = PROTOS.iter().map(|p| manifest_dir.join(p)).collect();

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", include.display());
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Services are built one issue at a time; methods not written yet answer
        // `Unimplemented` instead of failing the build.
        .generate_default_stubs(true)
        // The services and methods a server knows, for grpc-go's "unknown method" answers.
        .file_descriptor_set_path(out_dir.join("oxcd_descriptor.bin"))
        .compile_protos(&protos, &[include])?;
    Ok(())
}
