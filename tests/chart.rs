//! The Helm chart, `charts/rallypoint/`: `scripts/chart_check.py` lints and renders it
//! with Helm's own engine (the PyPI package helm-python-sdk), validates every manifest
//! against the Kubernetes 1.33 schemas (kubernetes-validate, unknown fields refused) and
//! checks what the chart promises, for the default values and each `ci/*.yaml`. Then
//! the daemon itself loads every configuration the chart rendered, with the `--name` the
//! pod would give it: `rallypoint check-config` refuses unknown keys and bad values, so
//! a key the chart writes that the daemon does not take fails here.
//!
//! Needs python3 with helm-python-sdk and kubernetes-validate (`scripts/setup.sh`
//! installs them): without them the test is skipped with the reason, and fails instead
//! under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The exit status of chart_check.py when a Python package is missing.
const MISSING_PACKAGE: i32 = 3;

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips the test, saying why; under `CI=true` fails it instead.
fn skip(reason: &str) {
    if under_ci() {
        panic!(
            "{reason}; under CI=true the chart checks are required (scripts/setup.sh installs what they need)"
        );
    }
    eprintln!("skipping the chart checks: {reason}");
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// The value of `key = "..."` on a line of its own in a TOML text, if any.
fn string_key(toml: &str, key: &str) -> Option<String> {
    toml.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.trim_start().strip_prefix('=')?;
        Some(rest.trim().trim_matches('"').to_owned())
    })
}

#[test]
fn chart_renders_valid_manifests_whose_configs_the_daemon_accepts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let probe = Command::new("python3")
        .args(["-c", "import helm_python, kubernetes_validate, yaml"])
        .output();
    match probe {
        Err(e) => return skip(&format!("python3 cannot be run ({e})")),
        Ok(out) if !out.status.success() => {
            return skip(&format!(
                "python3 lacks helm-python-sdk or kubernetes-validate: {}",
                text(&out.stderr).trim()
            ));
        }
        Ok(_) => {}
    }

    let dir = tempfile::tempdir().expect("a temporary directory");
    let check = Command::new("python3")
        .arg(root.join("scripts/chart_check.py"))
        .arg("--out")
        .arg(dir.path())
        .current_dir(root)
        .output()
        .expect("python3 runs");
    if check.status.code() == Some(MISSING_PACKAGE) {
        return skip(text(&check.stderr).trim());
    }
    assert!(
        check.status.success(),
        "{}",
        describe("scripts/chart_check.py failed", &check)
    );

    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .expect("the output directory")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "args"))
        .collect();
    cases.sort();
    // The default values and at least the DNS and pods examples under ci/.
    assert!(
        cases.len() >= 3,
        "chart_check.py wrote {} configurations: {cases:?}\n{}",
        cases.len(),
        text(&check.stdout)
    );

    let home = tempfile::tempdir().expect("a temporary HOME");
    for args_file in &cases {
        let case = args_file
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let args: Vec<String> = std::fs::read_to_string(args_file)
            .expect("the arguments")
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(
            args.first().map(String::as_str),
            Some("check-config"),
            "{case}: {args:?}"
        );
        let config = std::fs::read_to_string(args_file.with_extension("toml"))
            .expect("the rendered config.toml");

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rallypoint"));
        cmd.args(&args);
        // Only what the pod gives the daemon: no RALLYPOINT_* from this environment.
        for (key, _) in std::env::vars() {
            if key.starts_with("RALLYPOINT_") {
                cmd.env_remove(key);
            }
        }
        let out = cmd
            .env("RALLYPOINT_COOKIE", "chart-test-cookie")
            .env("HOME", home.path())
            .output()
            .expect("rallypoint runs");
        assert!(
            out.status.success(),
            "{}\n--- config.toml\n{config}",
            describe(
                &format!(
                    "{case}: rallypoint {} refused the chart's configuration",
                    args.join(" ")
                ),
                &out
            )
        );

        // The effective configuration is the one the chart meant.
        let effective = text(&out.stdout);
        let name = args
            .iter()
            .position(|a| a == "--name")
            .and_then(|i| args.get(i + 1))
            .expect("check-config gets the pod's --name");
        assert_eq!(
            string_key(&effective, "name").as_deref(),
            Some(name.as_str()),
            "{case}: effective configuration:\n{effective}"
        );
        // Compared as addresses: `[0:0:0:0:0:0:0:0]:1` and `[::]:1` are one.
        let addr = |toml: &str, key: &str| {
            string_key(toml, key).and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        };
        for key in ["http_addr", "cluster_addr"] {
            assert!(
                addr(&config, key).is_some(),
                "{case}: the chart's {key} is not an address:\n{config}"
            );
            assert_eq!(
                addr(&effective, key),
                addr(&config, key),
                "{case}: {key} differs from the chart's; effective configuration:\n{effective}"
            );
        }
        assert_eq!(
            string_key(&effective, "cookie").as_deref(),
            Some("<redacted>"),
            "{case}: the cookie from RALLYPOINT_COOKIE is not in force:\n{effective}"
        );
    }
}
