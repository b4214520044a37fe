//! The layers of `src/` point one way. Each module may use the modules below it, never
//! one above: ground types (node, peer, backoff, cookie, …) below the event bus, the
//! membership and the strategies; those below the cluster handle; the cluster below the
//! configuration and the daemon. (See CONTRIBUTING.md.)
//!
//! This test reads every `.rs` file of `src/`, finds the `crate::NAME` paths in its code
//! (comments left out: a doc link is no dependency), and fails on one that points up, or
//! sideways between the membership and the strategies. Run: `cargo test --test layers`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of the crate and its layer: a module may use its own module
/// and those of lower layers (the ground modules, layer 0, also each other).
const LAYERS: &[(&str, u32)] = &[
    ("node", 0),
    ("peer", 0),
    ("backoff", 0),
    ("cookie", 0),
    ("netutil", 0),
    ("warn_limit", 0),
    ("events", 1),
    ("pubsub", 1),
    ("membership", 2),
    ("strategies", 2),
    ("cluster", 3),
    ("config", 4),
    ("daemon", 5),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The root re-exports of `src/lib.rs` (`pub use module::{A, B};`, over several lines
/// too, `pub use crate::module::A as B;` as well): a path `crate::A` is a use of
/// `module`.
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let code: String = code_lines(lib).collect::<Vec<_>>().join("\n");
    let mut map = BTreeMap::new();
    for statement in code.split(';') {
        let statement = statement.trim();
        let Some(rest) = statement
            .strip_prefix("pub use ")
            .or_else(|| statement.strip_prefix("pub(crate) use "))
        else {
            continue;
        };
        let rest = rest
            .trim()
            .trim_start_matches("crate::")
            .trim_start_matches("self::");
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        let names = names.trim().trim_start_matches('{').trim_end_matches('}');
        for name in names.split(',') {
            // `A as B` exports `B`; `a::B` exports `B`.
            let name = name.split(" as ").last().unwrap_or_default().trim();
            let name = name.rsplit("::").next().unwrap_or_default().trim();
            if !name.is_empty() {
                map.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    map
}

/// The lines of `text` with comments cut off (line comments; `//` inside a string
/// literal is rare enough in `use` paths not to matter).
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(|l| match l.find("//") {
        Some(i) => &l[..i],
        None => l,
    })
}

/// Every `crate::NAME` in the code of `text` (a group `crate::{a::X, b}` gives each of
/// its names, over several lines too), with its line number.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let code: String = code_lines(text).collect::<Vec<_>>().join("\n");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::") {
        let at = from + i;
        from = at + "crate::".len();
        if code[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue; // `some_crate::`, not `crate::`
        }
        let line = code[..at].matches('\n').count() + 1;
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            // The group's top-level entries, up to its closing brace.
            let (mut depth, mut entry, mut entries) = (0usize, String::new(), Vec::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        entries.push(std::mem::take(&mut entry));
                        continue;
                    }
                    _ => {}
                }
                entry.push(c);
            }
            entries.push(entry);
            for e in entries {
                let name = ident(e.trim());
                if !name.is_empty() {
                    out.push((line, name));
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.push((line, name));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None`: the crate root or the binary).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let module = first.strip_suffix(".rs").unwrap_or(first);
    (module != "lib" && module != "main").then(|| module.to_owned())
}

/// The upward (or sideways) uses in `src/`, as "file:line: a uses b".
fn violations(src: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let reexports = reexports(&lib);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let Some(module) = module_of(src, &file) else {
            continue;
        };
        let Some(own) = layer(&module) else {
            found.push(format!(
                "{}: module `{module}` has no layer in tests/layers.rs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read");
        // In a top-level module's own file (`src/m.rs`, `src/m/mod.rs`), `super::` is
        // the crate root: `super::daemon` is `crate::daemon`. (Deeper files' `super::`
        // stays inside their module; no file of src/ climbs two levels.)
        let root_file = file.parent() == Some(src)
            || (file.file_name().is_some_and(|n| n == "mod.rs")
                && file.parent().and_then(Path::parent) == Some(src));
        let mut paths = crate_paths(&text);
        if root_file {
            paths.extend(
                crate_paths(
                    &text
                        .replace("crate::", "krate::")
                        .replace("super::", "crate::"),
                )
                .into_iter()
                .filter(|(_, n)| layer(n).is_some() || reexports.contains_key(n)),
            );
        }
        for (line, name) in paths {
            let used = reexports.get(&name).cloned().unwrap_or(name);
            if used == module {
                continue;
            }
            let Some(theirs) = layer(&used) else {
                continue; // a macro or an item of the root itself
            };
            // Up is refused; so is sideways above the ground (the membership and the
            // strategies know nothing of each other), while ground types may use each
            // other.
            if theirs > own || (theirs == own && own > 0) {
                found.push(format!(
                    "{}:{line}: `{module}` (layer {own}) uses `{used}` (layer {theirs})",
                    file.display()
                ));
            }
        }
    }
    found
}

#[test]
fn no_module_of_src_uses_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "imports against the layers (see CONTRIBUTING.md):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_an_upward_use_a_reexport_and_skips_comments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::write(
        src.join("lib.rs"),
        "pub use cluster::{\n    Builder,\n    Cluster,\n};\npub use daemon::Api as Http;\n",
    )
    .expect("lib");
    std::fs::create_dir(src.join("membership")).expect("dir");
    std::fs::write(
        src.join("membership/core.rs"),
        "use crate::node::Node;\n\
         // [`Cluster`](crate::cluster::Cluster) in a comment\n\
         use crate::strategies::PeerSet;\n\
         fn f(_: &crate::Cluster) {}\n\
         use other_crate::daemon;\n\
         use crate::{\n    node::Name,\n    daemon::{api, http},\n};\n",
    )
    .expect("core");
    std::fs::write(src.join("node.rs"), "use crate::events::Event;\n").expect("node");
    std::fs::write(
        src.join("pubsub.rs"),
        "use super::Http;\nmod tests {\n    use super::*;\n}\n",
    )
    .expect("pubsub");
    let found = violations(src);
    assert_eq!(found.len(), 5, "{found:#?}");
    assert!(found[0].ends_with("core.rs:3: `membership` (layer 2) uses `strategies` (layer 2)"));
    assert!(found[1].ends_with("core.rs:4: `membership` (layer 2) uses `cluster` (layer 3)"));
    assert!(found[2].ends_with("core.rs:6: `membership` (layer 2) uses `daemon` (layer 5)"));
    assert!(found[3].ends_with("node.rs:1: `node` (layer 0) uses `events` (layer 1)"));
    assert!(found[4].ends_with("pubsub.rs:1: `pubsub` (layer 1) uses `daemon` (layer 5)"));
}
