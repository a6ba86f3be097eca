//! The cluster version and downgrades, with etcd 3.6's protocol.
//!
//! etcd decides the cluster version from its members' server versions (the lowest one). Every
//! oxcd member of a cluster runs the same build, so the cluster version is this build's
//! [`crate::ETCD_VERSION`] reduced to major.minor, except while a downgrade is enabled: then it
//! is the downgrade's target, one minor below. etcd's leader lowers it a few seconds after the
//! downgrade is enabled (its version monitor); here it follows the replicated downgrade state
//! directly, so every member reports the same version as soon as it has applied the change.
//!
//! The downgrade state (enabled, target) changes only through Raft (`Op::Downgrade`, etcd's
//! `DowngradeInfoSetRequest`) and is stored in `meta`/`downgrade`, so Raft snapshots and
//! backups carry it.

use std::fmt;

use oxcd_proto::etcdserverpb::DowngradeInfo;
use parking_lot::Mutex;
use prost::Message;

use crate::error::EtcdError;
use crate::storage::{self, Cf, Engine};

const META_DOWNGRADE: &[u8] = b"downgrade";

/// A cluster version: etcd keeps only major.minor of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterVersion {
    major: i64,
    minor: i64,
}

impl ClusterVersion {
    /// This build's version as a cluster version.
    pub fn of_server() -> ClusterVersion {
        semver(crate::ETCD_VERSION).expect("ETCD_VERSION is a semantic version")
    }

    /// A downgrade target as etcd reads it (`convertToClusterVersion`): a semantic version
    /// (`3.5.2`, `3.5.0-rc.1`) or just major.minor (`3.5`); the patch is dropped.
    pub fn parse_target(v: &str) -> Result<ClusterVersion, EtcdError> {
        semver(v)
            .or_else(|| semver(&format!("{v}.0")))
            .ok_or(EtcdError::WrongDowngradeVersionFormat)
    }

    /// How etcd's responses name a cluster version (`version.Cluster`): major.minor.
    pub fn short(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }

    /// The one version a cluster at this version may be downgraded to: the previous minor.
    fn allowed_target(&self) -> ClusterVersion {
        ClusterVersion {
            major: self.major,
            minor: self.minor - 1,
        }
    }
}

/// As etcd's semver prints a cluster version: `3.6.0`.
impl fmt::Display for ClusterVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.0", self.major, self.minor)
    }
}

/// go-semver's grammar, as far as etcd's checks need it: `MAJOR.MINOR.PATCH`, then an optional
/// `-prerelease` and `+metadata`, which a cluster version ignores along with the patch.
fn semver(v: &str) -> Option<ClusterVersion> {
    let v = v.split_once('+').map_or(v, |(v, _)| v);
    let v = v.split_once('-').map_or(v, |(v, _)| v);
    let mut parts = v.splitn(3, '.').map(|p| p.parse::<i64>().ok());
    let (major, minor, _patch) = (parts.next()??, parts.next()??, parts.next()??);
    Some(ClusterVersion { major, minor })
}

/// etcd's check of a member joining a running cluster (`isCompatibleWithCluster`), given the
/// cluster version and downgrade flag a member of that cluster reported: the cluster version
/// must be at most this build's, and while a downgrade is enabled, exactly one minor above it
/// (etcd lets only members of the downgrade's target version join then; every oxcd member runs
/// the cluster's own version, so a new one is refused until the downgrade is canceled). An
/// older oxcd reports no version; it is not checked.
pub fn may_join(cluster_version: &str, downgrade_enabled: bool) -> anyhow::Result<()> {
    let Some(remote) = semver(cluster_version) else {
        return Ok(());
    };
    let local = ClusterVersion::of_server();
    let compatible = match downgrade_enabled {
        true => {
            remote
                == ClusterVersion {
                    major: local.major,
                    minor: local.minor + 1,
                }
        }
        false => (remote.major, remote.minor) <= (local.major, local.minor),
    };
    anyhow::ensure!(
        compatible,
        "incompatible with current running cluster: its cluster version is {}{}, this member runs {}",
        remote.short(),
        if downgrade_enabled { " with a downgrade enabled" } else { "" },
        crate::ETCD_VERSION
    );
    Ok(())
}

/// The replicated downgrade state.
pub struct Downgrade {
    info: Mutex<DowngradeInfo>,
}

fn stored(engine: &Engine) -> storage::Result<DowngradeInfo> {
    match engine.get(Cf::Meta, META_DOWNGRADE)? {
        Some(v) => parse_record(&v),
        None => Ok(DowngradeInfo::default()),
    }
}

/// The downgrade state of a stored record.
pub fn parse_record(stored: &[u8]) -> storage::Result<DowngradeInfo> {
    DowngradeInfo::decode(stored)
        .map_err(|e| storage::StorageError::Corrupt(format!("downgrade: {e}")))
}

/// The cluster version while `info` is the downgrade state: its target once enabled.
pub fn cluster_version(info: &DowngradeInfo) -> ClusterVersion {
    match info.enabled {
        true => ClusterVersion::parse_target(&info.target_version)
            .unwrap_or_else(|_| ClusterVersion::of_server()),
        false => ClusterVersion::of_server(),
    }
}

impl Downgrade {
    pub fn load(engine: &Engine) -> storage::Result<Downgrade> {
        Ok(Downgrade {
            info: Mutex::new(stored(engine)?),
        })
    }

    /// Takes the state the engine now holds (after a snapshot install).
    pub fn reload(&self, engine: &Engine) -> storage::Result<()> {
        *self.info.lock() = stored(engine)?;
        Ok(())
    }

    /// What Status reports: not enabled and no target unless a downgrade is under way.
    pub fn info(&self) -> DowngradeInfo {
        self.info.lock().clone()
    }

    pub fn cluster_version(&self) -> ClusterVersion {
        cluster_version(&self.info.lock())
    }

    /// etcd's `DowngradeValidate`, on state the caller made current with a read barrier.
    pub fn validate(&self, target: ClusterVersion) -> Result<(), EtcdError> {
        if target != self.cluster_version().allowed_target() {
            return Err(EtcdError::InvalidDowngradeTarget);
        }
        if self.info.lock().enabled {
            return Err(EtcdError::DowngradeInProgress);
        }
        Ok(())
    }

    /// Applies an enable (with its target) or a cancel, as etcd's `DowngradeInfoSet` does: a
    /// cancel clears the target. Returns the new state and its stored form.
    pub fn apply(&self, set: &DowngradeInfo) -> (DowngradeInfo, Vec<u8>) {
        let next = match set.enabled {
            true => set.clone(),
            false => DowngradeInfo::default(),
        };
        *self.info.lock() = next.clone();
        let bytes = next.encode_to_vec();
        (next, bytes)
    }

    pub fn meta_key() -> &'static [u8] {
        META_DOWNGRADE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> ClusterVersion {
        ClusterVersion::parse_target(s).unwrap()
    }

    #[test]
    fn targets_parse_as_etcd_reads_them() {
        assert_eq!(v("3.5"), v("3.5.0"));
        assert_eq!(v("3.5.9"), v("3.5.0"));
        assert_eq!(v("3.5.0-rc.1+build"), v("3.5.0"));
        assert_eq!(v("3.5").to_string(), "3.5.0");
        assert_eq!(v("3.5").short(), "3.5");
        for bad in ["", "x", "3", "3.x", "v3.5", "3.5.0.1"] {
            assert_eq!(
                ClusterVersion::parse_target(bad),
                Err(EtcdError::WrongDowngradeVersionFormat),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_member_joins_only_a_cluster_it_is_compatible_with() {
        let here = ClusterVersion::of_server();
        let minor = |delta: i64| {
            ClusterVersion {
                major: here.major,
                minor: here.minor + delta,
            }
            .to_string()
        };
        assert!(may_join(&minor(0), false).is_ok());
        assert!(may_join(&minor(-1), false).is_ok());
        assert!(may_join("", false).is_ok(), "an older oxcd reports nothing");
        let refused = may_join(&minor(1), false).unwrap_err().to_string();
        assert!(refused.starts_with("incompatible with current running cluster"));
        // During a downgrade only a member of the target version may join.
        assert!(may_join(&minor(-1), true).is_err());
        assert!(may_join(&minor(0), true).is_err());
        assert!(may_join(&minor(1), true).is_ok());
    }

    #[test]
    fn enable_lowers_the_cluster_version_and_cancel_restores_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let downgrade = Downgrade::load(&engine).unwrap();
        let server = ClusterVersion::of_server();
        let target = server.allowed_target();
        assert_eq!(downgrade.cluster_version(), server);
        assert_eq!(
            downgrade.validate(server),
            Err(EtcdError::InvalidDowngradeTarget)
        );
        assert_eq!(downgrade.validate(target), Ok(()));

        let (info, stored) = downgrade.apply(&DowngradeInfo {
            enabled: true,
            target_version: target.to_string(),
        });
        assert!(info.enabled);
        assert_eq!(downgrade.cluster_version(), target);
        // Lowered: the old target is now the cluster version, and the next one is in progress.
        assert_eq!(
            downgrade.validate(target),
            Err(EtcdError::InvalidDowngradeTarget)
        );
        assert_eq!(
            downgrade.validate(target.allowed_target()),
            Err(EtcdError::DowngradeInProgress)
        );

        let mut batch = engine.batch();
        batch.put(Cf::Meta, Downgrade::meta_key(), &stored);
        engine.write(batch, true).unwrap();
        let reloaded = Downgrade::load(&engine).unwrap();
        assert_eq!(reloaded.info(), info);

        let (info, _) = downgrade.apply(&DowngradeInfo {
            enabled: false,
            target_version: String::new(),
        });
        assert_eq!(info, DowngradeInfo::default());
        assert_eq!(downgrade.cluster_version(), server);
    }
}
