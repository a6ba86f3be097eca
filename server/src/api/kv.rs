use std::sync::Arc;

use oxcd_proto::etcdserverpb::{
    kv_server::Kv, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use tonic::{Request, Response, Status};

use super::HeaderFiller;
use crate::kv::KvService;

pub struct KvApi {
    pub kv: Arc<KvService>,
    pub header: Arc<HeaderFiller>,
}

#[tonic::async_trait]
impl Kv for KvApi {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        respond!(self, self.kv.range(req.into_inner()))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        respond!(self, self.kv.put(req.into_inner()))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        respond!(self, self.kv.delete_range(req.into_inner()))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        respond!(self, self.kv.txn(req.into_inner()))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        respond!(self, self.kv.compact(req.into_inner()))
    }
}
