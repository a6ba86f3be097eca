use std::sync::Arc;

use oxcd_proto::etcdserverpb::{
    watch_create_request::FilterType, watch_request::RequestUnion, watch_server::Watch,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use tokio_stream::StreamExt;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use super::{HeaderFiller, LeaderMonitor};
use crate::mvcc::KeyRange;
use crate::watch::{WatchHub, WatchOptions};

pub struct WatchApi {
    pub hub: Arc<WatchHub>,
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

#[tonic::async_trait]
impl Watch for WatchApi {
    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<BoxStream<WatchResponse>>, Status> {
        let metadata = req.metadata().clone();
        let mut requests = req.into_inner();
        let (stream, responses) = self.hub.open_stream();
        tokio::spawn(async move {
            // The stream (and its watchers) lives as long as the client keeps sending.
            while let Some(Ok(req)) = requests.next().await {
                let open = match req.request_union {
                    Some(RequestUnion::CreateRequest(c)) => stream.create(options(c)).await.is_ok(),
                    Some(RequestUnion::CancelRequest(c)) => {
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
        let out = tokio_stream::wrappers::ReceiverStream::new(responses).map(move |mut resp| {
            header.fill(&mut resp.header);
            Ok(resp)
        });
        Ok(Response::new(
            self.leader.watch_over(&metadata, Box::pin(out)),
        ))
    }
}
