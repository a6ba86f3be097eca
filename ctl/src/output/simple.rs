//! `-w simple`, etcdctl's default: values as plain lines, one-line summaries for the rest.

use oxcd_proto::authpb::{permission::Type as PermissionType, Permission};
use oxcd_proto::etcdserverpb::{
    response_op, AlarmResponse, AlarmType, AuthRoleGetResponse, AuthRoleListResponse,
    AuthStatusResponse, AuthUserGetResponse, AuthUserListResponse, DeleteRangeResponse,
    DowngradeResponse, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseRevokeResponse, LeaseTimeToLiveResponse, MemberAddResponse, MemberListResponse,
    MemberPromoteResponse, MemberRemoveResponse, MemberUpdateResponse, MoveLeaderResponse,
    PutResponse, RangeResponse, ResponseHeader, TxnResponse, WatchResponse,
};
use oxcd_proto::mvccpb::{event::EventType, KeyValue};

use super::rows::{self, Rows};
use super::text::{hex_escaped, signed_hex};
use super::{
    AuthChange, DataHashKv, EndpointHash, EndpointHealth, EndpointStatus, Layout, Printer,
};
use crate::args::prefix_range_end;
use crate::failure::CtlResult;

pub struct SimplePrinter {
    pub hex: bool,
    pub value_only: bool,
}

impl SimplePrinter {
    fn kv(&self, kv: &KeyValue) {
        let mut out = Vec::new();
        if !self.value_only {
            push_line(&mut out, &kv.key, self.hex);
        }
        push_line(&mut out, &kv.value, self.hex);
        write_stdout(&out);
    }
}

/// Keys and values are raw bytes (Kubernetes stores protobuf), written to stdout unaltered.
fn push_line(out: &mut Vec<u8>, bytes: &[u8], hex: bool) {
    if hex {
        out.extend_from_slice(hex_escaped(bytes).as_bytes());
    } else {
        out.extend_from_slice(bytes);
    }
    out.push(b'\n');
}

fn write_stdout(bytes: &[u8]) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(bytes);
    let _ = stdout.flush();
}

fn cluster_id(h: Option<&ResponseHeader>) -> u64 {
    h.map_or(0, |h| h.cluster_id)
}

fn print_rows(rows: Rows) {
    for row in rows.rows {
        println!("{}", row.join(", "));
    }
}

pub fn event_type_name(t: i32) -> &'static str {
    match EventType::try_from(t) {
        Ok(EventType::Delete) => "DELETE",
        _ => "PUT",
    }
}

impl Printer for SimplePrinter {
    fn name(&self) -> &'static str {
        "simple"
    }

    fn is_simple(&self) -> bool {
        true
    }

    fn get(&self, r: &RangeResponse) -> CtlResult {
        r.kvs.iter().for_each(|kv| self.kv(kv));
        Ok(())
    }

    fn put(&self, r: &PutResponse) -> CtlResult {
        println!("OK");
        if let Some(prev) = &r.prev_kv {
            self.kv(prev);
        }
        Ok(())
    }

    fn del(&self, r: &DeleteRangeResponse) -> CtlResult {
        println!("{}", r.deleted);
        r.prev_kvs.iter().for_each(|kv| self.kv(kv));
        Ok(())
    }

    fn txn(&self, r: &TxnResponse) -> CtlResult {
        println!("{}", if r.succeeded { "SUCCESS" } else { "FAILURE" });
        for op in &r.responses {
            println!();
            match &op.response {
                Some(response_op::Response::ResponseRange(r)) => self.get(r)?,
                Some(response_op::Response::ResponsePut(r)) => self.put(r)?,
                Some(response_op::Response::ResponseDeleteRange(r)) => self.del(r)?,
                other => println!("unexpected response {other:?}"),
            }
        }
        Ok(())
    }

    fn watch(&self, r: &WatchResponse) -> CtlResult {
        for e in &r.events {
            println!("{}", event_type_name(e.r#type));
            if let Some(prev) = &e.prev_kv {
                self.kv(prev);
            }
            self.kv(e.kv.as_ref().unwrap_or(&KeyValue::default()));
        }
        Ok(())
    }

    fn grant(&self, r: &LeaseGrantResponse) -> CtlResult {
        println!(
            "lease {} granted with TTL({}s)",
            signed_hex(r.id, 16),
            r.ttl
        );
        Ok(())
    }

    fn revoke(&self, id: i64, _r: &LeaseRevokeResponse) -> CtlResult {
        println!("lease {} revoked", signed_hex(id, 16));
        Ok(())
    }

    fn keep_alive(&self, r: &LeaseKeepAliveResponse) -> CtlResult {
        println!(
            "lease {} keepalived with TTL({})",
            signed_hex(r.id, 16),
            r.ttl
        );
        Ok(())
    }

    fn time_to_live(&self, r: &LeaseTimeToLiveResponse, keys: bool) -> CtlResult {
        let id = signed_hex(r.id, 16);
        if r.granted_ttl == 0 && r.ttl == -1 {
            println!("lease {id} already expired");
            return Ok(());
        }
        let mut text = format!(
            "lease {id} granted with TTL({}s), remaining({}s)",
            r.granted_ttl, r.ttl
        );
        if keys {
            let names: Vec<String> = r
                .keys
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            text.push_str(&format!(", attached keys([{}])", names.join(" ")));
        }
        println!("{text}");
        Ok(())
    }

    fn leases(&self, r: &LeaseLeasesResponse) -> CtlResult {
        println!("found {} leases", r.leases.len());
        for lease in &r.leases {
            println!("{}", signed_hex(lease.id, 16));
        }
        Ok(())
    }

    fn member_add(&self, r: &MemberAddResponse) -> CtlResult {
        let id = r.member.as_ref().map_or(0, |m| m.id);
        println!(
            "Member {id:16x} added to cluster {:16x}",
            cluster_id(r.header.as_ref())
        );
        Ok(())
    }

    fn member_remove(&self, id: u64, r: &MemberRemoveResponse) -> CtlResult {
        println!(
            "Member {id:16x} removed from cluster {:16x}",
            cluster_id(r.header.as_ref())
        );
        Ok(())
    }

    fn member_update(&self, id: u64, r: &MemberUpdateResponse) -> CtlResult {
        println!(
            "Member {id:16x} updated in cluster {:16x}",
            cluster_id(r.header.as_ref())
        );
        Ok(())
    }

    fn member_promote(&self, id: u64, r: &MemberPromoteResponse) -> CtlResult {
        println!(
            "Member {id:16x} promoted in cluster {:16x}",
            cluster_id(r.header.as_ref())
        );
        Ok(())
    }

    fn member_list(&self, r: &MemberListResponse) -> CtlResult {
        print_rows(rows::member_list(r));
        Ok(())
    }

    fn endpoint_health(&self, health: &[EndpointHealth]) -> CtlResult {
        // etcdctl writes these verdicts to stderr.
        for h in health {
            if h.error.is_empty() {
                eprintln!(
                    "{} is healthy: successfully committed proposal: took = {}",
                    h.endpoint, h.took
                );
            } else {
                eprintln!(
                    "{} is unhealthy: failed to commit proposal: {}",
                    h.endpoint, h.error
                );
            }
        }
        Ok(())
    }

    fn endpoint_status(&self, statuses: &[EndpointStatus], layout: Layout) -> CtlResult {
        print_rows(rows::endpoint_status(statuses, layout));
        Ok(())
    }

    fn endpoint_hash_kv(&self, hashes: &[EndpointHash], layout: Layout) -> CtlResult {
        print_rows(rows::endpoint_hash_kv(hashes, layout));
        Ok(())
    }

    fn data_hash_kv(&self, h: &DataHashKv) -> CtlResult {
        print_rows(rows::data_hash_kv(h));
        Ok(())
    }

    fn move_leader(&self, leader: u64, target: u64, _r: &MoveLeaderResponse) -> CtlResult {
        println!("Leadership transferred from {leader:x} to {target:x}");
        Ok(())
    }

    fn downgrade(&self, action: &str, r: &DowngradeResponse) -> CtlResult {
        println!("Downgrade {action} success, cluster version {}", r.version);
        Ok(())
    }

    fn alarm(&self, r: &AlarmResponse) -> CtlResult {
        // Go's %+v of the message: its compact text form, trailing space included.
        for a in &r.alarms {
            println!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm));
        }
        Ok(())
    }

    fn auth_change(&self, change: &AuthChange, _header: Option<&ResponseHeader>) -> CtlResult {
        write_stdout(&auth_change_text(change));
        Ok(())
    }

    fn role_get(&self, role: &str, r: &AuthRoleGetResponse) -> CtlResult {
        let mut out = format!("Role {role}\nKV Read:\n").into_bytes();
        let grants = |p: &&Permission, kind: PermissionType| {
            let t = PermissionType::try_from(p.perm_type);
            t == Ok(kind) || t == Ok(PermissionType::Readwrite)
        };
        for p in r.perm.iter().filter(|p| grants(p, PermissionType::Read)) {
            permission_line(&mut out, p);
        }
        out.extend_from_slice(b"KV Write:\n");
        for p in r.perm.iter().filter(|p| grants(p, PermissionType::Write)) {
            permission_line(&mut out, p);
        }
        write_stdout(&out);
        Ok(())
    }

    fn role_list(&self, r: &AuthRoleListResponse) -> CtlResult {
        r.roles.iter().for_each(|role| println!("{role}"));
        Ok(())
    }

    fn user_get(&self, user: &str, r: &AuthUserGetResponse) -> CtlResult {
        println!("User: {user}");
        let roles: String = r.roles.iter().map(|role| format!(" {role}")).collect();
        println!("Roles:{roles}");
        Ok(())
    }

    fn user_list(&self, r: &AuthUserListResponse) -> CtlResult {
        r.users.iter().for_each(|user| println!("{user}"));
        Ok(())
    }

    /// etcdctl 3.5+ (`auth status` is not in 3.4).
    fn auth_status(&self, r: &AuthStatusResponse) -> CtlResult {
        println!("Authentication Status: {}", r.enabled);
        println!("AuthRevision: {}", r.auth_revision);
        Ok(())
    }
}

/// One permission of `role get`: a key, or a range with its end (`\0`: open ended) and, when it
/// is a prefix's range, the prefix. Names and keys are printed as raw bytes.
fn permission_line(out: &mut Vec<u8>, p: &Permission) {
    out.push(b'\t');
    if p.range_end.is_empty() {
        out.extend_from_slice(&p.key);
    } else {
        out.push(b'[');
        out.extend_from_slice(&p.key);
        if p.range_end == b"\0" {
            out.extend_from_slice(b", <open ended>");
        } else {
            out.extend_from_slice(b", ");
            out.extend_from_slice(&p.range_end);
            out.push(b')');
        }
        if prefix_range_end(&p.key) == p.range_end {
            out.extend_from_slice(b" (prefix ");
            out.extend_from_slice(&p.key);
            out.push(b')');
        }
    }
    out.push(b'\n');
}

/// The sentence a user or role change prints; a revoked range's end is printed as raw bytes.
fn auth_change_text(change: &AuthChange) -> Vec<u8> {
    let line = |text: String| format!("{text}\n").into_bytes();
    match change {
        AuthChange::UserAdded(user) => line(format!("User {user} created")),
        AuthChange::UserDeleted(user) => line(format!("User {user} deleted")),
        AuthChange::PasswordChanged => line("Password updated".into()),
        AuthChange::RoleGranted { user, role } => {
            line(format!("Role {role} is granted to user {user}"))
        }
        AuthChange::RoleRevoked { user, role } => {
            line(format!("Role {role} is revoked from user {user}"))
        }
        AuthChange::RoleAdded(role) => line(format!("Role {role} created")),
        AuthChange::RoleDeleted(role) => line(format!("Role {role} deleted")),
        AuthChange::PermissionGranted(role) => line(format!("Role {role} updated")),
        AuthChange::PermissionRevoked {
            role,
            key,
            range_end,
        } => {
            let mut out = match *range_end {
                b"" => format!("Permission of key {key}").into_bytes(),
                b"\0" => format!("Permission of range [{key}, <open ended>").into_bytes(),
                end => {
                    let mut out = format!("Permission of range [{key}, ").into_bytes();
                    out.extend_from_slice(end);
                    out.push(b')');
                    out
                }
            };
            out.extend_from_slice(format!(" is revoked from role {role}\n").as_bytes());
            out
        }
    }
}

pub fn alarm_name(alarm: i32) -> &'static str {
    match AlarmType::try_from(alarm) {
        Ok(AlarmType::Nospace) => "NOSPACE",
        Ok(AlarmType::Corrupt) => "CORRUPT",
        _ => "NONE",
    }
}
