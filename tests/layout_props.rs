//! Property test: random user trees, then random sequences of configs (with the
//! user and the garbage collector acting between layouts). After every layout:
//! every user file, dir and link is byte-identical, the supervisor's links are
//! exactly the declared ones that can be made, the manifest equals the disk, and
//! a second layout writes nothing.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use sd_webui_supervisor::layout::{self, Wanted};
use support::layout::*;

/// Managed folders (Forge) the test uses; the last one holds extensions.
const FOLDERS: [&str; 4] = [
    "models/Stable-diffusion",
    "models/Lora",
    "embeddings",
    "extensions",
];
const KINDS: [&str; 3] = ["checkpoints", "loras", "embeddings"];
const NAMES: [&str; 7] = [
    "a.safetensors",
    "b.safetensors",
    "c.pt",
    "d.ckpt",
    "e.bin",
    "u0.txt",
    "u1.txt",
];
const EXTS: [&str; 3] = ["ext0", "ext1", "u2"];
/// Store files `t0..t3`; index 4 never exists.
const TARGETS: usize = 5;
/// Store dirs `x0, x1`; index 2 never exists.
const EXT_TARGETS: usize = 3;

fn name(folder: usize, n: usize) -> &'static str {
    if folder == 3 {
        EXTS[n % EXTS.len()]
    } else {
        NAMES[n % NAMES.len()]
    }
}

#[derive(Debug, Clone)]
enum Thing {
    File(Vec<u8>),
    Dir,
    LinkToStore(usize),
}

#[derive(Debug, Clone)]
struct Tree {
    things: Vec<(usize, usize, Thing)>,
    /// `models/Lora` is the user's link to another disk.
    linked_lora: bool,
    /// `embeddings` is a user's file: that folder is a conflict.
    blocked_embeddings: bool,
    /// A `config.json` with the user's own keys.
    user_settings: bool,
}

#[derive(Debug, Clone)]
enum Event {
    Nothing,
    DeleteOwned(usize),
    ReplaceOwnedWithFile(usize, Vec<u8>),
    AddUserFile(usize, usize, Vec<u8>),
    CollectGarbage(usize),
    RestoreStore,
}

#[derive(Debug, Clone)]
struct Step {
    event: Event,
    models: BTreeMap<(usize, usize), usize>,
    extensions: BTreeMap<usize, usize>,
    setting: Option<u8>,
}

fn thing() -> impl Strategy<Value = Thing> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..12).prop_map(Thing::File),
        Just(Thing::Dir),
        (0..TARGETS).prop_map(Thing::LinkToStore),
    ]
}

fn tree() -> impl Strategy<Value = Tree> {
    (
        prop::collection::vec((0..4usize, 0..7usize, thing()), 0..8),
        any::<bool>(),
        prop::bool::weighted(0.15),
        any::<bool>(),
    )
        .prop_map(
            |(things, linked_lora, blocked_embeddings, user_settings)| Tree {
                things,
                linked_lora,
                blocked_embeddings,
                user_settings,
            },
        )
}

fn event() -> impl Strategy<Value = Event> {
    let bytes = || prop::collection::vec(any::<u8>(), 1..8);
    prop_oneof![
        3 => Just(Event::Nothing),
        1 => (0..8usize).prop_map(Event::DeleteOwned),
        1 => (0..8usize, bytes()).prop_map(|(i, b)| Event::ReplaceOwnedWithFile(i, b)),
        1 => (0..4usize, 0..7usize, bytes()).prop_map(|(f, n, b)| Event::AddUserFile(f, n, b)),
        1 => (0..4usize).prop_map(Event::CollectGarbage),
        1 => Just(Event::RestoreStore),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        event(),
        prop::collection::btree_map((0..3usize, 0..5usize), 0..TARGETS, 0..8),
        prop::collection::btree_map(0..2usize, 0..EXT_TARGETS, 0..3),
        prop::option::of(0..3u8),
    )
        .prop_map(|(event, models, extensions, setting)| Step {
            event,
            models,
            extensions,
            setting,
        })
}

struct World {
    root: PathBuf,
    data: PathBuf,
    user: BTreeMap<PathBuf, UserThing>,
    blocked_embeddings: bool,
}

impl World {
    fn store(&self, i: usize) -> PathBuf {
        self.root.join(format!("store/t{i}"))
    }

    fn ext_store(&self, i: usize) -> PathBuf {
        self.root.join(format!("store/x{i}"))
    }

    fn restore_store(&self) {
        fs::create_dir_all(self.root.join("store")).unwrap();
        for i in 0..TARGETS - 1 {
            fs::write(self.store(i), format!("model {i}")).unwrap();
        }
        for i in 0..EXT_TARGETS - 1 {
            fs::create_dir_all(self.ext_store(i)).unwrap();
        }
    }

    fn reachable(&self, folder: usize) -> bool {
        !(self.blocked_embeddings && folder == 2)
    }

    fn owned(&self, i: usize) -> Option<String> {
        let links = manifest_links(&self.data);
        let n = links.len();
        (n > 0).then(|| links.keys().nth(i % n).cloned()).flatten()
    }

    fn act(&mut self, event: &Event) {
        match event {
            Event::Nothing => {}
            Event::DeleteOwned(i) => {
                if let Some(rel) = self.owned(*i) {
                    fs::remove_file(self.data.join(rel)).unwrap();
                }
            }
            Event::ReplaceOwnedWithFile(i, bytes) => {
                if let Some(rel) = self.owned(*i) {
                    fs::remove_file(self.data.join(&rel)).unwrap();
                    let thing = UserThing::File(bytes.clone());
                    make(&self.data.join(&rel), &thing);
                    self.user.insert(rel.into(), thing);
                }
            }
            Event::AddUserFile(folder, n, bytes) => {
                let rel = Path::new(FOLDERS[*folder]).join(name(*folder, *n));
                let path = self.data.join(&rel);
                if self.reachable(*folder) && fs::symlink_metadata(&path).is_err() {
                    let thing = UserThing::File(bytes.clone());
                    make(&path, &thing);
                    self.user.insert(rel, thing);
                }
            }
            Event::CollectGarbage(i) => {
                let _ = fs::remove_file(self.store(*i));
            }
            Event::RestoreStore => self.restore_store(),
        }
    }
}

fn run(tree: Tree, steps: Vec<Step>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = World {
        root: tmp.path().to_path_buf(),
        data: tmp.path().join("data"),
        user: BTreeMap::new(),
        blocked_embeddings: tree.blocked_embeddings,
    };
    w.restore_store();
    fs::create_dir_all(w.data.join("models")).unwrap();
    if tree.linked_lora {
        let disk = w.root.join("other-disk/lora");
        fs::create_dir_all(&disk).unwrap();
        symlink(&disk, w.data.join("models/Lora")).unwrap();
    }
    if tree.blocked_embeddings {
        let thing = UserThing::File(b"not a folder".to_vec());
        make(&w.data.join("embeddings"), &thing);
        w.user.insert("embeddings".into(), thing);
    }
    let user_json = "{\n    \"user_key\": [1, 2.50],\n    \"x\": 9\n}";
    if tree.user_settings {
        fs::write(w.data.join("config.json"), user_json).unwrap();
    }
    for (folder, n, thing) in tree.things {
        let rel = Path::new(FOLDERS[folder]).join(name(folder, n));
        if !w.reachable(folder) || w.user.contains_key(&rel) {
            continue;
        }
        let thing = match thing {
            Thing::File(bytes) => UserThing::File(bytes),
            Thing::Dir => UserThing::Dir,
            Thing::LinkToStore(i) => UserThing::Link(w.store(i)),
        };
        make(&w.data.join(&rel), &thing);
        w.user.insert(rel, thing);
    }

    for step in steps {
        w.act(&step.event);
        let mut decls = Vec::new();
        for ((kind, n), t) in &step.models {
            decls.push(Decl {
                kind: Some(KINDS[*kind]),
                name: NAMES[*n].into(),
                target: w.store(*t),
            });
        }
        for (e, t) in &step.extensions {
            decls.push(Decl {
                kind: None,
                name: EXTS[*e].into(),
                target: w.ext_store(*t),
            });
        }
        let settings = step.setting.map(|v| format!("x = {v}")).unwrap_or_default();
        let config = config(&config_text("forge", &w.data, &decls, &settings));
        let report = layout::apply(&config).unwrap();

        assert_user_things_intact(&w.data, &w.user);
        let mut expected_links = BTreeMap::new();
        let mut expected_conflicts = BTreeSet::new();
        let mut expected_dangling = BTreeSet::new();
        if w.blocked_embeddings {
            expected_conflicts.insert(w.data.join("embeddings"));
        }
        for d in &decls {
            let folder = forge_dir(d.kind);
            if folder == "embeddings" && w.blocked_embeddings {
                continue;
            }
            let rel = format!("{folder}/{}", d.name);
            if w.user.contains_key(Path::new(&rel)) {
                expected_conflicts.insert(w.data.join(&rel));
            } else if d.target.exists() {
                expected_links.insert(rel, d.target.clone());
            } else {
                expected_dangling.insert(w.data.join(&rel));
            }
        }
        let on_disk = supervisor_links(&w.data, &FOLDERS, &w.user);
        assert_eq!(
            on_disk, expected_links,
            "links are exactly the declared set"
        );
        assert_eq!(
            manifest_links(&w.data),
            on_disk,
            "the manifest equals the disk"
        );
        let conflicts: BTreeSet<PathBuf> =
            report.conflicts.iter().map(|c| c.path.clone()).collect();
        assert_eq!(conflicts, expected_conflicts);
        let dangling: BTreeSet<PathBuf> = report.dangling.iter().map(|d| d.link.clone()).collect();
        assert_eq!(dangling, expected_dangling);
        assert!(
            report
                .conflicts
                .iter()
                .all(|c| !matches!(c.wanted, Wanted::Settings))
        );
        assert_eq!(leftover_temps(&w.data), Vec::<PathBuf>::new());
        if let Some(v) = step.setting {
            let json: serde_json::Value =
                serde_json::from_slice(&fs::read(w.data.join("config.json")).unwrap()).unwrap();
            assert_eq!(json["x"], v);
            if tree.user_settings {
                assert_eq!(json["user_key"], serde_json::json!([1, 2.5]));
            }
        } else if tree.user_settings {
            // Never touched while nothing is managed... but earlier steps may have set x.
            let text = fs::read_to_string(w.data.join("config.json")).unwrap();
            assert!(text.contains("\"user_key\": [1, 2.50]"), "{text}");
        }

        let again = layout::apply(&config).unwrap();
        assert_eq!(
            again.actions_applied, 0,
            "a relayout with nothing changed writes nothing"
        );
        assert_eq!(again.conflicts, report.conflicts);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn layouts_keep_user_things_and_converge(tree in tree(), steps in prop::collection::vec(step(), 1..6)) {
        run(tree, steps);
    }
}
