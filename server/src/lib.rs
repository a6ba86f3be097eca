//! oxcd: an etcd-compatible, Raft-replicated key-value store.
//!
//! The crate is both the `oxcd` binary and a library: [`node::Node::start`] runs a member
//! in-process.

pub mod alarm;
pub mod api;
pub mod auth;
mod authority;
pub mod auto_compaction;
pub mod cluster;
pub mod concurrency;
pub mod config;
mod corruption;
pub mod downgrade;
pub mod error;
pub mod features;
pub mod health;
pub mod http;
pub mod kv;
pub mod lease;
pub mod listen;
pub mod logging;
pub mod mvcc;
pub mod node;
pub mod raft;
pub mod snapshot;
pub mod storage;
pub mod tls;
pub mod watch;

/// Crash tests' failpoints, from the FAILPOINTS environment variable (etcd's gofail reads
/// GOFAIL_FAILPOINTS the same way), kept while the returned value lives. Only a build with the
/// `failpoints` feature has them; it also makes a panic (a failpoint's `panic` action) abort the
/// process, as a crash would, rather than unwind. Elsewhere this does nothing.
pub fn failpoints_from_env() -> Option<fail::FailScenario<'static>> {
    #[cfg(feature = "failpoints")]
    {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            report(info);
            std::process::abort();
        }));
        Some(fail::FailScenario::setup())
    }
    #[cfg(not(feature = "failpoints"))]
    None
}

/// The etcd version oxcd reports. kube-apiserver enables watch-progress-based consistent reads
/// only for etcd >= 3.5.13, and oxcd implements the 3.6 API.
pub const ETCD_VERSION: &str = "3.6.0";
