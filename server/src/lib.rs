//! oxcd: an etcd-compatible, Raft-replicated key-value store.
//!
//! It serves etcd's v3 gRPC API (and its JSON gateway and HTTP endpoints), so etcd's clients
//! and tools use it in place of etcd, and it takes etcd's command-line flags.
//!
//! The crate is both the `oxcd` binary and a library. As a library it runs a member
//! in-process: build a [`Config`] with [`Config::builder`] (etcd's flags, set in code), start
//! it with [`Node::start`], talk to it with any etcd client over the addresses
//! [`Node::client_addrs`] gives, and stop it with [`Node::shutdown`], which releases the data
//! dir.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let dir = std::env::temp_dir().join("oxcd-example");
//! let config = oxcd::Config::builder()
//!     .data_dir(&dir)
//!     .listen_client_urls(["http://127.0.0.1:0"])
//!     .listen_peer_urls(["http://127.0.0.1:0"])
//!     .build()?;
//! let member = oxcd::Node::start(&config).await?;
//! let endpoint = member.client_addrs()[0].to_string();
//! // ... etcd_client::Client::connect([endpoint], None).await? ...
//! # let _ = endpoint;
//! assert!(member.shutdown().await, "the data dir was released");
//! # Ok(())
//! # }
//! ```
//!
//! `server/examples/embedded.rs` does this with the `etcd-client` crate
//! (`cargo run -p oxcd --example embedded`). Logging is the host program's: oxcd logs through
//! [`tracing`], and [`logging::init`] installs the logger the `oxcd` binary uses.

pub mod alarm;
pub mod api;
pub mod apply;
pub mod auth;
mod authority;
pub mod auto_compaction;
pub mod cluster;
pub mod concurrency;
pub mod config;
mod corruption;
pub mod downgrade;
pub mod embed;
pub mod error;
pub mod features;
pub mod health;
pub mod http;
pub mod kv;
pub mod lease;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod raft;
pub mod replication;
pub mod snapshot;
pub mod storage;
pub mod tls;
pub mod watch;

pub use config::Config;
// For [`jemalloc_allocator!`] in the programs that use it.
#[doc(hidden)]
pub use tikv_jemallocator;

/// [`jemalloc_allocator!`]'s options, NUL-terminated for C.
#[doc(hidden)]
pub static JEMALLOC_OPTIONS: [u8; 60] =
    *b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Makes jemalloc, with the options the `oxcd` binary runs with, the allocator of the program
/// this is written in: `oxcd`'s own, and any program that embeds a member. glibc's malloc keeps
/// the memory of watch fan-out's many short-lived buffers across threads; jemalloc's background
/// thread returns freed pages to the OS within about a second (measured: 429 MiB kept after a
/// burst without it, 33 MiB with it).
#[macro_export]
macro_rules! jemalloc_allocator {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::tikv_jemallocator::Jemalloc = $crate::tikv_jemallocator::Jemalloc;

        // jemalloc reads its options from `malloc_conf` where it is the process's malloc
        // (Linux with glibc: RocksDB links it so) and from `_rjem_malloc_conf` where it is
        // prefixed (elsewhere); the name it does not read is an unused symbol.
        // Each is C's `const char *`: a thin pointer to the NUL-terminated options.
        #[allow(non_upper_case_globals)]
        #[export_name = "malloc_conf"]
        pub static malloc_conf: Option<&u8> = Some(&$crate::JEMALLOC_OPTIONS[0]);
        #[allow(non_upper_case_globals)]
        #[export_name = "_rjem_malloc_conf"]
        pub static _rjem_malloc_conf: Option<&u8> = Some(&$crate::JEMALLOC_OPTIONS[0]);
    };
}

/// What jemalloc holds, for `oxcd_memory_bytes`: the bytes of live allocations, the pages it
/// has resident, and the pages it keeps mapped for reuse, RocksDB's included (it links jemalloc
/// as the process's malloc where it can). Empty where jemalloc serves nothing.
pub fn allocator_memory() -> Vec<(&'static str, u64)> {
    use tikv_jemalloc_ctl::{epoch, stats};
    // Statistics are a snapshot taken when the epoch advances.
    if epoch::advance().is_err() {
        return Vec::new();
    }
    let (Ok(allocated), Ok(resident), Ok(retained)) = (
        stats::allocated::read(),
        stats::resident::read(),
        stats::retained::read(),
    ) else {
        return Vec::new();
    };
    if allocated == 0 {
        return Vec::new();
    }
    vec![
        ("allocator_allocated", allocated as u64),
        ("allocator_resident", resident as u64),
        ("allocator_retained", retained as u64),
    ]
}
pub use embed::ConfigBuilder;
pub use node::Node;

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

/// A failpoint whose `return(ms)` action makes an asynchronous step wait that long, to widen a
/// race window in tests without blocking a runtime thread (the `sleep` action would).
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
pub fn failpoint_pause(name: &str) -> Option<std::time::Duration> {
    fail::fail_point!(name, |ms| ms
        .and_then(|ms| ms.parse().ok())
        .map(std::time::Duration::from_millis));
    None
}

/// The etcd version oxcd reports. kube-apiserver enables watch-progress-based consistent reads
/// only for etcd >= 3.5.13, and oxcd implements the 3.6 API.
pub const ETCD_VERSION: &str = "3.6.0";
