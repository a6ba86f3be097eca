use std::sync::Arc;

use oxcd_proto::etcdserverpb::{
    kv_server::Kv, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RangeStreamResponse, TxnRequest,
    TxnResponse,
};
use tokio_stream::StreamExt;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::{caller, HeaderFiller, LeaderMonitor};
use crate::auth::AuthService;
use crate::kv::KvService;

pub struct KvApi {
    pub kv: Arc<KvService>,
    pub auth: Arc<AuthService>,
    pub header: Arc<HeaderFiller>,
}

#[tonic::async_trait]
impl Kv for KvApi {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        respond!(self, self.kv.range(&who, req.into_inner()))
    }

    /// Only the last chunk has a header; the member's fields are filled in there, the
    /// revision being the one the stream read at.
    async fn range_stream(
        &self,
        req: Request<RangeRequest>,
    ) -> Result<Response<BoxStream<RangeStreamResponse>>, Status> {
        let who = caller(&self.auth, &req).await?;
        let metadata = req.metadata().clone();
        let chunks = self.kv.range_stream(who, req.into_inner()).await?;
        let header = self.header.clone();
        let out = chunks.map(move |chunk| {
            let mut chunk = chunk?;
            if chunk.header.is_some() {
                header.fill(&mut chunk.header);
            }
            Ok(RangeStreamResponse {
                range_response: Some(chunk),
            })
        });
        // etcd's stream interceptor cuts every `hasleader` stream, this one included.
        let consensus = self.header.consensus.clone();
        let leader = LeaderMonitor {
            interval: consensus.election_timeout(),
            consensus,
        };
        Ok(Response::new(leader.watch_over(&metadata, Box::pin(out))))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        respond!(self, self.kv.put(&who, req.into_inner()))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        respond!(self, self.kv.delete_range(&who, req.into_inner()))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        respond!(self, self.kv.txn(&who, req.into_inner()))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        respond!(self, self.kv.compact(&who, req.into_inner()))
    }
}
