//! The configuration loader, as the daemon runs it: a TOML file, then environment
//! variables. The input is the file's text, optionally followed by a line `%%` and
//! `KEY=VALUE` lines that become `RALLYPOINT_KEY=VALUE`. Whatever the text, loading
//! returns a configuration or an error naming the key; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rallypoint::config::{Config, Flags};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, env) = text.split_once("\n%%\n").unwrap_or((text, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (format!("RALLYPOINT_{k}"), v.to_owned()))
        .collect();
    if let Err(e) = Config::load_str(toml, env, &Flags::default()) {
        // Errors render (they are what the operator reads).
        let _ = e.to_string();
    }
});
