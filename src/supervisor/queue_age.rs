//! How long the oldest waiting job has waited (`queue_oldest_wait_seconds`):
//! with the queue's depth, what an autoscaler (KEDA, deploy/kubernetes/
//! autoscaling) scales on — a deep queue of short jobs and a short queue of
//! long-waiting ones both call for another GPU. The UIs do not say when a job
//! was queued, so each id is timed from the first probe that listed it. Pure.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// First sightings of the jobs waiting now.
#[derive(Debug, Default)]
pub struct QueueAge {
    first_seen: BTreeMap<String, Instant>,
}

impl QueueAge {
    /// A reading probed at `sent` listed `waiting`: new ids start their clock,
    /// ids no longer listed (running, done, deleted) are forgotten.
    pub fn reading(&mut self, sent: Instant, waiting: &[String]) {
        self.first_seen.retain(|id, _| waiting.contains(id));
        for id in waiting {
            self.first_seen.entry(id.clone()).or_insert(sent);
        }
    }

    /// How long the oldest waiting job has waited at `now`; zero when none waits.
    pub fn oldest(&self, now: Instant) -> Duration {
        self.first_seen
            .values()
            .min()
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(*t))
    }

    /// The UI went away, and its queue with it.
    pub fn clear(&mut self) {
        self.first_seen.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_waiting_job_is_timed_from_its_first_sighting() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut q = QueueAge::default();
        assert_eq!(q.oldest(at(5)), Duration::ZERO);
        q.reading(at(1), &ids(&["a"]));
        q.reading(at(3), &ids(&["a", "b"]));
        assert_eq!(q.oldest(at(10)), Duration::from_secs(9));
        // `a` starts running: `b` is the oldest now, timed from 3.
        q.reading(at(11), &ids(&["b"]));
        assert_eq!(q.oldest(at(11)), Duration::from_secs(8));
        q.reading(at(12), &[]);
        assert_eq!(q.oldest(at(20)), Duration::ZERO);
        q.reading(at(21), &ids(&["c"]));
        q.clear();
        assert_eq!(q.oldest(at(30)), Duration::ZERO);
    }
}
