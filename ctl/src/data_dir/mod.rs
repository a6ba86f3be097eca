//! What etcdutl does to a data dir that no server is running on: `defrag --data-dir` and
//! `hashkv`. The data dir is opened through the server's own storage and MVCC modules, as
//! etcdutl opens etcd's bbolt file through etcd's backend and mvcc packages.

pub mod defrag;
pub mod hashkv;

use std::path::Path;
use std::sync::Arc;

use oxcd::storage::{Engine, StorageError};

/// Opens an existing data dir. Unlike the server, never creates one: a mistyped path is an
/// error, not a new empty store. A running server's lock is refused at once (etcdutl waits
/// `--timeout` for bbolt's lock, then gives up).
pub fn open(data_dir: &Path) -> Result<Arc<Engine>, String> {
    let db = data_dir.join("db");
    if let Err(e) = std::fs::metadata(&db) {
        return Err(format!("stat {}: {}", db.display(), go_io_error(&e)));
    }
    Engine::open(data_dir).map_err(|e| match e {
        StorageError::Locked(dir, _) => format!(
            "data dir {} is in use by a running oxcd; stop it first (or run the command against its endpoint)",
            dir.display()
        ),
        e => e.to_string(),
    })
}

/// Go's text of the common `os.Stat` failures, which etcdutl prints.
fn go_io_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_path_that_is_no_data_dir_without_creating_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("typo");
        let error = open(&missing).err().unwrap();
        assert_eq!(
            error,
            format!(
                "stat {}: no such file or directory",
                missing.join("db").display()
            )
        );
        assert!(!missing.exists());
    }

    #[test]
    fn refuses_a_data_dir_another_holder_has_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _server = Engine::open(dir.path()).unwrap();
        let error = open(dir.path()).err().unwrap();
        assert!(error.contains("in use by a running oxcd"), "{error}");
    }
}
