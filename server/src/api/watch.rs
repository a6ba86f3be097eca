use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use oxcd_proto::etcdserverpb::{
    watch_create_request::FilterType, watch_request::RequestUnion, watch_server::Watch,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use parking_lot::Mutex;
use tokio_stream::StreamExt;
use tonic::codegen::BoxStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::{Credentials, HeaderFiller, LeaderMonitor};
use crate::auth::AuthService;
use crate::error::EtcdError;
use crate::mvcc::KeyRange;
use crate::watch::{WatchHub, WatchOptions};

pub struct WatchApi {
    pub hub: Arc<WatchHub>,
    pub auth: Arc<AuthService>,
    pub header: Arc<HeaderFiller>,
    pub leader: LeaderMonitor,
}

fn options(c: WatchCreateRequest) -> WatchOptions {
    let has = |f: FilterType| c.filters.contains(&(f as i32));
    WatchOptions {
        range: KeyRange::new(&c.key, &c.range_end),
        start_revision: c.start_revision,
        prev_kv: c.prev_kv,
        no_put: has(FilterType::Noput),
        no_delete: has(FilterType::Nodelete),
        progress_notify: c.progress_notify,
        fragment: c.fragment,
        watch_id: c.watch_id,
    }
}

/// etcd puts the gRPC error's text (`rpc error: code = … desc = …`) in a refused watch's
/// cancel reason.
fn cancel_reason(e: EtcdError) -> String {
    let code = match e.code() {
        Code::Unauthenticated => "Unauthenticated",
        Code::InvalidArgument => "InvalidArgument",
        _ => "PermissionDenied",
    };
    let e = match e.code() {
        Code::Unauthenticated | Code::InvalidArgument => e,
        _ => EtcdError::PermissionDenied,
    };
    format!("rpc error: code = {code} desc = {e}")
}

/// The ranges a stream's watches were permitted to read, checked again on their events
/// whenever the auth state has changed since the last check.
#[derive(Default)]
struct Permitted {
    /// The range of each create request, in order, until its `created` reply names its id
    /// (None for one refused before it reached the hub).
    pending: VecDeque<Option<(Vec<u8>, Vec<u8>)>>,
    ranges: HashMap<i64, (Vec<u8>, Vec<u8>)>,
    checked_at: u64,
}

#[tonic::async_trait]
impl Watch for WatchApi {
    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<BoxStream<WatchResponse>>, Status> {
        let metadata = req.metadata().clone();
        let credentials = Credentials::of(&req);
        let mut requests = req.into_inner();
        let (stream, responses) = self.hub.open_stream();
        let remover = stream.remover();
        let permitted = Arc::new(Mutex::new(Permitted::default()));
        let (auth, creds, perms) = (self.auth.clone(), credentials.clone(), permitted.clone());
        tokio::spawn(async move {
            // The stream (and its watchers) lives as long as the client keeps sending.
            while let Some(Ok(req)) = requests.next().await {
                let open = match req.request_union {
                    Some(RequestUnion::CreateRequest(mut c)) => {
                        // etcd checks the range as requested (a missing key is "\0"): the 2026
                        // advisory was a range end of "\0" checked as a single key.
                        if c.key.is_empty() {
                            c.key = vec![0];
                        }
                        let allowed = match creds.resolve(&auth).await {
                            Ok(who) => auth.store().check_range(&who, &c.key, &c.range_end),
                            Err(e) => Err(e),
                        };
                        match allowed {
                            Ok(()) => {
                                let range = (c.key.clone(), c.range_end.clone());
                                perms.lock().pending.push_back(Some(range));
                                stream.create(options(c)).await.is_ok()
                            }
                            Err(e) => {
                                perms.lock().pending.push_back(None);
                                stream.refuse(cancel_reason(e)).await.is_ok()
                            }
                        }
                    }
                    Some(RequestUnion::CancelRequest(c)) => {
                        perms.lock().ranges.remove(&c.watch_id);
                        stream.cancel(c.watch_id).await;
                        true
                    }
                    Some(RequestUnion::ProgressRequest(_)) => {
                        stream.request_progress();
                        true
                    }
                    None => true,
                };
                if !open {
                    break;
                }
            }
        });
        let header = self.header.clone();
        let auth = self.auth.clone();
        let checked = tokio_stream::wrappers::ReceiverStream::new(responses).then(move |resp| {
            let (auth, credentials, permitted) =
                (auth.clone(), credentials.clone(), permitted.clone());
            let remover = remover.clone();
            async move { recheck(resp, &auth, &credentials, &permitted, &remover).await }
        });
        let out = futures_util::StreamExt::flat_map(checked, futures_util::stream::iter).map(
            move |mut resp| {
                header.fill(&mut resp.header);
                Ok(resp)
            },
        );
        Ok(Response::new(
            self.leader.watch_over(&metadata, Box::pin(out)),
        ))
    }
}

/// Follows created watches and, when the auth state has moved since the last check, checks
/// every watch of the stream again before events go out: each watch whose caller may no
/// longer read its range is canceled (with etcd's permission-denied reason), and its events
/// are dropped from then on. Returns what to send in place of `resp`.
async fn recheck(
    resp: WatchResponse,
    auth: &AuthService,
    credentials: &Credentials,
    permitted: &Mutex<Permitted>,
    remover: &crate::watch::WatchRemover,
) -> Vec<WatchResponse> {
    let store = auth.store();
    if resp.created {
        let mut p = permitted.lock();
        if let Some(Some(range)) = p.pending.pop_front() {
            if !resp.canceled {
                p.ranges.insert(resp.watch_id, range);
            }
        }
        if p.checked_at == 0 {
            p.checked_at = store.revision();
        }
        return vec![resp];
    }
    if resp.canceled {
        permitted.lock().ranges.remove(&resp.watch_id);
        return vec![resp];
    }
    if resp.events.is_empty() || !store.is_enabled() {
        return vec![resp];
    }
    let stale = {
        let p = permitted.lock();
        if !p.ranges.contains_key(&resp.watch_id) {
            // Canceled for lost permission.
            return Vec::new();
        }
        p.checked_at != store.revision()
    };
    if !stale {
        return vec![resp];
    }
    let who = credentials.resolve(auth).await.unwrap_or_default();
    let mut p = permitted.lock();
    p.checked_at = store.revision();
    let mut lost = Vec::new();
    p.ranges.retain(|id, (key, end)| {
        let keep = store.may_still_read(&who, key, end);
        if !keep {
            remover.remove(*id);
            lost.push(*id);
        }
        keep
    });
    let mut out: Vec<WatchResponse> = lost
        .into_iter()
        .map(|watch_id| WatchResponse {
            header: resp.header,
            watch_id,
            canceled: true,
            cancel_reason: cancel_reason(EtcdError::PermissionDenied),
            ..Default::default()
        })
        .collect();
    if p.ranges.contains_key(&resp.watch_id) {
        out.push(resp);
    }
    out
}
