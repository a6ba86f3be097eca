//! Runs an oxcd member inside this process, talks to it with the `etcd-client` crate as any
//! etcd client would (put, get, watch), shuts it down, and starts it again on the same data dir
//! to show the shutdown released it and kept the data:
//!
//! ```sh
//! cargo run -p oxcd --example embedded
//! ```
//!
//! It exits non-zero if anything it sees is not what etcd would answer.

use std::time::Duration;

use anyhow::{ensure, Context};
use etcd_client::{Client, EventType, WatchOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Port 0: the OS picks free ports; the member tells which one it got.
    let config = oxcd::Config::builder()
        .name("embedded")
        .data_dir(dir.path().join("data"))
        .listen_client_urls(["http://127.0.0.1:0"])
        .listen_peer_urls(["http://127.0.0.1:0"])
        .build()?;

    let member = oxcd::Node::start(&config).await?;
    let mut client = connect(&member).await?;
    let mut watch = client
        .watch("greeting", Some(WatchOptions::new().with_prefix()))
        .await?;
    let put = client.put("greeting/en", "hello", None).await?;
    let revision = put.header().context("a put has a header")?.revision();
    let got = client.get("greeting/en", None).await?;
    ensure!(
        got.kvs().len() == 1 && got.kvs()[0].value() == b"hello",
        "get after put: {:?}",
        got.kvs()
    );
    ensure!(
        got.kvs()[0].mod_revision() == revision,
        "the key was written at revision {revision}, not {}",
        got.kvs()[0].mod_revision()
    );

    // The first response only confirms the watch; the put arrives as an event.
    let (watch_id, event) = loop {
        let response = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .context("no watch event within 5 s")??
            .context("the watch stream ended")?;
        if let Some(event) = response.events().first() {
            break (response.watch_id(), event.clone());
        }
    };
    let kv = event.kv().context("a put event carries its key")?;
    ensure!(
        event.event_type() == EventType::Put
            && kv.key() == b"greeting/en"
            && kv.value() == b"hello"
            && kv.mod_revision() == revision,
        "watch event: {event:?}"
    );
    watch.cancel(watch_id).await?;
    drop((watch, client));
    ensure!(
        member.shutdown().await,
        "the member did not release its data dir"
    );

    // The same data dir again: it was released, and it kept the write.
    let member = oxcd::Node::start(&config).await?;
    let mut client = connect(&member).await?;
    let got = client.get("greeting/", None).await?;
    ensure!(got.count() == 0, "a plain get does not match a prefix");
    let got = client
        .get(
            "greeting/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    ensure!(
        got.kvs().len() == 1 && got.kvs()[0].mod_revision() == revision,
        "after a restart: {:?}",
        got.kvs()
    );
    drop(client);
    ensure!(
        member.shutdown().await,
        "the member did not release its data dir"
    );
    println!(
        "embedded member: put, get and watch answered as etcd; restarted on the same data dir \
         with the write kept; shut down cleanly"
    );
    Ok(())
}

async fn connect(member: &oxcd::Node) -> anyhow::Result<Client> {
    let endpoint = member
        .client_addrs()
        .first()
        .context("the member has a TCP client address")?
        .to_string();
    let options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(10));
    Ok(Client::connect([endpoint], Some(options)).await?)
}
