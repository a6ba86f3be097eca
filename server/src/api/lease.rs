use std::sync::Arc;

use oxcd_proto::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tokio_stream::StreamExt;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use super::{caller, Credentials, HeaderFiller, LeaderMonitor};
use crate::auth::AuthService;
use crate::lease::LeaseService;

pub struct LeaseApi {
    pub leases: Arc<LeaseService>,
    pub auth: Arc<AuthService>,
    pub header: Arc<HeaderFiller>,
    pub leader: LeaderMonitor,
}

#[tonic::async_trait]
impl Lease for LeaseApi {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        respond!(self, self.leases.grant(&who, req.into_inner()))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        respond!(self, self.leases.revoke(&who, req.into_inner()))
    }

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<BoxStream<LeaseKeepAliveResponse>>, Status> {
        let (leases, auth) = (self.leases.clone(), self.auth.clone());
        let header = self.header.clone();
        let metadata = req.metadata().clone();
        let credentials = Credentials::of(&req);
        let responses = req.into_inner().then(move |r| {
            let (leases, auth, header) = (leases.clone(), auth.clone(), header.clone());
            let credentials = credentials.clone();
            async move {
                let id = r?.id;
                // Each keep-alive is checked as etcd checks it (checkLeaseRenew).
                let who = credentials.identify(&auth).await?;
                let mut resp = leases.keep_alive(&who, id).await.map_err(Status::from)?;
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
        let who = caller(&self.auth, &req).await?;
        respond!(self, self.leases.time_to_live(&who, req.into_inner()))
    }

    async fn lease_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        respond!(self, self.leases.leases(&who))
    }
}
