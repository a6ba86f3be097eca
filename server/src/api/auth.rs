//! `etcdserverpb.Auth`: translation only; the rules live in `crate::auth`.

use std::sync::Arc;

use oxcd_proto::etcdserverpb::{
    auth_server::Auth, AuthDisableRequest, AuthDisableResponse, AuthEnableRequest,
    AuthEnableResponse, AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest,
    AuthRoleDeleteResponse, AuthRoleGetRequest, AuthRoleGetResponse,
    AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse, AuthRoleListRequest,
    AuthRoleListResponse, AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse,
    AuthStatusRequest, AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse,
    AuthUserChangePasswordRequest, AuthUserChangePasswordResponse, AuthUserDeleteRequest,
    AuthUserDeleteResponse, AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest,
    AuthUserGrantRoleResponse, AuthUserListRequest, AuthUserListResponse,
    AuthUserRevokeRoleRequest, AuthUserRevokeRoleResponse, AuthenticateRequest,
    AuthenticateResponse,
};
use tonic::{Request, Response, Status};

use super::{caller, HeaderFiller};
use crate::auth::AuthService;

pub struct AuthApi {
    pub auth: Arc<AuthService>,
    pub header: Arc<HeaderFiller>,
}

/// The responses that carry nothing but a header.
macro_rules! acknowledge {
    ($self:ident, $resp:ident, $call:expr) => {{
        $call.await.map_err(Status::from)?;
        let mut resp = $resp { header: None };
        $self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }};
}

#[tonic::async_trait]
impl Auth for AuthApi {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        acknowledge!(self, AuthEnableResponse, self.auth.enable(&who))
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        acknowledge!(self, AuthDisableResponse, self.auth.disable(&who))
    }

    async fn auth_status(
        &self,
        _req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        respond!(self, self.auth.status())
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let r = req.into_inner();
        respond!(self, self.auth.authenticate(r.name, r.password))
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        acknowledge!(
            self,
            AuthUserAddResponse,
            self.auth.user_add(&who, req.into_inner())
        )
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        let roles = self
            .auth
            .user_get(&who, &req.get_ref().name)
            .await
            .map_err(Status::from)?;
        let mut resp = AuthUserGetResponse {
            header: None,
            roles,
        };
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        let users = self.auth.user_list(&who).await.map_err(Status::from)?;
        let mut resp = AuthUserListResponse {
            header: None,
            users,
        };
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        acknowledge!(
            self,
            AuthUserDeleteResponse,
            self.auth.user_delete(&who, req.into_inner().name)
        )
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        acknowledge!(
            self,
            AuthUserChangePasswordResponse,
            self.auth.user_change_password(&who, req.into_inner())
        )
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        let r = req.into_inner();
        acknowledge!(
            self,
            AuthUserGrantRoleResponse,
            self.auth.user_grant_role(&who, r.user, r.role)
        )
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        let r = req.into_inner();
        acknowledge!(
            self,
            AuthUserRevokeRoleResponse,
            self.auth.user_revoke_role(&who, r.name, r.role)
        )
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        acknowledge!(
            self,
            AuthRoleAddResponse,
            self.auth.role_add(&who, req.into_inner().name)
        )
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        let perm = self
            .auth
            .role_get(&who, &req.get_ref().role)
            .await
            .map_err(Status::from)?;
        let mut resp = AuthRoleGetResponse { header: None, perm };
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        let roles = self.auth.role_list(&who).await.map_err(Status::from)?;
        let mut resp = AuthRoleListResponse {
            header: None,
            roles,
        };
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        acknowledge!(
            self,
            AuthRoleDeleteResponse,
            self.auth.role_delete(&who, req.into_inner().role)
        )
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        acknowledge!(
            self,
            AuthRoleGrantPermissionResponse,
            self.auth.role_grant_permission(&who, req.into_inner())
        )
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let who = caller(&self.auth, &req).await?;
        acknowledge!(
            self,
            AuthRoleRevokePermissionResponse,
            self.auth.role_revoke_permission(&who, req.into_inner())
        )
    }
}
