//! Alarms and the backend quota: etcd's NOSPACE protocol. When stored data would grow past
//! `--quota-backend-bytes`, the member raises NOSPACE through Raft; while it is active, every
//! member refuses Puts, Txns that put and LeaseGrants with "database space exceeded", and still
//! serves reads, deletes (also in a Txn, as kube-apiserver deletes) and compaction. Recovery is
//! compact, defragment, `alarm disarm`. While CORRUPT is active, every write, compaction and
//! lease change fails with "corrupt cluster" (etcd's corrupt applier); reads still work.

mod quota;

use std::collections::BTreeSet;

use oxcd_proto::etcdserverpb::{alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmType};
use parking_lot::Mutex;

use oxcd_proto::etcdserverpb::{request_op::Request, RequestOp, TxnRequest};

pub use quota::Quota;

use crate::storage::{self, Cf, Engine};

const META_ALARMS: &[u8] = b"alarms";

/// Active alarms: (member id, alarm type).
pub struct Alarms {
    active: Mutex<BTreeSet<(u64, i32)>>,
}

fn stored_alarms(engine: &Engine) -> storage::Result<BTreeSet<(u64, i32)>> {
    match engine.get(Cf::Meta, META_ALARMS)? {
        Some(v) => parse_record(&v),
        None => Ok(BTreeSet::new()),
    }
}

impl Alarms {
    pub fn load(engine: &Engine) -> storage::Result<Alarms> {
        Ok(Alarms {
            active: Mutex::new(stored_alarms(engine)?),
        })
    }

    /// Takes the alarms the engine now holds (after a snapshot install).
    pub fn reload(&self, engine: &Engine) -> storage::Result<()> {
        *self.active.lock() = stored_alarms(engine)?;
        Ok(())
    }

    pub fn raised(&self, alarm: AlarmType) -> bool {
        self.active.lock().iter().any(|(_, t)| *t == alarm as i32)
    }

    pub fn no_space(&self) -> bool {
        self.raised(AlarmType::Nospace)
    }

    /// Alarms of one type (NONE = every type), as `AlarmMember`s.
    pub fn list(&self, alarm: i32) -> Vec<AlarmMember> {
        self.active
            .lock()
            .iter()
            .filter(|(_, t)| alarm == AlarmType::None as i32 || *t == alarm)
            .map(|(member_id, t)| AlarmMember {
                member_id: *member_id,
                alarm: *t,
            })
            .collect()
    }

    /// Applies an activate or deactivate; returns the alarms it changed and the state to store.
    pub fn apply(&self, r: &AlarmRequest) -> (Vec<AlarmMember>, Vec<u8>) {
        let mut active = self.active.lock();
        let key = (r.member_id, r.alarm);
        let changed = match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Activate) if r.alarm != AlarmType::None as i32 => active.insert(key),
            Ok(AlarmAction::Deactivate) => active.remove(&key),
            _ => false,
        };
        let changed = if changed {
            vec![AlarmMember {
                member_id: r.member_id,
                alarm: r.alarm,
            }]
        } else {
            Vec::new()
        };
        (changed, stored_record(&active))
    }

    pub fn meta_key() -> &'static [u8] {
        META_ALARMS
    }
}

/// The stored form of a set of active alarms (meta `alarms`, also in Raft snapshots, so members
/// of every release read it): the number of alarms as 8 bytes little-endian, then for each, in
/// (member id, type) order, the member id as 8 bytes and the alarm type as 4 bytes, both
/// little-endian. The releases before this one wrote it through bincode 1; the bytes are the
/// same, now written here so no crate's serialization defines them.
pub fn stored_record(active: &BTreeSet<(u64, i32)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + ALARM_RECORD_BYTES * active.len());
    out.extend_from_slice(&(active.len() as u64).to_le_bytes());
    for (member, alarm) in active {
        out.extend_from_slice(&member.to_le_bytes());
        out.extend_from_slice(&alarm.to_le_bytes());
    }
    out
}

/// Bytes per alarm in a [`stored_record`].
const ALARM_RECORD_BYTES: usize = 12;

/// The active alarms of a [`stored_record`].
pub fn parse_record(stored: &[u8]) -> storage::Result<BTreeSet<(u64, i32)>> {
    let corrupt = |why: &str| storage::StorageError::Corrupt(format!("alarms: {why}"));
    let (count, alarms) = stored
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("shorter than its count"))?;
    let count = u64::from_le_bytes(*count);
    if count.checked_mul(ALARM_RECORD_BYTES as u64) != Some(alarms.len() as u64) {
        return Err(corrupt(&format!(
            "{} bytes cannot hold {count} alarms",
            stored.len()
        )));
    }
    Ok(alarms
        .chunks_exact(ALARM_RECORD_BYTES)
        .map(|a| {
            let (member, alarm) = a.split_at(8);
            (
                u64::from_le_bytes(member.try_into().expect("8 bytes")),
                i32::from_le_bytes(alarm.try_into().expect("4 bytes")),
            )
        })
        .collect())
}

/// etcd's cost model: a fixed overhead per stored key plus its key and value bytes.
const KV_OVERHEAD: usize = 256;
const LEASE_OVERHEAD: usize = 64;

pub fn put_cost(key: &[u8], value: &[u8]) -> usize {
    KV_OVERHEAD + key.len() + value.len()
}

pub fn lease_cost() -> usize {
    LEASE_OVERHEAD
}

/// etcd's `costTxn`: the puts of the costlier branch, nested transactions included; a Txn
/// of deletes costs nothing and passes a full quota.
pub fn txn_cost(t: &TxnRequest) -> usize {
    let branch = |ops: &[RequestOp]| -> usize {
        ops.iter()
            .map(|op| match &op.request {
                Some(Request::RequestPut(p)) => put_cost(&p.key, &p.value),
                Some(Request::RequestTxn(inner)) => txn_cost(inner),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activate_and_deactivate_nospace() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let alarms = Alarms::load(&engine).unwrap();
        let raise = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: 7,
            alarm: AlarmType::Nospace as i32,
        };
        assert_eq!(alarms.apply(&raise).0.len(), 1);
        assert_eq!(alarms.apply(&raise).0.len(), 0, "already active");
        assert!(alarms.no_space());
        assert_eq!(alarms.list(AlarmType::None as i32).len(), 1);
        let clear = AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            ..raise
        };
        assert_eq!(alarms.apply(&clear).0.len(), 1);
        assert!(!alarms.no_space());
    }

    #[test]
    fn the_record_is_the_layout_earlier_releases_wrote_and_read() {
        let active = BTreeSet::from([
            (7u64, AlarmType::Nospace as i32),
            (9, AlarmType::Corrupt as i32),
        ]);
        let record = stored_record(&active);
        assert_eq!(record, bincode::serialize(&active).unwrap());
        assert_eq!(parse_record(&record).unwrap(), active);
        let none = stored_record(&BTreeSet::new());
        assert_eq!(
            none,
            bincode::serialize(&BTreeSet::<(u64, i32)>::new()).unwrap()
        );
        assert!(parse_record(&none).unwrap().is_empty());
    }

    #[test]
    fn a_damaged_record_is_corrupt_not_a_panic() {
        let record = stored_record(&BTreeSet::from([(7u64, 1i32)]));
        for bad in [&record[..3], &record[..record.len() - 1], &[0xff; 8][..]] {
            assert!(matches!(
                parse_record(bad),
                Err(storage::StorageError::Corrupt(_))
            ));
        }
        let mut longer = record.clone();
        longer.extend_from_slice(&[0; 12]);
        assert!(parse_record(&longer).is_err());
    }
}
