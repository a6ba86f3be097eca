//! The reads `registry` makes: single gets at a revision and paged scans pinned to one revision,
//! as kube-apiserver's own paginated lists do, so a listing is one consistent snapshot.

use std::time::Duration;

use oxcd_proto::etcdserverpb::{kv_client::KvClient, RangeRequest, RangeResponse};
use oxcd_proto::mvccpb::KeyValue;

use crate::client::{Connection, Transport};
use crate::failure::{CtlResult, ExitCode, Failure};

use crate::args::prefix_range_end;

/// Objects per page: kube-apiserver's objects are at most 1.5 MiB, so pages stay bounded.
const PAGE: i64 = 500;

/// etcd's error for a read below the compaction point; `history` stops there.
pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

pub struct Store {
    kv: KvClient<Transport>,
    timeout: Duration,
}

impl Store {
    pub fn new(connection: &Connection) -> Store {
        // Like etcdctl, accept responses of any size: a page of large objects exceeds tonic's
        // 4 MiB default.
        Store {
            kv: connection.kv().max_decoding_message_size(usize::MAX),
            timeout: connection.command_timeout,
        }
    }

    async fn range(&mut self, request: RangeRequest) -> CtlResult<RangeResponse> {
        match tokio::time::timeout(self.timeout, self.kv.range(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Failure::new(ExitCode::Error, status.message())),
            Err(_) => Err(Failure::new(ExitCode::Error, "context deadline exceeded")),
        }
    }

    /// The key's value at `revision` (0 = latest).
    pub async fn get(&mut self, key: &[u8], revision: i64) -> CtlResult<Option<KeyValue>> {
        let response = self
            .range(RangeRequest {
                key: key.to_vec(),
                revision,
                ..Default::default()
            })
            .await?;
        Ok(response.kvs.into_iter().next())
    }

    /// The first key at or after `from` and before `end`, without its value.
    pub async fn first_key(
        &mut self,
        from: &[u8],
        end: &[u8],
        revision: i64,
    ) -> CtlResult<(Option<Vec<u8>>, i64)> {
        let request = RangeRequest {
            key: from.to_vec(),
            range_end: end.to_vec(),
            limit: 1,
            keys_only: true,
            revision,
            ..Default::default()
        };
        let response = self.range(request).await?;
        let revision = response.header.map_or(revision, |h| h.revision);
        Ok((response.kvs.into_iter().next().map(|kv| kv.key), revision))
    }

    /// Calls `each` for every key under `prefix` at `revision` (0 = latest), page by page, with
    /// later pages pinned to the first page's revision. Returns the revision read.
    pub async fn scan(
        &mut self,
        prefix: &[u8],
        mut revision: i64,
        mut each: impl FnMut(KeyValue),
    ) -> CtlResult<i64> {
        let end = prefix_range_end(prefix);
        let mut from = prefix.to_vec();
        loop {
            let request = RangeRequest {
                key: from.clone(),
                range_end: end.clone(),
                limit: PAGE,
                revision,
                ..Default::default()
            };
            let response = self.range(request).await?;
            if revision == 0 {
                revision = response.header.as_ref().map_or(0, |h| h.revision);
            }
            if let Some(last) = response.kvs.last() {
                from = last.key.clone();
                from.push(0);
            }
            response.kvs.into_iter().for_each(&mut each);
            if !response.more {
                return Ok(revision);
            }
        }
    }
}
