//! The backend quota (etcd's `quotaKVServer`): a write that would grow the stored data past
//! `--quota-backend-bytes` is refused before it is proposed, and raises NOSPACE.

use std::sync::Arc;
use std::time::{Duration, Instant};

use oxcd_proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
use parking_lot::Mutex;

use super::Alarms;
use crate::apply::{Command, Op};
use crate::error::EtcdError;
use crate::replication::Replication;
use crate::storage::Engine;

/// The backend quota (etcd's `quotaKVServer`): checked before a write is proposed.
pub struct Quota {
    engine: Arc<Engine>,
    bytes: u64,
    alarms: Arc<Alarms>,
    consensus: Arc<dyn Replication>,
    member_id: u64,
    /// The stored-data size and when it was read: reading it costs a RocksDB property lookup
    /// per column family, too much for every write.
    sampled: Mutex<Option<(Instant, u64)>>,
}

/// How stale the size a quota check uses may be.
const SIZE_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

impl Quota {
    pub fn new(
        engine: Arc<Engine>,
        bytes: u64,
        alarms: Arc<Alarms>,
        consensus: Arc<dyn Replication>,
        member_id: u64,
    ) -> Quota {
        Quota {
            engine,
            bytes,
            alarms,
            consensus,
            member_id,
            sampled: Mutex::new(None),
        }
    }

    fn data_size(&self, fresh: bool) -> u64 {
        let mut sampled = self.sampled.lock();
        match *sampled {
            Some((at, size)) if !fresh && at.elapsed() < SIZE_SAMPLE_INTERVAL => size,
            _ => {
                let size = self.engine.data_size();
                *sampled = Some((Instant::now(), size));
                size
            }
        }
    }

    /// Refuses a write of `cost` bytes when NOSPACE is raised or the write would pass the
    /// quota; in the latter case raises NOSPACE for this member first.
    pub async fn admit(&self, cost: usize) -> Result<(), EtcdError> {
        if cost == 0 {
            return Ok(());
        }
        if self.alarms.no_space() {
            return Err(EtcdError::NoSpace);
        }
        // A recent sample answers the common case; refusing needs the current size (space may
        // just have been reclaimed by a defragment).
        if self.data_size(false) + cost as u64 <= self.bytes
            || self.data_size(true) + cost as u64 <= self.bytes
        {
            return Ok(());
        }
        let raise = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: self.member_id,
            alarm: AlarmType::Nospace as i32,
        };
        if let Err(e) = self.consensus.propose(Command::new(Op::Alarm(raise))).await {
            tracing::warn!(error = %e, "raising the NOSPACE alarm failed");
        }
        Err(EtcdError::NoSpace)
    }
}
