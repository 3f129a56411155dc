//! `sd-webui-supervisor layout` through the real binary: each behaviour of issue 3
//! that a user sees.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use support::layout::*;
use tempfile::TempDir;

/// A temp dir with a fake store of model files and extension dirs.
struct Fixture {
    _tmp: TempDir,
    root: PathBuf,
    data: PathBuf,
    config: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        fs::create_dir(root.join("store")).unwrap();
        Fixture {
            data: root.join("data"),
            config: root.join("config.toml"),
            root,
            _tmp: tmp,
        }
    }

    /// A store file (or dir, for an extension) that exists.
    fn target(&self, name: &str) -> PathBuf {
        let path = self.root.join("store").join(name);
        if name.starts_with("ext") {
            fs::create_dir_all(&path).unwrap();
        } else {
            fs::write(&path, name).unwrap();
        }
        path
    }

    fn model(&self, kind: &'static str, name: &str) -> Decl {
        Decl {
            kind: Some(kind),
            name: name.into(),
            target: self.target(&format!("{kind}-{name}")),
        }
    }

    fn write_config(&self, flavor: &str, decls: &[Decl], settings: &str) {
        fs::write(
            &self.config,
            config_text(flavor, &self.data, decls, settings),
        )
        .unwrap();
    }

    fn layout(&self) -> (i32, String, String) {
        let out = layout_cmd(&self.config, false);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn link(&self, rel: &str) -> PathBuf {
        fs::read_link(self.data.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn cold_layout_links_everything_and_an_unchanged_relayout_writes_nothing() {
    let f = Fixture::new();
    let decls = [
        f.model("checkpoints", "pony.safetensors"),
        f.model("loras", "detail.safetensors"),
        f.model("embeddings", "neg.pt"),
        Decl {
            kind: None,
            name: "localization".into(),
            target: f.target("ext-localization"),
        },
    ];
    f.write_config("forge", &decls, "CLIP_stop_at_last_layers = 2");
    let (code, stdout, stderr) = f.layout();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("0 conflicts"), "{stdout}");
    for d in &decls {
        let rel = Path::new(forge_dir(d.kind)).join(&d.name);
        assert_eq!(f.link(rel.to_str().unwrap()), d.target);
    }
    for dir in [
        "models/VAE",
        "models/ESRGAN",
        "models/text_encoder",
        "extensions",
        "embeddings",
    ] {
        assert_eq!(mode(&f.data.join(dir)), 0o750, "{dir}");
    }
    assert_eq!(mode(&f.data), 0o750);
    let settings: serde_json::Value =
        serde_json::from_slice(&fs::read(f.data.join("config.json")).unwrap()).unwrap();
    assert_eq!(settings["CLIP_stop_at_last_layers"], 2);
    assert_eq!(manifest_links(&f.data).len(), decls.len());

    let before = tree_state(&f.data);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (code, stdout, _) = f.layout();
    assert_eq!(code, 0);
    assert!(stdout.contains(": 0 changes"), "{stdout}");
    assert_eq!(
        tree_state(&f.data),
        before,
        "an unchanged relayout wrote something"
    );
}

#[test]
fn dry_run_prints_one_action_a_line_and_changes_nothing() {
    let f = Fixture::new();
    let decls = [
        f.model("loras", "a.safetensors"),
        f.model("loras", "b.safetensors"),
    ];
    f.write_config("forge", &decls, "sd_model_checkpoint = \"x\"");
    let out = layout_cmd(&f.config, true);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let verbs: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(verbs.iter().filter(|v| **v == "link").count(), 2, "{text}");
    assert!(
        verbs
            .iter()
            .all(|v| ["create", "link", "write"].contains(v)),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("write ") && l.contains("config.json"))
    );
    assert!(!f.data.exists(), "dry run created the data dir");
}

#[test]
fn conflicts_are_kept_reported_and_exit_3() {
    let f = Fixture::new();
    let decls = [
        f.model("loras", "file.safetensors"),
        f.model("loras", "dir.safetensors"),
        f.model("loras", "link.safetensors"),
        f.model("loras", "free.safetensors"),
    ];
    let mut user = BTreeMap::new();
    user.insert(
        PathBuf::from("models/Lora/file.safetensors"),
        UserThing::File(b"my own lora".to_vec()),
    );
    user.insert(PathBuf::from("models/Lora/dir.safetensors"), UserThing::Dir);
    // Even a link to the very declared target is the user's, never adopted.
    user.insert(
        PathBuf::from("models/Lora/link.safetensors"),
        UserThing::Link(decls[2].target.clone()),
    );
    for (rel, thing) in &user {
        make(&f.data.join(rel), thing);
    }
    f.write_config("forge", &decls, "");
    let (code, stdout, stderr) = f.layout();
    assert_eq!(code, 3, "{stdout}{stderr}");
    let conflicts: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("conflict: "))
        .collect();
    assert_eq!(conflicts.len(), 3, "{stderr}");
    assert!(
        conflicts
            .iter()
            .any(|l| l.contains("file.safetensors") && l.contains("a regular file"))
    );
    assert!(
        conflicts
            .iter()
            .any(|l| l.contains("dir.safetensors") && l.contains("a directory"))
    );
    assert_user_things_intact(&f.data, &user);
    assert_eq!(f.link("models/Lora/free.safetensors"), decls[3].target);
    assert_eq!(manifest_links(&f.data).len(), 1);
    // Still conflicts next time, still nothing touched.
    assert_eq!(f.layout().0, 3);
    assert_user_things_intact(&f.data, &user);
}

#[test]
fn a_folder_that_is_a_link_to_another_disk_is_followed() {
    let f = Fixture::new();
    let other = f.root.join("big-disk/loras");
    fs::create_dir_all(&other).unwrap();
    fs::create_dir_all(f.data.join("models")).unwrap();
    symlink(&other, f.data.join("models/Lora")).unwrap();
    let decls = [f.model("loras", "a.safetensors")];
    f.write_config("forge", &decls, "");
    assert_eq!(f.layout().0, 0);
    assert_eq!(fs::read_link(f.data.join("models/Lora")).unwrap(), other);
    assert_eq!(
        fs::read_link(other.join("a.safetensors")).unwrap(),
        decls[0].target
    );
    f.write_config("forge", &[], "");
    assert_eq!(f.layout().0, 0);
    assert!(fs::symlink_metadata(other.join("a.safetensors")).is_err());
}

#[test]
fn an_unmounted_folder_link_is_a_conflict_not_replaced() {
    let f = Fixture::new();
    fs::create_dir_all(f.data.join("models")).unwrap();
    symlink(f.root.join("not-mounted"), f.data.join("models/Lora")).unwrap();
    f.write_config("forge", &[f.model("loras", "a.safetensors")], "");
    let (code, _, stderr) = f.layout();
    assert_eq!(code, 3);
    assert!(stderr.contains("the UI needs a folder here"), "{stderr}");
    assert_eq!(f.link("models/Lora"), f.root.join("not-mounted"));
}

#[test]
fn garbage_collected_targets_are_unlinked_and_reported() {
    let f = Fixture::new();
    let decls = [
        f.model("checkpoints", "a.safetensors"),
        f.model("checkpoints", "b.safetensors"),
    ];
    f.write_config("forge", &decls, "");
    assert_eq!(f.layout().0, 0);
    fs::remove_file(&decls[0].target).unwrap();
    let (code, _, stderr) = f.layout();
    assert_eq!(code, 0, "a missing target is not a conflict");
    assert!(stderr.contains("missing target: "), "{stderr}");
    assert!(fs::symlink_metadata(f.data.join("models/Stable-diffusion/a.safetensors")).is_err());
    assert_eq!(manifest_links(&f.data).len(), 1);
    // Back in the store: linked again.
    fs::write(&decls[0].target, b"back").unwrap();
    f.layout();
    assert_eq!(
        f.link("models/Stable-diffusion/a.safetensors"),
        decls[0].target
    );
}

#[test]
fn undeclared_links_are_removed_but_never_a_users() {
    let f = Fixture::new();
    let a = f.model("loras", "a.safetensors");
    let b = f.model("loras", "b.safetensors");
    let mut user = BTreeMap::new();
    user.insert(
        PathBuf::from("models/Lora/mine.safetensors"),
        UserThing::Link(b.target.clone()),
    );
    user.insert(
        PathBuf::from("models/Lora/notes.txt"),
        UserThing::File(b"hi".to_vec()),
    );
    for (rel, thing) in &user {
        make(&f.data.join(rel), thing);
    }
    f.write_config("forge", &[a.clone(), b.clone()], "");
    assert_eq!(f.layout().0, 0);
    f.write_config("forge", std::slice::from_ref(&a), "");
    assert_eq!(f.layout().0, 0);
    assert!(fs::symlink_metadata(f.data.join("models/Lora/b.safetensors")).is_err());
    assert_eq!(f.link("models/Lora/a.safetensors"), a.target);
    assert_user_things_intact(&f.data, &user);
    // Repointing a link replaces it in place.
    let a2 = Decl {
        target: f.target("loras-a-v2"),
        ..a
    };
    f.write_config("forge", std::slice::from_ref(&a2), "");
    assert_eq!(f.layout().0, 0);
    assert_eq!(f.link("models/Lora/a.safetensors"), a2.target);
    assert!(leftover_temps(&f.data).is_empty());
}

/// The `config.json.corrupt-*` copies in `data`.
fn set_aside_settings(data: &Path) -> Vec<PathBuf> {
    fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("config.json.corrupt-"))
        .collect()
}

#[test]
fn settings_keep_every_other_key_and_a_corrupt_file_is_set_aside() {
    let f = Fixture::new();
    fs::create_dir_all(&f.data).unwrap();
    let user_json = "{\n    \"outdir_samples\": \"\",\n    \"sd_model_checkpoint\": \"old\",\n    \"ratio\": 1.50,\n    \"nested\": {\"k\": [1,2]}\n}";
    fs::write(f.data.join("config.json"), user_json).unwrap();
    fs::set_permissions(
        f.data.join("config.json"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    f.write_config("forge", &[], "sd_model_checkpoint = \"new.safetensors\"");
    assert_eq!(f.layout().0, 0);
    let text = fs::read_to_string(f.data.join("config.json")).unwrap();
    assert_eq!(
        text,
        "{\n    \"outdir_samples\": \"\",\n    \"sd_model_checkpoint\": \"new.safetensors\",\n    \"ratio\": 1.50,\n    \"nested\": {\"k\": [1,2]}\n}"
    );
    assert_eq!(mode(&f.data.join("config.json")), 0o600);

    fs::write(f.data.join("config.json"), b"{\"truncated\": ").unwrap();
    let (code, _, stderr) = f.layout();
    assert_eq!(code, 0, "{stderr}");
    let aside = set_aside_settings(&f.data);
    assert_eq!(aside.len(), 1);
    assert_eq!(fs::read(&aside[0]).unwrap(), b"{\"truncated\": ");
    let fresh: serde_json::Value =
        serde_json::from_slice(&fs::read(f.data.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        fresh,
        serde_json::json!({"sd_model_checkpoint": "new.safetensors"})
    );
}

/// The UI saves `config.json` in place (truncate, then write). A layout that
/// reads it half-written must wait for the save, not set the file aside.
#[test]
fn settings_caught_mid_save_by_the_ui_are_not_set_aside() {
    let f = Fixture::new();
    fs::create_dir_all(&f.data).unwrap();
    let path = f.data.join("config.json");
    let saved = "{\n    \"outdir_samples\": \"/srv/out\",\n    \"jpeg_quality\": 80\n}";
    // The first half of the UI's save is on disk when the layout starts…
    fs::write(&path, &saved[..saved.len() / 2]).unwrap();
    f.write_config("forge", &[], "sd_model_checkpoint = \"new.safetensors\"");
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            // …and the rest follows a moment later, to the same inode.
            std::thread::sleep(std::time::Duration::from_millis(80));
            let mut file = fs::OpenOptions::new().write(true).open(&path).unwrap();
            std::io::Write::write_all(&mut file, saved.as_bytes()).unwrap();
        })
    };
    let (code, _, stderr) = f.layout();
    writer.join().unwrap();
    assert_eq!(code, 0, "{stderr}");
    let aside = set_aside_settings(&f.data);
    assert_eq!(aside, Vec::<PathBuf>::new(), "{stderr}");
    let merged: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        merged,
        serde_json::json!({
            "outdir_samples": "/srv/out",
            "jpeg_quality": 80,
            "sd_model_checkpoint": "new.safetensors",
        })
    );
}

#[test]
fn comfyui_gets_its_folders_and_settings_file() {
    let f = Fixture::new();
    let decls = [
        f.model("checkpoints", "a.safetensors"),
        Decl {
            kind: None,
            name: "nodes".into(),
            target: f.target("ext-nodes"),
        },
    ];
    f.write_config("comfyui", &decls, "\"Comfy.LinkRenderMode\" = 2");
    assert_eq!(f.layout().0, 0);
    assert_eq!(f.link("models/checkpoints/a.safetensors"), decls[0].target);
    assert_eq!(f.link("custom_nodes/nodes"), decls[1].target);
    for dir in [
        "models/clip_vision",
        "models/diffusion_models",
        "user/default",
    ] {
        assert!(f.data.join(dir).is_dir(), "{dir}");
    }
    let path = f.data.join("user/default/comfy.settings.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["Comfy.LinkRenderMode"], 2);
    v["Comfy.UserKey"] = "kept".into();
    fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    f.write_config("comfyui", &decls, "\"Comfy.LinkRenderMode\" = 0");
    assert_eq!(f.layout().0, 0);
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["Comfy.LinkRenderMode"], 0);
    assert_eq!(v["Comfy.UserKey"], "kept");
}

#[test]
fn existing_user_folders_keep_their_mode() {
    let f = Fixture::new();
    fs::create_dir_all(f.data.join("models/Lora")).unwrap();
    fs::set_permissions(f.data.join("models"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(
        f.data.join("models/Lora"),
        fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    f.write_config("a1111", &[], "");
    assert_eq!(f.layout().0, 0);
    assert_eq!(mode(&f.data.join("models")), 0o755);
    assert_eq!(mode(&f.data.join("models/Lora")), 0o777);
    assert_eq!(mode(&f.data.join("models/VAE")), 0o750);
    assert_eq!(mode(&f.data), 0o750);
}

#[test]
fn an_invalid_config_exits_1() {
    let f = Fixture::new();
    fs::write(&f.config, "[ui]\nflavor = \"nope\"\n").unwrap();
    let (code, _, stderr) = f.layout();
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown flavor"), "{stderr}");
}

#[test]
fn a_data_dir_that_is_a_file_is_refused_and_kept() {
    let f = Fixture::new();
    f.write_config("forge", &[f.model("loras", "a.safetensors")], "");
    fs::write(&f.data, b"not a folder").unwrap();
    for dry_run in [true, false] {
        let out = layout_cmd(&f.config, dry_run);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "dry run {dry_run}: {stderr}");
        assert!(
            stderr.contains(&format!("{} is not a directory", f.data.display())),
            "dry run {dry_run}: {stderr}"
        );
        assert_eq!(fs::read(&f.data).unwrap(), b"not a folder");
    }
}

#[test]
fn switching_flavor_removes_the_links_left_in_the_old_folders_only() {
    let f = Fixture::new();
    let decls = [
        f.model("loras", "a.safetensors"),
        f.model("loras", "b.safetensors"),
    ];
    f.write_config("forge", &decls, "");
    assert_eq!(f.layout().0, 0);
    let mine = f.data.join("models/Lora/mine.safetensors");
    fs::write(&mine, b"user's").unwrap();

    // ComfyUI keeps loras in models/loras: models/Lora is no managed folder now,
    // but the links recorded there are still the supervisor's to clean up.
    f.write_config("comfyui", &decls[..1], "");
    let (code, _, stderr) = f.layout();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(f.link("models/loras/a.safetensors"), decls[0].target);
    for old in ["a.safetensors", "b.safetensors"] {
        let path = f.data.join("models/Lora").join(old);
        assert!(fs::symlink_metadata(&path).is_err(), "{old} left behind");
    }
    assert_eq!(fs::read(&mine).unwrap(), b"user's");
    let (code, stdout, _) = f.layout();
    assert_eq!(code, 0);
    assert!(stdout.contains(": 0 changes"), "{stdout}");
}

#[test]
fn a_failing_link_stops_nothing_else_is_named_and_a_later_layout_completes_it() {
    let f = Fixture::new();
    let decls = [
        f.model("checkpoints", "pony.safetensors"),
        f.model("loras", "detail.safetensors"),
        f.model("loras", "style.safetensors"),
        f.model("embeddings", "neg.pt"),
    ];
    f.write_config("forge", &decls, "CLIP_stop_at_last_layers = 2");
    let lora = f.data.join("models/Lora");
    fs::create_dir_all(&lora).unwrap();
    let Some(guard) = support::mounts::ReadOnly::mount(&lora) else {
        return;
    };
    let (code, _stdout, stderr) = f.layout();
    assert_ne!(code, 0, "{stderr}");
    for key in [
        r#"models.loras."detail.safetensors""#,
        r#"models.loras."style.safetensors""#,
    ] {
        assert!(stderr.contains(key), "{key} not named: {stderr}");
    }
    assert_eq!(
        f.link("models/Stable-diffusion/pony.safetensors"),
        decls[0].target
    );
    assert_eq!(f.link("embeddings/neg.pt"), decls[3].target);
    assert!(
        f.data.join("config.json").exists(),
        "settings not written after a failed link: {stderr}"
    );
    let recorded = manifest_links(&f.data);
    assert_eq!(recorded.len(), 2, "manifest: {recorded:?}");

    drop(guard);
    let (code, _, stderr) = f.layout();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(f.link("models/Lora/detail.safetensors"), decls[1].target);
    assert_eq!(f.link("models/Lora/style.safetensors"), decls[2].target);
    assert_eq!(manifest_links(&f.data).len(), 4);
}
