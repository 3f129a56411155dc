//! Helpers for the container-facing tests: a scene whose config also has the TCP
//! control listener (health endpoints, bearer token), plain blocking HTTP, a job on
//! the stand-in, and the real binary as PID 1 of a new PID namespace
//! (`unshare --pid --fork --mount-proc`, root only).

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{Scene, daemon_bin, free_port, wait_for};

/// The bearer token of every scene's TCP listener.
pub const TOKEN: &str = "container-test-token";

/// A scene's config plus `control.http_listen` on a free loopback port.
pub struct Listening {
    /// The scene (config, data dir, record).
    pub scene: Scene,
    /// The control API's TCP port.
    pub control_port: u16,
}

impl Listening {
    /// Writes the scene's config with the TCP listener and its token file.
    pub fn new(scene: Scene) -> Listening {
        let control_port = free_port();
        let token = scene.dir().join("control-token");
        fs::write(&token, TOKEN).expect("write the token file");
        let mut root: toml::Table = scene.config_toml().parse().expect("scene config parses");
        let control = root
            .get_mut("control")
            .and_then(toml::Value::as_table_mut)
            .expect("[control]");
        control.insert(
            "http_listen".into(),
            format!("127.0.0.1:{control_port}").into(),
        );
        control.insert("token_file".into(), token.display().to_string().into());
        fs::write(scene.config_path(), root.to_string()).expect("write the config");
        Listening {
            scene,
            control_port,
        }
    }

    /// `GET path` on the control listener without a token.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http(self.control_port, "GET", path, None)
    }

    /// `METHOD path` on the control listener with the token.
    pub fn call(&self, method: &str, path: &str) -> Option<(u16, String)> {
        http(self.control_port, method, path, Some(TOKEN))
    }

    /// `POST path` with a JSON body on the control listener, with the token.
    pub fn post(&self, path: &str, body: &str) -> Option<(u16, String)> {
        request(self.control_port, "POST", path, Some(TOKEN), body, 120)
    }

    /// `/v1/status` as JSON, when the daemon answers.
    pub fn status(&self) -> Option<serde_json::Value> {
        let (code, body) = self.call("GET", "/v1/status")?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// Waits until the daemon says the UI is ready.
    pub fn wait_ready(&self, timeout: Duration) {
        wait_for("the UI to be ready", timeout, || {
            self.status().filter(|s| s["state"] == "ready").map(|_| ())
        });
    }

    /// Starts one stand-in job of `seconds` (the request answers when it is done)
    /// and waits until the supervisor sees it running.
    pub fn start_job(&self, seconds: u32) -> std::thread::JoinHandle<()> {
        let port = self.scene.port;
        let body = format!("{{\"prompt\":\"a lighthouse\",\"stand_in_seconds\":{seconds}}}");
        let job = std::thread::spawn(move || {
            let _ = request(port, "POST", "/sdapi/v1/txt2img", None, &body, 600);
        });
        wait_for(
            "the supervisor to see the job",
            Duration::from_secs(20),
            || {
                self.status()
                    .filter(|s| s["queue"]["running"].as_u64().unwrap_or(0) > 0)
                    .map(|_| ())
            },
        );
        job
    }
}

/// One HTTP/1.1 request on a fresh connection: (status, body), or `None` when
/// nothing answered.
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    request(port, method, path, token, "", 30)
}

fn request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
    timeout_s: u64,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(timeout_s)))
        .ok()?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let code = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    Some((code, body))
}

/// Why a PID-namespace test cannot run here, if it cannot.
pub fn namespace_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (unshare --pid)".into());
    }
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match probe {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("unshare --pid --fork --mount-proc true: {s}")),
        Err(e) => Some(format!("unshare not runnable: {e}")),
    }
}

/// `sd-webui-supervisor run` as PID 1 of a new PID namespace. Dropping it
/// SIGKILLs `unshare`, whose `--kill-child` takes the namespace down.
pub struct Namespace {
    unshare: Child,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

impl Namespace {
    /// Starts the daemon for `config` as PID 1; output goes to `log`.
    pub fn spawn(config: &Path, log: &Path) -> Namespace {
        let out = fs::File::create(log).expect("create the log");
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(daemon_bin())
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn unshare");
        Namespace {
            unshare,
            log: log.to_owned(),
            exit: None,
        }
    }

    /// The host pid of the namespace's PID 1 (the daemon's init half).
    pub fn pid1(&self) -> i32 {
        let parent = self.unshare.id() as i32;
        wait_for("PID 1 of the namespace", Duration::from_secs(10), || {
            children_of(parent).first().copied()
        })
    }

    /// Every process of the namespace but PID 1, as (host pid, state, comm).
    pub fn others(&self) -> Vec<(i32, char, String)> {
        let pid1 = self.pid1();
        let Ok(ns) = fs::read_link(format!("/proc/{pid1}/ns/pid")) else {
            return Vec::new();
        };
        processes()
            .into_iter()
            .filter(|(pid, ..)| {
                *pid != pid1
                    && fs::read_link(format!("/proc/{pid}/ns/pid")).ok().as_ref() == Some(&ns)
            })
            .collect()
    }

    /// The daemon's output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `unshare`'s exit status (PID 1's), once it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.exit {
            return s;
        }
        let unshare = &mut self.unshare;
        let s = wait_for("the namespace's PID 1 to exit", timeout, || {
            unshare.try_wait().expect("try_wait")
        });
        self.exit = Some(s);
        s
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.unshare.kill();
            let _ = self.unshare.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- daemon log (last 40 lines) ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Every process: (pid, state, comm).
pub fn processes() -> Vec<(i32, char, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_owned();
            let state = rest.split_whitespace().next()?.chars().next()?;
            Some((pid, state, comm))
        })
        .collect()
}

/// Children of `parent` (host pids).
pub fn children_of(parent: i32) -> Vec<i32> {
    processes()
        .into_iter()
        .filter(|(pid, ..)| super::proc_stat(*pid).is_some_and(|(_, ppid, _)| ppid == parent))
        .map(|(pid, ..)| pid)
        .collect()
}
