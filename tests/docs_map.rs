//! docs/architecture.md maps the code: every file under `src/` is listed in its
//! "Every file" table, and every file the table lists exists, so the map cannot
//! fall behind a new, moved or renamed module.

use std::collections::BTreeSet;
use std::path::Path;

mod support;

/// Every `.rs` file under `dir`, relative to `root`, with `/` separators.
fn rust_files(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).expect("read a source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            rust_files(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).expect("under src/");
            out.insert(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn the_architecture_page_lists_every_source_file_and_no_other() {
    let root = support::env::repo_root();
    let src = root.join("src");
    let mut files = BTreeSet::new();
    rust_files(&src, &src, &mut files);
    let page = std::fs::read_to_string(root.join("docs/architecture.md")).expect("read the page");
    let table = page
        .split("## Every file")
        .nth(1)
        .expect("docs/architecture.md has an \"Every file\" section");
    let listed: BTreeSet<String> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .map(String::from)
        .collect();
    let missing: Vec<_> = files.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&files).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/architecture.md \"Every file\": add {missing:?}, remove {stale:?}"
    );
}

/// The part of `page` from `heading` to the next `## ` heading.
fn section<'a>(page: &'a str, heading: &str) -> &'a str {
    let start = page
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in the page"));
    let rest = &page[start + heading.len()..];
    rest.find("\n## ").map_or(rest, |end| &rest[..end])
}

#[test]
fn the_design_lists_every_command_and_every_config_section() {
    let root = support::env::repo_root();
    let design = std::fs::read_to_string(root.join("docs/design.md")).expect("read the design");
    let help = std::process::Command::new(support::env::BIN)
        .arg("--help")
        .output()
        .expect("run --help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .expect("--help lists commands")
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        // A command's line starts with two spaces; a wrapped description with more.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 10, "{commands:?} from {help}");
    let table = section(&design, "## Commands");
    let missing: Vec<_> = commands
        .iter()
        .filter(|c| !table.contains(&format!("| `{c}")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/design.md \"Commands\" lacks {missing:?}"
    );

    let config = section(&design, "## The config file");
    let missing: Vec<_> = sd_webui_supervisor::config::section_names()
        .filter(|s| !config.contains(&format!("`[{s}]`")) && !config.contains(&format!("`[{s}.")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/design.md \"The config file\" lacks the sections {missing:?}"
    );
}
