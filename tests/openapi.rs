//! The HTTP API's OpenAPI document, `docs/openapi.yaml`: a real validator
//! (openapi-spec-validator, from PyPI) checks the document; the daemon serves the same
//! text at `/openapi.yaml`; and a schema-driven fuzzer (Schemathesis, from PyPI) runs
//! every operation but the endless event stream against two live daemons, one with a
//! token and one without: no `5xx`, and every response's status, content type, headers
//! and body conform to the document.
//!
//! Needs python3 with openapi-spec-validator and schemathesis (`scripts/setup.sh`
//! installs them): without them the test is skipped with the reason, and fails instead
//! under `CI=true`. Run: `cargo test --all-features --test openapi`.
#![cfg(feature = "daemon")]

mod support;

use std::path::Path;
use std::process::{Command, Output};

use rallypoint::daemon::client;
use support::daemon::{Daemon, Spec};

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `true` when the tools are there; otherwise skips (fails under `CI=true`).
fn tools_present() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import openapi_spec_validator, schemathesis"])
        .output();
    let reason = match probe {
        Err(e) => format!("python3 cannot be run ({e})"),
        Ok(o) if !o.status.success() => format!(
            "python3 lacks openapi-spec-validator or schemathesis: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Ok(_) => return true,
    };
    assert!(
        !under_ci(),
        "{reason}; under CI=true the OpenAPI checks are required (scripts/setup.sh installs them)"
    );
    eprintln!("skipping the OpenAPI checks: {reason}");
    false
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Schemathesis against the daemon at `base`, with these extra arguments.
async fn fuzz(spec: &Path, base: String, extra: Vec<String>) -> Output {
    let spec = spec.to_owned();
    tokio::task::spawn_blocking(move || {
        // Schemathesis keeps a cache (`.schemathesis/`) in its working directory: not
        // in the source tree.
        let workdir = tempfile::tempdir().expect("tempdir");
        Command::new("schemathesis")
            .current_dir(workdir.path())
            .arg("run")
            .arg(&spec)
            .args(["--url", &base])
            .args(["--checks", "all"])
            // An endless stream: it has its own tests (tests/daemon.rs, http_abuse.rs,
            // status_page.rs).
            .args(["--exclude-path", "/v1/events"])
            .args(["--max-examples", "30", "--request-timeout", "10"])
            .args(["--seed", "1"])
            .args(extra)
            .env("SCHEMATHESIS_HOOKS", "")
            .env("NO_COLOR", "1")
            .output()
            .expect("schemathesis runs")
    })
    .await
    .expect("fuzz")
}

#[tokio::test]
async fn the_openapi_document_is_valid_served_and_every_response_conforms_under_fuzzing() {
    if !tools_present() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = root.join("docs/openapi.yaml");
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&doc)
        .output()
        .expect("openapi-spec-validator runs");
    assert!(
        out.status.success(),
        "{}",
        describe("the document is invalid", &out)
    );

    // Two daemons that see each other (members and topologies are not empty), then one
    // leaves a third behind as departed.
    let mut a = Spec::new("a");
    a.top_toml = "min_members = 1".into();
    let b = Spec::new("b").peers(&[&a]);
    let mut c = Spec::new("c").peers(&[&a]);
    c.top_toml = "http_token = \"t0ken-of-the-fuzz\"".into();
    let a = Daemon::start(a.peers(&[&b, &c])).await;
    let _b = Daemon::start(b).await;
    let mut c = Daemon::start(c).await;
    let mut wa = a.watch().await;
    wa.wait_members(
        &["b@127.0.0.1", "c@127.0.0.1"],
        std::time::Duration::from_secs(30),
    )
    .await;

    let served = client::get(a.spec.http_addr, "/openapi.yaml")
        .await
        .expect("/openapi.yaml");
    assert_eq!(
        served,
        std::fs::read_to_string(&doc).expect("docs/openapi.yaml"),
        "the daemon serves docs/openapi.yaml"
    );

    // With a token: with it, and without it (401s must conform too).
    let base_c = format!("http://{}", c.spec.http_addr);
    let out = fuzz(
        &doc,
        base_c.clone(),
        vec![
            "-H".into(),
            "Authorization: Bearer t0ken-of-the-fuzz".into(),
        ],
    )
    .await;
    assert_clean("fuzzing with the token", &out);
    let out = fuzz(&doc, base_c, Vec::new()).await;
    assert_clean("fuzzing without the token", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("401 Unauthorized (3 operations)"),
        "{}",
        describe("the guarded operations answer 401 without the token", &out)
    );

    c.signal(libc::SIGTERM);
    assert!(
        c.wait_exit(std::time::Duration::from_secs(30))
            .await
            .success()
    );
    wa.wait_down("c@127.0.0.1", std::time::Duration::from_secs(30))
        .await;
    let members = client::get(a.spec.http_addr, "/v1/members")
        .await
        .expect("members");
    assert!(members.contains("\"departed\""), "{members}");
    let out = fuzz(&doc, format!("http://{}", a.spec.http_addr), Vec::new()).await;
    assert_clean("fuzzing a node with a departed peer", &out);
}

/// Schemathesis passed, having tested each of the 8 operations (all but the stream),
/// with no failure (a warning, as for 401s without the token, is not one).
fn assert_clean(what: &str, out: &Output) {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Tested: 8") && !text.contains("FAILURES"),
        "{}",
        describe(what, out)
    );
}
