//! Who listens on the UI's port, read from `/proc` (`/proc/net/tcp{,6}` gives the
//! listening socket's inode, `/proc/PID/fd` links name it `socket:[INODE]`).
//!
//! Two uses: before a launch, a port held by another program means our UI would
//! fail to bind (or, worse, the probes would talk to that program), so the
//! supervisor waits and says who holds it; and while the UI starts, an answer on
//! the port proves readiness only when the listening socket belongs to a process of
//! *our* UI's group — never `READY=1` for a foreign listener.

use std::collections::HashSet;
use std::fs;

/// The TCP state number of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// A process that holds a listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its pid.
    pub pid: i32,
    /// Its `comm` name.
    pub name: String,
    /// Its process group.
    pub pgid: i32,
}

/// Inodes of the sockets listening on `port` (any address, IPv4 and IPv6).
pub fn listening_inodes(port: u16) -> HashSet<u64> {
    let mut found = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(table) {
            found.extend(parse_listeners(&text, port));
        }
    }
    found
}

/// Listening-socket inodes on `port` in one `/proc/net/tcp{,6}` table.
pub fn parse_listeners(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local = f.get(1)?;
            let state = f.get(3)?;
            let inode = f.get(9)?.parse::<u64>().ok()?;
            let hex_port = local.rsplit_once(':')?.1;
            let p = u16::from_str_radix(hex_port, 16).ok()?;
            (p == port && *state == TCP_LISTEN && inode != 0).then_some(inode)
        })
        .collect()
}

/// The processes that hold any of `inodes` open (as far as this process may look).
pub fn holders(inodes: &HashSet<u64>) -> Vec<Holder> {
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if holds_any(pid, inodes) {
            let name = fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim_end().to_string())
                .unwrap_or_default();
            out.push(Holder {
                pid,
                name,
                pgid: pgid_of(pid).unwrap_or(0),
            });
        }
    }
    out
}

/// Whether process `pid` has one of `inodes` among its open files.
fn holds_any(pid: i32, inodes: &HashSet<u64>) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).ok().is_some_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| inodes.contains(&n))
        })
    })
}

/// The process group of `pid`, from `/proc/PID/stat`.
fn pgid_of(pid: i32) -> Option<i32> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.get(text.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Who holds `port`, if anyone listens on it: `None` when the port is free.
/// The holders may be empty when the listener belongs to a process we cannot see.
pub fn held_by(port: u16) -> Option<Vec<Holder>> {
    let inodes = listening_inodes(port);
    (!inodes.is_empty()).then(|| holders(&inodes))
}

/// The status reason for a port someone else holds:
/// `port 7860 is held by another process (pid 123, python3)`.
pub fn held_message(port: u16, holders: &[Holder]) -> String {
    match holders {
        [] => format!("port {port} is held by another process"),
        [h, ..] => format!(
            "port {port} is held by another process (pid {}, {})",
            h.pid, h.name
        ),
    }
}

/// Whether a socket listening on `port` belongs to a process of group `pgid`
/// (our UI): the proof that the answers on the port come from our UI.
pub fn listened_by_group(port: u16, pgid: i32) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    // Only the group's members need looking at.
    let Ok(procs) = fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|entry| {
        entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
            .is_some_and(|pid| pgid_of(pid) == Some(pgid) && holds_any(pid, &inodes))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1EB4 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1EB4 0100007F:D2A0 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn only_listening_sockets_on_the_port_count() {
        assert_eq!(parse_listeners(TABLE, 7860), vec![4242]);
        assert_eq!(parse_listeners(TABLE, 8080), vec![4444]);
        assert!(parse_listeners(TABLE, 1).is_empty());
    }

    #[test]
    fn a_listener_of_this_process_is_found_with_its_name() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let held = held_by(port).expect("held");
        let me = std::process::id() as i32;
        assert!(held.iter().any(|h| h.pid == me), "{held:?}");
        assert!(
            held_message(port, &held)
                .starts_with(&format!("port {port} is held by another process (pid "))
        );
        let my_group = pgid_of(me).unwrap();
        assert!(listened_by_group(port, my_group));
        assert!(!listened_by_group(port, my_group + 1_000_000));
        drop(l);
        assert!(held_by(port).is_none());
    }
}
