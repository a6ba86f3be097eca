use std::sync::Arc;

use oxcd_proto::etcdserverpb::{
    kv_server::Kv, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use tonic::{Request, Response, Status};

use super::{caller, HeaderFiller};
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
