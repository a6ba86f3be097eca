//! `-w fields`: one `"Name" : value` line per field, strings in Go's `%q` quoting.

use oxcd_proto::authpb::permission::Type as PermissionType;
use oxcd_proto::etcdserverpb::{
    response_op, AlarmResponse, AuthRoleGetResponse, AuthRoleListResponse, DeleteRangeResponse,
    LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseRevokeResponse,
    LeaseTimeToLiveResponse, MemberListResponse, PutResponse, RangeResponse, ResponseHeader,
    TxnResponse, WatchResponse,
};
use oxcd_proto::mvccpb::KeyValue;

use super::simple::{alarm_name, event_type_name};
use super::text::go_quote;
use super::{
    AuthChange, DataHashKv, EndpointHash, EndpointHealth, EndpointStatus, Layout, Printer,
};
use crate::failure::CtlResult;

pub struct FieldsPrinter;

fn kv(prefix: &str, kv: &KeyValue) {
    println!("\"{prefix}Key\" : {}", go_quote(&kv.key));
    println!("\"{prefix}CreateRevision\" : {}", kv.create_revision);
    println!("\"{prefix}ModRevision\" : {}", kv.mod_revision);
    println!("\"{prefix}Version\" : {}", kv.version);
    println!("\"{prefix}Value\" : {}", go_quote(&kv.value));
    println!("\"{prefix}Lease\" : {}", kv.lease);
}

fn header(h: Option<&ResponseHeader>) {
    let h = h.cloned().unwrap_or_default();
    println!("\"ClusterID\" : {}", h.cluster_id);
    println!("\"MemberID\" : {}", h.member_id);
    println!("\"Revision\" : {}", h.revision);
    println!("\"RaftTerm\" : {}", h.raft_term);
}

/// Go's `fmt.Println` of a `[]string`: `[a b]`.
fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

impl Printer for FieldsPrinter {
    fn name(&self) -> &'static str {
        "fields"
    }

    fn get(&self, r: &RangeResponse) -> CtlResult {
        header(r.header.as_ref());
        r.kvs.iter().for_each(|k| kv("", k));
        println!("\"More\" : {}", r.more);
        println!("\"Count\" : {}", r.count);
        Ok(())
    }

    fn put(&self, r: &PutResponse) -> CtlResult {
        header(r.header.as_ref());
        if let Some(prev) = &r.prev_kv {
            kv("Prev", prev);
        }
        Ok(())
    }

    fn del(&self, r: &DeleteRangeResponse) -> CtlResult {
        header(r.header.as_ref());
        println!("\"Deleted\" : {}", r.deleted);
        r.prev_kvs.iter().for_each(|k| kv("Prev", k));
        Ok(())
    }

    fn txn(&self, r: &TxnResponse) -> CtlResult {
        header(r.header.as_ref());
        println!("\"Succeeded\" : {}", r.succeeded);
        for op in &r.responses {
            match &op.response {
                Some(response_op::Response::ResponseRange(r)) => self.get(r)?,
                Some(response_op::Response::ResponsePut(r)) => self.put(r)?,
                Some(response_op::Response::ResponseDeleteRange(r)) => self.del(r)?,
                other => println!(
                    "\"Unknown\" : {}",
                    go_quote(format!("{other:?}").as_bytes())
                ),
            }
        }
        Ok(())
    }

    fn watch(&self, r: &WatchResponse) -> CtlResult {
        header(r.header.as_ref());
        for e in &r.events {
            println!("\"Type\" : {}", event_type_name(e.r#type));
            if let Some(prev) = &e.prev_kv {
                kv("Prev", prev);
            }
            kv("", e.kv.as_ref().unwrap_or(&KeyValue::default()));
        }
        Ok(())
    }

    fn grant(&self, r: &LeaseGrantResponse) -> CtlResult {
        header(r.header.as_ref());
        println!("\"ID\" : {}", r.id);
        println!("\"TTL\" : {}", r.ttl);
        Ok(())
    }

    fn revoke(&self, _id: i64, r: &LeaseRevokeResponse) -> CtlResult {
        header(r.header.as_ref());
        Ok(())
    }

    fn keep_alive(&self, r: &LeaseKeepAliveResponse) -> CtlResult {
        header(r.header.as_ref());
        println!("\"ID\" : {}", r.id);
        println!("\"TTL\" : {}", r.ttl);
        Ok(())
    }

    fn time_to_live(&self, r: &LeaseTimeToLiveResponse, _keys: bool) -> CtlResult {
        header(r.header.as_ref());
        println!("\"ID\" : {}", r.id);
        println!("\"TTL\" : {}", r.ttl);
        println!("\"GrantedTTL\" : {}", r.granted_ttl);
        for k in &r.keys {
            println!("\"Key\" : {}", go_quote(k));
        }
        Ok(())
    }

    fn leases(&self, r: &LeaseLeasesResponse) -> CtlResult {
        header(r.header.as_ref());
        for lease in &r.leases {
            println!("\"ID\" : {}", lease.id);
        }
        Ok(())
    }

    fn member_list(&self, r: &MemberListResponse) -> CtlResult {
        header(r.header.as_ref());
        for m in &r.members {
            println!("\"ID\" : {}", m.id);
            println!("\"Name\" : {}", go_quote(m.name.as_bytes()));
            for u in &m.peer_ur_ls {
                println!("\"PeerURL\" : {}", go_quote(u.as_bytes()));
            }
            for u in &m.client_ur_ls {
                println!("\"ClientURL\" : {}", go_quote(u.as_bytes()));
            }
            println!("\"IsLearner\" : {}", m.is_learner);
            println!();
        }
        Ok(())
    }

    fn endpoint_health(&self, health: &[EndpointHealth]) -> CtlResult {
        for h in health {
            println!("\"Endpoint\" : {}", go_quote(h.endpoint.as_bytes()));
            println!("\"Health\" : {}", h.health);
            println!("\"Took\" : {}", h.took);
            println!("\"Error\" : {}", h.error);
            println!();
        }
        Ok(())
    }

    fn endpoint_status(&self, statuses: &[EndpointStatus], layout: Layout) -> CtlResult {
        for s in statuses {
            let r = &s.status;
            header(r.header.as_ref());
            println!("\"Version\" : {}", go_quote(r.version.as_bytes()));
            match layout {
                Layout::Etcdctl34 => println!("\"DBSize\" : {}", r.db_size),
                Layout::Etcdctl37 => {
                    println!(
                        "\"StorageVersion\" : {}",
                        go_quote(r.storage_version.as_bytes())
                    );
                    println!("\"DBSize\" : {}", r.db_size);
                    println!("\"DBSizeInUse\" : {}", r.db_size_in_use);
                    println!("\"DBSizeQuota\" : {}", r.db_size_quota);
                }
            }
            println!("\"Leader\" : {}", r.leader);
            println!("\"IsLearner\" : {}", r.is_learner);
            println!("\"RaftIndex\" : {}", r.raft_index);
            // etcdctl 3.7 no longer prints the term here (it is in the header).
            if layout == Layout::Etcdctl34 {
                println!("\"RaftTerm\" : {}", r.raft_term);
            }
            println!("\"RaftAppliedIndex\" : {}", r.raft_applied_index);
            println!("\"Errors\" : {}", go_list(&r.errors));
            println!("\"Endpoint\" : {}", go_quote(s.endpoint.as_bytes()));
            if layout == Layout::Etcdctl37 {
                let downgrade = r.downgrade_info.clone().unwrap_or_default();
                let target = go_quote(downgrade.target_version.as_bytes());
                println!("\"DowngradeTargetVersion\" : {target}");
                println!("\"DowngradeEnabled\" : {}", downgrade.enabled);
            }
            println!();
        }
        Ok(())
    }

    fn endpoint_hash_kv(&self, hashes: &[EndpointHash], layout: Layout) -> CtlResult {
        for h in hashes {
            header(h.hash.header.as_ref());
            println!("\"Endpoint\" : {}", go_quote(h.endpoint.as_bytes()));
            println!("\"Hash\" : {}", h.hash.hash);
            if layout == Layout::Etcdctl37 {
                println!("\"HashRevision\" : {}", h.hash.hash_revision);
            }
            println!();
        }
        Ok(())
    }

    fn data_hash_kv(&self, h: &DataHashKv) -> CtlResult {
        println!("\"Hash\" : {}", h.hash);
        println!("\"Hash revision\" : {}", h.hash_revision);
        println!("\"Compact revision\" : {}", h.compact_revision);
        Ok(())
    }

    fn alarm(&self, r: &AlarmResponse) -> CtlResult {
        header(r.header.as_ref());
        for a in &r.alarms {
            println!("\"MemberID\" : {}", a.member_id);
            println!("\"AlarmType\" : {}", alarm_name(a.alarm));
            println!();
        }
        Ok(())
    }

    fn auth_change(&self, _change: &AuthChange, h: Option<&ResponseHeader>) -> CtlResult {
        header(h);
        Ok(())
    }

    fn role_get(&self, _role: &str, r: &AuthRoleGetResponse) -> CtlResult {
        header(r.header.as_ref());
        for p in &r.perm {
            // Go's Println of `"PermType" : ` and the name: two spaces between them.
            let name = PermissionType::try_from(p.perm_type)
                .map_or_else(|_| p.perm_type.to_string(), |t| t.as_str_name().to_string());
            println!("\"PermType\" :  {name}");
            println!("\"Key\" : {}", go_quote(&p.key));
            println!("\"RangeEnd\" : {}", go_quote(&p.range_end));
        }
        Ok(())
    }

    fn role_list(&self, r: &AuthRoleListResponse) -> CtlResult {
        header(r.header.as_ref());
        let roles: String = r
            .roles
            .iter()
            .map(|role| format!(" {}", go_quote(role.as_bytes())))
            .collect();
        println!("\"Roles\" :{roles}");
        Ok(())
    }
}
