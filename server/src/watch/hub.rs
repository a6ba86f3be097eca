use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use oxcd_proto::etcdserverpb::{ResponseHeader, WatchResponse};
use oxcd_proto::mvccpb::{event::EventType, Event, KeyValue};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{mpsc, Notify};

use crate::error::EtcdError;
use crate::metrics::{metrics, WatchCounts};
use crate::mvcc::{Change, KeyRange, MvccStore};
use crate::storage::off_runtime;

/// Responses queued per stream before its watchers fall back to catching up from storage.
const STREAM_QUEUE: usize = 128;
/// Events read from storage per catch-up step.
const CATCH_UP_EVENTS: usize = 1000;

/// What a client asked for when creating a watch.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub range: KeyRange,
    /// 0 = from the next revision; a negative start is refused (as compacted history).
    pub start_revision: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
    pub fragment: bool,
    /// 0 = server-assigned.
    pub watch_id: i64,
}

impl WatchOptions {
    /// Whether the NOPUT / NODELETE filters let an event of this kind through.
    fn passes(&self, deleted: bool) -> bool {
        if deleted {
            !self.no_delete
        } else {
            !self.no_put
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateId,
    #[error("mvcc: watcher range is empty")]
    EmptyRange,
}

struct Watcher {
    opts: WatchOptions,
    /// The first revision this watcher has not been given yet.
    next_rev: i64,
    synced: bool,
    /// Whether anything was sent since the last periodic progress notification.
    active: bool,
}

impl Watcher {
    fn wants(&self, kv: &KeyValue, deleted: bool) -> bool {
        kv.mod_revision >= self.next_rev
            && self.opts.passes(deleted)
            && self.opts.range.contains(&kv.key)
    }
}

struct Stream {
    queue: mpsc::Sender<WatchResponse>,
    wake: Arc<Notify>,
    next_id: i64,
    /// Watchers of this stream.
    watching: usize,
    unsynced: HashSet<i64>,
}

struct State {
    /// Every event up to this revision has been offered to every synced watcher.
    published: i64,
    watchers: HashMap<(u64, i64), Watcher>,
    streams: HashMap<u64, Stream>,
    next_stream: u64,
}

pub struct WatchHub {
    store: Arc<MvccStore>,
    state: Mutex<State>,
    prev_kv_watchers: AtomicUsize,
    max_response_bytes: usize,
}

/// A client stream registered with the hub; dropping it removes its watchers.
pub struct StreamHandle {
    hub: Arc<WatchHub>,
    id: u64,
}

impl WatchHub {
    pub fn new(
        store: Arc<MvccStore>,
        max_response_bytes: usize,
        progress_interval: Duration,
    ) -> Arc<WatchHub> {
        let published = store.current_revision();
        let hub = Arc::new(WatchHub {
            store,
            state: Mutex::new(State {
                published,
                watchers: HashMap::new(),
                streams: HashMap::new(),
                next_stream: 0,
            }),
            prev_kv_watchers: AtomicUsize::new(0),
            max_response_bytes,
        });
        tokio::spawn(progress_ticker(Arc::downgrade(&hub), progress_interval));
        hub
    }

    /// Whether applied changes should carry previous values.
    pub fn wants_prev_kv(&self) -> bool {
        self.prev_kv_watchers.load(Ordering::Relaxed) > 0
    }

    /// The revision part of a header; the API layer adds the member's fields.
    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision,
            ..Default::default()
        })
    }

    /// Offers one applied batch to the synced watchers. Never blocks.
    pub fn publish(&self, changes: &[Change], revision: i64) {
        let mut st = self.state.lock();
        if !changes.is_empty() {
            let State {
                watchers, streams, ..
            } = &mut *st;
            for ((stream_id, watch_id), w) in watchers.iter_mut().filter(|(_, w)| w.synced) {
                let events: Vec<Event> = changes
                    .iter()
                    .filter(|c| w.wants(&c.kv, c.deleted))
                    .map(|c| {
                        let prev = if w.opts.prev_kv {
                            self.previous(c)
                        } else {
                            None
                        };
                        event(c.kv.clone(), c.deleted, prev)
                    })
                    .collect();
                let Some(first) = events
                    .first()
                    .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
                else {
                    continue;
                };
                let Some(stream) = streams.get_mut(stream_id) else {
                    continue;
                };
                let resp = WatchResponse {
                    header: self.header(revision),
                    watch_id: *watch_id,
                    events,
                    ..Default::default()
                };
                // Oversized batches for fragmenting watchers go through catch-up, which can
                // send the fragments one after another.
                let must_fragment = w.opts.fragment && resp.encoded_len() > self.max_response_bytes;
                let sent = resp.events.len() as u64;
                if !must_fragment && stream.queue.try_send(resp).is_ok() {
                    metrics().mvcc.events.inc_by(sent);
                    w.next_rev = revision + 1;
                    w.active = true;
                } else {
                    w.next_rev = first;
                    w.synced = false;
                    stream.unsynced.insert(*watch_id);
                    stream.wake.notify_one();
                }
            }
        }
        st.published = st.published.max(revision);
    }

    /// The store was replaced by a snapshot up to `revision`: the changes in between were never
    /// published, so every synced watcher catches up from history (or is canceled as
    /// compacted), as etcd's watchers do after a snapshot restore.
    pub fn restored(&self, revision: i64) {
        let mut st = self.state.lock();
        let State {
            watchers, streams, ..
        } = &mut *st;
        for ((stream_id, watch_id), w) in watchers.iter_mut().filter(|(_, w)| w.synced) {
            w.synced = false;
            if let Some(stream) = streams.get_mut(stream_id) {
                stream.unsynced.insert(*watch_id);
                stream.wake.notify_one();
            }
        }
        st.published = st.published.max(revision);
    }

    /// A change's previous value. Apply records it when prev_kv watchers existed as the batch
    /// began; a watcher that arrived since gets it looked up. A put that created its key has
    /// none.
    fn previous(&self, c: &Change) -> Option<KeyValue> {
        if c.prev.is_some() || (!c.deleted && c.kv.version == 1) {
            return c.prev.clone();
        }
        self.store.value_before(&c.kv.key, c.kv.mod_revision)
    }

    /// Streams, watchers, catching-up watchers and queued responses, for the metrics.
    pub fn counts(&self) -> WatchCounts {
        let st = self.state.lock();
        let mut counts = WatchCounts {
            streams: st.streams.len() as u64,
            watchers: st.watchers.len() as u64,
            ..Default::default()
        };
        for stream in st.streams.values() {
            counts.unsynced += stream.unsynced.len() as u64;
            counts.pending += (stream.queue.max_capacity() - stream.queue.capacity()) as u64;
        }
        counts
    }

    /// Registers a client stream whose responses go to `queue`.
    pub fn open_stream(self: &Arc<Self>) -> (StreamHandle, mpsc::Receiver<WatchResponse>) {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let wake = Arc::new(Notify::new());
        let id = {
            let mut st = self.state.lock();
            let id = st.next_stream;
            st.next_stream += 1;
            st.streams.insert(
                id,
                Stream {
                    queue: tx,
                    wake: wake.clone(),
                    next_id: 0,
                    watching: 0,
                    unsynced: HashSet::new(),
                },
            );
            id
        };
        tokio::spawn(catch_up(Arc::downgrade(self), id, wake));
        (
            StreamHandle {
                hub: self.clone(),
                id,
            },
            rx,
        )
    }
}

fn event(kv: KeyValue, deleted: bool, prev_kv: Option<KeyValue>) -> Event {
    let kind = if deleted {
        EventType::Delete
    } else {
        EventType::Put
    };
    Event {
        r#type: kind as i32,
        kv: Some(kv),
        prev_kv,
    }
}

/// Removes watchers of one stream from outside its request loop (the response side), without
/// a `canceled` reply of its own.
#[derive(Clone)]
pub struct WatchRemover {
    hub: Arc<WatchHub>,
    stream: u64,
}

impl WatchRemover {
    pub fn remove(&self, watch_id: i64) {
        self.hub.remove(self.stream, watch_id);
    }
}

impl StreamHandle {
    pub fn remover(&self) -> WatchRemover {
        WatchRemover {
            hub: self.hub.clone(),
            stream: self.id,
        }
    }

    /// Refuses a watch request with `created` and `canceled` and no watch id, as etcd refuses
    /// one whose caller may not read the range.
    pub async fn refuse(&self, cancel_reason: String) -> Result<(), EtcdError> {
        let queue = self.queue().ok_or(EtcdError::Stopped)?;
        let published = self.hub.state.lock().published;
        let resp = WatchResponse {
            header: self.hub.header(published),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason,
            ..Default::default()
        };
        queue.send(resp).await.map_err(|_| EtcdError::Stopped)
    }

    fn queue(&self) -> Option<mpsc::Sender<WatchResponse>> {
        self.hub
            .state
            .lock()
            .streams
            .get(&self.id)
            .map(|s| s.queue.clone())
    }

    /// Creates a watch. The `created` reply is queued before any of its events.
    pub async fn create(&self, opts: WatchOptions) -> Result<(), EtcdError> {
        let Some(queue) = self.queue() else {
            return Err(EtcdError::Stopped);
        };
        let permit = queue.reserve().await.map_err(|_| EtcdError::Stopped)?;
        let hub = &self.hub;
        let mut guard = hub.state.lock();
        let State {
            published,
            watchers,
            streams,
            ..
        } = &mut *guard;
        let published = *published;
        let Some(stream) = streams.get_mut(&self.id) else {
            return Err(EtcdError::Stopped);
        };

        let refuse = |reason: CreateError| WatchResponse {
            header: hub.header(published),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        };
        if matches!(&opts.range, KeyRange::Span { start, end: Some(end) } if end <= start) {
            permit.send(refuse(CreateError::EmptyRange));
            return Ok(());
        }
        // etcd 3.6+: a negative start is refused as compacted history, at once, and takes no
        // watch id (3.4 took it as "now" or canceled the watch later).
        if opts.start_revision < 0 {
            permit.send(WatchResponse {
                cancel_reason: EtcdError::Compacted.to_string(),
                ..refuse(CreateError::EmptyRange)
            });
            return Ok(());
        }
        let id = if opts.watch_id != 0 {
            opts.watch_id
        } else {
            while watchers.contains_key(&(self.id, stream.next_id)) {
                stream.next_id += 1;
            }
            stream.next_id
        };
        if watchers.contains_key(&(self.id, id)) {
            permit.send(refuse(CreateError::DuplicateId));
            return Ok(());
        }
        if opts.watch_id == 0 {
            stream.next_id = id + 1;
        }
        let next_rev = if opts.start_revision == 0 {
            published + 1
        } else {
            opts.start_revision
        };
        let synced = next_rev > published;
        if !synced {
            stream.unsynced.insert(id);
            stream.wake.notify_one();
        }
        if opts.prev_kv {
            hub.prev_kv_watchers.fetch_add(1, Ordering::Relaxed);
        }
        permit.send(WatchResponse {
            header: hub.header(published),
            watch_id: id,
            created: true,
            ..Default::default()
        });
        stream.watching += 1;
        watchers.insert(
            (self.id, id),
            Watcher {
                opts,
                next_rev,
                synced,
                active: false,
            },
        );
        Ok(())
    }

    /// Cancels a watch; nothing of it is queued after the `canceled` reply.
    pub async fn cancel(&self, watch_id: i64) {
        let removed = self.hub.remove(self.id, watch_id);
        if removed {
            if let Some(queue) = self.queue() {
                let resp = WatchResponse {
                    header: self.hub.header(self.hub.state.lock().published),
                    watch_id,
                    canceled: true,
                    ..Default::default()
                };
                let _ = queue.send(resp).await;
            }
        }
    }

    /// Answers a progress request (watch id -1) only when the stream has watchers and every one
    /// of them has been given everything up to the published revision, so the answer never runs
    /// ahead; otherwise the request is dropped, as etcd 3.7 drops it (3.4 answered even then).
    pub fn request_progress(&self) {
        let st = self.hub.state.lock();
        let Some(stream) = st.streams.get(&self.id) else {
            return;
        };
        if stream.watching > 0 && stream.unsynced.is_empty() {
            let resp = WatchResponse {
                header: self.hub.header(st.published),
                watch_id: -1,
                ..Default::default()
            };
            let _ = stream.queue.try_send(resp);
        }
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        let mut st = self.hub.state.lock();
        st.streams.remove(&self.id);
        let ids: Vec<(u64, i64)> = st
            .watchers
            .keys()
            .filter(|(s, _)| *s == self.id)
            .copied()
            .collect();
        drop(st);
        for (s, w) in ids {
            self.hub.remove(s, w);
        }
    }
}

impl WatchHub {
    fn remove(&self, stream: u64, watch_id: i64) -> bool {
        let mut st = self.state.lock();
        let Some(w) = st.watchers.remove(&(stream, watch_id)) else {
            return false;
        };
        if w.opts.prev_kv {
            self.prev_kv_watchers.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(s) = st.streams.get_mut(&stream) {
            s.unsynced.remove(&watch_id);
            s.watching -= 1;
        }
        true
    }

    /// One catch-up step for an unsynced watcher: replays stored history up to the published
    /// revision, or cancels the watch when that history is compacted. Returns false once the
    /// watcher is synced or gone.
    async fn catch_up_step(&self, stream_id: u64, watch_id: i64) -> bool {
        let (opts, from, target, queue) = {
            let st = self.state.lock();
            let (Some(w), Some(s)) = (
                st.watchers.get(&(stream_id, watch_id)),
                st.streams.get(&stream_id),
            ) else {
                return false;
            };
            (w.opts.clone(), w.next_rev, st.published, s.queue.clone())
        };
        if from <= target {
            // Reading history can take long (a narrow watch scans every revision in between),
            // so it runs off the async workers.
            let store = self.store.clone();
            let want = opts.clone();
            let history = off_runtime(EtcdError::Stopped, move || {
                let events = store.history(&want.range, from, target, CATCH_UP_EVENTS)?;
                let reached = events.last().map_or(target, |e| e.kv.mod_revision);
                let complete = events.len() < CATCH_UP_EVENTS;
                let wanted: Vec<Event> = events
                    .into_iter()
                    .filter(|e| want.passes(e.deleted))
                    .map(|e| {
                        let prev = if want.prev_kv {
                            store.value_before(&e.kv.key, e.kv.mod_revision)
                        } else {
                            None
                        };
                        event(e.kv, e.deleted, prev)
                    })
                    .collect();
                Ok((reached, complete, wanted))
            })
            .await;
            let (reached, complete, wanted) = match history {
                Ok(found) => found,
                Err(_) => {
                    // etcd: a watcher behind the compaction point is canceled with the point.
                    let compacted = self.store.compact_revision();
                    self.remove(stream_id, watch_id);
                    let resp = WatchResponse {
                        header: self.header(target),
                        watch_id,
                        canceled: true,
                        compact_revision: compacted,
                        ..Default::default()
                    };
                    let _ = queue.send(resp).await;
                    return false;
                }
            };
            let next = if complete { target + 1 } else { reached + 1 };
            for resp in self.responses(watch_id, target, wanted, opts.fragment) {
                let sent = resp.events.len() as u64;
                if queue.send(resp).await.is_err() {
                    return false;
                }
                metrics().mvcc.events.inc_by(sent);
            }
            let mut st = self.state.lock();
            let Some(w) = st.watchers.get_mut(&(stream_id, watch_id)) else {
                return false;
            };
            w.next_rev = next;
            w.active = true;
        }
        let mut st = self.state.lock();
        let published = st.published;
        let Some(w) = st.watchers.get_mut(&(stream_id, watch_id)) else {
            return false;
        };
        if w.next_rev > published {
            w.synced = true;
            if let Some(s) = st.streams.get_mut(&stream_id) {
                s.unsynced.remove(&watch_id);
            }
            return false;
        }
        true
    }

    /// Responses for a batch of events: one, or fragments when the watcher allows them and
    /// the batch exceeds the request size limit. A revision is never split across fragments
    /// the client cannot reassemble.
    fn responses(
        &self,
        watch_id: i64,
        revision: i64,
        events: Vec<Event>,
        fragment: bool,
    ) -> Vec<WatchResponse> {
        if events.is_empty() {
            return Vec::new();
        }
        let whole = WatchResponse {
            header: self.header(revision),
            watch_id,
            events,
            ..Default::default()
        };
        if !fragment || whole.encoded_len() <= self.max_response_bytes {
            return vec![whole];
        }
        let mut parts = Vec::new();
        let mut current = Vec::new();
        let mut size = 0;
        for e in whole.events {
            let len = e.encoded_len();
            if !current.is_empty() && size + len > self.max_response_bytes {
                parts.push(std::mem::take(&mut current));
                size = 0;
            }
            size += len;
            current.push(e);
        }
        parts.push(current);
        let n = parts.len();
        parts
            .into_iter()
            .enumerate()
            .map(|(i, events)| WatchResponse {
                header: self.header(revision),
                watch_id,
                events,
                fragment: i + 1 < n,
                ..Default::default()
            })
            .collect()
    }

    /// Sends periodic progress notifications to idle, synced watchers that asked for them.
    fn progress_tick(&self) {
        let mut guard = self.state.lock();
        let State {
            published,
            watchers,
            streams,
            ..
        } = &mut *guard;
        for ((stream_id, watch_id), w) in watchers.iter_mut() {
            let idle = !std::mem::replace(&mut w.active, false);
            if !(w.synced && w.opts.progress_notify && idle) {
                continue;
            }
            if let Some(s) = streams.get(stream_id) {
                let resp = WatchResponse {
                    header: self.header(*published),
                    watch_id: *watch_id,
                    ..Default::default()
                };
                let _ = s.queue.try_send(resp);
            }
        }
    }
}

/// Per stream: replays history for its unsynced watchers whenever woken.
async fn catch_up(hub: std::sync::Weak<WatchHub>, stream_id: u64, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        loop {
            let Some(hub) = hub.upgrade() else { return };
            let pending: Vec<i64> = {
                let st = hub.state.lock();
                match st.streams.get(&stream_id) {
                    Some(s) => s.unsynced.iter().copied().collect(),
                    None => return,
                }
            };
            if pending.is_empty() {
                break;
            }
            for watch_id in pending {
                while hub.catch_up_step(stream_id, watch_id).await {}
            }
        }
    }
}

async fn progress_ticker(hub: std::sync::Weak<WatchHub>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match hub.upgrade() {
            Some(hub) => hub.progress_tick(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Engine;

    fn watch_all(prev_kv: bool) -> WatchOptions {
        WatchOptions {
            range: KeyRange::new(&[0], &[0]),
            start_revision: 0,
            prev_kv,
            no_put: false,
            no_delete: false,
            progress_notify: false,
            fragment: false,
            watch_id: 0,
        }
    }

    /// A prev_kv watcher that arrives after a batch began applying (so apply did not record
    /// previous values) still gets them.
    #[tokio::test]
    async fn prev_kv_reaches_a_watcher_newer_than_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = MvccStore::open(Engine::open(dir.path()).unwrap()).unwrap();
        let mut w = store.writer(false);
        w.txn().put(b"k", b"old".to_vec(), 0);
        let first = w.commit().unwrap();
        let hub = WatchHub::new(store.clone(), 1 << 20, Duration::from_secs(600));
        hub.publish(&first, store.current_revision());

        let mut w = store.writer(hub.wants_prev_kv());
        w.txn().put(b"k", b"new".to_vec(), 0);
        let (stream, mut responses) = hub.open_stream();
        stream.create(watch_all(true)).await.unwrap();
        let changes = w.commit().unwrap();
        hub.publish(&changes, store.current_revision());

        let created = responses.recv().await.unwrap();
        assert!(created.created);
        let events = responses.recv().await.unwrap().events;
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0].prev_kv.as_ref().map(|kv| kv.value.as_slice()),
            Some(&b"old"[..])
        );
    }
}
