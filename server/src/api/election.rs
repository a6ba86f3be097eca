use std::sync::Arc;

use oxcd_proto::v3electionpb::{
    election_server::Election, CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest,
    LeaderResponse, ProclaimRequest, ProclaimResponse, ResignRequest, ResignResponse,
};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::{caller, unknown_code, unknown_status, HeaderFiller};
use crate::auth::AuthService;
use crate::concurrency::Contention;
use crate::error::EtcdError;

pub struct ElectionApi {
    pub contention: Arc<Contention>,
    pub auth: Arc<AuthService>,
    pub header: Arc<HeaderFiller>,
}

fn leader_key(leader: Option<LeaderKey>) -> Result<LeaderKey, EtcdError> {
    leader.ok_or(EtcdError::MissingLeaderKey)
}

#[tonic::async_trait]
impl Election for ElectionApi {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let who = caller(&self.auth, &req).await.map_err(unknown_status)?;
        let r = req.into_inner();
        respond!(self, async {
            let (leader, header) = self
                .contention
                .campaign(&who, &r.name, r.lease, r.value)
                .await
                .map_err(unknown_code)?;
            Ok::<_, Status>(CampaignResponse {
                header,
                leader: Some(leader),
            })
        })
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let who = caller(&self.auth, &req).await.map_err(unknown_status)?;
        let r = req.into_inner();
        respond!(self, async {
            let leader = leader_key(r.leader).map_err(unknown_code)?;
            let header = self
                .contention
                .proclaim(&who, &leader, r.value)
                .await
                .map_err(unknown_code)?;
            Ok::<_, Status>(ProclaimResponse { header })
        })
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let who = caller(&self.auth, &req).await.map_err(unknown_status)?;
        let name = req.into_inner().name;
        respond!(self, async {
            let (kv, header) = self
                .contention
                .leader(&who, &name)
                .await
                .map_err(unknown_code)?;
            Ok::<_, Status>(LeaderResponse {
                header,
                kv: Some(kv),
            })
        })
    }

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<BoxStream<LeaderResponse>>, Status> {
        let who = caller(&self.auth, &req).await.map_err(unknown_status)?;
        let name = req.into_inner().name;
        let contention = self.contention.clone();
        let filler = self.header.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let sent = match contention.next_leader(&who, &name, last.as_ref()).await {
                    Ok((kv, mut header)) => {
                        filler.fill(&mut header);
                        last = Some(kv.clone());
                        tx.send(Ok(LeaderResponse {
                            header,
                            kv: Some(kv),
                        }))
                        .await
                    }
                    Err(e) => {
                        let _ = tx.send(Err(unknown_code(e))).await;
                        return;
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let who = caller(&self.auth, &req).await.map_err(unknown_status)?;
        let r = req.into_inner();
        respond!(self, async {
            let leader = leader_key(r.leader).map_err(unknown_code)?;
            let header = self
                .contention
                .resign(&who, &leader)
                .await
                .map_err(unknown_code)?;
            Ok::<_, Status>(ResignResponse { header })
        })
    }
}
