//! The `-w` output formats. Each format is one [`Printer`]; commands hand it the server's
//! response and never format output themselves. A format that has no rendering for a response
//! fails the way etcdctl does: `Error: <format> not supported as output format`, exit 4.

mod fields;
mod json;
mod protobuf;
mod rows;
pub mod simple;
mod table;
pub mod text;

use oxcd_proto::etcdserverpb::{
    AlarmResponse, AuthRoleGetResponse, AuthRoleListResponse, AuthStatusResponse,
    AuthUserGetResponse, AuthUserListResponse, DeleteRangeResponse, DowngradeResponse,
    HashKvResponse, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseRevokeResponse, LeaseTimeToLiveResponse, MemberAddResponse, MemberListResponse,
    MemberPromoteResponse, MemberRemoveResponse, MemberUpdateResponse, MoveLeaderResponse,
    PutResponse, RangeResponse, ResponseHeader, StatusResponse, TxnResponse, WatchResponse,
};

use crate::failure::{CtlResult, ExitCode, Failure};

/// One endpoint's answer to `endpoint health`.
pub struct EndpointHealth {
    pub endpoint: String,
    pub health: bool,
    /// Go's duration text of how long the check took.
    pub took: String,
    pub error: String,
}

/// Which etcdctl release's layout to print in, where etcdctl 3.7 prints a response differently
/// from 3.4 (`endpoint status`, `endpoint hashkv`). etcdctl has no such switch (each release
/// prints its own); oxcdctl prints 3.4's unless asked with `OXCDCTL_ETCDCTL_VERSION=3.7` or
/// `--etcdctl-version=3.7`, so scripts written against either release keep parsing its output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    #[default]
    #[value(name = "3.4")]
    Etcdctl34,
    #[value(name = "3.7")]
    Etcdctl37,
}

pub struct EndpointStatus {
    pub endpoint: String,
    pub status: StatusResponse,
}

pub struct EndpointHash {
    pub endpoint: String,
    pub hash: HashKvResponse,
}

/// `hashkv`'s answer for a data dir (etcdutl's `HashKV`).
pub struct DataHashKv {
    pub hash: u32,
    pub hash_revision: i64,
    pub compact_revision: i64,
}

/// What a `user` or `role` command changed. Each answer is just a header, so the formats differ
/// only in the simple format's sentence.
pub enum AuthChange<'a> {
    UserAdded(&'a str),
    UserDeleted(&'a str),
    PasswordChanged,
    RoleGranted {
        user: &'a str,
        role: &'a str,
    },
    RoleRevoked {
        user: &'a str,
        role: &'a str,
    },
    RoleAdded(&'a str),
    RoleDeleted(&'a str),
    PermissionGranted(&'a str),
    /// `key` as typed, `range_end` as sent.
    PermissionRevoked {
        role: &'a str,
        key: &'a str,
        range_end: &'a [u8],
    },
}

/// Renders responses in one output format. Every method defaults to the format not supporting
/// the response.
#[allow(unused_variables)]
pub trait Printer: Send + Sync {
    fn name(&self) -> &'static str;

    fn unsupported(&self) -> CtlResult {
        Err(Failure::new(
            ExitCode::BadFeature,
            format!("{} not supported as output format", self.name()),
        ))
    }

    /// Whether this is the simple format, which alone prints a few trailing human hints.
    fn is_simple(&self) -> bool {
        false
    }

    fn get(&self, r: &RangeResponse) -> CtlResult {
        self.unsupported()
    }
    fn put(&self, r: &PutResponse) -> CtlResult {
        self.unsupported()
    }
    fn del(&self, r: &DeleteRangeResponse) -> CtlResult {
        self.unsupported()
    }
    fn txn(&self, r: &TxnResponse) -> CtlResult {
        self.unsupported()
    }
    fn watch(&self, r: &WatchResponse) -> CtlResult {
        self.unsupported()
    }
    fn grant(&self, r: &LeaseGrantResponse) -> CtlResult {
        self.unsupported()
    }
    fn revoke(&self, id: i64, r: &LeaseRevokeResponse) -> CtlResult {
        self.unsupported()
    }
    fn keep_alive(&self, r: &LeaseKeepAliveResponse) -> CtlResult {
        self.unsupported()
    }
    fn time_to_live(&self, r: &LeaseTimeToLiveResponse, keys: bool) -> CtlResult {
        self.unsupported()
    }
    fn leases(&self, r: &LeaseLeasesResponse) -> CtlResult {
        self.unsupported()
    }
    fn member_add(&self, r: &MemberAddResponse) -> CtlResult {
        self.unsupported()
    }
    fn member_remove(&self, id: u64, r: &MemberRemoveResponse) -> CtlResult {
        self.unsupported()
    }
    fn member_update(&self, id: u64, r: &MemberUpdateResponse) -> CtlResult {
        self.unsupported()
    }
    fn member_promote(&self, id: u64, r: &MemberPromoteResponse) -> CtlResult {
        self.unsupported()
    }
    fn member_list(&self, r: &MemberListResponse) -> CtlResult {
        self.unsupported()
    }
    fn endpoint_health(&self, health: &[EndpointHealth]) -> CtlResult {
        self.unsupported()
    }
    fn endpoint_status(&self, statuses: &[EndpointStatus], layout: Layout) -> CtlResult {
        self.unsupported()
    }
    fn endpoint_hash_kv(&self, hashes: &[EndpointHash], layout: Layout) -> CtlResult {
        self.unsupported()
    }
    /// In etcdutl's layouts, which are etcd 3.7's.
    fn data_hash_kv(&self, h: &DataHashKv) -> CtlResult {
        self.unsupported()
    }
    fn move_leader(&self, leader: u64, target: u64, r: &MoveLeaderResponse) -> CtlResult {
        self.unsupported()
    }
    fn alarm(&self, r: &AlarmResponse) -> CtlResult {
        self.unsupported()
    }
    /// `action`: validate, enable or cancel.
    fn downgrade(&self, action: &str, r: &DowngradeResponse) -> CtlResult {
        self.unsupported()
    }
    fn auth_change(&self, change: &AuthChange, header: Option<&ResponseHeader>) -> CtlResult {
        self.unsupported()
    }
    fn role_get(&self, role: &str, r: &AuthRoleGetResponse) -> CtlResult {
        self.unsupported()
    }
    fn role_list(&self, r: &AuthRoleListResponse) -> CtlResult {
        self.unsupported()
    }
    fn user_get(&self, user: &str, r: &AuthUserGetResponse) -> CtlResult {
        self.unsupported()
    }
    fn user_list(&self, r: &AuthUserListResponse) -> CtlResult {
        self.unsupported()
    }
    fn auth_status(&self, r: &AuthStatusResponse) -> CtlResult {
        self.unsupported()
    }
}

/// The printer for `-w <format>`; `hex` and `value_only` only change the simple format.
pub fn printer_for(format: &str, hex: bool, value_only: bool) -> CtlResult<Box<dyn Printer>> {
    let printer: Box<dyn Printer> = match format {
        "simple" => Box::new(simple::SimplePrinter { hex, value_only }),
        "json" => Box::new(json::JsonPrinter),
        "fields" => Box::new(fields::FieldsPrinter),
        "table" => Box::new(table::TablePrinter),
        "protobuf" => Box::new(protobuf::ProtobufPrinter),
        _ => {
            return Err(Failure::new(
                ExitCode::BadFeature,
                "unsupported output format",
            ))
        }
    };
    Ok(printer)
}
