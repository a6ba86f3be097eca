//! What a store of N keys costs a server: memory and disk once loaded, a snapshot through the
//! Maintenance.Snapshot stream and its restore with the server's own tool, and how long a clean
//! restart takes until a linearizable read succeeds again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::{Client, KvClient, Txn, TxnOp};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::io::AsyncWriteExt;

use crate::connection::Endpoints;
use crate::load::{
    random_value, run_load, KeyGenerator, KeyShape, LoadReport, LoadShape, Requester,
};
use crate::server::{root_cause, run_measured, Cluster, Measured};

/// A restarted cluster that does not serve a read within this long has failed.
const RESTART_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound of each read attempt after the restart, so an attempt cannot hang on a half-started
/// server; attempts follow each other this often, which is the resolution of the restart time.
const RESTART_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const RESTART_PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// Puts per transaction while loading: what is measured is the store's content, and batches
/// load it in a fraction of the time single puts take (etcd allows up to 128 operations per txn).
pub const LOAD_BATCH: u64 = 100;
/// Clients and connections that load the keys.
pub const LOAD_CLIENTS: (u64, u64) = (100, 10);

pub struct Footprint {
    /// The transactions that stored the keys.
    pub load: LoadReport,
    pub keys_per_second: f64,
    /// All members together, after the settle.
    pub rss_bytes: u64,
    pub data_dir_bytes: u64,
    /// From starting the processes again to the first linearizable Get that succeeded.
    pub restart: Duration,
    /// The snapshot through member 1, or why there is none.
    pub snapshot: Result<SavedSnapshot, String>,
    /// Seconds the restore took, or why it was not measured.
    pub restore: Result<f64, String>,
}

pub struct SavedSnapshot {
    pub bytes: u64,
    pub seconds: f64,
}

/// How a server's snapshot file is turned back into a data dir.
pub enum Restorer {
    /// `BINARY snapshot restore FILE --data-dir DIR`, as etcdctl spells it; `scratch` holds the
    /// snapshot file and the restored dir, and is removed afterwards.
    Command { binary: PathBuf, scratch: PathBuf },
    /// The restore cannot be measured, for this reason.
    Missing(String),
}

/// Stores every key of `keys` once (in transactions of `LOAD_BATCH` puts of `val_size` random
/// bytes), lets the cluster settle for `settle`, then measures memory, disk,
/// snapshot, restore and restart, in that order (the restart last, so it does not reset the
/// memory being measured). Nothing is compacted or defragmented: every key is written once, so
/// there is no history to compact.
pub async fn measure(
    cluster: &mut Cluster,
    keys: &KeyShape,
    val_size: usize,
    settle: Duration,
    restorer: &Restorer,
    label: &str,
) -> Result<Footprint> {
    let endpoints = cluster.client_urls();
    eprintln!("{label}: loading {} keys", keys.key_space);
    let report = load_keys(&Endpoints::plain(endpoints.clone()), keys, val_size).await?;
    let keys_per_second = keys.key_space as f64 / report.wall.as_secs_f64();
    eprintln!("{label}: loaded at {keys_per_second:.1} keys/s");
    tokio::time::sleep(settle).await;
    let rss_bytes = cluster.rss_bytes()?;
    let data_dir_bytes = cluster.data_dir_bytes()?;

    let (snapshot, restore) = match restorer {
        Restorer::Command { binary, scratch } => {
            std::fs::create_dir_all(scratch)?;
            let file = scratch.join("snapshot.db");
            let snapshot = save_snapshot(&endpoints[0], &file).await;
            let restore = match &snapshot {
                Ok(_) => restore_snapshot(binary, &file, &scratch.join("restored"))
                    .await
                    .map(|restored| restored.seconds),
                Err(why) => Err(format!("no snapshot to restore ({why})")),
            };
            std::fs::remove_dir_all(scratch)?;
            (snapshot, restore)
        }
        Restorer::Missing(why) => {
            let scratch = tempfile::tempdir()?;
            let snapshot = save_snapshot(&endpoints[0], &scratch.path().join("snapshot.db")).await;
            (snapshot, Err(why.clone()))
        }
    };
    match &snapshot {
        Ok(saved) => eprintln!(
            "{label}: snapshot of {} bytes in {:.3} s",
            saved.bytes, saved.seconds
        ),
        Err(why) => eprintln!("{label}: snapshot {why}"),
    }

    let restart = restart_to_serving(cluster).await?;
    eprintln!(
        "{label}: serving {:.3} s after the restart",
        restart.as_secs_f64()
    );
    Ok(Footprint {
        load: report,
        keys_per_second,
        rss_bytes,
        data_dir_bytes,
        restart,
        snapshot,
        restore,
    })
}

/// Puts keys 0..key_space of `keys` in transactions of `LOAD_BATCH`, from `LOAD_CLIENTS`; fails
/// if any transaction did. The values are random bytes, the same on every run, so two servers
/// store the same data.
pub async fn load_keys(
    endpoints: &Endpoints,
    keys: &KeyShape,
    val_size: usize,
) -> Result<LoadReport> {
    let generator = KeyGenerator::new(keys, true)?;
    let batches = keys.key_space.div_ceil(LOAD_BATCH);
    let shape = LoadShape::unpaced(LOAD_CLIENTS.0, LOAD_CLIENTS.1, batches);
    let report = run_load(endpoints, &shape, |connection, _| {
        let loader = BatchLoader {
            kv: connection.kv_client(),
            keys: generator.clone(),
            val_size,
        };
        async { Ok(loader) }
    })
    .await?;
    if let Some(error) = &report.first_error {
        bail!("{} of {} txns failed: {error}", report.errors, report.total);
    }
    Ok(report)
}

/// Ticket t puts keys t·LOAD_BATCH up to the next batch (or the end of the key space), with
/// values drawn from a generator seeded by the ticket.
struct BatchLoader {
    kv: KvClient,
    keys: KeyGenerator,
    val_size: usize,
}

impl Requester for BatchLoader {
    async fn issue(&mut self, ticket: u64) -> Result<()> {
        let first = ticket * LOAD_BATCH;
        let end = (first + LOAD_BATCH).min(self.keys.key_space());
        let mut rng = StdRng::seed_from_u64(ticket);
        let puts: Vec<TxnOp> = (first..end)
            .map(|index| {
                let value = random_value(self.val_size, &mut rng);
                TxnOp::put(self.keys.key_at(index), value, None)
            })
            .collect();
        self.kv.txn(Txn::new().and_then(puts)).await?;
        Ok(())
    }
}

/// Streams Maintenance.Snapshot from `endpoint` into `file` (synced, as `etcdctl snapshot save`
/// does). A server without the RPC is "not supported", not a failure of the run.
async fn save_snapshot(endpoint: &str, file: &Path) -> Result<SavedSnapshot, String> {
    let describe = |error: etcd_client::Error| match &error {
        etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::Unimplemented => {
            format!("not supported (Unimplemented: {})", status.message())
        }
        _ => format!("failed: {}", root_cause(&error)),
    };
    let io_failure = |error: std::io::Error| format!("failed: {}: {error}", file.display());
    let client = Client::connect([endpoint], None).await.map_err(describe)?;
    let started = Instant::now();
    let mut stream = client
        .maintenance_client()
        .snapshot()
        .await
        .map_err(describe)?;
    let mut out = tokio::fs::File::create(file).await.map_err(io_failure)?;
    let mut bytes = 0;
    while let Some(chunk) = stream.message().await.map_err(describe)? {
        out.write_all(chunk.blob()).await.map_err(io_failure)?;
        bytes += chunk.blob().len() as u64;
    }
    out.sync_all().await.map_err(io_failure)?;
    Ok(SavedSnapshot {
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `binary snapshot restore file --data-dir into`, timed, with its peak memory.
pub async fn restore_snapshot(binary: &Path, file: &Path, into: &Path) -> Result<Measured, String> {
    let mut command = std::process::Command::new(binary);
    command
        .env("ETCDCTL_API", "3")
        .arg("snapshot")
        .arg("restore")
        .arg(file)
        .arg("--data-dir")
        .arg(into);
    let restored = run_measured(command)
        .await
        .map_err(|error| format!("failed: {error:#}"))?;
    if restored.status.success() {
        return Ok(restored);
    }
    let last_line = restored
        .stderr
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty());
    let why = last_line.unwrap_or("(no output)").trim();
    if why.contains("unknown command") || why.contains("unrecognized subcommand") {
        Err(format!("not supported ({why})"))
    } else {
        Err(format!("failed ({}): {why}", restored.status))
    }
}

/// Shuts every member down cleanly, starts them again, and returns how long after the start a
/// linearizable Get through member 1 first succeeded.
async fn restart_to_serving(cluster: &mut Cluster) -> Result<Duration> {
    let endpoint = cluster.client_urls()[0].clone();
    cluster.shut_down().await?;
    let started = Instant::now();
    cluster.restart_all()?;
    loop {
        let attempt = async {
            let mut client = Client::connect([endpoint.as_str()], None).await?;
            client.get("oxcd-bench-restart", None).await
        };
        if let Ok(Ok(_)) = tokio::time::timeout(RESTART_PROBE_TIMEOUT, attempt).await {
            return Ok(started.elapsed());
        }
        if started.elapsed() > RESTART_TIMEOUT {
            return Err(anyhow::anyhow!("no linearizable Get succeeded"))
                .with_context(|| format!("{RESTART_TIMEOUT:?} after the restart"));
        }
        tokio::time::sleep(RESTART_PROBE_INTERVAL).await;
    }
}
