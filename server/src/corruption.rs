//! etcd's initial corruption check (`--feature-gates=InitialCorruptCheck=true`, which kubeadm
//! sets): before a member serves clients it asks every other member for its HashKV at the
//! member's own revision. A different hash under the same compaction point means the stores
//! diverged, and the member refuses to start, as etcd does ("found data inconsistency with
//! peers"). A member that cannot answer (down, behind, compacted past the revision) proves
//! nothing either way and is only logged.

use std::time::Duration;

use oxcd_proto::peerpb::HashKvReply;

use crate::error::EtcdError;
use crate::mvcc::MvccStore;
use crate::replication::Replication;
use crate::storage::off_runtime;

/// How long a member gets to answer (etcd: its request timeout).
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn initial_check(
    store: &std::sync::Arc<MvccStore>,
    consensus: &dyn Replication,
    me: u64,
) -> anyhow::Result<()> {
    let local = store.clone();
    let (hash, revision, compacted) = off_runtime(EtcdError::Stopped, move || local.hash_kv(0))
        .await
        .map_err(|e| anyhow::anyhow!("{me:x} failed to fetch hash ({e})"))?;
    tracing::info!(
        revision,
        hash,
        compacted,
        "starting initial corruption check"
    );
    let mut mismatches = 0;
    for (id, answer) in consensus.peers_hash_kv(revision, PEER_TIMEOUT).await {
        let peer = format!("{id:x}");
        match answer.and_then(refused_as_error) {
            Ok(theirs) if theirs.hash == hash => {}
            Ok(theirs) if theirs.compact_revision == compacted => {
                tracing::warn!(%peer, revision, local = hash, remote = theirs.hash, "found different hash values from remote peer");
                mismatches += 1;
            }
            Ok(theirs) => tracing::warn!(
                %peer,
                local = compacted,
                remote = theirs.compact_revision,
                "found different compact revision values from remote peer"
            ),
            Err(e) => tracing::warn!(%peer, error = %e, "cannot fetch hash from remote peer"),
        }
    }
    if mismatches > 0 {
        anyhow::bail!("{me:x} found data inconsistency with peers");
    }
    tracing::info!("initial corruption checking passed; no corruption");
    Ok(())
}

/// A member that answered but could not compute the hash says why.
fn refused_as_error(reply: HashKvReply) -> Result<HashKvReply, String> {
    match reply.failure {
        Some(f) => Err(EtcdError::from_wire(f.etcd_error).to_string()),
        None => Ok(reply),
    }
}
