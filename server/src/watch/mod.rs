//! Watches: etcd's guarantees (ordered, unique, atomic per revision, reliable, resumable) with
//! bounded memory.
//!
//! Every applied batch is published to the hub. A *synced* watcher gets its events pushed into
//! its stream's bounded queue at once. When a queue is full the watcher becomes *unsynced*: it
//! keeps only the revision it must resume from, and its stream's catch-up task replays the
//! history from storage (with backpressure) until it reaches the published revision, then
//! rejoins the synced set under the hub lock, so no event is lost or duplicated and a slow
//! consumer never stalls the write path or other watchers.

mod hub;

pub use hub::{CreateError, StreamHandle, WatchHub, WatchOptions, WatchRemover};
