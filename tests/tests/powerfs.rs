//! PowerFs, the power-loss filesystem, driven through the kernel with plain std::fs calls. What
//! survives a cut is looked at from a child process started after it (this test binary run as
//! `child_lists_the_mount`), so no cache of the testing process can hide a stale byte or name.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oxcd_tests::powerfs::PowerFs;

/// Set for the child process: the directory it lists.
const LIST_ROOT_VAR: &str = "POWERFS_TEST_LIST_ROOT";
/// Set for the child process: the directory it mounts a PowerFs on before it waits to be killed.
const MOUNT_AND_WAIT_VAR: &str = "POWERFS_TEST_MOUNT_AND_WAIT";
/// Prefixes the lines a child prints for the parent, apart from libtest's own output.
const CHILD_LINE: &str = "powerfs-child: ";

fn mount() -> PowerFs {
    PowerFs::mount_in_temp_dir().unwrap_or_else(|e| panic!("{e:#}"))
}

fn fsync_dir(dir: &Path) {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .unwrap_or_else(|e| panic!("fsync of directory {}: {e}", dir.display()));
}

/// Creates `path` with `data` and makes its data durable (not its name).
fn write_synced(path: &Path, data: &[u8]) {
    let mut file = File::create(path).unwrap();
    file.write_all(data).unwrap();
    file.sync_all().unwrap();
}

/// Creates `path` with `data` and makes its data and its name durable.
fn write_durable(path: &Path, data: &[u8]) {
    write_synced(path, data);
    fsync_dir(path.parent().unwrap());
}

fn append(path: &Path, data: &[u8]) -> File {
    let mut file = OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(data).unwrap();
    file
}

fn errno(result: std::io::Result<impl std::fmt::Debug>) -> i32 {
    result
        .expect_err("expected the call to fail")
        .raw_os_error()
        .expect("an OS error")
}

/// One line per file, directory or symlink: what a process sees there.
fn describe(path: &Path) -> String {
    let meta = fs::symlink_metadata(path).unwrap();
    if meta.is_dir() {
        format!("dir nlink={}", meta.nlink())
    } else if meta.file_type().is_symlink() {
        format!("symlink -> {}", fs::read_link(path).unwrap().display())
    } else {
        let data = fs::read(path).unwrap();
        assert_eq!(
            data.len() as u64,
            meta.len(),
            "{}: read != stat size",
            path.display()
        );
        file_line(&data, meta.nlink())
    }
}

fn file_line(data: &[u8], nlink: u64) -> String {
    if data.len() <= 64 {
        format!("file nlink={nlink} {:?}", String::from_utf8_lossy(data))
    } else {
        format!(
            "file nlink={nlink} len={} fnv={:016x}",
            data.len(),
            fnv1a(data)
        )
    }
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Everything under `root` (relative path -> [`describe`]), through plain std::fs calls.
fn describe_tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for entry in fs::read_dir(root.join(&relative)).unwrap() {
            let relative = relative.join(entry.unwrap().file_name());
            let path = root.join(&relative);
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                pending.push(relative.clone());
            }
            out.insert(relative.to_string_lossy().into_owned(), describe(&path));
        }
    }
    out
}

/// [`describe_tree`] as a process started now sees it.
fn seen_by_new_process(fs: &PowerFs) -> BTreeMap<String, String> {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_lists_the_mount",
            "--ignored",
            "--nocapture",
        ])
        .env(LIST_ROOT_VAR, fs.mountpoint())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the listing child failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix(CHILD_LINE))
        .map(|line| {
            let (path, description) = line.split_once('\t').expect("path<TAB>description");
            (path.to_owned(), description.to_owned())
        })
        .collect()
}

/// The expected listing, from (path, description) pairs.
fn expect(entries: &[(&str, String)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(path, line)| (path.to_string(), line.clone()))
        .collect()
}

/// A file with one name holding `data`.
fn contents(data: &[u8]) -> String {
    file_line(data, 1)
}

fn dir(subdirs: u64) -> String {
    format!("dir nlink={}", 2 + subdirs)
}

#[test]
#[ignore = "helper, not a test: the other tests run it in a child process"]
fn child_lists_the_mount() {
    let root = std::env::var_os(LIST_ROOT_VAR).expect("LIST_ROOT_VAR is set by the parent test");
    for (path, description) in describe_tree(Path::new(&root)) {
        println!("{CHILD_LINE}{path}\t{description}");
    }
}

#[test]
#[ignore = "helper, not a test: the stale-mount test runs it in a child process and kills it"]
fn child_mounts_and_waits() {
    let dir = std::env::var_os(MOUNT_AND_WAIT_VAR).expect("MOUNT_AND_WAIT_VAR is set");
    let _fs = PowerFs::mount(Path::new(&dir)).unwrap();
    println!("{CHILD_LINE}mounted");
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn unsynced_writes_are_lost_and_synced_data_survives() {
    let fs = mount();
    let root = fs.mountpoint();
    write_durable(&root.join("fsynced"), b"first part;");
    let unsynced = append(&root.join("fsynced"), b"unsynced tail");
    assert_eq!(
        fs::read(root.join("fsynced")).unwrap(),
        b"first part;unsynced tail"
    );

    write_synced(&root.join("fdatasynced"), b"");
    fsync_dir(root);
    let data_only = append(&root.join("fdatasynced"), b"fdatasync is enough for data");
    data_only.sync_data().unwrap();
    drop((unsynced, data_only));

    let report = fs.cut_power();
    println!("cut: {report}");
    assert_eq!(report.files_reverted, 1);
    assert_eq!(report.unsynced_pages, 1);
    let after = expect(&[
        ("fsynced", contents(b"first part;")),
        ("fdatasynced", contents(b"fdatasync is enough for data")),
    ]);
    assert_eq!(seen_by_new_process(&fs), after);
    assert_eq!(
        describe_tree(root),
        after,
        "the testing process sees the same"
    );
}

#[test]
fn an_unsynced_overwrite_of_the_same_size_is_lost() {
    let fs = mount();
    let path = fs.mountpoint().join("f");
    write_durable(&path, b"durable!");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut read_back = [0; 8];
    file.read_exact_at(&mut read_back, 0).unwrap();
    file.write_all_at(b"unsynced", 0).unwrap();
    file.read_exact_at(&mut read_back, 0).unwrap();
    assert_eq!(&read_back, b"unsynced");
    drop(file);
    fs.cut_power();
    assert_eq!(fs::read(&path).unwrap(), b"durable!");
    assert_eq!(
        seen_by_new_process(&fs),
        expect(&[("f", contents(b"durable!"))])
    );
}

#[test]
fn a_synced_file_exists_after_a_cut_only_once_its_directory_is_synced() {
    let fs = mount();
    let root = fs.mountpoint();
    fs::create_dir(root.join("d")).unwrap();
    fsync_dir(root);
    write_synced(&root.join("d/orphan"), b"data synced, name not");
    fs::create_dir(root.join("d/subdir")).unwrap();
    fs::create_dir(root.join("unsynced-dir")).unwrap();

    let report = fs.cut_power();
    assert_eq!(report.inodes_vanished, 3, "{report}");
    assert_eq!(seen_by_new_process(&fs), expect(&[("d", dir(0))]));

    write_synced(&root.join("d/kept"), b"data and name synced");
    fsync_dir(&root.join("d"));
    fs.cut_power();
    assert_eq!(
        seen_by_new_process(&fs),
        expect(&[("d", dir(0)), ("d/kept", contents(b"data and name synced"))])
    );
}

#[test]
fn an_empty_file_whose_name_is_synced_survives_empty() {
    let fs = mount();
    let root = fs.mountpoint();
    let mut created = File::create(root.join("f")).unwrap();
    fsync_dir(root);
    created.write_all(b"never synced").unwrap();
    fs.cut_power();
    assert_eq!(seen_by_new_process(&fs), expect(&[("f", contents(b""))]));
}

#[test]
fn rename_is_undone_unless_both_directories_are_synced() {
    let fs = mount();
    let root = fs.mountpoint();
    for d in ["a", "b"] {
        fs::create_dir(root.join(d)).unwrap();
    }
    fsync_dir(root);
    write_durable(&root.join("a/x"), b"payload");
    let durable_start = expect(&[("a", dir(0)), ("b", dir(0)), ("a/x", contents(b"payload"))]);

    fs::rename(root.join("a/x"), root.join("b/y")).unwrap();
    fs.cut_power();
    assert_eq!(seen_by_new_process(&fs), durable_start, "unsynced rename");

    fs::rename(root.join("a/x"), root.join("b/y")).unwrap();
    fsync_dir(&root.join("a"));
    fsync_dir(&root.join("b"));
    fs.cut_power();
    let moved = expect(&[("a", dir(0)), ("b", dir(0)), ("b/y", contents(b"payload"))]);
    assert_eq!(
        seen_by_new_process(&fs),
        moved,
        "rename with both directories synced"
    );

    // Strictly, syncing only the target directory makes the new name durable while the old one
    // still is: the file has two names after the cut.
    fs::rename(root.join("b/y"), root.join("a/x")).unwrap();
    fsync_dir(&root.join("a"));
    fs.cut_power();
    let two_names = file_line(b"payload", 2);
    assert_eq!(
        seen_by_new_process(&fs),
        expect(&[
            ("a", dir(0)),
            ("b", dir(0)),
            ("a/x", two_names.clone()),
            ("b/y", two_names.clone()),
        ])
    );

    // The classic atomic replace: write a temp file, fsync it, rename it over, fsync the dir.
    write_synced(&root.join("b/y.tmp"), b"replacement");
    fs::rename(root.join("b/y.tmp"), root.join("b/y")).unwrap();
    fs.cut_power();
    assert_eq!(
        seen_by_new_process(&fs),
        expect(&[
            ("a", dir(0)),
            ("b", dir(0)),
            ("a/x", two_names.clone()),
            ("b/y", two_names),
        ]),
        "replace without a directory fsync"
    );
    write_synced(&root.join("b/y.tmp"), b"replacement");
    fs::rename(root.join("b/y.tmp"), root.join("b/y")).unwrap();
    fsync_dir(&root.join("b"));
    fs.cut_power();
    assert_eq!(
        seen_by_new_process(&fs),
        expect(&[
            ("a", dir(0)),
            ("b", dir(0)),
            ("a/x", contents(b"payload")),
            ("b/y", contents(b"replacement")),
        ])
    );
}

#[test]
fn unlink_and_rmdir_are_undone_without_a_directory_fsync() {
    let fs = mount();
    let root = fs.mountpoint();
    fs::create_dir(root.join("empty")).unwrap();
    write_durable(&root.join("f"), b"durable data");
    append(&root.join("f"), b" and an unsynced tail");
    let durable = expect(&[("empty", dir(0)), ("f", contents(b"durable data"))]);

    fs::remove_file(root.join("f")).unwrap();
    fs::remove_dir(root.join("empty")).unwrap();
    assert!(describe_tree(root).is_empty());
    let report = fs.cut_power();
    assert_eq!(report.entries_reverted, 2, "{report}");
    assert_eq!(seen_by_new_process(&fs), durable);

    fs::remove_file(root.join("f")).unwrap();
    fs::remove_dir(root.join("empty")).unwrap();
    fsync_dir(root);
    fs.cut_power();
    assert!(seen_by_new_process(&fs).is_empty());
}

#[test]
fn an_unlinked_file_stays_readable_through_its_open_handle() {
    let fs = mount();
    let root = fs.mountpoint();
    write_durable(&root.join("f"), b"still here");
    let mut open = File::open(root.join("f")).unwrap();
    fs::remove_file(root.join("f")).unwrap();
    fsync_dir(root);
    let mut data = String::new();
    open.read_to_string(&mut data).unwrap();
    assert_eq!(data, "still here");
    assert_eq!(open.metadata().unwrap().nlink(), 0);
}

#[test]
fn truncation_is_durable_only_with_an_fsync() {
    let fs = mount();
    let root = fs.mountpoint();
    let path = root.join("f");
    let original = vec![b'a'; 10_000];
    write_durable(&path, &original);

    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100)
        .unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 100);
    fs.cut_power();
    assert_eq!(
        seen_by_new_process(&fs),
        expect(&[("f", file_line(&original, 1))])
    );

    // O_TRUNC through File::create, never synced.
    File::create(&path).unwrap().write_all(b"new").unwrap();
    fs.cut_power();
    assert_eq!(
        seen_by_new_process(&fs),
        expect(&[("f", file_line(&original, 1))])
    );

    // Shrink, then grow past the old end with a write: the gap reads as zeros, not as the old
    // bytes, after the cut too.
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(100).unwrap();
    file.write_all_at(b"z", 12_000).unwrap();
    file.sync_all().unwrap();
    file.set_len(50).unwrap();
    drop(file);
    fs.cut_power();
    let mut expected = vec![b'a'; 100];
    expected.resize(12_000, 0);
    expected.push(b'z');
    assert_eq!(
        seen_by_new_process(&fs),
        expect(&[("f", file_line(&expected, 1))])
    );
    assert_eq!(fs::read(&path).unwrap(), expected);
}

#[test]
fn a_50_mib_log_synced_every_64_kib_reverts_to_its_last_sync() {
    const BLOCK: usize = 4096;
    const SYNC_EVERY: usize = 64 * 1024;
    const SYNCED_LEN: usize = 50 << 20;
    const UNSYNCED_TAIL: usize = 60 * 1024;

    let fs = mount();
    let root = fs.mountpoint();
    let block = |i: usize| -> Vec<u8> {
        let mut block = vec![(i % 251) as u8; BLOCK];
        block[..8].copy_from_slice(&(i as u64).to_le_bytes());
        block
    };
    let path = root.join("wal.log");
    let mut log = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .unwrap();
    fsync_dir(root);
    let started = Instant::now();
    let mut fsyncs = 0;
    for i in 0..(SYNCED_LEN + UNSYNCED_TAIL) / BLOCK {
        log.write_all(&block(i)).unwrap();
        if ((i + 1) * BLOCK).is_multiple_of(SYNC_EVERY) {
            log.sync_data().unwrap();
            fsyncs += 1;
        }
    }
    let elapsed = started.elapsed();
    drop(log);
    println!(
        "50 MiB + 60 KiB in 4 KiB appends with {fsyncs} fdatasyncs took {elapsed:?} ({:.1} MiB/s)",
        (SYNCED_LEN + UNSYNCED_TAIL) as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
    );
    assert!(
        elapsed < Duration::from_secs(60),
        "writing the log took {elapsed:?}"
    );

    let report = fs.cut_power();
    println!("cut: {report}");
    assert_eq!(report.unsynced_pages, (UNSYNCED_TAIL / BLOCK) as u64);
    let expected: Vec<u8> = (0..SYNCED_LEN / BLOCK).flat_map(block).collect();
    assert_eq!(
        seen_by_new_process(&fs),
        expect(&[("wal.log", contents(&expected))])
    );
}

fn fallocate(file: &File, mode: i32, offset: i64, len: i64) -> std::io::Result<()> {
    // SAFETY: a plain syscall on a file descriptor `file` keeps open for the call.
    if unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn fallocate_grows_keeps_size_and_punches_holes() {
    let fs = mount();
    let root = fs.mountpoint();
    let path = root.join("f");
    write_durable(&path, &[b'x'; 8192]);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();

    fallocate(&file, libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20).unwrap();
    assert_eq!(
        file.metadata().unwrap().len(),
        8192,
        "KEEP_SIZE keeps the size"
    );
    fallocate(&file, 0, 4096, 100_000).unwrap();
    assert_eq!(
        file.metadata().unwrap().len(),
        104_096,
        "mode 0 grows the file"
    );
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    fallocate(&file, punch, 100, 4096).unwrap();
    assert_eq!(
        errno(fallocate(&file, libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096)),
        libc::EOPNOTSUPP
    );
    let mut expected = vec![b'x'; 8192];
    expected[100..4196].fill(0);
    expected.resize(104_096, 0);
    assert_eq!(fs::read(&path).unwrap(), expected);
    file.sync_data().unwrap();

    fallocate(&file, 0, 0, 500_000).unwrap();
    drop(file);
    fs.cut_power();
    assert_eq!(
        seen_by_new_process(&fs),
        expect(&[("f", file_line(&expected, 1))])
    );
}

#[test]
fn hard_links_share_data_and_need_a_directory_fsync() {
    let fs = mount();
    let root = fs.mountpoint();
    write_durable(&root.join("f"), b"v1");
    fs::hard_link(root.join("f"), root.join("g")).unwrap();
    assert_eq!(fs::metadata(root.join("f")).unwrap().nlink(), 2);
    write_synced(&root.join("g"), b"v2 through g");
    assert_eq!(fs::read(root.join("f")).unwrap(), b"v2 through g");
    assert_eq!(
        fs::metadata(root.join("f")).unwrap().ino(),
        fs::metadata(root.join("g")).unwrap().ino()
    );

    fs.cut_power();
    assert_eq!(
        seen_by_new_process(&fs),
        expect(&[("f", contents(b"v2 through g"))])
    );

    fs::hard_link(root.join("f"), root.join("g")).unwrap();
    fsync_dir(root);
    fs::remove_file(root.join("f")).unwrap();
    fs.cut_power();
    let both = file_line(b"v2 through g", 2);
    assert_eq!(
        seen_by_new_process(&fs),
        expect(&[("f", both.clone()), ("g", both)])
    );
}

#[test]
fn readdir_after_a_cut_lists_exactly_the_durable_entries() {
    let fs = mount();
    let root = fs.mountpoint();
    fs::create_dir_all(root.join("db/archive")).unwrap();
    fsync_dir(root);
    let db = root.join("db");
    for i in 0..300 {
        File::create(db.join(format!("{i:06}.sst"))).unwrap();
        if i == 149 {
            fsync_dir(&db);
        }
    }
    assert_eq!(fs::read_dir(&db).unwrap().count(), 301);
    fs.cut_power();

    let mut expected = vec![("db", dir(1)), ("db/archive", dir(0))];
    let names: Vec<String> = (0..150).map(|i| format!("db/{i:06}.sst")).collect();
    expected.extend(names.iter().map(|name| (name.as_str(), contents(b""))));
    let expected = expect(&expected);
    assert_eq!(seen_by_new_process(&fs), expected);
    assert_eq!(describe_tree(root), expected);
}

#[test]
fn two_threads_write_concurrently() {
    const RECORDS: usize = 2000;
    let fs = mount();
    let root = fs.mountpoint().to_path_buf();
    File::create(root.join("shared")).unwrap();
    fsync_dir(&root);
    let writers: Vec<_> = (0..2u8)
        .map(|t| {
            let root = root.clone();
            std::thread::spawn(move || {
                let own = root.join(format!("own-{t}"));
                let mut log = File::create(&own).unwrap();
                let shared = OpenOptions::new()
                    .write(true)
                    .open(root.join("shared"))
                    .unwrap();
                for i in 0..RECORDS {
                    log.write_all(&[t; 100]).unwrap();
                    // Interleaved 100-byte slots of the shared file, so the threads' writes
                    // share pages.
                    shared
                        .write_all_at(&[b'a' + t; 100], ((2 * i + t as usize) * 100) as u64)
                        .unwrap();
                    if i % 50 == 49 {
                        log.sync_data().unwrap();
                        shared.sync_data().unwrap();
                    }
                }
                log.sync_all().unwrap();
                shared.sync_all().unwrap();
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer thread panicked");
    }
    fsync_dir(&root);
    append(&root.join("own-0"), b"unsynced");

    fs.cut_power();
    let shared: Vec<u8> = (0..2 * RECORDS)
        .flat_map(|slot| [b'a' + (slot % 2) as u8; 100])
        .collect();
    assert_eq!(
        seen_by_new_process(&fs),
        expect(&[
            ("own-0", contents(&[0; 100 * RECORDS])),
            ("own-1", contents(&[1; 100 * RECORDS])),
            ("shared", contents(&shared)),
        ])
    );
}

#[test]
fn attributes_flags_and_errors_behave_like_a_disk_filesystem() {
    let fs = mount();
    let root = fs.mountpoint();
    let path = root.join("f");
    write_durable(&path, b"x");

    // Mode: durable with fsync only.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
    fs.cut_power();
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o644);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    File::open(&path).unwrap().sync_all().unwrap();
    fs.cut_power();
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);

    // Times.
    let mtime = fs::metadata(&path).unwrap().mtime();
    std::thread::sleep(Duration::from_millis(1100));
    append(&path, b"y");
    assert!(
        fs::metadata(&path).unwrap().mtime() > mtime,
        "a write moves mtime"
    );

    // Open flags.
    let exclusive = OpenOptions::new().write(true).create_new(true).open(&path);
    assert_eq!(errno(exclusive), libc::EEXIST);
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"z")
        .unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"xyz");
    assert_eq!(errno(File::open(root.join("missing"))), libc::ENOENT);

    // Directory operations and their errors.
    fs::create_dir(root.join("d")).unwrap();
    write_durable(&root.join("d/inner"), b"");
    fs::create_dir(root.join("e")).unwrap();
    assert_eq!(errno(fs::create_dir(root.join("d"))), libc::EEXIST);
    assert_eq!(errno(fs::remove_dir(root.join("d"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::remove_file(root.join("d"))), libc::EISDIR);
    assert_eq!(errno(fs::remove_dir(&path)), libc::ENOTDIR);
    assert_eq!(
        errno(fs::rename(root.join("e"), root.join("d"))),
        libc::ENOTEMPTY
    );
    assert_eq!(errno(fs::rename(&path, root.join("d"))), libc::EISDIR);
    assert_eq!(errno(fs::rename(root.join("d"), &path)), libc::ENOTDIR);
    assert_eq!(
        errno(fs::rename(root.join("d"), root.join("d/inner/x"))),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(fs::rename(root.join("d"), root.join("d/sub"))),
        libc::EINVAL
    );
    assert_eq!(
        errno(File::open(root.join("f/below-a-file"))),
        libc::ENOTDIR
    );
    fs::rename(root.join("e"), root.join("d/e")).unwrap();
    assert_eq!(fs::metadata(root.join("d")).unwrap().nlink(), 3);

    // Symlinks.
    std::os::unix::fs::symlink("d/inner", root.join("link")).unwrap();
    assert_eq!(
        fs::read_link(root.join("link")).unwrap(),
        Path::new("d/inner")
    );
    assert_eq!(fs::read(root.join("link")).unwrap(), b"");

    // statfs: plenty of space and inodes.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let c_path = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path and a statvfs buffer that outlive the call.
    assert_eq!(unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) }, 0);
    let free = stat.f_bavail * stat.f_frsize;
    assert!(free >= 1 << 40, "statfs reports only {free} bytes free");
    assert!(stat.f_favail >= 1 << 30);
}

#[test]
fn flock_and_fcntl_locks_are_enforced() {
    let fs = mount();
    let lock_path = fs.mountpoint().join("LOCK");
    let first = File::create(&lock_path).unwrap();
    let second = File::open(&lock_path).unwrap();

    // SAFETY: flock on descriptors the files keep open.
    assert_eq!(
        unsafe { libc::flock(first.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let refused = unsafe { libc::flock(second.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(refused, -1, "a second flock on the file must be refused");
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EWOULDBLOCK)
    );

    // Record locks (RocksDB's LOCK file uses fcntl F_SETLK). Open-file-description locks
    // conflict between two opens of one process, so one process can check the refusal.
    let write_lock = |file: &File| {
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = libc::F_WRLCK as i16;
        lock.l_whence = libc::SEEK_SET as i16;
        // SAFETY: fcntl with a valid descriptor and a flock struct that outlives the call.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let writable_second = OpenOptions::new().write(true).open(&lock_path).unwrap();
    write_lock(&first).unwrap();
    assert_eq!(errno(write_lock(&writable_second)), libc::EAGAIN);
    drop(first);
    write_lock(&writable_second).unwrap();
}

#[test]
fn handles_opened_before_a_cut_fail_with_eio() {
    let fs = mount();
    let path = fs.mountpoint().join("f");
    write_durable(&path, b"durable");
    let mut survivor = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    fs.cut_power();
    assert_eq!(errno(survivor.write_all(b"x")), libc::EIO);
    assert_eq!(fs::read(&path).unwrap(), b"durable", "a fresh open works");
}

#[test]
fn many_cuts_in_a_row_keep_the_durable_state() {
    let fs = mount();
    let root = fs.mountpoint();
    fs::create_dir(root.join("d")).unwrap();
    fsync_dir(root);
    let mut expected = vec![("d".to_string(), dir(0))];
    for round in 0..20 {
        let durable = format!("d/durable-{round:02}");
        write_durable(&root.join(&durable), durable.as_bytes());
        expected.push((
            durable,
            contents(format!("d/durable-{round:02}").as_bytes()),
        ));
        write_synced(&root.join(format!("d/lost-{round}")), b"name never synced");
        append(&root.join("d/durable-00"), b"unsynced");
        fs.cut_power();
        let expected: BTreeMap<String, String> = expected.iter().cloned().collect();
        assert_eq!(describe_tree(root), expected, "round {round}");
    }
    let expected: BTreeMap<String, String> = expected.into_iter().collect();
    assert_eq!(seen_by_new_process(&fs), expected);
}

fn mounted_here(mountpoint: &Path) -> bool {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = mountpoint.to_string_lossy().into_owned();
    table
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
}

#[test]
fn drop_unmounts_even_while_a_file_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().canonicalize().unwrap();
    let fs = PowerFs::mount(&mountpoint).unwrap();
    assert!(mounted_here(&mountpoint));
    drop(fs);
    assert!(!mounted_here(&mountpoint));

    let fs = PowerFs::mount(&mountpoint).unwrap();
    let open = File::create(mountpoint.join("busy")).unwrap();
    drop(fs);
    assert!(!mounted_here(&mountpoint), "a busy mount is detached");
    drop(open);
    assert!(fs::read_dir(&mountpoint).unwrap().next().is_none());
}

#[test]
fn a_mount_left_by_a_killed_process_is_detached_by_the_next_mount() {
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().canonicalize().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_mounts_and_waits",
            "--ignored",
            "--nocapture",
        ])
        .env(MOUNT_AND_WAIT_VAR, &mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mounted = lines.any(|line| line.unwrap() == format!("{CHILD_LINE}mounted"));
    assert!(mounted, "the child did not mount PowerFs");
    assert!(mounted_here(&mountpoint));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        errno(fs::read_dir(&mountpoint)),
        libc::ENOTCONN,
        "the dead child's mount is stale"
    );

    let _fresh = mount();
    assert!(!mounted_here(&mountpoint), "the stale mount was detached");
    assert!(fs::read_dir(&mountpoint).unwrap().next().is_none());
}

/// A shared read-only mapping of `file`'s first `len` bytes, copied out when read.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn shared(file: &File, len: usize) -> std::io::Result<Mapping> {
        // SAFETY: a fresh mapping of an open descriptor; the kernel picks the address, and the
        // mapping outlives the descriptor on its own.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping { addr, len })
    }

    fn read(&self) -> Vec<u8> {
        // SAFETY: `len` readable bytes are mapped at `addr` until the drop.
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) }.to_vec()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `shared` mapped, once.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// etcd's bbolt reads its database through a shared mapping: it works, shows later writes, and
/// a mapping made after a cut shows what was synced, not a page cached before the cut.
#[test]
fn a_shared_mapping_shows_writes_and_after_a_cut_only_what_was_synced() {
    let fs = mount();
    let path = fs.mountpoint().join("db");
    write_durable(&path, b"synced: 1");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mapping = Mapping::shared(&file, 9).expect("a shared mapping of a PowerFs file");
    assert_eq!(mapping.read(), b"synced: 1");
    file.write_all_at(b"written", 0).unwrap();
    assert_eq!(
        mapping.read(),
        b"written 1",
        "the mapping shows a later write"
    );
    drop((mapping, file));

    fs.cut_power();
    let file = File::open(&path).unwrap();
    assert_eq!(Mapping::shared(&file, 9).unwrap().read(), b"synced: 1");
}
