//! Upgrades from earlier releases: their data dirs open, converted, with everything they held.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use etcd_client::{GetOptions, LeaseTimeToLiveOptions};
use oxcd_tests::{Flavor, Server, StartOptions};

/// See `tests/fixtures/data-dir/README.md` for how the fixture was made and what it served.
const FORMAT_1_FIXTURE: &str = "fixtures/data-dir/format1-a3286cd.tar.gz";

fn unpack(fixture: &str, into: &Path) {
    let archive = Path::new(env!("CARGO_MANIFEST_DIR")).join(fixture);
    std::fs::create_dir_all(into).unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(status.success(), "unpacking {}", archive.display());
}

#[tokio::test]
async fn a_data_dir_of_format_1_is_converted_and_serves_what_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    unpack(FORMAT_1_FIXTURE, &data_dir);
    let mut server = Server::start_with(
        Flavor::Oxcd,
        StartOptions {
            data_dir: Some(data_dir.clone()),
            name: Some("fx".into()),
            ..Default::default()
        },
    )
    .await;

    for start in ["converted", "restarted"] {
        let mut client = server.client().await;
        let all = client
            .get("", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let revision = all.header().unwrap().revision();
        assert!(revision >= 133, "{start}: revision {revision}");
        let keys: Vec<&str> = all
            .kvs()
            .iter()
            .map(|kv| kv.key_str().unwrap())
            .filter(|k| !k.starts_with("after-"))
            .collect();
        assert_eq!(keys.len(), 130, "{start}: {keys:?}");
        assert!(!keys.contains(&"key1") && keys.contains(&"key130"));
        let key2 = client.get("key2", None).await.unwrap();
        assert_eq!(key2.kvs()[0].value(), b"value2");

        // The compaction point survives: below it is compacted, above it is history.
        let compacted = client
            .get("key2", Some(GetOptions::new().with_revision(49)))
            .await
            .unwrap_err();
        assert!(
            compacted
                .to_string()
                .contains("required revision has been compacted"),
            "{start}: {compacted}"
        );
        let old = client
            .get("key101", Some(GetOptions::new().with_revision(120)))
            .await
            .unwrap();
        assert_eq!(old.kvs()[0].value(), b"value101");

        let leased = client.get("leased", None).await.unwrap();
        let lease = leased.kvs()[0].lease();
        let ttl = client
            .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert!(ttl.ttl() > 90_000, "{start}: lease ttl {}", ttl.ttl());
        assert_eq!(ttl.keys(), [b"leased".to_vec()]);

        let alice = client.user_get("alice").await.unwrap();
        assert_eq!(alice.roles(), ["reader"]);

        let members = client.member_list().await.unwrap();
        let mut names: Vec<(&str, bool)> = members
            .members()
            .iter()
            .map(|m| (m.name(), m.is_learner()))
            .collect();
        names.sort();
        // The learner never started, so it has no name yet, as in etcd.
        assert_eq!(names, [("", true), ("fx", false)], "{start}");

        // Raft's log converted too: the member writes on after it.
        let put = client
            .put(format!("after-{start}"), "v", None)
            .await
            .unwrap();
        assert!(put.header().unwrap().revision() > revision);

        if start == "converted" {
            // The history up to the fixture's last revision hashes as it did.
            let hash = client.hash_kv(133).await.unwrap();
            assert_eq!(hash.hash(), 264_170_792, "HashKV at 133");
            server.terminate(Duration::from_secs(10)).unwrap();
            server.restart().await;
        }
    }
}
