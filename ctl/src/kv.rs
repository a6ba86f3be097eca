//! `get`, `put`, `del` and `compaction`. The request builders are shared with `txn`, whose
//! operations use the same flags and arguments.

use std::io::Read;

use oxcd_proto::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest,
};

use crate::args::{go_i64, parse_int, prefix_range_end};
use crate::client::Connection;
use crate::failure::{CtlResult, ExitCode, Failure};
use crate::global::GlobalFlags;
use crate::output::printer_for;

fn bad_args(message: &str) -> Failure {
    Failure::new(ExitCode::BadArgs, message)
}

#[derive(clap::Args, Debug, Clone)]
pub struct GetArgs {
    /// Linearizable(l) or Serializable(s)
    #[arg(long, default_value = "l")]
    consistency: String,
    /// Order of results; ASCEND or DESCEND (ASCEND by default)
    #[arg(long, default_value = "")]
    order: String,
    /// Sort target; CREATE, KEY, MODIFY, VALUE, or VERSION
    #[arg(long, default_value = "")]
    sort_by: String,
    /// Maximum number of results
    #[arg(long, default_value = "0", value_parser = go_i64, allow_negative_numbers = true)]
    limit: i64,
    /// Get keys with matching prefix
    #[arg(long)]
    prefix: bool,
    /// Get keys that are greater than or equal to the given key using byte compare
    #[arg(long)]
    from_key: bool,
    /// Specify the kv revision
    #[arg(long, default_value = "0", value_parser = go_i64, allow_negative_numbers = true)]
    rev: i64,
    /// Get only the keys
    #[arg(long)]
    keys_only: bool,
    /// Get only the count (etcdctl 3.5; not in 3.4's usage)
    #[arg(long, hide = true)]
    count_only: bool,
    /// Only write values when using the "simple" output format
    #[arg(long)]
    print_value_only: bool,
    #[arg(value_name = "key [range_end]")]
    args: Vec<String>,
}

impl GetArgs {
    pub fn request(&self) -> CtlResult<RangeRequest> {
        if self.args.is_empty() {
            return Err(bad_args(
                "get command needs one argument as key and an optional argument as range_end",
            ));
        }
        if self.prefix && self.from_key {
            return Err(bad_args(
                "`--prefix` and `--from-key` cannot be set at the same time, choose one",
            ));
        }
        if self.keys_only && self.count_only {
            return Err(bad_args(
                "`--keys-only` and `--count-only` cannot be set at the same time, choose one",
            ));
        }
        let mut request = RangeRequest {
            key: self.args[0].clone().into_bytes(),
            limit: self.limit,
            revision: self.rev.max(0),
            keys_only: self.keys_only,
            count_only: self.count_only,
            ..RangeRequest::default()
        };
        match self.consistency.as_str() {
            "s" => request.serializable = true,
            "l" => {}
            other => {
                return Err(Failure::new(
                    ExitCode::BadFeature,
                    format!(
                        "unknown consistency flag {}",
                        crate::output::text::go_quote(other.as_bytes())
                    ),
                ))
            }
        }
        if let Some(end) = self.args.get(1) {
            if self.prefix || self.from_key {
                return Err(too_many_with_range());
            }
            request.range_end = end.clone().into_bytes();
        }
        let order = match self.order.to_uppercase().as_str() {
            "ASCEND" => SortOrder::Ascend,
            "DESCEND" => SortOrder::Descend,
            "" => SortOrder::None,
            _ => {
                return Err(Failure::new(
                    ExitCode::BadFeature,
                    format!("bad sort order {}", self.order),
                ))
            }
        };
        let target = match self.sort_by.to_uppercase().as_str() {
            "CREATE" => SortTarget::Create,
            "KEY" | "" => SortTarget::Key,
            "MODIFY" => SortTarget::Mod,
            "VALUE" => SortTarget::Value,
            "VERSION" => SortTarget::Version,
            _ => {
                return Err(Failure::new(
                    ExitCode::BadFeature,
                    format!("bad sort target {}", self.sort_by),
                ))
            }
        };
        // clientv3 drops an ascending key order: the server returns keys in that order anyway.
        let order = if target == SortTarget::Key && order == SortOrder::Ascend {
            SortOrder::None
        } else {
            order
        };
        request.sort_order = order as i32;
        request.sort_target = target as i32;
        apply_range_flags(
            &mut request.key,
            &mut request.range_end,
            self.prefix,
            self.from_key,
        );
        Ok(request)
    }
}

fn too_many_with_range() -> Failure {
    bad_args("too many arguments, only accept one argument when `--prefix` or `--from-key` is set")
}

/// `--prefix` and `--from-key` as clientv3 turns them into a range; an empty key with either
/// means every key.
pub fn apply_range_flags(key: &mut Vec<u8>, range_end: &mut Vec<u8>, prefix: bool, from_key: bool) {
    if prefix {
        if key.is_empty() {
            *key = vec![0];
            *range_end = vec![0];
        } else {
            *range_end = prefix_range_end(key);
        }
    }
    if from_key {
        if key.is_empty() {
            *key = vec![0];
        }
        *range_end = vec![0];
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct PutArgs {
    /// lease ID (in hexadecimal) to attach to the key
    #[arg(long, default_value = "0")]
    lease: String,
    /// return the previous key-value pair before modification
    #[arg(long)]
    prev_kv: bool,
    /// updates the key using its current value
    #[arg(long)]
    ignore_value: bool,
    /// updates the key using its current lease
    #[arg(long)]
    ignore_lease: bool,
    #[arg(value_name = "key> <value")]
    args: Vec<String>,
}

impl PutArgs {
    /// The request; the value comes from stdin when it is not an argument.
    pub fn request(&self, stdin: &mut dyn Read) -> CtlResult<PutRequest> {
        const USAGE: &str = "put command needs 1 argument and input from stdin or 2 arguments";
        let key = self.args.first().ok_or_else(|| bad_args(USAGE))?;
        if self.ignore_value && self.args.len() > 1 {
            return Err(bad_args(
                "put command needs only 1 argument when 'ignore-value' is set",
            ));
        }
        let value = if self.ignore_value {
            Vec::new()
        } else if let Some(value) = self.args.get(1) {
            value.clone().into_bytes()
        } else {
            let mut value = Vec::new();
            match stdin.read_to_end(&mut value) {
                Ok(_) if !value.is_empty() => value,
                _ => return Err(bad_args(USAGE)),
            }
        };
        let lease = parse_int(&self.lease, 16).map_err(|e| {
            Failure::new(
                ExitCode::BadArgs,
                format!("bad lease ID ({e}), expecting ID in Hex"),
            )
        })?;
        Ok(PutRequest {
            key: key.clone().into_bytes(),
            value,
            lease,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        })
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct DelArgs {
    /// delete keys with matching prefix
    #[arg(long)]
    prefix: bool,
    /// return deleted key-value pairs
    #[arg(long)]
    prev_kv: bool,
    /// delete keys that are greater than or equal to the given key using byte compare
    #[arg(long)]
    from_key: bool,
    #[arg(value_name = "key [range_end]")]
    args: Vec<String>,
}

impl DelArgs {
    pub fn request(&self) -> CtlResult<DeleteRangeRequest> {
        if self.args.is_empty() || self.args.len() > 2 {
            return Err(bad_args(
                "del command needs one argument as key and an optional argument as range_end",
            ));
        }
        if self.prefix && self.from_key {
            return Err(bad_args(
                "`--prefix` and `--from-key` cannot be set at the same time, choose one",
            ));
        }
        let mut request = DeleteRangeRequest {
            key: self.args[0].clone().into_bytes(),
            prev_kv: self.prev_kv,
            ..DeleteRangeRequest::default()
        };
        if let Some(end) = self.args.get(1) {
            if self.prefix || self.from_key {
                return Err(too_many_with_range());
            }
            request.range_end = end.clone().into_bytes();
        }
        apply_range_flags(
            &mut request.key,
            &mut request.range_end,
            self.prefix,
            self.from_key,
        );
        Ok(request)
    }
}

#[derive(clap::Args, Debug)]
pub struct CompactionArgs {
    /// 'true' to wait for compaction to physically remove all old revisions
    #[arg(long)]
    physical: bool,
    #[arg(value_name = "revision")]
    args: Vec<String>,
}

pub async fn get(global: &GlobalFlags, args: GetArgs) -> CtlResult {
    let request = args.request()?;
    printer_for(&global.write_out, global.hex, false)?;
    let conn = Connection::open(global).await?;
    let kv = conn.kv();
    let reply = conn
        .call(|| {
            let (request, mut kv) = (request.clone(), kv.clone());
            async move { kv.range(request).await }
        })
        .await?;
    if args.print_value_only && global.write_out != "simple" {
        return Err(bad_args(
            "print-value-only is only for `--write-out=simple`",
        ));
    }
    if args.count_only && global.write_out != "fields" {
        return Err(bad_args("--count-only is only for `--write-out=fields`"));
    }
    printer_for(&global.write_out, global.hex, args.print_value_only)?.get(&reply)
}

pub async fn put(global: &GlobalFlags, args: PutArgs) -> CtlResult {
    let request = args.request(&mut std::io::stdin())?;
    let printer = printer_for(&global.write_out, global.hex, false)?;
    let conn = Connection::open(global).await?;
    let kv = conn.kv();
    let reply = conn
        .call(|| {
            let (request, mut kv) = (request.clone(), kv.clone());
            async move { kv.put(request).await }
        })
        .await?;
    printer.put(&reply)
}

pub async fn del(global: &GlobalFlags, args: DelArgs) -> CtlResult {
    let request = args.request()?;
    let printer = printer_for(&global.write_out, global.hex, false)?;
    let conn = Connection::open(global).await?;
    let kv = conn.kv();
    let reply = conn
        .call(|| {
            let (request, mut kv) = (request.clone(), kv.clone());
            async move { kv.delete_range(request).await }
        })
        .await?;
    printer.del(&reply)
}

pub async fn compaction(global: &GlobalFlags, args: CompactionArgs) -> CtlResult {
    let [revision] = args.args.as_slice() else {
        return Err(bad_args("compaction command needs 1 argument"));
    };
    let revision = parse_int(revision, 10).map_err(|e| Failure::new(ExitCode::Error, e))?;
    printer_for(&global.write_out, global.hex, false)?;
    let conn = Connection::open(global).await?;
    let kv = conn.kv();
    let request = CompactionRequest {
        revision,
        physical: args.physical,
    };
    conn.call(|| {
        let mut kv = kv.clone();
        async move { kv.compact(request).await }
    })
    .await?;
    println!("compacted revision {revision}");
    Ok(())
}
