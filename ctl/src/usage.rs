//! The usage text etcdctl (cobra with etcdctl's template) prints on stdout when a command line
//! has a bad flag: NAME, USAGE, DESCRIPTION, OPTIONS and GLOBAL OPTIONS, tab-aligned the way
//! Go's text/tabwriter aligns them.

use clap::{Arg, ArgAction, Command};

/// etcdctl 3.4's global flags, as its usage lists them (`name`, shorthand, shown default,
/// usage). Some exist only for compatibility of the listing (DNS discovery).
const GLOBAL_FLAGS: &[(&str, &str, &str, &str)] = &[
    ("cacert", "", "=\"\"", "verify certificates of TLS-enabled secure servers using this CA bundle"),
    ("cert", "", "=\"\"", "identify secure client using this TLS certificate file"),
    ("command-timeout", "", "=5s", "timeout for short running command (excluding dial timeout)"),
    ("debug", "", "[=false]", "enable client-side debug logging"),
    ("dial-timeout", "", "=2s", "dial timeout for client connections"),
    ("discovery-srv", "d", "=\"\"", "domain name to query for SRV records describing cluster endpoints"),
    ("discovery-srv-name", "", "=\"\"", "service name to query when using DNS discovery"),
    ("endpoints", "", "=[127.0.0.1:2379]", "gRPC endpoints"),
    ("hex", "", "[=false]", "print byte strings as hex encoded strings"),
    ("insecure-discovery", "", "[=true]", "accept insecure SRV records describing cluster endpoints"),
    ("insecure-skip-tls-verify", "", "[=false]", "skip server certificate verification (CAUTION: this option should be enabled only for testing purposes)"),
    ("insecure-transport", "", "[=true]", "disable transport security for client connections"),
    ("keepalive-time", "", "=2s", "keepalive time for client connections"),
    ("keepalive-timeout", "", "=6s", "keepalive timeout for client connections"),
    ("key", "", "=\"\"", "identify secure client using this TLS key file"),
    ("password", "", "=\"\"", "password for authentication (if this option is used, --user option shouldn't include password)"),
    ("user", "", "=\"\"", "username[:password] for authentication (prompt if password is not supplied)"),
    ("write-out", "w", "=\"simple\"", "set the output format (fields, json, protobuf, simple, table)"),
];

/// Whether `name` is one of etcdctl's global flags.
pub fn is_global_flag(name: &str) -> bool {
    GLOBAL_FLAGS.iter().any(|(global, ..)| *global == name)
}

/// cobra's `Use` of each command: its name and argument synopsis.
const USE_LINES: &[(&str, &str)] = &[
    ("get", "get [options] <key> [range_end]"),
    (
        "put",
        "put [options] <key> <value> (<value> can also be given from stdin)",
    ),
    ("del", "del [options] <key> [range_end]"),
    ("txn", "txn [options]"),
    ("compaction", "compaction [options] <revision>"),
    (
        "watch",
        "watch [options] [key or prefix] [range_end] [--] [exec-command arg1 arg2 ...]",
    ),
    ("lease grant", "grant <ttl>"),
    ("lease revoke", "revoke <leaseID>"),
    ("lease timetolive", "timetolive <leaseID> [options]"),
    ("lease keep-alive", "keep-alive [options] <leaseID>"),
    ("member add", "add <memberName> [options]"),
    ("member remove", "remove <memberID>"),
    ("member update", "update <memberID> [options]"),
    ("member promote", "promote <memberID>"),
    ("move-leader", "move-leader <transferee-member-id>"),
    ("hashkv", "hashkv <data-dir>"),
    ("check", "check <subcommand>"),
    ("check perf", "perf [options]"),
    ("check datascale", "datascale [options]"),
    ("user add", "add <user name or user:password> [options]"),
    ("user delete", "delete <user name>"),
    ("user get", "get <user name> [options]"),
    ("user passwd", "passwd <user name> [options]"),
    ("user grant-role", "grant-role <user name> <role name>"),
    ("user revoke-role", "revoke-role <user name> <role name>"),
    ("role add", "add <role name>"),
    ("role delete", "delete <role name>"),
    ("role get", "get <role name>"),
    (
        "role grant-permission",
        "grant-permission [options] <role name> <permission type> <key> [endkey]",
    ),
    (
        "role revoke-permission",
        "revoke-permission <role name> <key> [endkey]",
    ),
    ("lease", "lease <subcommand>"),
    ("member", "member <subcommand>"),
    ("endpoint", "endpoint <subcommand>"),
    ("alarm", "alarm <subcommand>"),
    ("user", "user <subcommand>"),
    ("role", "role <subcommand>"),
    ("auth", "auth <enable or disable>"),
];

/// The commands etcdctl describes at length.
const DESCRIPTIONS: &[(&str, &str)] = &[
    ("put", "Puts the given key into the store.

When <value> begins with '-', <value> is interpreted as a flag.
Insert '--' for workaround:

$ put <key> -- <value>
$ put -- <key> <value>

If <value> isn't given as a command line argument and '--ignore-value' is not specified,
this command tries to read the value from standard input.

If <lease> isn't given as a command line argument and '--ignore-lease' is not specified,
this command tries to read the value from standard input.

For example,
$ cat file | put <key>
will store the content of the file to <key>."),
    ("member list", "When --write-out is set to simple, this command prints out comma-separated member lists for each endpoint.
The items in the lists are ID, Status, Name, Peer Addrs, Client Addrs, Is Learner."),
    ("member promote", "Promotes a non-voting learner member to a voting one in the cluster."),
    ("endpoint status", "When --write-out is set to simple, this command prints out comma-separated status lists for each endpoint.
The items in the lists are endpoint, ID, version, db size, is leader, is learner, raft term, raft index, raft applied index, errors."),
];

fn lookup(table: &[(&str, &'static str)], key: &str) -> Option<&'static str> {
    table
        .iter()
        .find(|(name, _)| *name == key)
        .map(|(_, text)| *text)
}

/// Flags whose Go type is an integer: their defaults are shown unquoted.
const INTEGER_FLAGS: &[&str] = &["bump-revision", "limit", "rev"];

/// One flag line before alignment: the flag column and its usage.
type FlagLine = (String, String);

fn flag_line(short: &str, name: &str, default: &str, usage: &str) -> FlagLine {
    let head = if short.is_empty() {
        format!("      --{name}{default}")
    } else {
        format!("  -{short}, --{name}{default}")
    };
    (head, usage.to_string())
}

/// The flag as pflag shows it: `[=false]` for booleans, quoted string defaults.
fn local_flag(arg: &Arg) -> Option<(String, FlagLine)> {
    let name = arg.get_long()?.to_string();
    if arg.is_hide_set() || is_global_flag(&name) {
        return None;
    }
    let short = arg.get_short().map(String::from).unwrap_or_default();
    let default = arg
        .get_default_values()
        .first()
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    let shown = match arg.get_action() {
        ArgAction::SetTrue => "[=false]".to_string(),
        // A boolean that defaults to true (`--interactive`) takes an optional `=value`.
        _ if arg.is_require_equals_set() => format!("[={default}]"),
        _ if INTEGER_FLAGS.contains(&name.as_str()) => format!("={default}"),
        _ => format!("={}", crate::output::text::go_quote(default.as_bytes())),
    };
    let usage = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
    Some((name.clone(), flag_line(&short, &name, &shown, &usage)))
}

/// Aligns the flag column as tabwriter(minwidth 0, tabwidth 8, padding 1, '\t') does.
/// A head starting with a tab is an empty first cell and a second one, as in COMMANDS.
fn aligned(lines: &[FlagLine]) -> String {
    let cell = |head: &str| head.trim_start_matches('\t').len();
    let width = lines.iter().map(|(head, _)| cell(head)).max().unwrap_or(0) + 1;
    let column = width.div_ceil(8) * 8;
    lines
        .iter()
        .map(|(head, usage)| {
            let tabs = (column - cell(head)).div_ceil(8);
            format!("{head}{}{usage}\n", "\t".repeat(tabs))
        })
        .collect()
}

/// The usage of the command at `path` (e.g. `["lease", "grant"]`) under `root`.
pub fn usage(root: &Command, path: &[String]) -> String {
    let mut command = root;
    let mut parents: Vec<&Command> = Vec::new();
    for name in path {
        match command.find_subcommand(name) {
            Some(sub) => {
                parents.push(command);
                command = sub;
            }
            None => break,
        }
    }
    let names: Vec<&str> = parents
        .iter()
        .skip(1)
        .map(|c| c.get_name())
        .chain([command.get_name()])
        .collect();
    let key = names.join(" ");
    let use_text = lookup(USE_LINES, &key).unwrap_or(command.get_name());
    let short = command
        .get_about()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut out = format!(
        "NAME:\n\t{} - {short}\n\nUSAGE:\n\tetcdctl {}{use_text} [flags]\n",
        names.join(" "),
        names[..names.len() - 1]
            .iter()
            .map(|n| format!("{n} "))
            .collect::<String>(),
    );
    if command.has_subcommands() {
        out.push_str(&format!(
            "\nAPI VERSION:\n\t{}\n\n\nCOMMANDS:\n",
            crate::global::API_VERSION
        ));
        // Hidden commands are newer than etcdctl 3.4, whose listing this is.
        let mut subcommands: Vec<FlagLine> = command
            .get_subcommands()
            .filter(|sub| !sub.is_hide_set())
            .map(|sub| {
                let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
                (format!("\t{}", sub.get_name()), about)
            })
            .collect();
        subcommands.sort();
        out.push_str(&aligned(&subcommands));
    }
    // oxcdctl's own commands describe themselves (clap's long about).
    let own = command.get_long_about().map(|a| a.to_string());
    if let Some(long) = lookup(DESCRIPTIONS, &key).or(own.as_deref()) {
        out.push_str("\nDESCRIPTION:\n");
        for line in long.split('\n') {
            out.push_str(&format!("\t{line}\n"));
        }
    }
    let mut local: Vec<(String, FlagLine)> =
        command.get_arguments().filter_map(local_flag).collect();
    local.push((
        "help".into(),
        flag_line(
            "h",
            "help",
            "[=false]",
            &format!("help for {}", command.get_name()),
        ),
    ));
    local.sort_by(|a, b| a.0.cmp(&b.0));
    let local: Vec<FlagLine> = local.into_iter().map(|(_, line)| line).collect();
    out.push_str(&format!("\nOPTIONS:\n{}", aligned(&local)));
    // A parent's own flags (endpoint's --cluster) are inherited, listed with the globals.
    let mut global: Vec<(String, FlagLine)> = GLOBAL_FLAGS
        .iter()
        .map(|(name, short, default, usage)| {
            (name.to_string(), flag_line(short, name, default, usage))
        })
        .collect();
    for parent in parents.iter().skip(1) {
        global.extend(parent.get_arguments().filter_map(|arg| {
            let name = arg.get_long()?;
            let usage = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            Some((name.to_string(), flag_line("", name, "[=false]", &usage)))
        }));
    }
    global.sort_by(|a, b| a.0.cmp(&b.0));
    let global: Vec<FlagLine> = global.into_iter().map(|(_, line)| line).collect();
    out.push_str(&format!("\nGLOBAL OPTIONS:\n{}\n", aligned(&global)));
    out
}

/// The subcommand path named on the command line, as far as it names commands.
pub fn command_path(root: &Command, args: &[String]) -> Vec<String> {
    let mut path = Vec::new();
    let mut command = root;
    for arg in args.iter().skip(1) {
        if let Some(sub) = command.find_subcommand(arg) {
            path.push(arg.clone());
            command = sub;
        }
    }
    path
}
