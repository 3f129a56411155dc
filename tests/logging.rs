//! Where the daemon's log goes: plain text without escape codes when stderr is a
//! file; native journal records (priority per level, structured fields) under a
//! real systemd (the project's sandbox, `scripts/systemd-sandbox`; skipped with the
//! reason where it cannot run, a failure under `CI=true`).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::systemd::Sandbox;
use support::{Scene, wait_for};

const SECS: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn a_log_written_to_a_file_has_no_escape_codes() {
    let scene = Scene::new("log-plain");
    let daemon = scene.daemon().without_env("NO_COLOR").spawn();
    wait_for("UI is ready in the log", SECS(30), || {
        daemon.log().contains("UI is ready").then_some(())
    });
    let log = daemon.log();
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log written to a file:\n{log}"
    );
    assert!(log.contains("UI launched"), "{log}");
}

/// The journal's records of `unit`, as JSON objects.
fn journal_json(sandbox: &Sandbox, unit: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["journalctl", "--no-pager", "-o", "json", "-u", unit];
    args.extend_from_slice(extra);
    sandbox
        .run(&args)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn message(record: &Value) -> String {
    record["MESSAGE"].as_str().unwrap_or_default().to_string()
}

#[test]
fn under_systemd_the_journal_gets_records_with_priorities_and_fields() {
    let scene = Scene::in_target_dir("log-journal");
    let config = scene.write_config();
    let unit = format!("sdws-log-{}.service", std::process::id());
    let unit_file = scene.path(&unit);
    std::fs::write(
        &unit_file,
        format!(
            "[Unit]\nDescription=sd-webui-supervisor logging test\n\n\
             [Service]\nType=notify-reload\nNotifyAccess=main\n\
             ExecStart={bin} run --config {config}\n\
             Environment=RUST_LOG=info\nTimeoutStartSec=60\nTimeoutStopSec=20\n",
            bin = support::BIN,
            config = config.display()
        ),
    )
    .expect("write the unit");
    let Some(sandbox) = Sandbox::boot(&scene.path("sandbox"), &[scene.dir()], &[]) else {
        return;
    };
    sandbox.install(&[&unit_file]);
    sandbox.run(&["systemctl", "start", &unit]);

    // A broken config: the reload is rejected, the daemon keeps running.
    let good = std::fs::read_to_string(&config).expect("read the config");
    let port_line = format!("port = {}", scene.port);
    assert!(good.contains(&port_line), "{good}");
    std::fs::write(&config, good.replace(&port_line, "port = \"many\"")).expect("break it");
    sandbox.run(&["systemctl", "reload", &unit]);
    assert_eq!(sandbox.property(&unit, "ActiveState"), "active");

    // -p warning: the rejection, none of the info lines.
    let warnings = wait_for("the rejected reload in the journal", SECS(10), || {
        let w = journal_json(&sandbox, &unit, &["-p", "warning"]);
        w.iter()
            .any(|r| r["RELOAD_RESULT"] == "rejected")
            .then_some(w)
    });
    let texts: Vec<String> = warnings.iter().map(message).collect();
    assert!(
        warnings
            .iter()
            .all(|r| r["PRIORITY"].as_str().is_some_and(|p| p <= "4")),
        "{warnings:#?}"
    );
    for info in ["UI launched", "UI is ready", "supervisor starting"] {
        assert!(
            !texts.iter().any(|t| t.contains(info)),
            "info line {info:?} under -p warning: {texts:#?}"
        );
    }
    assert!(
        texts.iter().any(|t| t.contains("ui.port")),
        "the rejection says what is wrong: {texts:#?}"
    );

    // The structured fields, and a match on them.
    let all = journal_json(&sandbox, &unit, &[]);
    let launched = all
        .iter()
        .find(|r| message(r) == "UI launched")
        .unwrap_or_else(|| panic!("no `UI launched` record: {all:#?}"));
    assert_eq!(launched["FLAVOR"], "forge", "{launched:#}");
    assert_eq!(launched["SYSLOG_IDENTIFIER"], "sd-webui-supervisor");
    let ui_pid = launched["UI_PID"]
        .as_str()
        .unwrap_or_else(|| panic!("no UI_PID: {launched:#}"))
        .to_string();
    let by_pid = sandbox.run(&[
        "journalctl",
        "--no-pager",
        "-o",
        "cat",
        &format!("UI_PID={ui_pid}"),
    ]);
    assert!(by_pid.contains("UI launched"), "{by_pid}");
    assert!(by_pid.contains("UI is ready"), "{by_pid}");

    // The UI's own output is still there, as the unit's output, not a record of ours.
    let ui_line = all
        .iter()
        .find(|r| message(r).contains("Running on local URL"))
        .unwrap_or_else(|| panic!("the UI's output is not in the journal: {all:#?}"));
    assert!(ui_line.get("UI_PID").is_none(), "{ui_line:#}");
    assert_eq!(ui_line["_TRANSPORT"], "stdout", "{ui_line:#}");

    sandbox.run(&["systemctl", "stop", &unit]);
}
