//! The manual holds together: every relative link in `README.md`, `CONTRIBUTING.md`,
//! `CHANGELOG.md` and `docs/*.md` names a file that exists and, with `#anchor`, a
//! heading of that file (as GitHub makes anchors from headings); and the README stays
//! short enough to read on a few screens. Inline links only (`[text](target)`): the
//! manual uses no reference-style links or HTML anchors. Run: `cargo test --test doc_links`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The README's budget: what it is, the two commands, a cluster on one host, the library
/// in twenty lines, links. The manual is in `docs/`.
const README_MAX_BYTES: usize = 12 * 1024;

/// The lines of a Markdown text outside fenced code blocks.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push(line);
        }
    }
    out
}

/// GitHub's anchor of a heading: lower case, spaces to hyphens, other punctuation
/// dropped (letters, digits, `-` and `_` stay).
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings.
fn anchors(text: &str) -> BTreeSet<String> {
    prose_lines(text)
        .into_iter()
        .filter_map(|l| {
            let t = l.trim_start_matches('#');
            (t.len() < l.len() && t.starts_with(' ')).then(|| slug(t))
        })
        .collect()
}

/// The targets of the inline links `[text](target)` of a Markdown text (code spans
/// left out).
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose_lines(text) {
        // Code spans hold examples, not links.
        let plain: String = line.split('`').step_by(2).collect::<Vec<_>>().join("");
        let mut rest = plain.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].trim().to_owned());
                rest = &rest[end..];
            }
        }
    }
    out
}

/// The broken links of the file `file`, as "file: target: why".
fn broken(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for target in links(&text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (target.as_str(), None),
        };
        let linked = if path.is_empty() {
            file.to_owned()
        } else {
            dir.join(path)
        };
        if !linked.exists() {
            out.push(format!("{}: {target}: no such file", file.display()));
            continue;
        }
        if let Some(anchor) = anchor
            && linked.extension().is_some_and(|e| e == "md")
        {
            let body = std::fs::read_to_string(&linked).unwrap_or_default();
            if !anchors(&body).contains(anchor) {
                out.push(format!("{}: {target}: no such heading", file.display()));
            }
        }
    }
    out
}

fn manual() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![
        root.join("README.md"),
        root.join("CONTRIBUTING.md"),
        root.join("CHANGELOG.md"),
    ];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

#[test]
fn every_relative_link_of_the_manual_resolves() {
    let found: Vec<String> = manual().iter().flat_map(|f| broken(f)).collect();
    assert!(found.is_empty(), "broken links:\n{}", found.join("\n"));
}

#[test]
fn the_readme_fits_on_a_few_screens() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let size = std::fs::metadata(root.join("README.md"))
        .expect("README.md")
        .len() as usize;
    assert!(
        size <= README_MAX_BYTES,
        "README.md is {size} bytes (budget {README_MAX_BYTES}): move the detail to docs/"
    );
}

#[test]
fn the_check_finds_a_missing_file_and_a_missing_heading() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("b.md"),
        "# Title\n\n## Failure detection, at scale\n",
    )
    .expect("b");
    let a = dir.path().join("a.md");
    std::fs::write(
        &a,
        "[ok](b.md) [ok](b.md#failure-detection-at-scale) [ok](#here)\n\
         ## Here\n\
         [gone](c.md) [no heading](b.md#nowhere) [web](https://example.org/x) `[code](d.md)`\n\
         ```\n[fenced](e.md)\n```\n",
    )
    .expect("a");
    let found = broken(&a);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].ends_with("c.md: no such file"), "{}", found[0]);
    assert!(
        found[1].ends_with("b.md#nowhere: no such heading"),
        "{}",
        found[1]
    );
}
