//! The rule that keeps a prompt from being lost or run twice: what a UI's
//! `/queue` and `/history` say of each kept prompt decides whether it is done,
//! still there, to be sent again, or quarantined. Pure.

use std::collections::{BTreeMap, BTreeSet};

use super::{Book, Outcome, STRIKES};

/// What the UI knows of the prompts asked about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UiKnows {
    /// Ids in its queue, running or pending.
    pub queued: BTreeSet<String>,
    /// Ids in its history, with how they ended.
    pub history: BTreeMap<String, Outcome>,
}

/// When the reading was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// A UI that has not been sent the kept prompts yet: one it does not know
    /// is sent again (with its id, so it is never run twice).
    NewUi,
    /// The UI that was sent them: one it no longer lists and has no history
    /// of was deleted from its queue by a user.
    SameUi,
}

/// What to do with one kept prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// It is done: out of the journal, into its history.
    Finished(String, Outcome),
    /// Send it to the UI again, with its id.
    Resubmit(String),
    /// It crashed the UI [`STRIKES`] times: hold it back.
    Quarantine(String),
}

/// The steps for the kept prompts among `asked` (in the journal's order, which
/// is the order resubmissions keep); quarantined ones and those the UI still
/// queues need none.
pub fn plan(book: &Book, asked: &BTreeSet<String>, knows: &UiKnows, moment: Moment) -> Vec<Step> {
    let mut steps = Vec::new();
    for k in book.kept() {
        let id = &k.prompt_id;
        if k.quarantined || !asked.contains(id) || knows.queued.contains(id) {
            continue;
        }
        if let Some(outcome) = knows.history.get(id) {
            steps.push(Step::Finished(id.clone(), *outcome));
            continue;
        }
        match moment {
            Moment::SameUi => steps.push(Step::Finished(id.clone(), Outcome::Cancelled)),
            Moment::NewUi if k.strikes >= STRIKES => steps.push(Step::Quarantine(id.clone())),
            Moment::NewUi => steps.push(Step::Resubmit(id.clone())),
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Kept, Record};

    fn book(ids: &[(&str, u32)]) -> Book {
        let mut b = Book::default();
        for (id, strikes) in ids {
            let k: Kept = serde_json::from_value(serde_json::json!({
                "prompt_id": id, "body": {}, "strikes": strikes
            }))
            .expect("kept");
            b.apply(Record::Accepted(k));
        }
        b
    }

    fn all(b: &Book) -> BTreeSet<String> {
        b.kept().iter().map(|k| k.prompt_id.clone()).collect()
    }

    #[test]
    fn a_new_ui_gets_what_it_does_not_know_in_order_and_nothing_twice() {
        let b = book(&[("a", 0), ("b", 0), ("c", 2), ("d", 1), ("e", 0)]);
        let knows = UiKnows {
            queued: BTreeSet::from(["b".into()]),
            history: BTreeMap::from([("e".into(), Outcome::Succeeded)]),
        };
        assert_eq!(
            plan(&b, &all(&b), &knows, Moment::NewUi),
            vec![
                Step::Resubmit("a".into()),
                Step::Quarantine("c".into()),
                Step::Resubmit("d".into()),
                Step::Finished("e".into(), Outcome::Succeeded),
            ]
        );
    }

    #[test]
    fn the_same_ui_forgetting_a_prompt_means_it_was_deleted() {
        let b = book(&[("a", 0), ("b", 0), ("c", 0)]);
        let knows = UiKnows {
            queued: BTreeSet::from(["a".into()]),
            history: BTreeMap::from([("b".into(), Outcome::Failed)]),
        };
        let asked = BTreeSet::from(["a".into(), "b".into(), "c".into()]);
        assert_eq!(
            plan(&b, &asked, &knows, Moment::SameUi),
            vec![
                Step::Finished("b".into(), Outcome::Failed),
                Step::Finished("c".into(), Outcome::Cancelled),
            ]
        );
        let only_a = BTreeSet::from(["a".into()]);
        assert!(plan(&b, &only_a, &knows, Moment::SameUi).is_empty());
    }
}
