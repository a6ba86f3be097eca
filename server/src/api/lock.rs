use std::sync::Arc;

use oxcd_proto::v3lockpb::{
    lock_server::Lock, LockRequest, LockResponse, UnlockRequest, UnlockResponse,
};
use tonic::{Request, Response, Status};

use super::{caller, unknown_code, unknown_status, HeaderFiller};
use crate::auth::AuthService;
use crate::concurrency::Contention;

pub struct LockApi {
    pub contention: Arc<Contention>,
    pub auth: Arc<AuthService>,
    pub header: Arc<HeaderFiller>,
}

#[tonic::async_trait]
impl Lock for LockApi {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let who = caller(&self.auth, &req).await.map_err(unknown_status)?;
        let r = req.into_inner();
        respond!(self, async {
            let (key, header) = self
                .contention
                .lock(&who, &r.name, r.lease)
                .await
                .map_err(unknown_code)?;
            Ok::<_, Status>(LockResponse { header, key })
        })
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let who = caller(&self.auth, &req).await.map_err(unknown_status)?;
        let key = req.into_inner().key;
        respond!(self, async {
            let header = self
                .contention
                .unlock(&who, key)
                .await
                .map_err(unknown_code)?;
            Ok::<_, Status>(UnlockResponse { header })
        })
    }
}
