//! The paths the planner decides about, in order: every declared and every
//! recorded link once, from a merge of the three sorted maps that name them,
//! with the state of each one's folder.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::desired::{Rel, Want, parent};
use super::manifest::{Manifest, Owned};
use super::snapshot::{DirState, DiskState};

/// One path as the config and the manifest see it.
pub(crate) struct Row<'a> {
    /// The path.
    pub rel: &'a Rel,
    /// The declaration, if the config declares the path.
    pub want: Option<&'a Want<'a>>,
    /// The manifest's record of a link made.
    pub link: Option<&'a Owned>,
    /// The manifest's record of a link about to be made (a killed run's intent).
    pub pending: Option<&'a Owned>,
}

/// Every path declared or recorded, once, in path order: a merge of three sorted
/// maps, so no path is looked up in another map.
pub(crate) fn rows<'a>(
    declared: &'a BTreeMap<Rel, Want<'a>>,
    recorded: &'a Manifest,
) -> impl Iterator<Item = Row<'a>> {
    let mut declared = declared.iter().peekable();
    let mut links = recorded.links.iter().peekable();
    let mut pending = recorded.pending.iter().peekable();
    std::iter::from_fn(move || {
        // The least path, and which maps name it: one comparison per map that is
        // not exhausted (usually one in all: `pending` is almost always empty).
        let heads = [
            declared.peek().map(|(rel, _)| *rel),
            links.peek().map(|(rel, _)| *rel),
            pending.peek().map(|(rel, _)| *rel),
        ];
        let mut least: Option<&Rel> = None;
        let mut named = [false; 3];
        for (i, rel) in heads.into_iter().enumerate() {
            let Some(rel) = rel else { continue };
            match least.map(|l| rel.cmp(l)) {
                None | Some(Ordering::Less) => {
                    least = Some(rel);
                    named = [false; 3];
                    named[i] = true;
                }
                Some(Ordering::Equal) => named[i] = true,
                Some(Ordering::Greater) => {}
            }
        }
        Some(Row {
            rel: least?,
            want: named[0].then(|| declared.next()).flatten().map(|(_, w)| w),
            link: named[1].then(|| links.next()).flatten().map(|(_, o)| o),
            pending: named[2].then(|| pending.next()).flatten().map(|(_, o)| o),
        })
    })
}

/// The state of each path's folder; paths come sorted, so a folder's paths come
/// in a run and its state is looked up once per run.
pub(crate) struct FolderOf<'s> {
    snap: &'s DiskState,
    last: Option<(&'s str, &'s DirState)>,
}

impl<'s> FolderOf<'s> {
    /// For the folders of `snap`.
    pub(crate) fn new(snap: &'s DiskState) -> Self {
        FolderOf { snap, last: None }
    }

    /// The state of the folder holding `rel`.
    pub(crate) fn of<'r: 's>(&mut self, rel: &'r str) -> &'s DirState {
        let dir = parent(rel);
        match self.last {
            Some((last, state)) if last == dir => state,
            _ => {
                let state = self.snap.dir(dir);
                self.last = Some((dir, state));
                state
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_comes_once_in_order_with_all_that_names_it() {
        let want = |t: &'static str| Want {
            target: std::path::Path::new(t),
            kind: None,
        };
        let owned = |t: &str| Owned {
            target: t.into(),
            kind: None,
        };
        let declared: BTreeMap<Rel, Want> =
            [("e/a".into(), want("/a")), ("e/c".into(), want("/c"))].into();
        let recorded = Manifest {
            links: [("e/b".into(), owned("/b")), ("e/c".into(), owned("/c0"))].into(),
            pending: [("e/c".into(), owned("/c")), ("f/d".into(), owned("/d"))].into(),
        };
        let seen: Vec<_> = rows(&declared, &recorded)
            .map(|r| {
                let t = |o: Option<&Owned>| o.map(|o| o.target.to_string_lossy().into_owned());
                (
                    r.rel.as_str(),
                    r.want.map(|w| w.target.to_string_lossy().into_owned()),
                    t(r.link),
                    t(r.pending),
                )
            })
            .collect();
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            seen,
            [
                ("e/a", s("/a"), None, None),
                ("e/b", None, s("/b"), None),
                ("e/c", s("/c"), s("/c0"), s("/c")),
                ("f/d", None, None, s("/d")),
            ]
        );
    }
}
