//! kill -9 of `sd-webui-supervisor layout` at random points of a 10,000-model
//! layout, 24 times on one data dir: after each kill, the next `layout` converges
//! (links exactly as declared, manifest equal to the disk, no leftovers) and the
//! user's files, folders and links are untouched, even right after the kill.
//!
//! The configs cycle so that killed runs create, replace and remove links. Most
//! kills are aimed at the write phase (between the time a dry run takes and the
//! time a full run takes); every fourth lands anywhere from process start.
//! Set `LAYOUT_CRASH_SEED` to replay a sequence of kill points.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::Rng;
use proptest::test_runner::{RngAlgorithm, TestRng};
use support::layout::*;

const MODELS: usize = 10_000;
const TRIALS: usize = 20;
const KINDS: [&str; 4] = ["checkpoints", "loras", "vae", "embeddings"];
const FOLDERS: [&str; 5] = [
    "models/Stable-diffusion",
    "models/Lora",
    "models/VAE",
    "embeddings",
    "extensions",
];

fn forge_folder(kind: &str) -> &'static str {
    match kind {
        "vae" => "models/VAE",
        other => forge_dir(Some(other)),
    }
}

/// A scratch dir on tmpfs when there is one: the test is about kill points, not
/// about disk speed.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = tempfile::Builder::new().prefix("layout-crash").to_owned();
    match shm.is_dir() {
        true => builder.tempdir_in(shm).unwrap(),
        false => builder.tempdir().unwrap(),
    }
}

/// The three configs the trials cycle through, as (config file, declarations).
fn configs(root: &Path, data: &Path) -> Vec<(PathBuf, Vec<Decl>)> {
    let store = root.join("store");
    let target = |set: &str, i: usize| {
        store.join(format!(
            "{set}/{i:05}-0123456789abcdefghijklmnopqrstuv-model.safetensors"
        ))
    };
    let model = |name: String, set: &str, i: usize| Decl {
        kind: Some(KINDS[i % KINDS.len()]),
        name,
        target: target(set, i),
    };
    for set in ["a", "b"] {
        fs::create_dir_all(store.join(set)).unwrap();
    }
    fs::create_dir_all(store.join("ext")).unwrap();
    for i in 0..MODELS {
        fs::write(target("a", i), b"").unwrap();
        if i % 2 == 0 {
            fs::write(target("b", i), b"").unwrap();
        }
    }
    let ext = Decl {
        kind: None,
        name: "some-extension".into(),
        target: store.join("ext"),
    };
    // All 10,000 models.
    let c0: Vec<Decl> = (0..MODELS)
        .map(|i| model(format!("m{i:05}.safetensors"), "a", i))
        .collect();
    // 4,500 retargeted, 1,000 dropped, 1,000 new, an extension.
    let mut c1: Vec<Decl> = (0..MODELS - 1000)
        .map(|i| {
            model(
                format!("m{i:05}.safetensors"),
                if i % 2 == 0 { "b" } else { "a" },
                i,
            )
        })
        .collect();
    c1.extend((0..1000).map(|i| model(format!("n{i:05}.safetensors"), "a", i)));
    c1.push(ext.clone());
    // Half of them, back to the first targets.
    let mut c2: Vec<Decl> = (0..MODELS / 2)
        .map(|i| model(format!("m{i:05}.safetensors"), "a", i))
        .collect();
    c2.push(ext);
    [(c0, "x = 0"), (c1, "x = 1"), (c2, "x = 2")]
        .into_iter()
        .enumerate()
        .map(|(n, (decls, settings))| {
            let path = root.join(format!("c{n}.toml"));
            fs::write(&path, config_text("forge", data, &decls, settings)).unwrap();
            (path, decls)
        })
        .collect()
}

/// The user's things: strays in every folder, and at four declared names (in
/// every config) a file, a folder and a link to the very declared target.
fn user_things(root: &Path, data: &Path) -> BTreeMap<PathBuf, UserThing> {
    let mut user = BTreeMap::new();
    for (n, folder) in FOLDERS.iter().enumerate() {
        for k in 0..4 {
            let bytes = format!("user file {n}.{k}").into_bytes();
            user.insert(
                Path::new(folder).join(format!("mine-{k}.bin")),
                UserThing::File(bytes),
            );
        }
    }
    let at = |i: usize| Path::new(forge_folder(KINDS[i % 4])).join(format!("m{i:05}.safetensors"));
    user.insert(at(1), UserThing::File(b"a user's own model".to_vec()));
    user.insert(at(2), UserThing::Dir);
    user.insert(
        at(3),
        UserThing::Link(root.join(format!(
            "store/a/{:05}-0123456789abcdefghijklmnopqrstuv-model.safetensors",
            3
        ))),
    );
    user.insert(at(6), UserThing::Link(root.join("elsewhere")));
    for (rel, thing) in &user {
        make(&data.join(rel), thing);
    }
    fs::write(data.join("config.json"), "{\n    \"user_key\": \"kept\"\n}").unwrap();
    user
}

fn run_layout(config: &Path) -> (i32, String) {
    let out = layout_cmd(config, false);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Whether a killed run left visible work in progress: a pending intent, a
/// temporary, or a number of symbolic links other than the declared one.
fn partial(data: &Path, expected: &BTreeMap<String, PathBuf>) -> bool {
    let manifest =
        fs::read_to_string(data.join(".sd-webui-supervisor/manifest.json")).unwrap_or_default();
    if manifest.contains("\"pending\"") || !leftover_temps(data).is_empty() {
        return true;
    }
    let links = FOLDERS
        .iter()
        .flat_map(|f| fs::read_dir(data.join(f)).into_iter().flatten())
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
        })
        .count();
    // The user's two links are among them.
    links != expected.len() + 2
}

/// The links a finished layout of `decls` leaves: all but the user's names.
fn expected_links(
    decls: &[Decl],
    user: &BTreeMap<PathBuf, UserThing>,
) -> BTreeMap<String, PathBuf> {
    decls
        .iter()
        .map(|d| {
            (
                format!("{}/{}", d.kind.map_or("extensions", forge_folder), d.name),
                d.target.clone(),
            )
        })
        .filter(|(rel, _)| !user.contains_key(Path::new(rel)))
        .collect()
}

#[test]
fn kill_9_at_random_points_then_the_next_layout_converges() {
    let tmp = scratch();
    let root = tmp.path();
    let data = root.join("data");
    let configs = configs(root, &data);
    let user = user_things(root, &data);
    let seed = std::env::var("LAYOUT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map_or(0, |d| d.as_nanos() as u64)
        });
    println!("LAYOUT_CRASH_SEED={seed}");
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);

    // Calibrate on a throwaway copy of the setup: how long reading and planning
    // take (a dry run), and how long a whole cold layout takes.
    let calib = scratch();
    let calib_data = calib.path().join("data");
    let calib_cfg = calib.path().join("c.toml");
    let text = fs::read_to_string(&configs[0].0)
        .unwrap()
        .replace(&*data.to_string_lossy(), &calib_data.to_string_lossy());
    fs::write(&calib_cfg, text).unwrap();
    let t = Instant::now();
    layout_cmd(&calib_cfg, true);
    let plan_time = t.elapsed();
    let t = Instant::now();
    assert_eq!(run_layout(&calib_cfg).0, 0);
    let full_time = t.elapsed().max(plan_time + Duration::from_millis(20));
    drop(calib);
    println!("calibration: dry run {plan_time:?}, full cold layout {full_time:?}");

    let expected: Vec<_> = configs
        .iter()
        .map(|(_, d)| expected_links(d, &user))
        .collect();
    let (mut killed, mut partial_states) = (0, 0);
    for trial in 0..TRIALS {
        let (config, _) = &configs[trial % configs.len()];
        let expected = &expected[trial % configs.len()];
        let (lo, hi) = match trial % 4 {
            3 => (Duration::ZERO, full_time),
            _ => (plan_time.mul_f64(0.8), full_time.mul_f64(1.1)),
        };
        let span = (hi - lo).as_micros().max(1) as u64;
        let delay = lo + Duration::from_micros(rng.next_u64() % span);
        let mut child = Command::new(env!("CARGO_BIN_EXE_sd-webui-supervisor"))
            .args(["layout", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.code().is_none() {
            killed += 1;
        }
        assert_user_things_intact(&data, &user);
        if partial(&data, expected) {
            partial_states += 1;
        }

        let (code, stdout) = run_layout(config);
        assert_eq!(
            code, 3,
            "trial {trial}: the four user things are conflicts\n{stdout}"
        );
        assert_user_things_intact(&data, &user);
        let on_disk = supervisor_links(&data, &FOLDERS, &user);
        assert_eq!(on_disk.len(), expected.len(), "trial {trial}");
        assert!(
            on_disk == *expected,
            "trial {trial}: links differ from the declaration"
        );
        assert!(
            manifest_links(&data) == on_disk,
            "trial {trial}: manifest differs from the disk"
        );
        assert_eq!(
            leftover_temps(&data),
            Vec::<PathBuf>::new(),
            "trial {trial}"
        );
        let settings = fs::read_to_string(data.join("config.json")).unwrap();
        assert!(settings.contains("\"user_key\": \"kept\""), "{settings}");
        if trial % 4 == 1 {
            let (code, stdout) = run_layout(config);
            assert_eq!(code, 3);
            assert!(stdout.contains(": 0 changes,"), "trial {trial}: {stdout}");
        }
    }
    println!("{killed} of {TRIALS} runs killed, {partial_states} left work in progress");
    assert!(
        killed >= TRIALS / 2,
        "too few kills landed before the run finished: {killed}"
    );
    assert!(
        partial_states >= TRIALS / 4,
        "too few kills interrupted the writes: {partial_states}"
    );
}
