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
