//! oxcd: an etcd-compatible, Raft-replicated key-value store.
//!
//! The crate is both the `oxcd` binary and a library: [`node::Node::start`] runs a member
//! in-process.

pub mod alarm;
pub mod api;
mod authority;
pub mod cluster;
pub mod concurrency;
pub mod config;
pub mod error;
pub mod health;
pub mod kv;
pub mod lease;
pub mod mvcc;
pub mod node;
pub mod raft;
pub mod snapshot;
pub mod storage;
pub mod tls;
pub mod watch;

/// The etcd version oxcd reports. kube-apiserver enables watch-progress-based consistent reads
/// only for etcd >= 3.5.13, and oxcd implements the 3.6 API.
pub const ETCD_VERSION: &str = "3.6.0";
