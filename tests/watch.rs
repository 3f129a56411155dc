//! The config watcher against real files: editors, bursts, and a simulated NixOS
//! `/etc` whose `static` link is swapped atomically.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use std::sync::Arc;

use sd_webui_supervisor::config::Config;
use sd_webui_supervisor::watch::{Change, Changes, Check, ConfigWatcher, Debounce, WatchError};
use tokio::time::timeout;

/// Short so the tests are quick; the daemon uses the default.
const QUIET: Duration = Duration::from_millis(100);
const DEBOUNCE: Debounce = Debounce {
    quiet: QUIET,
    incomplete: QUIET,
    check: |_, _| Check::Complete(None),
};

/// How long a notification that must come may take.
const COMES_WITHIN: Duration = Duration::from_secs(5);

/// How long to listen for a notification that must not come: well past the
/// debounce, under a second.
const QUIET_FOR: Duration = Duration::from_millis(700);

fn root() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = fs::canonicalize(dir.path()).expect("canonical tempdir");
    (dir, root)
}

fn start(path: &Path) -> (ConfigWatcher, Changes) {
    start_with(path, DEBOUNCE)
}

async fn comes(rx: &mut Changes) -> Arc<Change> {
    match timeout(COMES_WITHIN, rx.recv()).await {
        Ok(Some(change)) => change,
        Ok(None) => panic!("watcher stopped"),
        Err(_) => panic!("no notification within {COMES_WITHIN:?}"),
    }
}

async fn stays_quiet(rx: &mut Changes) {
    if let Ok(got) = timeout(QUIET_FOR, rx.recv()).await {
        panic!("unexpected notification: {got:?}");
    }
}

/// Replaces `link` by a link to `target` in one rename, as NixOS activation does.
fn swap(link: &Path, target: &Path) {
    let tmp = link.with_file_name(".swap.tmp");
    symlink(target, &tmp).expect("temp link");
    fs::rename(&tmp, link).expect("rename over link");
}

#[tokio::test]
async fn an_in_place_edit_fires_once() {
    let (_d, root) = root();
    let path = root.join("config.toml");
    fs::write(&path, "a = 1\n").unwrap();
    let (_w, mut rx) = start(&path);
    fs::write(&path, "a = 2\n").unwrap();
    comes(&mut rx).await;
    stays_quiet(&mut rx).await;
}

#[tokio::test]
async fn a_rename_over_fires_once() {
    let (_d, root) = root();
    let path = root.join("config.toml");
    fs::write(&path, "a = 1\n").unwrap();
    let (_w, mut rx) = start(&path);
    fs::write(root.join(".config.toml.swp"), "a = 2\n").unwrap();
    fs::rename(root.join(".config.toml.swp"), &path).unwrap();
    comes(&mut rx).await;
    stays_quiet(&mut rx).await;
}

#[tokio::test]
async fn an_editor_keeping_a_backup_fires_once() {
    let (_d, root) = root();
    let path = root.join("config.toml");
    fs::write(&path, "a = 1\n").unwrap();
    let (_w, mut rx) = start(&path);
    fs::rename(&path, root.join("config.toml~")).unwrap();
    fs::write(&path, "a = 2\n").unwrap();
    comes(&mut rx).await;
    stays_quiet(&mut rx).await;
}

#[tokio::test]
async fn a_touch_or_identical_rewrite_fires_nothing() {
    let (_d, root) = root();
    let path = root.join("config.toml");
    fs::write(&path, "a = 1\n").unwrap();
    let (_w, mut rx) = start(&path);
    let file = fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::now()).unwrap();
    drop(file);
    fs::write(&path, "a = 1\n").unwrap();
    fs::write(root.join("unrelated.toml"), "b = 1\n").unwrap();
    stays_quiet(&mut rx).await;
}

#[tokio::test]
async fn a_burst_of_writes_fires_once_with_the_last_content() {
    let (_d, root) = root();
    let path = root.join("config.toml");
    fs::write(&path, "a = 0\n").unwrap();
    // Longer than the others: a loaded machine must not split the burst.
    let debounce = Duration::from_millis(300);
    let initial = fs::read(&path).unwrap();
    let (_w, mut rx) = ConfigWatcher::start(&path, &initial, Debounce::fixed(debounce)).unwrap();
    // Another process writes while the daemon's runtime runs the watcher.
    let writer = path.clone();
    let (took, widest_gap) = tokio::task::spawn_blocking(move || {
        let begun = std::time::Instant::now();
        let mut last = begun;
        let mut widest = Duration::ZERO;
        for i in 1..=20 {
            fs::write(&writer, format!("a = {i}\n")).unwrap();
            std::thread::sleep(Duration::from_millis(1));
            widest = widest.max(last.elapsed());
            last = std::time::Instant::now();
        }
        (begun.elapsed(), widest)
    })
    .await
    .unwrap();
    eprintln!("20 writes took {took:?}, widest gap {widest_gap:?}");
    assert!(
        widest_gap < debounce / 2,
        "the machine is too slow for a burst"
    );
    comes(&mut rx).await;
    if let Ok(got) = timeout(debounce + Duration::from_millis(500), rx.recv()).await {
        panic!("second notification for one burst: {got:?}");
    }
    assert_eq!(fs::read_to_string(&path).unwrap(), "a = 20\n");
}

#[tokio::test]
async fn content_changed_before_start_fires_at_once() {
    let (_d, root) = root();
    let path = root.join("config.toml");
    fs::write(&path, "a = 2\n").unwrap();
    let (_w, mut rx) = ConfigWatcher::start(&path, b"a = 1\n", DEBOUNCE).unwrap();
    comes(&mut rx).await;
    stays_quiet(&mut rx).await;
}

#[tokio::test]
async fn content_the_daemon_loaded_itself_fires_nothing() {
    let (_d, root) = root();
    let path = root.join("config.toml");
    fs::write(&path, "a = 1\n").unwrap();
    let (w, mut rx) = start(&path);
    fs::write(&path, "a = 2\n").unwrap();
    w.set_current(b"a = 2\n");
    stays_quiet(&mut rx).await;
}

#[tokio::test]
async fn a_file_missing_for_a_while_is_waited_for() {
    let (_d, root) = root();
    let path = root.join("config.toml");
    fs::write(&path, "a = 1\n").unwrap();
    let (_w, mut rx) = start(&path);
    fs::remove_file(&path).unwrap();
    stays_quiet(&mut rx).await;
    fs::write(&path, "a = 2\n").unwrap();
    comes(&mut rx).await;
    stays_quiet(&mut rx).await;
}

/// `etc/sd-webui-forge/config.toml -> ../static/sd-webui-forge/config.toml`,
/// `etc/static -> store1/etc`, as NixOS lays out `/etc`.
fn nixos_etc(root: &Path) -> PathBuf {
    store(root, "store1", "a = 1\n");
    fs::create_dir_all(root.join("etc/sd-webui-forge")).unwrap();
    symlink(
        "../static/sd-webui-forge/config.toml",
        root.join("etc/sd-webui-forge/config.toml"),
    )
    .unwrap();
    symlink(root.join("store1/etc"), root.join("etc/static")).unwrap();
    root.join("etc/sd-webui-forge/config.toml")
}

/// A store-like generation holding `etc/sd-webui-forge/config.toml`.
fn store(root: &Path, name: &str, content: &str) -> PathBuf {
    let dir = root.join(name).join("etc/sd-webui-forge");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("config.toml"), content).unwrap();
    root.join(name).join("etc")
}

#[tokio::test]
async fn swapping_nixos_static_fires_once_per_new_content() {
    let (_d, root) = root();
    let path = nixos_etc(&root);
    let (_w, mut rx) = start(&path);

    swap(&root.join("etc/static"), &store(&root, "store2", "a = 2\n"));
    comes(&mut rx).await;
    stays_quiet(&mut rx).await;
    assert_eq!(fs::read_to_string(&path).unwrap(), "a = 2\n");

    // A new generation with the same file: nothing to reload.
    swap(&root.join("etc/static"), &store(&root, "store3", "a = 2\n"));
    stays_quiet(&mut rx).await;
}

#[tokio::test]
async fn the_watch_follows_many_swaps_and_collected_generations() {
    let (_d, root) = root();
    let path = nixos_etc(&root);
    let (_w, mut rx) = start(&path);
    for i in 2..=6 {
        let name = format!("store{i}");
        swap(
            &root.join("etc/static"),
            &store(&root, &name, &format!("a = {i}\n")),
        );
        comes(&mut rx).await;
        // The previous generation is garbage-collected.
        fs::remove_dir_all(root.join(format!("store{}", i - 1))).unwrap();
        stays_quiet(&mut rx).await;
    }
    // Editing inside the current generation is still seen (the new dirs are watched).
    fs::write(
        root.join("store6/etc/sd-webui-forge/config.toml"),
        "a = 7\n",
    )
    .unwrap();
    comes(&mut rx).await;
}

#[tokio::test]
async fn an_intermediate_directory_link_is_followed() {
    let (_d, root) = root();
    let path = nixos_etc(&root);
    // NixOS links whole directories too: etc/sd-webui-forge -> static/sd-webui-forge.
    fs::remove_dir_all(root.join("etc/sd-webui-forge")).unwrap();
    symlink("static/sd-webui-forge", root.join("etc/sd-webui-forge")).unwrap();
    let (_w, mut rx) = start(&path);
    swap(&root.join("etc/static"), &store(&root, "store2", "a = 2\n"));
    comes(&mut rx).await;
    swap(
        &root.join("etc/sd-webui-forge"),
        &store(&root, "store3", "a = 3\n").join("sd-webui-forge"),
    );
    comes(&mut rx).await;
    stays_quiet(&mut rx).await;
}

#[tokio::test]
async fn dropping_the_watcher_closes_the_channel() {
    let (_d, root) = root();
    let path = root.join("config.toml");
    fs::write(&path, "a = 1\n").unwrap();
    let (w, mut rx) = start(&path);
    drop(w);
    assert!(matches!(timeout(COMES_WITHIN, rx.recv()).await, Ok(None)));
}

#[test]
fn starting_outside_a_runtime_is_an_error() {
    let result = ConfigWatcher::start(Path::new("/etc/hostname"), b"", DEBOUNCE);
    assert!(matches!(result, Err(WatchError::NoRuntime)));
}

/// "Complete" for these tests: the last line says so.
fn ends_with_end(_: &Path, bytes: &[u8]) -> Check {
    match bytes.ends_with(b"# end\n") {
        true => Check::Complete(None),
        false => Check::Incomplete,
    }
}

#[tokio::test]
async fn half_written_content_waits_for_the_writer_to_finish() {
    let (_d, root) = root();
    let path = root.join("config.toml");
    fs::write(&path, "a = 0\n# end\n").unwrap();
    let debounce = Debounce {
        quiet: Duration::from_millis(50),
        incomplete: Duration::from_millis(1500),
        check: ends_with_end,
    };
    let initial = fs::read(&path).unwrap();
    let (_w, mut rx) = ConfigWatcher::start(&path, &initial, debounce).unwrap();

    // A writer that stops half-way for longer than the short quiet period.
    fs::write(&path, "a = 1\n").unwrap();
    if let Ok(got) = timeout(Duration::from_millis(400), rx.recv()).await {
        panic!("half-written content was announced: {got:?}");
    }
    fs::write(&path, "a = 1\n# end\n").unwrap();
    comes(&mut rx).await;
    stays_quiet(&mut rx).await;

    // Content that stays incomplete is announced after all (the reload then
    // rejects it and says why), once it has been quiet for `incomplete`.
    let begun = std::time::Instant::now();
    fs::write(&path, "a = 2\n").unwrap();
    comes(&mut rx).await;
    assert!(
        begun.elapsed() >= debounce.incomplete,
        "incomplete content announced after {:?}",
        begun.elapsed()
    );
}

/// The daemon's debounce hands over what it read and parsed: the bytes of the
/// file, and the config they parse to (the core neither reads nor parses again);
/// content that never parses comes without a config, after the long quiet.
#[tokio::test]
async fn the_change_carries_the_bytes_read_and_their_parse() {
    let (_d, root) = root();
    let path = root.join("config.toml");
    let config = |dir: &str| {
        format!("[ui]\nflavor = \"forge\"\ncommand = [\"/bin/true\"]\n[data]\ndir = \"{dir}\"\n")
    };
    fs::write(&path, config("/srv/a")).unwrap();
    let (_w, mut rx) = start_with(&path, Debounce::default());

    fs::write(&path, config("/srv/b")).unwrap();
    let change = comes(&mut rx).await;
    assert_eq!(change.bytes, config("/srv/b").into_bytes());
    let parsed = change.config.as_deref().expect("a parse with the change");
    assert_eq!(*parsed, Config::from_bytes(&path, &change.bytes).unwrap());
    assert_eq!(parsed.data.dir, Path::new("/srv/b"));

    fs::write(&path, "[ui]\nflavor = \"nope\"\n").unwrap();
    let change = comes(&mut rx).await;
    assert_eq!(change.bytes, b"[ui]\nflavor = \"nope\"\n");
    assert!(change.config.is_none());
}

fn start_with(path: &Path, debounce: Debounce) -> (ConfigWatcher, Changes) {
    let initial = fs::read(path).expect("initial content");
    ConfigWatcher::start(path, &initial, debounce).expect("watcher starts")
}
