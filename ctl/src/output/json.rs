//! `-w json`: what Go's encoding/json makes of the Go structs etcdctl prints. Protobuf messages
//! carry `json:"name,omitempty"` tags (zero values vanish); clientv3's wrapper structs (lease and
//! watch responses) use Go field names, no omitempty, and embed the header's fields inline.
//! Fields etcd added after 3.4 (`hash_revision`, `storageVersion`, `dbSizeQuota`,
//! `downgradeInfo`) are printed only in etcdctl 3.7's [`Layout`]: etcdctl 3.4 does not know them.

use oxcd_proto::authpb::Permission;
use oxcd_proto::etcdserverpb::{
    response_op, AlarmResponse, AuthRoleGetResponse, AuthRoleListResponse, AuthStatusResponse,
    AuthUserGetResponse, AuthUserListResponse, DeleteRangeResponse, DowngradeResponse,
    HashKvResponse, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseRevokeResponse, LeaseTimeToLiveResponse, Member, MemberAddResponse, MemberListResponse,
    MemberPromoteResponse, MemberRemoveResponse, MemberUpdateResponse, MoveLeaderResponse,
    PutResponse, RangeResponse, ResponseHeader, StatusResponse, TxnResponse, WatchResponse,
};
use oxcd_proto::mvccpb::{Event, KeyValue};

use super::text::base64;
use super::{
    AuthChange, DataHashKv, EndpointHash, EndpointHealth, EndpointStatus, Layout, Printer,
};
use crate::failure::CtlResult;

/// One JSON object under construction; fields appear in the order they are added.
struct Obj {
    out: String,
}

impl Obj {
    fn new() -> Obj {
        Obj { out: "{".into() }
    }

    fn key(&mut self, name: &str) {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        self.out.push_str(&string(name));
        self.out.push(':');
    }

    fn raw(mut self, name: &str, value: &str) -> Obj {
        self.key(name);
        self.out.push_str(value);
        self
    }

    fn num(self, name: &str, value: impl ToString) -> Obj {
        self.raw(name, &value.to_string())
    }

    fn num_omitempty<T: ToString + Default + PartialEq>(self, name: &str, value: T) -> Obj {
        if value == T::default() {
            return self;
        }
        self.num(name, value)
    }

    fn boolean(self, name: &str, value: bool) -> Obj {
        self.raw(name, if value { "true" } else { "false" })
    }

    fn bool_omitempty(self, name: &str, value: bool) -> Obj {
        if value {
            self.boolean(name, true)
        } else {
            self
        }
    }

    fn str(self, name: &str, value: &str) -> Obj {
        self.raw(name, &string(value))
    }

    fn str_omitempty(self, name: &str, value: &str) -> Obj {
        if value.is_empty() {
            return self;
        }
        self.str(name, value)
    }

    fn bytes_omitempty(self, name: &str, value: &[u8]) -> Obj {
        if value.is_empty() {
            return self;
        }
        self.raw(name, &format!("\"{}\"", base64(value)))
    }

    fn obj_omitempty<T>(self, name: &str, value: Option<&T>, encode: fn(&T) -> String) -> Obj {
        match value {
            Some(v) => self.raw(name, &encode(v)),
            None => self,
        }
    }

    /// A slice with omitempty: absent when empty.
    fn list_omitempty<T>(self, name: &str, items: &[T], encode: impl Fn(&T) -> String) -> Obj {
        if items.is_empty() {
            return self;
        }
        self.raw(name, &list(items, encode))
    }

    fn done(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

fn list<T>(items: &[T], encode: impl Fn(&T) -> String) -> String {
    let parts: Vec<String> = items.iter().map(encode).collect();
    format!("[{}]", parts.join(","))
}

/// A JSON string as Go escapes it, including its HTML-safe `<`, `>` and `&`.
fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn header_fields(obj: Obj, h: &ResponseHeader) -> Obj {
    obj.num_omitempty("cluster_id", h.cluster_id)
        .num_omitempty("member_id", h.member_id)
        .num_omitempty("revision", h.revision)
        .num_omitempty("raft_term", h.raft_term)
}

fn header(h: &ResponseHeader) -> String {
    header_fields(Obj::new(), h).done()
}

/// clientv3 wrappers embed `*pb.ResponseHeader`, so its fields sit at the top level.
fn embedded_header(h: Option<&ResponseHeader>) -> Obj {
    match h {
        Some(h) => header_fields(Obj::new(), h),
        None => Obj::new(),
    }
}

fn kv(kv: &KeyValue) -> String {
    Obj::new()
        .bytes_omitempty("key", &kv.key)
        .num_omitempty("create_revision", kv.create_revision)
        .num_omitempty("mod_revision", kv.mod_revision)
        .num_omitempty("version", kv.version)
        .bytes_omitempty("value", &kv.value)
        .num_omitempty("lease", kv.lease)
        .done()
}

fn event(e: &Event) -> String {
    Obj::new()
        .num_omitempty("type", e.r#type)
        .obj_omitempty("kv", e.kv.as_ref(), kv)
        .obj_omitempty("prev_kv", e.prev_kv.as_ref(), kv)
        .done()
}

fn range(r: &RangeResponse) -> String {
    Obj::new()
        .obj_omitempty("header", r.header.as_ref(), header)
        .list_omitempty("kvs", &r.kvs, kv)
        .bool_omitempty("more", r.more)
        .num_omitempty("count", r.count)
        .done()
}

fn put(r: &PutResponse) -> String {
    Obj::new()
        .obj_omitempty("header", r.header.as_ref(), header)
        .obj_omitempty("prev_kv", r.prev_kv.as_ref(), kv)
        .done()
}

fn delete(r: &DeleteRangeResponse) -> String {
    Obj::new()
        .obj_omitempty("header", r.header.as_ref(), header)
        .num_omitempty("deleted", r.deleted)
        .list_omitempty("prev_kvs", &r.prev_kvs, kv)
        .done()
}

fn txn(r: &TxnResponse) -> String {
    Obj::new()
        .obj_omitempty("header", r.header.as_ref(), header)
        .bool_omitempty("succeeded", r.succeeded)
        .list_omitempty("responses", &r.responses, |op| {
            // A oneof wrapper has no json tags: Go names its field after the struct field.
            let inner = match &op.response {
                Some(response_op::Response::ResponseRange(r)) => {
                    Obj::new().raw("ResponseRange", &range(r)).done()
                }
                Some(response_op::Response::ResponsePut(r)) => {
                    Obj::new().raw("ResponsePut", &put(r)).done()
                }
                Some(response_op::Response::ResponseDeleteRange(r)) => {
                    Obj::new().raw("ResponseDeleteRange", &delete(r)).done()
                }
                Some(response_op::Response::ResponseTxn(r)) => {
                    Obj::new().raw("ResponseTxn", &txn(r)).done()
                }
                None => "null".into(),
            };
            Obj::new().raw("Response", &inner).done()
        })
        .done()
}

fn member(m: &Member) -> String {
    Obj::new()
        .num_omitempty("ID", m.id)
        .str_omitempty("name", &m.name)
        .list_omitempty("peerURLs", &m.peer_ur_ls, |u| string(u))
        .list_omitempty("clientURLs", &m.client_ur_ls, |u| string(u))
        .bool_omitempty("isLearner", m.is_learner)
        .done()
}

fn members_response(h: Option<&ResponseHeader>, members: &[Member]) -> String {
    Obj::new()
        .obj_omitempty("header", h, header)
        .list_omitempty("members", members, member)
        .done()
}

fn status(s: &StatusResponse, layout: Layout) -> String {
    let obj = Obj::new()
        .obj_omitempty("header", s.header.as_ref(), header)
        .str_omitempty("version", &s.version)
        .num_omitempty("dbSize", s.db_size)
        .num_omitempty("leader", s.leader)
        .num_omitempty("raftIndex", s.raft_index)
        .num_omitempty("raftTerm", s.raft_term)
        .num_omitempty("raftAppliedIndex", s.raft_applied_index)
        .list_omitempty("errors", &s.errors, |e| string(e))
        .num_omitempty("dbSizeInUse", s.db_size_in_use)
        .bool_omitempty("isLearner", s.is_learner);
    match layout {
        Layout::Etcdctl34 => obj,
        Layout::Etcdctl37 => obj
            .str_omitempty("storageVersion", &s.storage_version)
            .num_omitempty("dbSizeQuota", s.db_size_quota)
            .obj_omitempty("downgradeInfo", s.downgrade_info.as_ref(), |d| {
                Obj::new()
                    .str_omitempty("targetVersion", &d.target_version)
                    .bool_omitempty("enabled", d.enabled)
                    .done()
            }),
    }
    .done()
}

fn hash_kv(h: &HashKvResponse, layout: Layout) -> String {
    let obj = Obj::new()
        .obj_omitempty("header", h.header.as_ref(), header)
        .num_omitempty("hash", h.hash)
        .num_omitempty("compact_revision", h.compact_revision);
    match layout {
        Layout::Etcdctl34 => obj,
        Layout::Etcdctl37 => obj.num_omitempty("hash_revision", h.hash_revision),
    }
    .done()
}

fn header_only(h: Option<&ResponseHeader>) -> String {
    Obj::new().obj_omitempty("header", h, header).done()
}

fn permission(p: &Permission) -> String {
    Obj::new()
        .num_omitempty("permType", p.perm_type)
        .bytes_omitempty("key", &p.key)
        .bytes_omitempty("range_end", &p.range_end)
        .done()
}

/// A response of a header and a list of names (users, roles).
fn names(h: Option<&ResponseHeader>, field: &str, names: &[String]) -> String {
    Obj::new()
        .obj_omitempty("header", h, header)
        .list_omitempty(field, names, |n| string(n))
        .done()
}

pub struct JsonPrinter;

impl Printer for JsonPrinter {
    fn name(&self) -> &'static str {
        "json"
    }

    fn get(&self, r: &RangeResponse) -> CtlResult {
        println!("{}", range(r));
        Ok(())
    }

    fn put(&self, r: &PutResponse) -> CtlResult {
        println!("{}", put(r));
        Ok(())
    }

    fn del(&self, r: &DeleteRangeResponse) -> CtlResult {
        println!("{}", delete(r));
        Ok(())
    }

    fn txn(&self, r: &TxnResponse) -> CtlResult {
        println!("{}", txn(r));
        Ok(())
    }

    fn watch(&self, r: &WatchResponse) -> CtlResult {
        let default_header = ResponseHeader::default();
        let line = Obj::new()
            .raw(
                "Header",
                &header(r.header.as_ref().unwrap_or(&default_header)),
            )
            .raw("Events", &list(&r.events, event))
            .num("CompactRevision", r.compact_revision)
            .boolean("Canceled", r.canceled)
            .boolean("Created", r.created)
            .done();
        println!("{line}");
        Ok(())
    }

    fn grant(&self, r: &LeaseGrantResponse) -> CtlResult {
        let line = embedded_header(r.header.as_ref())
            .num("ID", r.id)
            .num("TTL", r.ttl)
            .str("Error", &r.error)
            .done();
        println!("{line}");
        Ok(())
    }

    fn revoke(&self, _id: i64, r: &LeaseRevokeResponse) -> CtlResult {
        println!("{}", header_only(r.header.as_ref()));
        Ok(())
    }

    fn keep_alive(&self, r: &LeaseKeepAliveResponse) -> CtlResult {
        let line = embedded_header(r.header.as_ref())
            .num("ID", r.id)
            .num("TTL", r.ttl)
            .done();
        println!("{line}");
        Ok(())
    }

    fn time_to_live(&self, r: &LeaseTimeToLiveResponse, _keys: bool) -> CtlResult {
        let keys = if r.keys.is_empty() {
            "null".to_string()
        } else {
            list(&r.keys, |k| format!("\"{}\"", base64(k)))
        };
        let line = embedded_header(r.header.as_ref())
            .num("id", r.id)
            .num("ttl", r.ttl)
            .num("granted-ttl", r.granted_ttl)
            .raw("keys", &keys)
            .done();
        println!("{line}");
        Ok(())
    }

    fn leases(&self, r: &LeaseLeasesResponse) -> CtlResult {
        let line = embedded_header(r.header.as_ref())
            .raw(
                "leases",
                &list(&r.leases, |l| Obj::new().num("id", l.id).done()),
            )
            .done();
        println!("{line}");
        Ok(())
    }

    fn member_add(&self, r: &MemberAddResponse) -> CtlResult {
        let line = Obj::new()
            .obj_omitempty("header", r.header.as_ref(), header)
            .obj_omitempty("member", r.member.as_ref(), member)
            .list_omitempty("members", &r.members, member)
            .done();
        println!("{line}");
        Ok(())
    }

    fn member_remove(&self, _id: u64, r: &MemberRemoveResponse) -> CtlResult {
        println!("{}", members_response(r.header.as_ref(), &r.members));
        Ok(())
    }

    fn member_update(&self, _id: u64, r: &MemberUpdateResponse) -> CtlResult {
        println!("{}", members_response(r.header.as_ref(), &r.members));
        Ok(())
    }

    fn member_promote(&self, _id: u64, r: &MemberPromoteResponse) -> CtlResult {
        println!("{}", members_response(r.header.as_ref(), &r.members));
        Ok(())
    }

    fn member_list(&self, r: &MemberListResponse) -> CtlResult {
        println!("{}", members_response(r.header.as_ref(), &r.members));
        Ok(())
    }

    fn endpoint_health(&self, health: &[EndpointHealth]) -> CtlResult {
        let line = list(health, |h| {
            Obj::new()
                .str("endpoint", &h.endpoint)
                .boolean("health", h.health)
                .str("took", &h.took)
                .str_omitempty("error", &h.error)
                .done()
        });
        println!("{line}");
        Ok(())
    }

    fn endpoint_status(&self, statuses: &[EndpointStatus], layout: Layout) -> CtlResult {
        let line = list(statuses, |s| {
            Obj::new()
                .str("Endpoint", &s.endpoint)
                .raw("Status", &status(&s.status, layout))
                .done()
        });
        println!("{line}");
        Ok(())
    }

    fn endpoint_hash_kv(&self, hashes: &[EndpointHash], layout: Layout) -> CtlResult {
        let line = list(hashes, |h| {
            Obj::new()
                .str("Endpoint", &h.endpoint)
                .raw("HashKV", &hash_kv(&h.hash, layout))
                .done()
        });
        println!("{line}");
        Ok(())
    }

    /// A plain Go struct: no omitempty.
    fn data_hash_kv(&self, h: &DataHashKv) -> CtlResult {
        let line = Obj::new()
            .num("hash", h.hash)
            .num("hashRevision", h.hash_revision)
            .num("compactRevision", h.compact_revision)
            .done();
        println!("{line}");
        Ok(())
    }

    fn move_leader(&self, _leader: u64, _target: u64, r: &MoveLeaderResponse) -> CtlResult {
        println!("{}", header_only(r.header.as_ref()));
        Ok(())
    }

    fn downgrade(&self, _action: &str, r: &DowngradeResponse) -> CtlResult {
        let line = Obj::new()
            .obj_omitempty("header", r.header.as_ref(), header)
            .str_omitempty("version", &r.version)
            .done();
        println!("{line}");
        Ok(())
    }

    fn alarm(&self, r: &AlarmResponse) -> CtlResult {
        let line = Obj::new()
            .obj_omitempty("header", r.header.as_ref(), header)
            .list_omitempty("alarms", &r.alarms, |a| {
                Obj::new()
                    .num_omitempty("memberID", a.member_id)
                    .num_omitempty("alarm", a.alarm)
                    .done()
            })
            .done();
        println!("{line}");
        Ok(())
    }

    fn auth_change(&self, _change: &AuthChange, h: Option<&ResponseHeader>) -> CtlResult {
        println!("{}", header_only(h));
        Ok(())
    }

    fn role_get(&self, _role: &str, r: &AuthRoleGetResponse) -> CtlResult {
        let line = Obj::new()
            .obj_omitempty("header", r.header.as_ref(), header)
            .list_omitempty("perm", &r.perm, permission)
            .done();
        println!("{line}");
        Ok(())
    }

    fn role_list(&self, r: &AuthRoleListResponse) -> CtlResult {
        println!("{}", names(r.header.as_ref(), "roles", &r.roles));
        Ok(())
    }

    fn user_get(&self, _user: &str, r: &AuthUserGetResponse) -> CtlResult {
        println!("{}", names(r.header.as_ref(), "roles", &r.roles));
        Ok(())
    }

    fn user_list(&self, r: &AuthUserListResponse) -> CtlResult {
        println!("{}", names(r.header.as_ref(), "users", &r.users));
        Ok(())
    }

    fn auth_status(&self, r: &AuthStatusResponse) -> CtlResult {
        let line = Obj::new()
            .obj_omitempty("header", r.header.as_ref(), header)
            .bool_omitempty("enabled", r.enabled)
            .num_omitempty("authRevision", r.auth_revision)
            .done();
        println!("{line}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_matches_etcdctl() {
        let r = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 3,
                raft_term: 4,
            }),
            kvs: vec![KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: b"bar".to_vec(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        assert_eq!(
            range(&r),
            r#"{"header":{"cluster_id":1,"member_id":2,"revision":3,"raft_term":4},"kvs":[{"key":"Zm9v","create_revision":2,"mod_revision":2,"version":1,"value":"YmFy"}],"count":1}"#
        );
    }

    #[test]
    fn strings_escape_html() {
        assert_eq!(string("a<b>&\"\n"), r#""a\u003cb\u003e\u0026\"\n""#);
    }
}
