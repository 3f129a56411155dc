//! Which instance a request goes to (docs/instances.md, "Routing"): pure, so
//! the rules are tested without a UI, and cheap, as it runs per request.
//!
//! The door keeps a [`Table`] per snapshot of the core (each instance's state
//! and last queue reading) and adds what it has sent since ([`Table::sent`]);
//! [`Table::pick`] applies the rules in order: the prompt's own instance for a
//! ComfyUI follow-up, the least busy ready instance for generation work, the
//! session's instance (cookie) for the rest.

use std::collections::{HashMap, VecDeque};

use hyper::Method;

use super::gate::Gate;
use crate::supervisor::protocol::{Phase, Snapshot};

/// The session cookie that keeps a browser on one instance.
pub const COOKIE: &str = "sdws_instance";
/// How many ComfyUI prompt ids the door remembers the instance of.
pub const PROMPTS_KEPT: usize = 10_000;

/// What kind of request this is, for routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// A new generation: least busy instance.
    Work,
    /// About one ComfyUI prompt: the instance that took it.
    Prompt(String),
    /// Anything else: the session's instance.
    Session,
}

/// Sorts a request by method and path (query included for `/view`, not
/// needed here).
pub fn classify(method: &Method, path: &str) -> Class {
    let path = path.split('?').next().unwrap_or(path);
    let path = path.strip_prefix("/api").unwrap_or(path);
    if method == Method::POST
        && matches!(path, "/prompt" | "/sdapi/v1/txt2img" | "/sdapi/v1/img2img")
    {
        return Class::Work;
    }
    if method == Method::GET
        && let Some(id) = path.strip_prefix("/history/")
        && !id.is_empty()
        && !id.contains('/')
    {
        return Class::Prompt(id.to_string());
    }
    Class::Session
}

/// One instance as the door sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seat {
    /// Its name (the cookie's value).
    pub name: String,
    /// Its private port.
    pub port: u16,
    /// Ready to take requests.
    pub ready: bool,
    /// Draining for a restart: no new work, sessions move.
    pub draining: bool,
    /// Running + queued at the core's last reading.
    pub jobs: u32,
}

/// The instances and what the door sent each since the core's last reading.
#[derive(Debug, Default)]
pub struct Table {
    seats: Vec<Seat>,
    /// Generation requests sent per seat since its reading was taken.
    sent: Vec<u32>,
    prompts: Prompts,
}

/// The answer of [`Table::pick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// Index of the instance.
    pub index: usize,
    /// Whether the session cookie must be (re)set to this instance.
    pub set_cookie: bool,
}

impl Table {
    /// Takes a new view of the instances (a new snapshot). A seat whose
    /// reading changed forgets what was sent to it: the reading counts it now.
    pub fn update(&mut self, seats: Vec<Seat>) {
        let sent = seats
            .iter()
            .map(|s| {
                let old = self.seats.iter().position(|o| o.name == s.name);
                match old {
                    Some(i) if self.seats[i].jobs == s.jobs => self.sent[i],
                    _ => 0,
                }
            })
            .collect();
        self.seats = seats;
        self.sent = sent;
    }

    /// The instances as last updated.
    pub fn seats(&self) -> &[Seat] {
        &self.seats
    }

    /// Counts a generation request sent to `index`.
    pub fn sent(&mut self, index: usize) {
        if let Some(n) = self.sent.get_mut(index) {
            *n = n.saturating_add(1);
        }
    }

    /// Remembers that `prompt_id` was taken by `index`.
    pub fn took_prompt(&mut self, prompt_id: String, index: usize) {
        if let Some(seat) = self.seats.get(index) {
            self.prompts.insert(prompt_id, seat.name.clone());
        }
    }

    /// Where a request of `class` from a session whose cookie names
    /// `session` goes; `None` when no instance is ready (the door holds it).
    pub fn pick(&self, class: &Class, session: Option<&str>) -> Option<Pick> {
        let usable = |i: usize| self.seats.get(i).is_some_and(|s| s.ready);
        let serving = |i: usize| usable(i) && !self.seats[i].draining;
        let by_name = |name: &str| self.seats.iter().position(|s| s.name == name);
        let cookie = session.and_then(by_name);
        let index = match class {
            // A browser's prompt stays with its session: its websocket,
            // which shows the progress and takes the result, is there.
            // Clients without a session are spread.
            Class::Work => cookie.filter(|i| serving(*i)).or_else(|| self.least_busy()),
            Class::Prompt(id) => self
                .prompts
                .get(id)
                .and_then(by_name)
                .filter(|i| usable(*i))
                .or_else(|| cookie.filter(|i| serving(*i)))
                .or_else(|| self.least_busy()),
            Class::Session => cookie.filter(|i| serving(*i)).or_else(|| self.least_busy()),
        }?;
        Some(Pick {
            index,
            set_cookie: cookie != Some(index),
        })
    }

    /// The ready instance with the fewest jobs, not draining when another one
    /// is serving; ties go to the lowest index.
    fn least_busy(&self) -> Option<usize> {
        let load = |i: usize| self.seats[i].jobs.saturating_add(self.sent[i]);
        let best = |draining: bool| {
            (0..self.seats.len())
                .filter(|i| self.seats[*i].ready && self.seats[*i].draining == draining)
                .min_by_key(|i| (load(*i), *i))
        };
        best(false).or_else(|| best(true))
    }
}

/// The last [`PROMPTS_KEPT`] prompt ids and their instance.
#[derive(Debug, Default)]
struct Prompts {
    by_id: HashMap<String, String>,
    order: VecDeque<String>,
}

impl Prompts {
    fn insert(&mut self, id: String, instance: String) {
        if self.by_id.insert(id.clone(), instance).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > PROMPTS_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
    }

    fn get(&self, id: &str) -> Option<&str> {
        self.by_id.get(id).map(String::as_str)
    }
}

/// The instance a request's `Cookie` header names, if any.
pub fn session_of(cookie_header: Option<&str>) -> Option<&str> {
    cookie_header?
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
}

/// The `Set-Cookie` value that keeps a session on `name`.
pub fn set_cookie(name: &str) -> String {
    format!("{COOKIE}={name}; Path=/; HttpOnly; SameSite=Lax")
}

/// Whether instance `i` of the core's snapshot takes requests.
pub fn serves(s: &Snapshot, i: usize) -> bool {
    s.instances.get(i).is_some_and(|x| x.state == Phase::Ready)
}

/// The instances of the core's snapshot, as the door routes by them; those
/// in `skip` (a file one did not have) are passed over.
pub fn seats(s: &Snapshot, skip: &[usize]) -> Vec<Seat> {
    s.instances
        .iter()
        .enumerate()
        .map(|(i, x)| Seat {
            name: x.name.clone(),
            port: x.port,
            ready: x.state == Phase::Ready && !skip.contains(&i),
            draining: x.draining,
            jobs: x.queue.map_or(0, |q| q.running.saturating_add(q.pending)),
        })
        .collect()
}

/// Whether an instance other than `tried` and those in `skip` serves: a
/// file one did not have may be asked of it.
pub fn another_serves(s: &Snapshot, tried: usize, skip: &[usize]) -> bool {
    (0..s.instances.len()).any(|i| i != tried && !skip.contains(&i) && serves(s, i))
}

/// The gate when no instance can take a request: failed when every one
/// has, else closed (held), expecting the slowest last start.
pub fn none_open(s: &Snapshot) -> Gate {
    if !s.instances.is_empty() && s.instances.iter().all(|x| x.state == Phase::Failed) {
        return Gate::Failed {
            status: s.status_line.clone(),
        };
    }
    Gate::Closed {
        status: s.status_line.clone(),
        expected: s
            .instances
            .iter()
            .filter_map(|x| x.last_time_to_ready_ms)
            .max()
            .map(std::time::Duration::from_millis),
    }
}

/// Whether a request for `path` may be tried at another instance when one
/// answers 404: a ComfyUI output (`/view`), which lives in the folder of the
/// instance that made it.
pub fn follows_file(method: &Method, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    method == Method::GET && matches!(path, "/view" | "/api/view")
}

/// The `prompt_id` of ComfyUI's answer to a `/prompt`.
pub fn prompt_id(answer: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(answer).ok()?;
    let id = v.get("prompt_id")?.as_str()?;
    (!id.is_empty() && id.len() <= 128).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat(name: &str, ready: bool, draining: bool, jobs: u32) -> Seat {
        Seat {
            name: name.into(),
            port: 1,
            ready,
            draining,
            jobs,
        }
    }

    fn table(seats: Vec<Seat>) -> Table {
        let mut t = Table::default();
        t.update(seats);
        t
    }

    #[test]
    fn work_goes_to_the_least_busy_and_spreads_evenly() {
        let mut t = table(vec![seat("a", true, false, 0), seat("b", true, false, 0)]);
        let mut count = [0u32; 2];
        for _ in 0..20 {
            let p = t.pick(&Class::Work, None).expect("a ready instance");
            count[p.index] += 1;
            t.sent(p.index);
        }
        assert_eq!(count, [10, 10]);
        let t = table(vec![seat("a", true, false, 3), seat("b", true, false, 1)]);
        assert_eq!(t.pick(&Class::Work, None).map(|p| p.index), Some(1));
    }

    #[test]
    fn a_new_reading_replaces_what_was_counted_as_sent() {
        let mut t = table(vec![seat("a", true, false, 0), seat("b", true, false, 0)]);
        t.sent(0);
        t.sent(0);
        assert_eq!(t.pick(&Class::Work, None).map(|p| p.index), Some(1));
        // The core now reads a's two jobs: they are not counted twice.
        t.update(vec![seat("a", true, false, 2), seat("b", true, false, 1)]);
        assert_eq!(t.pick(&Class::Work, None).map(|p| p.index), Some(1));
        t.update(vec![seat("a", true, false, 1), seat("b", true, false, 3)]);
        assert_eq!(t.pick(&Class::Work, None).map(|p| p.index), Some(0));
    }

    #[test]
    fn a_sessions_work_stays_with_it_while_it_serves() {
        let mut t = Table::default();
        t.update(vec![seat("a", true, false, 5), seat("b", true, false, 0)]);
        assert_eq!(t.pick(&Class::Work, Some("a")).map(|p| p.index), Some(0));
        t.update(vec![seat("a", true, true, 5), seat("b", true, false, 0)]);
        assert_eq!(
            t.pick(&Class::Work, Some("a")).map(|p| p.index),
            Some(1),
            "draining: elsewhere"
        );
    }

    #[test]
    fn draining_and_down_instances_get_no_new_work() {
        let t = table(vec![seat("a", true, true, 0), seat("b", true, false, 5)]);
        assert_eq!(t.pick(&Class::Work, None).map(|p| p.index), Some(1));
        let t = table(vec![seat("a", false, false, 0), seat("b", true, false, 5)]);
        assert_eq!(t.pick(&Class::Work, None).map(|p| p.index), Some(1));
        // Only a draining one left: it still serves (capacity is never zero).
        let t = table(vec![seat("a", true, true, 0), seat("b", false, false, 0)]);
        assert_eq!(t.pick(&Class::Work, None).map(|p| p.index), Some(0));
        let t = table(vec![seat("a", false, false, 0)]);
        assert_eq!(t.pick(&Class::Work, None), None, "held until one is ready");
    }

    #[test]
    fn a_session_stays_until_its_instance_drains() {
        let t = table(vec![seat("a", true, false, 0), seat("b", true, false, 9)]);
        let p = t.pick(&Class::Session, Some("b")).expect("ready");
        assert_eq!((p.index, p.set_cookie), (1, false));
        let p = t.pick(&Class::Session, None).expect("ready");
        assert_eq!((p.index, p.set_cookie), (0, true));
        let t = table(vec![seat("a", true, false, 0), seat("b", true, true, 0)]);
        let p = t.pick(&Class::Session, Some("b")).expect("ready");
        assert_eq!(
            (p.index, p.set_cookie),
            (0, true),
            "moved off the draining one"
        );
        let p = t.pick(&Class::Session, Some("gone")).expect("ready");
        assert_eq!((p.index, p.set_cookie), (0, true));
    }

    #[test]
    fn a_prompts_history_goes_where_the_prompt_went() {
        let mut t = table(vec![seat("a", true, false, 0), seat("b", true, false, 0)]);
        t.took_prompt("p1".into(), 1);
        let class = classify(&Method::GET, "/history/p1");
        assert_eq!(class, Class::Prompt("p1".into()));
        assert_eq!(t.pick(&class, Some("a")).map(|p| p.index), Some(1));
        // Draining does not hide a prompt's result.
        t.update(vec![seat("a", true, false, 0), seat("b", true, true, 0)]);
        assert_eq!(t.pick(&class, Some("a")).map(|p| p.index), Some(1));
    }

    #[test]
    fn the_prompt_memory_is_bounded() {
        let mut p = Prompts::default();
        for i in 0..PROMPTS_KEPT + 5 {
            p.insert(format!("id{i}"), "a".into());
        }
        assert_eq!(p.by_id.len(), PROMPTS_KEPT);
        assert!(p.get("id0").is_none());
        assert!(p.get(&format!("id{}", PROMPTS_KEPT + 4)).is_some());
    }

    #[test]
    fn requests_are_classified() {
        assert_eq!(classify(&Method::POST, "/prompt"), Class::Work);
        assert_eq!(classify(&Method::POST, "/api/prompt"), Class::Work);
        assert_eq!(classify(&Method::POST, "/sdapi/v1/txt2img"), Class::Work);
        assert_eq!(
            classify(&Method::POST, "/sdapi/v1/img2img?x=1"),
            Class::Work
        );
        assert_eq!(classify(&Method::GET, "/prompt"), Class::Session);
        assert_eq!(classify(&Method::GET, "/history"), Class::Session);
        assert_eq!(classify(&Method::GET, "/history/a/b"), Class::Session);
        assert_eq!(classify(&Method::POST, "/sdapi/v1/options"), Class::Session);
    }

    #[test]
    fn the_cookie_is_read_among_others() {
        assert_eq!(
            session_of(Some("x=1; sdws_instance=gpu1; y=2")),
            Some("gpu1")
        );
        assert_eq!(session_of(Some("x=1")), None);
        assert_eq!(session_of(None), None);
        assert!(set_cookie("gpu0").starts_with("sdws_instance=gpu0; Path=/"));
    }
}
