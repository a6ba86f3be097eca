//! The rows etcdctl's simple and table formats share for members and endpoints.

use oxcd_proto::etcdserverpb::MemberListResponse;

use super::text::humanize_bytes;
use super::{EndpointHash, EndpointHealth, EndpointStatus};

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

pub fn endpoint_status(statuses: &[EndpointStatus]) -> Rows {
    Rows {
        header: vec![
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
        rows: statuses
            .iter()
            .map(|s| {
                let r = &s.status;
                let member_id = r.header.as_ref().map_or(0, |h| h.member_id);
                vec![
                    s.endpoint.clone(),
                    format!("{member_id:x}"),
                    r.version.clone(),
                    humanize_bytes(r.db_size.max(0) as u64),
                    (r.leader == member_id).to_string(),
                    r.is_learner.to_string(),
                    r.raft_term.to_string(),
                    r.raft_index.to_string(),
                    r.raft_applied_index.to_string(),
                    r.errors.join(", "),
                ]
            })
            .collect(),
    }
}

pub fn endpoint_hash_kv(hashes: &[EndpointHash]) -> Rows {
    Rows {
        header: vec!["endpoint", "hash"],
        rows: hashes
            .iter()
            .map(|h| vec![h.endpoint.clone(), h.hash.hash.to_string()])
            .collect(),
    }
}
