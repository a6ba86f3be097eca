//! `-w protobuf`: the response's wire bytes. etcdctl marshals what its Go client hands it, so
//! lease responses (clientv3 structs embedding the header) come out as just the header, and a
//! watch response loses its watch id.

use std::io::Write;

use prost::Message;

use oxcd_proto::etcdserverpb::{
    AlarmResponse, AuthRoleGetResponse, AuthRoleListResponse, AuthStatusResponse,
    AuthUserAddResponse, AuthUserGetResponse, AuthUserListResponse, DeleteRangeResponse,
    DowngradeResponse, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseRevokeResponse, LeaseTimeToLiveResponse, MemberAddResponse, MemberListResponse,
    MemberPromoteResponse, MemberRemoveResponse, MemberUpdateResponse, MoveLeaderResponse,
    PutResponse, RangeResponse, ResponseHeader, TxnResponse, WatchResponse,
};

use super::{AuthChange, Printer};
use crate::failure::{CtlResult, ExitCode, Failure};

pub struct ProtobufPrinter;

fn emit(message: &impl Message) -> CtlResult {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&message.encode_to_vec());
    let _ = stdout.flush();
    Ok(())
}

fn header(h: Option<&ResponseHeader>) -> CtlResult {
    emit(&h.cloned().unwrap_or_default())
}

impl Printer for ProtobufPrinter {
    fn name(&self) -> &'static str {
        "protobuf"
    }

    fn get(&self, r: &RangeResponse) -> CtlResult {
        emit(r)
    }
    fn put(&self, r: &PutResponse) -> CtlResult {
        emit(r)
    }
    fn del(&self, r: &DeleteRangeResponse) -> CtlResult {
        emit(r)
    }
    fn txn(&self, r: &TxnResponse) -> CtlResult {
        emit(r)
    }
    fn watch(&self, r: &WatchResponse) -> CtlResult {
        emit(&WatchResponse {
            header: r.header,
            events: r.events.clone(),
            compact_revision: r.compact_revision,
            canceled: r.canceled,
            created: r.created,
            ..WatchResponse::default()
        })
    }
    fn grant(&self, r: &LeaseGrantResponse) -> CtlResult {
        header(r.header.as_ref())
    }
    fn revoke(&self, _id: i64, _r: &LeaseRevokeResponse) -> CtlResult {
        // etcdctl hands the Go marshaller a value without a Marshal method here.
        Err(Failure::new(
            ExitCode::BadFeature,
            "marshal unsupported for type etcdserverpb.LeaseRevokeResponse",
        ))
    }
    fn keep_alive(&self, r: &LeaseKeepAliveResponse) -> CtlResult {
        header(r.header.as_ref())
    }
    fn time_to_live(&self, r: &LeaseTimeToLiveResponse, _keys: bool) -> CtlResult {
        header(r.header.as_ref())
    }
    fn leases(&self, r: &LeaseLeasesResponse) -> CtlResult {
        header(r.header.as_ref())
    }
    fn member_add(&self, r: &MemberAddResponse) -> CtlResult {
        emit(r)
    }
    fn member_remove(&self, _id: u64, r: &MemberRemoveResponse) -> CtlResult {
        emit(r)
    }
    fn member_update(&self, _id: u64, r: &MemberUpdateResponse) -> CtlResult {
        emit(r)
    }
    fn member_promote(&self, _id: u64, r: &MemberPromoteResponse) -> CtlResult {
        emit(r)
    }
    fn member_list(&self, r: &MemberListResponse) -> CtlResult {
        emit(r)
    }
    fn move_leader(&self, _leader: u64, _target: u64, r: &MoveLeaderResponse) -> CtlResult {
        emit(r)
    }
    fn alarm(&self, r: &AlarmResponse) -> CtlResult {
        emit(r)
    }
    fn downgrade(&self, _action: &str, r: &DowngradeResponse) -> CtlResult {
        emit(r)
    }
    /// Every change's response is `{ header = 1 }`, so one of them encodes them all.
    fn auth_change(&self, _change: &AuthChange, h: Option<&ResponseHeader>) -> CtlResult {
        emit(&AuthUserAddResponse { header: h.copied() })
    }
    fn role_get(&self, _role: &str, r: &AuthRoleGetResponse) -> CtlResult {
        emit(r)
    }
    fn role_list(&self, r: &AuthRoleListResponse) -> CtlResult {
        emit(r)
    }
    fn user_get(&self, _user: &str, r: &AuthUserGetResponse) -> CtlResult {
        emit(r)
    }
    fn user_list(&self, r: &AuthUserListResponse) -> CtlResult {
        emit(r)
    }
    fn auth_status(&self, r: &AuthStatusResponse) -> CtlResult {
        emit(r)
    }
}
