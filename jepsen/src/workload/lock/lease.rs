//! A lock holder's lease: kept alive in the background, and what the client can know of it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::Client;
use tokio::task::JoinHandle;

/// What a client knows of its lease: until when keep-alives have proven it alive, and whether
/// that proof has ever run out.
#[derive(Debug)]
pub struct LeaseHealth {
    alive_until: Instant,
    lapsed: Option<String>,
    since: Instant,
}

impl LeaseHealth {
    /// A lease granted by a request sent at `sent` with this TTL.
    pub fn new(sent: Instant, ttl: Duration) -> LeaseHealth {
        LeaseHealth {
            alive_until: sent + ttl,
            lapsed: None,
            since: sent,
        }
    }

    /// A keep-alive sent at `sent` was answered with this TTL.
    pub fn renewed(&mut self, sent: Instant, ttl: Duration) {
        self.lapse_if_past(sent);
        self.alive_until = self.alive_until.max(sent + ttl);
    }

    /// The server says the lease no longer exists.
    pub fn gone(&mut self, why: String) {
        self.lapsed.get_or_insert(why);
    }

    /// Why the lease may have expired by `now`, or `None` when it surely has not.
    pub fn check(&mut self, now: Instant) -> Option<String> {
        self.lapse_if_past(now);
        self.lapsed.clone()
    }

    fn lapse_if_past(&mut self, now: Instant) {
        if now > self.alive_until && self.lapsed.is_none() {
            self.lapsed = Some(format!(
                "no keep-alive answered in time: proven alive only until {:.3}s after the \
                 grant, seen at {:.3}s",
                (self.alive_until - self.since).as_secs_f64(),
                (now - self.since).as_secs_f64()
            ));
        }
    }
}

/// The background keep-alive of one lease.
pub(super) struct KeepAlive(JoinHandle<()>);

impl KeepAlive {
    pub(super) fn start(
        client: &Client,
        lease: i64,
        ttl: Duration,
        health: Arc<Mutex<LeaseHealth>>,
    ) -> Self {
        let mut leases = client.lease_client();
        let period = ttl / 3;
        let health_gone = {
            let health = Arc::clone(&health);
            move |why: String| health.lock().unwrap_or_else(|e| e.into_inner()).gone(why)
        };
        let renewed = move |sent: Instant, ttl: Duration| {
            health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .renewed(sent, ttl);
        };
        KeepAlive(tokio::spawn(async move {
            loop {
                // Opening the stream is itself a keep-alive (etcd-client sends one and waits
                // for its answer). An answer that comes late is dropped with the stream, so it
                // is never taken for the answer to a later keep-alive.
                let mut sent = Instant::now();
                let (mut keeper, mut stream) =
                    match tokio::time::timeout(period, leases.keep_alive(lease)).await {
                        Ok(Ok(pair)) => {
                            renewed(sent, ttl);
                            pair
                        }
                        Ok(Err(etcd_client::Error::LeaseKeepAliveError(e)))
                            if e.contains("not found") =>
                        {
                            health_gone(format!("keep-alive: {e}"));
                            return;
                        }
                        _ => {
                            tokio::time::sleep(period / 4).await;
                            continue;
                        }
                    };
                loop {
                    tokio::time::sleep_until((sent + period).into()).await;
                    sent = Instant::now();
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(period, stream.message()).await {
                        Ok(Ok(Some(response))) if response.ttl() > 0 => {
                            renewed(sent, Duration::from_secs(response.ttl() as u64));
                        }
                        Ok(Ok(Some(_))) => {
                            health_gone("keep-alive answered TTL 0: the lease expired".into());
                            return;
                        }
                        _ => break,
                    }
                }
            }
        }))
    }

    pub(super) fn stop(&self) {
        self.0.abort();
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}
