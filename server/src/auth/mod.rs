//! etcd's authentication and role-based access control.
//!
//! `store` holds users, roles and the auth revision (replicated: every change is a Raft
//! command applied by [`AuthStore::apply`]) and answers the permission checks, `perms` merges a
//! user's role permissions into key ranges, `token` issues and resolves simple and JWT tokens,
//! and `service` is the Auth service's behaviour plus the caller identification every other
//! service uses.
//!
//! Checks happen where etcd makes them: a write's permissions when it is applied (with the
//! identity and auth revision the proposing member resolved, so a change of permissions that
//! commits first is honoured), a read's before it runs on the serving member.

mod es512;
mod perms;
mod service;
mod store;
mod token;

pub use service::AuthService;
pub use store::{
    AuthApplied, AuthChange, AuthInfo, AuthRecord, AuthStore, LeaseKeys, AUTH_META_KEY,
};
pub use token::{TokenConfig, DEFAULT_BCRYPT_COST};
