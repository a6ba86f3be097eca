use std::sync::Arc;

use oxcd_proto::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tokio_stream::StreamExt;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use super::{HeaderFiller, LeaderMonitor};
use crate::lease::LeaseService;

pub struct LeaseApi {
    pub leases: Arc<LeaseService>,
    pub header: Arc<HeaderFiller>,
    pub leader: LeaderMonitor,
}

#[tonic::async_trait]
impl Lease for LeaseApi {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        respond!(self, self.leases.grant(req.into_inner()))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        respond!(self, self.leases.revoke(req.into_inner()))
    }

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<BoxStream<LeaseKeepAliveResponse>>, Status> {
        let leases = self.leases.clone();
        let header = self.header.clone();
        let metadata = req.metadata().clone();
        let responses = req.into_inner().then(move |r| {
            let (leases, header) = (leases.clone(), header.clone());
            async move {
                let mut resp = leases.keep_alive(r?.id).await.map_err(Status::from)?;
                header.fill(&mut resp.header);
                Ok(resp)
            }
        });
        Ok(Response::new(
            self.leader.watch_over(&metadata, Box::pin(responses)),
        ))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        respond!(self, self.leases.time_to_live(req.into_inner()))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        respond!(self, self.leases.leases())
    }
}
