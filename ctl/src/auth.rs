//! `user`, `role` and `auth`: etcdctl's commands for users, roles and their permissions, and for
//! turning authentication on and off.
//!
//! etcdctl 3.4's layout where 3.4 and 3.7 differ, as everywhere in oxcdctl: its usage texts, and
//! its output formats (3.7's fields format, for one, drops a zero header revision). `auth status`
//! is etcdctl 3.5+'s and prints what 3.7 prints; it is left out of the usage listing, which is
//! 3.4's (where `auth status` prints the `auth` usage).
//!
//! Like etcdctl, user and role commands wait for an answer as long as it takes (etcdctl gives
//! their calls no deadline), while `auth enable|disable|status` give up after
//! `--command-timeout`; and a format that cannot print an answer fails only after the call was
//! made (a `user add -w table` adds the user).

use std::future::Future;

use tonic::{Response, Status};

use oxcd_proto::authpb::{permission::Type as PermissionType, Permission, UserAddOptions};
use oxcd_proto::etcdserverpb::auth_client::AuthClient;
use oxcd_proto::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGetRequest, AuthRoleGrantPermissionRequest, AuthRoleListRequest,
    AuthRoleRevokePermissionRequest, AuthStatusRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGetRequest,
    AuthUserGrantRoleRequest, AuthUserListRequest, AuthUserRevokeRoleRequest, ResponseHeader,
};

use crate::args::{go_bool, prefix_range_end};
use crate::client::{Connection, RpcError, Transport};
use crate::failure::{CtlResult, ExitCode, Failure};
use crate::global::GlobalFlags;
use crate::output::{printer_for, AuthChange, Printer};
use crate::password;

// Each command takes its arguments as a list and checks their number itself, with etcdctl's
// complaints; the usage lines are in `usage::USE_LINES`.
#[derive(clap::Subcommand, Debug)]
pub enum UserCommand {
    /// Adds a new user
    Add {
        /// Read password from stdin instead of interactive terminal
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
              default_value = "true", action = clap::ArgAction::Set, value_parser = go_bool)]
        interactive: bool,
        /// Supply password from the command line flag
        #[arg(long, default_value = "")]
        new_user_password: String,
        /// Create a user without password (CN based auth only)
        #[arg(long)]
        no_password: bool,
        args: Vec<String>,
    },
    /// Deletes a user
    Delete { args: Vec<String> },
    /// Gets detailed information of a user
    Get {
        /// Show permissions of roles granted to the user
        #[arg(long)]
        detail: bool,
        args: Vec<String>,
    },
    /// Lists all users
    List { args: Vec<String> },
    /// Changes password of user
    Passwd {
        /// If true, read password from stdin instead of interactive terminal
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
              default_value = "true", action = clap::ArgAction::Set, value_parser = go_bool)]
        interactive: bool,
        args: Vec<String>,
    },
    /// Grants a role to a user
    GrantRole { args: Vec<String> },
    /// Revokes a role from a user
    RevokeRole { args: Vec<String> },
}

#[derive(clap::Subcommand, Debug)]
pub enum RoleCommand {
    /// Adds a new role
    Add { args: Vec<String> },
    /// Deletes a role
    Delete { args: Vec<String> },
    /// Gets detailed information of a role
    Get { args: Vec<String> },
    /// Lists all roles
    List { args: Vec<String> },
    /// Grants a key to a role
    GrantPermission {
        /// grant a prefix permission
        #[arg(long)]
        prefix: bool,
        /// grant a permission of keys that are greater than or equal to the given key using byte compare
        #[arg(long)]
        from_key: bool,
        args: Vec<String>,
    },
    /// Revokes a key from a role
    RevokePermission {
        /// revoke a prefix permission
        #[arg(long)]
        prefix: bool,
        /// revoke a permission of keys that are greater than or equal to the given key using byte compare
        #[arg(long)]
        from_key: bool,
        args: Vec<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum AuthCommand {
    /// Enables authentication
    Enable { args: Vec<String> },
    /// Disables authentication
    Disable { args: Vec<String> },
    /// Returns authentication status
    #[command(hide = true)]
    Status { args: Vec<String> },
}

fn bad_args(message: impl Into<String>) -> Failure {
    Failure::new(ExitCode::BadArgs, message)
}

/// The single argument etcdctl requires, or its complaint.
fn one_arg<'a>(args: &'a [String], command: &str, what: &str) -> CtlResult<&'a str> {
    match args {
        [arg] => Ok(arg),
        _ => Err(bad_args(format!(
            "{command} command requires {what} as its argument"
        ))),
    }
}

fn no_args(args: &[String], complaint: &str) -> CtlResult {
    if args.is_empty() {
        Ok(())
    } else {
        Err(bad_args(complaint))
    }
}

/// The output format and the connection one command uses.
struct Session {
    printer: Box<dyn Printer>,
    conn: Connection,
}

impl Session {
    /// Checks the format, then connects (and authenticates `--user`), as etcdctl does once a
    /// command's arguments and any new password are read. A `--user` password is asked for
    /// before the format is looked at, as etcdctl asks (the connection reuses the answer).
    async fn open(global: &GlobalFlags) -> CtlResult<Session> {
        global.credentials()?;
        let printer = printer_for(&global.write_out, global.hex, false)?;
        let conn = Connection::open(global).await?;
        Ok(Session { printer, conn })
    }

    /// One Auth call without a deadline (etcdctl's user and role commands pass
    /// `context.TODO()`), retried until the cluster can be reached.
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, RpcError>
    where
        F: FnMut(AuthClient<Transport>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let auth = self.conn.auth();
        self.conn.unary(None, || call(auth.clone())).await
    }

    fn changed(&self, change: AuthChange, header: Option<&ResponseHeader>) -> CtlResult {
        self.printer.auth_change(&change, header)
    }
}

/// A new password as `user add` and `user passwd` read it: one word of stdin with
/// `--interactive=false`, else asked twice on the terminal.
fn new_password(user: &str, interactive: bool) -> CtlResult<String> {
    if !interactive {
        return Ok(password::scan_word());
    }
    let ask = |prompt: String| {
        password::ask(&prompt).map_err(|e| bad_args(format!("failed to ask password: {e}")))
    };
    let first = ask(format!("Password of {user}: "))?;
    if first.is_empty() {
        return Err(bad_args("empty password"));
    }
    let again = ask(format!("Type password of {user} again for confirmation: "))?;
    if first != again {
        return Err(bad_args("given passwords are different"));
    }
    Ok(first)
}

pub async fn user(global: &GlobalFlags, command: UserCommand) -> CtlResult {
    match command {
        UserCommand::Add {
            interactive,
            new_user_password,
            no_password,
            args,
        } => {
            let arg = one_arg(&args, "user add", "user name")?;
            let (name, password) = if no_password {
                (arg, String::new())
            } else if !new_user_password.is_empty() {
                (arg, new_user_password)
            } else {
                match arg.split_once(':') {
                    Some(("", _)) => return Err(bad_args("empty user name is not allowed")),
                    Some((name, password)) => (name, password.to_string()),
                    None => (arg, new_password(arg, interactive)?),
                }
            };
            let request = AuthUserAddRequest {
                name: name.to_string(),
                password,
                // etcdctl 3.4's client always sends the options, even when all are off.
                options: Some(UserAddOptions { no_password }),
                hashed_password: String::new(),
            };
            let s = Session::open(global).await?;
            let reply = s
                .call(|mut auth| {
                    let request = request.clone();
                    async move { auth.user_add(request).await }
                })
                .await?;
            s.changed(AuthChange::UserAdded(name), reply.header.as_ref())
        }
        UserCommand::Delete { args } => {
            let name = one_arg(&args, "user delete", "user name")?;
            let s = Session::open(global).await?;
            let reply = s
                .call(|mut auth| {
                    let request = AuthUserDeleteRequest { name: name.into() };
                    async move { auth.user_delete(request).await }
                })
                .await?;
            s.changed(AuthChange::UserDeleted(name), reply.header.as_ref())
        }
        UserCommand::Get { detail, args } => {
            let name = one_arg(&args, "user get", "user name")?;
            let s = Session::open(global).await?;
            let reply = s
                .call(|mut auth| {
                    let request = AuthUserGetRequest { name: name.into() };
                    async move { auth.user_get(request).await }
                })
                .await?;
            if !detail {
                return s.printer.user_get(name, &reply);
            }
            // With --detail the user line is printed as is, whatever the format, and each
            // role follows in the format, one call per role.
            println!("User: {name}");
            for role in &reply.roles {
                println!();
                let granted = role_get(&s, role).await?;
                s.printer.role_get(role, &granted)?;
            }
            Ok(())
        }
        UserCommand::List { args } => {
            no_args(&args, "user list command requires no arguments")?;
            let s = Session::open(global).await?;
            let reply = s
                .call(|mut auth| async move { auth.user_list(AuthUserListRequest {}).await })
                .await?;
            s.printer.user_list(&reply)
        }
        UserCommand::Passwd { interactive, args } => {
            let name = one_arg(&args, "user passwd", "user name")?;
            let request = AuthUserChangePasswordRequest {
                name: name.into(),
                password: new_password(name, interactive)?,
                hashed_password: String::new(),
            };
            let s = Session::open(global).await?;
            let reply = s
                .call(|mut auth| {
                    let request = request.clone();
                    async move { auth.user_change_password(request).await }
                })
                .await?;
            s.changed(AuthChange::PasswordChanged, reply.header.as_ref())
        }
        UserCommand::GrantRole { args } => {
            let [user, role] = args.as_slice() else {
                return Err(bad_args(
                    "user grant command requires user name and role name as its argument",
                ));
            };
            let s = Session::open(global).await?;
            let reply = s
                .call(|mut auth| {
                    let request = AuthUserGrantRoleRequest {
                        user: user.clone(),
                        role: role.clone(),
                    };
                    async move { auth.user_grant_role(request).await }
                })
                .await?;
            s.changed(
                AuthChange::RoleGranted { user, role },
                reply.header.as_ref(),
            )
        }
        UserCommand::RevokeRole { args } => {
            let [user, role] = args.as_slice() else {
                return Err(bad_args(
                    "user revoke-role requires user name and role name as its argument",
                ));
            };
            let s = Session::open(global).await?;
            let reply = s
                .call(|mut auth| {
                    let request = AuthUserRevokeRoleRequest {
                        name: user.clone(),
                        role: role.clone(),
                    };
                    async move { auth.user_revoke_role(request).await }
                })
                .await?;
            s.changed(
                AuthChange::RoleRevoked { user, role },
                reply.header.as_ref(),
            )
        }
    }
}

async fn role_get(
    s: &Session,
    role: &str,
) -> Result<oxcd_proto::etcdserverpb::AuthRoleGetResponse, RpcError> {
    s.call(|mut auth| {
        let request = AuthRoleGetRequest { role: role.into() };
        async move { auth.role_get(request).await }
    })
    .await
}

/// The key and range end of a permission from `<key> [endkey]` and `--prefix`/`--from-key`, as
/// etcdctl builds them. An empty key means every key (`\0`, the server's smallest key); with
/// `--prefix` or `--from-key` its range is open ended. Arguments after the end key are ignored.
fn permission_range(
    args: &[String],
    prefix: bool,
    from_key: bool,
) -> CtlResult<(Vec<u8>, Vec<u8>)> {
    let both = || bad_args("--from-key and --prefix flags are mutually exclusive");
    let key = args[0].as_bytes();
    if key.is_empty() {
        if prefix && from_key {
            return Err(both());
        }
        let end: &[u8] = if prefix || from_key { b"\0" } else { b"" };
        return Ok((b"\0".to_vec(), end.to_vec()));
    }
    let end = match (args.get(1), prefix, from_key) {
        (None, true, true) => return Err(both()),
        (None, true, false) => prefix_range_end(key),
        (None, false, true) => b"\0".to_vec(),
        (None, false, false) => Vec::new(),
        (Some(_), true, _) => {
            return Err(bad_args("unexpected endkey argument with --prefix flag"))
        }
        (Some(_), false, true) => {
            return Err(bad_args("unexpected endkey argument with --from-key flag"))
        }
        (Some(end), false, false) => end.clone().into_bytes(),
    };
    Ok((key.to_vec(), end))
}

/// clientv3's `StrToPermissionType`: the type's name in any case.
fn permission_type(text: &str) -> CtlResult<PermissionType> {
    PermissionType::from_str_name(&text.to_uppercase())
        .ok_or_else(|| bad_args(format!("invalid permission type: {text}")))
}

pub async fn role(global: &GlobalFlags, command: RoleCommand) -> CtlResult {
    match command {
        RoleCommand::Add { args } => {
            let name = one_arg(&args, "role add", "role name")?;
            let s = Session::open(global).await?;
            let reply = s
                .call(|mut auth| {
                    let request = AuthRoleAddRequest { name: name.into() };
                    async move { auth.role_add(request).await }
                })
                .await?;
            s.changed(AuthChange::RoleAdded(name), reply.header.as_ref())
        }
        RoleCommand::Delete { args } => {
            let name = one_arg(&args, "role delete", "role name")?;
            let s = Session::open(global).await?;
            let reply = s
                .call(|mut auth| {
                    let request = AuthRoleDeleteRequest { role: name.into() };
                    async move { auth.role_delete(request).await }
                })
                .await?;
            s.changed(AuthChange::RoleDeleted(name), reply.header.as_ref())
        }
        RoleCommand::Get { args } => {
            let name = one_arg(&args, "role get", "role name")?;
            let s = Session::open(global).await?;
            let reply = role_get(&s, name).await?;
            s.printer.role_get(name, &reply)
        }
        RoleCommand::List { args } => {
            no_args(&args, "role list command requires no arguments")?;
            let s = Session::open(global).await?;
            let reply = s
                .call(|mut auth| async move { auth.role_list(AuthRoleListRequest {}).await })
                .await?;
            s.printer.role_list(&reply)
        }
        RoleCommand::GrantPermission {
            prefix,
            from_key,
            args,
        } => {
            if args.len() < 3 {
                return Err(bad_args("role grant command requires role name, permission type, and key [endkey] as its argument"));
            }
            let (name, kind, range) = (&args[0], &args[1], &args[2..]);
            let kind = permission_type(kind)?;
            let (key, range_end) = permission_range(range, prefix, from_key)?;
            let request = AuthRoleGrantPermissionRequest {
                name: name.clone(),
                perm: Some(Permission {
                    perm_type: kind as i32,
                    key,
                    range_end,
                }),
            };
            let s = Session::open(global).await?;
            let reply = s
                .call(|mut auth| {
                    let request = request.clone();
                    async move { auth.role_grant_permission(request).await }
                })
                .await?;
            s.changed(AuthChange::PermissionGranted(name), reply.header.as_ref())
        }
        RoleCommand::RevokePermission {
            prefix,
            from_key,
            args,
        } => {
            if args.len() < 2 {
                return Err(bad_args("role revoke-permission command requires role name and key [endkey] as its argument"));
            }
            let (name, range) = (&args[0], &args[1..]);
            let (key, range_end) = permission_range(range, prefix, from_key)?;
            let request = AuthRoleRevokePermissionRequest {
                role: name.clone(),
                key,
                range_end,
            };
            let s = Session::open(global).await?;
            let reply = s
                .call(|mut auth| {
                    let request = request.clone();
                    async move { auth.role_revoke_permission(request).await }
                })
                .await?;
            let change = AuthChange::PermissionRevoked {
                role: name,
                key: &range[0],
                range_end: &request.range_end,
            };
            s.changed(change, reply.header.as_ref())
        }
    }
}

/// etcd's answer to enabling auth while the root user lacks the root role.
const ROOT_ROLE_MISSING: &str = "etcdserver: root user does not have root role";

pub async fn auth(global: &GlobalFlags, command: AuthCommand) -> CtlResult {
    match command {
        AuthCommand::Enable { args } => {
            no_args(&args, "auth enable command does not accept any arguments")?;
            let s = Session::open(global).await?;
            // As etcdctl: a root user without the root role gets the role (created if need
            // be) and enabling is tried again, all within one command timeout.
            let enable = async {
                loop {
                    match s
                        .call(
                            |mut auth| async move { auth.auth_enable(AuthEnableRequest {}).await },
                        )
                        .await
                    {
                        Ok(_) => return Ok(()),
                        Err(e) if e.0 == ROOT_ROLE_MISSING => {
                            s.call(|mut auth| async move {
                                let request = AuthRoleAddRequest {
                                    name: "root".into(),
                                };
                                auth.role_add(request).await
                            })
                            .await?;
                            s.call(|mut auth| async move {
                                let request = AuthUserGrantRoleRequest {
                                    user: "root".into(),
                                    role: "root".into(),
                                };
                                auth.user_grant_role(request).await
                            })
                            .await?;
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            within_command_timeout(&s, enable).await?;
            println!("Authentication Enabled");
            Ok(())
        }
        AuthCommand::Disable { args } => {
            no_args(&args, "auth disable command does not accept any arguments")?;
            let s = Session::open(global).await?;
            let disable =
                s.call(|mut auth| async move { auth.auth_disable(AuthDisableRequest {}).await });
            within_command_timeout(&s, disable).await?;
            println!("Authentication Disabled");
            Ok(())
        }
        AuthCommand::Status { args } => {
            no_args(&args, "auth status command does not accept any arguments")?;
            let s = Session::open(global).await?;
            let status =
                s.call(|mut auth| async move { auth.auth_status(AuthStatusRequest {}).await });
            let reply = within_command_timeout(&s, status).await?;
            s.printer.auth_status(&reply)
        }
    }
}

async fn within_command_timeout<T>(
    s: &Session,
    calls: impl Future<Output = Result<T, RpcError>>,
) -> Result<T, RpcError> {
    tokio::time::timeout(s.conn.command_timeout, calls)
        .await
        .unwrap_or_else(|_| Err(RpcError::deadline()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(args: &[&str], prefix: bool, from_key: bool) -> CtlResult<(Vec<u8>, Vec<u8>)> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        permission_range(&args, prefix, from_key)
    }

    #[test]
    fn permission_ranges_as_etcdctl_builds_them() {
        assert_eq!(
            range(&["k"], false, false).unwrap(),
            (b"k".to_vec(), vec![])
        );
        assert_eq!(
            range(&["a", "c", "x"], false, false).unwrap(),
            (b"a".to_vec(), b"c".to_vec())
        );
        assert_eq!(
            range(&["p/"], true, false).unwrap(),
            (b"p/".to_vec(), b"p0".to_vec())
        );
        assert_eq!(
            range(&["f"], false, true).unwrap(),
            (b"f".to_vec(), b"\0".to_vec())
        );
        assert_eq!(
            range(&[""], false, false).unwrap(),
            (b"\0".to_vec(), vec![])
        );
        assert_eq!(
            range(&["", "z"], true, false).unwrap(),
            (b"\0".to_vec(), b"\0".to_vec())
        );
        assert_eq!(
            range(&["a", "b"], true, false).unwrap_err().message,
            "unexpected endkey argument with --prefix flag"
        );
        assert_eq!(
            range(&["", "b"], true, true).unwrap_err().message,
            "--from-key and --prefix flags are mutually exclusive"
        );
        // With an end key, --prefix is refused before the two flags are.
        assert_eq!(
            range(&["a", "b"], true, true).unwrap_err().message,
            "unexpected endkey argument with --prefix flag"
        );
    }

    #[test]
    fn permission_types_in_any_case() {
        assert_eq!(
            permission_type("readWrite").unwrap(),
            PermissionType::Readwrite
        );
        assert_eq!(
            permission_type("rw").unwrap_err().message,
            "invalid permission type: rw"
        );
    }
}
