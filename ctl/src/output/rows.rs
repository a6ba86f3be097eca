//! The rows etcdctl's simple and table formats share for members and endpoints.

use oxcd_proto::etcdserverpb::MemberListResponse;

use super::text::humanize_bytes;
use super::{DataHashKv, EndpointHash, EndpointHealth, EndpointStatus, Layout};

pub struct Rows {
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

pub fn member_list(r: &MemberListResponse) -> Rows {
    Rows {
        header: vec![
            "ID",
            "Status",
            "Name",
            "Peer Addrs",
            "Client Addrs",
            "Is Learner",
        ],
        rows: r
            .members
            .iter()
            .map(|m| {
                vec![
                    format!("{:x}", m.id),
                    if m.name.is_empty() {
                        "unstarted"
                    } else {
                        "started"
                    }
                    .into(),
                    m.name.clone(),
                    m.peer_ur_ls.join(","),
                    m.client_ur_ls.join(","),
                    m.is_learner.to_string(),
                ]
            })
            .collect(),
    }
}

pub fn endpoint_health(health: &[EndpointHealth]) -> Rows {
    Rows {
        header: vec!["endpoint", "health", "took", "error"],
        rows: health
            .iter()
            .map(|h| {
                vec![
                    h.endpoint.clone(),
                    h.health.to_string(),
                    h.took.clone(),
                    h.error.clone(),
                ]
            })
            .collect(),
    }
}

pub fn endpoint_status(statuses: &[EndpointStatus], layout: Layout) -> Rows {
    let header = match layout {
        Layout::Etcdctl34 => vec![
            "endpoint",
            "ID",
            "version",
            "db size",
            "is leader",
            "is learner",
            "raft term",
            "raft index",
            "raft applied index",
            "errors",
        ],
        Layout::Etcdctl37 => vec![
            "endpoint",
            "ID",
            "version",
            "storage version",
            "db size",
            "in use",
            "percentage not in use",
            "quota",
            "is leader",
            "is learner",
            "raft term",
            "raft index",
            "raft applied index",
            "errors",
            "downgrade target version",
            "downgrade enabled",
        ],
    };
    let rows = statuses
        .iter()
        .map(|s| {
            let r = &s.status;
            let member_id = r.header.as_ref().map_or(0, |h| h.member_id);
            let size = humanize_bytes(r.db_size.max(0) as u64);
            let leadership = [
                (r.leader == member_id).to_string(),
                r.is_learner.to_string(),
                r.raft_term.to_string(),
                r.raft_index.to_string(),
                r.raft_applied_index.to_string(),
                r.errors.join(", "),
            ];
            let mut row = vec![
                s.endpoint.clone(),
                format!("{member_id:x}"),
                r.version.clone(),
            ];
            match layout {
                Layout::Etcdctl34 => {
                    row.push(size);
                    row.extend(leadership);
                }
                Layout::Etcdctl37 => {
                    let downgrade = r.downgrade_info.clone().unwrap_or_default();
                    row.extend([
                        r.storage_version.clone(),
                        size,
                        humanize_bytes(r.db_size_in_use.max(0) as u64),
                        format!("{}%", percentage_not_in_use(r.db_size, r.db_size_in_use)),
                        humanize_bytes(r.db_size_quota.max(0) as u64),
                    ]);
                    row.extend(leadership);
                    row.extend([downgrade.target_version, downgrade.enabled.to_string()]);
                }
            }
            row
        })
        .collect();
    Rows { header, rows }
}

/// etcdctl's integer `100 - inUse*100/size`. A member always reports a non-empty database, so
/// etcdctl divides unguarded; an empty one counts as fully in use here rather than failing.
fn percentage_not_in_use(size: i64, in_use: i64) -> i64 {
    in_use
        .saturating_mul(100)
        .checked_div(size)
        .map_or(0, |used| 100 - used)
}

/// 3.7 adds the revision each hash was taken at.
pub fn endpoint_hash_kv(hashes: &[EndpointHash], layout: Layout) -> Rows {
    let with_revision = layout == Layout::Etcdctl37;
    let mut header = vec!["endpoint", "hash"];
    if with_revision {
        header.push("hash_revision");
    }
    Rows {
        header,
        rows: hashes
            .iter()
            .map(|h| {
                let mut row = vec![h.endpoint.clone(), h.hash.hash.to_string()];
                if with_revision {
                    row.push(h.hash.hash_revision.to_string());
                }
                row
            })
            .collect(),
    }
}

pub fn data_hash_kv(h: &DataHashKv) -> Rows {
    Rows {
        header: vec!["hash", "hash revision", "compact revision"],
        rows: vec![vec![
            h.hash.to_string(),
            h.hash_revision.to_string(),
            h.compact_revision.to_string(),
        ]],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentage_not_in_use_is_integer_arithmetic() {
        assert_eq!(percentage_not_in_use(20480, 16384), 20);
        assert_eq!(percentage_not_in_use(3, 1), 67);
        assert_eq!(percentage_not_in_use(0, 0), 0);
    }
}
