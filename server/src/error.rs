//! etcd's client-visible errors. Clients (etcdctl, client-go, kube-apiserver) match on the exact
//! message strings and gRPC codes, so every error that can reach a client is listed here once.

use tonic::{Code, Status};

/// An error with etcd's exact wire representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// oxcd's own: physical compaction hit a storage error (etcd would crash instead).
    #[error("etcdserver: mvcc: physical compaction failed; see the member's log")]
    CompactionFailed,
    // The Lock and Election services' own errors: etcd returns them as plain Go errors, which
    // gRPC sends with code Unknown.
    #[error("mutex: session is expired")]
    SessionExpired,
    #[error("election: not leader")]
    ElectionNotLeader,
    #[error("election: no leader")]
    ElectionNoLeader,
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    // Auth.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExists,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExists,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// etcd has no gRPC form for this one: it reaches clients as a plain Go error (code Unknown).
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    // Downgrades.
    #[error("etcdserver: wrong downgrade target version format")]
    WrongDowngradeVersionFormat,
    #[error("etcdserver: invalid downgrade target version")]
    InvalidDowngradeTarget,
    #[error("etcdserver: cluster has a downgrade job in progress")]
    DowngradeInProgress,
    /// A Downgrade action etcd does not know; a plain Go error there (code Unknown).
    #[error("etcdserver: unknown method")]
    UnknownMethod,
    // RangeStream's refusals (etcd 3.7 words them in its gRPC layer, with code Unimplemented).
    #[error("RangeStream does not support custom sort orders")]
    StreamSortUnsupported,
    #[error("RangeStream does not support revision filters")]
    StreamFiltersUnsupported,
}

impl EtcdError {
    pub fn code(self) -> Code {
        use EtcdError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | InvalidSortOption | RequestTooLarge => Code::InvalidArgument,
            Compacted | FutureRevision | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExists | NotLeader | PeerUrlExists | MemberNotLearner | LearnerNotReady
            | TooManyLearners | BadLeaderTransferee => Code::FailedPrecondition,
            MemberBadUrls => Code::InvalidArgument,
            NoSpace => Code::ResourceExhausted,
            NoLeader | LeaderChanged | Stopped | Timeout | NotSupportedForLearner | Unhealthy => {
                Code::Unavailable
            }
            Corrupt => Code::DataLoss,
            CompactionFailed => Code::Internal,
            SessionExpired | ElectionNotLeader | ElectionNoLeader | MissingLeaderKey
            | NoPasswordUser | UnknownMethod => Code::Unknown,
            RootUserNotExist | RootRoleNotExist | UserAlreadyExists | UserNotFound
            | RoleAlreadyExists | RoleNotFound | RoleNotGranted | PermissionNotGranted
            | AuthNotEnabled => Code::FailedPrecondition,
            UserEmpty | RoleEmpty | AuthFailed | PermissionNotGiven | InvalidAuthMgmt
            | AuthOldRevision => Code::InvalidArgument,
            PermissionDenied => Code::PermissionDenied,
            WrongDowngradeVersionFormat | InvalidDowngradeTarget => Code::InvalidArgument,
            DowngradeInProgress => Code::FailedPrecondition,
            InvalidAuthToken => Code::Unauthenticated,
            StreamSortUnsupported | StreamFiltersUnsupported => Code::Unimplemented,
        }
    }

    /// Stable numeric form used when an error travels inside a Raft apply result.
    pub fn to_wire(self) -> u32 {
        ALL.iter()
            .position(|e| *e == self)
            .map_or(u32::MAX, |i| i as u32)
    }

    pub fn from_wire(code: u32) -> EtcdError {
        ALL.get(code as usize)
            .copied()
            .unwrap_or(EtcdError::Corrupt)
    }
}

const ALL: [EtcdError; 58] = {
    use EtcdError::*;
    [
        EmptyKey,
        KeyNotFound,
        ValueProvided,
        LeaseProvided,
        TooManyOps,
        DuplicateKey,
        InvalidSortOption,
        RequestTooLarge,
        Compacted,
        FutureRevision,
        LeaseNotFound,
        NoLeader,
        LeaderChanged,
        Stopped,
        Timeout,
        Corrupt,
        LeaseExists,
        LeaseTtlTooLarge,
        NotLeader,
        NoSpace,
        MemberNotFound,
        PeerUrlExists,
        MemberBadUrls,
        MemberNotLearner,
        LearnerNotReady,
        TooManyLearners,
        NotSupportedForLearner,
        BadLeaderTransferee,
        Unhealthy,
        SessionExpired,
        ElectionNotLeader,
        ElectionNoLeader,
        MissingLeaderKey,
        CompactionFailed,
        RootUserNotExist,
        RootRoleNotExist,
        UserAlreadyExists,
        UserEmpty,
        UserNotFound,
        RoleAlreadyExists,
        RoleNotFound,
        RoleEmpty,
        AuthFailed,
        PermissionNotGiven,
        PermissionDenied,
        RoleNotGranted,
        PermissionNotGranted,
        AuthNotEnabled,
        InvalidAuthToken,
        InvalidAuthMgmt,
        AuthOldRevision,
        NoPasswordUser,
        WrongDowngradeVersionFormat,
        InvalidDowngradeTarget,
        DowngradeInProgress,
        UnknownMethod,
        StreamSortUnsupported,
        StreamFiltersUnsupported,
    ]
};

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes_round_trip() {
        for e in ALL {
            assert_eq!(EtcdError::from_wire(e.to_wire()), e);
        }
    }

    #[test]
    fn statuses_carry_etcd_strings() {
        let s: Status = EtcdError::Compacted.into();
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
    }
}
