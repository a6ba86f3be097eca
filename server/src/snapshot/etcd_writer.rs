//! The store written as etcd's own snapshot: a bbolt database in etcd's schema
//! (docs/BBOLT.md), so that etcdctl and etcdutl read oxcd's backups and `etcdutl snapshot
//! restore` turns one into a real etcd member's data: the way back from oxcd to etcd.
//!
//! Everything comes from one engine snapshot. The `key` and `lease` buckets are oxcd's own
//! revision and lease records as they are (etcd's layout is oxcd's); the compaction point,
//! auth, alarms and the downgrade state are translated from oxcd's metadata records; `meta`,
//! `members` and `cluster` carry the Raft position, membership and cluster version the
//! snapshot was taken at, as etcd's backend records them.

use std::collections::BTreeMap;
use std::io::Write;

use oxcd_bbolt::{Builder, Plan, WriteOptions};
use oxcd_proto::etcdserverpb::{AlarmMember, DowngradeInfo};
use prost::Message;
use serde::Serialize;

use super::etcd::{bucket, meta_key, DowngradeJson};
use crate::auth::{AuthRecord, AUTH_META_KEY};
use crate::mvcc::Revision;
use crate::raft::{AppliedPosition, MemberInfo};
use crate::storage::{Cf, Snapshot, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Bbolt(#[from] oxcd_bbolt::Error),
}

impl From<std::io::Error> for ExportError {
    fn from(e: std::io::Error) -> Self {
        ExportError::Bbolt(e.into())
    }
}

/// One engine snapshot, ready to be written as an etcd snapshot (twice: see [`oxcd_bbolt::plan`]).
pub struct EtcdExport<'a> {
    snap: &'a Snapshot<'a>,
    position: AppliedPosition,
    auth: Option<AuthRecord>,
    alarms: Vec<Vec<u8>>,
    downgrade: DowngradeInfo,
    compaction: Option<(i64, Option<i64>)>,
}

impl<'a> EtcdExport<'a> {
    pub fn new(snap: &'a Snapshot<'a>) -> Result<EtcdExport<'a>, ExportError> {
        let mut meta = BTreeMap::new();
        snap.scan_once(Cf::Meta, &[], None, |k, v| {
            meta.insert(k.to_vec(), v.to_vec());
            true
        })?;
        let record = |key: &[u8]| meta.get(key).map(Vec::as_slice);
        let auth = record(AUTH_META_KEY).map(AuthRecord::decode).transpose()?;
        let alarms = match record(crate::alarm::Alarms::meta_key()) {
            Some(stored) => crate::alarm::parse_record(stored)?,
            None => Default::default(),
        };
        // etcd's `alarm` bucket is keyed by the encoded AlarmMember, in byte order.
        let mut alarms: Vec<Vec<u8>> = alarms
            .into_iter()
            .map(|(member_id, alarm)| AlarmMember { member_id, alarm }.encode_to_vec())
            .collect();
        alarms.sort();
        let downgrade = match record(crate::downgrade::Downgrade::meta_key()) {
            Some(stored) => crate::downgrade::parse_record(stored)?,
            None => DowngradeInfo::default(),
        };
        Ok(EtcdExport {
            snap,
            position: crate::raft::applied_position(snap)?,
            auth,
            alarms,
            downgrade,
            compaction: crate::mvcc::compaction_point(&meta),
        })
    }

    /// The planning pass: the file's layout and size.
    pub fn plan(&self) -> Result<Plan, ExportError> {
        oxcd_bbolt::plan(WriteOptions::default(), |b| self.fill(b))
    }

    /// The writing pass of a `plan` made by this export.
    pub fn write(&self, plan: &Plan, out: &mut impl Write) -> Result<(), ExportError> {
        plan.write(out, |b| self.fill(b))
    }

    /// etcd's buckets, in name order as bbolt keeps them.
    fn fill(&self, b: &mut Builder<'_>) -> Result<(), ExportError> {
        in_bucket(b, bucket::ALARM, |b| {
            for alarm in &self.alarms {
                b.put(alarm, &[])?;
            }
            Ok(())
        })?;
        let auth = self.auth.as_ref();
        in_bucket(b, bucket::AUTH, |b| {
            if let Some(auth) = auth {
                b.put(meta_key::AUTH_ENABLED, &[auth.enabled as u8])?;
            }
            let revision = auth.map_or(1, |a| a.revision);
            b.put(meta_key::AUTH_REVISION, &revision.to_be_bytes())?;
            Ok(())
        })?;
        let named = |items: Vec<(Vec<u8>, Vec<u8>)>| {
            let mut items = items;
            items.sort();
            items
        };
        let roles = named(auth.map_or_else(Vec::new, |a| {
            a.roles
                .iter()
                .map(|r| (r.name.clone(), r.encode_to_vec()))
                .collect()
        }));
        put_all(b, bucket::AUTH_ROLES, &roles)?;
        let users = named(auth.map_or_else(Vec::new, |a| {
            a.users
                .iter()
                .map(|u| (u.name.clone(), u.encode_to_vec()))
                .collect()
        }));
        put_all(b, bucket::AUTH_USERS, &users)?;
        in_bucket(b, bucket::CLUSTER, |b| {
            b.put(meta_key::CLUSTER_VERSION, self.storage_version().as_bytes())?;
            if self.downgrade.enabled {
                b.put(meta_key::DOWNGRADE, &downgrade_json(&self.downgrade))?;
            }
            Ok(())
        })?;
        self.copy(b, bucket::KEY, Cf::Kv)?;
        self.copy(b, bucket::LEASE, Cf::Lease)?;
        let members = named(
            self.position
                .members
                .iter()
                .map(|m| (format!("{:x}", m.id).into_bytes(), member_json(m)))
                .collect(),
        );
        put_all(b, bucket::MEMBERS, &members)?;
        in_bucket(b, bucket::MEMBERS_REMOVED, |_| Ok(()))?;
        in_bucket(b, bucket::META, |b| {
            b.put(meta_key::CONF_STATE, &self.conf_state_json())?;
            b.put(
                meta_key::CONSISTENT_INDEX,
                &self.position.index.to_be_bytes(),
            )?;
            if let Some((scheduled, finished)) = self.compaction {
                if let Some(finished) = finished {
                    b.put(meta_key::FINISHED_COMPACT, &revision_key(finished))?;
                }
                b.put(meta_key::SCHEDULED_COMPACT, &revision_key(scheduled))?;
            }
            b.put(meta_key::STORAGE_VERSION, self.storage_version().as_bytes())?;
            b.put(meta_key::TERM, &self.position.term.to_be_bytes())?;
            Ok(())
        })
    }

    /// etcd 3.6 writes the cluster version as its storage version (lowered by a downgrade).
    fn storage_version(&self) -> String {
        crate::downgrade::cluster_version(&self.downgrade).to_string()
    }

    /// Copies a column family whose records are etcd's bucket entries already.
    fn copy(&self, b: &mut Builder<'_>, name: &str, cf: Cf) -> Result<(), ExportError> {
        in_bucket(b, name, |b| {
            let mut failed = None;
            self.snap
                .scan_once(cf, &[], None, |k, v| match b.put(k, v) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                })?;
            failed.map_or(Ok(()), |e| Err(e.into()))
        })
    }

    /// raftpb.ConfState as etcd's backend stores it (Go's encoding/json of the struct).
    fn conf_state_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct ConfState {
            #[serde(skip_serializing_if = "Vec::is_empty")]
            voters: Vec<u64>,
            #[serde(skip_serializing_if = "Vec::is_empty")]
            learners: Vec<u64>,
            auto_leave: bool,
        }
        let of = |learner: bool| {
            self.position
                .members
                .iter()
                .filter(|m| m.learner == learner)
                .map(|m| m.id)
                .collect()
        };
        serde_json::to_vec(&ConfState {
            voters: of(false),
            learners: of(true),
            auto_leave: false,
        })
        .expect("plain data serializes")
    }
}

fn in_bucket(
    b: &mut Builder<'_>,
    name: &str,
    fill: impl FnOnce(&mut Builder<'_>) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    b.begin_bucket(name.as_bytes())?;
    fill(b)?;
    b.end_bucket()?;
    Ok(())
}

fn put_all(
    b: &mut Builder<'_>,
    name: &str,
    entries: &[(Vec<u8>, Vec<u8>)],
) -> Result<(), ExportError> {
    in_bucket(b, name, |b| {
        for (k, v) in entries {
            b.put(k, v)?;
        }
        Ok(())
    })
}

/// etcd keeps compaction points as revision keys (main, sub 0).
fn revision_key(main: i64) -> Vec<u8> {
    Revision::new(main, 0).to_key(false)
}

/// etcd's membership.Member as its backend stores it (Go's encoding/json, omitempty fields).
fn member_json(m: &MemberInfo) -> Vec<u8> {
    #[derive(Serialize)]
    struct Member<'a> {
        id: u64,
        #[serde(rename = "peerURLs")]
        peer_urls: &'a [String],
        #[serde(rename = "isLearner", skip_serializing_if = "std::ops::Not::not")]
        is_learner: bool,
        #[serde(skip_serializing_if = "str::is_empty")]
        name: &'a str,
        #[serde(rename = "clientURLs", skip_serializing_if = "<[String]>::is_empty")]
        client_urls: &'a [String],
    }
    serde_json::to_vec(&Member {
        id: m.id,
        peer_urls: &m.member.peer_urls,
        is_learner: m.learner,
        name: &m.member.name,
        client_urls: &m.member.client_urls,
    })
    .expect("plain data serializes")
}

fn downgrade_json(info: &DowngradeInfo) -> Vec<u8> {
    serde_json::to_vec(&DowngradeJson {
        target_version: info.target_version.clone(),
        enabled: info.enabled,
    })
    .expect("plain data serializes")
}
