//! Tells the daemon when the config file's *content* changed (docs/design.md#reload-and-restart).
//!
//! NixOS activation swaps `/etc/static` while the config path itself never
//! changes, and editors rename a new file over the old one, so watching the file
//! is not enough: every directory along its symlink chain is watched
//! (non-recursively), and the chain is resolved and the watches re-registered
//! after every burst of events. A burst ends after a short quiet period; then the
//! file is read and compared with the content last seen, so a touch, a swap to
//! identical content, or the daemon's own reload fires nothing. Content that does
//! not parse is likely a write caught half-way, so it must stay quiet much longer
//! before it is announced (and rejected by the reload, with the error shown).
//!
//! notify calls back on its own thread; the callback only forwards into a tokio
//! task, which does the debounce, the re-registration and the comparison, so the
//! daemon's current-thread runtime sees a plain channel.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::chain::{self, Chain};
use crate::config::Config;

/// When a burst of events is over and the file is worth announcing.
#[derive(Debug, Clone, Copy)]
pub struct Debounce {
    /// Quiet period that ends a burst: an editor's or activation's several steps
    /// come within microseconds of each other, and this is the floor of the
    /// write → reload latency.
    pub quiet: Duration,
    /// Quiet period for content `check` finds incomplete: a half-written file must
    /// not be reported as a broken config while its writer is still busy.
    pub incomplete: Duration,
    /// Whether content looks finished; for the daemon: it parses as a config,
    /// and the parse travels with the content so the core does not parse again.
    pub check: fn(&Path, &[u8]) -> Check,
}

/// What [`Debounce::check`] says of some content.
#[derive(Debug)]
pub enum Check {
    /// Finished; with the config it parsed to, when the check parsed it.
    Complete(Option<Box<Config>>),
    /// Likely a write caught half-way: announced only after the long quiet.
    Incomplete,
}

/// A change of the file's content, as announced.
#[derive(Debug)]
pub struct Change {
    /// The file's new content.
    pub bytes: Vec<u8>,
    /// Its parse, when [`Debounce::check`] made one (a config that does not
    /// parse carries none: the reload parses it again to say why).
    pub config: Option<Box<Config>>,
}

/// The announcements: only the latest counts, so a reader that was busy gets
/// the newest content, never a stale one.
#[derive(Debug)]
pub struct Changes(watch::Receiver<Option<Arc<Change>>>);

impl Changes {
    /// The next change; `None` once the watcher stopped.
    pub async fn recv(&mut self) -> Option<Arc<Change>> {
        loop {
            self.0.changed().await.ok()?;
            if let Some(change) = self.0.borrow_and_update().clone() {
                return Some(change);
            }
        }
    }
}

impl Debounce {
    /// One quiet period for every content.
    pub fn fixed(quiet: Duration) -> Debounce {
        Debounce {
            quiet,
            incomplete: quiet,
            check: |_, _| Check::Complete(None),
        }
    }
}

impl Default for Debounce {
    /// The daemon's: 20 ms for a config that parses, 500 ms for one that does not.
    fn default() -> Debounce {
        Debounce {
            quiet: Duration::from_millis(20),
            incomplete: Duration::from_millis(500),
            check: |path, bytes| match Config::from_bytes(path, bytes) {
                Ok(config) => Check::Complete(Some(Box::new(config))),
                Err(_) => Check::Incomplete,
            },
        }
    }
}

/// How soon a watch that could not be registered is tried again; until then
/// the file is effectively polled at this period.
const RETRY: Duration = Duration::from_secs(1);

/// Resolve-and-register rounds before accepting a chain that keeps changing.
const SETTLE_ROUNDS: usize = 4;

/// Why the watcher could not start (or, later, could not watch everything).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The watcher's task runs on the daemon's tokio runtime.
    #[error("the config watcher must be started inside a tokio runtime")]
    NoRuntime,
    /// A relative path is made absolute against the working directory.
    #[error("cannot make {path} absolute: {source}")]
    Path {
        /// The path as given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// No inotify instance (e.g. `fs.inotify.max_user_instances` reached).
    #[error("cannot start watching files: {0}")]
    Start(#[source] notify::Error),
    /// A directory of the chain could not be watched (limits, permissions).
    #[error("cannot watch {dir}: {source}")]
    Watch {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: notify::Error,
    },
    /// Links along the path kept changing while they were being watched.
    #[error("the symlink chain of {0} kept changing while being watched")]
    Unsettled(PathBuf),
}

/// Watches one config file; dropping it stops watching and closes the channel.
pub struct ConfigWatcher {
    /// The content last seen or set, shared with the task.
    current: Arc<Mutex<Vec<u8>>>,
    task: AbortHandle,
}

impl ConfigWatcher {
    /// Starts watching `path`, whose content the daemon loaded as `initial`; the
    /// receiver gets one `()` per burst that leaves different content. If the file
    /// already differs from `initial`, a notification is waiting at once.
    ///
    /// Must be called inside a tokio runtime (it spawns the watcher's task). Fails
    /// only when the watches cannot be set up at all; a missing file is fine.
    pub fn start(
        path: &Path,
        initial: &[u8],
        debounce: Debounce,
    ) -> Result<(ConfigWatcher, Changes), WatchError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| WatchError::NoRuntime)?;
        let path = std::path::absolute(path).map_err(|source| WatchError::Path {
            path: path.to_path_buf(),
            source,
        })?;
        let (raw_tx, raw_rx) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |ev| {
            // Fails only once the task is gone, when nobody listens anyway.
            let _ = raw_tx.send(ev);
        })
        .map_err(WatchError::Start)?;
        let mut tracker = Tracker {
            path,
            watcher,
            watched: BTreeMap::new(),
            chain: Chain::default(),
        };
        tracker.refresh()?;
        let current = Arc::new(Mutex::new(initial.to_vec()));
        let (tx, rx) = watch::channel(None);
        compare(&tracker.path, &current, &tx, debounce.check);
        let task = runtime.spawn(run(tracker, raw_rx, tx, Arc::clone(&current), debounce));
        Ok((
            ConfigWatcher {
                current,
                task: task.abort_handle(),
            },
            Changes(rx),
        ))
    }

    /// Records content the daemon (re)loaded itself (e.g. on SIGHUP), so that the
    /// watcher does not announce the same content a second time.
    pub fn set_current(&self, content: &[u8]) {
        let mut current = lock(&self.current);
        if *current != content {
            *current = content.to_vec();
        }
    }
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The shared content; a panic elsewhere cannot leave a half-written `Vec`.
fn lock(current: &Mutex<Vec<u8>>) -> MutexGuard<'_, Vec<u8>> {
    current
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What reading the file found.
enum Read {
    /// The content last seen (or the file is unreadable mid-swap: the next event
    /// brings it back).
    Same,
    /// New content, not yet recorded.
    Changed(Vec<u8>),
}

fn read(path: &Path, current: &Mutex<Vec<u8>>) -> Read {
    match fs::read(path) {
        Ok(bytes) if *lock(current) != bytes => Read::Changed(bytes),
        Ok(_) => Read::Same,
        Err(e) => {
            tracing::debug!(path = %path.display(), "config file unreadable for now: {e}");
            Read::Same
        }
    }
}

/// Records `bytes` as current and tells the daemon. Returns false once the
/// receiver is gone.
fn announce(
    bytes: Vec<u8>,
    config: Option<Box<Config>>,
    current: &Mutex<Vec<u8>>,
    tx: &Sender,
) -> bool {
    lock(current).clone_from(&bytes);
    tx.send(Some(Arc::new(Change { bytes, config }))).is_ok()
}

type Sender = watch::Sender<Option<Arc<Change>>>;

/// Reads the file and announces it when it differs from the current content.
/// Returns false once the receiver is gone.
fn compare(
    path: &Path,
    current: &Mutex<Vec<u8>>,
    tx: &Sender,
    check: fn(&Path, &[u8]) -> Check,
) -> bool {
    match read(path, current) {
        Read::Changed(bytes) => {
            let config = match check(path, &bytes) {
                Check::Complete(config) => config,
                Check::Incomplete => None,
            };
            announce(bytes, config, current, tx)
        }
        Read::Same => !tx.is_closed(),
    }
}

/// The debounce loop: wait for a relevant event, let the burst end, re-register,
/// compare; new content that is not complete waits for a longer quiet.
async fn run(
    mut tracker: Tracker,
    mut raw: mpsc::UnboundedReceiver<notify::Result<Event>>,
    tx: Sender,
    current: Arc<Mutex<Vec<u8>>>,
    debounce: Debounce,
) {
    let mut retry_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            ev = raw.recv() => match ev {
                None => return,
                Some(ev) if !relevant(&tracker.chain, &ev) => continue,
                Some(_) => {}
            },
            _ = sleep_until(retry_at), if retry_at.is_some() => {}
        }
        let first = Instant::now();
        // Whether the content read last did not look complete, so the wait now
        // is the long one.
        let mut incomplete = false;
        loop {
            let wait = if incomplete {
                Wait::Long(debounce.incomplete)
            } else {
                Wait::Short(debounce.quiet)
            };
            match quiet_for(&tracker.chain, &mut raw, wait).await {
                Quiet::Closed => return,
                // The writer is back: the content is about to change again.
                Quiet::Interrupted => {
                    incomplete = false;
                    continue;
                }
                Quiet::Elapsed => {}
            }
            retry_at = match tracker.refresh() {
                Ok(()) => None,
                Err(e) => {
                    tracing::warn!("config watch incomplete, retrying in {RETRY:?}: {e}");
                    Some(Instant::now() + RETRY)
                }
            };
            let bytes = match read(&tracker.path, &current) {
                Read::Same => break,
                Read::Changed(bytes) => bytes,
            };
            let config = match (debounce.check)(&tracker.path, &bytes) {
                Check::Complete(config) => config,
                Check::Incomplete if !incomplete => {
                    incomplete = true;
                    continue;
                }
                Check::Incomplete => None,
            };
            tracing::debug!(after = ?first.elapsed(), "config file content changed");
            if !announce(bytes, config, &current, &tx) {
                return;
            }
            break;
        }
    }
}

/// A quiet period to wait for.
enum Wait {
    /// The end of a burst: every relevant event starts it anew.
    Short(Duration),
    /// After incomplete content: a relevant event ends it (the writer is back).
    Long(Duration),
}

/// How a quiet period ended.
enum Quiet {
    /// No relevant event for the whole period.
    Elapsed,
    /// A relevant event came during a [`Wait::Long`].
    Interrupted,
    /// The events' channel closed.
    Closed,
}

/// Waits until no relevant event came for the period of `wait`.
async fn quiet_for(
    chain: &Chain,
    raw: &mut mpsc::UnboundedReceiver<notify::Result<Event>>,
    wait: Wait,
) -> Quiet {
    let (period, restarts) = match wait {
        Wait::Short(period) => (period, true),
        Wait::Long(period) => (period, false),
    };
    let mut quiet_at = Instant::now() + period;
    loop {
        match tokio::time::timeout_at(quiet_at, raw.recv()).await {
            Err(_) => return Quiet::Elapsed,
            Ok(None) => return Quiet::Closed,
            Ok(Some(ev)) if relevant(chain, &ev) => {
                if !restarts {
                    return Quiet::Interrupted;
                }
                quiet_at = Instant::now() + period;
            }
            Ok(Some(_)) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Whether an event can change the file's content or its chain. Our own reads
/// (open, close without writing) are not: counting them would re-read forever.
/// Errors and rescans are.
fn relevant(chain: &Chain, ev: &notify::Result<Event>) -> bool {
    let Ok(ev) = ev else { return true };
    if let EventKind::Access(kind) = ev.kind
        && kind != AccessKind::Close(AccessMode::Write)
    {
        return false;
    }
    ev.need_rescan() || ev.paths.is_empty() || ev.paths.iter().any(|p| chain.concerns(p))
}

/// The notify watcher and what it currently watches.
struct Tracker {
    path: PathBuf,
    watcher: RecommendedWatcher,
    /// Watched directories with their (device, inode): a directory replaced under
    /// the same name needs a new watch.
    watched: BTreeMap<PathBuf, (u64, u64)>,
    chain: Chain,
}

impl Tracker {
    /// Resolves the chain and watches its directories, until resolving again gives
    /// the same chain: then nothing moved while the watches were being set up, and
    /// any later change produces an event.
    fn refresh(&mut self) -> Result<(), WatchError> {
        let mut chain = chain::resolve(&self.path);
        for _ in 0..SETTLE_ROUNDS {
            let failed = self.sync(&chain);
            let again = chain::resolve(&self.path);
            if again == chain {
                self.chain = chain;
                return failed.map_or(Ok(()), Err);
            }
            chain = again;
        }
        self.chain = chain;
        Err(WatchError::Unsettled(self.path.clone()))
    }

    /// Watches exactly the chain's directories; returns the first failure.
    fn sync(&mut self, chain: &Chain) -> Option<WatchError> {
        let stale: Vec<PathBuf> = self
            .watched
            .keys()
            .filter(|d| !chain.dirs.contains(*d))
            .cloned()
            .collect();
        for dir in stale {
            // Fails when the directory is gone, which removed the watch already.
            let _ = self.watcher.unwatch(&dir);
            self.watched.remove(&dir);
        }
        let mut failed = None;
        for dir in &chain.dirs {
            let id = match fs::metadata(dir) {
                Ok(m) => (m.dev(), m.ino()),
                Err(e) => {
                    failed.get_or_insert(WatchError::Watch {
                        dir: dir.clone(),
                        source: notify::Error::io(e),
                    });
                    continue;
                }
            };
            if self.watched.get(dir).is_some_and(|old| *old != id) {
                let _ = self.watcher.unwatch(dir);
            }
            // Registering again is harmless and restores a watch notify dropped
            // when the directory was moved away and back.
            match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir.clone(), id);
                }
                Err(source) => {
                    self.watched.remove(dir);
                    failed.get_or_insert(WatchError::Watch {
                        dir: dir.clone(),
                        source,
                    });
                }
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, Flag, ModifyKind};

    use super::*;

    #[test]
    fn own_reads_and_unrelated_names_are_not_relevant() {
        let file = PathBuf::from("/etc/x/config.toml");
        let chain = Chain {
            dirs: [PathBuf::from("/etc/x")].into(),
            names: [file.clone()].into(),
            target: Some(file.clone()),
        };
        let on = |kind, path: &str| Ok(Event::new(kind).add_path(PathBuf::from(path)));
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        let written = EventKind::Access(AccessKind::Close(AccessMode::Write));
        let created = EventKind::Create(CreateKind::File);
        let data = EventKind::Modify(ModifyKind::Any);
        assert!(!relevant(&chain, &on(open, "/etc/x/config.toml")));
        assert!(!relevant(&chain, &on(read, "/etc/x/config.toml")));
        assert!(relevant(&chain, &on(written, "/etc/x/config.toml")));
        assert!(relevant(&chain, &on(data, "/etc/x/config.toml")));
        assert!(!relevant(&chain, &on(created, "/etc/x/other.toml")));
        assert!(relevant(&chain, &on(created, "/etc/x")));
        let rescan = Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan));
        assert!(relevant(&chain, &rescan));
        assert!(relevant(
            &chain,
            &Err(notify::Error::generic("queue overflow"))
        ));
    }
}
