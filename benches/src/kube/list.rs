//! The list phase: a namespace of many pods, written into the store as kube-apiserver writes
//! them, then listed in one request through a kube-apiserver without a watch cache, so that the
//! list is the store's (etcd 3.7's RangeStream, which kube-apiserver 1.37 calls by default; a
//! store without it gets paged Ranges). Measured: the store's peak memory for it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::Method;
use oxcd_tests::kube::ApiServer;
use serde_json::Value;

use super::client::ApiClient;
use super::fleet::NAMESPACE;
use crate::list_memory::put_in_txns;
use crate::server::Cluster;

/// Reading a large unpaged list takes a while on a busy machine.
const LIST_TIMEOUT: Duration = Duration::from_secs(300);

pub struct ListFigures {
    /// The highest VmHWM of any member once the apiserver was up, before the list.
    pub startup_peak_bytes: u64,
    /// The highest VmHWM of any member after the list.
    pub peak_bytes: u64,
    pub seconds: f64,
}

/// Writes `pods` copies of `template` (a pod as the API returned it) under the benchmark's
/// namespace, restarts every member (so each peak is this phase's), starts a kube-apiserver
/// without a watch cache in `dir` and lists the namespace's pods through it.
pub async fn measure(
    cluster: &mut Cluster,
    template: &Value,
    pods: usize,
    dir: &Path,
    label: &str,
) -> Result<ListFigures> {
    let started = Instant::now();
    load(&cluster.client_urls()[0], template, pods).await?;
    eprintln!(
        "{label}: {pods} pods written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for member in cluster.members_mut() {
        member.kill().await?;
        member.restart()?;
    }
    cluster.wait_until_ready().await?;
    let servers = cluster.client_urls().join(",");
    let (dir, start_label) = (dir.to_owned(), label.to_owned());
    let mut apiserver = tokio::task::spawn_blocking(move || {
        ApiServer::start_ready(&servers, &dir, &["--watch-cache=false"], &start_label)
    })
    .await?;
    let peak = |cluster: &Cluster| -> Result<u64> {
        let peaks: Result<Vec<u64>> = cluster
            .members()
            .iter()
            .map(|member| member.peak_rss_bytes())
            .collect();
        Ok(peaks?.into_iter().max().unwrap_or(0))
    };
    let startup_peak_bytes = peak(cluster)?;
    let client = ApiClient::connect(&apiserver.url(), apiserver.admin_token(), 1).await?;
    let started = Instant::now();
    let list = tokio::time::timeout(
        LIST_TIMEOUT,
        client.call(
            Method::GET,
            &format!("/api/v1/namespaces/{NAMESPACE}/pods"),
            None,
        ),
    )
    .await
    .context("the list took too long")??
    .success("listing the pods")?;
    let seconds = started.elapsed().as_secs_f64();
    let listed = list["items"].as_array().map_or(0, Vec::len);
    if listed < pods {
        bail!("the list returned {listed} pods of {pods}");
    }
    let peak_bytes = peak(cluster)?;
    drop(client);
    tokio::task::spawn_blocking(move || apiserver.stop()).await?;
    Ok(ListFigures {
        startup_peak_bytes,
        peak_bytes,
        seconds,
    })
}

/// `template` renamed to `list-NNNNNN` with a uid of its own, stored as kube-apiserver stores it.
fn pod_value(template: &Value, index: usize) -> Result<(String, Vec<u8>)> {
    let name = format!("list-{index:06}");
    let mut pod = template.clone();
    pod["metadata"]["name"] = name.clone().into();
    pod["metadata"]["uid"] = format!("00000000-0000-4000-8000-{index:012}").into();
    let value = oxcd_kube::encode::encode(&pod)
        .map_err(|error| anyhow::anyhow!("encoding a pod: {error}"))?;
    Ok((format!("/registry/pods/{NAMESPACE}/{name}"), value))
}

async fn load(url: &str, template: &Value, pods: usize) -> Result<()> {
    let template = template.clone();
    put_in_txns(url, pods, move |index| {
        let (key, value) = pod_value(&template, index)?;
        Ok((key.into_bytes(), value))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_copy_has_its_own_name_and_uid_in_the_stored_value() {
        let template = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "t", "namespace": NAMESPACE, "uid": "x"},
            "spec": {"containers": [{"name": "app", "image": "i"}]},
        });
        let (key, value) = pod_value(&template, 7).unwrap();
        assert_eq!(key, "/registry/pods/bench/list-000007");
        let envelope = value
            .strip_prefix(oxcd_kube::envelope::PROTOBUF_MAGIC)
            .unwrap();
        let pod = oxcd_kube::object::decode(envelope).unwrap().object;
        assert_eq!(pod["metadata"]["name"], "list-000007");
        assert_eq!(
            pod["metadata"]["uid"],
            "00000000-0000-4000-8000-000000000007"
        );
        assert_eq!(pod["spec"]["containers"][0]["image"], "i");
    }
}
