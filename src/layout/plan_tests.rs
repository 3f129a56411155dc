//! The planner on synthetic snapshots: one test per action kind and conflict case.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::*;
use crate::layout::desired::Want;
use crate::layout::report::Found;
use crate::ui::flavor::ModelKind;

const MODE: u32 = 0o750;

fn lora(name: &str) -> Wanted {
    Wanted::Model {
        kind: ModelKind::Loras,
        name: name.into(),
    }
}

fn rel(name: &str) -> String {
    format!("models/Lora/{name}")
}

fn abs(name: &str) -> PathBuf {
    PathBuf::from("/d/models/Lora").join(name)
}

fn owned(target: &str) -> Owned {
    Owned {
        target: target.into(),
        kind: Some(ModelKind::Loras),
    }
}

/// Declares loras `name -> target`.
fn desired<'a>(links: &[(&str, &'a str)]) -> Desired<'a> {
    let dirs: BTreeSet<String> = [
        "models",
        "models/Lora",
        "extensions",
        ".sd-webui-supervisor",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    Desired {
        data_dir: "/d".into(),
        mode: MODE,
        dirs,
        link_dirs: ["models/Lora", "extensions"]
            .into_iter()
            .map(String::from)
            .collect(),
        links: links
            .iter()
            .map(|(name, target)| {
                let want = Want {
                    target: Path::new(*target),
                    kind: Some(ModelKind::Loras),
                };
                (rel(name), want)
            })
            .collect(),
        settings: None,
    }
}

/// Every folder and every declared target present, nothing else.
fn snapshot(d: &Desired) -> DiskState {
    DiskState {
        root: DirState::Present { mode: MODE },
        dirs: d
            .dirs
            .iter()
            .map(|p| (p.clone(), DirState::Present { mode: 0o755 }))
            .collect(),
        entries: Default::default(),
        temps: Vec::new(),
        missing_targets: Default::default(),
        manifest: None,
        settings: SettingsState::NotManaged,
    }
}

/// The snapshot after a completed layout of `d`: links made and recorded.
fn laid_out(d: &Desired) -> DiskState {
    let mut s = snapshot(d);
    let mut m = Manifest::default();
    for (rel, want) in &d.links {
        s.entries
            .insert(rel.clone(), Entry::Link(want.target.to_path_buf()));
        m.links
            .insert(rel.clone(), owned(want.target.to_str().unwrap()));
    }
    s.manifest = Some(m);
    s
}

#[test]
fn cold_layout_creates_folders_links_and_records_them_as_pending() {
    let d = desired(&[("a.safetensors", "/s/a"), ("b.safetensors", "/s/b")]);
    let mut s = snapshot(&d);
    s.root = DirState::Missing;
    for state in s.dirs.values_mut() {
        *state = DirState::Missing;
    }
    let p = plan(&d, s.clone());
    let dirs: Vec<_> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateDir { path, mode: MODE } => Some(path.to_str().unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(
        dirs,
        [
            "/d",
            "/d/.sd-webui-supervisor",
            "/d/extensions",
            "/d/models",
            "/d/models/Lora"
        ]
    );
    assert!(p.actions.contains(&Action::CreateLink {
        path: abs("a.safetensors"),
        target: "/s/a".into(),
        wanted: lora("a.safetensors"),
    }));
    assert_eq!(p.pending.len(), 2);
    assert!(p.start().is_empty());
    assert_eq!(p.finish(), p.pending);
    assert!(p.writes_manifest());
}

#[test]
fn an_unchanged_relayout_does_nothing() {
    let d = desired(&[("a.safetensors", "/s/a")]);
    let p = plan(&d, laid_out(&d));
    assert_eq!(p.actions, []);
    assert!(p.is_noop());
    assert_eq!(p.to_string(), "");
}

#[test]
fn an_owned_link_to_another_target_is_replaced() {
    let d = desired(&[("a.safetensors", "/s/new")]);
    let s = laid_out(&desired(&[("a.safetensors", "/s/old")]));
    let p = plan(&d, s.clone());
    assert_eq!(
        p.actions,
        [Action::ReplaceLink {
            path: abs("a.safetensors"),
            old: "/s/old".into(),
            target: "/s/new".into(),
            wanted: lora("a.safetensors"),
        }]
    );
    assert_eq!(p.pending[&rel("a.safetensors")], owned("/s/new"));
    assert_eq!(p.start()[&rel("a.safetensors")], owned("/s/old"));
}

#[test]
fn an_owned_link_no_longer_declared_is_removed() {
    let s = laid_out(&desired(&[("a.safetensors", "/s/a")]));
    let p = plan(&desired(&[]), s);
    assert_eq!(
        p.actions,
        [Action::RemoveLink {
            path: abs("a.safetensors"),
            target: "/s/a".into(),
            wanted: lora("a.safetensors"),
            why: Removal::Undeclared,
        }]
    );
    assert!(p.finish().is_empty());
    assert!(p.writes_manifest());
}

#[test]
fn an_owned_link_whose_target_vanished_is_removed_and_reported() {
    let d = desired(&[("a.safetensors", "/s/a")]);
    let mut s = laid_out(&d);
    s.missing_targets.insert("/s/a".into());
    let p = plan(&d, s.clone());
    assert_eq!(
        p.actions,
        [
            Action::RemoveLink {
                path: abs("a.safetensors"),
                target: "/s/a".into(),
                wanted: lora("a.safetensors"),
                why: Removal::TargetMissing,
            },
            Action::Dangling(Dangling {
                link: abs("a.safetensors"),
                target: "/s/a".into(),
                wanted: lora("a.safetensors"),
            })
        ]
    );
}

#[test]
fn a_missing_target_is_reported_and_not_linked() {
    let d = desired(&[("a.safetensors", "/s/a")]);
    let mut s = snapshot(&d);
    s.missing_targets.insert("/s/a".into());
    let p = plan(&d, s.clone());
    assert!(matches!(p.actions.as_slice(), [Action::Dangling(_)]));
    assert!(!p.writes_manifest());
}

fn conflict_at(entry: Entry, manifest: Option<Manifest>) -> Vec<Action> {
    let d = desired(&[("a.safetensors", "/s/a")]);
    let mut s = snapshot(&d);
    s.entries.insert(rel("a.safetensors"), entry);
    s.manifest = manifest;
    let p = plan(&d, s.clone());
    assert!(p.finish().is_empty(), "a conflict is never owned");
    p.actions
}

fn conflict(found: Found) -> Action {
    Action::Conflict(Conflict {
        path: abs("a.safetensors"),
        found,
        wanted: lora("a.safetensors"),
    })
}

#[test]
fn a_user_file_is_a_conflict() {
    assert_eq!(conflict_at(Entry::File, None), [conflict(Found::File)]);
}

#[test]
fn a_user_directory_is_a_conflict() {
    assert_eq!(conflict_at(Entry::Dir, None), [conflict(Found::Directory)]);
}

#[test]
fn a_special_file_is_a_conflict() {
    assert_eq!(conflict_at(Entry::Other, None), [conflict(Found::Other)]);
}

#[test]
fn a_foreign_link_is_a_conflict_even_to_the_declared_target() {
    for target in ["/elsewhere", "/s/a"] {
        assert_eq!(
            conflict_at(Entry::Link(target.into()), None),
            [conflict(Found::Link {
                target: target.into()
            })]
        );
    }
}

#[test]
fn a_recorded_link_the_user_repointed_is_theirs() {
    let mut m = Manifest::default();
    m.links.insert(rel("a.safetensors"), owned("/s/old"));
    let actions = conflict_at(Entry::Link("/user/choice".into()), Some(m));
    assert_eq!(
        actions,
        [conflict(Found::Link {
            target: "/user/choice".into()
        })]
    );
}

#[test]
fn a_pending_link_is_adopted_only_with_the_exact_target() {
    let d = desired(&[("a.safetensors", "/s/a")]);
    let mut s = snapshot(&d);
    s.entries
        .insert(rel("a.safetensors"), Entry::Link("/s/a".into()));
    let mut m = Manifest::default();
    m.pending.insert(rel("a.safetensors"), owned("/s/a"));
    s.manifest = Some(m.clone());
    let p = plan(&d, s.clone());
    assert_eq!(p.actions, [], "the crashed run's link is ours");
    assert!(p.writes_manifest(), "the pending record is settled");
    assert_eq!(p.finish()[&rel("a.safetensors")], owned("/s/a"));

    m.pending.insert(rel("a.safetensors"), owned("/s/other"));
    s.manifest = Some(m);
    let p = plan(&d, s.clone());
    assert!(matches!(p.actions.as_slice(), [Action::Conflict(_)]));
}

#[test]
fn a_recorded_link_that_is_gone_is_forgotten() {
    let d = desired(&[]);
    let mut s = snapshot(&d);
    let mut m = Manifest::default();
    m.links.insert(rel("gone.safetensors"), owned("/s/gone"));
    s.manifest = Some(m);
    let p = plan(&d, s.clone());
    assert_eq!(p.actions, []);
    assert!(p.finish().is_empty());
    assert!(p.writes_manifest());
}

#[test]
fn a_blocked_folder_is_one_conflict_and_its_records_are_kept() {
    let d = desired(&[("a.safetensors", "/s/a"), ("b.safetensors", "/s/b")]);
    let mut s = laid_out(&desired(&[("a.safetensors", "/s/a")]));
    let dangling = Found::Link {
        target: "/mnt/unmounted".into(),
    };
    s.dirs
        .insert("models/Lora".into(), DirState::Blocked(dangling.clone()));
    s.entries.clear();
    let p = plan(&d, s.clone());
    assert_eq!(
        p.actions,
        [Action::Conflict(Conflict {
            path: "/d/models/Lora".into(),
            found: dangling,
            wanted: Wanted::Folder,
        })]
    );
    assert_eq!(
        p.finish().len(),
        1,
        "the unmounted disk's link stays recorded"
    );
    assert!(!p.writes_manifest());
}

#[test]
fn leftover_temporaries_are_removed() {
    let d = desired(&[]);
    let mut s = snapshot(&d);
    s.temps
        .push("/d/models/Lora/.sd-webui-supervisor.tmp.7.0".into());
    let p = plan(&d, s.clone());
    assert_eq!(
        p.actions,
        [Action::RemoveTemp {
            path: "/d/models/Lora/.sd-webui-supervisor.tmp.7.0".into()
        }]
    );
}

#[test]
fn the_data_dir_gets_the_configured_mode_existing_folders_keep_theirs() {
    let d = desired(&[]);
    let mut s = snapshot(&d);
    s.root = DirState::Present { mode: 0o755 };
    let p = plan(&d, s.clone());
    assert_eq!(
        p.actions,
        [Action::SetMode {
            path: "/d".into(),
            mode: MODE
        }]
    );
}

fn with_settings(state: SettingsState) -> Vec<Action> {
    let mut d = desired(&[]);
    let managed = serde_json::json!({"CLIP_stop_at_last_layers": 2});
    d.settings = Some(("config.json".into(), managed.as_object().cloned().unwrap()));
    let mut s = snapshot(&d);
    s.settings = state;
    plan(&d, s.clone()).actions
}

#[test]
fn settings_are_written_when_missing_or_different_and_not_otherwise() {
    let path = PathBuf::from("/d/config.json");
    let actions = with_settings(SettingsState::Absent { path: path.clone() });
    assert!(matches!(
        &actions[..],
        [Action::WriteSettings { mode: None, .. }]
    ));

    let present = |bytes: &[u8]| SettingsState::Present {
        path: path.clone(),
        bytes: bytes.to_vec(),
        mode: 0o600,
    };
    let actions = with_settings(present(br#"{"CLIP_stop_at_last_layers": 1, "x": 0}"#));
    let [Action::WriteSettings { keys, mode, .. }] = &actions[..] else {
        panic!("{actions:?}");
    };
    assert_eq!(
        (keys.as_slice(), *mode),
        (&["CLIP_stop_at_last_layers".to_string()][..], Some(0o600))
    );
    assert_eq!(
        with_settings(present(br#"{"CLIP_stop_at_last_layers": 2}"#)),
        []
    );
}

#[test]
fn corrupt_settings_are_set_aside_then_written_fresh() {
    let path = PathBuf::from("/d/config.json");
    let actions = with_settings(SettingsState::Present {
        path: path.clone(),
        bytes: b"{\"truncated\": ".to_vec(),
        mode: 0o644,
    });
    assert!(matches!(
        &actions[..],
        [
            Action::SetAsideSettings { .. },
            Action::WriteSettings { .. }
        ]
    ));
    let blocked = with_settings(SettingsState::Blocked {
        path,
        found: Found::Directory,
    });
    assert!(matches!(
        &blocked[..],
        [Action::Conflict(Conflict {
            wanted: Wanted::Settings,
            ..
        })]
    ));
}

#[test]
fn every_action_prints_as_one_line() {
    let d = desired(&[("a.safetensors", "/s/a"), ("b.safetensors", "/s/b")]);
    let mut s = laid_out(&desired(&[
        ("a.safetensors", "/s/old"),
        ("c.safetensors", "/s/c"),
    ]));
    s.missing_targets = ["/s/b".into()].into();
    s.temps
        .push("/d/extensions/.sd-webui-supervisor.tmp.1.2".into());
    let p = plan(&d, s.clone());
    let text = p.to_string();
    assert_eq!(text.lines().count(), p.actions.len() + 1, "{text}");
    assert!(
        text.contains("relink /d/models/Lora/a.safetensors -> /s/a (was /s/old;"),
        "{text}"
    );
    assert!(
        text.contains("unlink /d/models/Lora/c.safetensors"),
        "{text}"
    );
    assert!(
        text.contains("missing target: /d/models/Lora/b.safetensors: target /s/b"),
        "{text}"
    );
    assert!(
        text.ends_with("write /d/.sd-webui-supervisor/manifest.json (1 owned links)\n"),
        "{text}"
    );
}
