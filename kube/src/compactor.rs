//! kube-apiserver's compactor: every --etcd-compaction-interval (5 min) the store is compacted to
//! the revision it had one interval before, so the history behind resourceVersions stays
//! bounded. It takes part in the same `compact_rev_key` protocol as every kube-apiserver on
//! the store, so with several of them (and shims) only one compacts per interval.

use std::time::Duration;

use crate::store::Store;

pub async fn run(store: Store, interval: Duration) {
    // The key's version and the store's revision after the last round; a fresh compactor
    // starts from nothing and only records the revision in its first round.
    let (mut version, mut revision) = (0, 0);
    loop {
        tokio::time::sleep(interval).await;
        match store.compaction_round(version, revision).await {
            Ok((next_version, now)) => (version, revision) = (next_version, now),
            Err(error) => eprintln!("compactor: {error:?}"),
        }
    }
}
