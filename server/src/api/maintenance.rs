use std::sync::Arc;

use oxcd_proto::etcdserverpb::{
    alarm_request::AlarmAction, downgrade_request::DowngradeAction,
    maintenance_server::Maintenance, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest,
    DefragmentResponse, DowngradeInfo, DowngradeRequest, DowngradeResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse,
    ResponseHeader, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::{require_admin, require_user, HeaderFiller};
use crate::alarm::Alarms;
use crate::apply::{Command, Op, Outcomes};
use crate::auth::AuthService;
use crate::downgrade::{ClusterVersion, Downgrade};
use crate::error::EtcdError;
use crate::mvcc::MvccStore;
use crate::raft::Consensus;
use crate::snapshot::backup;
use crate::storage::{Cf, Engine};

/// Backup chunks buffered ahead of a slow client; this bounds a backup's memory.
const SNAPSHOT_CHUNKS_AHEAD: usize = 8;

pub struct MaintenanceApi {
    /// With etcd's StopGRPCServiceOnDefrag gate: the gRPC health service, which reports
    /// NOT_SERVING while a defragment runs so that load balancers route around the member.
    pub defrag_stops_serving: Option<tonic_health::server::HealthReporter>,
    pub engine: Arc<Engine>,
    pub consensus: Arc<Consensus>,
    pub store: Arc<MvccStore>,
    pub alarms: Arc<Alarms>,
    pub downgrade: Arc<Downgrade>,
    pub auth: Arc<AuthService>,
    pub header: Arc<HeaderFiller>,
    pub quota_bytes: u64,
}

#[tonic::async_trait]
impl Maintenance for MaintenanceApi {
    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        require_user(&self.auth, &req).await?;
        let raft = self.consensus.status();
        let mut resp = StatusResponse {
            version: crate::ETCD_VERSION.to_string(),
            // etcd migrates its storage schema to the cluster version (down to the target once
            // a downgrade has lowered it) and reports that. oxcd's data-dir format is versioned
            // apart (`storage::DATA_DIR_FORMAT`) and means the same to every 3.x version it
            // reports.
            storage_version: self.downgrade.cluster_version().to_string(),
            downgrade_info: Some(self.downgrade.info()),
            db_size: self.engine.data_size() as i64,
            db_size_in_use: self.engine.live_data_size() as i64,
            db_size_quota: self.quota_bytes as i64,
            leader: raft.leader.unwrap_or(0),
            raft_index: raft.last_log_index,
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            is_learner: raft.is_learner,
            // etcd lists a missing leader first, then the alarms.
            errors: raft
                .leader
                .is_none()
                .then(|| EtcdError::NoLeader.to_string())
                .into_iter()
                .chain(
                    self.alarms
                        .list(0)
                        .iter()
                        .map(|a| format!("memberID:{} alarm:{}", a.member_id, alarm_name(a.alarm))),
                )
                .collect(),
            ..Default::default()
        };
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    /// Reading alarms needs a caller, changing them the root role (etcd 3.6+).
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        match AlarmAction::try_from(req.get_ref().action) {
            Ok(AlarmAction::Get) | Err(_) => require_user(&self.auth, &req).await?,
            Ok(_) => require_admin(&self.auth, &req).await?,
        }
        let req = req.into_inner();
        let mut resp = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) | Err(_) => AlarmResponse {
                header: None,
                alarms: self.alarms.list(req.alarm),
            },
            Ok(_) => match self
                .consensus
                .propose(Command::new(Op::Alarm(req)))
                .await
                .map_err(Status::from)?
            {
                Outcomes::Alarm(resp) => resp,
                _ => return Err(EtcdError::Corrupt.into()),
            },
        };
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        require_admin(&self.auth, &req).await?;
        let store = self.store.clone();
        let rev = req.into_inner().revision;
        let (hash, hash_revision, compact_revision) =
            tokio::task::spawn_blocking(move || store.hash_kv(rev))
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
        // etcd reports the current revision in the header and the hashed one separately.
        let mut resp = HashKvResponse {
            header: Some(ResponseHeader {
                revision: self.store.current_revision(),
                ..Default::default()
            }),
            hash,
            compact_revision,
            hash_revision,
        };
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        require_admin(&self.auth, &req).await?;
        let engine = self.engine.clone();
        let hash = tokio::task::spawn_blocking(move || engine.checksum(&[Cf::Kv, Cf::Lease]))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut resp = HashResponse { header: None, hash };
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    /// A backup of the whole store at one revision, written by the backup module on a blocking
    /// thread and sent as it is produced.
    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<BoxStream<SnapshotResponse>>, Status> {
        require_admin(&self.auth, &req).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_CHUNKS_AHEAD);
        let store = self.store.clone();
        // etcd 3.5 puts the header and the storage version on the first message only.
        let mut first = SnapshotResponse {
            version: self.downgrade.cluster_version().to_string(),
            ..Default::default()
        };
        self.header.fill(&mut first.header);
        tokio::task::spawn_blocking(move || {
            let mut first = Some(first);
            let streamed = backup::stream(&store, |blob, remaining_bytes| {
                let mut resp = first.take().unwrap_or_default();
                resp.blob = blob;
                resp.remaining_bytes = remaining_bytes;
                tx.blocking_send(Ok(resp)).is_ok()
            });
            // A client that went away is no failure.
            if let Err(e) = streamed.or_else(|e| if tx.is_closed() { Ok(()) } else { Err(e) }) {
                tracing::warn!(error = %e, "streaming a snapshot failed");
                let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        require_admin(&self.auth, &req).await?;
        // etcd answers MoveLeader and Defragment without a header, and client libraries check.
        let target = req.into_inner().target_id;
        self.consensus
            .move_leader(target)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(MoveLeaderResponse::default()))
    }

    /// etcd 3.6's downgrade: validate a target (the previous minor of the cluster version),
    /// enable it (the cluster version drops to it), cancel it. Each first waits until this
    /// member has applied everything committed, so it decides on current state.
    async fn downgrade(
        &self,
        req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        require_admin(&self.auth, &req).await?;
        let req = req.into_inner();
        let action = DowngradeAction::try_from(req.action).map_err(|_| EtcdError::UnknownMethod)?;
        let target = match action {
            DowngradeAction::Validate | DowngradeAction::Enable => {
                Some(ClusterVersion::parse_target(&req.version)?)
            }
            DowngradeAction::Cancel => None,
        };
        self.consensus.read_barrier().await?;
        // etcd answers with the cluster version as it was before the change: its version
        // monitor moves the cluster version only later.
        let version = self.downgrade.cluster_version().short();
        if let Some(target) = target {
            self.downgrade.validate(target)?;
        }
        let set = match action {
            DowngradeAction::Validate => None,
            DowngradeAction::Enable => target.map(|target| DowngradeInfo {
                enabled: true,
                target_version: target.to_string(),
            }),
            // etcd logs "no inflight downgrade job" and still answers a cancel with success.
            DowngradeAction::Cancel if !self.downgrade.info().enabled => {
                tracing::warn!("failed to cancel downgrade: no inflight downgrade job");
                None
            }
            DowngradeAction::Cancel => Some(DowngradeInfo::default()),
        };
        if let Some(set) = set {
            match self
                .consensus
                .propose(Command::new(Op::Downgrade(set)))
                .await
                .map_err(Status::from)?
            {
                Outcomes::Downgrade(_) => {}
                _ => return Err(EtcdError::Corrupt.into()),
            }
        }
        let mut resp = DowngradeResponse {
            header: None,
            version,
        };
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        require_admin(&self.auth, &req).await?;
        let serving = |status| async move {
            if let Some(health) = &self.defrag_stops_serving {
                health.set_service_status("", status).await;
            }
        };
        serving(tonic_health::ServingStatus::NotServing).await;
        let engine = self.engine.clone();
        let defragmented = tokio::task::spawn_blocking(move || engine.compact_all()).await;
        serving(tonic_health::ServingStatus::Serving).await;
        defragmented.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(DefragmentResponse::default()))
    }
}

fn alarm_name(alarm: i32) -> &'static str {
    match AlarmType::try_from(alarm) {
        Ok(AlarmType::Nospace) => "NOSPACE",
        Ok(AlarmType::Corrupt) => "CORRUPT",
        _ => "NONE",
    }
}
