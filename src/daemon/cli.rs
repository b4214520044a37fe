//! The command line: `rallypoint run | check-config | members | watch`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand};

use super::api;
use super::client::{self, ClientError, EventStream};
use crate::config::{Config, ConfigError, Flags};

/// The variable that stands for `--static-hosts`.
const STATIC_HOSTS_VAR: &str = "RALLYPOINT_STATIC_HOSTS";

/// How long `rallypoint members` waits for the API.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// rallypoint forms clusters: it discovers peers, connects to them, proves that they
/// share the cluster's cookie, and tells who is up and who went down.
#[derive(Debug, Parser)]
#[command(name = "rallypoint", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: join the cluster and serve the HTTP API until SIGTERM, SIGINT
    /// (Ctrl-C) or SIGHUP, then leave gracefully.
    Run(RunArgs),
    /// Check the configuration (file, environment, flags, as `run` would load it) and
    /// print it as TOML with secrets redacted; exit 1 naming the key at fault.
    CheckConfig(RunArgs),
    /// Print the members a running node sees.
    Members(MembersArgs),
    /// Print membership events as they happen (from the node's /v1/events).
    Watch(WatchArgs),
}

/// `rallypoint run`: every flag overrides the same key from the file and the
/// environment (`RALLYPOINT_<KEY>`, nested keys joined by `__`).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A TOML configuration file. (Every key can also be set in the environment:
    /// RALLYPOINT_<KEY>, nested keys joined by __, lists comma-separated.)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's name, basename@host. Default: rallypoint@HOSTNAME, or
    /// rallypoint-PORT@HOSTNAME when the cluster port is not 45893. [env: RALLYPOINT_NAME]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The address to listen on for peers (TCP). Default: 0.0.0.0:45893. [env: RALLYPOINT_CLUSTER_ADDR]
    #[arg(long, value_name = "ADDR")]
    pub cluster_addr: Option<SocketAddr>,
    /// The address peers dial to reach this node. Default: the cluster address when it
    /// is not a wildcard; else the name's host when it is an IP; else the first
    /// non-loopback interface address; with the cluster port. [env: RALLYPOINT_ADVERTISE_ADDR]
    #[arg(long, value_name = "ADDR")]
    pub advertise_addr: Option<SocketAddr>,
    /// The address of the HTTP API. Default: 127.0.0.1:45894. [env: RALLYPOINT_HTTP_ADDR]
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// A file holding the cluster's cookie (or set RALLYPOINT_COOKIE to the cookie
    /// itself). Default: a cookie kept in the user's config directory. [env: RALLYPOINT_COOKIE_FILE]
    #[arg(long, value_name = "FILE")]
    pub cookie_file: Option<PathBuf>,
    /// Peers to connect to, host:port,... (defines the topology named `static`). [env: RALLYPOINT_STATIC_HOSTS, comma-separated]
    #[arg(long, value_name = "HOST:PORT,...", value_delimiter = ',')]
    pub static_hosts: Option<Vec<String>>,
}

impl RunArgs {
    /// The flags as the top configuration layer.
    pub fn flags(&self) -> Flags {
        Flags {
            name: self.name.clone(),
            cluster_addr: self.cluster_addr,
            advertise_addr: self.advertise_addr,
            http_addr: self.http_addr,
            cookie_file: self.cookie_file.clone(),
            static_hosts: self.static_hosts.clone(),
        }
    }

    /// Loads the configuration: the file, then this process's environment, then the
    /// flags.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        self.load_from(env)
    }

    /// [`RunArgs::load`] with the given environment. `RALLYPOINT_STATIC_HOSTS`
    /// (comma-separated) stands for `--static-hosts` when the flag is not given.
    pub fn load_from(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut flags = self.flags();
        let mut rest = Vec::new();
        let mut from_env = false;
        for (k, v) in env {
            if k == STATIC_HOSTS_VAR {
                if flags.static_hosts.is_none() && !v.trim().is_empty() {
                    flags.static_hosts = Some(v.split(',').map(|h| h.trim().to_owned()).collect());
                    from_env = true;
                }
            } else {
                rest.push((k, v));
            }
        }
        Config::load(self.config.as_deref(), rest, &flags).map_err(|e| match e {
            // The hosts came from the variable, not a flag: say so.
            ConfigError::BadValue {
                key,
                value,
                origin: None,
                expected,
            } if from_env && key.starts_with("topologies.static.") => ConfigError::BadValue {
                key,
                value,
                origin: Some(format!("the environment variable {STATIC_HOSTS_VAR}")),
                expected,
            },
            e => e,
        })
    }
}

/// Where the running node's API is.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The address of the node's HTTP API.
    #[arg(
        long,
        value_name = "ADDR",
        env = "RALLYPOINT_HTTP_ADDR",
        default_value_t = crate::DEFAULT_HTTP_ADDR
    )]
    pub http_addr: SocketAddr,
    /// The API's bearer token, when it requires one (its `http_token`).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "RALLYPOINT_HTTP_TOKEN",
        hide_env_values = true
    )]
    pub http_token: Option<String>,
}

/// `rallypoint members`.
#[derive(Debug, Args)]
pub struct MembersArgs {
    /// Where the running node's API is.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print the API's JSON body as it is.
    #[arg(long)]
    pub json: bool,
}

/// `rallypoint watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Where the running node's API is.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print each event as one JSON line: {"event", "id", "data"}.
    #[arg(long)]
    pub json: bool,
}

/// Why `members` or `watch` failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The API could not be used.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The API did not answer in time.
    #[error("the HTTP API at {0} did not answer within {1:?}")]
    Timeout(SocketAddr, Duration),
    /// The API's JSON is not what was expected.
    #[error("unexpected JSON from the HTTP API")]
    Json(#[from] serde_json::Error),
    /// The event stream ended: the node stopped.
    #[error("the node's event stream ended (did the node stop?)")]
    Ended,
}

/// `rallypoint check-config`: loads the configuration as `run` would (reading the
/// cookie files, if any) and prints the effective configuration as TOML, secrets
/// redacted.
pub fn check_config(args: &RunArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let config = args.load()?;
    config.load_cookie()?;
    config.load_accepted_cookies()?;
    let text = toml::to_string(&config)?;
    write!(out, "{text}")?;
    Ok(())
}

/// `rallypoint members`: prints the members in a table (or the JSON body).
pub async fn members(args: &MembersArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let addr = args.api.http_addr;
    let body = tokio::time::timeout(
        REQUEST_TIMEOUT,
        client::get_with_token(addr, "/v1/members", args.api.http_token.as_deref()),
    )
    .await
    .map_err(|_| CommandError::Timeout(addr, REQUEST_TIMEOUT))??;
    if args.json {
        let _ = writeln!(out, "{}", body.trim_end());
        return Ok(());
    }
    let m: api::Members = serde_json::from_str(&body)?;
    let _ = write!(out, "{}", members_table(&m));
    Ok(())
}

/// The members as a table, this node on the first line.
pub fn members_table(m: &api::Members) -> String {
    let mut rows = vec![[
        "NAME".to_owned(),
        "ADDR".to_owned(),
        "INCARNATION".to_owned(),
        "UP SINCE".to_owned(),
    ]];
    for n in &m.members {
        rows.push([
            n.name.clone(),
            n.addr.to_string(),
            n.incarnation.clone(),
            n.up_since.clone().unwrap_or_default(),
        ]);
    }
    let mut widths = [0usize; 4];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut s = format!(
        "this node: {} {} incarnation {}\n",
        m.local.name, m.local.addr, m.local.incarnation
    );
    for r in &rows {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s.push_str(&format!(
        "{} member{}\n",
        m.members.len(),
        if m.members.len() == 1 { "" } else { "s" }
    ));
    s
}

/// `rallypoint watch`: prints each event until the stream ends.
pub async fn watch(args: &WatchArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let addr = args.api.http_addr;
    let mut events = tokio::time::timeout(
        REQUEST_TIMEOUT,
        EventStream::connect_with_token(addr, "/v1/events", None, args.api.http_token.as_deref()),
    )
    .await
    .map_err(|_| CommandError::Timeout(addr, REQUEST_TIMEOUT))??;
    while let Some(ev) = events.next().await? {
        let line = if args.json {
            let data: serde_json::Value = serde_json::from_str(&ev.data)?;
            serde_json::json!({"event": ev.event, "id": ev.id, "data": data}).to_string()
        } else {
            describe(&ev)?
        };
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            // The reader went away (a closed pipe): nothing more to do.
            return Ok(());
        }
    }
    Err(CommandError::Ended)
}

/// One event as a line of text, stamped with the time it arrived.
fn describe(ev: &client::ServerEvent) -> Result<String, CommandError> {
    let now = humantime::format_rfc3339_seconds(SystemTime::now());
    let id = ev.id.as_deref().unwrap_or("-");
    let node = |n: &api::Node| format!("{} {} incarnation {}", n.name, n.addr, n.incarnation);
    Ok(match ev.event.as_str() {
        api::SNAPSHOT => {
            let m: api::Members = serde_json::from_str(&ev.data)?;
            let names: Vec<&str> = m.members.iter().map(|n| n.name.as_str()).collect();
            format!(
                "{now} snapshot #{id}: {} member{}{}{}",
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                if names.is_empty() { "" } else { ": " },
                names.join(", ")
            )
        }
        api::NODEUP => {
            let e: api::NodeUp = serde_json::from_str(&ev.data)?;
            format!("{now} nodeup #{id} {}", node(&e.node))
        }
        api::NODEDOWN => {
            let e: api::NodeDown = serde_json::from_str(&ev.data)?;
            format!("{now} nodedown #{id} {} reason {}", node(&e.node), e.reason)
        }
        other => format!("{now} {other} #{id} {}", ev.data),
    })
}
