//! Downloads through the real binary (`fetch-models`) against a local server:
//! link like a store model, one file per digest, resume after a dropped
//! connection and after `kill -9`, hash mismatch, 401 without a retry storm,
//! the token kept from a redirect's second host and from the output, disk full.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;
use support::BIN;
use support::download_server::Server;

/// Bytes a kill may lose: the writer's chunk plus what is in flight
/// (src/download/writer.rs, fetch.rs: 256 KiB and 8 network chunks), plus one
/// server piece.
const ONE_CHUNK: u64 = 256 * 1024 + 8 * 64 * 1024 + 64 * 1024;

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        Setup { _tmp: tmp, root }
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Writes a forge config whose `[models.checkpoints]` body is `models`.
    fn config(&self, models: &str) -> PathBuf {
        let path = self.root.join("config.toml");
        let text = format!(
            "[ui]\nflavor = \"forge\"\ncommand = [\"/bin/true\"]\n[data]\ndir = \"{}\"\n[models.checkpoints]\n{models}\n",
            self.data_dir().display()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn cache(&self, hex: &str) -> PathBuf {
        self.data_dir()
            .join(".sd-webui-supervisor/downloads")
            .join(hex)
    }

    fn part(&self, hex: &str) -> PathBuf {
        self.cache(&format!("{hex}.part"))
    }

    fn link(&self, name: &str) -> PathBuf {
        self.data_dir().join("models/Stable-diffusion").join(name)
    }
}

fn fetch(config: &Path) -> Output {
    Command::new(BIN)
        .args(["fetch-models", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_download_is_linked_like_a_store_model_and_shared_by_digest() {
    let body = data(3_000_000, 1);
    let hex = sha_hex(&body);
    let srv = Server::start("127.0.0.1", body.clone());
    let s = Setup::new();
    let sri = format!(
        "sha256-{}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            sha2::Sha256::digest(&body)
        )
    );
    let config = s.config(&format!(
        "\"a.safetensors\" = {{ url = \"{u}\", sha256 = \"{hex}\" }}\n\"b.safetensors\" = {{ url = \"{u}\", sha256 = \"{sri}\" }}",
        u = srv.url("/file")
    ));
    let out = fetch(&config);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(s.cache(&hex)).unwrap(), body);
    for name in ["a.safetensors", "b.safetensors"] {
        assert_eq!(std::fs::read_link(s.link(name)).unwrap(), s.cache(&hex));
    }
    assert_eq!(srv.requests().len(), 1, "one download for one digest");
    assert!(!s.part(&hex).exists());

    // Nothing to do the second time: no request.
    let out = fetch(&config);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(srv.requests().len(), 1);

    // Dropping both declarations unlinks and then removes the cached file.
    let config = s.config("");
    let out = fetch(&config);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!s.link("a.safetensors").exists());
    assert!(!s.cache(&hex).exists(), "undeclared cache file swept");
}

#[test]
fn a_dropped_connection_is_resumed_with_range() {
    let body = data(4_000_000, 2);
    let hex = sha_hex(&body);
    let srv = Server::start("127.0.0.1", body.clone());
    *srv.behaviour.drop_after.lock().unwrap() = Some(1_500_000);
    let s = Setup::new();
    let config = s.config(&format!(
        "\"m.safetensors\" = {{ url = \"{}\", sha256 = \"{hex}\" }}",
        srv.url("/file")
    ));
    let out = fetch(&config);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(s.cache(&hex)).unwrap(), body);
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].range_start(), None);
    assert_eq!(
        reqs[1].range_start(),
        Some(1_500_000),
        "resumed where it broke"
    );
    let sent = srv.sent.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(sent, body.len() as u64, "no byte sent twice");
}

#[test]
fn a_kill_9_loses_at_most_one_chunk() {
    let body = data(6_000_000, 3);
    let hex = sha_hex(&body);
    let srv = Server::start("127.0.0.1", body.clone());
    *srv.behaviour.slow.lock().unwrap() = Some(Duration::from_millis(40));
    let s = Setup::new();
    let config = s.config(&format!(
        "\"m.safetensors\" = {{ url = \"{}\", sha256 = \"{hex}\" }}",
        srv.url("/file")
    ));
    let mut child = Command::new(BIN)
        .args(["fetch-models", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(s.part(&hex)).map_or(0, |m| m.len()) < 1_000_000 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The download helper dies with it (PR_SET_PDEATHSIG): nothing keeps
    // writing into the `.part` the next run resumes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !support::procs::holding(&s.part(&hex)).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the download helper outlived its supervisor: {:?}",
            support::procs::holding(&s.part(&hex))
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent_before = srv.sent.load(std::sync::atomic::Ordering::SeqCst);
    let kept = std::fs::metadata(s.part(&hex)).unwrap().len();
    *srv.behaviour.slow.lock().unwrap() = None;

    let out = fetch(&config);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(s.cache(&hex)).unwrap(), body);
    let reqs = srv.requests();
    assert_eq!(reqs.last().unwrap().range_start(), Some(kept));
    let lost = sent_before.saturating_sub(kept);
    eprintln!("sent before kill {sent_before}, kept {kept}, re-downloaded {lost}");
    assert!(lost <= ONE_CHUNK, "re-downloaded {lost} bytes");
}

#[test]
fn a_wrong_digest_deletes_the_file_and_names_the_model() {
    let body = data(1_000_000, 4);
    let srv = Server::start("127.0.0.1", body);
    let s = Setup::new();
    let wrong = sha_hex(b"something else");
    let config = s.config(&format!(
        "\"bad.safetensors\" = {{ url = \"{}\", sha256 = \"{wrong}\" }}",
        srv.url("/file")
    ));
    let out = fetch(&config);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("checkpoints/bad.safetensors failed: sha256 mismatch"),
        "{all}"
    );
    assert!(!s.part(&wrong).exists() && !s.cache(&wrong).exists());
    assert!(std::fs::symlink_metadata(s.link("bad.safetensors")).is_err());
    assert_eq!(srv.requests().len(), 1, "a mismatch is not retried");
}

#[test]
fn a_401_is_reported_once_and_leaves_nothing() {
    let body = data(100_000, 5);
    let hex = sha_hex(&body);
    let srv = Server::start("127.0.0.1", body);
    *srv.behaviour.require.lock().unwrap() = Some(("authorization".into(), "Bearer x".into()));
    let s = Setup::new();
    let config = s.config(&format!(
        "\"gated.safetensors\" = {{ url = \"{}?sig=SIGNATURE\", sha256 = \"{hex}\" }}",
        srv.url("/file")
    ));
    let out = fetch(&config);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("checkpoints/gated.safetensors failed: HTTP 401"),
        "{all}"
    );
    assert!(!all.contains("SIGNATURE"), "query string redacted: {all}");
    assert_eq!(srv.requests().len(), 1, "no retry storm");
    assert!(!s.part(&hex).exists());
}

#[test]
fn the_token_goes_to_its_host_only_and_never_to_the_output() {
    let body = data(500_000, 6);
    let hex = sha_hex(&body);
    let cdn = Server::start("127.0.0.2", body.clone());
    let origin = Server::start("127.0.0.1", Vec::new());
    *origin.behaviour.redirect_to.lock().unwrap() =
        Some(format!("{}?X-Signature=SIGNED", cdn.url("/file")));
    let s = Setup::new();
    let token = "tok-3f9a0c-SECRET";
    let token_file = s.root.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    *origin.behaviour.require.lock().unwrap() = None;
    let config = s.config(&format!(
        "\"civitai.safetensors\" = {{ url = \"{}\", sha256 = \"{hex}\", token_file = \"{}\" }}",
        origin.url("/redirect"),
        token_file.display()
    ));
    let out = fetch(&config);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(std::fs::read(s.cache(&hex)).unwrap(), body);
    let first = &origin.requests()[0];
    assert_eq!(
        first.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    let at_cdn = cdn.requests();
    assert_eq!(at_cdn.len(), 1);
    assert!(
        at_cdn[0].headers.iter().all(|(_, v)| !v.contains(token)),
        "the second host got the token: {:?}",
        at_cdn[0].headers
    );
    assert!(at_cdn[0].header("authorization").is_none());
    assert!(!all.contains(token), "{all}");
}

#[test]
fn a_custom_token_header_carries_the_bare_token() {
    let body = data(200_000, 7);
    let hex = sha_hex(&body);
    let srv = Server::start("127.0.0.1", body);
    *srv.behaviour.require.lock().unwrap() = Some(("x-api-key".into(), "k123".into()));
    let s = Setup::new();
    let token_file = s.root.join("token");
    std::fs::write(&token_file, "k123").unwrap();
    let config = s.config(&format!(
        "\"k.safetensors\" = {{ url = \"{}\", sha256 = \"{hex}\", token_file = \"{}\", token_header = \"X-Api-Key\" }}",
        srv.url("/file"),
        token_file.display()
    ));
    let out = fetch(&config);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_missing_token_file_is_named() {
    let body = data(1000, 8);
    let hex = sha_hex(&body);
    let srv = Server::start("127.0.0.1", body);
    let s = Setup::new();
    let config = s.config(&format!(
        "\"t.safetensors\" = {{ url = \"{}\", sha256 = \"{hex}\", token_file = \"/nonexistent/token\" }}",
        srv.url("/file")
    ));
    let out = fetch(&config);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("checkpoints/t.safetensors failed: token file /nonexistent/token"),
        "{all}"
    );
    assert!(srv.requests().is_empty(), "nothing sent without the token");
}

#[test]
fn a_server_ignoring_range_restarts_cleanly() {
    let body = data(2_000_000, 9);
    let hex = sha_hex(&body);
    let srv = Server::start("127.0.0.1", body.clone());
    *srv.behaviour.drop_after.lock().unwrap() = Some(700_000);
    srv.behaviour
        .no_ranges
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let s = Setup::new();
    let config = s.config(&format!(
        "\"m.safetensors\" = {{ url = \"{}\", sha256 = \"{hex}\" }}",
        srv.url("/file")
    ));
    let out = fetch(&config);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(s.cache(&hex)).unwrap(), body);
}

#[test]
fn a_full_disk_keeps_the_part_and_says_so() {
    if !nix::unistd::geteuid().is_root() {
        support::skip("mounting a tmpfs needs root");
        return;
    }
    let body = data(3_000_000, 10);
    let hex = sha_hex(&body);
    let srv = Server::start("127.0.0.1", body);
    let s = Setup::new();
    std::fs::create_dir_all(s.data_dir()).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(s.data_dir())
        .status()
        .is_ok_and(|st| st.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    let config = s.config(&format!(
        "\"big.safetensors\" = {{ url = \"{}\", sha256 = \"{hex}\" }}",
        srv.url("/file")
    ));
    let out = fetch(&config);
    let kept = std::fs::metadata(s.part(&hex)).map(|m| m.len()).ok();
    let link = std::fs::symlink_metadata(s.link("big.safetensors")).is_ok();
    let _ = Command::new("umount").arg(s.data_dir()).status();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("checkpoints/big.safetensors failed: disk full (partial download kept"),
        "{all}"
    );
    assert!(kept.is_some_and(|n| n > 0), "the .part is kept: {kept:?}");
    assert!(!link);
    assert_eq!(
        srv.requests().len(),
        1,
        "a full disk is not retried by itself"
    );
}
