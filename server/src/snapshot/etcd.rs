//! etcd's own snapshots — bbolt files in etcd's schema (docs/BBOLT.md), from `etcdctl snapshot
//! save` or a copied `member/snap/db` — read as the records of oxcd's store, so `snapshot
//! restore` takes them as it takes oxcd's backups. etcd's `key` bucket is already oxcd's
//! revision layout and is copied as it is; leases, the compaction point, auth and alarms are
//! translated to oxcd's records. Membership (`members`, `cluster`) and Raft's position (`term`,
//! `consistent_index`) are not carried: a restore starts a new cluster from its flags, as
//! etcdutl's does.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use oxcd_bbolt::trailer::{self, Trailer};
use oxcd_bbolt::{Bucket, Db, Value};
use oxcd_proto::authpb::{Role, User};
use oxcd_proto::etcdserverpb::{AlarmMember, DowngradeInfo};
use oxcd_proto::mvccpb::KeyValue;
use prost::Message;

use super::backup::io_error;
use super::{BackupError, BackupStatus};
use crate::auth::AuthRecord;
use crate::lease::StoredLease;
use crate::mvcc::Revision;
use crate::storage::Cf;

/// etcd's bucket names.
pub(super) mod bucket {
    pub const ALARM: &str = "alarm";
    pub const AUTH: &str = "auth";
    pub const AUTH_ROLES: &str = "authRoles";
    pub const AUTH_USERS: &str = "authUsers";
    pub const CLUSTER: &str = "cluster";
    pub const KEY: &str = "key";
    pub const LEASE: &str = "lease";
    pub const MEMBERS: &str = "members";
    pub const MEMBERS_REMOVED: &str = "members_removed";
    pub const META: &str = "meta";
}

/// etcd's keys in its `auth`, `cluster` and `meta` buckets.
pub(super) mod meta_key {
    pub const AUTH_ENABLED: &[u8] = b"authEnabled";
    pub const AUTH_REVISION: &[u8] = b"authRevision";
    pub const CLUSTER_VERSION: &[u8] = b"clusterVersion";
    pub const DOWNGRADE: &[u8] = b"downgrade";
    pub const CONF_STATE: &[u8] = b"confState";
    pub const CONSISTENT_INDEX: &[u8] = b"consistent_index";
    pub const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
    pub const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
    pub const STORAGE_VERSION: &[u8] = b"storageVersion";
    pub const TERM: &[u8] = b"term";
}

/// etcd's version.DowngradeInfo as its backend stores it (Go's encoding/json of the struct).
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct DowngradeJson {
    #[serde(rename = "target-version")]
    pub target_version: String,
    pub enabled: bool,
}

/// Whether the file starts like a bbolt file (meta page 0's magic, after its page header).
pub fn is_bbolt(path: &Path) -> Result<bool, BackupError> {
    let mut head = [0u8; 20];
    let mut file = File::open(path).map_err(io_error(path))?;
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..]).map_err(io_error(path))? {
            0 => return Ok(false),
            n => read += n,
        }
    }
    Ok(u32::from_le_bytes(head[16..20].try_into().expect("4 bytes")) == oxcd_bbolt::format::MAGIC)
}

/// An etcd snapshot open for reading, its sha256 trailer checked unless told not to.
pub struct EtcdSnapshot {
    db: Db,
    path: String,
    /// The bytes of the pages read so far, for a restore's progress.
    bytes_read: Cell<u64>,
}

impl EtcdSnapshot {
    pub fn open(path: &Path, skip_hash_check: bool) -> Result<EtcdSnapshot, BackupError> {
        Self::open_reporting(path, skip_hash_check, |_, _| {})
    }

    /// [`EtcdSnapshot::open`], telling `hashed` how far the hash check has got (bytes hashed,
    /// bytes to hash): it reads the whole file before anything else is read.
    pub fn open_reporting(
        path: &Path,
        skip_hash_check: bool,
        hashed: impl FnMut(u64, u64),
    ) -> Result<EtcdSnapshot, BackupError> {
        let file = File::open(path).map_err(io_error(path))?;
        if !skip_hash_check {
            match trailer::check_reporting(&file, hashed).map_err(io_error(path))? {
                Trailer::Absent => return Err(BackupError::MissingHash),
                Trailer::Present { stored, computed } if stored != computed => {
                    return Err(BackupError::HashMismatch {
                        expected: stored.to_vec(),
                        got: computed.to_vec(),
                    })
                }
                Trailer::Present { .. } => {}
            }
        }
        let path = path.display().to_string();
        let db = Db::from_file(file).map_err(|e| BackupError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(EtcdSnapshot {
            db,
            path,
            bytes_read: Cell::new(0),
        })
    }

    /// The database's size (its pages, without the trailer).
    pub fn size(&self) -> u64 {
        self.db.size()
    }

    /// The bytes of the database's pages read so far, up to [`EtcdSnapshot::size`].
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.get()
    }

    fn corrupt(&self, reason: impl std::fmt::Display) -> BackupError {
        BackupError::Corrupt {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    fn bucket(&self, name: &str) -> Result<Option<Bucket>, BackupError> {
        self.db
            .bucket(&self.db.root(), name.as_bytes())
            .map_err(|e| self.corrupt(e))
    }

    /// Every key and value of bucket `name` (none if it does not exist), in key order.
    fn for_each(
        &self,
        name: &str,
        mut visit: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), BackupError>,
    ) -> Result<(), BackupError> {
        let Some(bucket) = self.bucket(name)? else {
            return Ok(());
        };
        let mut entries = self.db.entries(&bucket);
        let mut counted = 0;
        while let Some(entry) = entries.next() {
            let entry = entry.map_err(|e| self.corrupt(e))?;
            let read = entries.bytes_read();
            self.bytes_read
                .set(self.bytes_read.get() + (read - counted));
            counted = read;
            match entry.value {
                Value::Data(v) => visit(entry.key, v)?,
                Value::Bucket(_) => return Err(self.corrupt(format!("nested bucket in {name}"))),
            }
        }
        Ok(())
    }

    /// What etcdctl's `snapshot status` reports, computed as it does: a CRC-32C over every
    /// bucket name and every key and value in file order, the main revision of the last `key`
    /// entry, the number of entries in all buckets, and the database's size in pages (the
    /// trailer not included). etcdctl checks no hash here, and neither does this.
    pub fn status(&self) -> Result<BackupStatus, BackupError> {
        let (mut hash, mut revision, mut total_keys) = (0u32, 0, 0);
        for bucket in self.db.entries(&self.db.root()) {
            let bucket = bucket.map_err(|e| self.corrupt(e))?;
            let name = String::from_utf8_lossy(&bucket.key).into_owned();
            hash = crc32c::crc32c_append(hash, &bucket.key);
            self.for_each(&name, |k, v| {
                hash = crc32c::crc32c_append(crc32c::crc32c_append(hash, &k), &v);
                total_keys += 1;
                if name == bucket::KEY {
                    revision = Revision::from_key(&k)
                        .ok_or_else(|| self.corrupt(format!("bad revision key {k:?}")))?
                        .0
                        .main;
                }
                Ok(())
            })?;
        }
        Ok(BackupStatus {
            hash,
            revision,
            total_keys,
            total_size: self.db.size(),
        })
    }

    /// Passes oxcd's records of this snapshot to `visit`: every revision, then leases, then
    /// the metadata records (revision, compaction point, auth, alarms).
    pub fn records(
        &self,
        visit: &mut impl FnMut(Cf, &[u8], &[u8]) -> Result<(), BackupError>,
    ) -> Result<(), BackupError> {
        let last_main = self.revisions(visit)?;
        self.for_each(bucket::LEASE, |_, v| {
            // etcd's leasepb.Lease: oxcd keeps its ID and TTL (RemainingTTL is a checkpoint).
            let lease = StoredLease::decode(v.as_slice())
                .map_err(|e| self.corrupt(format!("lease: {e}")))?;
            visit(Cf::Lease, &StoredLease::key(lease.id), &lease.value())
        })?;
        let compacted = self.compaction()?;
        // etcd's own rule on opening a backend: the revision is at least the compaction's.
        let current = last_main.max(compacted.map_or(0, |(s, _)| s)).max(1);
        for (k, v) in crate::mvcc::restored_revision_records(current, compacted) {
            visit(Cf::Meta, k, &v)?;
        }
        if let Some(auth) = self.auth()? {
            visit(Cf::Meta, crate::auth::AUTH_META_KEY, &auth)?;
        }
        if let Some(alarms) = self.alarms()? {
            visit(Cf::Meta, crate::alarm::Alarms::meta_key(), &alarms)?;
        }
        if let Some(downgrade) = self.downgrade()? {
            visit(
                Cf::Meta,
                crate::downgrade::Downgrade::meta_key(),
                &downgrade,
            )?;
        }
        Ok(())
    }

    /// oxcd's downgrade record from `cluster`/`downgrade`, if a downgrade is enabled.
    fn downgrade(&self) -> Result<Option<Vec<u8>>, BackupError> {
        let mut enabled = None;
        self.for_each(bucket::CLUSTER, |k, v| {
            if k == meta_key::DOWNGRADE {
                let info: DowngradeJson = serde_json::from_slice(&v)
                    .map_err(|e| self.corrupt(format!("downgrade: {e}")))?;
                enabled = info.enabled.then(|| {
                    DowngradeInfo {
                        enabled: true,
                        target_version: info.target_version,
                    }
                    .encode_to_vec()
                });
            }
            Ok(())
        })?;
        Ok(enabled)
    }

    /// The `key` bucket as it is (etcd's layout is oxcd's), each entry checked; returns the last
    /// main revision.
    fn revisions(
        &self,
        visit: &mut impl FnMut(Cf, &[u8], &[u8]) -> Result<(), BackupError>,
    ) -> Result<i64, BackupError> {
        let mut last_main = 0;
        self.for_each(bucket::KEY, |k, v| {
            let Some((rev, _)) = Revision::from_key(&k) else {
                return Err(self.corrupt(format!("bad revision key {k:?}")));
            };
            KeyValue::decode(v.as_slice())
                .map_err(|e| self.corrupt(format!("revision {rev:?}: {e}")))?;
            last_main = rev.main;
            visit(Cf::Kv, &k, &v)
        })?;
        Ok(last_main)
    }

    /// The compaction point (scheduled, finished) from `meta`, if the store was ever compacted.
    fn compaction(&self) -> Result<Option<(i64, i64)>, BackupError> {
        let (mut scheduled, mut finished) = (None, None);
        self.for_each(bucket::META, |k, v| {
            let rev = || {
                Revision::from_key(&v)
                    .map(|(r, _)| r.main)
                    .ok_or_else(|| self.corrupt(format!("meta {k:?}: bad revision")))
            };
            match k.as_slice() {
                meta_key::SCHEDULED_COMPACT => scheduled = Some(rev()?),
                meta_key::FINISHED_COMPACT => finished = Some(rev()?),
                _ => {}
            }
            Ok(())
        })?;
        Ok(scheduled.map(|s| (s, finished.unwrap_or(s))))
    }

    /// oxcd's auth record from `auth`, `authUsers` and `authRoles`, unless auth was never used.
    fn auth(&self) -> Result<Option<Vec<u8>>, BackupError> {
        let (mut enabled, mut revision) = (false, 1);
        self.for_each(bucket::AUTH, |k, v| {
            match k.as_slice() {
                meta_key::AUTH_ENABLED => enabled = v == [1],
                meta_key::AUTH_REVISION if v.len() == 8 => {
                    revision = u64::from_be_bytes(v.try_into().expect("8 bytes"))
                }
                _ => {}
            }
            Ok(())
        })?;
        let mut users = Vec::new();
        self.for_each(bucket::AUTH_USERS, |_, v| {
            users.push(User::decode(v.as_slice()).map_err(|e| self.corrupt(format!("user: {e}")))?);
            Ok(())
        })?;
        let mut roles = Vec::new();
        self.for_each(bucket::AUTH_ROLES, |_, v| {
            roles.push(Role::decode(v.as_slice()).map_err(|e| self.corrupt(format!("role: {e}")))?);
            Ok(())
        })?;
        let used = enabled || !users.is_empty() || !roles.is_empty();
        Ok(used.then(|| {
            AuthRecord {
                enabled,
                revision,
                users,
                roles,
            }
            .encode()
        }))
    }

    /// oxcd's alarms record from `alarm` (whose keys are `AlarmMember`s), if any is raised.
    fn alarms(&self) -> Result<Option<Vec<u8>>, BackupError> {
        let mut alarms = BTreeSet::new();
        self.for_each(bucket::ALARM, |k, _| {
            let alarm = AlarmMember::decode(k.as_slice())
                .map_err(|e| self.corrupt(format!("alarm: {e}")))?;
            alarms.insert((alarm.member_id, alarm.alarm));
            Ok(())
        })?;
        Ok((!alarms.is_empty()).then(|| crate::alarm::stored_record(&alarms)))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;

    /// Files of real etcd (bbolt/testdata/make-fixtures.sh): 30 puts at revisions 2..=31, an
    /// overwrite, a deletion, a put at 34 compacted at, a range deletion at 35, a leased put at
    /// 36; user alice with role reader.
    pub(in crate::snapshot) fn fixture(name: &str) -> PathBuf {
        // Read at run time: the shared build cache may hold a binary built in another checkout.
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap())
            .join("../bbolt/testdata")
            .join(name)
    }

    /// The releases in bbolt/testdata, each with its figures from `snapshot status -w json`.
    const RELEASES: [(&str, BackupStatus); 4] = [
        ("3.7.3", status(3057377961, 52, 32768)),
        ("3.6.16", status(71683957, 52, 28672)),
        ("3.5.36", status(4283777585, 51, 28672)),
        ("3.4.23", status(3150895091, 49, 24576)),
    ];

    const fn status(hash: u32, total_keys: u64, total_size: u64) -> BackupStatus {
        BackupStatus {
            hash,
            revision: 36,
            total_keys,
            total_size,
        }
    }

    /// A release's two files, each opened as `snapshot restore` opens it: the snapshot etcdctl
    /// saved (its sha256 trailer checked) and the member's `member/snap/db` copied after etcd
    /// stopped (no trailer, so --skip-hash-check).
    fn files(version: &str) -> [(String, EtcdSnapshot); 2] {
        let open = |name: String, skip_hash_check| {
            let path = fixture(&name);
            assert!(is_bbolt(&path).unwrap(), "{name}");
            let snapshot = EtcdSnapshot::open(&path, skip_hash_check)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, snapshot)
        };
        [
            open(format!("etcd-{version}.db"), false),
            open(format!("etcd-{version}-member.db"), true),
        ]
    }

    fn records(snapshot: &EtcdSnapshot) -> Vec<(Cf, Vec<u8>, Vec<u8>)> {
        let mut all = Vec::new();
        snapshot
            .records(&mut |cf, k, v| {
                all.push((cf, k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap();
        all
    }

    #[test]
    fn etcd_snapshots_become_oxcds_records() {
        for (version, _) in RELEASES {
            let [(name, saved), (copied_name, copied)] = files(version);
            let all = records(&saved);
            // Both files hold the same buckets (etcdctl prints the same hash for them).
            assert_eq!(records(&copied), all, "{copied_name}");
            let meta: BTreeMap<_, _> = all
                .iter()
                .filter(|(cf, _, _)| *cf == Cf::Meta)
                .map(|(_, k, v)| (k.clone(), v.clone()))
                .collect();
            let current = crate::mvcc::restored_revision_records(36, Some((34, 34)));
            for (k, v) in current {
                assert_eq!(meta[k], v, "{name}: {}", String::from_utf8_lossy(k));
            }
            let kvs: Vec<_> = all.iter().filter(|(cf, _, _)| *cf == Cf::Kv).collect();
            // 29 keys alive at 34 (key/02 deleted), 10 tombstones at 35, the leased put.
            assert_eq!(kvs.len(), 29 + 10 + 1, "{name}");
            let leases: Vec<_> = all.iter().filter(|(cf, _, _)| *cf == Cf::Lease).collect();
            assert_eq!(leases.len(), 1);
            assert_eq!(
                StoredLease::decode(leases[0].2.as_slice()).unwrap().ttl,
                3600
            );
            assert!(meta.contains_key(crate::auth::AUTH_META_KEY));
        }
    }

    /// The figures in [`RELEASES`] are what `ETCDCTL_API=3 etcdctl snapshot status F -w json`
    /// (Debian's 3.4.23, the last etcdctl with the command, whose output oxcdctl's matches)
    /// prints for both files of a release. Each release's own `etcdutl snapshot status F -w json`
    /// prints the same hash, revision and size; its totalKey is the same in 3.5, while 3.6 and
    /// 3.7 count only the keys alive at the revision (20 here).
    #[test]
    fn status_is_what_etcdctl_prints() {
        for (version, expected) in RELEASES {
            for (name, snapshot) in files(version) {
                assert_eq!(snapshot.status().unwrap(), expected, "{name}");
            }
        }
    }

    #[test]
    fn a_damaged_etcd_snapshot_is_refused_by_its_hash_or_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = std::fs::read(fixture("etcd-3.7.3.db")).unwrap();
        let damaged = dir.path().join("damaged.db");
        bytes[3 * 4096 + 20] ^= 0xff;
        std::fs::write(&damaged, &bytes).unwrap();
        assert!(matches!(
            EtcdSnapshot::open(&damaged, false),
            Err(BackupError::HashMismatch { .. })
        ));
        let bare = dir.path().join("db");
        std::fs::write(&bare, &bytes[..bytes.len() - 32]).unwrap();
        assert!(matches!(
            EtcdSnapshot::open(&bare, false),
            Err(BackupError::MissingHash)
        ));
        // The root bucket's page, as meta page 0 names it.
        let root = u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize;
        bytes[root * 4096..(root + 1) * 4096].fill(0xee);
        std::fs::write(&bare, &bytes[..bytes.len() - 32]).unwrap();
        let read = EtcdSnapshot::open(&bare, true).and_then(|s| s.records(&mut |_, _, _| Ok(())));
        assert!(matches!(read, Err(BackupError::Corrupt { .. })), "{read:?}");
    }
}
