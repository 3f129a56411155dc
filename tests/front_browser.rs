//! The front door as a person sees it: a real headless Chromium on the daemon's
//! `ui.port`, the real binary supervising the stand-in UI (Forge), driven over
//! the DevTools protocol (`support::browser`).
//!
//! 1. The tab loads the UI through the front door (the stand-in's title).
//! 2. During `restart --now` (the stand-in slowed by `STANDIN_START_DELAY=4`)
//!    the same tab, reloaded once as a user would, shows the restarting page
//!    (503, `<h1>The UI is restarting</h1>` and the status line).
//! 3. From there the test only looks: the page polls the front door and reloads
//!    itself, and the tab is back on the UI.
//!
//! Screenshots of the three moments (`ui.png`, `restarting.png`, `back.png`) go
//! to `<target dir>/front-browser-screens/` (or `$FRONT_BROWSER_SCREENS`); the
//! test prints the folder. Needs `chromium` (Debian package) and python3;
//! without Chromium the test is skipped, except under `CI=true`.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::browser::{Chromium, find_chromium};
use support::{BIN, Scene, http, poll_until, skip, wait_for};

/// The stand-in's page title (`INDEX_HTML` in examples/stand_in_ui.py).
const UI_TITLE: &str = "stand-in UI";
/// The restarting page's heading (src/front/page.rs).
const RESTARTING: &str = "The UI is restarting";
/// The front door's own status route.
const FRONT_STATUS: &str = "/.well-known/sd-webui-supervisor/front";

/// What the tab shows, in one `Runtime.evaluate`.
const LOOK: &str = r#"(() => {
  const nav = performance.getEntriesByType("navigation")[0] || {};
  const h1 = document.querySelector("h1");
  const status = document.getElementById("status");
  return {
    url: location.href,
    title: document.title,
    h1: h1 ? h1.textContent : null,
    status: status ? status.textContent : null,
    body: document.body ? document.body.innerText : null,
    ready: document.readyState,
    nav: nav.type || null,
    http: nav.responseStatus === undefined ? null : nav.responseStatus,
  };
})()"#;

/// The folder for the screenshots, emptied of the last run's.
fn screens_dir() -> PathBuf {
    let dir = std::env::var_os("FRONT_BROWSER_SCREENS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // CARGO_TARGET_TMPDIR is `<target dir>/tmp`.
            let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            tmp.parent().unwrap_or(&tmp).join("front-browser-screens")
        });
    std::fs::create_dir_all(&dir).expect("create the screenshot folder");
    for name in ["ui.png", "restarting.png", "back.png"] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    dir
}

/// The front door's `{"ready": …}`, or `None` while nothing answers.
fn front_ready(port: u16) -> Option<bool> {
    let (code, body) = http(port, "GET", FRONT_STATUS, None, Duration::from_secs(5)).ok()?;
    let v: Value = serde_json::from_slice(&body).ok()?;
    (code == 200).then(|| v["ready"].as_bool()).flatten()
}

/// What the tab shows now, or `None` between documents.
fn look(tab: &mut Chromium) -> Option<Value> {
    tab.eval(LOOK).ok().filter(|v| v.is_object())
}

/// Looks at the tab every 10 ms until `done` holds for what it shows (and the
/// document is loaded); panics after `timeout` with what it showed last.
fn wait_tab(
    tab: &mut Chromium,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut(&Value) -> bool,
) -> Value {
    let mut seen = None;
    let found = poll_until(timeout, || {
        let v = look(tab)?;
        let hit = v["ready"] == "complete" && done(&v);
        seen = Some(v.clone());
        hit.then_some(v)
    });
    found.unwrap_or_else(|| {
        panic!("timed out after {timeout:?} waiting for {what}; the tab shows {seen:?}")
    })
}

#[test]
fn a_browser_tab_sees_the_restarting_page_and_comes_back_by_itself() {
    let Some(chromium) = find_chromium() else {
        skip("no chromium on PATH (Debian: apt-get install chromium; or set $CHROMIUM)");
        return;
    };
    let t0 = Instant::now();
    let screens = screens_dir();
    eprintln!("screenshots go to {}", screens.display());

    let scene = Scene::new("front-browser")
        .env("STANDIN_START_DELAY", 4)
        .env("PYTHONUNBUFFERED", 1);
    let port = scene.port;
    let config = scene.write_config();
    let daemon = scene.daemon().spawn();
    // Chromium starts while the stand-in takes its 4 s.
    let mut tab = Chromium::launch(&chromium);
    wait_for(
        "the front door to say the UI is ready",
        Duration::from_secs(60),
        || front_ready(port).filter(|r| *r),
    );

    // 1. The UI through the front door.
    let url = format!("http://127.0.0.1:{port}/");
    tab.navigate(&url);
    let ui = wait_tab(
        &mut tab,
        "the tab to show the UI",
        Duration::from_secs(20),
        |v| v["title"] == UI_TITLE,
    );
    assert_eq!(ui["http"], 200, "{ui}");
    assert!(
        ui["body"]
            .as_str()
            .is_some_and(|b| b.contains("stand-in UI (forge)")),
        "{ui}"
    );
    tab.screenshot(&screens.join("ui.png"));
    eprintln!(
        "[{:>5.1}s] the tab shows the UI: {ui}",
        t0.elapsed().as_secs_f64()
    );

    // 2. A restart: the front door closes, and the same tab, reloaded as a
    // user would, shows the restarting page.
    let out = Command::new(BIN)
        .args(["restart", "--now", "--config"])
        .arg(&config)
        .output()
        .expect("run sd-webui-supervisor restart");
    assert!(out.status.success(), "restart --now: {out:?}");
    let restart_at = Instant::now();
    wait_for(
        "the front door to close for the restart",
        Duration::from_secs(20),
        || front_ready(port).filter(|r| !*r),
    );
    tab.reload();
    let page = wait_tab(
        &mut tab,
        "the tab to show the restarting page",
        Duration::from_secs(10),
        |v| v["h1"] == RESTARTING,
    );
    tab.screenshot(&screens.join("restarting.png"));
    // Still the restarting page after the screenshot: the picture shows it.
    let after = look(&mut tab).expect("the tab answers");
    assert_eq!(
        after["h1"], RESTARTING,
        "the tab left the page during the screenshot: {after}"
    );
    assert_eq!(page["http"], 503, "{page}");
    assert_eq!(page["title"], RESTARTING, "{page}");
    assert_eq!(page["url"], url.as_str(), "{page}");
    assert!(
        page["status"]
            .as_str()
            .is_some_and(|s| !s.trim().is_empty()),
        "no status line on the page: {page}"
    );
    eprintln!(
        "[{:>5.1}s] the tab shows the restarting page {:.1}s after restart --now: {page}",
        t0.elapsed().as_secs_f64(),
        restart_at.elapsed().as_secs_f64()
    );

    // 3. The test only looks from here: the page reloads itself once the UI is
    // ready.
    let mut open_at = None;
    let back = wait_tab(
        &mut tab,
        "the tab to come back to the UI by itself",
        Duration::from_secs(40),
        |v| {
            if open_at.is_none() && front_ready(port) == Some(true) {
                open_at = Some(Instant::now());
            }
            v["title"] == UI_TITLE
        },
    );
    let back_at = Instant::now();
    tab.screenshot(&screens.join("back.png"));
    assert_eq!(back["http"], 200, "{back}");
    assert_eq!(
        back["nav"], "reload",
        "the page did not come back by reloading: {back}"
    );
    assert_eq!(back["url"], url.as_str(), "{back}");
    assert!(back["h1"].is_null(), "{back}");
    assert_eq!(daemon.launches(), 2, "one start and one restart");
    let lag = open_at.map(|t| back_at.saturating_duration_since(t));
    eprintln!(
        "[{:>5.1}s] the tab is back on the UI {:.1}s after restart --now ({lag:?} after the front door opened): {back}",
        t0.elapsed().as_secs_f64(),
        restart_at.elapsed().as_secs_f64()
    );
    // The page polls every second: it is back soon after the door opens.
    if let Some(lag) = lag {
        assert!(
            lag < Duration::from_secs(10),
            "the page took {lag:?} to notice the UI"
        );
    }
    eprintln!("screenshots: {}", screens.display());
}
