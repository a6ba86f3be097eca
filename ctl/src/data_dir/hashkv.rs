//! `hashkv <data-dir> [--rev N]`: etcdutl's hashkv. The hash of the stored revisions, computed
//! by the server's MVCC store exactly as a running member's HashKV computes it.

use std::path::Path;

use oxcd::mvcc::MvccStore;

use crate::failure::{CtlResult, ExitCode, Failure};
use crate::global::GlobalFlags;
use crate::output::{printer_for, DataHashKv};

#[derive(clap::Args, Debug)]
pub struct HashKvArgs {
    #[arg(value_name = "data-dir")]
    args: Vec<String>,
    /// maximum revision to hash (default: latest revision)
    #[arg(long, default_value = "0", value_parser = crate::args::go_i64)]
    rev: i64,
}

pub fn run(global: &GlobalFlags, args: HashKvArgs) -> CtlResult {
    let [data_dir] = args.args.as_slice() else {
        return Err(Failure::new(
            ExitCode::Error,
            format!("accepts 1 arg(s), received {}", args.args.len()),
        ));
    };
    let printer = printer_for(&global.write_out, global.hex, false)?;
    let failed = |e: String| Failure::new(ExitCode::Error, e);
    let engine = super::open(Path::new(data_dir)).map_err(failed)?;
    let store = MvccStore::open(engine).map_err(|e| failed(e.to_string()))?;
    let (hash, hash_revision, compact_revision) = store
        .hash_kv(args.rev)
        // The server's errors carry the gRPC layer's prefix; etcdutl prints mvcc's own.
        .map_err(|e| failed(e.to_string().replace("etcdserver: ", "")))?;
    printer.data_hash_kv(&DataHashKv {
        hash,
        hash_revision,
        compact_revision,
    })
}
