//! Compiles the vendored Kubernetes .proto files into one descriptor set that `registry` embeds,
//! with the protoc shipped in protoc-bin-vendored (no system protobuf compiler needed).

use std::path::{Path, PathBuf};
use std::process::Command;

fn protos_under(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            protos_under(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            found.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let include = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", include.display());
    let mut protos = Vec::new();
    protos_under(&include.join("k8s.io"), &mut protos)?;
    protos.sort();
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("k8s.fds");
    let status = Command::new(protoc_bin_vendored::protoc_bin_path()?)
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg(format!("-I{}", include.display()))
        .args(&protos)
        .status()?;
    if !status.success() {
        return Err(format!("protoc failed on the Kubernetes protos: {status}").into());
    }
    Ok(())
}
