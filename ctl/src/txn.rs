//! `txn`: compares, a blank line, success operations, a blank line, failure operations, read
//! from stdin (with prompts when `-i`). Operations are `get`/`put`/`del` command lines with the
//! same flags as the commands.

use std::io::BufRead;

use clap::Parser;

use oxcd_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op, Compare, RequestOp, TxnRequest,
};

use crate::args::parse_int;
use crate::client::Connection;
use crate::failure::{CtlResult, ExitCode, Failure};
use crate::global::GlobalFlags;
use crate::kv::{DelArgs, GetArgs, PutArgs};
use crate::output::printer_for;

#[derive(clap::Args, Debug)]
pub struct TxnArgs {
    /// Input transaction in interactive mode
    #[arg(short, long)]
    interactive: bool,
    #[arg(hide = true)]
    args: Vec<String>,
}

/// One operation line, parsed with the commands' own flags.
#[derive(Parser, Debug)]
#[command(no_binary_name = true)]
enum TxnOp {
    Put(PutArgs),
    Get(GetArgs),
    Del(DelArgs),
}

fn invalid_input(message: impl Into<String>) -> Failure {
    Failure::new(ExitCode::InvalidInput, message)
}

pub async fn txn(global: &GlobalFlags, args: TxnArgs) -> CtlResult {
    if !args.args.is_empty() {
        return Err(Failure::new(
            ExitCode::BadArgs,
            "txn command does not accept argument",
        ));
    }
    let printer = printer_for(&global.write_out, global.hex, false)?;
    let conn = Connection::open(global).await?;
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let prompt = |text: &str| {
        if args.interactive {
            println!("{text}");
        }
    };
    prompt("compares:");
    let compare = read_block(&mut input, parse_compare)?;
    prompt("success requests (get, put, del):");
    let success = read_block(&mut input, parse_op)?;
    prompt("failure requests (get, put, del):");
    let failure = read_block(&mut input, parse_op)?;
    let request = TxnRequest {
        compare,
        success,
        failure,
    };
    let kv = conn.kv();
    // etcdctl commits a txn without a deadline.
    let reply = conn
        .unary(None, || {
            let (request, mut kv) = (request.clone(), kv.clone());
            async move { kv.txn(request).await }
        })
        .await?;
    printer.txn(&reply)
}

/// Lines up to a blank one, each parsed by `parse`; input ending first is an error (`EOF`).
fn read_block<T>(input: &mut dyn BufRead, parse: fn(&str) -> CtlResult<T>) -> CtlResult<Vec<T>> {
    let mut items = Vec::new();
    loop {
        let mut line = String::new();
        let read = input
            .read_line(&mut line)
            .map_err(|e| invalid_input(e.to_string()))?;
        if read == 0 || !line.ends_with('\n') {
            return Err(invalid_input("EOF"));
        }
        let line = line.trim();
        if line.is_empty() {
            return Ok(items);
        }
        items.push(parse(line)?);
    }
}

fn parse_op(line: &str) -> CtlResult<RequestOp> {
    let args = argify(line);
    if args.len() < 2 {
        return Err(invalid_input(format!(
            "invalid txn compare request: {line}"
        )));
    }
    let op = TxnOp::try_parse_from(&args)
        .map_err(|_| invalid_input(format!("invalid txn request: {line}")))?;
    let request = match op {
        // A txn's put never reads its value from stdin: stdin is the transaction.
        TxnOp::Put(put) => request_op::Request::RequestPut(put.request(&mut std::io::empty())?),
        TxnOp::Get(get) => request_op::Request::RequestRange(get.request()?),
        TxnOp::Del(del) => request_op::Request::RequestDeleteRange(del.request()?),
    };
    Ok(RequestOp {
        request: Some(request),
    })
}

/// `target("key") op "value"`, e.g. `mod("foo") > "3"` or `val("foo") = "bar"`.
fn parse_compare(line: &str) -> CtlResult<Compare> {
    let Some((target, rest)) = line.split_once('(') else {
        return Err(invalid_input(format!("malformed comparison: {line}")));
    };
    let (key, op, value) = scan_compare(rest).map_err(|(key, op, value)| {
        invalid_input(format!(
            "malformed comparison: {line}; got {target}({}) {op} {}",
            go_quote_str(&key),
            go_quote_str(&value)
        ))
    })?;
    let result = match op.as_str() {
        "=" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        "<" => CompareResult::Less,
        ">" => CompareResult::Greater,
        _ => return Err(invalid_input(format!("malformed comparison: {line}"))),
    };
    let number = || {
        parse_int(&value, 10)
            .map_err(|_| invalid_input(format!("invalid txn compare request: {line}")))
    };
    let (target, union) = match target {
        "ver" | "version" => (CompareTarget::Version, TargetUnion::Version(number()?)),
        "c" | "create" => (
            CompareTarget::Create,
            TargetUnion::CreateRevision(number()?),
        ),
        "m" | "mod" => (CompareTarget::Mod, TargetUnion::ModRevision(number()?)),
        "val" | "value" => (
            CompareTarget::Value,
            TargetUnion::Value(value.clone().into_bytes()),
        ),
        "lease" => {
            let lease = parse_int(&value, 16)
                .map_err(|_| invalid_input(format!("invalid txn compare request: {line}")))?;
            (CompareTarget::Lease, TargetUnion::Lease(lease))
        }
        other => {
            return Err(invalid_input(format!(
                "malformed comparison: {line} (unknown target {other})"
            )))
        }
    };
    Ok(Compare {
        result: result as i32,
        target: target as i32,
        key: key.into_bytes(),
        range_end: Vec::new(),
        target_union: Some(union),
    })
}

fn go_quote_str(text: &str) -> String {
    crate::output::text::go_quote(text.as_bytes())
}

/// Go's `fmt.Sscanf(rest, "%q) %s %q", ...)`; on failure, whatever was scanned so far.
fn scan_compare(rest: &str) -> Result<(String, String, String), (String, String, String)> {
    let mut scanned = (String::new(), String::new(), String::new());
    let rest = rest.trim_start();
    let Some((key, rest)) = unquote_prefix(rest) else {
        return Err(scanned);
    };
    scanned.0 = key;
    let Some(rest) = rest.strip_prefix(')') else {
        return Err(scanned);
    };
    let rest = rest.trim_start();
    let op_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    if op_end == 0 {
        return Err(scanned);
    }
    scanned.1 = rest[..op_end].to_string();
    let Some((value, _)) = unquote_prefix(rest[op_end..].trim_start()) else {
        return Err(scanned);
    };
    scanned.2 = value;
    Ok(scanned)
}

/// A Go-quoted string ("..." with escapes, or `raw`) at the start of `text`, and what follows.
fn unquote_prefix(text: &str) -> Option<(String, &str)> {
    if let Some(raw) = text.strip_prefix('`') {
        let end = raw.find('`')?;
        return Some((raw[..end].to_string(), &raw[end + 1..]));
    }
    let body = text.strip_prefix('"')?;
    let mut out: Vec<u8> = Vec::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((String::from_utf8_lossy(&out).into_owned(), &body[i + 1..])),
            '\\' => {
                let (_, escape) = chars.next()?;
                match escape {
                    'n' => out.push(b'\n'),
                    't' => out.push(b'\t'),
                    'r' => out.push(b'\r'),
                    'a' => out.push(0x07),
                    'b' => out.push(0x08),
                    'f' => out.push(0x0c),
                    'v' => out.push(0x0b),
                    '\\' | '"' | '\'' => out.push(escape as u8),
                    'x' | 'u' | 'U' => {
                        let digits = match escape {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = (0..digits)
                            .filter_map(|_| chars.next().map(|(_, c)| c))
                            .collect();
                        let code = u32::from_str_radix(&hex, 16).ok()?;
                        if escape == 'x' {
                            out.push(code as u8);
                        } else {
                            let mut buf = [0; 4];
                            out.extend_from_slice(
                                char::from_u32(code)?.encode_utf8(&mut buf).as_bytes(),
                            );
                        }
                    }
                    _ => return None,
                }
            }
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    None
}

/// etcdctl's `argify`: whitespace-separated words, where a "double-quoted" (Go escapes) or
/// 'single-quoted' word may contain spaces.
pub fn argify(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        if rest.starts_with('"') {
            if let Some((word, after)) = unquote_prefix(rest) {
                args.push(word);
                rest = after.trim_start();
                continue;
            }
        }
        if let Some(quoted) = rest.strip_prefix('\'') {
            if let Some(end) = quoted.find('\'') {
                args.push(quoted[..end].to_string());
                rest = quoted[end + 1..].trim_start();
                continue;
            }
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        args.push(rest[..end].to_string());
        rest = rest[end..].trim_start();
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_parse() {
        let c = parse_compare(r#"mod("foo") > "3""#).unwrap();
        assert_eq!(c.key, b"foo");
        assert_eq!(c.result, CompareResult::Greater as i32);
        assert_eq!(c.target_union, Some(TargetUnion::ModRevision(3)));
        let c = parse_compare(r#"val("a b") != "x\ty""#).unwrap();
        assert_eq!(c.key, b"a b");
        assert_eq!(c.target_union, Some(TargetUnion::Value(b"x\ty".to_vec())));
        assert_eq!(
            parse_compare("bogus").unwrap_err().message,
            "malformed comparison: bogus"
        );
        assert_eq!(
            parse_compare(r#"ver("k") = "x""#).unwrap_err().message,
            r#"invalid txn compare request: ver("k") = "x""#
        );
    }

    #[test]
    fn ops_parse_with_command_flags() {
        let op = parse_op("put foo \"bar baz\" --prev-kv").unwrap();
        let Some(request_op::Request::RequestPut(put)) = op.request else {
            panic!("not a put: {op:?}")
        };
        assert_eq!(put.value, b"bar baz");
        assert!(put.prev_kv);
        assert_eq!(
            parse_op("put").unwrap_err().message,
            "invalid txn compare request: put"
        );
        assert_eq!(
            parse_op("frob a b").unwrap_err().message,
            "invalid txn request: frob a b"
        );
    }

    #[test]
    fn argify_splits_like_etcdctl() {
        assert_eq!(
            argify(r#"put k "a b" 'c d' e"#),
            ["put", "k", "a b", "c d", "e"]
        );
    }
}
