//! The range, txn-put, mixed and lease-keepalive workloads: the flags that shape each and the
//! `Requester` that turns a ticket into one request, all run by the shared loop in load.rs.

use anyhow::{bail, ensure, Context, Result};
use etcd_client::{GetOptions, KvClient, LeaseKeepAliveStream, LeaseKeeper, Txn, TxnOp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::connection::Endpoints;
use crate::load::{
    connect, random_value, run_load, run_puts, KeyGenerator, KeyShape, LoadReport, LoadShape,
    PutWorkload, Requester,
};

/// The consistency of a read, as `etcdctl --consistency` spells it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Consistency {
    /// Linearizable: the server confirms it is up to date (a read index) before answering.
    #[value(name = "l", alias = "linearizable")]
    Linearizable,
    /// Serializable: any member answers from its local state.
    #[value(name = "s", alias = "serializable")]
    Serializable,
}

/// The CLI flags of `oxcd-bench range`.
#[derive(clap::Args, Clone, Debug)]
pub struct RangeWorkload {
    #[command(flatten)]
    pub load: LoadShape,
    #[command(flatten)]
    pub keys: KeyShape,
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// Return at most this many keys per range; 0 for no limit.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub limit: i64,
    /// Range over the keys sharing all but the last N digits of a random key (up to 10^N keys)
    /// instead of getting that one key; N is 2 when not given.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "2")]
    pub prefix: Option<u32>,
    /// Return keys without their values.
    #[arg(long)]
    pub keys_only: bool,
    /// Before the run, put the first N keys of the key space (not measured), and read only those
    /// N keys, so every range finds data.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preload: u64,
    /// Exact length of every preloaded value in bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: u64,
}

/// Turns a random key number into one range request.
#[derive(Clone, Debug)]
struct RangeBuilder {
    keys: KeyGenerator,
    /// Trailing digits a prefix range leaves free; `None` gets a single key.
    prefix_digits: Option<usize>,
    options: GetOptions,
}

impl RangeBuilder {
    fn new(workload: &RangeWorkload, keys: KeyGenerator) -> Result<Self> {
        let prefix_digits = workload.prefix.map(|digits| digits as usize);
        if let Some(digits) = prefix_digits {
            ensure!(
                digits <= keys.key_size(),
                "--prefix {digits} is longer than the {}-byte keys",
                keys.key_size()
            );
        }
        let mut options = GetOptions::new().with_limit(workload.limit);
        if workload.consistency == Consistency::Serializable {
            options = options.with_serializable();
        }
        if workload.keys_only {
            options = options.with_keys_only();
        }
        if prefix_digits.is_some() {
            options = options.with_prefix();
        }
        Ok(Self {
            keys,
            prefix_digits,
            options,
        })
    }

    /// The key (or key prefix) a range for key number `index` asks for.
    fn key(&self, index: u64) -> Vec<u8> {
        let mut key = self.keys.key_at(index);
        if let Some(digits) = self.prefix_digits {
            key.truncate(key.len() - digits);
        }
        key
    }
}

struct RangeRequester {
    kv: KvClient,
    ranges: RangeBuilder,
    rng: StdRng,
}

impl Requester for RangeRequester {
    async fn issue(&mut self, _ticket: u64) -> Result<()> {
        let index = self.rng.gen_range(0..self.ranges.keys.key_space());
        let key = self.ranges.key(index);
        self.kv.get(key, Some(self.ranges.options.clone())).await?;
        Ok(())
    }
}

pub async fn run_ranges(endpoints: &Endpoints, workload: &RangeWorkload) -> Result<LoadReport> {
    let mut read_keys = workload.keys.clone();
    if workload.preload > 0 {
        ensure!(
            workload.preload <= workload.keys.key_space,
            "--preload {} is more than --key-space {}",
            workload.preload,
            workload.keys.key_space
        );
        preload(endpoints, workload).await?;
        read_keys.key_space = workload.preload;
    }
    let ranges = RangeBuilder::new(workload, KeyGenerator::new(&read_keys, false)?)?;
    run_load(endpoints, &workload.load, |connection, _| {
        let requester = RangeRequester {
            kv: connection.kv_client(),
            ranges: ranges.clone(),
            rng: StdRng::from_entropy(),
        };
        async { Ok(requester) }
    })
    .await
}

/// Puts keys 0..preload with the run's clients and connections, unpaced.
async fn preload(endpoints: &Endpoints, workload: &RangeWorkload) -> Result<()> {
    let puts = PutWorkload {
        load: LoadShape::unpaced(workload.load.clients, workload.load.conns, workload.preload),
        keys: workload.keys.clone(),
        val_size: workload.val_size,
        sequential_keys: true,
    };
    let report = run_puts(endpoints, &puts).await.context("preload failed")?;
    if let Some(error) = report.first_error {
        bail!(
            "{} of {} preload puts failed: {error}",
            report.errors,
            report.total
        );
    }
    Ok(())
}

/// The CLI flags of `oxcd-bench txn-put`.
#[derive(clap::Args, Clone, Debug)]
pub struct TxnPutWorkload {
    #[command(flatten)]
    pub load: LoadShape,
    #[command(flatten)]
    pub keys: KeyShape,
    /// Exact length of every value in bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: u64,
    /// Puts per transaction, each to a different random key.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    pub txn_ops: u64,
}

struct TxnPutRequester {
    kv: KvClient,
    keys: KeyGenerator,
    val_size: usize,
    txn_ops: usize,
    rng: StdRng,
}

impl TxnPutRequester {
    /// A transaction of `txn_ops` puts to distinct keys: etcd rejects a txn that puts one key
    /// twice ("duplicate key given in txn request").
    fn txn(&mut self) -> Txn {
        let puts: Vec<TxnOp> = self
            .keys
            .distinct_keys(self.txn_ops, &mut self.rng)
            .into_iter()
            .map(|key| TxnOp::put(key, random_value(self.val_size, &mut self.rng), None))
            .collect();
        Txn::new().and_then(puts)
    }
}

impl Requester for TxnPutRequester {
    async fn issue(&mut self, _ticket: u64) -> Result<()> {
        let txn = self.txn();
        self.kv.txn(txn).await?;
        Ok(())
    }
}

pub async fn run_txn_puts(endpoints: &Endpoints, workload: &TxnPutWorkload) -> Result<LoadReport> {
    ensure!(
        workload.txn_ops <= workload.keys.key_space,
        "--txn-ops {} needs at least that many keys, but --key-space is {}",
        workload.txn_ops,
        workload.keys.key_space
    );
    let keys = KeyGenerator::new(&workload.keys, false)?;
    let val_size = usize::try_from(workload.val_size).context("--val-size is too large")?;
    let txn_ops = usize::try_from(workload.txn_ops).context("--txn-ops is too large")?;
    run_load(endpoints, &workload.load, |connection, _| {
        let requester = TxnPutRequester {
            kv: connection.kv_client(),
            keys: keys.clone(),
            val_size,
            txn_ops,
            rng: StdRng::from_entropy(),
        };
        async { Ok(requester) }
    })
    .await
}

/// The CLI flags of `oxcd-bench mixed`.
#[derive(clap::Args, Clone, Debug)]
pub struct MixedWorkload {
    #[command(flatten)]
    pub load: LoadShape,
    #[command(flatten)]
    pub keys: KeyShape,
    /// Exact length of every value put, in bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: u64,
    /// Fraction of requests that are linearizable gets; the rest are puts to the same key space.
    #[arg(long, default_value_t = 0.9, value_parser = parse_ratio)]
    pub read_ratio: f64,
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|ratio| (0.0..=1.0).contains(ratio))
        .ok_or_else(|| format!("`{text}` is not a ratio between 0.0 and 1.0"))
}

struct MixedRequester {
    kv: KvClient,
    keys: KeyGenerator,
    val_size: usize,
    read_ratio: f64,
    rng: StdRng,
}

impl Requester for MixedRequester {
    async fn issue(&mut self, ticket: u64) -> Result<()> {
        let key = self.keys.key(ticket, &mut self.rng);
        if self.rng.gen_bool(self.read_ratio) {
            self.kv.get(key, None).await?;
        } else {
            let value = random_value(self.val_size, &mut self.rng);
            self.kv.put(key, value, None).await?;
        }
        Ok(())
    }
}

pub async fn run_mixed(endpoints: &Endpoints, workload: &MixedWorkload) -> Result<LoadReport> {
    let keys = KeyGenerator::new(&workload.keys, false)?;
    let val_size = usize::try_from(workload.val_size).context("--val-size is too large")?;
    run_load(endpoints, &workload.load, |connection, _| {
        let requester = MixedRequester {
            kv: connection.kv_client(),
            keys: keys.clone(),
            val_size,
            read_ratio: workload.read_ratio,
            rng: StdRng::from_entropy(),
        };
        async { Ok(requester) }
    })
    .await
}

/// The CLI flags of `oxcd-bench lease-keepalive`.
#[derive(clap::Args, Clone, Debug)]
pub struct LeaseKeepAliveWorkload {
    #[command(flatten)]
    pub load: LoadShape,
    /// Leases granted before the run and kept alive during it; they expire on their own after.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub leases: u64,
    /// TTL of the granted leases, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(i64).range(1..))]
    pub lease_ttl: i64,
}

/// The positions (in the granted leases) client `client` keeps alive: every lease belongs to
/// one client, so all of them are refreshed; with fewer leases than clients, clients share.
fn owned_leases(client: u64, clients: u64, leases: u64) -> Vec<u64> {
    if client < leases {
        (client..leases).step_by(clients as usize).collect()
    } else {
        vec![client % leases]
    }
}

/// Keeps its leases alive in turn, one keep-alive request and its response per request.
struct KeepAliveRequester {
    streams: Vec<(LeaseKeeper, LeaseKeepAliveStream)>,
    next: usize,
}

impl KeepAliveRequester {
    async fn open(mut leases: etcd_client::LeaseClient, ids: Vec<i64>) -> Result<Self> {
        let mut streams = Vec::new();
        for id in ids {
            // Opening the stream sends one keep-alive and waits for its answer: set-up, not load.
            streams.push(leases.keep_alive(id).await?);
        }
        Ok(Self { streams, next: 0 })
    }
}

impl Requester for KeepAliveRequester {
    async fn issue(&mut self, _ticket: u64) -> Result<()> {
        let lease = self.next;
        self.next = (lease + 1) % self.streams.len();
        let (keeper, stream) = &mut self.streams[lease];
        keeper.keep_alive().await?;
        let response = stream
            .message()
            .await?
            .context("the keep-alive stream closed")?;
        ensure!(
            response.ttl() > 0,
            "lease {:x} expired or is unknown",
            keeper.id()
        );
        Ok(())
    }
}

pub async fn run_lease_keep_alives(
    endpoints: &Endpoints,
    workload: &LeaseKeepAliveWorkload,
) -> Result<LoadReport> {
    let mut granter = connect(endpoints, 0).await?;
    let mut lease_ids = Vec::new();
    for _ in 0..workload.leases {
        let lease = granter
            .lease_grant(workload.lease_ttl, None)
            .await
            .context("granting the leases failed")?;
        lease_ids.push(lease.id());
    }
    let clients = workload.load.clients;
    run_load(endpoints, &workload.load, |connection, client| {
        let ids = owned_leases(client, clients, workload.leases)
            .into_iter()
            .map(|position| lease_ids[position as usize])
            .collect();
        KeepAliveRequester::open(connection.lease_client(), ids)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range_workload(prefix: Option<u32>) -> RangeWorkload {
        RangeWorkload {
            load: LoadShape::unpaced(1, 1, 1),
            keys: KeyShape {
                key_size: 8,
                key_space: 1000,
            },
            consistency: Consistency::Linearizable,
            limit: 0,
            prefix,
            keys_only: false,
            preload: 0,
            val_size: 0,
        }
    }

    fn ranges(prefix: Option<u32>) -> Result<RangeBuilder> {
        let workload = range_workload(prefix);
        RangeBuilder::new(&workload, KeyGenerator::new(&workload.keys, false)?)
    }

    #[test]
    fn a_prefix_range_drops_the_free_trailing_digits() {
        assert_eq!(ranges(None).unwrap().key(123), b"00000123");
        assert_eq!(ranges(Some(2)).unwrap().key(123), b"000001");
        assert_eq!(ranges(Some(8)).unwrap().key(123), b"");
        assert!(ranges(Some(9)).is_err());
    }

    #[test]
    fn every_lease_is_kept_alive_by_some_client() {
        assert_eq!(owned_leases(0, 3, 7), [0, 3, 6]);
        assert_eq!(owned_leases(2, 3, 7), [2, 5]);
        let mut all: Vec<u64> = (0..3)
            .flat_map(|client| owned_leases(client, 3, 7))
            .collect();
        all.sort();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
        // More clients than leases: the extra clients share leases.
        assert_eq!(owned_leases(1, 5, 2), [1]);
        assert_eq!(owned_leases(4, 5, 2), [0]);
    }

    #[test]
    fn read_ratios_lie_between_zero_and_one() {
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert_eq!(parse_ratio("1"), Ok(1.0));
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("-0.1").is_err());
        assert!(parse_ratio("NaN").is_err());
    }
}
