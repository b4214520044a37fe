//! Tests of loading the configuration: layers, every key, and the errors.

use super::*;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    f
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(text: &str, vars: &[(&str, &str)], flags: &Flags) -> Result<Config, ConfigError> {
    let f = file(text);
    Config::load(Some(f.path()), env(vars), flags)
}

#[test]
fn defaults() {
    let c = Config::load(None, env(&[]), &Flags::default()).unwrap();
    assert_eq!(c.name.basename(), "rallypoint");
    assert_eq!(c.cluster_addr, "0.0.0.0:45893".parse().unwrap());
    assert_eq!(c.http_addr, crate::DEFAULT_HTTP_ADDR);
    assert_eq!(c.advertise_addr, None);
    assert_eq!(c.membership, membership::Config::default());
    // No topology configured: gossip with its defaults.
    assert_eq!(c.topologies.len(), 1);
    assert_eq!(c.topologies[DEFAULT_TOPOLOGY].strategy.kind(), "gossip");
    assert!(c.load_cookie().unwrap().is_none());
}

#[test]
fn reads_every_key_from_a_file() {
    let c = load(
        r#"
        name = "a@127.0.0.1"
        cluster_addr = "127.0.0.1:7001"
        advertise_addr = "127.0.0.1:7001"
        http_addr = "127.0.0.1:7002"
        cookie = "  s3cret-of-the-cluster "
        [membership]
        heartbeat_interval = "100ms"
        down_after = "1s"
        max_frame = 4096
        [topologies.peers]
        strategy = "static"
        hosts = ["127.0.0.1:7003", "localhost:7004"]
        resolve_interval = "2s"
        authoritative = true
        prune_after = "1m"
        "#,
        &[],
        &Flags::default(),
    )
    .unwrap();
    assert_eq!(c.name.as_str(), "a@127.0.0.1");
    assert_eq!(c.cluster_addr.port(), 7001);
    assert_eq!(c.advertise_addr.unwrap().port(), 7001);
    assert_eq!(c.http_addr.port(), 7002);
    assert_eq!(
        c.load_cookie().unwrap().unwrap(),
        Cookie::new("s3cret-of-the-cluster")
    );
    assert_eq!(c.membership.heartbeat_interval, Duration::from_millis(100));
    assert_eq!(c.membership.down_after, Duration::from_secs(1));
    assert_eq!(c.membership.max_frame, 4096);
    assert_eq!(
        c.membership.handshake_timeout,
        membership::Config::default().handshake_timeout
    );
    let t = &c.topologies["peers"];
    assert_eq!(t.authoritative, Some(true));
    assert_eq!(t.prune_after, Duration::from_secs(60));
    assert_eq!(
        t.strategy,
        StrategyConfig::Static(static_hosts::Config {
            hosts: vec!["127.0.0.1:7003".into(), "localhost:7004".into()],
            resolve_interval: Duration::from_secs(2),
        })
    );
    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cret"), "cookie redacted: {shown}");
}

#[test]
fn file_then_environment_then_flags() {
    let text = "name = \"file@h\"\nhttp_addr = \"127.0.0.1:1001\"\ncluster_addr = \"127.0.0.1:2001\"\n[membership]\ndown_after = \"4s\"\n";
    let vars = [
        ("RALLYPOINT_NAME", "env@h"),
        ("RALLYPOINT_HTTP_ADDR", "127.0.0.1:1002"),
        ("RALLYPOINT_MEMBERSHIP__DOWN_AFTER", "5s"),
        ("OTHER_NAME", "ignored"),
    ];
    let c = load(text, &vars, &Flags::default()).unwrap();
    assert_eq!(c.name.as_str(), "env@h");
    assert_eq!(c.http_addr.port(), 1002);
    assert_eq!(c.cluster_addr.port(), 2001);
    assert_eq!(c.membership.down_after, Duration::from_secs(5));
    let flags = Flags {
        name: Some("flag@h".into()),
        static_hosts: Some(vec!["127.0.0.1:9".into()]),
        ..Flags::default()
    };
    let c = load(text, &vars, &flags).unwrap();
    assert_eq!(c.name.as_str(), "flag@h");
    assert_eq!(c.http_addr.port(), 1002);
    match &c.topologies[STATIC_HOSTS_TOPOLOGY].strategy {
        StrategyConfig::Static(s) => assert_eq!(s.hosts, vec!["127.0.0.1:9".to_string()]),
        #[allow(unreachable_patterns)]
        other => panic!("not static: {other:?}"),
    }
}

#[test]
fn environment_sets_nested_topology_keys() {
    let c = load(
        "[topologies.peers]\nstrategy = \"static\"\nhosts = [\"127.0.0.1:5\"]\n",
        &[
            ("RALLYPOINT_TOPOLOGIES__PEERS__RESOLVE_INTERVAL", "7s"),
            ("RALLYPOINT_TOPOLOGIES__PEERS__AUTHORITATIVE", "true"),
        ],
        &Flags::default(),
    )
    .unwrap();
    let t = &c.topologies["peers"];
    assert_eq!(t.authoritative, Some(true));
    match &t.strategy {
        StrategyConfig::Static(s) => assert_eq!(s.resolve_interval, Duration::from_secs(7)),
        #[allow(unreachable_patterns)]
        other => panic!("not static: {other:?}"),
    }
}

#[test]
fn cookie_from_the_higher_layer_wins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cookie");
    std::fs::write(&path, "cookie-from-the-file\n").unwrap();
    let text = format!("cookie_file = {:?}\n", path.display().to_string());
    let c = load(
        &text,
        &[("RALLYPOINT_COOKIE", "cookie-from-the-environment")],
        &Flags::default(),
    )
    .unwrap();
    assert_eq!(
        c.load_cookie().unwrap().unwrap(),
        Cookie::new("cookie-from-the-environment")
    );
    let flags = Flags {
        cookie_file: Some(path.clone()),
        ..Flags::default()
    };
    let c = load(
        "",
        &[("RALLYPOINT_COOKIE", "cookie-from-the-environment")],
        &flags,
    )
    .unwrap();
    assert_eq!(
        c.load_cookie().unwrap().unwrap(),
        Cookie::new("cookie-from-the-file")
    );
    let both = format!(
        "cookie = \"cookie-in-the-same-file\"\ncookie_file = {:?}\n",
        path.display().to_string()
    );
    let err = load(&both, &[], &Flags::default()).unwrap_err().to_string();
    assert!(
        err.contains("`cookie`") && err.contains("not both"),
        "{err}"
    );
    let missing = Flags {
        cookie_file: Some(dir.path().join("absent")),
        ..Flags::default()
    };
    let c = load("", &[], &missing).unwrap();
    assert!(c.load_cookie().is_err());
}

fn refused(text: &str, vars: &[(&str, &str)]) -> String {
    load(text, vars, &Flags::default())
        .expect_err("refused")
        .to_string()
}

#[test]
fn unknown_keys_are_refused_with_the_key_named() {
    let e = refused("colour = \"blue\"\n", &[]);
    assert!(e.contains("unknown configuration key `colour`"), "{e}");
    assert!(e.contains("`cluster_addr`"), "lists the known keys: {e}");
    assert!(e.contains(".toml"), "names the file: {e}");

    let e = refused("[membership]\nhearbeat_interval = \"1s\"\n", &[]);
    assert!(
        e.contains("`membership.hearbeat_interval`") && e.contains("heartbeat_interval"),
        "{e}"
    );

    let e = refused(
        "[topologies.p]\nstrategy = \"static\"\nhosts = []\nhostz = [\"a:1\"]\n",
        &[],
    );
    assert!(e.contains("`topologies.p.hostz`"), "{e}");

    let e = refused("", &[("RALLYPOINT_NAMEE", "x@y")]);
    assert!(
        e.contains("`namee`") && e.contains("the environment"),
        "{e}"
    );
}

#[test]
fn bad_values_are_refused_with_key_value_and_expectation() {
    let e = refused("[membership]\ndown_after = \"soon\"\n", &[]);
    assert!(
        e.contains("`membership.down_after`") && e.contains("\"soon\"") && e.contains("duration"),
        "{e}"
    );

    let e = refused(
        "[membership]\nheartbeat_interval = \"2s\"\ndown_after = \"1s\"\n",
        &[],
    );
    assert!(
        e.contains("`membership.down_after`") && e.contains("longer than heartbeat_interval"),
        "{e}"
    );

    let e = refused("[membership]\nmax_frame = \"big\"\n", &[]);
    assert!(
        e.contains("`membership.max_frame`") && e.contains("\"big\""),
        "{e}"
    );

    let e = refused("http_addr = \"localhost\"\n", &[]);
    assert!(
        e.contains("`http_addr`") && e.contains("\"localhost\"") && e.contains("address"),
        "{e}"
    );

    let e = refused("name = \"no-at-sign\"\n", &[]);
    assert!(e.contains("`name`") && e.contains("no-at-sign"), "{e}");

    let e = refused("[topologies.p]\nstrategy = \"carrier-pigeon\"\n", &[]);
    assert!(
        e.contains("`topologies.p.strategy`")
            && e.contains("carrier-pigeon")
            && e.contains("`static`"),
        "{e}"
    );

    let e = refused("[topologies.p]\nhosts = []\n", &[]);
    assert!(
        e.contains("`topologies.p.strategy`") && e.contains("missing"),
        "{e}"
    );

    let e = refused("[topologies.p]\nstrategy = \"static\"\n", &[]);
    assert!(
        e.contains("`topologies.p.hosts`") && e.contains("missing"),
        "{e}"
    );

    let e = refused(
        "[topologies.p]\nstrategy = \"static\"\nhosts = [\"nope\"]\n",
        &[],
    );
    assert!(
        e.contains("`topologies.p.hosts`") && e.contains("\"nope\""),
        "{e}"
    );

    let e = refused(
        "[topologies.p]\nstrategy = \"static\"\nhosts = []\nprune_after = 5\n",
        &[],
    );
    assert!(
        e.contains("`topologies.p.prune_after`") && e.contains('5'),
        "{e}"
    );

    let e = refused("", &[("RALLYPOINT_MEMBERSHIP__DOWN_AFTER", "x")]);
    assert!(
        e.contains("`membership.down_after`") && e.contains("the environment"),
        "{e}"
    );

    let e = refused("cookie = \"  \"\n", &[]);
    assert!(
        e.contains("`cookie`") && e.contains("at least 16 bytes"),
        "{e}"
    );

    let e = refused("name = [1, 2\n", &[]);
    assert!(e.contains("cannot load"), "{e}");
}

#[test]
fn a_missing_file_is_refused() {
    let e = Config::load(
        Some(Path::new("/nonexistent/rallypoint.toml")),
        env(&[]),
        &Flags::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/nonexistent/rallypoint.toml"), "{e}");
}

#[test]
fn the_effective_configuration_prints_as_toml_with_the_cookie_redacted() {
    let c = load(
        "name = \"a@h\"\ncookie = \"s3cret-of-the-cluster\"\n[topologies.peers]\nstrategy = \"static\"\nhosts = [\"127.0.0.1:5\"]\n",
        &[],
        &Flags::default(),
    )
    .unwrap();
    let text = toml::to_string(&c).expect("serializes");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
    assert!(text.contains("strategy = \"static\""), "{text}");
    assert!(text.contains("down_after = \"3s\""), "{text}");
    assert!(text.contains("prune_after = \"30s\""), "{text}");
    // What it prints loads again, to the same configuration (the cookie aside).
    let again = load(
        &text.replace("cookie = \"<redacted>\"", ""),
        &[],
        &Flags::default(),
    )
    .unwrap();
    assert_eq!(again.topologies, c.topologies);
    assert_eq!(again.membership, c.membership);
    assert_eq!(again.name, c.name);
}

#[cfg(feature = "dns")]
#[test]
fn a_dns_topology_is_read_and_its_bad_values_are_refused() {
    let c = load(
        r#"
        [topologies.dns]
        strategy = "dns"
        query = "myapp-headless.default.svc.cluster.local"
        record = "a"
        interval = "2s"
        nameservers = ["127.0.0.1:5353"]
        prune_after = "10s"
        "#,
        &[],
        &Flags::default(),
    )
    .unwrap();
    let t = &c.topologies["dns"];
    assert_eq!(t.strategy.kind(), "dns");
    assert_eq!(t.prune_after, Duration::from_secs(10));
    let e = refused(
        "[topologies.d]\nstrategy = \"dns\"\nquery = \"x.example\"\nrecord = \"mx\"\n",
        &[],
    );
    assert!(e.contains("topologies.d"), "{e}");
    let e = refused(
        "[topologies.d]\nstrategy = \"dns\"\nquery = \"x.example\"\nnameservers = [\"nope\"]\n",
        &[],
    );
    assert!(e.contains("topologies.d.nameservers"), "{e}");
}

#[test]
fn min_members_defaults_to_zero_and_is_checked() {
    let c = Config::load(None, env(&[]), &Flags::default()).unwrap();
    assert_eq!(c.min_members, 0);
    let c = load("min_members = 2\n", &[], &Flags::default()).unwrap();
    assert_eq!(c.min_members, 2);
    let c = load(
        "min_members = 2\n",
        &[("RALLYPOINT_MIN_MEMBERS", "3")],
        &Flags::default(),
    )
    .unwrap();
    assert_eq!(c.min_members, 3, "the environment overrides the file");
    let e = load("min_members = -1\n", &[], &Flags::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("`min_members`") && e.contains("-1"), "{e}");
}

#[test]
fn the_http_token_is_read_from_the_environment_and_redacted() {
    let c = Config::load(None, env(&[]), &Flags::default()).unwrap();
    assert!(c.http_token.is_none());
    let c = load("", &[("RALLYPOINT_HTTP_TOKEN", "t0ken")], &Flags::default()).unwrap();
    assert_eq!(c.http_token.as_ref().map(Secret::expose), Some("t0ken"));
    let text = toml::to_string(&c).unwrap();
    assert!(
        !text.contains("t0ken") && text.contains("http_token = \"<redacted>\""),
        "{text}"
    );
    assert!(!format!("{c:?}").contains("t0ken"));
    let e = load("http_token = \"two words\"\n", &[], &Flags::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`http_token`") && !e.contains("two words"),
        "{e}"
    );
}

#[test]
fn event_history_defaults_to_1024() {
    let c = Config::load(None, env(&[]), &Flags::default()).unwrap();
    assert_eq!(c.event_history, DEFAULT_EVENT_HISTORY);
    assert_eq!(DEFAULT_EVENT_HISTORY, 1024);
    let c = load("event_history = 0\n", &[], &Flags::default()).unwrap();
    assert_eq!(c.event_history, 0);
    let e = load("event_history = \"lots\"\n", &[], &Flags::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("`event_history`") && e.contains("lots"), "{e}");
}

#[test]
fn log_format_is_text_or_json() {
    let c = Config::load(None, env(&[]), &Flags::default()).unwrap();
    assert_eq!(c.log_format, LogFormat::Text);
    let c = load("log_format = \"json\"\n", &[], &Flags::default()).unwrap();
    assert_eq!(c.log_format, LogFormat::Json);
    let c = load("", &[("RALLYPOINT_LOG_FORMAT", "json")], &Flags::default()).unwrap();
    assert_eq!(c.log_format, LogFormat::Json);
    let e = load("log_format = \"xml\"\n", &[], &Flags::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("`log_format`") && e.contains("xml"), "{e}");
}

#[test]
fn kubernetes_service_links_are_not_configuration() {
    // A Service named `rallypoint` (or `rallypoint-api`) in the namespace gives every
    // pod these variables; they must not stop the daemon as unknown keys.
    let links = [
        ("RALLYPOINT_PORT", "tcp://10.96.0.12:45894"),
        ("RALLYPOINT_PORT_45894_TCP", "tcp://10.96.0.12:45894"),
        ("RALLYPOINT_PORT_45894_TCP_ADDR", "10.96.0.12"),
        ("RALLYPOINT_PORT_45894_TCP_PORT", "45894"),
        ("RALLYPOINT_PORT_45894_TCP_PROTO", "tcp"),
        ("RALLYPOINT_SERVICE_HOST", "10.96.0.12"),
        ("RALLYPOINT_SERVICE_PORT", "45894"),
        ("RALLYPOINT_SERVICE_PORT_HTTP", "45894"),
        ("RALLYPOINT_API_SERVICE_HOST", "10.96.0.13"),
        ("RALLYPOINT_API_PORT_80_TCP_ADDR", "10.96.0.13"),
        ("RALLYPOINT_SERVICE_SERVICE_HOST", "10.96.0.14"),
    ];
    let c = load("", &links, &Flags::default()).expect("service links are ignored");
    assert_eq!(c.http_addr.to_string(), "127.0.0.1:45894");
    // Real keys still count, and unknown ones are still refused.
    let c = load(
        "",
        &[
            ("RALLYPOINT_PORT", "tcp://x:1"),
            ("RALLYPOINT_MIN_MEMBERS", "2"),
        ],
        &Flags::default(),
    )
    .unwrap();
    assert_eq!(c.min_members, 2);
    let err = refused("", &[("RALLYPOINT_PORTS", "1")]);
    assert!(err.contains("ports"), "{err}");
    let err = refused("", &[("RALLYPOINT_SERVICE_HOSTS", "1")]);
    assert!(err.contains("service_hosts"), "{err}");
}

/// Found by the `config_loader` fuzz target: the config crate reads a variable's name as
/// a path, and `RALLYPOINT_MA[505151615]` made it allocate an array of 500 million
/// entries (48 GB) before anything could refuse it.
#[test]
fn a_variable_name_with_an_index_is_refused_not_allocated() {
    let err = refused("", &[("RALLYPOINT_MA[505151615]", "2")]);
    assert!(err.contains("RALLYPOINT_MA[505151615]"), "{err}");
    assert!(err.contains("the environment"), "{err}");
    let err = refused("", &[("RALLYPOINT_MEMBERSHIP.DOWN_AFTER", "2s")]);
    assert!(err.contains("MEMBERSHIP.DOWN_AFTER"), "{err}");
}

/// Found by the `config_loader` fuzz target: a quoted key with an index in the file.
#[test]
fn a_file_key_with_an_index_is_refused_not_allocated() {
    let err = refused("\"-0[-120855006]\" = 5\n", &[]);
    assert!(err.contains("-0[-120855006]"), "{err}");
    let err = refused(
        "[topologies.\"a.b\"]\nstrategy = \"static\"\nhosts = []\n",
        &[],
    );
    assert!(err.contains("topologies.a.b"), "{err}");
    // Ordinary names with `-` and `_` are fine.
    load(
        "[topologies.lan-2_b]\nstrategy = \"static\"\nhosts = []\n",
        &[],
        &Flags::default(),
    )
    .expect("a topology name with - and _");
}

#[test]
fn a_cookie_shorter_than_16_bytes_is_refused_wherever_it_is_set() {
    let e = refused("", &[("RALLYPOINT_COOKIE", "x")]);
    assert!(
        e.contains("`cookie`") && e.contains("the environment") && e.contains("1 byte"),
        "{e}"
    );
    assert!(e.contains("at least 16 bytes"), "{e}");
    assert!(
        e.contains("`export RALLYPOINT_COOKIE=\"$(head -c 32 /dev/urandom | base64)\"`"),
        "how to make one: {e}"
    );
    let e = refused("cookie = \"fifteen-bytes!!\"\n", &[]);
    assert!(e.contains("`cookie`") && e.contains(".toml"), "{e}");
    assert!(
        !e.contains("fifteen-bytes!!"),
        "the secret is not shown: {e}"
    );
    assert!(
        e.contains("`head -c 32 /dev/urandom | base64` and set `cookie` to its output"),
        "{e}"
    );
    // 16 bytes are enough, white space around them aside.
    let c = load(
        "",
        &[("RALLYPOINT_COOKIE", "\u{3000} sixteen-bytes!!! \n")],
        &Flags::default(),
    )
    .unwrap();
    assert_eq!(
        c.load_cookie().unwrap().unwrap(),
        Cookie::new("sixteen-bytes!!!")
    );

    // A cookie file: refused when it is read, with the file's own how-to.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cookie");
    std::fs::write(&path, "x\n").unwrap();
    let flags = Flags {
        cookie_file: Some(path.clone()),
        ..Flags::default()
    };
    let c = load("", &[], &flags).unwrap();
    let e = c.load_cookie().unwrap_err();
    assert!(
        matches!(e, ConfigError::Cookie(CookieError::TooShort { len: 1, .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("base64 >"), "{e}");

    // Accepted cookies too, by their index.
    let e = refused(
        "accept_cookies = [\"an-old-cookie-long-enough\", \"short\"]\n",
        &[],
    );
    assert!(e.contains("`accept_cookies[1]`"), "{e}");
    assert!(!e.contains("short\""), "the secret is not shown: {e}");
    let e = refused(
        "",
        &[("RALLYPOINT_ACCEPT_COOKIES", "an-old-cookie-long-enough,x")],
    );
    assert!(
        e.contains("`accept_cookies[1]`") && e.contains("export RALLYPOINT_ACCEPT_COOKIES="),
        "{e}"
    );
    std::fs::write(&path, "short\n").unwrap();
    let text = format!("accept_cookie_files = [{:?}]\n", path.display().to_string());
    let c = load(&text, &[], &Flags::default()).unwrap();
    assert!(matches!(
        c.load_accepted_cookies(),
        Err(ConfigError::Cookie(CookieError::TooShort { len: 5, .. }))
    ));
}

#[test]
fn a_cookie_file_and_the_environment_trim_the_same_white_space() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cookie");
    std::fs::write(
        &path,
        "\u{3000}\u{a0}\u{b}the-cluster-cookie-1234\u{b}\u{a0}\u{3000}\n",
    )
    .unwrap();
    let from_file = load(
        &format!("cookie_file = {:?}\n", path.display().to_string()),
        &[],
        &Flags::default(),
    )
    .unwrap()
    .load_cookie()
    .unwrap()
    .unwrap();
    let from_env = load(
        "",
        &[("RALLYPOINT_COOKIE", "\u{b}the-cluster-cookie-1234\u{3000}")],
        &Flags::default(),
    )
    .unwrap()
    .load_cookie()
    .unwrap()
    .unwrap();
    let from_key = load(
        "cookie = \"\u{a0}the-cluster-cookie-1234\u{a0}\"\n",
        &[],
        &Flags::default(),
    )
    .unwrap()
    .load_cookie()
    .unwrap()
    .unwrap();
    assert_eq!(from_file, Cookie::new("the-cluster-cookie-1234"));
    assert_eq!(from_env, from_file);
    assert_eq!(from_key, from_file);
    // A cookie of digits stays the string it is (no number parsing of variables).
    let c = load(
        "",
        &[
            ("RALLYPOINT_COOKIE", "0012345678901234567"),
            ("RALLYPOINT_ACCEPT_COOKIES", "0098765432109876543"),
        ],
        &Flags::default(),
    )
    .unwrap();
    assert_eq!(
        c.load_cookie().unwrap().unwrap(),
        Cookie::new("0012345678901234567")
    );
    assert_eq!(
        c.load_accepted_cookies().unwrap(),
        vec![Cookie::new("0098765432109876543")]
    );
}

#[test]
fn accepted_cookies_come_from_every_layer_and_are_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (dir.path().join("old"), dir.path().join("older"));
    std::fs::write(&p1, "old-cookie-from-a-file\n").unwrap();
    std::fs::write(&p2, "older-cookie-from-a-file\n").unwrap();
    let text = format!(
        "cookie = \"the-new-cookie-of-the-cluster\"\n\
         accept_cookies = [\"old-cookie-in-the-file\"]\n\
         accept_cookie_files = [{:?}]\n",
        p1.display().to_string()
    );
    let c = load(&text, &[], &Flags::default()).unwrap();
    assert_eq!(
        c.load_accepted_cookies().unwrap(),
        vec![
            Cookie::new("old-cookie-in-the-file"),
            Cookie::new("old-cookie-from-a-file")
        ]
    );
    let printed = toml::to_string(&c).unwrap();
    assert!(
        printed.contains("accept_cookies = [\"<redacted>\"]"),
        "{printed}"
    );
    assert!(printed.contains("accept_cookie_files = ["), "{printed}");
    assert!(!printed.contains("old-cookie-in-the-file"), "{printed}");
    assert!(!format!("{c:?}").contains("old-cookie-in-the-file"));

    // The environment replaces the file's lists: comma-separated, white space around
    // each item ignored.
    let files = format!("{} , {}", p1.display(), p2.display());
    let c = load(
        &text,
        &[
            (
                "RALLYPOINT_ACCEPT_COOKIES",
                "first-accepted-cookie , second-accepted-cookie",
            ),
            ("RALLYPOINT_ACCEPT_COOKIE_FILES", &files),
        ],
        &Flags::default(),
    )
    .unwrap();
    assert_eq!(c.accept_cookie_files, vec![p1.clone(), p2.clone()]);
    assert_eq!(
        c.load_accepted_cookies().unwrap(),
        vec![
            Cookie::new("first-accepted-cookie"),
            Cookie::new("second-accepted-cookie"),
            Cookie::new("old-cookie-from-a-file"),
            Cookie::new("older-cookie-from-a-file"),
        ]
    );

    // Not a list in the file: refused, the value redacted.
    let e = refused("accept_cookies = \"a-secret-not-in-a-list\"\n", &[]);
    assert!(
        e.contains("`accept_cookies`") && e.contains("a list"),
        "{e}"
    );
    assert!(!e.contains("a-secret-not-in-a-list"), "{e}");
    let e = refused("accept_cookies = [123]\n", &[]);
    assert!(
        e.contains("`accept_cookies[0]`") && !e.contains("123"),
        "{e}"
    );
    let e = refused("", &[("RALLYPOINT_ACCEPT_COOKIE_FILES", "/a,,/b")]);
    assert!(e.contains("`accept_cookie_files[1]`"), "{e}");
    // A file that cannot be read is named when the cookies are loaded.
    let c = load(
        "accept_cookie_files = [\"/nonexistent/old\"]\n",
        &[],
        &Flags::default(),
    )
    .unwrap();
    let e = c.load_accepted_cookies().unwrap_err().to_string();
    assert!(e.contains("/nonexistent/old"), "{e}");
    // Neither set: none.
    let c = load("", &[], &Flags::default()).unwrap();
    assert!(c.load_accepted_cookies().unwrap().is_empty());
}

#[test]
fn a_device_or_a_huge_file_as_configuration_is_refused_unread() {
    let e = Config::load(Some(Path::new("/dev/zero")), [], &Flags::default()).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(MAX_CONFIG_FILE + 1).unwrap();
    let e = Config::load(Some(&big), [], &Flags::default()).unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");
}

/// A heartbeat interval set longer than the default `down_after` blames the key that was
/// set, from the variable that set it, not the default it collides with.
#[test]
fn a_heartbeat_interval_past_the_default_down_after_blames_itself_and_its_variable() {
    let e = refused("", &[("RALLYPOINT_MEMBERSHIP__HEARTBEAT_INTERVAL", "5s")]);
    assert!(
        e.contains("`membership.heartbeat_interval` = 5s")
            && e.contains("the environment variable RALLYPOINT_MEMBERSHIP__HEARTBEAT_INTERVAL")
            && e.contains("down_after (3s"),
        "{e}"
    );
    // Both set, and wrong together: down_after is named, with its own origin.
    let e = refused(
        "[membership]\ndown_after = \"1s\"\n",
        &[("RALLYPOINT_MEMBERSHIP__HEARTBEAT_INTERVAL", "2s")],
    );
    assert!(
        e.contains("`membership.down_after` = 1s") && e.contains(".toml"),
        "{e}"
    );
}

#[test]
fn an_unknown_key_names_its_variable_and_the_key_it_is_closest_to() {
    let e = refused("", &[("RALLYPOINT_NMAE", "a@b")]);
    assert!(
        e.contains("the environment variable RALLYPOINT_NMAE")
            && e.ends_with("did you mean `name`?"),
        "{e}"
    );
    let e = refused("[membership]\nheartbeat_intervl = \"1s\"\n", &[]);
    assert!(e.ends_with("did you mean `heartbeat_interval`?"), "{e}");
    // Nothing close: no suggestion.
    let e = refused("zzzzzzzz = 1\n", &[]);
    assert!(!e.contains("did you mean"), "{e}");
    let e = refused("[topologies.k]\nstrategy = \"gosip\"\n", &[]);
    assert!(e.ends_with("did you mean `gossip`?"), "{e}");
    let e = refused(
        "",
        &[
            ("RALLYPOINT_TOPOLOGIES__K__STRATEGY", "static"),
            ("RALLYPOINT_TOPOLOGIES__K__HOSTZ", "a:1"),
        ],
    );
    assert!(
        e.contains("RALLYPOINT_TOPOLOGIES__K__HOSTZ") && e.contains("did you mean `hosts`?"),
        "{e}"
    );
}

#[test]
fn edit_distance_counts_a_swap_of_neighbours_as_one() {
    assert_eq!(edit_distance("nmae", "name"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(
        closest("gosip", "one of `static`, `gossip`"),
        Some("gossip")
    );
    assert_eq!(closest("gossip", "one of `gossip`"), None);
    assert_eq!(
        closest("Gossip", "one of `static`, `gossip`"),
        Some("gossip")
    );
    assert_eq!(closest(&"x".repeat(100_000), "one of `gossip`"), None);
}

/// A list inside a topology, from the environment, is comma-separated, as top-level
/// lists are; the syntax of a file's list is not needed (nor accepted as one string).
#[test]
fn a_topology_list_from_the_environment_is_comma_separated() {
    let c = Config::load(
        None,
        env(&[
            ("RALLYPOINT_TOPOLOGIES__S__STRATEGY", "static"),
            (
                "RALLYPOINT_TOPOLOGIES__S__HOSTS",
                "10.0.0.1:45893, node2:45893",
            ),
        ]),
        &Flags::default(),
    )
    .unwrap();
    match &c.topologies["s"].strategy {
        StrategyConfig::Static(s) => {
            assert_eq!(
                s.hosts,
                vec!["10.0.0.1:45893".to_owned(), "node2:45893".to_owned()]
            )
        }
        other => panic!("{other:?}"),
    }
}

/// Two daemons on one host differ in their cluster ports, so their default names
/// differ too.
#[test]
fn the_default_name_carries_a_cluster_port_that_is_not_the_default() {
    let flags = Flags {
        cluster_addr: Some("0.0.0.0:45993".parse().unwrap()),
        ..Flags::default()
    };
    let c = Config::load(None, env(&[]), &flags).unwrap();
    assert_eq!(c.name.basename(), "rallypoint-45993");
    let c = Config::load(
        None,
        env(&[("RALLYPOINT_CLUSTER_ADDR", "0.0.0.0:45893")]),
        &Flags::default(),
    )
    .unwrap();
    assert_eq!(c.name.basename(), "rallypoint");
    let c = Config::load(
        None,
        env(&[("RALLYPOINT_CLUSTER_ADDR", "127.0.0.1:0")]),
        &Flags::default(),
    )
    .unwrap();
    assert_eq!(c.name.basename(), "rallypoint");
}

/// A DNS `query` list from the environment is comma-separated too; a comma is never
/// taken into a name.
#[test]
fn a_dns_query_list_from_the_environment_is_comma_separated() {
    let c = Config::load(
        None,
        env(&[
            ("RALLYPOINT_TOPOLOGIES__D__STRATEGY", "dns"),
            (
                "RALLYPOINT_TOPOLOGIES__D__QUERY",
                "a.ns.example, b.ns.example",
            ),
        ]),
        &Flags::default(),
    )
    .unwrap();
    match &c.topologies["d"].strategy {
        StrategyConfig::Dns(d) => {
            let names: Vec<&str> = d.query.iter().map(|q| q.name.as_str()).collect();
            assert_eq!(names, ["a.ns.example", "b.ns.example"]);
        }
        other => panic!("{other:?}"),
    }
    let e = refused(
        "",
        &[
            ("RALLYPOINT_TOPOLOGIES__D__STRATEGY", "dns"),
            ("RALLYPOINT_TOPOLOGIES__D__QUERY", "a.ns.example,"),
        ],
    );
    assert!(
        e.contains("`topologies.d.query[1].name` = \"\"") && e.contains("expected a DNS name"),
        "{e}"
    );
}
