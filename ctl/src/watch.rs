//! `watch [options] [key or prefix] [range_end] [--] [exec-command arg1 arg2 ...]`, its
//! interactive form (`-i`: `watch ...` and `progress` lines on stdin) and the
//! `ETCDCTL_WATCH_KEY`/`ETCDCTL_WATCH_RANGE_END` variables.

use std::io::BufRead;
use std::time::Duration;

use clap::Parser;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use oxcd_proto::etcdserverpb::{
    watch_request::RequestUnion, WatchCreateRequest, WatchProgressRequest, WatchRequest,
    WatchResponse,
};
use oxcd_proto::mvccpb::Event;

use crate::client::{is_unconnected, Connection, RpcError};
use crate::failure::{CtlResult, ExitCode, Failure};
use crate::global::GlobalFlags;
use crate::kv::apply_range_flags;
use crate::output::simple::event_type_name;
use crate::output::text::go_quote;
use crate::output::{printer_for, Printer};

#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    /// Interactive mode
    #[arg(short, long)]
    interactive: bool,
    /// Watch on a prefix if prefix is set
    #[arg(long)]
    prefix: bool,
    /// Revision to start watching
    #[arg(long, default_value = "0", value_parser = crate::args::go_i64)]
    rev: i64,
    /// get the previous key-value pair before the event happens
    #[arg(long)]
    prev_kv: bool,
    #[arg(value_name = "key or prefix] [range_end")]
    args: Vec<String>,
    /// The command run for every event, after `--`
    #[arg(last = true, value_name = "exec-command")]
    exec: Vec<String>,
}

/// One line of interactive input: `watch [options] key [range_end] [-- command ...]`.
#[derive(Parser, Debug)]
#[command(no_binary_name = true)]
struct InteractiveLine {
    #[command(flatten)]
    watch: WatchArgs,
}

fn bad_args(message: &str) -> Failure {
    Failure::new(ExitCode::BadArgs, message)
}

struct WatchEnv {
    key: String,
    range_end: String,
}

impl WatchEnv {
    fn read() -> CtlResult<WatchEnv> {
        let var = |name| std::env::var(name).unwrap_or_default();
        let env = WatchEnv {
            key: var("ETCDCTL_WATCH_KEY"),
            range_end: var("ETCDCTL_WATCH_RANGE_END"),
        };
        if env.key.is_empty() && !env.range_end.is_empty() {
            return Err(bad_args(&format!(
                "ETCDCTL_WATCH_KEY is empty but got ETCDCTL_WATCH_RANGE_END={}",
                go_quote(env.range_end.as_bytes())
            )));
        }
        Ok(env)
    }

    /// The key and range end to watch: the variables' or the arguments', never both.
    fn ranges(&self, args: &[String]) -> CtlResult<Vec<String>> {
        if self.key.is_empty() {
            if args.is_empty() {
                return Err(bad_args("bad number of arguments"));
            }
            return Ok(args.to_vec());
        }
        if !args.is_empty() {
            return Err(bad_args(
                "bad number of arguments (found conflicting environment key)",
            ));
        }
        let mut ranges = vec![self.key.clone()];
        if !self.range_end.is_empty() {
            ranges.push(self.range_end.clone());
        }
        Ok(ranges)
    }
}

impl WatchArgs {
    fn create_request(&self, ranges: &[String]) -> CtlResult<WatchCreateRequest> {
        let mut request = WatchCreateRequest {
            key: ranges[0].clone().into_bytes(),
            start_revision: self.rev,
            prev_kv: self.prev_kv,
            ..WatchCreateRequest::default()
        };
        if ranges.len() == 2 {
            if self.prefix {
                return Err(bad_args(
                    "`range_end` and `--prefix` are mutually exclusive",
                ));
            }
            request.range_end = ranges[1].clone().into_bytes();
        }
        apply_range_flags(&mut request.key, &mut request.range_end, self.prefix, false);
        Ok(request)
    }
}

/// Whether the raw command line has a `--` after `watch` with nothing behind it.
fn dangling_separator() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let after_watch = args.iter().position(|a| a == "watch").map_or(0, |i| i + 1);
    args[after_watch..].last().map(String::as_str) == Some("--")
}

pub async fn watch(global: &GlobalFlags, args: WatchArgs) -> CtlResult {
    let env = WatchEnv::read()?;
    if args.interactive {
        return interactive(global, &env).await;
    }
    if dangling_separator() {
        return Err(bad_args(
            "bad number of arguments (found separator --, but no commands)",
        ));
    }
    let ranges = env.ranges(&args.args)?;
    let request = args.create_request(&ranges)?;
    let printer = printer_for(&global.write_out, global.hex, false)?;
    let conn = Connection::open(global).await?;
    let (_progress, progress_requests) = mpsc::channel(1);
    print_watch(
        &conn,
        request,
        progress_requests,
        printer.as_ref(),
        &args.exec,
    )
    .await?;
    Err(Failure::new(
        ExitCode::Interrupted,
        "watch is canceled by the server",
    ))
}

async fn interactive(global: &GlobalFlags, env: &WatchEnv) -> CtlResult {
    let conn = Connection::open(global).await?;
    let (lines, mut line_receiver) = mpsc::unbounded_channel();
    // Reading stdin blocks, so it has its own thread; the watches run on the runtime.
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut progress_senders = Vec::new();
    loop {
        let line = match line_receiver.recv().await {
            Some(Ok(line)) => line,
            Some(Err(e)) => {
                return Err(Failure::new(
                    ExitCode::InvalidInput,
                    format!("Error reading watch request line: {e}"),
                ))
            }
            None => {
                return Err(Failure::new(
                    ExitCode::InvalidInput,
                    "Error reading watch request line: EOF",
                ))
            }
        };
        let words = crate::txn::argify(&line);
        match words.first().map(String::as_str) {
            None => eprintln!("Invalid command: {line} (watch and progress supported)"),
            Some("watch") => {
                if words.len() < 2 && env.key.is_empty() {
                    eprintln!("Invalid command {line} (command type or key is not provided)");
                    continue;
                }
                if words.last().map(String::as_str) == Some("--") {
                    return Err(bad_args(
                        "bad number of arguments (found separator --, but no commands)",
                    ));
                }
                let parsed = InteractiveLine::try_parse_from(&words[1..])
                    .map_err(|e| bad_args(&crate::failure::go_flag_error(&e)))?
                    .watch;
                let ranges = env.ranges(&parsed.args)?;
                let request = match parsed.create_request(&ranges) {
                    Ok(request) => request,
                    Err(e) => {
                        eprintln!("Invalid command {line} ({})", e.message);
                        continue;
                    }
                };
                let (progress, progress_requests) = mpsc::channel(1);
                progress_senders.push(progress);
                let conn = conn.clone();
                let printer = printer_for(&global.write_out, global.hex, false)?;
                tokio::spawn(async move {
                    if let Err(failure) = print_watch(
                        &conn,
                        request,
                        progress_requests,
                        printer.as_ref(),
                        &parsed.exec,
                    )
                    .await
                    {
                        failure.exit();
                    }
                });
            }
            Some("progress") => {
                for sender in &progress_senders {
                    let _ = sender.send(()).await;
                }
            }
            Some(_) => eprintln!("Invalid command {line} (only support watch)"),
        }
    }
}

/// Watches until the server ends the watch, printing every response the Go client would hand
/// etcdctl (not the creation acknowledgement) and running `exec` once per event.
async fn print_watch(
    conn: &Connection,
    create: WatchCreateRequest,
    mut progress_requests: mpsc::Receiver<()>,
    printer: &dyn Printer,
    exec: &[String],
) -> CtlResult {
    let (requests, mut replies) = open_stream(conn, create).await?;
    let mut pending: Option<WatchResponse> = None;
    loop {
        let reply = tokio::select! {
            reply = replies.next() => reply,
            Some(()) = progress_requests.recv() => {
                let progress = WatchRequest {
                    request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
                };
                let _ = requests.send(progress).await;
                continue;
            }
        };
        let mut reply = match reply {
            Some(Ok(reply)) => reply,
            Some(Err(status)) => {
                eprintln!("watch was canceled ({})", RpcError::from_status(&status).0);
                return Ok(());
            }
            None => return Ok(()),
        };
        // A large response arrives in fragments; the client reassembles it.
        if let Some(mut earlier) = pending.take() {
            earlier.events.append(&mut reply.events);
            earlier.fragment = reply.fragment;
            reply = earlier;
        }
        if reply.fragment {
            pending = Some(reply);
            continue;
        }
        if reply.created && reply.events.is_empty() && !reply.canceled {
            continue;
        }
        if reply.canceled {
            eprintln!("watch was canceled ({})", cancel_error(&reply));
        }
        let progress_notify = !reply.canceled
            && !reply.created
            && reply.events.is_empty()
            && reply.compact_revision == 0;
        if progress_notify {
            println!(
                "progress notify: {}",
                reply.header.as_ref().map_or(0, |h| h.revision)
            );
        }
        {
            // Interactive watches print from several tasks; each response stays in one piece.
            let _whole_response = std::io::stdout().lock();
            printer.watch(&reply)?;
        }
        if !exec.is_empty() {
            let revision = reply.header.as_ref().map_or(0, |h| h.revision);
            for event in &reply.events {
                run_exec(exec, revision, event).await?;
            }
        }
        if reply.canceled {
            return Ok(());
        }
    }
}

/// What clientv3's `WatchResponse.Err()` says about a cancelled watch.
fn cancel_error(reply: &WatchResponse) -> String {
    if reply.compact_revision != 0 {
        return "etcdserver: mvcc: required revision has been compacted".into();
    }
    if reply.cancel_reason.is_empty() {
        return "etcdserver: mvcc: required revision is a future revision".into();
    }
    RpcError::from_status(&tonic::Status::failed_precondition(
        reply.cancel_reason.clone(),
    ))
    .0
}

type Replies = tonic::Streaming<WatchResponse>;

/// Opens the watch stream, waiting for a connection as the Go client does (no deadline).
async fn open_stream(
    conn: &Connection,
    create: WatchCreateRequest,
) -> CtlResult<(mpsc::Sender<WatchRequest>, Replies)> {
    loop {
        let (requests, receiver) = mpsc::channel(4);
        let first = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create.clone())),
        };
        let _ = requests.send(first).await;
        let mut request =
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
        // WithRequireLeader: a member cut off from its leader ends the watch instead of idling.
        request.metadata_mut().insert(
            "hasleader",
            tonic::metadata::MetadataValue::from_static("true"),
        );
        match conn.watch().watch(request).await {
            Ok(replies) => return Ok((requests, replies.into_inner())),
            Err(status) if is_unconnected(&status) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(status) => return Err(RpcError::from_status(&status).into()),
        }
    }
}

/// Runs the `--` command for one event with the event in `ETCD_WATCH_*` variables.
async fn run_exec(exec: &[String], revision: i64, event: &Event) -> CtlResult {
    let kv = event.kv.clone().unwrap_or_default();
    let status = tokio::process::Command::new(&exec[0])
        .args(&exec[1..])
        .env("ETCD_WATCH_REVISION", revision.to_string())
        .env(
            "ETCD_WATCH_EVENT_TYPE",
            go_quote(event_type_name(event.r#type).as_bytes()),
        )
        .env("ETCD_WATCH_KEY", go_quote(&kv.key))
        .env("ETCD_WATCH_VALUE", go_quote(&kv.value))
        .status()
        .await;
    let error = match status {
        Ok(status) if status.success() => return Ok(()),
        Ok(status) => match status.code() {
            Some(code) => format!("exit status {code}"),
            None => format!("signal: {status}"),
        },
        Err(e) => format!("exec: {}: {e}", go_quote(exec[0].as_bytes())),
    };
    let quoted: Vec<String> = exec.iter().map(|a| go_quote(a.as_bytes())).collect();
    eprintln!("command [{}] error ({error})", quoted.join(" "));
    std::process::exit(1)
}
