//! `--quota-backend-bytes`: past the quota the member raises NOSPACE; puts, writing txns and
//! lease grants fail with etcd's error while reads and deletes work; compaction, defragment and
//! `alarm disarm` recover. Checked against etcd first, then oxcd.

use etcd_client::{AlarmAction, AlarmOptions, AlarmType, Client, DeleteOptions};
use oxcd_tests::watch_checker::for_both_servers;
use oxcd_tests::{expect_grpc_error, StartOptions};

const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

fn assert_no_space<T: std::fmt::Debug>(result: Result<T, etcd_client::Error>, what: &str) {
    let (code, message) = expect_grpc_error(result, what);
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("ResourceExhausted", NO_SPACE),
        "{what}"
    );
}

async fn fill_until_refused(c: &mut Client) -> usize {
    let value = vec![7u8; 200_000];
    for i in 0..400 {
        if let Err(e) = c.put(format!("fill/{i}"), value.clone(), None).await {
            assert_no_space(Err::<(), _>(e), "the put past the quota");
            return i;
        }
    }
    panic!("400 puts of 200 kB never hit an 8 MiB quota");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_alarm_refuses_growth_until_disarmed() {
    let options = StartOptions {
        extra_args: vec!["--quota-backend-bytes=8388608".into()],
        ..Default::default()
    };
    for_both_servers(options, |server| async move {
        let mut c = server.client().await;
        let stored = fill_until_refused(&mut c).await;
        assert!(stored > 0, "the first put must fit");

        let alarms = c
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .unwrap();
        assert_eq!(alarms.alarms().len(), 1);
        assert_eq!(alarms.alarms()[0].alarm(), AlarmType::Nospace);

        assert_no_space(
            c.put("small", "x", None).await,
            "a put while NOSPACE is raised",
        );
        assert_no_space(
            c.lease_grant(60, None).await,
            "a lease grant while NOSPACE is raised",
        );
        let read = c.get("fill/0", None).await.unwrap();
        assert_eq!(read.kvs().len(), 1, "reads still work");

        let deleted = c
            .delete("fill/", Some(DeleteOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(deleted.deleted() as usize, stored, "deletes still work");
        let rev = deleted.header().unwrap().revision();
        c.compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
        c.defragment().await.unwrap();
        let member = alarms.alarms()[0].member_id();
        let mut disarm = AlarmOptions::new();
        disarm.with_member(member);
        c.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(disarm))
            .await
            .unwrap();
        let left = c
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .unwrap();
        assert!(left.alarms().is_empty(), "disarmed");
        c.put("small", "x", None)
            .await
            .expect("writes work again after recovery");
    })
    .await;
}
