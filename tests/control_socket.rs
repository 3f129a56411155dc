//! The control API on a real unix socket (and the TCP listener), started with
//! `control::start` against a fake core: every route, the socket's mode, and the
//! rules for an existing socket path.

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sd_webui_supervisor::config::{ControlConfig, DbusBus};
use sd_webui_supervisor::control::client::{Client, ClientError, EXIT_NO_DAEMON, WaitIdle};
use sd_webui_supervisor::control::{self, ControlError};
use sd_webui_supervisor::supervisor::protocol::{Queue, RestartWhen};
use support::control::{FakeCore, busy_pending, outcome, ready_idle};

fn config(socket: &Path) -> ControlConfig {
    ControlConfig {
        socket: socket.to_owned(),
        dbus: DbusBus::Off,
        http_listen: None,
        token_file: None,
        max_connections: 128,
    }
}

fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("run").join("control.sock")
}

#[tokio::test]
async fn every_route_answers_on_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let core = FakeCore::new(busy_pending());
    let control = control::start(core.handle.clone(), &config(&socket_in(&dir)))
        .await
        .unwrap();
    let client = Client::new(control.socket_path());

    assert_eq!(client.status().await.unwrap(), busy_pending());
    let json = client.status_json().await.unwrap();
    assert_eq!(json["queue"]["pending"], 3);

    core.set_reload(outcome("applied"));
    assert_eq!(client.reload().await.unwrap(), outcome("applied"));
    core.set_reload(outcome("rejected"));
    assert_eq!(client.reload().await.unwrap(), outcome("rejected"));

    let line = client.restart(RestartWhen::Now).await.unwrap();
    assert!(line.contains("now"), "{line}");
    assert_eq!(core.seen(), ["reload", "reload", "restart now"]);

    let waited = client
        .wait_idle(Some(Duration::from_millis(100)))
        .await
        .unwrap();
    assert!(matches!(waited, WaitIdle::TimedOut(_)), "{waited:?}");
    core.publish(|s| s.queue = Some(Queue::default()));
    let waited = client
        .wait_idle(Some(Duration::from_millis(100)))
        .await
        .unwrap();
    assert!(
        matches!(waited, WaitIdle::TimedOut(_)),
        "idle while a restart is pending: {waited:?}"
    );
    core.publish(|s| s.restart_pending = None);
    match client
        .wait_idle(Some(Duration::from_secs(5)))
        .await
        .unwrap()
    {
        WaitIdle::Idle(s) => assert_eq!(s.queue, Some(Queue::default())),
        other => panic!("{other:?}"),
    }

    let metrics = client.metrics().await.unwrap();
    assert!(
        support::control::has_metric(&metrics, "sd_webui_supervisor_restart_pending"),
        "{metrics}"
    );
    control.shutdown().await;
}

#[tokio::test]
async fn the_socket_is_0660_and_removed_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    let core = FakeCore::new(ready_idle());
    let control = control::start(core.handle.clone(), &config(&path))
        .await
        .unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    assert_eq!(control::SOCKET_MODE, 0o660);
    // No temporary socket is left next to it.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["control.sock"]);
    control.shutdown().await;
    assert!(!path.exists(), "the socket file outlived the supervisor");
}

#[tokio::test]
async fn a_second_supervisor_refuses_instead_of_stealing_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    let first_core = FakeCore::new(ready_idle());
    let first = control::start(first_core.handle.clone(), &config(&path))
        .await
        .unwrap();

    let second_core = FakeCore::new(busy_pending());
    let err = control::start(second_core.handle.clone(), &config(&path))
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::SocketInUse { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("another supervisor"), "{message}");

    // The first one still owns and serves the socket.
    assert_eq!(Client::new(&path).status().await.unwrap(), ready_idle());
    first.shutdown().await;
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // A socket file nobody listens on any more, as a crashed supervisor leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let core = FakeCore::new(ready_idle());
    let control = control::start(core.handle.clone(), &config(&path))
        .await
        .unwrap();
    assert_eq!(Client::new(&path).status().await.unwrap(), ready_idle());
    control.shutdown().await;
}

#[tokio::test]
async fn a_path_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    std::fs::write(&path, "precious").unwrap();
    let core = FakeCore::new(ready_idle());
    let err = control::start(core.handle.clone(), &config(&path))
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::NotASocket { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

#[tokio::test]
async fn shutdown_leaves_a_successors_socket_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    let core = FakeCore::new(ready_idle());
    let old = control::start(core.handle.clone(), &config(&path))
        .await
        .unwrap();
    // Someone replaced the socket (e.g. an operator removed it and a new
    // supervisor bound the path); the old one must not delete the new file.
    std::fs::remove_file(&path).unwrap();
    let _successor = std::os::unix::net::UnixListener::bind(&path).unwrap();
    old.shutdown().await;
    assert!(path.exists());
}

#[tokio::test]
async fn no_daemon_is_reported_with_the_socket_and_exit_code_4() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nobody.sock");
    let err = Client::new(&path).status().await.unwrap_err();
    assert!(matches!(err, ClientError::NoDaemon { .. }), "{err:?}");
    assert_eq!(err.exit_code(), EXIT_NO_DAEMON);
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains("systemctl status sd-webui-forge"),
        "{message}"
    );
}

mod tcp {
    use super::*;

    async fn start_tcp(dir: &tempfile::TempDir, core: &FakeCore) -> control::Control {
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "t0ken-for-tests\n").unwrap();
        let config = ControlConfig {
            http_listen: Some("127.0.0.1:0".parse().unwrap()),
            token_file: Some(token_file),
            max_connections: 128,
            ..config(&socket_in(dir))
        };
        control::start(core.handle.clone(), &config).await.unwrap()
    }

    #[tokio::test]
    async fn wrong_or_missing_token_is_401_on_every_route() {
        let dir = tempfile::tempdir().unwrap();
        let core = FakeCore::new(ready_idle());
        let control = start_tcp(&dir, &core).await;
        let base = format!("http://{}", control.tcp_addr().unwrap());
        let http = reqwest::Client::new();
        let routes = [
            (reqwest::Method::GET, "/v1/status"),
            (reqwest::Method::POST, "/v1/reload"),
            (reqwest::Method::POST, "/v1/restart"),
            (reqwest::Method::GET, "/v1/wait-idle?timeout=1s"),
            (reqwest::Method::GET, "/metrics"),
        ];
        for (method, route) in &routes {
            for auth in [None, Some("Bearer nope"), Some("Bearer t0ken-for-test")] {
                let mut req = http.request(method.clone(), format!("{base}{route}"));
                if let Some(a) = auth {
                    req = req.header("authorization", a);
                }
                let resp = req.send().await.unwrap();
                assert_eq!(resp.status(), 401, "{method} {route} with {auth:?}");
                assert_eq!(resp.headers()["www-authenticate"], "Bearer");
            }
        }
        assert!(
            core.seen().is_empty(),
            "an unauthenticated command got through"
        );
        for (method, route) in &routes {
            let resp = http
                .request(method.clone(), format!("{base}{route}"))
                .bearer_auth("t0ken-for-tests")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{method} {route}");
        }
        assert_eq!(core.seen(), ["reload", "restart idle"]);
        // The unix socket needs no token: its file mode guards it.
        assert_eq!(
            Client::new(control.socket_path()).status().await.unwrap(),
            ready_idle()
        );
        control.shutdown().await;
    }

    #[tokio::test]
    async fn an_unreadable_or_empty_token_file_fails_start_and_leaves_no_socket() {
        let dir = tempfile::tempdir().unwrap();
        let core = FakeCore::new(ready_idle());
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        for (file, want_empty) in [(dir.path().join("missing"), false), (empty, true)] {
            let config = ControlConfig {
                http_listen: Some("127.0.0.1:0".parse().unwrap()),
                token_file: Some(file),
                max_connections: 128,
                ..config(&socket_in(&dir))
            };
            let err = control::start(core.handle.clone(), &config)
                .await
                .unwrap_err();
            match err {
                ControlError::TokenEmpty { .. } => assert!(want_empty),
                ControlError::TokenRead { .. } => assert!(!want_empty),
                other => panic!("{other:?}"),
            }
            assert!(!socket_in(&dir).exists());
        }
    }

    #[tokio::test]
    async fn a_taken_tcp_port_fails_start_and_removes_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "x").unwrap();
        let config = ControlConfig {
            http_listen: Some(taken.local_addr().unwrap()),
            token_file: Some(token_file),
            max_connections: 128,
            ..config(&socket_in(&dir))
        };
        let core = FakeCore::new(ready_idle());
        let err = control::start(core.handle.clone(), &config)
            .await
            .unwrap_err();
        assert!(matches!(err, ControlError::Tcp { .. }), "{err:?}");
        assert!(!socket_in(&dir).exists());
    }
}

/// What an operator does: `curl --unix-socket … /metrics`, parsed by a real
/// Prometheus parser.
#[tokio::test]
async fn curl_over_the_socket_gets_parsable_metrics() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        support::skip("curl is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let core = FakeCore::new(busy_pending());
    let control = control::start(core.handle.clone(), &config(&socket_in(&dir)))
        .await
        .unwrap();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--fail", "--unix-socket"])
        .arg(control.socket_path())
        .arg("http://localhost/metrics")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let scrape = support::control::scrape(&text);
    let queue_pending = scrape
        .samples
        .iter()
        .find(|s| s.metric == "sd_webui_supervisor_queue_pending")
        .map(|s| s.value.clone());
    assert!(
        matches!(queue_pending, Some(prometheus_parse::Value::Gauge(v)) if v == 3.0),
        "{queue_pending:?}"
    );
    control.shutdown().await;
}
