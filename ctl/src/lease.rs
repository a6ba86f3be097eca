//! `lease grant|revoke|timetolive|list|keep-alive`. Lease IDs are hexadecimal on the command line.

use std::time::Duration;

use tokio_stream::StreamExt;

use oxcd_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest,
};

use crate::args::parse_int;
use crate::client::{Connection, RpcError};
use crate::failure::{CtlResult, ExitCode, Failure};
use crate::global::GlobalFlags;
use crate::output::{printer_for, text::signed_hex};

#[derive(clap::Subcommand, Debug)]
pub enum LeaseCommand {
    /// Creates leases
    Grant {
        #[arg(value_name = "ttl", allow_negative_numbers = true)]
        args: Vec<String>,
    },
    /// Revokes leases
    Revoke {
        #[arg(value_name = "leaseID")]
        args: Vec<String>,
    },
    /// Get lease information
    Timetolive {
        /// Get keys attached to this lease
        #[arg(long)]
        keys: bool,
        #[arg(value_name = "leaseID")]
        args: Vec<String>,
    },
    /// List all active leases
    List,
    /// Keeps leases alive (renew)
    KeepAlive {
        /// Resets the keep-alive time to its original value and exits immediately
        #[arg(long)]
        once: bool,
        #[arg(value_name = "leaseID")]
        args: Vec<String>,
    },
}

fn bad_args(message: impl Into<String>) -> Failure {
    Failure::new(ExitCode::BadArgs, message)
}

/// The single argument of a lease command, or etcdctl's complaint about its absence.
fn one_arg<'a>(args: &'a [String], missing: &str) -> CtlResult<&'a str> {
    match args {
        [arg] => Ok(arg),
        _ => Err(bad_args(missing)),
    }
}

fn lease_id(arg: &str) -> CtlResult<i64> {
    parse_int(arg, 16).map_err(|e| bad_args(format!("bad lease ID arg ({e}), expecting ID in Hex")))
}

pub async fn run(global: &GlobalFlags, command: LeaseCommand) -> CtlResult {
    match command {
        LeaseCommand::Grant { args } => {
            let ttl = one_arg(&args, "lease grant command needs TTL argument")?;
            let ttl = parse_int(ttl, 10).map_err(|e| bad_args(format!("bad TTL ({e})")))?;
            let printer = printer_for(&global.write_out, global.hex, false)?;
            let conn = Connection::open(global).await?;
            let lease = conn.lease();
            let request = LeaseGrantRequest { ttl, id: 0 };
            let reply = conn
                .call(|| {
                    let mut lease = lease.clone();
                    async move { lease.lease_grant(request).await }
                })
                .await
                .map_err(|e| {
                    Failure::new(ExitCode::Error, format!("failed to grant lease ({})", e.0))
                })?;
            // clientv3 turns a grant refused in the response body into an error.
            if !reply.error.is_empty() {
                return Err(Failure::new(
                    ExitCode::Error,
                    format!("failed to grant lease ({})", reply.error),
                ));
            }
            printer.grant(&reply)
        }
        LeaseCommand::Revoke { args } => {
            let id = lease_id(one_arg(&args, "lease revoke command needs 1 argument")?)?;
            let printer = printer_for(&global.write_out, global.hex, false)?;
            let conn = Connection::open(global).await?;
            let lease = conn.lease();
            let reply = conn
                .call(|| {
                    let mut lease = lease.clone();
                    async move { lease.lease_revoke(LeaseRevokeRequest { id }).await }
                })
                .await
                .map_err(|e| {
                    Failure::new(ExitCode::Error, format!("failed to revoke lease ({})", e.0))
                })?;
            printer.revoke(id, &reply)
        }
        LeaseCommand::Timetolive { keys, args } => {
            let id = lease_id(one_arg(
                &args,
                "lease timetolive command needs lease ID as argument",
            )?)?;
            let printer = printer_for(&global.write_out, global.hex, false)?;
            let conn = Connection::open(global).await?;
            let lease = conn.lease();
            // etcdctl asks without a deadline and reports failures as connection errors.
            let reply = conn
                .unary(None, || {
                    let mut lease = lease.clone();
                    async move {
                        lease
                            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
                            .await
                    }
                })
                .await
                .map_err(|e| e.exit(ExitCode::BadConnection))?;
            printer.time_to_live(&reply, keys)
        }
        LeaseCommand::List => {
            let printer = printer_for(&global.write_out, global.hex, false)?;
            let conn = Connection::open(global).await?;
            let lease = conn.lease();
            let reply = conn
                .unary(None, || {
                    let mut lease = lease.clone();
                    async move { lease.lease_leases(LeaseLeasesRequest {}).await }
                })
                .await
                .map_err(|e| e.exit(ExitCode::BadConnection))?;
            printer.leases(&reply)
        }
        LeaseCommand::KeepAlive { once, args } => {
            let id = lease_id(one_arg(
                &args,
                "lease keep-alive command needs lease ID as argument",
            )?)?;
            let printer = printer_for(&global.write_out, global.hex, false)?;
            let conn = Connection::open(global).await?;
            keep_alive(&conn, printer.as_ref(), id, once).await
        }
    }
}

/// Renews the lease every third of its TTL, printing each renewal, until it expires or is
/// revoked; with `once`, a single renewal whose failure is an error.
async fn keep_alive(
    conn: &Connection,
    printer: &dyn crate::output::Printer,
    id: i64,
    once: bool,
) -> CtlResult {
    let (requests, receiver) = tokio::sync::mpsc::channel(1);
    requests
        .send(LeaseKeepAliveRequest { id })
        .await
        .map_err(|_| Failure::new(ExitCode::BadConnection, "keep-alive stream closed"))?;
    let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
    let mut replies = conn
        .lease()
        .lease_keep_alive(stream)
        .await
        .map_err(|status| RpcError::from_status(&status).exit(ExitCode::BadConnection))?
        .into_inner();
    loop {
        let reply = match replies.next().await {
            Some(Ok(reply)) => reply,
            Some(Err(status)) => {
                return Err(RpcError::from_status(&status).exit(ExitCode::BadConnection))
            }
            None => break,
        };
        if reply.ttl <= 0 {
            if once {
                return Err(Failure::new(
                    ExitCode::BadConnection,
                    "etcdserver: requested lease not found",
                ));
            }
            break;
        }
        printer.keep_alive(&reply)?;
        if once {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs_f64(reply.ttl as f64 / 3.0)).await;
        if requests.send(LeaseKeepAliveRequest { id }).await.is_err() {
            break;
        }
    }
    if printer.is_simple() {
        println!("lease {} expired or revoked.", signed_hex(id, 16));
    }
    Ok(())
}
