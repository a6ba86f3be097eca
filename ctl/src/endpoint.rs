//! `endpoint health|status|hashkv`, each asked of every endpoint separately (`--cluster`: of
//! every member's client URLs).

use std::time::Instant;

use oxcd_proto::etcdserverpb::{HashKvRequest, RangeRequest, StatusRequest, StatusResponse};

use crate::client::{Connection, RpcError};
use crate::failure::{CtlResult, ExitCode, Failure};
use crate::global::GlobalFlags;
use crate::output::text::go_duration;
use crate::output::{printer_for, EndpointHash, EndpointHealth, EndpointStatus};

#[derive(clap::Args, Debug)]
pub struct EndpointArgs {
    /// use all endpoints from the cluster member list
    #[arg(long, global = true)]
    cluster: bool,
    #[command(subcommand)]
    command: EndpointCommand,
}

#[derive(clap::Subcommand, Debug)]
enum EndpointCommand {
    /// Checks the healthiness of endpoints specified in `--endpoints` flag
    Health,
    /// Prints out the status of endpoints specified in `--endpoints` flag
    Status,
    /// Prints the KV history hash for each endpoint in --endpoints
    Hashkv {
        /// maximum revision to hash (default: all revisions)
        #[arg(long, default_value = "0", value_parser = crate::args::go_i64)]
        rev: i64,
    },
}

/// The endpoints a per-member command visits: `--endpoints`, or with `--cluster` every client
/// URL in the member list.
pub async fn targets(global: &GlobalFlags, cluster: bool) -> CtlResult<Vec<String>> {
    if !cluster {
        return Ok(global.endpoints.clone());
    }
    let conn = Connection::open(global).await?;
    let members = crate::member::list(&conn).await.map_err(|e| {
        Failure::new(
            ExitCode::Error,
            format!(
                "failed to fetch endpoints from etcd cluster member list: {}",
                e.0
            ),
        )
    })?;
    Ok(members
        .members
        .into_iter()
        .flat_map(|m| m.client_ur_ls)
        .collect())
}

/// `Status` of one endpoint over its own connection.
pub async fn status(
    conn: &Connection,
    endpoint: &str,
) -> CtlResult<Result<StatusResponse, RpcError>> {
    let member = conn.to_endpoint(endpoint).await?;
    let maintenance = member.maintenance();
    Ok(member
        .call(|| {
            let mut maintenance = maintenance.clone();
            async move { maintenance.status(StatusRequest {}).await }
        })
        .await)
}

pub async fn run(global: &GlobalFlags, args: EndpointArgs) -> CtlResult {
    let printer = printer_for(&global.write_out, global.hex, false)?;
    let endpoints = targets(global, args.cluster).await?;
    match args.command {
        EndpointCommand::Health => {
            // Concurrent checks, reported in completion order as etcdctl does.
            let mut checks = tokio::task::JoinSet::new();
            for endpoint in endpoints {
                let global = global.clone();
                checks.spawn(async move { health(&global, &endpoint).await });
            }
            let mut results = Vec::new();
            while let Some(done) = checks.join_next().await {
                results.push(done.map_err(|e| Failure::new(ExitCode::Error, e.to_string()))?);
            }
            let unhealthy = results.iter().any(|h| !h.error.is_empty());
            printer.endpoint_health(&results)?;
            if unhealthy {
                return Err(Failure::new(ExitCode::Error, "unhealthy cluster"));
            }
            Ok(())
        }
        EndpointCommand::Status => {
            let conn = Connection::open(global).await?;
            let mut statuses = Vec::new();
            let mut failed = false;
            for endpoint in endpoints {
                match status(&conn, &endpoint).await? {
                    Ok(status) => statuses.push(EndpointStatus { endpoint, status }),
                    Err(e) => {
                        failed = true;
                        eprintln!("Failed to get the status of endpoint {endpoint} ({})", e.0);
                    }
                }
            }
            printer.endpoint_status(&statuses, global.etcdctl_version)?;
            if failed {
                std::process::exit(ExitCode::Error as i32);
            }
            Ok(())
        }
        EndpointCommand::Hashkv { rev } => {
            let conn = Connection::open(global).await?;
            let mut hashes = Vec::new();
            let mut failure = None;
            for endpoint in endpoints {
                let member = conn.to_endpoint(&endpoint).await?;
                let maintenance = member.maintenance();
                let reply = member
                    .call(|| {
                        let mut maintenance = maintenance.clone();
                        async move { maintenance.hash_kv(HashKvRequest { revision: rev }).await }
                    })
                    .await;
                match reply {
                    Ok(hash) => hashes.push(EndpointHash { endpoint, hash }),
                    Err(e) => {
                        eprintln!("Failed to get the hash of endpoint {endpoint} ({})", e.0);
                        failure = Some(e);
                    }
                }
            }
            printer.endpoint_hash_kv(&hashes, global.etcdctl_version)?;
            match failure {
                Some(e) => Err(e.into()),
                None => Ok(()),
            }
        }
    }
}

/// A linearizable read of the key `health`; permission denied still proves a working quorum.
async fn health(global: &GlobalFlags, endpoint: &str) -> EndpointHealth {
    let mut single = global.clone();
    single.endpoints = vec![endpoint.to_string()];
    let conn = match Connection::open(&single).await {
        Ok(conn) => conn,
        Err(failure) => {
            return EndpointHealth {
                endpoint: endpoint.to_string(),
                health: false,
                took: String::new(),
                error: failure.message,
            }
        }
    };
    let kv = conn.kv();
    let started = Instant::now();
    let reply = conn
        .call(|| {
            let mut kv = kv.clone();
            let request = RangeRequest {
                key: b"health".to_vec(),
                ..RangeRequest::default()
            };
            async move { kv.range(request).await }
        })
        .await;
    let took = go_duration(started.elapsed());
    let error = match reply {
        Ok(_) => String::new(),
        Err(e) if e.0 == "etcdserver: permission denied" => String::new(),
        Err(e) => e.0,
    };
    EndpointHealth {
        endpoint: endpoint.to_string(),
        health: error.is_empty(),
        took,
        error,
    }
}
