//! The keys that bound the HTTP API: its connections, its timeouts, the hosts it
//! answers without a token, and how far an event-stream client may fall behind.

use std::time::Duration;

use config::Value;
use serde::Serialize;

use super::{ConfigError, Duration_, deserialize, quoted, show};
use crate::netutil::Host;

/// The default of `http_max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// The default of `http_header_timeout`.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The default of `http_idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default of `sse_max_backlog`, in bytes.
pub const DEFAULT_SSE_MAX_BACKLOG: usize = 256 * 1024;
/// The largest `http_max_connections` accepted.
const MAX_CONNECTIONS: usize = 65_536;
/// The smallest `sse_max_backlog` accepted, in bytes.
const MIN_SSE_BACKLOG: usize = 1024;

/// The HTTP API's limits: top-level keys, written flat in the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpLimits {
    /// `http_max_connections`: the most connections the API serves at once; one more
    /// is answered `503` and closed at once. Default 256, from 1 to 65536. The daemon
    /// keeps it to at most half its open-file limit, so that the cluster port always
    /// has descriptors left.
    #[serde(rename = "http_max_connections")]
    pub max_connections: usize,
    /// `http_header_timeout`: how long a client has to send a request's head (from
    /// the connection's opening, or from the first byte of a later request). Default
    /// 10 s.
    #[serde(rename = "http_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// `http_idle_timeout`: how long a kept-alive connection may wait for its next
    /// request, and a response for the client to read. Default 60 s.
    #[serde(rename = "http_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// `http_allowed_hosts`: host names (or addresses), without port, that the API
    /// answers in `Host` when it has no token, besides `localhost`, loopback addresses
    /// and its own address. Default none.
    #[serde(rename = "http_allowed_hosts")]
    pub allowed_hosts: Vec<String>,
    /// `sse_max_backlog`: how many bytes of events may wait for an SSE client that
    /// does not read before its connection is closed. Default 262144 (256 KiB), at
    /// least 1024.
    #[serde(rename = "sse_max_backlog")]
    pub sse_max_backlog: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            allowed_hosts: Vec::new(),
            sse_max_backlog: DEFAULT_SSE_MAX_BACKLOG,
        }
    }
}

impl HttpLimits {
    /// The keys, in the order they are documented.
    pub const KEYS: &'static [&'static str] = &[
        "http_max_connections",
        "http_header_timeout",
        "http_idle_timeout",
        "http_allowed_hosts",
        "sse_max_backlog",
    ];

    /// Sets `key` (one of [`HttpLimits::KEYS`]) from `value`, checked.
    pub(super) fn set(&mut self, key: &str, value: Value) -> Result<(), ConfigError> {
        let origin = value.origin().map(str::to_owned);
        let shown = show(&value);
        let bad = |expected: &str| ConfigError::BadValue {
            key: key.to_owned(),
            value: shown.clone(),
            origin: origin.clone(),
            expected: expected.to_owned(),
        };
        match key {
            "http_max_connections" => {
                let n: usize = deserialize(key, value)?;
                if !(1..=MAX_CONNECTIONS).contains(&n) {
                    return Err(bad("a number of connections from 1 to 65536"));
                }
                self.max_connections = n;
            }
            "http_header_timeout" | "http_idle_timeout" => {
                let d = deserialize::<Duration_>(key, value)?.0;
                if d.is_zero() {
                    return Err(bad("a duration above zero, such as \"10s\""));
                }
                if key == "http_header_timeout" {
                    self.header_timeout = d;
                } else {
                    self.idle_timeout = d;
                }
            }
            "http_allowed_hosts" => {
                let hosts: Vec<String> = deserialize(key, value)?;
                for (i, h) in hosts.iter().enumerate() {
                    if Host::parse(h).is_none() || has_port(h) {
                        return Err(ConfigError::BadValue {
                            key: format!("{key}[{i}]"),
                            value: format!("{h:?}"),
                            origin: origin.clone(),
                            expected: "a host name or address without port, such as \
                                       \"rallypoint.internal\", \"10.0.0.5\" or \"[fd00::5]\""
                                .into(),
                        });
                    }
                }
                self.allowed_hosts = hosts;
            }
            "sse_max_backlog" => {
                let n: usize = deserialize(key, value)?;
                if n < MIN_SSE_BACKLOG {
                    return Err(bad("a number of bytes, at least 1024"));
                }
                self.sse_max_backlog = n;
            }
            other => {
                return Err(ConfigError::UnknownKey {
                    key: other.to_owned(),
                    origin,
                    expected: quoted(Self::KEYS),
                });
            }
        }
        Ok(())
    }
}

/// Whether a host as written has a port (`name:80`, `[::1]:80`).
fn has_port(h: &str) -> bool {
    match h.strip_prefix('[') {
        Some(rest) => rest.split_once(']').is_some_and(|(_, p)| !p.is_empty()),
        None => h.contains(':'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Flags};

    fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load_str(text, env, &Flags::default())
    }

    fn refused(text: &str, vars: &[(&str, &str)]) -> String {
        load(text, vars).expect_err("refused").to_string()
    }

    #[test]
    fn the_http_limits_have_defaults() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.http, HttpLimits::default());
        assert_eq!(c.http.max_connections, 256);
        assert_eq!(c.http.header_timeout, Duration::from_secs(10));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(60));
        assert!(c.http.allowed_hosts.is_empty());
        assert_eq!(c.http.sse_max_backlog, 256 * 1024);
    }

    #[test]
    fn the_http_limits_are_read_from_the_file_and_the_environment() {
        let c = load(
            "http_max_connections = 10\nhttp_header_timeout = \"2s\"\n\
             http_allowed_hosts = [\"rallypoint.internal\", \"10.0.0.5\", \"[fd00::5]\"]\n\
             sse_max_backlog = 4096\n",
            &[
                ("RALLYPOINT_HTTP_IDLE_TIMEOUT", "5m"),
                ("RALLYPOINT_HTTP_MAX_CONNECTIONS", "12"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.http.max_connections, 12,
            "the environment wins over the file"
        );
        assert_eq!(c.http.header_timeout, Duration::from_secs(2));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(300));
        assert_eq!(
            c.http.allowed_hosts,
            ["rallypoint.internal", "10.0.0.5", "[fd00::5]"]
        );
        assert_eq!(c.http.sse_max_backlog, 4096);
        // They print flat, as they are written.
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("http_max_connections = 12\n"), "{text}");
        assert!(text.contains("http_idle_timeout = \"5m\"\n"), "{text}");
        assert!(text.contains("sse_max_backlog = 4096\n"), "{text}");
    }

    #[test]
    fn bad_http_limits_are_refused_with_key_value_and_expectation() {
        let e = refused("http_max_connections = 0\n", &[]);
        assert!(
            e.contains("`http_max_connections`") && e.contains("= 0") && e.contains("1 to 65536"),
            "{e}"
        );
        let e = refused("", &[("RALLYPOINT_HTTP_MAX_CONNECTIONS", "many")]);
        assert!(
            e.contains("`http_max_connections`") && e.contains("the environment"),
            "{e}"
        );
        let e = refused("http_header_timeout = \"0s\"\n", &[]);
        assert!(
            e.contains("`http_header_timeout`") && e.contains("above zero"),
            "{e}"
        );
        let e = refused("http_idle_timeout = \"soon\"\n", &[]);
        assert!(
            e.contains("`http_idle_timeout`") && e.contains("duration"),
            "{e}"
        );
        let e = refused(
            "http_allowed_hosts = [\"ok.example\", \"bad.example:80\"]\n",
            &[],
        );
        assert!(
            e.contains("`http_allowed_hosts[1]`")
                && e.contains("bad.example:80")
                && e.contains("without port"),
            "{e}"
        );
        let e = refused("http_allowed_hosts = [\"a b\"]\n", &[]);
        assert!(e.contains("`http_allowed_hosts[0]`"), "{e}");
        let e = refused("http_allowed_hosts = \"one.example\"\n", &[]);
        assert!(
            e.contains("`http_allowed_hosts`") && e.contains("list"),
            "{e}"
        );
        let e = refused("sse_max_backlog = 100\n", &[]);
        assert!(
            e.contains("`sse_max_backlog`") && e.contains("at least 1024"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_key_lists_the_http_keys() {
        let e = refused("http_max_conections = 5\n", &[]);
        assert!(e.contains("`http_max_connections`"), "{e}");
    }
}
