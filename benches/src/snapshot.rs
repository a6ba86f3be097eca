//! `oxcd-bench snapshot`: what backing up and restoring a store of N keys costs with each
//! server's own tools. The same keys and values go into a fresh one-member etcd and a fresh
//! one-member oxcd; each is saved by its ctl (`etcdctl snapshot save`, `oxcdctl snapshot save`),
//! timed, with the file's size. Then etcd's file is restored by `etcdutl snapshot restore` and
//! by `oxcdctl snapshot restore`, and oxcd's by oxcdctl, each timed with its peak memory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

use crate::connection::Endpoints;
use crate::footprint::{load_keys, restore_snapshot};
use crate::load::KeyShape;
use crate::server::{apparent_size, new_work_dir, run_measured, Cluster};

/// Both servers' `--quota-backend-bytes` (etcd's largest recommended), so that loads of
/// several GB, with their garbage awaiting compaction, stay clear of the 2 GiB default.
const QUOTA_BYTES: u64 = 8 << 30;

#[derive(clap::Args, Debug)]
pub struct SnapshotArgs {
    /// The oxcd server binary.
    #[arg(long)]
    oxcd_bin: PathBuf,
    /// oxcdctl: saves oxcd's snapshot, restores etcd's and oxcd's.
    #[arg(long)]
    oxcdctl_bin: PathBuf,
    /// The etcd server binary (3.7).
    #[arg(long)]
    etcd_bin: PathBuf,
    /// etcdctl: saves etcd's snapshot.
    #[arg(long)]
    etcdctl_bin: PathBuf,
    /// etcdutl: restores etcd's snapshot.
    #[arg(long)]
    etcdutl_bin: PathBuf,
    /// How many keys to store.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Bytes of each value: random, the same on both servers (a transaction of 100 puts must
    /// stay under the servers' 1.5 MiB request limit).
    #[arg(long, default_value_t = 8192)]
    value_size: usize,
    /// Directory for report.md and results.json; created if missing.
    #[arg(long)]
    out: PathBuf,
}

/// Loading one server.
struct Load {
    server: &'static str,
    seconds: f64,
    data_dir_bytes: u64,
}

/// One `snapshot save`.
struct Save {
    server: &'static str,
    tool: &'static str,
    seconds: f64,
    file_bytes: u64,
    peak_rss_bytes: u64,
}

/// One `snapshot restore` of one server's file.
struct Restore {
    tool: &'static str,
    file_of: &'static str,
    seconds: f64,
    peak_rss_bytes: u64,
    data_dir_bytes: u64,
}

struct Results {
    keys: u64,
    value_size: usize,
    loads: Vec<Load>,
    saves: Vec<Save>,
    restores: Vec<Restore>,
}

pub async fn run(args: SnapshotArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let work_dir = new_work_dir()?;
    let mut results = Results {
        keys: args.keys,
        value_size: args.value_size,
        loads: Vec::new(),
        saves: Vec::new(),
        restores: Vec::new(),
    };
    let servers = [
        ("etcd", &args.etcd_bin, "etcdctl", &args.etcdctl_bin),
        ("oxcd", &args.oxcd_bin, "oxcdctl", &args.oxcdctl_bin),
    ];
    for (server, binary, tool, ctl) in servers {
        let label = format!("{server} ({} keys)", args.keys);
        let quota = format!("--quota-backend-bytes={QUOTA_BYTES}");
        let cluster =
            Cluster::start_ready_with(&label, binary, &work_dir.join(server), 1, &[&quota]).await?;
        let keys = KeyShape {
            key_size: crate::compare::KEY_SIZE,
            key_space: args.keys,
        };
        let endpoints = Endpoints::plain(cluster.client_urls());
        let loaded = load_keys(&endpoints, &keys, args.value_size).await?;
        results.loads.push(Load {
            server,
            seconds: loaded.wall.as_secs_f64(),
            data_dir_bytes: cluster.data_dir_bytes()?,
        });
        eprintln!("{label}: loaded in {:.1?}", loaded.wall);

        let file = snapshot_file(&work_dir, server);
        let mut save = std::process::Command::new(ctl);
        save.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", cluster.client_urls()[0]))
            .args(["snapshot", "save"])
            .arg(&file);
        let saved = run_measured(save).await?;
        if !saved.status.success() {
            bail!(
                "{tool} snapshot save failed ({}): {}",
                saved.status,
                saved.stderr
            );
        }
        let file_bytes = std::fs::metadata(&file)?.len();
        eprintln!(
            "{label}: {tool} saved {file_bytes} bytes in {:.1} s",
            saved.seconds
        );
        results.saves.push(Save {
            server,
            tool,
            seconds: saved.seconds,
            file_bytes,
            peak_rss_bytes: saved.peak_rss_bytes,
        });
        cluster.stop().await?;
    }

    let restores = [
        ("etcdutl", &args.etcdutl_bin, "etcd"),
        ("oxcdctl", &args.oxcdctl_bin, "etcd"),
        ("oxcdctl", &args.oxcdctl_bin, "oxcd"),
    ];
    for (tool, binary, file_of) in restores {
        let into = work_dir.join(format!("{tool}-restored-{file_of}"));
        let restored = restore_snapshot(binary, &snapshot_file(&work_dir, file_of), &into)
            .await
            .map_err(|why| anyhow!("{tool} snapshot restore of {file_of}'s file: {why}"))?;
        eprintln!(
            "{tool} restored {file_of}'s file in {:.1} s, peak {:.0} MiB",
            restored.seconds,
            mib(restored.peak_rss_bytes)
        );
        results.restores.push(Restore {
            tool,
            file_of,
            seconds: restored.seconds,
            peak_rss_bytes: restored.peak_rss_bytes,
            data_dir_bytes: apparent_size(&into)?,
        });
        // Each can be as large as the store.
        std::fs::remove_dir_all(&into)?;
    }
    for (server, ..) in servers {
        std::fs::remove_file(snapshot_file(&work_dir, server))?;
    }

    let markdown = results.to_markdown();
    std::fs::write(args.out.join("report.md"), &markdown)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&results.to_json())?,
    )?;
    print!("{markdown}");
    Ok(())
}

fn snapshot_file(work_dir: &Path, server: &str) -> PathBuf {
    work_dir.join(format!("{server}.db"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

impl Results {
    fn to_markdown(&self) -> String {
        let mut out = format!(
            "{} keys of {}-byte values, one member each.\n\n\
             | server | load s | data dir MiB | save | save s | file MiB | save peak MiB |\n\
             |---|---:|---:|---|---:|---:|---:|\n",
            self.keys, self.value_size
        );
        for (load, save) in self.loads.iter().zip(&self.saves) {
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.0} | {} snapshot save | {:.1} | {:.0} | {:.0} |",
                load.server,
                load.seconds,
                mib(load.data_dir_bytes),
                save.tool,
                save.seconds,
                mib(save.file_bytes),
                mib(save.peak_rss_bytes)
            );
        }
        out.push_str(
            "\n| restore | file | s | peak MiB | data dir MiB |\n|---|---|---:|---:|---:|\n",
        );
        for r in &self.restores {
            let _ = writeln!(
                out,
                "| {} snapshot restore | {}'s | {:.1} | {:.0} | {:.0} |",
                r.tool,
                r.file_of,
                r.seconds,
                mib(r.peak_rss_bytes),
                mib(r.data_dir_bytes)
            );
        }
        out
    }

    fn to_json(&self) -> serde_json::Value {
        let loads: Vec<_> = self
            .loads
            .iter()
            .map(|l| {
                serde_json::json!({
                    "server": l.server,
                    "seconds": l.seconds,
                    "data_dir_bytes": l.data_dir_bytes,
                })
            })
            .collect();
        let saves: Vec<_> = self
            .saves
            .iter()
            .map(|s| {
                serde_json::json!({
                    "server": s.server,
                    "tool": s.tool,
                    "seconds": s.seconds,
                    "file_bytes": s.file_bytes,
                    "peak_rss_bytes": s.peak_rss_bytes,
                })
            })
            .collect();
        let restores: Vec<_> = self
            .restores
            .iter()
            .map(|r| {
                serde_json::json!({
                    "tool": r.tool,
                    "file_of": r.file_of,
                    "seconds": r.seconds,
                    "peak_rss_bytes": r.peak_rss_bytes,
                    "data_dir_bytes": r.data_dir_bytes,
                })
            })
            .collect();
        serde_json::json!({
            "keys": self.keys,
            "value_size": self.value_size,
            "load": loads,
            "save": saves,
            "restore": restores,
        })
    }
}
