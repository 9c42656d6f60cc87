//! The README and the guides in `docs/`: every link goes somewhere (a file of the repository, a
//! heading of a guide), and the configuration reference lists exactly the keys the
//! configuration takes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// GitHub's anchor for a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn headings(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| {
            l.trim_start_matches('#')
                .strip_prefix(' ')
                .filter(|_| l.starts_with('#'))
        })
        .map(slug)
        .collect()
}

/// The text outside fenced code blocks.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn every_link_of_the_readme_and_the_guides_goes_somewhere() {
    let root = root();
    let mut docs = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    assert!(docs.len() >= 4, "{docs:?}");
    let mut broken = Vec::new();
    let mut links = 0;
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        let text = prose(&text);
        for (at, _) in text.match_indices("](") {
            let rest = &text[at + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = &rest[..end];
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.contains(' ')
            {
                continue;
            }
            links += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(file)
            };
            if !path.exists() {
                broken.push(format!("{}: {target}: no such file", doc.display()));
                continue;
            }
            if !anchor.is_empty() && path.extension().is_some_and(|e| e == "md") {
                let target_text = std::fs::read_to_string(&path).unwrap();
                if !headings(&prose(&target_text)).contains(anchor) {
                    broken.push(format!("{}: {target}: no such heading", doc.display()));
                }
            }
        }
    }
    assert!(links > 20, "only {links} links found");
    assert!(broken.is_empty(), "{broken:#?}");
}

/// The keys the configuration reference documents, as `section.key` (`flows.id`,
/// `upstream.url`, `audit.forward.to`).
fn documented_keys(guide: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    // Which table a row belongs to, from the sentence before it.
    // Only the reference's tables: the configuration reference (the main table, then the
    // flows'), and the parent's keys at the top of the corporate proxy's section.
    let mut prefix = String::new();
    let mut reference = false;
    for line in guide.lines() {
        if line.starts_with("A flow (`[[flows]]`") {
            prefix = "flows.".into();
        } else if line.starts_with("## ") || line.starts_with("### ") {
            reference =
                line == "## Configuration reference" || line == "## The corporate proxy (upstream)";
            prefix = if line.contains("The corporate proxy (upstream)") {
                "upstream.".into()
            } else {
                String::new()
            };
        }
        if !reference {
            continue;
        }
        let Some(cell) = line.strip_prefix("| `") else {
            continue;
        };
        let cell = cell.split(" |").next().unwrap_or("");
        let mut first: Option<String> = None;
        for name in cell.split(", ") {
            let name = name.trim_matches('`');
            if name.is_empty() || name == "key" {
                continue;
            }
            let name = name.replace("[[", "").replace("]]", "").replace("[]", "");
            let full = match &first {
                // `audit.forward[].cert_file`, `key_file`: the second shares the first's table.
                Some(head) if !name.contains('.') => format!("{head}{name}"),
                _ if name.contains('.') || prefix.is_empty() => name.clone(),
                _ => format!("{prefix}{name}"),
            };
            if first.is_none() {
                first = Some(
                    full.rsplit_once('.')
                        .map_or(String::new(), |(h, _)| format!("{h}.")),
                );
            }
            keys.insert(full);
        }
    }
    keys
}

#[test]
fn the_configuration_reference_lists_exactly_the_keys_the_configuration_takes() {
    let guide = std::fs::read_to_string(root().join("docs/admin.md")).unwrap();
    let documented = documented_keys(&guide);
    let known: BTreeSet<String> = passerelle_config::known_keys()
        .into_iter()
        // Sections are not keys; the profile's flow table is data, not configuration.
        .filter(|k| {
            k.contains('.')
                || !matches!(
                    k.as_str(),
                    "listen"
                        | "clients"
                        | "routing"
                        | "pac"
                        | "resolve"
                        | "limits"
                        | "audit"
                        | "admin"
                        | "pages"
                        | "udp"
                        | "qos"
                        | "site"
                )
        })
        .collect();
    let undocumented: Vec<&String> = known.difference(&documented).collect();
    // `password` is documented as refused: the configuration knows it only to refuse it.
    let unknown: Vec<&String> = documented
        .difference(&known)
        .filter(|k| k.as_str() != "upstream.password")
        .collect();
    assert!(
        undocumented.is_empty(),
        "keys without a line in docs/admin.md: {undocumented:#?}"
    );
    assert!(
        unknown.is_empty(),
        "documented keys the configuration does not take: {unknown:#?}"
    );
}
