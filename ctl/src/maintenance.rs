//! `alarm list|disarm`, `defrag`, `move-leader` and `downgrade validate|enable|cancel`.

use oxcd_proto::etcdserverpb::{
    alarm_request::AlarmAction, downgrade_request::DowngradeAction, AlarmRequest, AlarmResponse,
    AlarmType, DefragmentRequest, DowngradeRequest, MoveLeaderRequest,
};

use crate::args::parse_uint;
use crate::client::{Connection, RpcError};
use crate::endpoint::{status, targets};
use crate::failure::{CtlResult, ExitCode, Failure};
use crate::global::GlobalFlags;
use crate::output::printer_for;

#[derive(clap::Subcommand, Debug)]
pub enum AlarmCommand {
    /// Disarms all alarms
    Disarm {
        #[arg(hide = true)]
        args: Vec<String>,
    },
    /// Lists all alarms
    List {
        #[arg(hide = true)]
        args: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct DefragArgs {
    /// use all endpoints from the cluster member list
    #[arg(long)]
    cluster: bool,
    #[arg(
        long,
        default_value = "",
        help = "Optional. If present, defragments a data directory not in use by etcd."
    )]
    data_dir: String,
}

#[derive(clap::Args, Debug)]
pub struct MoveLeaderArgs {
    #[arg(value_name = "transferee-member-id")]
    args: Vec<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum DowngradeCommand {
    /// Validate downgrade capability before starting downgrade
    Validate {
        #[arg(value_name = "TARGET_VERSION")]
        args: Vec<String>,
    },
    /// Start a downgrade action to cluster
    Enable {
        #[arg(value_name = "TARGET_VERSION")]
        args: Vec<String>,
    },
    /// Cancel the ongoing downgrade action to cluster
    Cancel {
        /// etcdctl ignores arguments here.
        #[arg(hide = true)]
        args: Vec<String>,
    },
}

async fn alarm_call(conn: &Connection, request: AlarmRequest) -> Result<AlarmResponse, RpcError> {
    let maintenance = conn.maintenance();
    conn.call(|| {
        let mut maintenance = maintenance.clone();
        async move { maintenance.alarm(request).await }
    })
    .await
}

pub async fn alarm(global: &GlobalFlags, command: AlarmCommand) -> CtlResult {
    let (name, args) = match &command {
        AlarmCommand::Disarm { args } => ("disarm", args),
        AlarmCommand::List { args } => ("list", args),
    };
    if !args.is_empty() {
        return Err(Failure::new(
            ExitCode::BadArgs,
            format!("alarm {name} command accepts no arguments"),
        ));
    }
    let printer = printer_for(&global.write_out, global.hex, false)?;
    let conn = Connection::open(global).await?;
    let list = AlarmRequest {
        action: AlarmAction::Get as i32,
        member_id: 0,
        alarm: AlarmType::None as i32,
    };
    let reply = match command {
        AlarmCommand::List { .. } => alarm_call(&conn, list).await?,
        AlarmCommand::Disarm { .. } => {
            // clientv3 disarms every listed alarm one by one and answers with their union,
            // without a header.
            let mut all = AlarmResponse::default();
            for active in alarm_call(&conn, list).await?.alarms {
                let disarm = AlarmRequest {
                    action: AlarmAction::Deactivate as i32,
                    member_id: active.member_id,
                    alarm: active.alarm,
                };
                all.alarms.extend(alarm_call(&conn, disarm).await?.alarms);
            }
            all
        }
    };
    printer.alarm(&reply)
}

pub async fn defrag(global: &GlobalFlags, args: DefragArgs) -> CtlResult {
    if !args.data_dir.is_empty() {
        crate::data_dir::defrag::run(&args.data_dir);
        return Ok(());
    }
    printer_for(&global.write_out, global.hex, false)?;
    let conn = Connection::open(global).await?;
    let mut failures = 0;
    for endpoint in targets(global, args.cluster).await? {
        let member = conn.to_endpoint(&endpoint).await?;
        let maintenance = member.maintenance();
        let reply = member
            .call(|| {
                let mut maintenance = maintenance.clone();
                async move { maintenance.defragment(DefragmentRequest {}).await }
            })
            .await;
        match reply {
            Ok(_) => println!("Finished defragmenting etcd member[{endpoint}]"),
            Err(e) => {
                eprintln!("Failed to defragment etcd member[{endpoint}] ({})", e.0);
                failures += 1;
            }
        }
    }
    if failures != 0 {
        std::process::exit(ExitCode::Error as i32);
    }
    Ok(())
}

/// Finds the leader among `--endpoints` and asks it to hand leadership to the target.
pub async fn move_leader(global: &GlobalFlags, args: MoveLeaderArgs) -> CtlResult {
    let [target] = args.args.as_slice() else {
        return Err(Failure::new(
            ExitCode::BadArgs,
            "move-leader command needs 1 argument",
        ));
    };
    let target = parse_uint(target, 16).map_err(|e| Failure::new(ExitCode::BadArgs, e))?;
    let printer = printer_for(&global.write_out, global.hex, false)?;
    let conn = Connection::open(global).await?;
    let mut leader = None;
    for endpoint in conn.endpoints() {
        let reply = status(&conn, endpoint).await??;
        let member_id = reply.header.as_ref().map_or(0, |h| h.member_id);
        if member_id == reply.leader {
            leader = Some((conn.to_endpoint(endpoint).await?, reply.leader));
            break;
        }
    }
    let Some((leader_conn, leader_id)) = leader else {
        return Err(Failure::new(
            ExitCode::BadArgs,
            format!(
                "no leader endpoint given at [{}]",
                conn.endpoints().join(" ")
            ),
        ));
    };
    let maintenance = leader_conn.maintenance();
    let reply = leader_conn
        .call(|| {
            let mut maintenance = maintenance.clone();
            async move {
                maintenance
                    .move_leader(MoveLeaderRequest { target_id: target })
                    .await
            }
        })
        .await?;
    printer.move_leader(leader_id, target, &reply)
}

/// `downgrade validate|enable <TARGET_VERSION>` and `downgrade cancel`: one Downgrade call.
pub async fn downgrade(global: &GlobalFlags, command: DowngradeCommand) -> CtlResult {
    let (action, name, version) = match command {
        DowngradeCommand::Validate { args } => {
            (DowngradeAction::Validate, "validate", target(args)?)
        }
        DowngradeCommand::Enable { args } => (DowngradeAction::Enable, "enable", target(args)?),
        DowngradeCommand::Cancel { .. } => (DowngradeAction::Cancel, "cancel", String::new()),
    };
    let printer = printer_for(&global.write_out, global.hex, false)?;
    let conn = Connection::open(global).await?;
    let maintenance = conn.maintenance();
    let request = DowngradeRequest {
        action: action as i32,
        version,
    };
    let reply = conn
        .call(|| {
            let mut maintenance = maintenance.clone();
            let request = request.clone();
            async move { maintenance.downgrade(request).await }
        })
        .await?;
    printer.downgrade(name, &reply)
}

/// The one target version argument, checked as etcdctl checks it.
fn target(args: Vec<String>) -> CtlResult<String> {
    let bad = |message: &str| Err(Failure::new(ExitCode::BadArgs, message));
    match <[String; 1]>::try_from(args) {
        Ok([version]) if version.is_empty() => bad("target version not provided"),
        Ok([version]) => Ok(version),
        Err(args) if args.is_empty() => bad("TARGET_VERSION not provided"),
        Err(_) => bad("too many arguments"),
    }
}
