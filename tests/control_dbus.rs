//! The D-Bus interface on a private `dbus-daemon`: introspection against the
//! checked-in XML, properties, PropertiesChanged, methods and their errors, name
//! ownership, and the shipped system-bus policy.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use sd_webui_supervisor::config::{ControlConfig, DbusBus};
use sd_webui_supervisor::control::dbus::{
    BUS_NAME, Bus, ERROR_RELOAD_REJECTED, INTERFACE, OBJECT_PATH, serve,
};
use sd_webui_supervisor::control::{self, ControlError};
use sd_webui_supervisor::supervisor::protocol::{PendingRestart, Queue, Snapshot};
use support::control::{FakeCore, busy_pending, outcome, ready_idle, starting};
use zbus::proxy::CacheProperties;
use zbus::{Connection, connection};

const CHECKED_IN_XML: &str = include_str!("../dbus/io.github.sd_webui_supervisor.Supervisor1.xml");
const SHIPPED_POLICY: &str = include_str!("../dbus/io.github.sd_webui_supervisor.Supervisor1.conf");

/// Anyone may own and call anything: for testing the interface itself.
const PERMISSIVE: &str = r#"<policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>"#;

/// The default policy of Debian's and NixOS's system bus (abridged): nobody owns or
/// is called without a policy file punching a hole.
const SYSTEM_DEFAULT: &str = r#"<policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>"#;

/// A private `dbus-daemon`, killed on drop.
struct PrivateBus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl PrivateBus {
    /// Starts a bus whose config holds `policies` (and `includes`, files).
    fn start(policies: &str, includes: &[&Path]) -> PrivateBus {
        let dir = tempfile::tempdir().unwrap();
        // Other users (the policy test's caller) must reach the socket.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let includes: String = includes
            .iter()
            .map(|p| format!("  <include>{}</include>\n", p.display()))
            .collect();
        let config = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}/bus</listen>
  <auth>EXTERNAL</auth>
  {policies}
{includes}</busconfig>
"#,
            dir.path().display()
        );
        let config_path = dir.path().join("bus.conf");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config_path.display()))
            .args(["--print-address", "--nofork"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon must be installed (Debian package dbus-daemon)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_owned();
        assert!(!address.is_empty(), "dbus-daemon printed no address");
        PrivateBus {
            child,
            address,
            _dir: dir,
        }
    }

    fn permissive() -> PrivateBus {
        PrivateBus::start(PERMISSIVE, &[])
    }

    fn bus(&self) -> Bus {
        Bus::Address(self.address.clone())
    }

    async fn client(&self) -> Connection {
        connection::Builder::address(self.address.as_str())
            .build()
            .await
            .unwrap()
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[zbus::proxy(
    interface = "io.github.sd_webui_supervisor.Supervisor1",
    default_service = "io.github.sd_webui_supervisor.Supervisor1",
    default_path = "/io/github/sd_webui_supervisor/Supervisor1"
)]
trait Supervisor1 {
    fn reload(&self) -> zbus::Result<()>;
    fn restart(&self, when: &str) -> zbus::Result<()>;
    fn status(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn queue_running(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn queue_pending(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn restart_pending(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn restart_reason(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn ui_pid(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn instances(&self) -> zbus::Result<Vec<(String, String, u32, u32, u32, bool)>>;
}

async fn proxy(conn: &Connection) -> Supervisor1Proxy<'static> {
    Supervisor1Proxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .unwrap()
}

/// The `<interface name="…Supervisor1">` element, without comments and with
/// whitespace between and inside tags normalised.
fn our_interface(xml: &str) -> String {
    let mut text = String::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<!--") {
        text.push_str(&rest[..start]);
        rest = rest[start..]
            .find("-->")
            .map_or("", |end| &rest[start + end + 3..]);
    }
    text.push_str(rest);
    let open = format!("<interface name=\"{INTERFACE}\">");
    let start = text
        .find(&open)
        .unwrap_or_else(|| panic!("no {open} in\n{xml}"));
    let end = start + text[start..].find("</interface>").unwrap() + "</interface>".len();
    let words: Vec<&str> = text[start..end].split_whitespace().collect();
    words.join(" ").replace("> <", "><").replace(" />", "/>")
}

#[tokio::test]
async fn introspection_matches_the_checked_in_xml() {
    let bus = PrivateBus::permissive();
    let core = FakeCore::new(ready_idle());
    let service = serve(core.handle.clone(), &bus.bus()).await.unwrap();
    let conn = bus.client().await;
    let xml = zbus::fdo::IntrospectableProxy::builder(&conn)
        .destination(BUS_NAME)
        .path(OBJECT_PATH)
        .build()
        .await
        .unwrap()
        .introspect()
        .await
        .unwrap();
    if std::env::var_os("PRINT_INTROSPECTION").is_some() {
        println!("{xml}");
    }
    assert_eq!(
        our_interface(&xml),
        our_interface(CHECKED_IN_XML),
        "the served interface differs from dbus/{INTERFACE}.xml; if the change is \
         intended, update that file (PRINT_INTROSPECTION=1 prints what is served)"
    );
    service.shutdown().await;
}

#[tokio::test]
async fn properties_come_from_the_snapshot() {
    let bus = PrivateBus::permissive();
    let core = FakeCore::new(busy_pending());
    let service = serve(core.handle.clone(), &bus.bus()).await.unwrap();
    let conn = bus.client().await;
    let p = proxy(&conn).await;
    assert_eq!(p.state().await.unwrap(), "ready");
    assert_eq!(p.queue_running().await.unwrap(), 1);
    assert_eq!(p.queue_pending().await.unwrap(), 3);
    assert!(p.restart_pending().await.unwrap());
    assert_eq!(
        p.restart_reason().await.unwrap(),
        "ui.extra_args, extensions"
    );
    assert_eq!(p.ui_pid().await.unwrap(), 4242);

    core.publish(|s| *s = starting());
    assert_eq!(p.state().await.unwrap(), "starting");
    assert_eq!(p.queue_running().await.unwrap(), 0);
    assert!(!p.restart_pending().await.unwrap());
    assert_eq!(p.restart_reason().await.unwrap(), "");
    assert_eq!(p.ui_pid().await.unwrap(), 0);
    service.shutdown().await;
}

#[tokio::test]
async fn instances_are_listed_one_each() {
    let bus = PrivateBus::permissive();
    let core = FakeCore::new(busy_pending());
    let service = serve(core.handle.clone(), &bus.bus()).await.unwrap();
    let conn = bus.client().await;
    let p = proxy(&conn).await;
    assert_eq!(
        p.instances().await.unwrap(),
        vec![],
        "none without [instances]"
    );
    let one = |name: &str, state: &str, pid: u32, draining: bool| {
        serde_json::from_value(serde_json::json!({
            "name": name, "port": 17000, "gpus": [0], "state": state,
            "status_line": state, "reason": null, "ui_pid": pid,
            "queue": {"running": 1, "pending": 2}, "restart_pending": null,
            "draining": draining, "restarts": 0, "crashes": 0,
            "last_time_to_ready_ms": null,
        }))
        .expect("an instance")
    };
    core.publish(|s| {
        s.instances = vec![
            one("gpu0", "ready", 11, true),
            one("gpu1", "starting", 12, false),
        ]
    });
    assert_eq!(
        p.instances().await.unwrap(),
        vec![
            ("gpu0".into(), "ready".into(), 1, 2, 11, true),
            ("gpu1".into(), "starting".into(), 1, 2, 12, false),
        ]
    );
    service.shutdown().await;
}

/// The next PropertiesChanged of our interface, as name → variant.
async fn next_change(
    stream: &mut zbus::fdo::PropertiesChangedStream,
) -> HashMap<String, zbus::OwnedVariant> {
    let signal = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a PropertiesChanged signal within 5 s")
        .expect("the stream is open");
    let args = signal.args().unwrap();
    assert_eq!(args.interface_name().as_str(), INTERFACE);
    args.changed_properties()
        .iter()
        .map(|(k, v)| (k.to_string(), v.try_to_owned().unwrap()))
        .collect()
}

#[tokio::test]
async fn snapshot_changes_emit_one_properties_changed_each() {
    let bus = PrivateBus::permissive();
    let core = FakeCore::new(ready_idle());
    let service = serve(core.handle.clone(), &bus.bus()).await.unwrap();
    let conn = bus.client().await;
    let props = zbus::fdo::PropertiesProxy::builder(&conn)
        .destination(BUS_NAME)
        .path(OBJECT_PATH)
        .build()
        .await
        .unwrap();
    let mut changes = props.receive_properties_changed().await.unwrap();

    // A job starts: only the queue changes.
    core.publish(|s| {
        s.queue = Some(Queue {
            running: 1,
            pending: 0,
        })
    });
    let change = next_change(&mut changes).await;
    assert_eq!(change.len(), 1, "{change:?}");
    assert_eq!(u32::try_from(&change["QueueRunning"]).unwrap(), 1);

    // A snapshot that changes nothing D-Bus shows emits nothing; the next real
    // change is the next signal.
    core.publish(|s| s.uptime_seconds += 10);
    core.publish(|s| {
        s.restart_pending = Some(PendingRestart {
            reasons: vec!["requested".into()],
            policy: sd_webui_supervisor::supervisor::protocol::RestartPolicy::WhenIdle,
            since_unix: 1,
            deadline_unix: None,
        });
        s.queue = Some(Queue {
            running: 1,
            pending: 2,
        });
    });
    let change = next_change(&mut changes).await;
    let mut names: Vec<&str> = change.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["QueuePending", "RestartPending", "RestartReason"]);
    assert!(bool::try_from(&change["RestartPending"]).unwrap());
    assert_eq!(
        <&str>::try_from(&change["RestartReason"]).unwrap(),
        "requested"
    );

    // The UI goes away.
    core.publish(|s| {
        *s = Snapshot {
            restart_pending: None,
            ..starting()
        }
    });
    let change = next_change(&mut changes).await;
    assert_eq!(<&str>::try_from(&change["State"]).unwrap(), "starting");
    assert_eq!(u32::try_from(&change["UiPid"]).unwrap(), 0);
    assert_eq!(u32::try_from(&change["QueueRunning"]).unwrap(), 0);
    service.shutdown().await;
}

/// The D-Bus error name and message of a failed call (zbus turns the standard
/// errors into `Error::FDO`, others into `Error::MethodError`).
fn error_of(result: zbus::Result<()>) -> (String, String) {
    use zbus::DBusError;
    match result {
        Err(zbus::Error::MethodError(name, description, _)) => {
            (name.to_string(), description.unwrap_or_default())
        }
        Err(zbus::Error::FDO(e)) => (
            e.name().to_string(),
            e.description().unwrap_or_default().to_owned(),
        ),
        other => panic!("expected a D-Bus error reply, got {other:?}"),
    }
}

#[tokio::test]
async fn methods_forward_to_the_core_and_map_errors() {
    let bus = PrivateBus::permissive();
    let core = FakeCore::new(busy_pending());
    let service = serve(core.handle.clone(), &bus.bus()).await.unwrap();
    let conn = bus.client().await;
    let p = proxy(&conn).await;

    let status: Snapshot = serde_json::from_str(&p.status().await.unwrap()).unwrap();
    assert_eq!(status, busy_pending());

    core.set_reload(outcome("applied"));
    p.reload().await.unwrap();
    core.set_reload(outcome("rejected"));
    let (name, description) = error_of(p.reload().await);
    assert_eq!(name, ERROR_RELOAD_REJECTED);
    for e in &outcome("rejected").errors {
        assert!(description.contains(e.as_str()), "{description}");
    }

    p.restart("idle").await.unwrap();
    p.restart("now").await.unwrap();
    let (name, description) = error_of(p.restart("whenever").await);
    assert_eq!(name, "org.freedesktop.DBus.Error.InvalidArgs");
    assert!(description.contains("whenever"), "{description}");
    assert_eq!(
        core.seen(),
        ["reload", "reload", "restart idle", "restart now"]
    );

    let handle = core.stop();
    tokio::task::yield_now().await;
    let (name, description) = error_of(p.restart("now").await);
    assert_eq!(name, "org.freedesktop.DBus.Error.Failed");
    assert!(description.contains("stopped"), "{description}");
    drop(handle);
    service.shutdown().await;
}

#[tokio::test]
async fn a_second_supervisor_cannot_take_the_name() {
    let bus = PrivateBus::permissive();
    let first = FakeCore::new(ready_idle());
    let service = serve(first.handle.clone(), &bus.bus()).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = ControlConfig {
        socket: dir.path().join("control.sock"),
        dbus: DbusBus::Session,
        http_listen: None,
        token_file: None,
        max_connections: 128,
    };
    let second = FakeCore::new(busy_pending());
    let err = control::start_with_bus(second.handle.clone(), &config, Some(bus.bus()))
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::Dbus { .. }), "{err:?}");
    assert!(err.to_string().contains(BUS_NAME), "{err}");
    assert!(
        !config.socket.exists(),
        "a failed start left its socket behind"
    );

    // The first one still answers.
    let conn = bus.client().await;
    assert_eq!(proxy(&conn).await.state().await.unwrap(), "ready");
    service.shutdown().await;
}

#[tokio::test]
async fn control_start_serves_http_and_dbus_together() {
    let bus = PrivateBus::permissive();
    let core = FakeCore::new(busy_pending());
    let dir = tempfile::tempdir().unwrap();
    let config = ControlConfig {
        socket: dir.path().join("control.sock"),
        dbus: DbusBus::Session,
        http_listen: None,
        token_file: None,
        max_connections: 128,
    };
    let control = control::start_with_bus(core.handle.clone(), &config, Some(bus.bus()))
        .await
        .unwrap();
    let conn = bus.client().await;
    let p = proxy(&conn).await;
    let over_dbus: serde_json::Value = serde_json::from_str(&p.status().await.unwrap()).unwrap();
    let over_http = sd_webui_supervisor::control::client::Client::new(&config.socket)
        .status_json()
        .await
        .unwrap();
    assert_eq!(over_dbus, over_http);
    control.shutdown().await;
    // The name is free again for a successor.
    let again = serve(core.handle.clone(), &bus.bus()).await.unwrap();
    again.shutdown().await;
}

mod policy {
    use super::*;

    fn policy_file(dir: &Path, text: &str) -> std::path::PathBuf {
        let path = dir.join("policy.conf");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[tokio::test]
    async fn the_shipped_policy_lets_only_the_service_user_own_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let bus = PrivateBus::start(SYSTEM_DEFAULT, &[&policy_file(dir.path(), SHIPPED_POLICY)]);
        // We are not sd-webui-forge (root or a developer), so owning is denied.
        let core = FakeCore::new(ready_idle());
        let err = serve(core.handle.clone(), &bus.bus()).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("AccessDenied") || text.contains("not allowed"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_shipped_policy_lets_root_call_and_denies_others() {
        if !is_root() {
            crate::support::skip("needs root to act as the owner and as another user");
            return;
        }
        // The same policy with root as the owning user, so this test can own the name.
        let as_root = SHIPPED_POLICY.replace(
            r#"<policy user="sd-webui-forge">"#,
            r#"<policy user="root">"#,
        );
        assert_ne!(as_root, SHIPPED_POLICY);
        check_callers(&as_root, false).await;
    }

    #[tokio::test]
    async fn the_shipped_policy_lets_the_service_group_call() {
        if !is_root() {
            crate::support::skip("needs root to act as the owner and as another user");
            return;
        }
        // Root owns the name, and nobody's group stands in for the service group.
        let policy = SHIPPED_POLICY
            .replace(
                r#"<policy user="sd-webui-forge">"#,
                r#"<policy user="root">"#,
            )
            .replace(
                r#"<policy group="sd-webui-forge">"#,
                r#"<policy group="nogroup">"#,
            );
        check_callers(&policy, true).await;
    }

    /// Serves under `policy` as root, calls as root (allowed) and as nobody
    /// (allowed only when `nobody_allowed`).
    async fn check_callers(policy: &str, nobody_allowed: bool) {
        let dir = tempfile::tempdir().unwrap();
        let bus = PrivateBus::start(SYSTEM_DEFAULT, &[&policy_file(dir.path(), policy)]);
        let core = FakeCore::new(busy_pending());
        let service = serve(core.handle.clone(), &bus.bus()).await.unwrap();

        let conn = bus.client().await;
        assert_eq!(proxy(&conn).await.state().await.unwrap(), "ready");
        proxy(&conn).await.restart("idle").await.unwrap();

        // nobody is neither root nor in the service group.
        let address = bus.address.clone();
        let call_as_nobody = move |dest: &str, path: &str, method: &str| {
            let mut cmd = Command::new("dbus-send");
            cmd.arg(format!("--bus={address}")).args([
                "--print-reply",
                &format!("--dest={dest}"),
                path,
                method,
            ]);
            std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
            std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
            cmd.output().unwrap()
        };
        let (reached, as_nobody) = tokio::task::spawn_blocking(move || {
            let bus_itself = call_as_nobody(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.GetId",
            );
            let ours = call_as_nobody(BUS_NAME, OBJECT_PATH, &format!("{INTERFACE}.Status"));
            (bus_itself, ours)
        })
        .await
        .unwrap();
        // nobody reaches the bus, so the denial below is the policy's doing.
        assert!(reached.status.success(), "{reached:?}");
        if nobody_allowed {
            assert!(as_nobody.status.success(), "{as_nobody:?}");
        } else {
            assert!(!as_nobody.status.success());
            let stderr = String::from_utf8_lossy(&as_nobody.stderr);
            assert!(stderr.contains("AccessDenied"), "{stderr}");
        }
        assert_eq!(core.seen(), ["restart idle"]);
        service.shutdown().await;
    }
}
