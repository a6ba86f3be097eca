//! The Lock and Election services, through the etcd-client crate and Debian's etcdctl. Every body
//! runs against real etcd first (`for_both`), so each expectation is etcd 3.4's observed
//! behaviour: contenders queue by the create revision of `<name>/<lease hex>`, a lapsed or
//! deleted key hands the lock or leadership on, and the error strings and codes are etcd's.

use std::time::Duration;

use etcd_client::{Client, LeaderKey, LockOptions, ProclaimOptions, ResignOptions};
use oxcd_tests::cluster::etcdctl;
use oxcd_tests::{expect_grpc_error, for_both};

/// Long enough for a contender that could proceed to have done so.
const STILL_WAITING: Duration = Duration::from_millis(700);
/// etcd answers Lock and Election through a client inside the server, whose errors reach the
/// caller as plain errors: code Unknown, with the underlying message.
const NOT_FOUND: (&str, &str) = ("Unknown", "etcdserver: requested lease not found");

async fn grant(c: &mut Client) -> i64 {
    c.lease_grant(30, None).await.expect("lease grant").id()
}

fn pair(expected: (&str, &str)) -> (String, String) {
    (expected.0.to_string(), expected.1.to_string())
}

#[tokio::test]
async fn lock_queues_contenders_by_creation() {
    for_both(|t| async move {
        let mut c = t.client.clone();
        let (first, second) = (grant(&mut c).await, grant(&mut c).await);
        let held = c
            .lock("jobs", Some(LockOptions::new().with_lease(first)))
            .await
            .expect("first lock");
        assert_eq!(held.key(), format!("jobs/{first:x}").as_bytes());

        let mut waiter = c.clone();
        let mut second_lock = tokio::spawn(async move {
            waiter
                .lock("jobs", Some(LockOptions::new().with_lease(second)))
                .await
                .map(|r| r.key().to_vec())
        });
        assert!(
            tokio::time::timeout(STILL_WAITING, &mut second_lock)
                .await
                .is_err(),
            "[{}] the second lock was granted while the first was held",
            t.flavor
        );
        // Both contenders' keys exist meanwhile, the holder's older.
        let keys = c
            .get("jobs/", Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .expect("get the queue");
        let mut queue: Vec<(i64, Vec<u8>)> = keys
            .kvs()
            .iter()
            .map(|kv| (kv.create_revision(), kv.key().to_vec()))
            .collect();
        queue.sort();
        let queued: Vec<Vec<u8>> = queue.into_iter().map(|(_, k)| k).collect();
        assert_eq!(
            queued,
            [
                format!("jobs/{first:x}").into_bytes(),
                format!("jobs/{second:x}").into_bytes()
            ]
        );

        c.unlock(held.key()).await.expect("unlock");
        let granted = tokio::time::timeout(Duration::from_secs(5), second_lock)
            .await
            .expect("the second lock follows the unlock")
            .expect("the waiter runs")
            .expect("second lock");
        assert_eq!(granted, format!("jobs/{second:x}").into_bytes());

        // A holder whose lease is revoked gives the lock up too.
        let third = grant(&mut c).await;
        let mut waiter = c.clone();
        let third_lock = tokio::spawn(async move {
            waiter
                .lock("jobs", Some(LockOptions::new().with_lease(third)))
                .await
                .map(|r| r.key().to_vec())
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.lease_revoke(second)
            .await
            .expect("revoke the holder's lease");
        let granted = tokio::time::timeout(Duration::from_secs(5), third_lock)
            .await
            .expect("the revoke hands the lock on")
            .expect("the waiter runs")
            .expect("third lock");
        assert_eq!(granted, format!("jobs/{third:x}").into_bytes());
    })
    .await;
}

#[tokio::test]
async fn lock_errors_are_etcds() {
    for_both(|t| async move {
        let mut c = t.client.clone();
        let refused = expect_grpc_error(
            c.lock("jobs", Some(LockOptions::new().with_lease(0x1234)))
                .await,
            "a lock with an unknown lease",
        );
        assert_eq!(refused, pair(NOT_FOUND), "[{}]", t.flavor);
        // Unlocking a key nobody holds is a delete of nothing.
        c.unlock("jobs/absent").await.expect("unlock of nothing");
    })
    .await;
}

#[tokio::test]
async fn election_campaign_proclaim_observe_resign() {
    for_both(|t| async move {
        let mut c = t.client.clone();
        let refused = expect_grpc_error(c.leader("svc").await, "leader of an empty election");
        assert_eq!(
            refused,
            ("Unknown".to_string(), "election: no leader".to_string()),
            "[{}]",
            t.flavor
        );

        let (first, second) = (grant(&mut c).await, grant(&mut c).await);
        let campaign = c.campaign("svc", "a", first).await.expect("campaign");
        let leader = campaign.leader().expect("a leader key").clone();
        assert_eq!(leader.key(), format!("svc/{first:x}").as_bytes());
        assert_eq!(leader.lease(), first);
        let mut observe = c.observe("svc").await.expect("observe");
        let seen = observe.message().await.expect("observe").expect("a leader");
        assert_eq!(seen.kv().expect("kv").value(), b"a");

        let mut rival = c.clone();
        let mut second_campaign = tokio::spawn(async move {
            rival
                .campaign("svc", "b", second)
                .await
                .map(|r| r.leader().map(|l| l.key().to_vec()))
        });
        assert!(
            tokio::time::timeout(STILL_WAITING, &mut second_campaign)
                .await
                .is_err(),
            "[{}] a second leader was elected while the first led",
            t.flavor
        );

        c.proclaim(
            "a2",
            Some(ProclaimOptions::new().with_leader(leader.clone())),
        )
        .await
        .expect("proclaim");
        let now = c.leader("svc").await.expect("leader");
        assert_eq!(now.kv().expect("kv").value(), b"a2");
        let seen = observe.message().await.expect("observe").expect("a leader");
        assert_eq!(seen.kv().expect("kv").value(), b"a2");

        c.resign(Some(ResignOptions::new().with_leader(leader.clone())))
            .await
            .expect("resign");
        let elected = tokio::time::timeout(Duration::from_secs(5), second_campaign)
            .await
            .expect("the resignation elects the rival")
            .expect("the rival runs")
            .expect("second campaign");
        assert_eq!(elected, Some(format!("svc/{second:x}").into_bytes()));
        let now = c.leader("svc").await.expect("leader");
        assert_eq!(now.kv().expect("kv").value(), b"b");
        let seen = observe.message().await.expect("observe").expect("a leader");
        assert_eq!(seen.kv().expect("kv").value(), b"b");

        // The resigned leader's key no longer leads.
        let refused = expect_grpc_error(
            c.proclaim("late", Some(ProclaimOptions::new().with_leader(leader)))
                .await,
            "a proclaim by a resigned leader",
        );
        assert_eq!(
            refused,
            ("Unknown".to_string(), "election: not leader".to_string()),
            "[{}]",
            t.flavor
        );
        let stale = LeaderKey::new()
            .with_name("svc")
            .with_key(format!("svc/{second:x}"))
            .with_rev(1)
            .with_lease(second);
        let refused = expect_grpc_error(
            c.proclaim("x", Some(ProclaimOptions::new().with_leader(stale)))
                .await,
            "a proclaim with the wrong revision",
        );
        assert_eq!(refused.1, "election: not leader", "[{}]", t.flavor);
    })
    .await;
}

#[tokio::test]
async fn etcdctl_lock_and_elect() {
    for_both(|t| async move {
        let endpoints = [t.endpoint.clone()];
        let out = etcdctl(&endpoints, &["lock", "cli-lock", "echo", "inside"]).await;
        assert_eq!(out.expect_ok(), "inside\n", "[{}]", t.flavor);
        // `elect -l` observes: it prints the leader's key, then its value.
        let mut c = t.client.clone();
        let lease = grant(&mut c).await;
        c.campaign("cli-elect", "me", lease)
            .await
            .expect("campaign");
        let mut listen = tokio::process::Command::new(oxcd_tests::cluster::etcdctl_bin());
        listen
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", t.endpoint))
            .args(["elect", "-l", "cli-elect"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = listen.spawn().expect("etcdctl elect -l");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let first = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("etcdctl prints the leader")
            .expect("read")
            .expect("a line");
        assert_eq!(first, format!("cli-elect/{lease:x}"), "[{}]", t.flavor);
        let second = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("etcdctl prints the value")
            .expect("read")
            .expect("a line");
        assert_eq!(second, "me", "[{}]", t.flavor);
        let _ = child.kill().await;
    })
    .await;
}

#[tokio::test]
async fn a_lock_given_up_while_waiting_leaves_the_queue() {
    for_both(|t| async move {
        let mut c = t.client.clone();
        let (holder, quitter) = (grant(&mut c).await, grant(&mut c).await);
        c.lock("q", Some(LockOptions::new().with_lease(holder)))
            .await
            .expect("first lock");
        let mut waiter = c.clone();
        let gave_up = tokio::time::timeout(
            STILL_WAITING,
            waiter.lock("q", Some(LockOptions::new().with_lease(quitter))),
        )
        .await;
        assert!(gave_up.is_err(), "[{}] the lock was granted", t.flavor);
        let quitter_key = format!("q/{quitter:x}");
        let mut gone = false;
        for _ in 0..50 {
            let resp = c.get(quitter_key.as_str(), None).await.expect("get");
            if resp.kvs().is_empty() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            gone,
            "[{}] the abandoned contender's key stayed queued",
            t.flavor
        );
    })
    .await;
}
