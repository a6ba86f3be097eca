//! The Auth service's behaviour, independent of gRPC, and the identification of callers that
//! every service relies on.

use std::sync::Arc;

use base64::Engine as _;
use oxcd_proto::authpb::Permission;
use oxcd_proto::etcdserverpb::{
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthStatusResponse,
    AuthUserAddRequest, AuthUserChangePasswordRequest, AuthenticateResponse,
};

use super::store::{AuthApplied, AuthChange, AuthInfo, AuthStore, Change, TokenRequest};
use crate::apply::{Command, Op, Outcomes};
use crate::error::EtcdError;
use crate::replication::Replication;
use crate::storage::off_runtime;

pub struct AuthService {
    store: Arc<AuthStore>,
    consensus: Arc<dyn Replication>,
    bcrypt_cost: u32,
    /// `--client-cert-auth`: a client certificate's common name names the caller.
    client_cert_auth: bool,
}

impl AuthService {
    pub fn new(
        store: Arc<AuthStore>,
        consensus: Arc<dyn Replication>,
        bcrypt_cost: u32,
        client_cert_auth: bool,
    ) -> AuthService {
        AuthService {
            store,
            consensus,
            bcrypt_cost,
            client_cert_auth,
        }
    }

    pub fn store(&self) -> &Arc<AuthStore> {
        &self.store
    }

    /// Who a call comes from (etcd's AuthInfoFromCtx): its token (the `token` metadata, or
    /// `authorization` with an optional `Bearer ` prefix), else with `--client-cert-auth` its
    /// certificate's common name, else nobody. With auth off every caller is nobody.
    pub async fn identify(
        &self,
        token: Option<&str>,
        certificate_name: Option<&str>,
    ) -> Result<AuthInfo, EtcdError> {
        if !self.store.is_enabled() {
            return Ok(AuthInfo::default());
        }
        if let Some(token) = token {
            let token = token.strip_prefix("Bearer ").unwrap_or(token);
            let tokens = self.store.tokens();
            if let Some(who) = tokens.resolve(token, self.store.revision()) {
                return Ok(who);
            }
            // A simple token issued by an entry this member has not applied yet.
            if let Some(index) = tokens.simple_token_index(token) {
                let waited = tokio::time::timeout(
                    self.consensus.request_timeout(),
                    self.consensus.wait_applied(index),
                )
                .await;
                if matches!(waited, Ok(Ok(()))) {
                    if let Some(who) = tokens.resolve(token, self.store.revision()) {
                        return Ok(who);
                    }
                }
            }
            return Err(EtcdError::InvalidAuthToken);
        }
        match certificate_name {
            Some(name) if self.client_cert_auth && !name.is_empty() => {
                Ok(self.store.certificate_user(name))
            }
            _ => Ok(AuthInfo::default()),
        }
    }

    /// Checks the password on this member (bcrypt, off the async workers), then has the token
    /// issued through Raft so every member knows it. A change of the auth state between the
    /// check and the issue makes the check stale: it is done again, as etcd does.
    pub async fn authenticate(
        &self,
        name: String,
        password: String,
    ) -> Result<AuthenticateResponse, EtcdError> {
        self.consensus.read_barrier().await?;
        loop {
            let (hash, checked_at) = self.store.password_hash(&name)?;
            let password = password.clone();
            let matches = off_runtime(EtcdError::Stopped, move || {
                Ok(std::str::from_utf8(&hash)
                    .ok()
                    .and_then(|hash| bcrypt::verify(password, hash).ok())
                    .unwrap_or(false))
            })
            .await?;
            if !matches {
                return Err(EtcdError::AuthFailed);
            }
            let issue = Change::Authenticate(TokenRequest {
                name: name.clone(),
                simple_token_prefix: self.store.tokens().new_prefix(),
            });
            let applied = self.change(&AuthInfo::default(), issue).await?;
            if checked_at == self.store.revision() {
                return Ok(AuthenticateResponse {
                    header: None,
                    token: applied.token,
                });
            }
        }
    }

    pub async fn enable(&self, who: &AuthInfo) -> Result<(), EtcdError> {
        self.change(who, Change::Enable(Default::default()))
            .await
            .map(drop)
    }

    pub async fn disable(&self, who: &AuthInfo) -> Result<(), EtcdError> {
        self.change(who, Change::Disable(Default::default()))
            .await
            .map(drop)
    }

    /// Readable by anyone, even without credentials while auth is on (etcd 3.7).
    pub async fn status(&self) -> Result<AuthStatusResponse, EtcdError> {
        self.consensus.read_barrier().await?;
        Ok(AuthStatusResponse {
            header: None,
            enabled: self.store.is_enabled(),
            auth_revision: self.store.revision(),
        })
    }

    /// The password is hashed here, so the log never holds it (etcd does the same).
    pub async fn user_add(
        &self,
        who: &AuthInfo,
        mut r: AuthUserAddRequest,
    ) -> Result<(), EtcdError> {
        if !r.options.as_ref().is_some_and(|o| o.no_password) {
            r.hashed_password = self.hash(std::mem::take(&mut r.password)).await?;
        }
        r.password.clear();
        self.change(who, Change::UserAdd(r)).await.map(drop)
    }

    pub async fn user_change_password(
        &self,
        who: &AuthInfo,
        mut r: AuthUserChangePasswordRequest,
    ) -> Result<(), EtcdError> {
        if !r.password.is_empty() {
            r.hashed_password = self.hash(std::mem::take(&mut r.password)).await?;
        }
        self.change(who, Change::UserChangePassword(r))
            .await
            .map(drop)
    }

    pub async fn user_delete(&self, who: &AuthInfo, name: String) -> Result<(), EtcdError> {
        let r = oxcd_proto::etcdserverpb::AuthUserDeleteRequest { name };
        self.change(who, Change::UserDelete(r)).await.map(drop)
    }

    pub async fn user_grant_role(
        &self,
        who: &AuthInfo,
        user: String,
        role: String,
    ) -> Result<(), EtcdError> {
        let r = oxcd_proto::etcdserverpb::AuthUserGrantRoleRequest { user, role };
        self.change(who, Change::UserGrantRole(r)).await.map(drop)
    }

    pub async fn user_revoke_role(
        &self,
        who: &AuthInfo,
        name: String,
        role: String,
    ) -> Result<(), EtcdError> {
        let r = oxcd_proto::etcdserverpb::AuthUserRevokeRoleRequest { name, role };
        self.change(who, Change::UserRevokeRole(r)).await.map(drop)
    }

    pub async fn role_add(&self, who: &AuthInfo, name: String) -> Result<(), EtcdError> {
        let r = oxcd_proto::etcdserverpb::AuthRoleAddRequest { name };
        self.change(who, Change::RoleAdd(r)).await.map(drop)
    }

    pub async fn role_delete(&self, who: &AuthInfo, role: String) -> Result<(), EtcdError> {
        let r = oxcd_proto::etcdserverpb::AuthRoleDeleteRequest { role };
        self.change(who, Change::RoleDelete(r)).await.map(drop)
    }

    pub async fn role_grant_permission(
        &self,
        who: &AuthInfo,
        r: AuthRoleGrantPermissionRequest,
    ) -> Result<(), EtcdError> {
        self.change(who, Change::RoleGrantPermission(r))
            .await
            .map(drop)
    }

    pub async fn role_revoke_permission(
        &self,
        who: &AuthInfo,
        r: AuthRoleRevokePermissionRequest,
    ) -> Result<(), EtcdError> {
        self.change(who, Change::RoleRevokePermission(r))
            .await
            .map(drop)
    }

    /// Linearizable, as etcd's (which it sends through Raft); a user may read its own roles.
    pub async fn user_get(&self, who: &AuthInfo, name: &str) -> Result<Vec<String>, EtcdError> {
        self.consensus.read_barrier().await?;
        self.store.user_roles(who, name)
    }

    pub async fn user_list(&self, who: &AuthInfo) -> Result<Vec<String>, EtcdError> {
        self.consensus.read_barrier().await?;
        self.store.user_names(who)
    }

    /// A user may read the permissions of its own roles.
    pub async fn role_get(&self, who: &AuthInfo, role: &str) -> Result<Vec<Permission>, EtcdError> {
        self.consensus.read_barrier().await?;
        self.store.role_permissions(who, role)
    }

    pub async fn role_list(&self, who: &AuthInfo) -> Result<Vec<String>, EtcdError> {
        self.consensus.read_barrier().await?;
        self.store.role_names(who)
    }

    async fn hash(&self, password: String) -> Result<String, EtcdError> {
        let cost = self.bcrypt_cost;
        off_runtime(EtcdError::Stopped, move || {
            let hashed = bcrypt::hash_with_result(password, cost).map_err(|e| {
                tracing::error!(error = %e, "bcrypt failed");
                EtcdError::AuthFailed
            })?;
            // Go's bcrypt writes `$2a$`, which etcd's backups carry.
            let hashed = hashed.format_for_version(bcrypt::Version::TwoA);
            Ok(base64::engine::general_purpose::STANDARD.encode(hashed))
        })
        .await
    }

    async fn change(&self, who: &AuthInfo, change: Change) -> Result<AuthApplied, EtcdError> {
        let command = Command::by(
            Op::Auth(AuthChange {
                change: Some(change),
            }),
            who,
        );
        match self.consensus.propose(command).await? {
            Outcomes::Auth(applied) => Ok(applied),
            _ => Err(EtcdError::Corrupt),
        }
    }
}
