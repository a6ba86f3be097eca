//! Users, roles and the auth revision: changed only by applying Raft commands, so every member
//! holds the same state; stored in the `meta` column family (so Raft snapshots and backups carry
//! it) as oxcd's own protobuf record, [`StoredAuth`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use base64::Engine as _;
use oxcd_proto::authpb::{permission::Type, Permission, Role, User, UserAddOptions};
use oxcd_proto::etcdserverpb::{
    request_op::Request, AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest,
    AuthRoleDeleteRequest, AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest,
    AuthUserAddRequest, AuthUserChangePasswordRequest, AuthUserDeleteRequest,
    AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest, DeleteRangeRequest, PutRequest, RequestOp,
    TxnRequest,
};
use parking_lot::RwLock;

use super::perms::{valid_permission, UserPerms};
use super::token::{TokenConfig, Tokens};
use crate::error::EtcdError;
use crate::storage::{self, Cf, Engine};

/// Where the auth state lives in the `meta` column family.
pub const AUTH_META_KEY: &[u8] = b"auth";
/// The version of [`StoredAuth`]'s layout; a newer one is refused rather than misread.
const STORED_FORMAT: u32 = 1;
const ROOT: &str = "root";

/// Who a request comes from: a user name and the auth revision its credentials were checked
/// at. The default (no user, revision 0) is an unauthenticated caller. Travels with every
/// write through Raft, so apply checks the proposer's permissions.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct AuthInfo {
    #[prost(string, tag = "1")]
    pub user: String,
    #[prost(uint64, tag = "2")]
    pub revision: u64,
}

/// A change of the auth state, replicated through Raft.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthChange {
    #[prost(oneof = "Change", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12")]
    pub change: Option<Change>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Change {
    #[prost(message, tag = "1")]
    Enable(AuthEnableRequest),
    #[prost(message, tag = "2")]
    Disable(AuthDisableRequest),
    /// Issues a token to a user whose password the proposing member has checked.
    #[prost(message, tag = "3")]
    Authenticate(TokenRequest),
    /// Always carries the bcrypt hash (made by the proposing member), never the password.
    #[prost(message, tag = "4")]
    UserAdd(AuthUserAddRequest),
    #[prost(message, tag = "5")]
    UserDelete(AuthUserDeleteRequest),
    #[prost(message, tag = "6")]
    UserChangePassword(AuthUserChangePasswordRequest),
    #[prost(message, tag = "7")]
    UserGrantRole(AuthUserGrantRoleRequest),
    #[prost(message, tag = "8")]
    UserRevokeRole(AuthUserRevokeRoleRequest),
    #[prost(message, tag = "9")]
    RoleAdd(AuthRoleAddRequest),
    #[prost(message, tag = "10")]
    RoleDelete(AuthRoleDeleteRequest),
    #[prost(message, tag = "11")]
    RoleGrantPermission(AuthRoleGrantPermissionRequest),
    #[prost(message, tag = "12")]
    RoleRevokePermission(AuthRoleRevokePermissionRequest),
}

/// etcd's InternalAuthenticateRequest: the user and the random part of a simple token, whose
/// other part is the index of the entry that issues it, so every member registers the same
/// token.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TokenRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub simple_token_prefix: String,
}

/// The result of applying an [`AuthChange`]: the token for an Authenticate, else empty.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthApplied {
    #[prost(string, tag = "1")]
    pub token: String,
}

/// The stored auth state (`meta`/`auth`), oxcd's own record: etcd's `authpb` users and roles.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredAuth {
    #[prost(uint32, tag = "1")]
    format: u32,
    #[prost(bool, tag = "2")]
    enabled: bool,
    #[prost(uint64, tag = "3")]
    revision: u64,
    #[prost(message, repeated, tag = "4")]
    users: Vec<User>,
    #[prost(message, repeated, tag = "5")]
    roles: Vec<Role>,
}

/// The auth state as a backup carries it, in and out of the stored record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthRecord {
    pub enabled: bool,
    pub revision: u64,
    pub users: Vec<User>,
    pub roles: Vec<Role>,
}

impl AuthRecord {
    pub fn encode(self) -> Vec<u8> {
        prost::Message::encode_to_vec(&StoredAuth {
            format: STORED_FORMAT,
            enabled: self.enabled,
            revision: self.revision,
            users: self.users,
            roles: self.roles,
        })
    }

    pub fn decode(bytes: &[u8]) -> storage::Result<AuthRecord> {
        let stored = <StoredAuth as prost::Message>::decode(bytes)
            .map_err(|e| storage::StorageError::Corrupt(format!("auth state: {e}")))?;
        if stored.format > STORED_FORMAT {
            return Err(storage::StorageError::Corrupt(format!(
                "auth state format {} is newer than this oxcd understands ({STORED_FORMAT})",
                stored.format
            )));
        }
        Ok(AuthRecord {
            enabled: stored.enabled,
            revision: stored.revision,
            users: stored.users,
            roles: stored.roles,
        })
    }
}

/// The keys attached to a lease (a user may revoke, or attach keys to, only a lease whose keys
/// it may write).
pub trait LeaseKeys {
    fn lease_keys(&self, lease: i64) -> Vec<Vec<u8>>;
}

#[derive(Default)]
struct State {
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    perms: HashMap<String, UserPerms>,
}

impl State {
    fn refresh_perms(&mut self) {
        let roles = &self.roles;
        self.perms = self
            .users
            .iter()
            .map(|(name, user)| {
                let perms = UserPerms::of_roles(user.roles.iter().filter_map(|r| roles.get(r)));
                (name.clone(), perms)
            })
            .collect();
    }
}

fn has_root_role(user: &User) -> bool {
    user.roles
        .binary_search_by(|r| r.as_str().cmp(ROOT))
        .is_ok()
}

pub struct AuthStore {
    enabled: AtomicBool,
    revision: AtomicU64,
    state: RwLock<State>,
    tokens: Tokens,
}

impl AuthStore {
    pub fn load(engine: &Engine, tokens: TokenConfig) -> storage::Result<AuthStore> {
        let store = AuthStore {
            enabled: AtomicBool::new(false),
            revision: AtomicU64::new(1),
            state: RwLock::new(State::default()),
            tokens: Tokens::new(tokens),
        };
        store.reload(engine)?;
        Ok(store)
    }

    /// Reads the stored state again (after a snapshot replaced it). A store that never had auth
    /// starts at revision 1, as etcd's does.
    pub fn reload(&self, engine: &Engine) -> storage::Result<()> {
        let stored = match engine.get(Cf::Meta, AUTH_META_KEY)? {
            Some(bytes) => AuthRecord::decode(&bytes)?,
            None => AuthRecord {
                enabled: false,
                revision: 1,
                users: Vec::new(),
                roles: Vec::new(),
            },
        };
        let mut state = self.state.write();
        state.users = stored
            .users
            .into_iter()
            .map(|u| (String::from_utf8_lossy(&u.name).into_owned(), u))
            .collect();
        state.roles = stored
            .roles
            .into_iter()
            .map(|r| (String::from_utf8_lossy(&r.name).into_owned(), r))
            .collect();
        state.refresh_perms();
        self.revision.store(stored.revision, Ordering::SeqCst);
        if self.enabled.swap(stored.enabled, Ordering::SeqCst) && !stored.enabled {
            self.tokens.clear();
        }
        Ok(())
    }

    fn encode(&self, state: &State) -> Vec<u8> {
        AuthRecord {
            enabled: self.is_enabled(),
            revision: self.revision(),
            users: state.users.values().cloned().collect(),
            roles: state.roles.values().cloned().collect(),
        }
        .encode()
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }

    pub(super) fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// Applies a change from the log entry at `index`. Returns the result and, when the stored
    /// state changed, its new encoding for the apply batch.
    pub fn apply(
        &self,
        change: AuthChange,
        who: &AuthInfo,
        index: u64,
    ) -> Result<(AuthApplied, Option<Vec<u8>>), EtcdError> {
        let change = change.change.ok_or(EtcdError::Corrupt)?;
        if !matches!(change, Change::Authenticate(_)) {
            // Every change but a login is the root role's (etcd's needAdminPermission).
            self.check_admin(who)?;
        }
        // Enabling keeps the revision (etcd's AuthEnable); everything else that changes the
        // state moves it, which makes every token issued before stale.
        let moves_revision = !matches!(change, Change::Enable(_) | Change::Disable(_));
        let mut state = self.state.write();
        let changed = match change {
            Change::Authenticate(t) => {
                return self
                    .issue_token(&state, &t, index)
                    .map(|token| (token, None))
            }
            Change::Enable(_) => self.enable(&state)?,
            Change::Disable(_) => self.disable(),
            Change::UserAdd(r) => user_add(&mut state, r)?,
            Change::UserDelete(r) => {
                if self.is_enabled() && r.name == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                state.users.remove(&r.name).ok_or(EtcdError::UserNotFound)?;
                self.tokens.invalidate_user(&r.name);
                true
            }
            Change::UserChangePassword(r) => {
                let user = state
                    .users
                    .get_mut(&r.name)
                    .ok_or(EtcdError::UserNotFound)?;
                if !user.options.as_ref().is_some_and(|o| o.no_password) {
                    user.password = stored_password(&r.hashed_password)?;
                }
                self.tokens.invalidate_user(&r.name);
                true
            }
            Change::UserGrantRole(r) => {
                if r.role != ROOT && !state.roles.contains_key(&r.role) {
                    // Checked after the user, as etcd does.
                    if !state.users.contains_key(&r.user) {
                        return Err(EtcdError::UserNotFound);
                    }
                    return Err(EtcdError::RoleNotFound);
                }
                let user = state
                    .users
                    .get_mut(&r.user)
                    .ok_or(EtcdError::UserNotFound)?;
                match user.roles.binary_search(&r.role) {
                    // Granting a role twice changes nothing, not even the revision.
                    Ok(_) => false,
                    Err(at) => {
                        user.roles.insert(at, r.role);
                        true
                    }
                }
            }
            Change::UserRevokeRole(r) => {
                if self.is_enabled() && r.name == ROOT && r.role == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                let user = state
                    .users
                    .get_mut(&r.name)
                    .ok_or(EtcdError::UserNotFound)?;
                let before = user.roles.len();
                user.roles.retain(|role| *role != r.role);
                if user.roles.len() == before {
                    return Err(EtcdError::RoleNotGranted);
                }
                true
            }
            Change::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(EtcdError::RoleEmpty);
                }
                if state.roles.contains_key(&r.name) {
                    return Err(EtcdError::RoleAlreadyExists);
                }
                let role = Role {
                    name: r.name.clone().into_bytes(),
                    key_permission: Vec::new(),
                };
                state.roles.insert(r.name, role);
                true
            }
            Change::RoleDelete(r) => {
                if self.is_enabled() && r.role == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                state.roles.remove(&r.role).ok_or(EtcdError::RoleNotFound)?;
                for user in state.users.values_mut() {
                    user.roles.retain(|role| *role != r.role);
                }
                true
            }
            Change::RoleGrantPermission(r) => {
                let perm = r.perm.ok_or(EtcdError::PermissionNotGiven)?;
                if !valid_permission(&perm) {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                let role = state
                    .roles
                    .get_mut(&r.name)
                    .ok_or(EtcdError::RoleNotFound)?;
                grant(role, perm);
                true
            }
            Change::RoleRevokePermission(r) => {
                let role = state
                    .roles
                    .get_mut(&r.role)
                    .ok_or(EtcdError::RoleNotFound)?;
                let before = role.key_permission.len();
                role.key_permission
                    .retain(|p| p.key != r.key || p.range_end != r.range_end);
                if role.key_permission.len() == before {
                    return Err(EtcdError::PermissionNotGranted);
                }
                true
            }
        };
        if !changed {
            return Ok((AuthApplied::default(), None));
        }
        if moves_revision {
            self.revision.fetch_add(1, Ordering::SeqCst);
        }
        state.refresh_perms();
        Ok((AuthApplied::default(), Some(self.encode(&state))))
    }

    /// etcd: auth is enabled only with a `root` user holding the `root` role; enabling it
    /// again changes nothing, and enabling does not move the revision.
    fn enable(&self, state: &State) -> Result<bool, EtcdError> {
        if self.is_enabled() {
            return Ok(false);
        }
        let root = state.users.get(ROOT).ok_or(EtcdError::RootUserNotExist)?;
        if !has_root_role(root) {
            return Err(EtcdError::RootRoleNotExist);
        }
        self.enabled.store(true, Ordering::SeqCst);
        // Stored right away: the revision does not move, but the state must be written.
        Ok(true)
    }

    fn disable(&self) -> bool {
        if !self.enabled.swap(false, Ordering::SeqCst) {
            return false;
        }
        self.revision.fetch_add(1, Ordering::SeqCst);
        self.tokens.clear();
        true
    }

    fn issue_token(
        &self,
        state: &State,
        t: &TokenRequest,
        index: u64,
    ) -> Result<AuthApplied, EtcdError> {
        if !self.is_enabled() {
            return Err(EtcdError::AuthNotEnabled);
        }
        let user = state.users.get(&t.name).ok_or(EtcdError::AuthFailed)?;
        if user.options.as_ref().is_some_and(|o| o.no_password) {
            return Err(EtcdError::AuthFailed);
        }
        let token = self
            .tokens
            .assign(&t.name, self.revision(), &t.simple_token_prefix, index)?;
        Ok(AuthApplied { token })
    }

    /// The bcrypt hash to check a password against, and the revision it was read at.
    pub(super) fn password_hash(&self, name: &str) -> Result<(Vec<u8>, u64), EtcdError> {
        if !self.is_enabled() {
            return Err(EtcdError::AuthNotEnabled);
        }
        let state = self.state.read();
        let user = state.users.get(name).ok_or(EtcdError::AuthFailed)?;
        if user.options.as_ref().is_some_and(|o| o.no_password) {
            return Err(EtcdError::NoPasswordUser);
        }
        Ok((user.password.clone(), self.revision()))
    }

    /// etcd's IsAdminPermitted: anyone while auth is off, else users with the root role.
    pub fn check_admin(&self, who: &AuthInfo) -> Result<(), EtcdError> {
        if !self.is_enabled() {
            return Ok(());
        }
        if who.user.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        let state = self.state.read();
        let user = state.users.get(&who.user).ok_or(EtcdError::UserNotFound)?;
        if has_root_role(user) {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    /// etcd's requireAuthInfo: with auth on, the caller must be someone.
    pub fn require_user(&self, who: &AuthInfo) -> Result<(), EtcdError> {
        if self.is_enabled() && who.user.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        Ok(())
    }

    /// After a read: a change of the auth state while it ran makes its permission check stale
    /// (etcd's doSerialize).
    pub fn check_current(&self, who: &AuthInfo) -> Result<(), EtcdError> {
        if who.revision != 0 && who.revision != self.revision() && self.is_enabled() {
            return Err(EtcdError::AuthOldRevision);
        }
        Ok(())
    }

    fn check(
        &self,
        who: &AuthInfo,
        key: &[u8],
        range_end: &[u8],
        write: bool,
    ) -> Result<(), EtcdError> {
        if !self.is_enabled() {
            return Ok(());
        }
        if who.revision == 0 {
            return Err(EtcdError::UserEmpty);
        }
        if who.revision < self.revision() {
            return Err(EtcdError::AuthOldRevision);
        }
        let state = self.state.read();
        let Some(user) = state.users.get(&who.user) else {
            return Err(EtcdError::PermissionDenied);
        };
        if has_root_role(user) {
            return Ok(());
        }
        let permitted = state.perms.get(&who.user).is_some_and(|p| {
            if write {
                p.may_write(key, range_end)
            } else {
                p.may_read(key, range_end)
            }
        });
        if permitted {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    pub fn check_range(
        &self,
        who: &AuthInfo,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), EtcdError> {
        self.check(who, key, range_end, false)
    }

    /// Whether `who` may still read a range, by the permissions as they are now: a watch
    /// created under older permissions is checked again when they change, however old the
    /// caller's credentials.
    pub fn may_still_read(&self, who: &AuthInfo, key: &[u8], range_end: &[u8]) -> bool {
        let now = AuthInfo {
            user: who.user.clone(),
            revision: if who.user.is_empty() {
                0
            } else {
                self.revision()
            },
        };
        self.check(&now, key, range_end, false).is_ok()
    }

    pub fn check_delete(&self, who: &AuthInfo, r: &DeleteRangeRequest) -> Result<(), EtcdError> {
        self.check(who, &r.key, &r.range_end, true)?;
        if r.prev_kv {
            self.check(who, &r.key, &r.range_end, false)?;
        }
        Ok(())
    }

    /// A put writes its key, reads it back with `prev_kv`, and may attach its lease only if the
    /// caller may write every key already on that lease (etcd's checkPutAuth).
    pub fn check_put(
        &self,
        who: &AuthInfo,
        r: &PutRequest,
        leases: &dyn LeaseKeys,
    ) -> Result<(), EtcdError> {
        self.check(who, &r.key, &[], true)?;
        if r.lease != 0 {
            self.check_lease_keys_writable(who, r.lease, leases)?;
        }
        if r.prev_kv {
            self.check(who, &r.key, &[], false)?;
        }
        Ok(())
    }

    /// Compares need read permission; every operation, in nested transactions too, is checked
    /// as it would be on its own (etcd's checkTxnPermission, with the 2026 fixes for `prev_kv`
    /// and leases inside transactions).
    pub fn check_txn(
        &self,
        who: &AuthInfo,
        r: &TxnRequest,
        leases: &dyn LeaseKeys,
    ) -> Result<(), EtcdError> {
        if !self.is_enabled() {
            return Ok(());
        }
        for c in &r.compare {
            self.check(who, &c.key, &c.range_end, false)?;
        }
        self.check_ops(who, &r.success, leases)?;
        self.check_ops(who, &r.failure, leases)
    }

    fn check_ops(
        &self,
        who: &AuthInfo,
        ops: &[RequestOp],
        leases: &dyn LeaseKeys,
    ) -> Result<(), EtcdError> {
        for op in ops {
            match &op.request {
                Some(Request::RequestRange(r)) => self.check(who, &r.key, &r.range_end, false)?,
                Some(Request::RequestPut(r)) => self.check_put(who, r, leases)?,
                Some(Request::RequestDeleteRange(r)) => self.check_delete(who, r)?,
                Some(Request::RequestTxn(t)) => self.check_txn(who, t, leases)?,
                None => {}
            }
        }
        Ok(())
    }

    /// Revoking a lease deletes its keys: the caller must be able to write each of them.
    pub fn check_lease_keys_writable(
        &self,
        who: &AuthInfo,
        lease: i64,
        leases: &dyn LeaseKeys,
    ) -> Result<(), EtcdError> {
        if self.check_admin(who).is_ok() {
            return Ok(());
        }
        for key in leases.lease_keys(lease) {
            self.check(who, &key, &[], true)?;
        }
        Ok(())
    }

    /// Lease TimeToLive with keys and LeaseLeases show key names: the caller must be able to
    /// read each.
    pub fn check_keys_readable(&self, who: &AuthInfo, keys: &[Vec<u8>]) -> Result<(), EtcdError> {
        if self.check_admin(who).is_ok() {
            return Ok(());
        }
        for key in keys {
            self.check(who, key, &[], false)?;
        }
        Ok(())
    }

    pub fn user_roles(&self, who: &AuthInfo, name: &str) -> Result<Vec<String>, EtcdError> {
        if let Err(e) = self.check_admin(who) {
            if who.user != name {
                return Err(e);
            }
        }
        let state = self.state.read();
        let user = state.users.get(name).ok_or(EtcdError::UserNotFound)?;
        Ok(user.roles.clone())
    }

    pub fn user_names(&self, who: &AuthInfo) -> Result<Vec<String>, EtcdError> {
        self.check_admin(who)?;
        Ok(self.state.read().users.keys().cloned().collect())
    }

    pub fn role_permissions(
        &self,
        who: &AuthInfo,
        role: &str,
    ) -> Result<Vec<Permission>, EtcdError> {
        // Checked before the read lock is taken: parking_lot's fair RwLock deadlocks on a
        // recursive read while a writer waits.
        let admin = self.check_admin(who);
        let state = self.state.read();
        if let Err(e) = admin {
            let holds = state
                .users
                .get(&who.user)
                .is_some_and(|u| u.roles.iter().any(|r| r == role));
            if !holds {
                return Err(e);
            }
        }
        let found = state.roles.get(role).ok_or(EtcdError::RoleNotFound)?;
        if role == ROOT {
            return Ok(vec![Permission {
                perm_type: Type::Readwrite as i32,
                key: Vec::new(),
                range_end: vec![0],
            }]);
        }
        Ok(found.key_permission.clone())
    }

    pub fn role_names(&self, who: &AuthInfo) -> Result<Vec<String>, EtcdError> {
        self.check_admin(who)?;
        Ok(self.state.read().roles.keys().cloned().collect())
    }

    /// A caller identified by its client certificate (etcd's AuthInfoFromTLS).
    pub fn certificate_user(&self, common_name: &str) -> AuthInfo {
        AuthInfo {
            user: common_name.to_string(),
            revision: self.revision(),
        }
    }
}

/// etcd's selectPassword: the hash the proposer made, base64 as etcd's request carries it.
fn stored_password(hashed: &str) -> Result<Vec<u8>, EtcdError> {
    base64::engine::general_purpose::STANDARD
        .decode(hashed)
        .map_err(|_| EtcdError::NoPasswordUser)
}

fn user_add(state: &mut State, r: AuthUserAddRequest) -> Result<bool, EtcdError> {
    if r.name.is_empty() {
        return Err(EtcdError::UserEmpty);
    }
    if state.users.contains_key(&r.name) {
        return Err(EtcdError::UserAlreadyExists);
    }
    let options = r.options.unwrap_or(UserAddOptions { no_password: false });
    let password = if options.no_password {
        Vec::new()
    } else {
        stored_password(&r.hashed_password)?
    };
    let user = User {
        name: r.name.clone().into_bytes(),
        password,
        roles: Vec::new(),
        options: Some(options),
    };
    state.users.insert(r.name, user);
    Ok(true)
}

/// etcd keeps a role's permissions sorted by key; granting one that exists (same key and end)
/// changes its type.
fn grant(role: &mut Role, perm: Permission) {
    let perms = &mut role.key_permission;
    let at = perms.partition_point(|p| p.key < perm.key);
    if let Some(existing) = perms
        .get_mut(at)
        .filter(|p| p.key == perm.key && p.range_end == perm.range_end)
    {
        existing.perm_type = perm.perm_type;
        return;
    }
    perms.push(perm);
    perms.sort_by(|a, b| a.key.cmp(&b.key));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn store() -> (tempfile::TempDir, AuthStore) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let tokens = TokenConfig::Simple {
            ttl: Duration::from_secs(300),
        };
        let store = AuthStore::load(&engine, tokens).unwrap();
        (dir, store)
    }

    fn apply(store: &AuthStore, who: &AuthInfo, change: Change) -> Result<bool, EtcdError> {
        let change = AuthChange {
            change: Some(change),
        };
        store
            .apply(change, who, 1)
            .map(|(_, stored)| stored.is_some())
    }

    fn user(name: &str) -> Change {
        Change::UserAdd(AuthUserAddRequest {
            name: name.into(),
            hashed_password: base64::engine::general_purpose::STANDARD.encode("hash"),
            ..Default::default()
        })
    }

    fn grant(user: &str, role: &str) -> Change {
        Change::UserGrantRole(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
    }

    #[test]
    fn auth_needs_a_root_user_with_the_root_role_which_it_then_keeps() {
        let (_dir, s) = store();
        let nobody = AuthInfo::default();
        assert_eq!(
            s.revision(),
            1,
            "a new store starts at revision 1, as etcd's"
        );
        let enable = || Change::Enable(AuthEnableRequest {});
        assert_eq!(
            apply(&s, &nobody, enable()),
            Err(EtcdError::RootUserNotExist)
        );
        apply(&s, &nobody, user("root")).unwrap();
        assert_eq!(
            apply(&s, &nobody, enable()),
            Err(EtcdError::RootRoleNotExist)
        );
        // The root role needs no RoleAdd to be granted.
        apply(&s, &nobody, grant("root", "root")).unwrap();
        let before = s.revision();
        assert_eq!(apply(&s, &nobody, enable()), Ok(true));
        assert_eq!(s.revision(), before, "enabling keeps the revision");
        assert!(s.is_enabled());
        // Now only root may change anything, and root keeps its role.
        assert_eq!(apply(&s, &nobody, user("x")), Err(EtcdError::UserEmpty));
        let root = s.certificate_user("root");
        let revoke = Change::UserRevokeRole(AuthUserRevokeRoleRequest {
            name: "root".into(),
            role: "root".into(),
        });
        assert_eq!(apply(&s, &root, revoke), Err(EtcdError::InvalidAuthMgmt));
        let delete = Change::UserDelete(AuthUserDeleteRequest {
            name: "root".into(),
        });
        assert_eq!(apply(&s, &root, delete), Err(EtcdError::InvalidAuthMgmt));
        apply(&s, &root, user("alice")).unwrap();
        let alice = s.certificate_user("alice");
        assert_eq!(
            apply(&s, &alice, user("y")),
            Err(EtcdError::PermissionDenied)
        );
        // Granting a role twice changes nothing, not even the revision.
        apply(&s, &root, grant("alice", "root")).unwrap();
        let before = s.revision();
        assert_eq!(apply(&s, &root, grant("alice", "root")), Ok(false));
        assert_eq!(s.revision(), before);
        let disable = Change::Disable(AuthDisableRequest {});
        assert_eq!(apply(&s, &root, disable), Ok(true));
        assert_eq!(s.revision(), before + 1, "disabling moves the revision");
    }

    #[test]
    fn a_stale_revision_or_an_unknown_user_is_refused_before_any_permission() {
        let (_dir, s) = store();
        let nobody = AuthInfo::default();
        apply(&s, &nobody, user("root")).unwrap();
        apply(&s, &nobody, grant("root", "root")).unwrap();
        apply(&s, &nobody, Change::Enable(AuthEnableRequest {})).unwrap();
        let root = s.certificate_user("root");
        assert_eq!(s.check_range(&root, b"k", b""), Ok(()));
        apply(&s, &root, user("bob")).unwrap();
        assert_eq!(
            s.check_range(&root, b"k", b""),
            Err(EtcdError::AuthOldRevision)
        );
        assert_eq!(s.check_range(&nobody, b"k", b""), Err(EtcdError::UserEmpty));
        let ghost = s.certificate_user("ghost");
        assert_eq!(
            s.check_range(&ghost, b"k", b""),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(s.check_admin(&ghost), Err(EtcdError::UserNotFound));
    }

    #[test]
    fn the_state_survives_a_reload_from_its_stored_record() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let tokens = TokenConfig::Simple {
            ttl: Duration::from_secs(300),
        };
        let s = AuthStore::load(&engine, tokens.clone()).unwrap();
        let nobody = AuthInfo::default();
        let (_, stored) = s
            .apply(
                AuthChange {
                    change: Some(user("root")),
                },
                &nobody,
                1,
            )
            .unwrap();
        let mut batch = engine.batch();
        batch.put(Cf::Meta, AUTH_META_KEY, &stored.unwrap());
        engine.write(batch, true).unwrap();
        let again = AuthStore::load(&engine, tokens).unwrap();
        assert_eq!(again.revision(), 2);
        assert_eq!(again.user_names(&nobody).unwrap(), ["root"]);
    }
}
