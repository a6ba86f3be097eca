//! etcd v3 wire types and gRPC service definitions for oxcd.
//!
//! oxcd speaks etcd's client protocol byte for byte, so stock etcd clients
//! (etcdctl, `etcd-client`, the Go clientv3) work against it unchanged. This
//! crate holds our own copies of etcd's `.proto` files (see `proto/`) and the
//! Rust code prost/tonic generate from them, both servers and clients.
//!
//! Each protobuf package becomes a module at the crate root so that
//! cross-package references in the generated code (`super::mvccpb::KeyValue`)
//! resolve.

/// Storage-level types: `KeyValue` and watch `Event`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// Persistent auth records: `User`, `Role`, `Permission`, `UserAddOptions`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// The client API: KV, Watch, Lease, Cluster, Maintenance and Auth services.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// The distributed lock service.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// The leader election service.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// oxcd's own member-to-member service: Raft messages and requests forwarded to the leader.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod peerpb {
    tonic::include_proto!("peerpb");
}

/// The `FileDescriptorSet` of every package above, as protoc produced it.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("oxcd_descriptor");

#[cfg(test)]
mod tests {
    //! Wire-format spot checks. Expected bytes are computed by hand from the
    //! field numbers and types in etcd's own `.proto` files: a tag byte is
    //! `(field_number << 3) | wire_type`, with wire type 0 for varints and 2
    //! for length-delimited fields.

    use super::etcdserverpb::{
        compare, range_request, request_op, watch_create_request, watch_request, Compare,
        DowngradeInfo, HashKvResponse, LeaseTimeToLiveResponse, Member, PutRequest, RangeRequest,
        RequestOp, StatusResponse, TxnRequest, WatchCreateRequest, WatchProgressRequest,
        WatchRequest, WatchResponse,
    };
    use super::mvccpb::{event, Event, KeyValue};
    use prost::Message;

    #[test]
    fn range_request_field_numbers() {
        let req = RangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            limit: 5,
            revision: 7,
            sort_order: range_request::SortOrder::Descend as i32,
            sort_target: range_request::SortTarget::Mod as i32,
            serializable: true,
            keys_only: true,
            count_only: true,
            min_mod_revision: 1,
            max_mod_revision: 3,
            min_create_revision: 4,
            max_create_revision: 2,
        };
        #[rustfmt::skip]
        let want: &[u8] = &[
            0x0a, 0x01, b'a', // 1 key
            0x12, 0x01, b'b', // 2 range_end
            0x18, 0x05,       // 3 limit
            0x20, 0x07,       // 4 revision
            0x28, 0x02,       // 5 sort_order = DESCEND
            0x30, 0x03,       // 6 sort_target = MOD
            0x38, 0x01,       // 7 serializable
            0x40, 0x01,       // 8 keys_only
            0x48, 0x01,       // 9 count_only
            0x50, 0x01,       // 10 min_mod_revision
            0x58, 0x03,       // 11 max_mod_revision
            0x60, 0x04,       // 12 min_create_revision
            0x68, 0x02,       // 13 max_create_revision
        ];
        assert_eq!(req.encode_to_vec(), want);
        assert_eq!(RangeRequest::decode(want).unwrap(), req);
    }

    #[test]
    fn sort_enum_values() {
        use range_request::{SortOrder, SortTarget};
        assert_eq!(
            [SortOrder::None, SortOrder::Ascend, SortOrder::Descend].map(|v| v as i32),
            [0, 1, 2]
        );
        assert_eq!(
            [
                SortTarget::Key,
                SortTarget::Version,
                SortTarget::Create,
                SortTarget::Mod,
                SortTarget::Value
            ]
            .map(|v| v as i32),
            [0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn put_request_field_numbers() {
        let req = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 9,
            prev_kv: true,
            ignore_value: true,
            ignore_lease: true,
        };
        #[rustfmt::skip]
        let want: &[u8] = &[
            0x0a, 0x01, b'k',
            0x12, 0x01, b'v',
            0x18, 0x09,
            0x20, 0x01,
            0x28, 0x01,
            0x30, 0x01,
        ];
        assert_eq!(req.encode_to_vec(), want);
    }

    #[test]
    fn compare_target_union_and_range_end() {
        use compare::{CompareResult, CompareTarget, TargetUnion};
        let cmp = Compare {
            result: CompareResult::NotEqual as i32,
            target: CompareTarget::Lease as i32,
            key: b"k".to_vec(),
            range_end: b"z".to_vec(),
            target_union: Some(TargetUnion::Lease(9)),
        };
        #[rustfmt::skip]
        let want: &[u8] = &[
            0x08, 0x03,             // 1 result = NOT_EQUAL
            0x10, 0x04,             // 2 target = LEASE
            0x1a, 0x01, b'k',       // 3 key
            0x40, 0x09,             // 8 lease (oneof)
            0x82, 0x04, 0x01, b'z', // 64 range_end: (64 << 3 | 2) = 0x202
        ];
        assert_eq!(cmp.encode_to_vec(), want);
        assert_eq!(Compare::decode(want).unwrap(), cmp);

        // The other oneof members: 4 version, 5 create_revision,
        // 6 mod_revision, 7 value.
        let tag_of = |u: TargetUnion| {
            Compare {
                target_union: Some(u),
                ..Default::default()
            }
            .encode_to_vec()
        };
        assert_eq!(tag_of(TargetUnion::Version(1)), [0x20, 0x01]);
        assert_eq!(tag_of(TargetUnion::CreateRevision(1)), [0x28, 0x01]);
        assert_eq!(tag_of(TargetUnion::ModRevision(1)), [0x30, 0x01]);
        assert_eq!(
            tag_of(TargetUnion::Value(b"x".to_vec())),
            [0x3a, 0x01, b'x']
        );

        assert_eq!(
            [
                CompareResult::Equal,
                CompareResult::Greater,
                CompareResult::Less,
                CompareResult::NotEqual
            ]
            .map(|v| v as i32),
            [0, 1, 2, 3]
        );
        assert_eq!(
            [
                CompareTarget::Version,
                CompareTarget::Create,
                CompareTarget::Mod,
                CompareTarget::Value,
                CompareTarget::Lease
            ]
            .map(|v| v as i32),
            [0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn txn_and_request_op() {
        let put = PutRequest {
            key: b"k".to_vec(),
            ..Default::default()
        };
        let op = RequestOp {
            request: Some(request_op::Request::RequestPut(put)),
        };
        // RequestOp.request_put is field 2.
        assert_eq!(op.encode_to_vec(), [0x12, 0x03, 0x0a, 0x01, b'k']);
        let nested = RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest::default())),
        };
        // RequestOp.request_txn is field 4.
        assert_eq!(nested.encode_to_vec(), [0x22, 0x00]);

        let txn = TxnRequest {
            compare: vec![Compare::default()],
            success: vec![op.clone()],
            failure: vec![op],
        };
        #[rustfmt::skip]
        let want: &[u8] = &[
            0x0a, 0x00,                                   // 1 compare
            0x12, 0x05, 0x12, 0x03, 0x0a, 0x01, b'k',     // 2 success
            0x1a, 0x05, 0x12, 0x03, 0x0a, 0x01, b'k',     // 3 failure
        ];
        assert_eq!(txn.encode_to_vec(), want);
    }

    #[test]
    fn key_value_and_event() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            create_revision: 1,
            mod_revision: 2,
            version: 3,
            value: b"v".to_vec(),
            lease: 4,
        };
        #[rustfmt::skip]
        let want: &[u8] = &[
            0x0a, 0x01, b'k',
            0x10, 0x01,
            0x18, 0x02,
            0x20, 0x03,
            0x2a, 0x01, b'v',
            0x30, 0x04,
        ];
        assert_eq!(kv.encode_to_vec(), want);

        let ev = Event {
            r#type: event::EventType::Delete as i32,
            kv: Some(KeyValue::default()),
            prev_kv: Some(KeyValue::default()),
        };
        assert_eq!(ev.encode_to_vec(), [0x08, 0x01, 0x12, 0x00, 0x1a, 0x00]);
    }

    #[test]
    fn watch_messages() {
        let progress = WatchRequest {
            request_union: Some(watch_request::RequestUnion::ProgressRequest(
                WatchProgressRequest {},
            )),
        };
        assert_eq!(progress.encode_to_vec(), [0x1a, 0x00]);

        let create = WatchCreateRequest {
            key: b"a".to_vec(),
            range_end: vec![0],
            start_revision: 3,
            progress_notify: true,
            filters: vec![
                watch_create_request::FilterType::Noput as i32,
                watch_create_request::FilterType::Nodelete as i32,
            ],
            prev_kv: true,
            watch_id: 6,
            fragment: true,
        };
        #[rustfmt::skip]
        let want: &[u8] = &[
            0x0a, 0x01, b'a',
            0x12, 0x01, 0x00,
            0x18, 0x03,
            0x20, 0x01,
            0x2a, 0x02, 0x00, 0x01, // 5 filters, packed
            0x30, 0x01,
            0x38, 0x06,
            0x40, 0x01,
        ];
        assert_eq!(create.encode_to_vec(), want);
        let wrapped = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
        };
        assert_eq!(&wrapped.encode_to_vec()[..2], [0x0a, want.len() as u8]);

        let resp = WatchResponse {
            header: None,
            watch_id: 2,
            created: true,
            canceled: true,
            compact_revision: 5,
            cancel_reason: "x".into(),
            fragment: true,
            events: vec![Event::default()],
        };
        #[rustfmt::skip]
        let want: &[u8] = &[
            0x10, 0x02,
            0x18, 0x01,
            0x20, 0x01,
            0x28, 0x05,
            0x32, 0x01, b'x',
            0x38, 0x01,
            0x5a, 0x00, // 11 events
        ];
        assert_eq!(resp.encode_to_vec(), want);
    }

    #[test]
    fn maintenance_and_cluster_fields() {
        let status = StatusResponse {
            db_size_in_use: 1,
            is_learner: true,
            storage_version: "3".into(),
            db_size_quota: 2,
            downgrade_info: Some(DowngradeInfo {
                enabled: true,
                target_version: String::new(),
            }),
            ..Default::default()
        };
        #[rustfmt::skip]
        let want: &[u8] = &[
            0x48, 0x01,             // 9 dbSizeInUse
            0x50, 0x01,             // 10 isLearner
            0x5a, 0x01, b'3',       // 11 storageVersion
            0x60, 0x02,             // 12 dbSizeQuota
            0x6a, 0x02, 0x08, 0x01, // 13 downgradeInfo
        ];
        assert_eq!(status.encode_to_vec(), want);

        let hash = HashKvResponse {
            header: None,
            hash: 1,
            compact_revision: 2,
            hash_revision: 3,
        };
        assert_eq!(hash.encode_to_vec(), [0x10, 0x01, 0x18, 0x02, 0x20, 0x03]);

        let member = Member {
            id: 1,
            is_learner: true,
            ..Default::default()
        };
        assert_eq!(member.encode_to_vec(), [0x08, 0x01, 0x28, 0x01]);
    }

    #[test]
    fn ttl_is_plain_int64() {
        // TTL is int64 (not sint64): -1 is a ten-byte two's-complement varint.
        let resp = LeaseTimeToLiveResponse {
            ttl: -1,
            ..Default::default()
        };
        assert_eq!(
            resp.encode_to_vec(),
            [0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }
}
