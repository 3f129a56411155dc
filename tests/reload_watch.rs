//! A change of the config file is a reload by itself, no SIGHUP (issue 4: the
//! watch follows every directory along the file's symlink chain, because NixOS
//! activation swaps `/etc/static` while `/etc/sd-webui-forge/config.toml` never
//! changes; events are debounced into one reload per burst; identical content is
//! no reload). Reloads are counted by the `RELOADING=1` datagrams on the fake
//! notify socket; what they did, by the stand-in's record.

mod support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use support::{Scenario, write_atomic, write_in_place};

const SECS: fn(u64) -> Duration = Duration::from_secs;
/// Long enough after a reload for a second, unwanted one to show (the watcher
/// waits 20 ms after a write, 500 ms after one that does not parse).
const SETTLE: Duration = Duration::from_millis(1500);

fn reloads(s: &Scenario) -> usize {
    s.notify
        .messages()
        .iter()
        .filter(|m| m.lines().any(|l| l == "RELOADING=1"))
        .count()
}

fn option_posts(s: &Scenario) -> Vec<serde_json::Value> {
    s.requests("POST", "/sdapi/v1/options")
        .into_iter()
        .map(|r| r.v["body"].clone())
        .collect()
}

/// Waits for the `n`-th options POST, then for anything more to show up.
fn wait_posts(s: &Scenario, n: usize) -> Vec<serde_json::Value> {
    s.wait(SECS(5), &format!("POST /sdapi/v1/options #{n}"), || {
        (option_posts(s).len() >= n).then_some(())
    });
    std::thread::sleep(SETTLE);
    option_posts(s)
}

#[test]
fn editing_the_file_reloads_once_per_change() {
    let mut s = Scenario::new("watch-edit", "forge");
    s.start();
    s.wait_listening(1, SECS(20));
    assert_eq!(reloads(&s), 0);

    // Edited in place (truncate + write), no signal.
    s.conf
        .settings
        .insert("samples_format".into(), "jpg".into());
    write_in_place(&s.config, &s.conf.render());
    let posts = wait_posts(&s, 1);
    assert_eq!(posts, [json!({"samples_format": "jpg"})]);
    assert_eq!(reloads(&s), 1, "one edit, one reload");

    // An editor's rename-over.
    s.conf
        .settings
        .insert("samples_format".into(), "webp".into());
    write_atomic(&s.config, &s.conf.render());
    let posts = wait_posts(&s, 2);
    assert_eq!(posts[1], json!({"samples_format": "webp"}));
    assert_eq!(reloads(&s), 2, "one rename, one reload");

    // A burst of writes (an editor saving in several steps): one reload. The
    // partial files end inside a string, so they are not a config.
    let text = s.conf.render();
    let inside_strings: Vec<usize> = text.match_indices("= \"").map(|(i, _)| i + 3).collect();
    assert!(inside_strings.len() >= 2, "{text}");
    let half = inside_strings[inside_strings.len() / 2];
    for cut in [inside_strings[0], half, text.len()] {
        write_in_place(&s.config, &text[..cut]);
        std::thread::sleep(Duration::from_millis(20));
    }
    s.conf.settings.insert("jpeg_quality".into(), 70.into());
    write_in_place(&s.config, &s.conf.render());
    let posts = wait_posts(&s, 3);
    assert_eq!(posts.len(), 3, "{posts:?}");
    assert_eq!(posts[2], json!({"jpeg_quality": 70}));
    assert_eq!(reloads(&s), 3, "a burst of writes, one reload");

    // The same content again, and a touch: nothing.
    write_atomic(&s.config, &s.conf.render());
    let f = std::fs::File::options()
        .append(true)
        .open(&s.config)
        .expect("open the config");
    f.set_modified(std::time::SystemTime::now())
        .expect("touch the config");
    std::thread::sleep(SETTLE);
    assert_eq!(reloads(&s), 3, "identical content reloaded");
    assert_eq!(s.starts().len(), 1);
}

/// A NixOS-like `/etc` under `root`: `etc/sd-webui-forge/config.toml ->
/// ../static/sd-webui-forge/config.toml`, `etc/static -> <store>/etc`.
struct FakeEtc {
    root: PathBuf,
    generation: usize,
}

impl FakeEtc {
    fn new(root: &Path, text: &str) -> FakeEtc {
        let mut etc = FakeEtc {
            root: root.to_path_buf(),
            generation: 0,
        };
        std::fs::create_dir_all(root.join("etc/sd-webui-forge")).expect("create etc");
        symlink(
            "../static/sd-webui-forge/config.toml",
            root.join("etc/sd-webui-forge/config.toml"),
        )
        .expect("link the config into etc");
        etc.switch(text);
        etc
    }

    /// The path the daemon is given, as under NixOS.
    fn config(&self) -> PathBuf {
        self.root.join("etc/sd-webui-forge/config.toml")
    }

    /// Builds a new store generation holding `text` and swaps `etc/static` to it
    /// atomically (new link under a temp name, then rename), like activation.
    fn switch(&mut self, text: &str) {
        self.generation += 1;
        let store = self.root.join(format!("store{}/etc", self.generation));
        std::fs::create_dir_all(store.join("sd-webui-forge")).expect("create a store path");
        std::fs::write(store.join("sd-webui-forge/config.toml"), text).expect("write the config");
        let tmp = self.root.join("etc/.static.tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink(&store, &tmp).expect("the new static link");
        std::fs::rename(&tmp, self.root.join("etc/static")).expect("swap etc/static");
    }
}

#[test]
fn swapping_etc_static_reloads_exactly_once() {
    let mut s = Scenario::new("watch-etc", "forge");
    let mut etc = FakeEtc::new(&s.path("root"), &s.conf.render());
    s.config = etc.config();
    s.spawn();
    s.wait(SECS(30), "READY=1 at start", || {
        (s.notify.ready_count() >= 1).then_some(())
    });
    s.wait_listening(1, SECS(20));

    s.conf
        .settings
        .insert("samples_format".into(), "jpg".into());
    etc.switch(&s.conf.render());
    let posts = wait_posts(&s, 1);
    assert_eq!(posts, [json!({"samples_format": "jpg"})]);
    assert_eq!(reloads(&s), 1, "one switch, exactly one reload");

    // The chain is followed again after the swap: a second switch is seen too.
    s.conf
        .settings
        .insert("samples_format".into(), "webp".into());
    etc.switch(&s.conf.render());
    let posts = wait_posts(&s, 2);
    assert_eq!(posts[1], json!({"samples_format": "webp"}));
    assert_eq!(reloads(&s), 2);

    // A switch to a new generation with the same content: no reload.
    etc.switch(&s.conf.render());
    std::thread::sleep(SETTLE);
    assert_eq!(reloads(&s), 2, "an identical generation reloaded");

    // A switch that needs a restart: the UI is idle, so it restarts once.
    s.conf.extra_args = vec!["--cuda-malloc".into()];
    etc.switch(&s.conf.render());
    let second = s.wait_listening(2, SECS(20));
    assert!(second.argv().contains(&"--cuda-malloc".to_string()));
    std::thread::sleep(SETTLE);
    assert_eq!(reloads(&s), 3);
    assert_eq!(s.starts().len(), 2);
}
