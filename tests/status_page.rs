//! The status page (`GET /`) in a real headless Chromium, driven through ChromeDriver's
//! WebDriver API: the page loads, shows this node and its members, and a `nodedown`
//! appears on it live, without a reload.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/setup.sh` installs them).
//! Without them the test is skipped with a message, except under `CI=true`, where it
//! fails. Run: `cargo test --test status_page`.
#![cfg(feature = "daemon")]

#[path = "support/http_client.rs"]
mod http_client;
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use support::daemon::{Daemon, Spec};
use support::ports::free_addr;
use tokio::time::{Instant, sleep};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the page may take to show what the API says.
const SHOW: Duration = Duration::from_secs(30);
/// How often the page's DOM is read while waiting (a poll of the browser, not a sleep
/// that stands for an event: each check has a deadline).
const POLL: Duration = Duration::from_millis(100);

/// ChromeDriver as a child process, killed when dropped.
struct Driver {
    child: Child,
    addr: std::net::SocketAddr,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Driver {
        let addr = free_addr();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={}", addr.port()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut driver = Driver {
            child,
            addr,
            session: None,
            _profile: profile,
        };
        let deadline = Instant::now() + SHOW;
        loop {
            if let Ok(v) = http_client::get(addr, "/status").await
                && v["value"]["ready"] == json!(true)
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            sleep(POLL).await;
        }
        // The flags keep Chromium off every network but loopback (no background
        // fetches, no component updates) and make it run as root in a container.
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", driver._profile.path().display()),
                ],
            },
        }}});
        let (status, v) = http_client::post(addr, "/session", &caps)
            .await
            .expect("new session");
        assert_eq!(status, StatusCode::OK, "new session: {v}");
        driver.session = Some(
            v["value"]["sessionId"]
                .as_str()
                .expect("session id")
                .to_owned(),
        );
        driver
    }

    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session.as_deref().unwrap_or(""))
    }

    async fn open(&self, url: &str) {
        let (status, v) = http_client::post(self.addr, &self.path("/url"), &json!({"url": url}))
            .await
            .expect("navigate");
        assert_eq!(status, StatusCode::OK, "navigate to {url}: {v}");
    }

    /// Runs a script in the page, returning its result.
    async fn eval(&self, script: &str) -> Value {
        let body = json!({"script": script, "args": []});
        let (status, v) = http_client::post(self.addr, &self.path("/execute/sync"), &body)
            .await
            .expect("execute");
        assert_eq!(status, StatusCode::OK, "script {script}: {v}");
        v["value"].clone()
    }

    /// Waits until `script` returns `want`.
    async fn wait_for(&self, script: &str, want: Value, what: &str) {
        let deadline = Instant::now() + SHOW;
        let mut last;
        loop {
            last = self.eval(script).await;
            if last == want {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            sleep(POLL).await;
        }
        let text = self.eval("return document.body.innerText").await;
        panic!("{what}: {script} gave {last}, expected {want}; the page reads:\n{text}");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if self.session.is_some() {
            // Ends the browser; the driver is killed next in any case.
            let addr = self.addr;
            let path = self.path("");
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    let _ = rt.block_on(http_client::request(Method::DELETE, addr, &path, None));
                }
            })
            .join();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn browser_available() -> bool {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return true;
    }
    let msg = format!("{CHROMIUM} or {CHROMEDRIVER} missing (scripts/setup.sh installs them)");
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("skipped: {msg}");
    false
}

fn member_state(name: &str) -> String {
    format!(
        "const r = document.querySelector('#members tr[data-node=\"{name}\"]'); \
         return r ? r.dataset.state : null;"
    )
}

#[tokio::test]
async fn the_status_page_shows_the_members_and_a_nodedown_live() {
    if !browser_available() {
        return;
    }
    let a_spec = Spec::new("a");
    let b_spec = Spec::new("b").peers(&[&a_spec]);
    let a_spec = a_spec.peers(&[&b_spec]);
    let a = Daemon::start(a_spec).await;
    let mut b = Daemon::start(b_spec).await;
    let mut w = a.watch().await;
    w.wait_members(&[b.name()], SHOW).await;

    let driver = Driver::start().await;
    driver.open(&format!("http://{}/", a.spec.http_addr)).await;
    assert_eq!(
        driver.eval("return document.title").await,
        json!("rallypoint")
    );
    // This node, and b up with its address.
    driver
        .wait_for(
            "return document.getElementById('self').textContent.startsWith('a@127.0.0.1')",
            json!(true),
            "the page names this node",
        )
        .await;
    driver
        .wait_for(&member_state(b.name()), json!("up"), "b shows as up")
        .await;
    let row = driver
        .eval(&format!(
            "return document.querySelector('#members tr[data-node=\"{}\"]').innerText",
            b.name()
        ))
        .await;
    let row = row.as_str().unwrap_or_default().to_owned();
    assert!(row.contains(&b.spec.cluster_addr.to_string()), "{row}");
    driver
        .wait_for(
            "return document.getElementById('conn').textContent",
            json!("live"),
            "the event stream is followed",
        )
        .await;
    // The topology and its candidate.
    driver
        .wait_for(
            "return document.querySelector('#topologies tbody').innerText.includes('static')",
            json!(true),
            "the topology is listed",
        )
        .await;
    // Topology health comes on a stream, not by polling: the static strategy reports
    // every second (its resolve_interval), and each report's time shows on the page
    // while it never fetches /v1/topologies.
    let last_success =
        "document.querySelector('#topologies tr[data-topology=\"peers\"]').dataset.lastSuccess";
    let first = driver.eval(&format!("return {last_success}")).await;
    assert!(first.as_str().is_some_and(|s| !s.is_empty()), "{first}");
    driver
        .wait_for(
            &format!("return {last_success} !== {first}"),
            json!(true),
            "a later report of the strategy shows live",
        )
        .await;
    let polled = driver
        .eval(
            "return performance.getEntriesByType('resource')\
             .filter(e => new URL(e.name).pathname === '/v1/topologies').length",
        )
        .await;
    assert_eq!(polled, json!(0), "the page polled /v1/topologies");

    // Mark the document: a reload would lose the mark.
    driver
        .eval("window.__notReloaded = true; return true")
        .await;
    b.kill9();
    w.wait_down(b.name(), SHOW).await;
    driver
        .wait_for(&member_state(b.name()), json!("down"), "b shows as down")
        .await;
    driver
        .wait_for(
            "return [...document.querySelectorAll('#events tr[data-kind=\"nodedown\"]')]\
             .some(r => r.innerText.includes('b@127.0.0.1') \
                        && r.innerText.includes('connection_closed'))",
            json!(true),
            "the nodedown event is listed with its reason",
        )
        .await;
    assert_eq!(
        driver.eval("return window.__notReloaded === true").await,
        json!(true),
        "the page was not reloaded"
    );
}

#[tokio::test]
async fn with_a_token_the_status_page_asks_for_it_and_then_shows_the_members() {
    if !browser_available() {
        return;
    }
    let token = ("RALLYPOINT_HTTP_TOKEN".to_owned(), "s3cret".to_owned());
    let mut a_spec = Spec::new("a");
    let mut b_spec = Spec::new("b").peers(&[&a_spec]);
    a_spec = a_spec.peers(&[&b_spec]);
    a_spec.env.push(token.clone());
    b_spec.env.push(token);
    let a = Daemon::start(a_spec).await;
    let b = Daemon::start(b_spec).await;

    let driver = Driver::start().await;
    driver.open(&format!("http://{}/", a.spec.http_addr)).await;
    driver
        .wait_for(
            "return getComputedStyle(document.getElementById('auth')).display",
            json!("block"),
            "the page asks for the token",
        )
        .await;
    driver
        .eval(
            "document.getElementById('token').value = 's3cret'; \
             document.querySelector('#auth button').click(); return true",
        )
        .await;
    driver
        .wait_for(&member_state(b.name()), json!("up"), "b shows as up")
        .await;
}
