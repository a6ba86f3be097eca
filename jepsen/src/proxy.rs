//! Network fault injection without root: every peer and client link of a local cluster runs
//! through an in-process TCP proxy whose faults the harness changes at run time.
//!
//! # Design
//!
//! Members advertise one peer URL to everyone, and etcd and oxcd derive member ids from the URLs in
//! `--initial-cluster`, so every member must dial the same address for a given peer: per-pair
//! proxy addresses are impossible. [`Network`] therefore runs one peer proxy per *destination*
//! member (member `j` listens on its real peer port and advertises the address of proxy `j`), plus
//! one client proxy per member.
//!
//! Cutting a link needs the *source* too: both protocols carry traffic in both directions on
//! connections either side opened (oxcd's gRPC replies, etcd's stream GETs whose responses carry
//! the remote's messages), so blocking only what reaches `j` leaves `j` talking to everyone
//! through the connections `j` dialled. The source cannot come from the address (members do not
//! choose their source address, everything arrives from 127.0.0.1) or from the bytes (oxcd's
//! HTTP/2 headers are HPACK-compressed and carry only the cluster id; peers may use TLS). It comes
//! from the kernel instead: on accept, the proxy finds the dialling socket in `/proc/net/tcp` by its
//! address pair, then the member process holding that socket's inode in `/proc/<pid>/fd`. The
//! harness spawned the members as the same user, so no privilege is needed; it tells the network
//! their pids with [`Network::set_pid`]. Every connection thus belongs to an ordered link
//! (origin member → destination member), and its bytes in both directions obey that link's fault.
//!
//! Faults come in two layers that compose: the current [`Partition`] (cut pairs hold their
//! connections, see [`Fault::Hold`]) and per-link quality set by [`Network::set_peer_fault`]
//! (delay, loss, drop, reset); the harsher of the two applies. Changes reach existing connections
//! at once.
//!
//! # Limits
//!
//! - Partitions are symmetric and whole-connection: a cut pair exchanges nothing in either
//!   direction. One-way partitions are not offered, since a connection carries requests one way
//!   and replies the other, so "a hears b but b does not hear a" has no meaning per connection.
//! - Halves, isolation, bridges, majority rings and any other grouping are expressible for both
//!   etcd and oxcd, as long as every peer connection is identified. Identification needs Linux's
//!   `/proc`, a registered pid per member (re-registered after a restart) and members that dial
//!   from their own process (no wrapper shell holding the socket). A connection that cannot be
//!   identified gets the harshest fault any member would get towards that destination, so a
//!   partition can come out larger than asked but never smaller; [`Network::unidentified`] counts
//!   them so a run can show there were none.
//! - A held link still completes the TCP handshake with the proxy: the dialler sees a connection
//!   on which nothing arrives rather than a connect timeout. The proxy dials the member only once
//!   the link lets traffic through.
//! - Delay and loss work per chunk the proxy reads, not per packet; loss is emulated as a stall of
//!   the chunk and everything behind it, which is what TCP retransmission looks like from above.
//! - Client links are cut per member, not per client.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep_until, Instant};

/// The most a proxy reads at once; delays and stalls apply per chunk.
const CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction; bounds what a delayed link buffers.
const QUEUE: usize = 64;
/// What a held connection may send before the proxy dials for it, kept for delivery at heal.
const EARLY_LIMIT: usize = 64 * 1024;

/// What happens to the bytes of a connection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    Pass,
    /// A partition: nothing crosses either way, connections stay open, and bytes already sent wait
    /// in the proxy and the kernel buffers, so at heal existing connections carry on intact, as
    /// TCP does once retransmissions get through.
    Hold,
    /// Bytes are discarded both ways while connections stay open; closes still pass. Unlike a real
    /// network this corrupts the stream, so existing connections usually fail their framing after
    /// it lifts and are replaced; new ones work.
    Drop,
    /// Existing connections are reset and new ones reset as soon as accepted.
    Reset,
    /// Every chunk arrives `base` plus up to `jitter` late, in order.
    Delay {
        base: Duration,
        jitter: Duration,
    },
    /// Each chunk is stalled for `pause` with `probability` (0 to 1), holding up what follows it.
    Lossy {
        probability: f64,
        pause: Duration,
    },
}

impl Fault {
    fn severity(self) -> u8 {
        match self {
            Fault::Pass => 0,
            Fault::Delay { .. } => 1,
            Fault::Lossy { .. } => 2,
            Fault::Drop => 3,
            Fault::Hold => 4,
            Fault::Reset => 5,
        }
    }

    fn harsher(self, other: Fault) -> Fault {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }
}

/// A proxy's faults: by identified origin member, and for everything else.
#[derive(Clone, Debug)]
struct Rules {
    by_origin: Vec<Fault>,
    unknown: Fault,
}

/// Tells which member dialled a connection.
#[derive(Clone)]
struct Identify {
    pids: Arc<RwLock<Vec<Option<u32>>>>,
    unidentified: Arc<AtomicU64>,
}

impl Identify {
    fn origin(&self, dialler: SocketAddr, proxy: SocketAddr) -> Option<usize> {
        let origin = socket_inode(dialler, proxy).and_then(|inode| {
            let pids = self.pids.read().unwrap_or_else(|e| e.into_inner()).clone();
            pids.iter()
                .position(|pid| pid.is_some_and(|pid| owns_socket(pid, inode)))
        });
        if origin.is_none() {
            self.unidentified.fetch_add(1, Ordering::Relaxed);
        }
        origin
    }
}

/// The inode of the TCP socket from `local` to `remote`, from the kernel's IPv4 table.
fn socket_inode(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let matches =
            parse_proc_addr(fields.get(1)?)? == local && parse_proc_addr(fields.get(2)?)? == remote;
        if matches {
            fields.get(9)?.parse().ok()
        } else {
            None
        }
    })
}

/// `/proc/net/tcp` prints the address as the in-memory network-order word in hex, the port as
/// plain hex.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddr::from((ip.to_ne_bytes(), port)))
}

fn owns_socket(pid: u32, inode: u64) -> bool {
    let wanted = format!("socket:[{inode}]");
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str())
    })
}

/// One connection's view of its proxy's rules.
#[derive(Clone)]
struct View {
    rules: watch::Receiver<Rules>,
    origin: Option<usize>,
}

impl View {
    /// Marks the rules seen, so that `changed` waits for the next change.
    fn fault(&mut self) -> Fault {
        let rules = self.rules.borrow_and_update();
        self.origin
            .and_then(|i| rules.by_origin.get(i).copied())
            .unwrap_or(rules.unknown)
    }

    async fn changed(&mut self) -> io::Result<()> {
        self.rules
            .changed()
            .await
            .map_err(|_| io::Error::other("proxy stopped"))
    }

    async fn unheld(&mut self) -> io::Result<Fault> {
        loop {
            match self.fault() {
                Fault::Hold => self.changed().await?,
                fault => return Ok(fault),
            }
        }
    }
}

/// A TCP proxy forwarding every connection it accepts to one target, under its current faults.
/// Dropping it stops it too; [`Proxy::shutdown`] also waits until every connection is closed.
pub struct Proxy {
    addr: SocketAddr,
    rules: watch::Sender<Rules>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    accepted: Arc<AtomicU64>,
}

impl Proxy {
    /// A proxy on `listen` (port 0 picks one) with one fault for all its connections, initially
    /// [`Fault::Pass`].
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> io::Result<Proxy> {
        Proxy::spawn(listen, target, None).await
    }

    async fn spawn(
        listen: SocketAddr,
        target: SocketAddr,
        identify: Option<Identify>,
    ) -> io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (rules, rules_rx) = watch::channel(Rules {
            by_origin: Vec::new(),
            unknown: Fault::Pass,
        });
        let (stop, stopped) = oneshot::channel();
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            target,
            rules_rx,
            identify,
            accepted.clone(),
            stopped,
        ));
        Ok(Proxy {
            addr,
            rules,
            stop,
            task,
            accepted,
        })
    }

    /// Where to connect to reach the target through the proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Applies `fault` to every connection, existing and new.
    pub fn set_fault(&self, fault: Fault) {
        self.set_rules(Rules {
            by_origin: Vec::new(),
            unknown: fault,
        });
    }

    fn set_rules(&self, rules: Rules) {
        self.rules.send_replace(rules);
    }

    /// Stops accepting and closes every connection before returning.
    pub async fn shutdown(self) {
        drop(self.stop);
        // A panic in the accept loop has already ended it; nothing is left to stop.
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    rules: watch::Receiver<Rules>,
    identify: Option<Identify>,
    accepted_count: Arc<AtomicU64>,
    mut stopped: oneshot::Receiver<()>,
) {
    let local = listener.local_addr().ok();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // Fires on an explicit stop and when the Proxy is dropped.
            _ = &mut stopped => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, dialler)) => {
                    accepted_count.fetch_add(1, Ordering::Relaxed);
                    // Right at accept the dialling socket is surely still open; procfs reads
                    // never wait on a device, so doing them inline is cheap.
                    let origin = identify
                        .as_ref()
                        .zip(local)
                        .and_then(|(identify, local)| identify.origin(dialler, local));
                    let view = View { rules: rules.clone(), origin };
                    connections.spawn(serve(stream, target, view));
                }
                // Out of descriptors, most likely: back off rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
        }
    }
    connections.shutdown().await;
}

/// Closes with RST, as a failed network path looks to the application.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
}

async fn serve(mut client: TcpStream, target: SocketAddr, mut view: View) {
    // A held link passes no connection attempt either, so the proxy dials only once it lifts. What
    // the client sends meanwhile is kept for then, and a client that gives up is dropped
    // unseen, like a SYN that never got through.
    let mut early = Vec::new();
    let fault = loop {
        match view.fault() {
            Fault::Hold => tokio::select! {
                changed = view.changed() => if changed.is_err() { return },
                read = client.read_buf(&mut early), if early.len() < EARLY_LIMIT => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return;
                    }
                }
            },
            fault => break fault,
        }
    };
    if fault == Fault::Reset {
        return reset(client);
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return reset(client);
    };
    if !early.is_empty() && view.fault() != Fault::Drop && upstream.write_all(&early).await.is_err()
    {
        reset(upstream);
        return reset(client);
    }
    let clean = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let mut watcher = view.clone();
        let reset_ordered = async move {
            while watcher.fault() != Fault::Reset {
                if watcher.changed().await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            done = async {
                tokio::try_join!(
                    pump(client_read, upstream_write, view.clone()),
                    pump(upstream_read, client_write, view),
                )
            } => done.is_ok(),
            _ = reset_ordered => false,
        }
    };
    if !clean {
        reset(client);
        reset(upstream);
    }
}

/// Forwards one direction until EOF. Reading and writing are decoupled by a queue so that a delay
/// adds latency without throttling the reader to one chunk per delay.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    view: View,
) -> io::Result<()> {
    let (queue, mut queued) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(QUEUE);
    let mut reader_view = view.clone();
    let read = async move {
        let mut buf = vec![0; CHUNK];
        // Deadlines never go backwards, so jitter cannot reorder the stream.
        let mut last_due = Instant::now();
        loop {
            // Not reading is what makes a hold push back on the sender like a partition would.
            reader_view.unheld().await?;
            let n = from.read(&mut buf).await?;
            let now = Instant::now();
            let due = match reader_view.fault() {
                Fault::Drop if n > 0 => continue,
                Fault::Delay { base, jitter } => {
                    now + base + jitter.mul_f64(rand::thread_rng().gen::<f64>())
                }
                Fault::Lossy { probability, pause }
                    if rand::thread_rng().gen_bool(probability.clamp(0.0, 1.0)) =>
                {
                    now + pause
                }
                _ => now,
            };
            last_due = last_due.max(due);
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            if queue.send((last_due, chunk)).await.is_err() || n == 0 {
                return Ok::<_, io::Error>(());
            }
        }
    };
    let mut writer_view = view;
    let write = async move {
        while let Some((due, chunk)) = queued.recv().await {
            sleep_until(due).await;
            // Judged again on delivery, so bytes queued before a partition do not cross it.
            let fault = writer_view.unheld().await?;
            match chunk {
                None => return to.shutdown().await,
                Some(_) if fault == Fault::Drop => {}
                Some(bytes) => to.write_all(&bytes).await?,
            }
        }
        Ok(())
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// Which pairs of members can talk to each other; always symmetric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    connected: Vec<Vec<bool>>,
}

impl Partition {
    fn from_fn(n: usize, connected: impl Fn(usize, usize) -> bool) -> Partition {
        Partition {
            connected: (0..n)
                .map(|a| (0..n).map(|b| a == b || connected(a, b)).collect())
                .collect(),
        }
    }

    /// Members talk within their group only; a member in no group is alone.
    pub fn groups(n: usize, groups: &[Vec<usize>]) -> Partition {
        let group_of = |m: usize| groups.iter().position(|g| g.contains(&m));
        Partition::from_fn(n, |a, b| {
            group_of(a).is_some() && group_of(a) == group_of(b)
        })
    }

    /// `member` can talk to nobody; the others are undisturbed.
    pub fn isolate(n: usize, member: usize) -> Partition {
        Partition::from_fn(n, |a, b| a != member && b != member)
    }

    /// The first `n / 2` members (a minority for odd `n`) against the rest.
    pub fn halves(n: usize) -> Partition {
        Partition::from_fn(n, |a, b| (a < n / 2) == (b < n / 2))
    }

    /// Two sides joined only through member `n / 2`, which talks to everyone: both sides plus the
    /// bridge make a majority, so two leaders may each believe they have one.
    pub fn bridge(n: usize) -> Partition {
        let mid = n / 2;
        Partition::from_fn(n, |a, b| a == mid || b == mid || (a < mid) == (b < mid))
    }

    /// Members on a ring, each talking to the nearest members on both sides so that it sees a
    /// majority (itself included) but no two members see the same majority. For three members
    /// nothing is cut.
    pub fn ring(n: usize) -> Partition {
        let reach = (n / 2).div_ceil(2);
        Partition::from_fn(n, |a, b| {
            let d = a.abs_diff(b);
            d.min(n - d) <= reach
        })
    }

    /// The same shape with the roles moved: member `order[i]` plays the part of member `i`.
    /// `order` must be a permutation of the members.
    pub fn permute(&self, order: &[usize]) -> Partition {
        let n = self.connected.len();
        assert_eq!(order.len(), n, "a permutation of {n} members");
        let mut role = vec![usize::MAX; n];
        for (i, &m) in order.iter().enumerate() {
            role[m] = i;
        }
        Partition::from_fn(n, |a, b| self.connected(role[a], role[b]))
    }

    pub fn members(&self) -> usize {
        self.connected.len()
    }

    pub fn connected(&self, a: usize, b: usize) -> bool {
        self.connected[a][b]
    }

    /// The pairs `(a, b)`, `a < b`, that cannot talk.
    pub fn cut_pairs(&self) -> Vec<(usize, usize)> {
        let n = self.members();
        (0..n)
            .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
            .filter(|&(a, b)| !self.connected(a, b))
            .collect()
    }
}

/// The members a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Member(usize),
}

impl Scope {
    fn covers(self, member: usize) -> bool {
        self == Scope::All || self == Scope::Member(member)
    }
}

struct Layers {
    partition: Partition,
    /// `peer[from][to]`: the quality of the connections `from` opens to `to`.
    peer: Vec<Vec<Fault>>,
    client: Vec<Fault>,
}

/// The proxies of a cluster of members on this host: one in front of each member's peer port and
/// one in front of each client port. See the module docs for how links are told apart. Dropping it
/// stops every proxy too; [`Network::shutdown`] also waits until every connection is closed.
pub struct Network {
    peers: Vec<Proxy>,
    clients: Vec<Proxy>,
    pids: Arc<RwLock<Vec<Option<u32>>>>,
    unidentified: Arc<AtomicU64>,
    layers: Mutex<Layers>,
}

impl Network {
    /// Proxies on 127.0.0.1 for member `i`'s real peer address `peers[i]` and client address
    /// `clients[i]`; members must advertise [`Network::peer_addr`] and clients dial
    /// [`Network::client_addr`].
    pub async fn start(peers: &[SocketAddr], clients: &[SocketAddr]) -> io::Result<Network> {
        assert_eq!(peers.len(), clients.len(), "one client address per member");
        let n = peers.len();
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let pids = Arc::new(RwLock::new(vec![None; n]));
        let unidentified = Arc::new(AtomicU64::new(0));
        let identify = Identify {
            pids: pids.clone(),
            unidentified: unidentified.clone(),
        };
        let mut network = Network {
            peers: Vec::with_capacity(n),
            clients: Vec::with_capacity(n),
            pids,
            unidentified,
            layers: Mutex::new(Layers {
                partition: Partition::groups(n, &[(0..n).collect()]),
                peer: vec![vec![Fault::Pass; n]; n],
                client: vec![Fault::Pass; n],
            }),
        };
        // On an error the proxies already started stop as they are dropped.
        for (&peer, &client) in peers.iter().zip(clients) {
            let peer = Proxy::spawn(loopback, peer, Some(identify.clone())).await?;
            network.peers.push(peer);
            network.clients.push(Proxy::start(loopback, client).await?);
        }
        network.publish(&network.layers.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(network)
    }

    pub fn members(&self) -> usize {
        self.peers.len()
    }

    /// The peer URL address member `member` must advertise.
    pub fn peer_addr(&self, member: usize) -> SocketAddr {
        self.peers[member].addr()
    }

    /// The address clients dial to reach member `member`.
    pub fn client_addr(&self, member: usize) -> SocketAddr {
        self.clients[member].addr()
    }

    /// Records the process of `member` (`None` while it is down), so that its peer connections can
    /// be recognised. Connections already accepted keep the origin they were given.
    pub fn set_pid(&self, member: usize, pid: Option<u32>) {
        self.pids.write().unwrap_or_else(|e| e.into_inner())[member] = pid;
    }

    /// Peer connections opened so far, between all members.
    pub fn peer_connections(&self) -> u64 {
        self.peers.iter().map(Proxy::accepted).sum()
    }

    /// Peer connections so far whose dialling member could not be identified.
    pub fn unidentified(&self) -> u64 {
        self.unidentified.load(Ordering::Relaxed)
    }

    /// Replaces the current partition.
    pub fn partition(&self, partition: &Partition) {
        assert_eq!(partition.members(), self.members(), "partition size");
        self.update(|layers| layers.partition = partition.clone());
    }

    pub fn isolate(&self, member: usize) {
        self.partition(&Partition::isolate(self.members(), member));
    }

    /// Removes the partition; link quality faults stay.
    pub fn heal(&self) {
        let n = self.members();
        self.partition(&Partition::groups(n, &[(0..n).collect()]));
    }

    /// Sets the quality of every peer link to or from the members in `scope`.
    pub fn set_peer_fault(&self, scope: Scope, fault: Fault) {
        self.update(|layers| {
            for (from, row) in layers.peer.iter_mut().enumerate() {
                for (to, link) in row.iter_mut().enumerate() {
                    if scope.covers(from) || scope.covers(to) {
                        *link = fault;
                    }
                }
            }
        });
    }

    pub fn delay(&self, scope: Scope, base: Duration, jitter: Duration) {
        self.set_peer_fault(scope, Fault::Delay { base, jitter });
    }

    /// Sets the fault between clients and the members in `scope`.
    pub fn set_client_fault(&self, scope: Scope, fault: Fault) {
        self.update(|layers| {
            for (member, link) in layers.client.iter_mut().enumerate() {
                if scope.covers(member) {
                    *link = fault;
                }
            }
        });
    }

    /// Heals the partition and sets every link back to [`Fault::Pass`].
    pub fn clear(&self) {
        self.heal();
        self.set_peer_fault(Scope::All, Fault::Pass);
        self.set_client_fault(Scope::All, Fault::Pass);
    }

    fn update(&self, change: impl FnOnce(&mut Layers)) {
        let mut layers = self.layers.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut layers);
        self.publish(&layers);
    }

    /// Pushes the rules to the proxies while the layers are locked, so that concurrent updates
    /// cannot publish out of order.
    fn publish(&self, layers: &Layers) {
        for (to, proxy) in self.peers.iter().enumerate() {
            let by_origin: Vec<Fault> = (0..self.members())
                .map(|from| {
                    let quality = layers.peer[from][to];
                    if layers.partition.connected(from, to) {
                        quality
                    } else {
                        quality.harsher(Fault::Hold)
                    }
                })
                .collect();
            // An unidentified dialler could be any member, so it gets the worst of them.
            let unknown = by_origin.iter().fold(Fault::Pass, |a, &b| a.harsher(b));
            proxy.set_rules(Rules { by_origin, unknown });
        }
        for (proxy, &fault) in self.clients.iter().zip(&layers.client) {
            proxy.set_fault(fault);
        }
    }

    /// Stops every proxy and closes every connection before returning.
    pub async fn shutdown(self) {
        for proxy in self.peers.into_iter().chain(self.clients) {
            proxy.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_millis(300);

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn proxied_echo() -> Proxy {
        Proxy::start("127.0.0.1:0".parse().unwrap(), echo_server().await)
            .await
            .unwrap()
    }

    async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        stream.write_all(msg).await.unwrap();
        let mut got = vec![0; msg.len()];
        stream.read_exact(&mut got).await.unwrap();
        got
    }

    /// Asserts that nothing comes back within `QUIET`.
    async fn assert_silent(stream: &mut TcpStream) {
        let mut byte = [0; 1];
        let read = tokio::time::timeout(QUIET, stream.read(&mut byte)).await;
        assert!(read.is_err(), "expected silence, got {read:?}");
    }

    /// Asserts the connection ends (EOF or reset) rather than stays open.
    async fn assert_closed(stream: &mut TcpStream) {
        let mut byte = [0; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("the connection should close");
        assert!(matches!(read, Ok(0) | Err(_)), "got {read:?}");
    }

    #[tokio::test]
    async fn pass_forwards_bytes_both_ways() {
        let proxy = proxied_echo().await;
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"hello").await, b"hello");
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        assert_eq!(round_trip(&mut stream, &big).await, big);
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn hold_stalls_then_heal_resumes_existing_and_new_connections() {
        let proxy = proxied_echo().await;
        let mut existing = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut existing, b"before").await, b"before");

        proxy.set_fault(Fault::Hold);
        existing.write_all(b"during").await.unwrap();
        assert_silent(&mut existing).await;
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        fresh.write_all(b"early").await.unwrap();
        assert_silent(&mut fresh).await;

        proxy.set_fault(Fault::Pass);
        // Nothing was lost: the held bytes arrive, then the connections carry on.
        let mut got = [0; 6];
        existing.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"during");
        assert_eq!(round_trip(&mut existing, b"after").await, b"after");
        let mut got = [0; 5];
        fresh.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"early");
        assert_eq!(round_trip(&mut fresh, b"after").await, b"after");
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn drop_discards_bytes_but_keeps_connections_open() {
        let proxy = proxied_echo().await;
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"before").await, b"before");

        proxy.set_fault(Fault::Drop);
        stream.write_all(b"lost").await.unwrap();
        assert_silent(&mut stream).await;

        proxy.set_fault(Fault::Pass);
        // The same connection works again, minus what was sent meanwhile.
        assert_eq!(round_trip(&mut stream, b"kept").await, b"kept");
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut fresh, b"new").await, b"new");
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn reset_closes_existing_and_refuses_new_connections() {
        let proxy = proxied_echo().await;
        let mut existing = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut existing, b"hi").await, b"hi");

        proxy.set_fault(Fault::Reset);
        assert_closed(&mut existing).await;
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_closed(&mut refused).await;

        proxy.set_fault(Fault::Pass);
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut fresh, b"back").await, b"back");
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn delay_adds_latency_each_way() {
        let proxy = proxied_echo().await;
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        let base = Duration::from_millis(150);
        proxy.set_fault(Fault::Delay {
            base,
            jitter: Duration::from_millis(50),
        });
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&mut stream, b"slow").await, b"slow");
        assert!(started.elapsed() >= 2 * base, "{:?}", started.elapsed());
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn certain_loss_stalls_every_chunk() {
        let proxy = proxied_echo().await;
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        let pause = Duration::from_millis(150);
        proxy.set_fault(Fault::Lossy {
            probability: 1.0,
            pause,
        });
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&mut stream, b"lossy").await, b"lossy");
        assert!(started.elapsed() >= 2 * pause, "{:?}", started.elapsed());
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_closes_connections_and_the_listener() {
        let proxy = proxied_echo().await;
        let addr = proxy.addr();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"hi").await, b"hi");
        proxy.shutdown().await;
        assert_closed(&mut stream).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn isolate_cuts_one_member_from_all_others() {
        assert_eq!(
            Partition::isolate(4, 2).cut_pairs(),
            vec![(0, 2), (1, 2), (2, 3)]
        );
    }

    #[test]
    fn halves_cut_every_pair_across_the_split() {
        assert_eq!(
            Partition::halves(5).cut_pairs(),
            vec![(0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (1, 4)]
        );
    }

    #[test]
    fn groups_leave_unlisted_members_alone() {
        let p = Partition::groups(4, &[vec![0, 3], vec![1]]);
        assert_eq!(p.cut_pairs(), vec![(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]);
    }

    #[test]
    fn bridge_connects_the_middle_member_to_both_sides() {
        assert_eq!(
            Partition::bridge(5).cut_pairs(),
            vec![(0, 3), (0, 4), (1, 3), (1, 4)]
        );
    }

    #[test]
    fn ring_gives_every_member_a_distinct_majority() {
        for n in [4, 5, 7] {
            let p = Partition::ring(n);
            let seen: Vec<Vec<usize>> = (0..n)
                .map(|a| (0..n).filter(|&b| p.connected(a, b)).collect())
                .collect();
            for (a, view) in seen.iter().enumerate() {
                assert!(view.len() > n / 2, "member {a} of {n} sees {view:?}");
                assert!(view.len() < n, "member {a} of {n} sees everyone");
            }
            for a in 0..n {
                for b in a + 1..n {
                    assert_ne!(seen[a], seen[b], "members {a} and {b} of {n}");
                }
            }
        }
        assert_eq!(
            Partition::ring(5).cut_pairs(),
            vec![(0, 2), (0, 3), (1, 3), (1, 4), (2, 4)]
        );
        assert!(Partition::ring(3).cut_pairs().is_empty());
    }

    #[test]
    fn permute_moves_roles_onto_other_members() {
        let p = Partition::isolate(3, 0).permute(&[2, 0, 1]);
        assert_eq!(p, Partition::isolate(3, 2));
        let p = Partition::bridge(5).permute(&[4, 3, 0, 2, 1]);
        assert_eq!(p.cut_pairs(), vec![(1, 3), (1, 4), (2, 3), (2, 4)]);
    }

    #[test]
    fn proc_addresses_parse_in_kernel_order() {
        let expected: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let printed = format!("{:08X}:1F90", u32::from_ne_bytes([127, 0, 0, 1]));
        assert_eq!(parse_proc_addr(&printed), Some(expected));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_dialling_process_is_found_by_its_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dialled = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, dialler) = listener.accept().await.unwrap();
        let identify = Identify {
            pids: Arc::new(RwLock::new(vec![Some(1), Some(std::process::id())])),
            unidentified: Arc::new(AtomicU64::new(0)),
        };
        let proxy_side = accepted.local_addr().unwrap();
        assert_eq!(identify.origin(dialler, proxy_side), Some(1));
        *identify.pids.write().unwrap() = vec![Some(1)];
        assert_eq!(identify.origin(dialler, proxy_side), None);
        assert_eq!(identify.unidentified.load(Ordering::Relaxed), 1);
        drop(dialled);
    }

    async fn network_of_echoes(n: usize) -> Network {
        let mut peers = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..n {
            peers.push(echo_server().await);
            clients.push(echo_server().await);
        }
        Network::start(&peers, &clients).await.unwrap()
    }

    /// This test process plays member 0, dialling the other members' peer proxies.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn partitions_cut_only_the_links_of_the_dialling_member() {
        let net = network_of_echoes(3).await;
        net.set_pid(0, Some(std::process::id()));
        let mut to_1 = TcpStream::connect(net.peer_addr(1)).await.unwrap();
        let mut to_2 = TcpStream::connect(net.peer_addr(2)).await.unwrap();
        assert_eq!(round_trip(&mut to_1, b"a").await, b"a");

        // Member 1 is cut from member 0, member 2 is not.
        net.isolate(1);
        to_1.write_all(b"held").await.unwrap();
        assert_silent(&mut to_1).await;
        assert_eq!(round_trip(&mut to_2, b"b").await, b"b");
        let mut client = TcpStream::connect(net.client_addr(1)).await.unwrap();
        assert_eq!(round_trip(&mut client, b"c").await, b"c");

        // Cutting member 0 from member 2 cuts what member 0 dialled too.
        net.partition(&Partition::groups(3, &[vec![0, 1], vec![2]]));
        let mut got = [0; 4];
        to_1.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"held");
        to_2.write_all(b"held").await.unwrap();
        assert_silent(&mut to_2).await;

        net.heal();
        assert_eq!(round_trip(&mut to_1, b"d").await, b"d");
        to_2.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"held");
        assert_eq!(net.unidentified(), 0);
        net.shutdown().await;
    }

    #[tokio::test]
    async fn unidentified_diallers_get_the_harshest_rule_of_the_destination() {
        let net = network_of_echoes(3).await;
        // No pids: every peer connection is unidentified, and members 1 and 2 are cut.
        net.partition(&Partition::groups(3, &[vec![0, 1], vec![2]]));
        let mut to_1 = TcpStream::connect(net.peer_addr(1)).await.unwrap();
        to_1.write_all(b"x").await.unwrap();
        assert_silent(&mut to_1).await;
        assert_eq!(net.unidentified(), 1);

        net.heal();
        net.delay(Scope::Member(0), Duration::from_millis(100), Duration::ZERO);
        let started = std::time::Instant::now();
        let mut got = [0; 1];
        to_1.read_exact(&mut got).await.unwrap();
        assert_eq!(round_trip(&mut to_1, b"y").await, b"y");
        assert!(started.elapsed() >= Duration::from_millis(200));
        net.shutdown().await;
    }

    #[tokio::test]
    async fn client_faults_apply_per_member() {
        let net = network_of_echoes(2).await;
        net.set_client_fault(Scope::Member(0), Fault::Hold);
        let mut to_0 = TcpStream::connect(net.client_addr(0)).await.unwrap();
        let mut to_1 = TcpStream::connect(net.client_addr(1)).await.unwrap();
        to_0.write_all(b"x").await.unwrap();
        assert_silent(&mut to_0).await;
        assert_eq!(round_trip(&mut to_1, b"y").await, b"y");
        net.clear();
        let mut got = [0; 1];
        to_0.read_exact(&mut got).await.unwrap();
        net.shutdown().await;
    }
}
