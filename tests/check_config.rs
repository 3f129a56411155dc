//! `check-config` against the config corpus, through the real binary.
//!
//! `tests/config/bad/NAME.toml` must exit 1 and print exactly
//! `tests/config/bad/NAME.expected` on stderr, where the file's path is written as
//! `FILE` (each line is `FILE:LINE:COL: key.path: message`). `tests/config/good/*.toml`,
//! `config.example.toml`, `config.instances.example.toml` and `examples/demo.toml`
//! must exit 0 and print nothing.
//!
//! To add a case: write the `.toml`, run
//! `sd-webui-supervisor check-config --config tests/config/bad/NAME.toml`, check
//! every line of the output by hand, and save it as `NAME.expected` with the path
//! replaced by `FILE`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The fewest bad configs the corpus may hold (issue 2 asks for at least 30).
const MIN_BAD_CONFIGS: usize = 30;

/// The example that documents every section but these.
const EXAMPLE: &str = "config.example.toml";
/// The example of `[instances]`, which cannot go into [`EXAMPLE`]: with
/// instances, `ui.gpus`, `front.ui_port` and `queue.keep = true` are refused.
const INSTANCES_EXAMPLE: &str = "config.instances.example.toml";

/// The example file that documents `section`.
fn example_of(section: &str) -> &'static str {
    match section {
        "instances" => INSTANCES_EXAMPLE,
        _ => EXAMPLE,
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn check_config(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sd-webui-supervisor"))
        .arg("check-config")
        .arg("--config")
        .arg(file)
        .current_dir(root())
        .output()
        .expect("the sd-webui-supervisor binary runs")
}

/// The `.toml` files of a corpus folder, sorted by name.
fn corpus(dir: &str) -> Vec<PathBuf> {
    let dir = root().join("tests/config").join(dir);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// Stderr with the file's path written as `FILE` at the start of each line.
fn normalized_stderr(file: &Path, output: &Output) -> String {
    let prefix = format!("{}:", file.display());
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr
        .split_inclusive('\n')
        .map(|line| match line.strip_prefix(&prefix) {
            Some(rest) => format!("FILE:{rest}"),
            None => line.to_string(),
        })
        .collect()
}

/// A line diff (longest common subsequence): `-` expected only, `+` actual only.
fn diff(expected: &str, actual: &str) -> String {
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    // lcs[i][j]: length of the longest common subsequence of e[i..] and a[j..].
    let mut lcs = vec![vec![0usize; a.len() + 1]; e.len() + 1];
    for i in (0..e.len()).rev() {
        for j in (0..a.len()).rev() {
            lcs[i][j] = if e[i] == a[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < e.len() || j < a.len() {
        if i < e.len() && j < a.len() && e[i] == a[j] {
            let _ = writeln!(out, "    {}", e[i]);
            i += 1;
            j += 1;
        } else if i < e.len() && (j == a.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "  - {}", e[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "  + {}", a[j]);
            j += 1;
        }
    }
    if expected.ends_with('\n') != actual.ends_with('\n') {
        let _ = writeln!(
            out,
            "  (final newline: expected {}, got {})",
            expected.ends_with('\n'),
            actual.ends_with('\n')
        );
    }
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_bad_config_fails_with_exactly_its_expected_problems() {
    let mut failures = Vec::new();
    let files = corpus("bad");
    for file in &files {
        let name = relative(file);
        let expected_path = file.with_extension("expected");
        let Ok(expected) = fs::read_to_string(&expected_path) else {
            failures.push(format!("{name}: no {}", relative(&expected_path)));
            continue;
        };
        let output = check_config(file);
        let mut problems = Vec::new();
        if output.status.code() != Some(1) {
            problems.push(format!("exit status {} (expected 1)", output.status));
        }
        if !output.stdout.is_empty() {
            problems.push(format!(
                "stdout is not empty:\n{}",
                String::from_utf8_lossy(&output.stdout)
            ));
        }
        let actual = normalized_stderr(file, &output);
        if actual != expected {
            problems.push(format!(
                "stderr differs (- expected, + actual):\n{}",
                diff(&expected, &actual)
            ));
        }
        if !problems.is_empty() {
            failures.push(format!("{name}: {}", problems.join("\n")));
        }
    }
    // An .expected file without its .toml is a case that silently stopped running.
    for entry in fs::read_dir(root().join("tests/config/bad")).expect("tests/config/bad") {
        let path = entry.expect("a readable directory entry").path();
        if path.extension().is_some_and(|e| e == "expected")
            && !path.with_extension("toml").exists()
        {
            failures.push(format!("{}: has no .toml beside it", relative(&path)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad configs did not fail as expected:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_good_config_passes_silently() {
    let files = corpus("good");
    assert!(!files.is_empty(), "tests/config/good holds no .toml");
    let mut failures = Vec::new();
    for file in &files {
        let output = check_config(file);
        if !output.status.success() || !output.stdout.is_empty() || !output.stderr.is_empty() {
            failures.push(format!(
                "{}: exit status {}, stdout {:?}, stderr:\n{}",
                relative(file),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_corpus_has_enough_bad_configs() {
    let n = corpus("bad").len();
    assert!(
        n >= MIN_BAD_CONFIGS,
        "tests/config/bad holds {n} configs, fewer than {MIN_BAD_CONFIGS}"
    );
}

#[test]
fn a_missing_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("no-such-config.toml");
    let output = check_config(&file);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!("{}: cannot read: ", file.display());
    assert!(
        stderr.starts_with(&expected) && stderr.contains("No such file or directory"),
        "stderr should start with {expected:?} and say why, got {stderr:?}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line, got {stderr:?}");
}

#[test]
fn the_documented_example_configs_pass() {
    for name in [EXAMPLE, INSTANCES_EXAMPLE, "examples/demo.toml"] {
        let file = root().join(name);
        assert!(file.is_file(), "{name} is missing");
        let output = check_config(&file);
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "{name}: exit status {}, stderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_example_config_writes_out_every_key() {
    let read = |name: &str| {
        let text = fs::read_to_string(root().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let doc: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("{name} is not TOML: {e}"));
        (text, doc)
    };
    let (example_text, example) = read(EXAMPLE);
    let (_, instances) = read(INSTANCES_EXAMPLE);
    let mut missing = Vec::new();
    // The loader's own list of sections and keys: a key added to the config
    // structs must be documented here too, in the file for its section.
    for (section, keys) in sd_webui_supervisor::config::sections() {
        let (name, doc) = match example_of(section) {
            INSTANCES_EXAMPLE => (INSTANCES_EXAMPLE, &instances),
            _ => (EXAMPLE, &example),
        };
        match doc.get(section).and_then(toml::Value::as_table) {
            None => missing.push(format!("{name}: [{section}]")),
            Some(table) if keys.is_empty() && table.is_empty() => {
                missing.push(format!("{name}: an example in [{section}]"))
            }
            Some(table) => missing.extend(
                keys.iter()
                    .filter(|k| !table.contains_key(**k))
                    .map(|k| format!("{name}: {section}.{k}")),
            ),
        }
        // A section documented in the other file is pointed to from this one.
        if name != EXAMPLE && !example_text.contains(&format!("# [{section}")) {
            missing.push(format!(
                "{EXAMPLE}: a comment on [{section}] pointing to {name}"
            ));
        }
    }
    if !example_text.contains(INSTANCES_EXAMPLE) {
        missing.push(format!("{EXAMPLE}: the name {INSTANCES_EXAMPLE}"));
    }
    assert!(
        missing.is_empty(),
        "the examples lack: {}",
        missing.join(", ")
    );
}

/// `config.instances.example.toml` is a runnable demo of two stand-in
/// instances (the stand-in UI as `examples/demo.toml` runs it, flavor
/// comfyui) that `check-config` accepts, with every key of an instance
/// written out.
#[test]
fn the_instances_example_is_two_stand_in_instances_check_config_accepts() {
    let file = root().join(INSTANCES_EXAMPLE);
    let output = check_config(&file);
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "{INSTANCES_EXAMPLE}: exit status {}, stdout {:?}, stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let config = sd_webui_supervisor::config::Config::load(&file).expect("the example loads");
    let demo = sd_webui_supervisor::config::Config::load(&root().join("examples/demo.toml"))
        .expect("examples/demo.toml loads");
    assert_eq!(config.ui.command, demo.ui.command, "the demo's stand-in UI");
    assert_eq!(config.ui.flavor.to_string(), "comfyui");
    assert_eq!(
        config
            .ui
            .environment
            .get("STANDIN_FLAVOR")
            .map(String::as_str),
        Some("comfyui"),
        "the stand-in speaks the flavor's API"
    );
    assert_eq!(config.ui.gpus, None, "ui.gpus is refused with instances");
    assert!(
        !config.queue.keep,
        "queue.keep = true is refused with instances"
    );
    assert!(
        config.front.enable,
        "the front door is required with instances"
    );
    assert_eq!(config.instances.len(), 2, "{:?}", config.instances);
    // Every key of an instance is written out in one of them: a field added
    // to InstanceConfig does not compile here until it is.
    let mut written = Vec::new();
    for sd_webui_supervisor::config::instances::InstanceConfig {
        name,
        gpus,
        extra_args,
        environment,
        port,
    } in &config.instances
    {
        assert!(gpus.is_some(), "instances.{name}.gpus: one GPU each");
        for (key, set) in [
            ("gpus", gpus.is_some()),
            ("extra_args", !extra_args.is_empty()),
            ("environment", !environment.is_empty()),
            ("port", port.is_some()),
        ] {
            if set && !written.contains(&key) {
                written.push(key);
            }
        }
    }
    written.sort_unstable();
    assert_eq!(
        written,
        ["environment", "extra_args", "gpus", "port"],
        "{INSTANCES_EXAMPLE} writes out every key of an instance"
    );
}

/// Each duration's upper bound is written in `config.example.toml` next to its
/// key, and `check-config` accepts exactly up to it.
#[test]
fn every_duration_bound_is_documented_and_enforced() {
    use sd_webui_supervisor::config::limits::DURATIONS;
    let example = fs::read_to_string(root().join("config.example.toml")).expect("example");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut failures = Vec::new();
    for (section, key, limit) in DURATIONS {
        // The comment block right above `key = …`.
        let at = example
            .find(&format!("\n{key} = "))
            .unwrap_or_else(|| panic!("config.example.toml has no {key}"));
        let mut comment: Vec<&str> = example[..at]
            .lines()
            .rev()
            .map_while(|l| l.strip_prefix('#'))
            .map(str::trim)
            .collect();
        comment.reverse();
        let comment = comment.join(" ");
        let stated = format!("at most \"{}\"", limit.text).to_lowercase();
        if !comment.to_lowercase().contains(&stated) {
            failures.push(format!(
                "{section}.{key}: the example does not say {stated}"
            ));
        }
        for (value, ok) in [
            (limit.text.to_string(), true),
            (format!("{} 1s", limit.text), false),
        ] {
            let file = dir.path().join(format!("{key}.toml"));
            let line = format!("{key} = \"{value}\"\n");
            let (ui, restart) = match *section {
                "ui" => (line, "deadline = \"never\"\n".to_string()),
                "front" | "health" | "gpu" => (
                    String::new(),
                    format!("deadline = \"never\"\n[{section}]\n{line}"),
                ),
                _ if *key == "deadline" => (String::new(), line),
                _ => (String::new(), format!("deadline = \"never\"\n{line}")),
            };
            fs::write(
                &file,
                format!(
                    "[ui]\nflavor = \"forge\"\ncommand = [\"/bin/webui\"]\n{ui}\
                     [data]\ndir = \"/var/lib/x\"\n[restart]\n{restart}"
                ),
            )
            .expect("write");
            let out = check_config(&file);
            if out.status.success() != ok {
                failures.push(format!(
                    "{section}.{key} = {value:?}: expected {}, got {}",
                    if ok { "accepted" } else { "rejected" },
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_diff_marks_missing_and_extra_lines() {
    let d = diff("a\nb\nc\n", "a\nx\nc\n");
    assert_eq!(d, "    a\n  - b\n  + x\n    c\n");
    let d = diff("a\n", "a");
    assert!(d.contains("final newline"), "{d}");
}
