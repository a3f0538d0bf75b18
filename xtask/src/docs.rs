//! docs/benchmarks.md is written by several commands: `cargo xtask bench`
//! owns the file's head, and `fuzz --record`, `soak` and `flood` each own
//! one section between `<!-- name -->` and `<!-- /name -->` markers, which
//! every writer keeps.

use std::path::Path;

use anyhow::{Context as _, Result};

pub const BENCHMARKS: &str = "docs/benchmarks.md";

/// Replaces (or appends) section `name` of docs/benchmarks.md.
pub fn write_section(root: &Path, name: &str, body: &str) -> Result<()> {
    let path = root.join(BENCHMARKS);
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = replace_section(&old, name, body);
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))
}

/// `head` (the bench's part) followed by every marked section of the
/// current file.
pub fn with_sections(root: &Path, head: &str) -> String {
    let old = std::fs::read_to_string(root.join(BENCHMARKS)).unwrap_or_default();
    let mut out = head.trim_end().to_owned();
    out.push('\n');
    for section in sections(&old) {
        out.push('\n');
        out.push_str(section);
        out.push('\n');
    }
    out
}

fn markers(name: &str) -> (String, String) {
    (format!("<!-- {name} -->"), format!("<!-- /{name} -->"))
}

fn replace_section(doc: &str, name: &str, body: &str) -> String {
    let (open, close) = markers(name);
    let section = format!("{open}\n{}\n{close}", body.trim_end());
    match (doc.find(&open), doc.find(&close)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{section}{}", &doc[..a], &doc[b + close.len()..])
        }
        _ => format!("{}\n\n{section}\n", doc.trim_end()),
    }
}

/// The marked sections of `doc`, markers included, in order.
fn sections(doc: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(a) = rest.find("<!-- ") {
        let Some(end) = rest[a..].find(" -->") else {
            break;
        };
        let name = &rest[a + 5..a + end];
        if name.starts_with('/') {
            rest = &rest[a + end..];
            continue;
        }
        let close = format!("<!-- /{name} -->");
        let Some(b) = rest[a..].find(&close) else {
            break;
        };
        out.push(&rest[a..a + b + close.len()]);
        rest = &rest[a + b + close.len()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_appended_and_kept() {
        let doc = "# Benchmarks\nhead\n";
        let doc = replace_section(doc, "fuzz", "## Fuzzing\nv1");
        let doc = replace_section(&doc, "soak", "## Soak\ns1");
        let doc = replace_section(&doc, "fuzz", "## Fuzzing\nv2");
        assert!(
            doc.contains("v2") && !doc.contains("v1") && doc.contains("s1"),
            "{doc}"
        );
        assert_eq!(sections(&doc).len(), 2);
        assert!(sections(&doc)[0].starts_with("<!-- fuzz -->"));
    }
}
