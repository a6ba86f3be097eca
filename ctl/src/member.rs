//! `member add|remove|update|list|promote`. Member IDs are hexadecimal on the command line.

use oxcd_proto::etcdserverpb::{
    MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    MemberUpdateRequest,
};

use crate::args::parse_uint;
use crate::client::Connection;
use crate::failure::{CtlResult, ExitCode, Failure};
use crate::global::GlobalFlags;
use crate::output::{printer_for, text::go_quote};

#[derive(clap::Subcommand, Debug)]
pub enum MemberCommand {
    /// Adds a member into the cluster
    Add {
        #[arg(
            long,
            default_value = "",
            help = "comma separated peer URLs for the new member."
        )]
        peer_urls: String,
        /// indicates if the new member is raft learner
        #[arg(long)]
        learner: bool,
        #[arg(value_name = "memberName")]
        args: Vec<String>,
    },
    /// Removes a member from the cluster
    Remove {
        #[arg(value_name = "memberID")]
        args: Vec<String>,
    },
    /// Updates a member in the cluster
    Update {
        #[arg(
            long,
            default_value = "",
            help = "comma separated peer URLs for the updated member."
        )]
        peer_urls: String,
        #[arg(value_name = "memberID")]
        args: Vec<String>,
    },
    /// Lists all members in the cluster
    List,
    /// Promotes a non-voting member in the cluster
    Promote {
        #[arg(value_name = "memberID")]
        args: Vec<String>,
    },
}

fn bad_args(message: impl Into<String>) -> Failure {
    Failure::new(ExitCode::BadArgs, message)
}

fn member_id(args: &[String]) -> CtlResult<u64> {
    let [id] = args else {
        return Err(bad_args("member ID is not provided"));
    };
    parse_uint(id, 16)
        .map_err(|e| bad_args(format!("bad member ID arg ({e}), expecting ID in Hex")))
}

fn peer_urls(urls: &str) -> CtlResult<Vec<String>> {
    if urls.is_empty() {
        return Err(bad_args("member peer urls not provided"));
    }
    Ok(urls.split(',').map(str::to_string).collect())
}

pub async fn run(global: &GlobalFlags, command: MemberCommand) -> CtlResult {
    match command {
        MemberCommand::Add {
            peer_urls: urls,
            learner,
            args,
        } => {
            let name = match args.as_slice() {
                [] => return Err(bad_args("member name not provided")),
                [name] => name.clone(),
                _ => {
                    let mut message = String::from("too many arguments");
                    for arg in args.iter().filter(|a| a.to_lowercase().starts_with("http")) {
                        message.push_str(&format!(", did you mean --peer-urls={arg}"));
                    }
                    return Err(bad_args(message));
                }
            };
            let request = MemberAddRequest {
                peer_ur_ls: peer_urls(&urls)?,
                is_learner: learner,
            };
            let printer = printer_for(&global.write_out, global.hex, false)?;
            let conn = Connection::open(global).await?;
            let cluster = conn.cluster();
            let reply = conn
                .call(|| {
                    let (request, mut cluster) = (request.clone(), cluster.clone());
                    async move { cluster.member_add(request).await }
                })
                .await?;
            printer.member_add(&reply)?;
            if printer.is_simple() {
                // The environment a new member needs to join, named as the user asked.
                let new_id = reply.member.as_ref().map_or(0, |m| m.id);
                let mut initial = Vec::new();
                for member in &reply.members {
                    let member_name = if member.id == new_id {
                        &name
                    } else {
                        &member.name
                    };
                    for url in &member.peer_ur_ls {
                        initial.push(format!("{member_name}={url}"));
                    }
                }
                println!();
                println!("ETCD_NAME={}", go_quote(name.as_bytes()));
                println!(
                    "ETCD_INITIAL_CLUSTER={}",
                    go_quote(initial.join(",").as_bytes())
                );
                println!(
                    "ETCD_INITIAL_ADVERTISE_PEER_URLS={}",
                    go_quote(urls.as_bytes())
                );
                println!("ETCD_INITIAL_CLUSTER_STATE=\"existing\"");
            }
            Ok(())
        }
        MemberCommand::Remove { args } => {
            let id = member_id(&args)?;
            let printer = printer_for(&global.write_out, global.hex, false)?;
            let conn = Connection::open(global).await?;
            let cluster = conn.cluster();
            let reply = conn
                .call(|| {
                    let mut cluster = cluster.clone();
                    async move { cluster.member_remove(MemberRemoveRequest { id }).await }
                })
                .await?;
            printer.member_remove(id, &reply)
        }
        MemberCommand::Update {
            peer_urls: urls,
            args,
        } => {
            let id = member_id(&args)?;
            let request = MemberUpdateRequest {
                id,
                peer_ur_ls: peer_urls(&urls)?,
            };
            let printer = printer_for(&global.write_out, global.hex, false)?;
            let conn = Connection::open(global).await?;
            let cluster = conn.cluster();
            let reply = conn
                .call(|| {
                    let (request, mut cluster) = (request.clone(), cluster.clone());
                    async move { cluster.member_update(request).await }
                })
                .await?;
            printer.member_update(id, &reply)
        }
        MemberCommand::List => {
            let printer = printer_for(&global.write_out, global.hex, false)?;
            let conn = Connection::open(global).await?;
            let reply = list(&conn).await?;
            printer.member_list(&reply)
        }
        MemberCommand::Promote { args } => {
            let id = member_id(&args)?;
            let printer = printer_for(&global.write_out, global.hex, false)?;
            let conn = Connection::open(global).await?;
            let cluster = conn.cluster();
            let reply = conn
                .call(|| {
                    let mut cluster = cluster.clone();
                    async move { cluster.member_promote(MemberPromoteRequest { id }).await }
                })
                .await?;
            printer.member_promote(id, &reply)
        }
    }
}

/// The cluster's members, asked as etcdctl 3.4 asks (served by the member, not linearizable).
pub async fn list(
    conn: &Connection,
) -> Result<oxcd_proto::etcdserverpb::MemberListResponse, crate::client::RpcError> {
    let cluster = conn.cluster();
    conn.call(|| {
        let mut cluster = cluster.clone();
        async move {
            cluster
                .member_list(MemberListRequest {
                    linearizable: false,
                })
                .await
        }
    })
    .await
}
