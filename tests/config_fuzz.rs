//! Generated configs (issue 12): `check-config` never panics, and whatever it
//! accepts the running daemon (the real binary, with the stand-in UI) takes on
//! reload without a panic, a crash loop or a half-applied layout. What it rejects,
//! the daemon rejects too, and the UI keeps running.
//!
//! Cases: `CONFIG_FUZZ_CASES` (default 160 for `check-config`, an eighth of that,
//! at least 8, for reloads); each test prints how many ran. For a longer run:
//! `CONFIG_FUZZ_CASES=5000 cargo test --test config_fuzz -- --nocapture`.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use sd_webui_supervisor::ui::flavor::{Flavor, ModelKind};
use serde_json::Value;
use support::{Daemon, Scene, daemon_bin, wait_for, wait_for_with};

/// How many `check-config` cases run (`CONFIG_FUZZ_CASES`, default 160).
fn cases() -> u32 {
    std::env::var("CONFIG_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(160)
}

/// `shrink`: how many simpler cases to try after a failure (a reload case costs
/// seconds, a `check-config` case milliseconds).
fn runner(cases: u32, shrink: u32) -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases,
        max_shrink_iters: shrink,
        failure_persistence: None,
        ..RunnerConfig::default()
    })
}

// ---------------------------------------------------------------------------------
// What is generated

/// A string for an argv element, an environment value or a setting: ordinary,
/// non-ASCII, control characters, long; when `hostile`, sometimes with a NUL or
/// longer than one argument may be.
fn text(hostile: bool) -> BoxedStrategy<String> {
    let valid = prop_oneof![
        6 => "[a-z][a-z0-9_.:=]{0,12}",
        2 => "[a-zé日本 ]{1,16}",
        1 => Just("\u{7}\u{1b}[31m\t".to_string()),
        1 => Just("x".repeat(70_000)),
    ];
    if !hostile {
        return valid.boxed();
    }
    prop_oneof![
        3 => valid,
        1 => Just("with\u{0}nul".to_string()),
        1 => Just("x".repeat(140_000)),
    ]
    .boxed()
}

/// A file or extension name: plain, non-ASCII or long; when `hostile`, sometimes
/// not a single path component or longer than a file name may be.
fn name(hostile: bool) -> BoxedStrategy<String> {
    let valid = prop_oneof![
        6 => "[a-z][a-z0-9_-]{0,10}\\.safetensors",
        1 => "[é日本]{1,6}\\.safetensors",
        1 => (200usize..=252).prop_map(|n| format!("{}.pt", "n".repeat(n))),
    ];
    if !hostile {
        return valid.boxed();
    }
    prop_oneof![
        3 => valid,
        1 => (253usize..270).prop_map(|n| format!("{}.pt", "n".repeat(n))),
        1 => prop_oneof![
            Just(String::new()),
            Just("..".to_string()),
            Just(".hidden".to_string()),
            Just("a/b.pt".to_string()),
            Just("nul\u{0}.pt".to_string()),
        ],
    ]
    .boxed()
}

/// Where a model or extension points.
#[derive(Debug, Clone)]
enum Target {
    /// One of the files (or, for extensions, directories) the test made.
    Existing(usize),
    /// An absolute path that does not exist.
    Missing,
    /// A raw string (relative, too long, NUL, …).
    Raw(String),
}

fn target(hostile: bool) -> BoxedStrategy<Target> {
    let valid = prop_oneof![
        6 => (0usize..3).prop_map(Target::Existing),
        1 => Just(Target::Missing),
    ];
    if !hostile {
        return valid.boxed();
    }
    prop_oneof![
        3 => valid,
        1 => prop_oneof![
            Just("relative/file.pt".to_string()),
            Just(format!("/{}/x.pt", "c".repeat(256))),
            Just(format!("{}/x.pt", "/cc".repeat(1400))),
            Just("/nul\u{0}/x.pt".to_string()),
        ]
        .prop_map(Target::Raw),
    ]
    .boxed()
}

/// A duration: absent or sane; when `hostile`, sometimes zero, absurd or not a
/// duration at all.
fn duration(hostile: bool, sane: &'static [&'static str]) -> BoxedStrategy<Option<String>> {
    let valid = prop_oneof![
        Just(None),
        proptest::sample::select(sane).prop_map(|s| Some(s.to_string())),
    ];
    if !hostile {
        return valid.boxed();
    }
    prop_oneof![
        3 => valid,
        1 => proptest::sample::select(&["0s", "500000000000y", "100000d", "25h", "soon", ""][..])
            .prop_map(|s| Some(s.to_string())),
    ]
    .boxed()
}

/// Valid names start with `FZ_`, so that none changes how Python itself runs.
fn env_name(hostile: bool) -> BoxedStrategy<String> {
    if !hostile {
        return "FZ_[A-Z0-9_]{0,8}".boxed();
    }
    prop_oneof![
        3 => "FZ_[A-Z0-9_]{0,8}",
        1 => proptest::sample::select(&["", "A B", "X=Y", "1A", "é", "N\u{0}"][..])
            .prop_map(String::from),
    ]
    .boxed()
}

/// The parts of a config the generator varies. The rest (flavor, command, port,
/// data dir, control socket) stays the scene's, so that whatever `check-config`
/// accepts is a config the stand-in can run.
#[derive(Debug, Clone)]
struct Variation {
    extra_args: Vec<String>,
    environment: BTreeMap<String, String>,
    models: Vec<(String, String, Target)>,
    extensions: Vec<(String, Target)>,
    settings: BTreeMap<String, String>,
    permissions: Option<String>,
    startup_timeout: Option<String>,
    stop_timeout: Option<String>,
    idle_grace: Option<String>,
    deadline: Option<String>,
    poll_interval: Option<String>,
    socket: Option<String>,
}

/// Half the cases are valid throughout; the other half may be hostile anywhere.
fn variation() -> impl Strategy<Value = Variation> {
    any::<bool>().prop_flat_map(variation_of)
}

fn variation_of(hostile: bool) -> impl Strategy<Value = Variation> {
    let kinds: &'static [&'static str] = if hostile {
        &[
            "checkpoints",
            "loras",
            "vae",
            "embeddings",
            "hypernetworks",
            "bogus",
            "clip_vision",
        ]
    } else {
        &["checkpoints", "loras", "vae", "embeddings", "hypernetworks"]
    };
    let bad_permissions: &'static [&'static str] = if hostile {
        &["+700", "-700", "0o700", "7", "0600", "99999", " 0700"]
    } else {
        &["0700"]
    };
    let long_socket = if hostile { 1 } else { 0 };
    (
        (
            // Arguments that do not start with '-': the stand-in, like the real UIs
            // with IGNORE_CMD_ARGS_ERRORS, ignores them (argparse would take a
            // `--p…` for an abbreviation of `--port`).
            proptest::collection::vec(
                text(hostile).prop_filter("not a flag", |s| !s.starts_with('-')),
                0..3,
            ),
            proptest::collection::btree_map(env_name(hostile), text(hostile), 0..3),
            proptest::collection::vec(
                (
                    proptest::sample::select(kinds).prop_map(String::from),
                    name(hostile),
                    target(hostile),
                ),
                0..5,
            ),
            proptest::collection::vec((name(hostile), target(hostile)), 0..2),
            proptest::collection::btree_map("[a-z_]{1,10}", text(hostile), 0..2),
        ),
        (
            prop_oneof![
                4 => Just(None),
                2 => proptest::sample::select(&["0700", "0750", "0755", "01777"][..])
                    .prop_map(|s| Some(s.to_string())),
                1 => proptest::sample::select(bad_permissions).prop_map(|s| Some(s.to_string())),
            ],
            duration(hostile, &["30s", "15m", "24h"]),
            duration(hostile, &["1s", "30s", "1h"]),
            duration(hostile, &["1ms", "10s", "24h"]),
            prop_oneof![
                3 => duration(hostile, &["1h", "6h", "30d"]),
                1 => Just(Some("never".to_string())),
            ],
            duration(hostile, &["10ms", "2s", "1h"]),
            prop_oneof![
                8 => Just(None),
                long_socket => (90usize..130).prop_map(|n| Some(format!("/{}", "s".repeat(n)))),
            ],
        ),
    )
        .prop_map(
            |(
                (extra_args, environment, models, extensions, settings),
                (
                    permissions,
                    startup_timeout,
                    stop_timeout,
                    idle_grace,
                    deadline,
                    poll_interval,
                    socket,
                ),
            )| Variation {
                extra_args,
                environment,
                models,
                extensions,
                settings,
                permissions,
                startup_timeout,
                stop_timeout,
                idle_grace,
                deadline,
                poll_interval,
                socket,
            },
        )
}

/// One hostile value in an otherwise valid config: what an unlucky admin writes.
/// Each is something the daemon could trip over at reload if `check-config` let
/// it through, so a reload case either is rejected by both or runs cleanly.
#[derive(Debug, Clone)]
enum Hostile {
    ExtraArg(String),
    Environment(String, String),
    Model(String, String, Target),
    Extension(String, Target),
    Duration(&'static str, String),
    Permissions(String),
    Socket(String),
}

fn one_hostile() -> impl Strategy<Value = Hostile> {
    let durations = &[
        "startup_timeout",
        "stop_timeout",
        "idle_grace",
        "deadline",
        "poll_interval",
    ][..];
    let bad_durations = &["0s", "500000000000y", "100000d", "25h", "31d", "soon", ""][..];
    prop_oneof![
        prop_oneof![
            Just("with\u{0}nul".to_string()),
            Just("x".repeat(140_000)),
            Just("y".repeat(600_000)),
        ]
        .prop_map(Hostile::ExtraArg),
        (env_name(true), text(true)).prop_map(|(k, v)| Hostile::Environment(k, v)),
        (
            proptest::sample::select(&["loras", "checkpoints", "bogus", "clip_vision"][..]),
            name(true),
            target(true)
        )
            .prop_map(|(k, n, t)| Hostile::Model(k.to_string(), n, t)),
        (name(true), target(true)).prop_map(|(n, t)| Hostile::Extension(n, t)),
        (
            proptest::sample::select(durations),
            proptest::sample::select(bad_durations)
        )
            .prop_map(|(k, v)| Hostile::Duration(k, v.to_string())),
        proptest::sample::select(&["+700", "-700", "0o700", "7", "0600", "99999", " 0700"][..])
            .prop_map(|p| Hostile::Permissions(p.to_string())),
        (100usize..140).prop_map(|n| Hostile::Socket(format!("/tmp/{}", "s".repeat(n)))),
    ]
}

impl Hostile {
    fn apply(self, v: &mut Variation) {
        match self {
            Hostile::ExtraArg(a) => v.extra_args.push(a),
            Hostile::Environment(k, x) => {
                v.environment.insert(k, x);
            }
            Hostile::Model(k, n, t) => v.models.push((k, n, t)),
            Hostile::Extension(n, t) => v.extensions.push((n, t)),
            Hostile::Duration(key, d) => {
                let d = Some(d);
                match key {
                    "startup_timeout" => v.startup_timeout = d,
                    "stop_timeout" => v.stop_timeout = d,
                    "idle_grace" => v.idle_grace = d,
                    "deadline" => v.deadline = d,
                    _ => v.poll_interval = d,
                }
            }
            Hostile::Permissions(p) => v.permissions = Some(p),
            Hostile::Socket(s) => v.socket = Some(s),
        }
    }
}

/// A valid variation, and for half the cases one hostile value in it.
fn reload_case() -> impl Strategy<Value = Variation> {
    (variation_of(false), proptest::option::of(one_hostile())).prop_map(|(mut v, h)| {
        if let Some(h) = h {
            h.apply(&mut v);
        }
        v
    })
}

/// Files and directories the generated targets point at.
struct Targets {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    missing: PathBuf,
}

impl Targets {
    fn make(base: &Path) -> Targets {
        let store = base.join("store");
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..3 {
            let f = store.join(format!("model-{i}.safetensors"));
            let d = store.join(format!("extension-{i}"));
            fs::create_dir_all(&d).expect("create an extension dir");
            fs::write(&f, format!("model {i}")).expect("write a model file");
            files.push(f);
            dirs.push(d);
        }
        Targets {
            files,
            dirs,
            missing: store.join("missing.safetensors"),
        }
    }

    fn path(&self, t: &Target, dirs: bool) -> String {
        match t {
            Target::Existing(i) => {
                let list = if dirs { &self.dirs } else { &self.files };
                list[*i % list.len()].display().to_string()
            }
            Target::Missing => self.missing.display().to_string(),
            Target::Raw(s) => s.clone(),
        }
    }
}

/// The scene's config with the variation applied.
fn config_text(scene: &Scene, targets: &Targets, v: &Variation) -> String {
    use toml::{Table, Value as T};
    let mut root: Table = scene.config_toml().parse().expect("the scene's config");
    let s = |x: &str| T::String(x.to_string());
    let ui = root.get_mut("ui").and_then(T::as_table_mut).expect("[ui]");
    ui.insert(
        "extra_args".into(),
        T::Array(v.extra_args.iter().map(|a| s(a)).collect()),
    );
    if let Some(env) = ui.get_mut("environment").and_then(T::as_table_mut) {
        for (k, val) in &v.environment {
            env.insert(k.clone(), s(val));
        }
    }
    for (key, value) in [
        ("startup_timeout", &v.startup_timeout),
        ("stop_timeout", &v.stop_timeout),
    ] {
        if let Some(d) = value {
            ui.insert(key.into(), s(d));
        }
    }
    if let Some(p) = &v.permissions {
        let data = root
            .get_mut("data")
            .and_then(T::as_table_mut)
            .expect("[data]");
        data.insert("permissions".into(), s(p));
    }
    let mut models = Table::new();
    for (kind, name, t) in &v.models {
        let table = models
            .entry(kind.clone())
            .or_insert_with(|| T::Table(Table::new()));
        if let Some(table) = table.as_table_mut() {
            table.insert(name.clone(), s(&targets.path(t, false)));
        }
    }
    root.insert("models".into(), T::Table(models));
    let extensions: Table = v
        .extensions
        .iter()
        .map(|(n, t)| (n.clone(), s(&targets.path(t, true))))
        .collect();
    root.insert("extensions".into(), T::Table(extensions));
    let settings: Table = v.settings.iter().map(|(k, x)| (k.clone(), s(x))).collect();
    root.insert("settings".into(), T::Table(settings));
    let restart = root
        .get_mut("restart")
        .and_then(T::as_table_mut)
        .expect("[restart]");
    for (key, value) in [
        ("idle_grace", &v.idle_grace),
        ("deadline", &v.deadline),
        ("poll_interval", &v.poll_interval),
    ] {
        if let Some(d) = value {
            restart.insert(key.into(), s(d));
        }
    }
    if let Some(sock) = &v.socket {
        let control = root
            .get_mut("control")
            .and_then(T::as_table_mut)
            .expect("[control]");
        control.insert("socket".into(), s(sock));
    }
    toml::to_string(&root).expect("serialize the config")
}

/// Byte-level damage to a config text: what an editor, a truncated write or a
/// hostile user could leave behind.
#[derive(Debug, Clone)]
enum Mutation {
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    DuplicateLine(usize),
}

/// None for half the cases.
fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let bytes = proptest::collection::vec(
        prop_oneof![
            Just(0u8),
            Just(0xff),
            Just(0xc3),
            Just(b'"'),
            Just(b'['),
            Just(b']'),
            Just(b'='),
            Just(b'\n'),
            Just(b'\\'),
            any::<u8>(),
        ],
        1..4,
    );
    let edits = proptest::collection::vec(
        prop_oneof![
            (any::<usize>(), bytes).prop_map(|(at, b)| Mutation::Insert(at, b)),
            (any::<usize>(), 1usize..40).prop_map(|(at, n)| Mutation::Delete(at, n)),
            any::<usize>().prop_map(Mutation::DuplicateLine),
        ],
        1..4,
    );
    prop_oneof![Just(Vec::new()), edits]
}

fn mutate(text: &str, mutations: &[Mutation]) -> Vec<u8> {
    let mut out = text.as_bytes().to_vec();
    for m in mutations {
        let len = out.len().max(1);
        match m {
            Mutation::Insert(at, b) => {
                let at = at % (out.len() + 1);
                out.splice(at..at, b.iter().copied());
            }
            Mutation::Delete(at, n) => {
                let at = at % len;
                let end = (at + n).min(out.len());
                out.drain(at.min(end)..end);
            }
            Mutation::DuplicateLine(i) => {
                let lines: Vec<&[u8]> = out.split_inclusive(|b| *b == b'\n').collect();
                if !lines.is_empty() {
                    let line = lines[i % lines.len()].to_vec();
                    let at: usize = lines[..=i % lines.len()].iter().map(|l| l.len()).sum();
                    out.splice(at..at, line);
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// Running the binary

fn check_config(file: &Path) -> Output {
    Command::new(daemon_bin())
        .arg("check-config")
        .arg("--config")
        .arg(file)
        .output()
        .expect("run check-config")
}

fn cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(daemon_bin())
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("run the client")
}

fn status(socket: &Path) -> Option<Value> {
    let out = cli(socket, &["status", "--json"]);
    serde_json::from_slice(&out.stdout).ok()
}

/// What `check-config` said, after checking that it did not panic and that a
/// rejection is located (`FILE:LINE:COL: key: message` lines).
fn checked(file: &Path, out: &Output) -> Result<bool, TestCaseError> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    prop_assert!(
        !stderr.contains("panicked"),
        "check-config panicked:\n{stderr}"
    );
    match out.status.code() {
        Some(0) => {
            prop_assert!(stderr.is_empty(), "accepted, yet said:\n{stderr}");
            Ok(true)
        }
        Some(1) => {
            let prefix = format!("{}:", file.display());
            prop_assert!(!stderr.trim().is_empty(), "rejected without a word");
            for line in stderr.lines() {
                let rest = line.strip_prefix(&prefix);
                let located = rest.is_some_and(|r| {
                    let mut parts = r.splitn(3, ':');
                    let line_no = parts.next().is_some_and(|p| p.parse::<usize>().is_ok());
                    let col = parts.next().is_some_and(|p| p.parse::<usize>().is_ok());
                    line_no && col && parts.next().is_some_and(|m| m.contains(": "))
                });
                prop_assert!(located, "not FILE:LINE:COL: key: message: {line:?}");
            }
            Ok(false)
        }
        other => Err(TestCaseError::fail(format!(
            "check-config exited with {other:?}:\n{stderr}"
        ))),
    }
}

// ---------------------------------------------------------------------------------
// The tests

#[test]
fn check_config_never_panics_and_locates_every_rejection() {
    let scene = Scene::new("fuzz-check");
    let targets = Targets::make(scene.dir());
    let file = scene.dir().join("case.toml");
    let n = cases();
    let counts = std::cell::Cell::new((0u32, 0u32));
    runner(n, 256)
        .run(&(variation(), mutations()), |(v, m)| {
            let bytes = mutate(&config_text(&scene, &targets, &v), &m);
            fs::write(&file, &bytes).expect("write the case");
            let ok = checked(&file, &check_config(&file))?;
            let (r, a) = counts.get();
            counts.set((r + 1, a + u32::from(ok)));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let (ran, accepted) = counts.get();
    println!(
        "check-config: {ran} cases ran, {accepted} accepted, {} rejected",
        ran - accepted
    );
    assert!(ran >= n, "only {ran} of {n} cases ran");
}

/// The links a layout of `v` must have made, and every link it may have made.
fn expected_links(
    data: &Path,
    targets: &Targets,
    v: &Variation,
) -> (BTreeMap<PathBuf, PathBuf>, Vec<PathBuf>) {
    let flavor = Flavor::Forge;
    let mut must = BTreeMap::new();
    let mut dirs = Vec::new();
    let mut entries: Vec<(PathBuf, &Target, bool)> = Vec::new();
    for (kind, name, t) in &v.models {
        let Some(dir) = ModelKind::parse(kind).and_then(|k| flavor.model_dir(k)) else {
            continue;
        };
        dirs.push(data.join(dir));
        entries.push((data.join(dir).join(name), t, false));
    }
    for (name, t) in &v.extensions {
        dirs.push(data.join(flavor.extensions_dir()));
        entries.push((data.join(flavor.extensions_dir()).join(name), t, true));
    }
    // A name given twice (same kind) keeps the last target, as TOML tables do.
    for (link, t, is_dir) in entries {
        match t {
            Target::Existing(_) => {
                must.insert(link, PathBuf::from(targets.path(t, is_dir)));
            }
            _ => {
                must.remove(&link);
            }
        }
    }
    dirs.sort();
    dirs.dedup();
    (must, dirs)
}

fn crashes(st: &Value) -> u64 {
    st["crashes"].as_u64().unwrap_or(0)
}

#[test]
fn what_check_config_accepts_the_daemon_reloads_cleanly() {
    let mut scene = Scene::new("fuzz-reload");
    scene.startup_timeout = "60s".into();
    scene.stop_timeout = "5s".into();
    scene.policy = "immediately".into();
    // Like the real UIs with this variable: unknown positional arguments are ignored.
    let scene = scene.env("IGNORE_CMD_ARGS_ERRORS", "1");
    let targets = Targets::make(scene.dir());
    let socket = scene.dir().join("control.sock");
    let data = scene.data_dir();
    let mut daemon: Daemon = scene.daemon().spawn();
    let ready = |daemon: &Daemon| {
        wait_for_with(
            || format!("the UI to be ready; log:\n{}", tail(&daemon.log())),
            Duration::from_secs(30),
            || status(&socket).filter(|s| s["state"] == "ready"),
        )
    };
    let first = ready(&daemon);
    let base_crashes = crashes(&first);
    let n = (cases() / 8).max(8);
    let counts = std::cell::Cell::new((0u32, 0u32));
    let config = scene.config_path();
    let daemon_cell = std::cell::RefCell::new(&mut daemon);
    runner(n, 8)
        .run(&reload_case(), |v| {
            let daemon = &mut **daemon_cell.borrow_mut();
            let text = config_text(&scene, &targets, &v);
            let case = scene.dir().join("case.toml");
            fs::write(&case, &text).expect("write the case");
            let accepted = checked(&case, &check_config(&case))?;
            fs::write(&config, &text).expect("write the config");
            let out = cli(&socket, &["reload"]);
            prop_assert!(
                daemon.try_exit().is_none(),
                "the daemon exited on reload; log:\n{}",
                tail(&daemon.log())
            );
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if !accepted {
                prop_assert_eq!(
                    out.status.code(),
                    Some(1),
                    "check-config rejected it, the daemon did not: {}",
                    said
                );
            } else {
                prop_assert_eq!(out.status.code(), Some(0), "reload failed: {}", said);
                prop_assert!(
                    said.starts_with("reload applied") || said.starts_with("reload unchanged"),
                    "{}",
                    said
                );
                // The whole layout, not a part of it.
                let (must, dirs) = expected_links(&data, &targets, &v);
                wait_for_with(
                    || format!("the layout of {must:#?}; reload said {said}"),
                    Duration::from_secs(10),
                    || {
                        must.iter()
                            .all(|(l, t)| fs::read_link(l).ok().as_ref() == Some(t))
                            .then_some(())
                    },
                );
                for dir in dirs {
                    for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                        let p = entry.path();
                        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                            prop_assert!(
                                must.contains_key(&p)
                                    || v.models.iter().any(|(_, n, _)| p.ends_with(n)),
                                "a link that no longer belongs: {}",
                                p.display()
                            );
                        }
                    }
                }
            }
            // Either way the UI ends up ready, without a crash.
            let st = ready(daemon);
            prop_assert_eq!(
                crashes(&st),
                base_crashes,
                "the UI crashed; log:\n{}",
                tail(&daemon.log())
            );
            prop_assert!(
                !daemon.log().contains("panicked"),
                "{}",
                tail(&daemon.log())
            );
            let (r, a) = counts.get();
            counts.set((r + 1, a + u32::from(accepted)));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let (ran, accepted) = counts.get();
    println!(
        "reload: {ran} cases ran, {accepted} accepted by check-config and applied, {} rejected by both",
        ran - accepted
    );
    assert!(daemon.try_exit().is_none(), "the daemon exited");
    let _ = wait_for("a final status", Duration::from_secs(5), || status(&socket));
}

/// The daemon reads a reload strictly as UTF-8, as `check-config` does: the UI
/// never receives a replacement character.
#[test]
fn a_reload_of_invalid_utf8_is_rejected_with_its_position() {
    let scene = Scene::new("fuzz-utf8");
    let socket = scene.dir().join("control.sock");
    let daemon = scene.daemon().spawn();
    wait_for("the UI to be ready", Duration::from_secs(60), || {
        status(&socket).filter(|s| s["state"] == "ready")
    });
    let text = scene
        .config_toml()
        .replace("extra_args = []", "extra_args = [\"p\u{fffd}ng\"]");
    assert!(
        text.contains('\u{fffd}'),
        "the config has extra_args:\n{text}"
    );
    // The replacement character's bytes, swapped for one invalid byte.
    let bytes = text.replace('\u{fffd}', "\u{1}").into_bytes();
    let bytes: Vec<u8> = bytes
        .into_iter()
        .map(|b| if b == 1 { 0xff } else { b })
        .collect();
    fs::write(scene.config_path(), &bytes).expect("write the config");
    let out = cli(&socket, &["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("(encoding): invalid UTF-8 (byte 0xff)"),
        "{stderr}"
    );
    let st = status(&socket).expect("status");
    assert_eq!(st["state"], "ready", "{st}");
    assert_eq!(crashes(&st), 0, "{st}");
    assert!(
        !daemon.log().contains('\u{fffd}'),
        "{}",
        tail(&daemon.log())
    );
}

/// A NUL byte that would reach the UI's argv is rejected on reload, as by
/// `check-config`, and the running UI is left alone (no crash loop).
#[test]
fn a_reload_with_a_nul_in_the_argv_is_rejected() {
    let scene = Scene::new("fuzz-nul");
    let socket = scene.dir().join("control.sock");
    let daemon = scene.daemon().spawn();
    let before = wait_for("the UI to be ready", Duration::from_secs(60), || {
        status(&socket).filter(|s| s["state"] == "ready")
    });
    let text = scene
        .config_toml()
        .replace("extra_args = []", "extra_args = [\"--x\\u0000y\"]");
    assert!(
        text.contains("\\u0000"),
        "the config has extra_args:\n{text}"
    );
    fs::write(scene.config_path(), &text).expect("write the config");
    let out = cli(&socket, &["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("ui.extra_args[0]: contains a NUL byte"),
        "{stderr}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let st = status(&socket).expect("status");
    assert_eq!(st["state"], "ready", "{st}");
    assert_eq!(st["ui_pid"], before["ui_pid"], "the UI was restarted: {st}");
    assert!(
        !daemon.log().contains("panicked"),
        "{}",
        tail(&daemon.log())
    );
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
