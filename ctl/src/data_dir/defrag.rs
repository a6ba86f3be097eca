//! `defrag --data-dir <dir>`: rewrites every column family of a stopped member's store, so
//! space held by deleted and compacted revisions is returned to the file system.

use std::path::Path;

use crate::failure::ExitCode;

/// etcdctl 3.4's offline defrag: silent on success; on failure its one stderr line and exit 1.
pub fn run(data_dir: &str) {
    let defragmented = super::open(Path::new(data_dir)).map(|engine| engine.compact_all());
    if let Err(e) = defragmented {
        eprintln!("Failed to defragment etcd data[{data_dir}] ({e})");
        std::process::exit(ExitCode::Error as i32);
    }
}
