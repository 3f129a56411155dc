//! A real headless Chromium driven over the DevTools protocol (CDP), for the
//! tests that check what a browser tab shows, not what an HTTP client gets.
//!
//! [`Chromium::launch`] starts `chromium --headless=new --remote-debugging-port=0`
//! with a fresh profile in a temp dir, reads the DevTools websocket address from
//! its stderr (`DevTools listening on ws://…`), attaches to its one tab
//! (`Target.attachToTarget`, flat session) and sends that tab's commands
//! (`Page.navigate`, `Page.reload`, `Runtime.evaluate`, `Page.captureScreenshot`)
//! over the one websocket. The client is synchronous (tungstenite, re-exported
//! by tokio-tungstenite) on a socket with a read timeout, so every call ends
//! within [`CALL_TIMEOUT`] and the tests can poll with [`super::wait`].
//!
//! Dropping it SIGKILLs Chromium's whole process group (browser, zygote,
//! renderers) and removes the profile.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

/// Longest wait for Chromium to print its DevTools address.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the answer to one CDP command.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How many of Chromium's stderr lines are kept for a failure's message.
const STDERR_LINES: usize = 80;

/// The Chromium to run: `$CHROMIUM`, else `chromium` or `chromium-browser` on
/// `PATH`; `None` when there is none.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// One headless Chromium and a CDP session on its tab.
pub struct Chromium {
    child: Child,
    ws: WebSocket<TcpStream>,
    /// The tab's flat session (`sessionId` of the tab's commands).
    session: String,
    next_id: u64,
    stderr: Arc<Mutex<VecDeque<String>>>,
    _profile: TempDir,
}

impl Chromium {
    /// Starts `bin` headless on `about:blank` and attaches to its tab; panics
    /// (with Chromium's stderr) if it does not come up within [`LAUNCH_TIMEOUT`].
    pub fn launch(bin: &Path) -> Chromium {
        let profile = tempfile::Builder::new()
            .prefix("sdws-chromium-")
            .tempdir()
            .expect("create the Chromium profile dir");
        let mut child = Command::new(bin)
            .arg("--headless=new")
            .arg("--no-sandbox")
            .arg("--disable-gpu")
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            // Small containers have a small /dev/shm; no first-run or
            // background chatter; a fixed size for the screenshots.
            .args([
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--mute-audio",
                "--hide-scrollbars",
                "--window-size=1000,640",
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own group, so that drop kills every process of it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let (found, address) = mpsc::channel();
        let pipe = child.stderr.take().expect("Chromium's stderr");
        let lines = stderr.clone();
        // Drains stderr for Chromium's whole life (a full pipe would stall it).
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(at) = line.find("ws://") {
                    let _ = found.send(line[at..].trim().to_string());
                }
                let mut kept = lines.lock().unwrap_or_else(|p| p.into_inner());
                if kept.len() == STDERR_LINES {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        let url = match address.recv_timeout(LAUNCH_TIMEOUT) {
            Ok(url) => url,
            Err(e) => {
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
                panic!(
                    "Chromium printed no DevTools address within {LAUNCH_TIMEOUT:?} ({e}); its stderr:\n{}",
                    joined(&stderr)
                );
            }
        };
        let ws = connect(&url).unwrap_or_else(|e| {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            panic!("connect to Chromium's DevTools at {url}: {e}");
        });
        let mut browser = Chromium {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            stderr,
            _profile: profile,
        };
        // The tab Chromium opened on about:blank (it may show up a moment after
        // the DevTools address).
        let deadline = Instant::now() + LAUNCH_TIMEOUT;
        let target = loop {
            let targets = browser.browser_call("Target.getTargets", json!({}));
            let page = targets.ok().and_then(|t| {
                t["targetInfos"]
                    .as_array()?
                    .iter()
                    .filter(|i| i["type"] == "page")
                    .find_map(|i| i["targetId"].as_str().map(str::to_owned))
            });
            if let Some(id) = page {
                break id;
            }
            assert!(
                Instant::now() < deadline,
                "Chromium opened no tab within {LAUNCH_TIMEOUT:?}; its stderr:\n{}",
                browser.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let attached = browser
            .browser_call(
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .unwrap_or_else(|e| panic!("attach to Chromium's tab: {e}"));
        browser.session = attached["sessionId"]
            .as_str()
            .expect("Target.attachToTarget answers a sessionId")
            .to_string();
        browser
    }

    /// Chromium's last stderr lines (for failure messages).
    pub fn stderr_tail(&self) -> String {
        joined(&self.stderr)
    }

    /// One command to the tab; its `result`, or CDP's error message.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let session = self.session.clone();
        self.send(method, params, Some(&session))
    }

    /// One command to the browser itself (no session).
    pub fn browser_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.send(method, params, None)
    }

    fn send(
        &mut self,
        method: &str,
        params: Value,
        session: Option<&str>,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .map_err(|e| format!("{method}: send: {e}"))?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    let v: Value = serde_json::from_str(text.as_str())
                        .map_err(|e| format!("{method}: bad CDP message: {e}"))?;
                    // Events (no id) and late answers are not waited for.
                    if v["id"].as_u64() == Some(id) {
                        if let Some(err) = v.get("error") {
                            return Err(format!("{method}: {err}"));
                        }
                        return Ok(v["result"].clone());
                    }
                }
                Ok(Message::Close(frame)) => {
                    return Err(format!(
                        "{method}: DevTools closed the connection: {frame:?}"
                    ));
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("{method}: read: {e}")),
            }
            if Instant::now() >= deadline {
                return Err(format!("{method}: no answer within {CALL_TIMEOUT:?}"));
            }
        }
    }

    /// `Page.navigate` to `url` (returns once the navigation started; wait for
    /// the page with [`Chromium::eval`]).
    pub fn navigate(&mut self, url: &str) {
        let r = self
            .call("Page.navigate", json!({ "url": url }))
            .unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
        if let Some(err) = r.get("errorText") {
            panic!("navigate to {url}: {err}");
        }
    }

    /// `Page.reload`, as a user pressing F5 (returns once it started).
    pub fn reload(&mut self) {
        self.call("Page.reload", json!({}))
            .unwrap_or_else(|e| panic!("reload the tab: {e}"));
    }

    /// The value of JavaScript `expression` in the tab (`Runtime.evaluate`,
    /// `returnByValue`): an error while the tab is between documents, or when
    /// the expression throws.
    pub fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!("{expression}: threw {ex}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// `document.title`, or `None` between documents.
    pub fn title(&mut self) -> Option<String> {
        self.eval("document.title")
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
    }

    /// Saves a PNG of the tab's viewport to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("the screenshot's data"))
            .expect("the screenshot is base64");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is no PNG");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- Chromium's stderr, last lines ----\n{}",
                self.stderr_tail()
            );
        }
    }
}

/// The kept stderr lines as one text.
fn joined(lines: &Mutex<VecDeque<String>>) -> String {
    let kept = lines.lock().unwrap_or_else(|p| p.into_inner());
    kept.iter().cloned().collect::<Vec<_>>().join("\n")
}

/// A websocket to `url` (`ws://127.0.0.1:PORT/…`) whose reads wait at most
/// 200 ms (callers loop until their own deadline).
fn connect(url: &str) -> Result<WebSocket<TcpStream>, String> {
    let hostport = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| format!("not a ws:// address: {url}"))?;
    let stream = TcpStream::connect(hostport).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(CALL_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(CALL_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let (ws, _) = tungstenite::client(url, stream).map_err(|e| e.to_string())?;
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    Ok(ws)
}
