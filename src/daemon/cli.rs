//! The command line: `rallypoint run | check-config | members | watch | probe`.

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
    /// Print membership events as they happen (from the node's /v1/events); when the
    /// node restarts or the connection drops, reconnect and resume after the last
    /// event seen.
    Watch(WatchArgs),
    /// Check a running node for a Kubernetes exec probe (or a script): exit 0 when it
    /// is live (or ready), 1 with the reason otherwise. The API can then stay on
    /// loopback.
    Probe(ProbeArgs),
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
    /// Only the members with these statuses: up, down, left (comma-separated). Default:
    /// all, the peers down or left within the last hour included.
    #[arg(long, value_enum, value_name = "STATUS,...", value_delimiter = ',')]
    pub status: Vec<api::Status>,
    /// Only the members whose name matches this regular expression (anywhere in the
    /// name; `^` and `$` anchor it).
    #[arg(long, value_name = "REGEX")]
    pub name: Option<String>,
    /// How to print the members: a table for people, or JSON for programs
    /// (`{"self": NODE, "members": [ROW…], "departed": [ROW…]}`, a ROW being
    /// `{"name", "addr", "incarnation", "status", "since", "reason"}`; `members` the
    /// peers up, `departed` those down or left).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The same as --format json.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
}

/// How `members` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, this node first.
    Table,
    /// One JSON document.
    Json,
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
    /// Exit when the stream ends (the node stopped) instead of reconnecting.
    #[arg(long)]
    pub no_reconnect: bool,
}

/// `rallypoint probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// What to check: `live` (the daemon answers, `/healthz`) or `ready` (at least
    /// `min_members` peers are up, `/readyz`).
    #[arg(value_enum)]
    pub check: Probe,
    /// Where the running node's API is.
    #[command(flatten)]
    pub api: ApiArgs,
    /// How long to wait for the answer.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// What `probe` checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Probe {
    /// The daemon runs and its API answers.
    Live,
    /// The daemon sees at least `min_members` peers.
    Ready,
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
    /// `--name` is not a regular expression.
    #[error("--name {0:?} is not a regular expression: {1}")]
    BadPattern(String, String),
    /// The probe failed.
    #[error("{0}")]
    ProbeFailed(String),
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

/// `rallypoint members`: prints the members (up, and recently down or left) in a table
/// or as JSON, filtered by status and name.
pub async fn members(args: &MembersArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let pattern = match &args.name {
        Some(p) => Some(
            regex::Regex::new(p).map_err(|e| CommandError::BadPattern(p.clone(), e.to_string()))?,
        ),
        None => None,
    };
    let addr = args.api.http_addr;
    let body = tokio::time::timeout(
        REQUEST_TIMEOUT,
        client::get_with_token(addr, "/v1/members", args.api.http_token.as_deref()),
    )
    .await
    .map_err(|_| CommandError::Timeout(addr, REQUEST_TIMEOUT))??;
    let m: api::Members = serde_json::from_str(&body)?;
    let rows: Vec<Row> = rows(&m)
        .into_iter()
        .filter(|r| args.status.is_empty() || args.status.contains(&r.status))
        .filter(|r| pattern.as_ref().is_none_or(|p| p.is_match(&r.name)))
        .collect();
    let text = if args.json || args.format == Format::Json {
        // `members` stays the peers that are up, as in the API; the others apart.
        let (up, departed): (Vec<&Row>, Vec<&Row>) =
            rows.iter().partition(|r| r.status == api::Status::Up);
        let body = serde_json::json!({"self": m.local, "members": up, "departed": departed});
        format!("{body}\n")
    } else {
        members_table(&m.local, &rows)
    };
    let _ = write!(out, "{text}");
    Ok(())
}

/// One line of `rallypoint members`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// `basename@host`.
    pub name: String,
    /// Its cluster address.
    pub addr: SocketAddr,
    /// Its incarnation, in decimal.
    pub incarnation: String,
    /// `up`, `down` or `left`.
    pub status: api::Status,
    /// Since when it has that status (RFC 3339, UTC).
    pub since: String,
    /// Why it went down (`null` while up, or when not known).
    pub reason: Option<String>,
}

/// The members of a `/v1/members` body as rows: up and departed, sorted by name.
pub fn rows(m: &api::Members) -> Vec<Row> {
    let up = m.members.iter().map(|n| Row {
        name: n.name.clone(),
        addr: n.addr,
        incarnation: n.incarnation.clone(),
        status: api::Status::Up,
        since: n.up_since.clone().unwrap_or_default(),
        reason: None,
    });
    let gone = m.departed.iter().map(|d| Row {
        name: d.node.name.clone(),
        addr: d.node.addr,
        incarnation: d.node.incarnation.clone(),
        status: d.status,
        since: d.since.clone(),
        reason: d.reason.clone(),
    });
    let mut rows: Vec<Row> = up.chain(gone).collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    rows
}

/// The rows as a table under a line about this node.
pub fn members_table(local: &api::Node, rows: &[Row]) -> String {
    let mut cells =
        vec![["NAME", "ADDR", "STATUS", "INCARNATION", "SINCE", "REASON"].map(str::to_owned)];
    for r in rows {
        cells.push([
            r.name.clone(),
            r.addr.to_string(),
            r.status.as_str().to_owned(),
            r.incarnation.clone(),
            r.since.clone(),
            r.reason.clone().unwrap_or_default(),
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &cells {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut s = format!(
        "this node: {} {} incarnation {}\n",
        local.name, local.addr, local.incarnation
    );
    for r in &cells {
        let mut line = String::new();
        for (cell, w) in r.iter().zip(widths) {
            line.push_str(&format!("{cell:w$}  "));
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    let up = rows.iter().filter(|r| r.status == api::Status::Up).count();
    s.push_str(&format!(
        "{up} member{} up{}\n",
        if up == 1 { "" } else { "s" },
        match rows.len() - up {
            0 => String::new(),
            n => format!(", {n} down or left"),
        }
    ));
    s
}

/// The first wait before `watch` reconnects; it doubles up to [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_millis(250);
/// The longest wait between two reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// `rallypoint watch`: prints each event. When the stream ends, fails or falls silent
/// (no keep-alive for 45 s) after it started, it reconnects (waits from 250 ms doubling
/// to 5 s until events flow again, said on stderr) with `Last-Event-ID` of the last
/// event printed, so it resumes where it was (the node sends a fresh snapshot when it
/// no longer holds what was missed, or restarted). The first connection's failure, a
/// client error (4xx but 408 and 429), an answer that is no event stream, and any
/// failure with `--no-reconnect`, end it with the error.
pub async fn watch(args: &WatchArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let addr = args.api.http_addr;
    let token = args.api.http_token.as_deref();
    let mut last_id: Option<String> = None;
    let mut wait = RECONNECT_FIRST;
    let mut connected_once = false;
    loop {
        let opened = tokio::time::timeout(
            REQUEST_TIMEOUT,
            EventStream::connect_with_token(addr, "/v1/events", last_id.as_deref(), token),
        )
        .await
        .map_err(|_| CommandError::Timeout(addr, REQUEST_TIMEOUT))
        .and_then(|r| r.map_err(CommandError::from));
        let ended = match opened {
            Ok(mut events) => {
                if connected_once {
                    let _ = writeln!(
                        std::io::stderr(),
                        "rallypoint watch: reconnected to {addr}{}",
                        match &last_id {
                            Some(id) => format!("; resuming after #{id}"),
                            None => String::new(),
                        }
                    );
                }
                connected_once = true;
                loop {
                    match events.next().await {
                        Ok(Some(ev)) => {
                            // Events flow again: the next drop starts the waits anew.
                            wait = RECONNECT_FIRST;
                            if !print_event(args, &ev, out)? {
                                // The reader went away (a closed pipe).
                                return Ok(());
                            }
                            // An id that cannot be sent back (control characters) is
                            // not kept: the next connection gets a fresh snapshot.
                            last_id = ev
                                .id
                                .filter(|id| hyper::header::HeaderValue::from_str(id).is_ok());
                        }
                        Ok(None) => break CommandError::Ended,
                        Err(e) => break e.into(),
                    }
                }
            }
            Err(e) => e,
        };
        // A client error (401, 404, 421…) or an answer that is no event stream does not
        // mend by retrying; a server error (5xx), a timeout or a drop may.
        let lasting = match &ended {
            CommandError::Client(ClientError::Status { status, .. }) => {
                (400..500).contains(status) && *status != 408 && *status != 429
            }
            CommandError::Client(ClientError::NotAStream(_)) => true,
            _ => false,
        };
        if !connected_once || args.no_reconnect || lasting {
            return Err(ended);
        }
        let _ = writeln!(
            std::io::stderr(),
            "rallypoint watch: {ended}; reconnecting in {wait:?}"
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RECONNECT_MAX);
    }
}

/// Prints one event; `false` when the output is closed.
fn print_event(
    args: &WatchArgs,
    ev: &client::ServerEvent,
    out: &mut dyn Write,
) -> Result<bool, CommandError> {
    let line = if args.json {
        let data: serde_json::Value = serde_json::from_str(&ev.data)?;
        serde_json::json!({"event": ev.event, "id": ev.id, "data": data}).to_string()
    } else {
        describe(ev)?
    };
    Ok(writeln!(out, "{line}").and_then(|_| out.flush()).is_ok())
}

/// `rallypoint probe live|ready`: `Ok` when the node answers `200` to `/healthz`
/// (`/readyz`), with a line for the probe's output; otherwise the reason.
pub async fn probe(args: &ProbeArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let addr = args.api.http_addr;
    let path = match args.check {
        Probe::Live => "/healthz",
        Probe::Ready => "/readyz",
    };
    let (status, body) = tokio::time::timeout(
        args.timeout,
        client::get_any(addr, path, args.api.http_token.as_deref()),
    )
    .await
    .map_err(|_| CommandError::Timeout(addr, args.timeout))??;
    let ready: Option<api::Ready> = serde_json::from_str(&body).ok();
    match (args.check, status.as_u16(), ready) {
        (Probe::Live, 200, _) => {
            let _ = writeln!(out, "live");
            Ok(())
        }
        (Probe::Ready, 200, Some(r)) => {
            let _ = writeln!(
                out,
                "ready: {} peer{} up (min_members {})",
                r.members,
                if r.members == 1 { "" } else { "s" },
                r.min_members
            );
            Ok(())
        }
        (Probe::Ready, 503, Some(r)) => Err(CommandError::ProbeFailed(format!(
            "not ready: {} peer{} up, min_members is {}",
            r.members,
            if r.members == 1 { "" } else { "s" },
            r.min_members
        ))),
        (_, code, _) => Err(CommandError::ProbeFailed(format!(
            "{path} at {addr} answered {code}: {}",
            body.trim().chars().take(200).collect::<String>()
        ))),
    }
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
