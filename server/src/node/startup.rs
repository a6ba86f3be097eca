//! Who this member is and which cluster it belongs to: the identity fixed when the data dir
//! was made (a new cluster's ids derived from the flags, a joined cluster's told by its
//! members, a restored one's written by `snapshot restore`), and, once it runs, its name and
//! client URLs published in the membership.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use oxcd_proto::peerpb::{discovery_client::DiscoveryClient, MembersRequest};

use crate::cluster;
use crate::config::{ClusterState, Config};
use crate::raft::{
    decode_member_list, encode_member_list, peer_endpoint, Consensus, Member, MemberChange,
    RESTORED_MEMBERSHIP_KEY,
};
use crate::storage::{Cf, Engine, WriteBatch};

const IDENTITY_KEY: &[u8] = b"identity";
/// How long a member started with `--initial-cluster-state existing` tries to reach the cluster.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) struct Identity {
    pub member_id: u64,
    pub cluster_id: u64,
    /// The membership Raft starts a new cluster with; none when joining a running one.
    pub bootstrap: Option<BTreeMap<u64, Member>>,
    /// The data dir was made by `snapshot restore` and has not started yet.
    pub restored: bool,
}

/// The member's identity: as stored in the data dir, else made now (and stored) for a new
/// cluster or by asking the cluster this member joins.
pub(super) async fn identify(
    config: &Config,
    engine: &Engine,
    initial: &[cluster::InitialMember],
    me: &cluster::InitialMember,
    peer_connector: Option<&crate::tls::PeerConnector>,
) -> anyhow::Result<Identity> {
    let restored = restored_membership(engine)?;
    let is_restored = restored.is_some();
    let (member_id, cluster_id, bootstrap) = match stored_identity(engine)? {
        // Ids are fixed when the data dir is created; later flags cannot change them (etcd
        // ignores --initial-cluster on restart too). A restored data dir also fixes the new
        // cluster's membership.
        Some((member, cluster)) => (member, cluster, restored),
        None => {
            let (member, cluster, bootstrap) = match config.initial_cluster_state {
                ClusterState::New => {
                    let (member, cluster, members) =
                        new_cluster(initial, &config.initial_cluster_token, me);
                    (member, cluster, Some(members))
                }
                ClusterState::Existing => {
                    let (member, cluster) = join_existing(initial, me, peer_connector).await?;
                    (member, cluster, None)
                }
            };
            store_identity(engine, member, cluster)?;
            (member, cluster, bootstrap)
        }
    };
    Ok(Identity {
        member_id,
        cluster_id,
        bootstrap,
        restored: is_restored,
    })
}

/// The first start of a restored data dir puts the restored store into a Raft snapshot, before
/// serving clients, so no `member add` can reach a log that still starts before it.
pub(super) async fn finish_restore(consensus: &Consensus, engine: &Engine) -> anyhow::Result<()> {
    consensus
        .snapshot_restored_state()
        .await
        .context("taking the first snapshot of a restored data dir")?;
    let mut batch = engine.batch();
    batch.delete(Cf::RaftState, RESTORED_MEMBERSHIP_KEY);
    engine.write(batch, true)?;
    Ok(())
}

fn stored_identity(engine: &Engine) -> anyhow::Result<Option<(u64, u64)>> {
    let Some(v) = engine.get(Cf::RaftState, IDENTITY_KEY)? else {
        return Ok(None);
    };
    let ids: [u8; 16] = v.as_slice().try_into().context("corrupt member identity")?;
    let member = u64::from_be_bytes(ids[..8].try_into()?);
    let cluster = u64::from_be_bytes(ids[8..].try_into()?);
    Ok(Some((member, cluster)))
}

fn store_identity(engine: &Engine, member: u64, cluster: u64) -> anyhow::Result<()> {
    let mut batch = engine.batch();
    put_identity(&mut batch, member, cluster);
    engine.write(batch, true)?;
    Ok(())
}

fn put_identity(batch: &mut WriteBatch<'_>, member: u64, cluster: u64) {
    let mut value = member.to_be_bytes().to_vec();
    value.extend_from_slice(&cluster.to_be_bytes());
    batch.put(Cf::RaftState, IDENTITY_KEY, &value);
}

/// Makes a data dir holding a restored store the first member of a new cluster, as `flags`
/// would have made it (same ids, same initial membership on every member restored with them).
/// Returns (member id, cluster id).
pub(crate) fn adopt_restored(
    batch: &mut WriteBatch<'_>,
    flags: &RestoreFlags<'_>,
) -> anyhow::Result<(u64, u64)> {
    let initial =
        cluster::parse_initial_cluster(flags.initial_cluster).map_err(anyhow::Error::msg)?;
    let me = initial
        .iter()
        .find(|m| m.name == flags.name)
        .with_context(|| format!("--initial-cluster has no member named {:?}", flags.name))?;
    let mut advertised = flags.advertise_peer_urls.to_vec();
    advertised.sort();
    let mut listed = me.peer_urls.clone();
    listed.sort();
    if advertised != listed {
        bail!(
            "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={}",
            me.name,
            listed.join(","),
            advertised.join(",")
        );
    }
    let (member, cluster, members) = new_cluster(&initial, flags.token, me);
    put_identity(batch, member, cluster);
    batch.put(
        Cf::RaftState,
        RESTORED_MEMBERSHIP_KEY,
        &encode_member_list(&members),
    );
    Ok((member, cluster))
}

/// The cluster-forming flags of `snapshot restore`, as etcd's member start takes them.
pub struct RestoreFlags<'a> {
    pub name: &'a str,
    pub initial_cluster: &'a str,
    pub token: &'a str,
    pub advertise_peer_urls: &'a [String],
}

fn restored_membership(engine: &Engine) -> anyhow::Result<Option<BTreeMap<u64, Member>>> {
    match engine.get(Cf::RaftState, RESTORED_MEMBERSHIP_KEY)? {
        Some(v) => Ok(Some(
            decode_member_list(&v).context("corrupt restored membership")?,
        )),
        None => Ok(None),
    }
}

/// A new cluster: every member derives the same ids and the same initial membership from the
/// same flags. Names and client URLs are published by each member once it runs, so the
/// membership every member bootstraps with is identical.
fn new_cluster(
    initial: &[cluster::InitialMember],
    token: &str,
    me: &cluster::InitialMember,
) -> (u64, u64, BTreeMap<u64, Member>) {
    let members: BTreeMap<u64, Member> = initial
        .iter()
        .map(|m| {
            let member = Member {
                name: m.name.clone(),
                peer_urls: m.peer_urls.clone(),
                client_urls: Vec::new(),
            };
            (cluster::member_id(&m.peer_urls, token), member)
        })
        .collect();
    let ids: Vec<u64> = members.keys().copied().collect();
    (
        cluster::member_id(&me.peer_urls, token),
        cluster::cluster_id(&ids),
        members,
    )
}

/// Joining a running cluster after `member add`: the other members say who we are (the id the
/// add assigned to our peer URLs) and which cluster this is.
async fn join_existing(
    initial: &[cluster::InitialMember],
    me: &cluster::InitialMember,
    tls: Option<&crate::tls::PeerConnector>,
) -> anyhow::Result<(u64, u64)> {
    let mut mine = me.peer_urls.clone();
    mine.sort();
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    loop {
        let mut last_error = String::from("no other member in --initial-cluster");
        for other in initial.iter().filter(|m| m.name != me.name) {
            match discover(&other.peer_urls, tls).await {
                Ok(reply) => {
                    let found = reply.members.iter().find(|m| {
                        let mut urls = m.peer_urls.clone();
                        urls.sort();
                        urls == mine
                    });
                    crate::downgrade::may_join(&reply.cluster_version, reply.downgrade_enabled)?;
                    return match found {
                        Some(m) => Ok((m.id, reply.cluster_id)),
                        None => bail!(
                            "member {} (peer URLs {:?}) is not in the cluster's membership; add it with `member add` before starting it with --initial-cluster-state existing",
                            me.name,
                            me.peer_urls
                        ),
                    };
                }
                Err(e) => last_error = format!("{}: {e}", other.name),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("cannot reach the existing cluster to join it ({last_error})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn discover(
    peer_urls: &[String],
    tls: Option<&crate::tls::PeerConnector>,
) -> anyhow::Result<oxcd_proto::peerpb::MembersReply> {
    let channel = peer_endpoint(peer_urls, tls)
        .map_err(anyhow::Error::msg)?
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let mut client = DiscoveryClient::new(channel);
    Ok(client.members(MembersRequest {}).await?.into_inner())
}

/// etcd publishes a started member's name and client URLs through Raft; until then
/// `member list` shows them empty. Retried until the membership shows them.
pub(super) async fn publish_attributes(
    consensus: &Consensus,
    id: u64,
    name: &str,
    client_urls: &[String],
) {
    let mut attempts = 0u32;
    loop {
        let published = consensus
            .members()
            .iter()
            .any(|m| m.id == id && m.member.name == name && m.member.client_urls == client_urls);
        if published {
            return;
        }
        let change = MemberChange::Publish {
            id,
            name: name.to_string(),
            client_urls: client_urls.to_vec(),
        };
        if let Err(e) = consensus.change_members(change).await {
            attempts += 1;
            if attempts.is_multiple_of(25) {
                tracing::warn!(error = %e, "cannot publish this member's attributes to the cluster yet; not serving clients until then");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
