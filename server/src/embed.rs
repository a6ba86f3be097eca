//! Building a member's [`Config`] in code, for running oxcd inside another program (as Go
//! programs embed etcd with `embed.Config`).
//!
//! The builder speaks etcd's flags: every setter is one flag, parsed exactly as the command
//! line parses it, so an embedded member has the same defaults, the same validation and the
//! same refusals as `oxcd` started with those flags. Unlike the command line it reads no
//! `ETCD_*` environment variables: what the code says is what runs.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let config = oxcd::Config::builder()
//!     .name("embedded")
//!     .data_dir("/var/lib/my-app/oxcd")
//!     .listen_client_urls(["http://127.0.0.1:0"])
//!     .listen_peer_urls(["http://127.0.0.1:0"])
//!     .flag("snapshot-count", "5000")
//!     .build()?;
//! let member = oxcd::Node::start(&config).await?;
//! println!("serving on {:?}", member.client_addrs());
//! member.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::ffi::{OsStr, OsString};
use std::path::Path;

use clap::{CommandFactory, FromArgMatches};

use crate::config::{go_flag_error, Config};

/// A [`Config`] under construction: etcd's flags, set one by one. See the [module
/// documentation](self).
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ConfigBuilder {
    flags: Vec<OsString>,
}

impl Config {
    /// A builder starting from the command line's defaults: a member named `default` with its
    /// data in `./default.oxcd`, clients on `http://127.0.0.1:2379` and peers on
    /// `http://127.0.0.1:2380`.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }
}

impl ConfigBuilder {
    /// Sets any of etcd's flags by its name without dashes (`"snapshot-count"`), with its value
    /// as it would be written on the command line (`"5000"`, `"10m"`, `"a,b"`). A later setting
    /// of the same flag wins, as on the command line.
    pub fn flag(mut self, name: &str, value: impl AsRef<OsStr>) -> Self {
        let mut flag = OsString::from(format!("--{name}="));
        flag.push(value.as_ref());
        self.flags.push(flag);
        self
    }

    /// `--name`: the member's human-readable name, also its key in `--initial-cluster`.
    pub fn name(self, name: &str) -> Self {
        self.flag("name", name)
    }

    /// `--data-dir`: where the member keeps its data; the directory is locked while it runs.
    pub fn data_dir(self, dir: impl AsRef<Path>) -> Self {
        self.flag("data-dir", dir.as_ref())
    }

    /// `--wal-dir`: a separate directory (device) for the write-ahead log.
    pub fn wal_dir(self, dir: impl AsRef<Path>) -> Self {
        self.flag("wal-dir", dir.as_ref())
    }

    /// `--listen-client-urls`: where clients connect (`http://`, `https://`, `unix://`); port 0
    /// picks a free port, which [`Node::client_addrs`](crate::Node::client_addrs) then tells.
    pub fn listen_client_urls<'a>(self, urls: impl IntoIterator<Item = &'a str>) -> Self {
        self.list("listen-client-urls", urls)
    }

    /// `--advertise-client-urls`: the client URLs the membership lists for this member.
    pub fn advertise_client_urls<'a>(self, urls: impl IntoIterator<Item = &'a str>) -> Self {
        self.list("advertise-client-urls", urls)
    }

    /// `--listen-peer-urls`: where the other members connect.
    pub fn listen_peer_urls<'a>(self, urls: impl IntoIterator<Item = &'a str>) -> Self {
        self.list("listen-peer-urls", urls)
    }

    /// `--initial-advertise-peer-urls`: this member's peer URLs as the others dial them.
    pub fn initial_advertise_peer_urls<'a>(self, urls: impl IntoIterator<Item = &'a str>) -> Self {
        self.list("initial-advertise-peer-urls", urls)
    }

    /// `--initial-cluster`: `name=peer-url,...` of every member of a new cluster.
    pub fn initial_cluster(self, members: &str) -> Self {
        self.flag("initial-cluster", members)
    }

    /// `--unsafe-no-fsync`: nothing is fsynced, so a power loss loses acknowledged writes; for
    /// tests.
    pub fn unsafe_no_fsync(self, on: bool) -> Self {
        self.flag("unsafe-no-fsync", if on { "true" } else { "false" })
    }

    fn list<'a>(self, name: &str, values: impl IntoIterator<Item = &'a str>) -> Self {
        let joined = values.into_iter().collect::<Vec<_>>().join(",");
        self.flag(name, joined)
    }

    /// The configuration, or why the flags are refused: an unknown flag, a malformed value (as
    /// the command line words them), or a value oxcd cannot honour.
    pub fn build(self) -> anyhow::Result<Config> {
        let parsed = flags_only()
            .try_get_matches_from(std::iter::once(OsString::from("oxcd")).chain(self.flags))
            .and_then(|matches| Config::from_arg_matches(&matches));
        let config = parsed.map_err(|e| {
            anyhow::anyhow!(go_flag_error(&e).unwrap_or_else(|| e.to_string().trim().to_string()))
        })?;
        config.refuse_unsupported()?;
        Ok(config)
    }
}

/// The command line's flags without their `ETCD_*` variables.
fn flags_only() -> clap::Command {
    Config::command().mut_args(|arg| arg.env(None::<&'static str>))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_command_lines() {
        let built = Config::builder().build().unwrap();
        let parsed = <Config as clap::Parser>::try_parse_from(["oxcd"]).unwrap();
        assert_eq!(format!("{built:?}"), format!("{parsed:?}"));
    }

    #[test]
    fn setters_are_flags() {
        let c = Config::builder()
            .name("app")
            .data_dir("/tmp/app data")
            .listen_client_urls(["http://127.0.0.1:0", "unix:///tmp/app.sock"])
            .unsafe_no_fsync(true)
            .flag("snapshot-count", "7")
            .flag("snapshot-count", "8")
            .build()
            .unwrap();
        assert_eq!(c.name, "app");
        assert_eq!(c.data_dir(), Path::new("/tmp/app data"));
        assert_eq!(
            c.listen_client_urls,
            ["http://127.0.0.1:0", "unix:///tmp/app.sock"]
        );
        assert!(c.unsafe_no_fsync);
        assert_eq!(c.snapshot_count, 8);
    }

    #[test]
    fn refusals_are_the_command_lines() {
        let err = |b: ConfigBuilder| b.build().unwrap_err().to_string();
        assert_eq!(
            err(Config::builder().flag("max-learners", "x")),
            "invalid value \"x\" for flag -max-learners: invalid digit found in string"
        );
        assert!(err(Config::builder().flag("no-such-flag", "1"))
            .starts_with("flag provided but not defined: -no-such-flag"));
        assert!(err(Config::builder().flag("max-wals", "1")).starts_with("--max-wals=1 is not"));
    }

    #[test]
    fn environment_variables_are_not_read() {
        let mut command = flags_only();
        command.build();
        assert!(command.get_arguments().all(|a| a.get_env().is_none()));
    }
}
