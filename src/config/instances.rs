//! `[instances.<name>]`: one UI per GPU (or group of GPUs) behind the one front
//! door (docs/instances.md). Each instance is the `[ui]` of the file with its
//! own GPUs, its own private port, a few arguments and environment variables
//! of its own, and its own folders for what a UI writes; the models, the
//! extensions and the managed settings are shared.
//!
//! No section, or an empty one: one UI, as without this feature.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::checker::Checker;
use super::diagnostics::{At, Seg};
use super::limits;

/// The folder under `data.dir` that holds each instance's own folder.
pub const DIR: &str = "instances";
/// Most instances one supervisor runs (one per GPU of the largest machines).
pub const MAX_INSTANCES: usize = 16;
/// Longest instance name: it names a folder, a metric label and a cookie value.
pub const MAX_NAME: usize = 32;

/// One `[instances.<name>]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInstance {
    pub gpus: Option<Vec<i64>>,
    pub extra_args: Option<Vec<String>>,
    pub environment: Option<BTreeMap<String, String>>,
    pub port: Option<i64>,
}

/// One instance, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceConfig {
    /// Its name: `[A-Za-z0-9][A-Za-z0-9_-]*`, at most [`MAX_NAME`] bytes.
    pub name: String,
    /// Its GPUs (`CUDA_VISIBLE_DEVICES`); `None` inherits the supervisor's.
    pub gpus: Option<Vec<u32>>,
    /// Appended after `ui.extra_args`.
    pub extra_args: Vec<String>,
    /// Set over `ui.environment`.
    pub environment: BTreeMap<String, String>,
    /// Its private loopback port; `None`: picked when the supervisor starts
    /// (and kept in the config in force, like `front.ui_port`).
    pub port: Option<u16>,
}

/// Whether `name` may name an instance.
fn name_problem(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Some(
            "an instance name is letters, digits, '-' and '_', and begins with a letter or digit"
                .into(),
        );
    }
    (name.len() > MAX_NAME).then(|| format!("is {} bytes long; at most {MAX_NAME}", name.len()))
}

/// Checks `[instances]`: names, GPU lists (no GPU in two instances), ports
/// (distinct, none the public `ui_port`), arguments and environment as `[ui]`'s.
pub(super) fn validate(
    c: &mut Checker<'_>,
    raw: BTreeMap<String, RawInstance>,
    ui_port: Option<u16>,
) -> Vec<InstanceConfig> {
    if raw.len() > MAX_INSTANCES {
        c.value(
            ["instances"],
            format!("declares {} instances; at most {MAX_INSTANCES}", raw.len()),
        );
    }
    let mut gpu_owner: BTreeMap<u32, String> = BTreeMap::new();
    let mut port_owner: BTreeMap<u16, String> = BTreeMap::new();
    let mut out = Vec::new();
    for (name, inst) in raw {
        let at = |key: &str| vec![Seg::from("instances"), name.as_str().into(), key.into()];
        if let Some(why) = name_problem(&name) {
            c.at(["instances", name.as_str()], At::Key, why);
        }
        let gpus = inst.gpus.map(|ids| {
            if ids.is_empty() {
                c.value(
                    at("gpus"),
                    "is empty; omit it to inherit CUDA_VISIBLE_DEVICES",
                );
            }
            let mut list = Vec::new();
            for (i, id) in ids.into_iter().enumerate() {
                let mut path = at("gpus");
                path.push(i.into());
                let Ok(id) = u32::try_from(id) else {
                    c.value(path, format!("{id} is not a GPU index"));
                    continue;
                };
                match gpu_owner.get(&id) {
                    Some(other) if *other == name => {
                        c.value(path, format!("GPU {id} is listed twice"))
                    }
                    Some(other) => c.value(
                        path,
                        format!("GPU {id} is already instance {other:?}'s: one UI per GPU"),
                    ),
                    None => {
                        gpu_owner.insert(id, name.clone());
                        list.push(id);
                    }
                }
            }
            if list.len() > limits::GPUS_MAX {
                c.value(
                    at("gpus"),
                    format!("lists {} GPUs; at most {}", list.len(), limits::GPUS_MAX),
                );
            }
            list
        });
        let extra_args = inst.extra_args.unwrap_or_default();
        for (i, arg) in extra_args.iter().enumerate() {
            let mut path = at("extra_args");
            path.push(i.into());
            c.arg(path, arg);
        }
        let environment = inst.environment.unwrap_or_default();
        for (k, v) in &environment {
            let mut path = at("environment");
            path.push(k.as_str().into());
            if let Some(why) = limits::env_name(k) {
                c.at(path.clone(), At::Key, why);
            }
            if v.contains('\0') {
                c.value(path, "value contains a NUL byte");
            } else if let Some(why) = limits::arg(&format!("{k}={v}")) {
                c.value(path, format!("NAME=value {why}"));
            }
        }
        if gpus.is_some() && environment.contains_key("CUDA_VISIBLE_DEVICES") {
            let mut path = at("environment");
            path.push("CUDA_VISIBLE_DEVICES".into());
            c.at(
                path,
                At::Key,
                "conflicts with this instance's gpus, which set CUDA_VISIBLE_DEVICES",
            );
        }
        let port = inst.port.and_then(|p| {
            let Ok(p) = u16::try_from(p).map_err(|_| ()).and_then(|p| match p {
                0 => Err(()),
                p => Ok(p),
            }) else {
                c.value(at("port"), format!("{p} is out of range (1–65535)"));
                return None;
            };
            if Some(p) == ui_port {
                c.value(
                    at("port"),
                    format!("{p} is ui.port, where the front door listens; pick a private port"),
                );
                return None;
            }
            if let Some(other) = port_owner.insert(p, name.clone()) {
                c.value(at("port"), format!("{p} is instance {other:?}'s port too"));
                return None;
            }
            Some(p)
        });
        out.push(InstanceConfig {
            name,
            gpus,
            extra_args,
            environment,
            port,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(extra: &str) -> Result<crate::config::Config, String> {
        let text = format!(
            "[ui]\nflavor = \"comfyui\"\ncommand = [\"/bin/true\"]\n[data]\ndir = \"/var/lib/x\"\n{extra}"
        );
        crate::config::Config::from_bytes(std::path::Path::new("/etc/x.toml"), text.as_bytes())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn two_instances_make_two_configs_of_their_own() {
        let c = check(
            "[front]\nenable = true\n[instances.a]\ngpus = [0]\n[instances.b]\ngpus = [1]\nport = 17001\nextra_args = [\"--lowvram\"]\nenvironment = { X = \"1\" }\n",
        )
        .expect("valid");
        assert_eq!(c.instances.len(), 2);
        assert!(!c.queue.keep, "the journal is off with instances");
        let b = c.for_instance(1).expect("b");
        assert_eq!(b.instance.as_deref(), Some("b"));
        assert_eq!(b.ui.gpus, Some(vec![1]));
        assert_eq!(b.ui_own_port(), 17001);
        assert_eq!(b.ui.environment.get("X").map(String::as_str), Some("1"));
        let argv = b.ui_argv();
        assert_eq!(argv.last().map(String::as_str), Some("--lowvram"));
        let out = argv
            .iter()
            .position(|a| a == "--output-directory")
            .expect("own output");
        assert_eq!(argv[out + 1], "/var/lib/x/instances/b/output");
        assert!(c.for_instance(2).is_none());
    }

    #[test]
    fn what_instances_refuse() {
        let e = check("[front]\nenable = false\n[instances.a]\ngpus = [0]\n")
            .expect_err("no front door");
        assert!(e.contains("front.enable"), "{e}");
        let e =
            check("[front]\nenable = true\n[instances.a]\ngpus = [0]\n[instances.b]\ngpus = [0]\n")
                .expect_err("shared GPU");
        assert!(e.contains("GPU 0 is already instance \"a\"'s"), "{e}");
        let e = check("[front]\nenable = true\n[instances.a]\nport = 8188\n").expect_err("ui.port");
        assert!(e.contains("is ui.port"), "{e}");
        let e = check("[front]\nenable = true\n[queue]\nkeep = true\n[instances.a]\n")
            .expect_err("journal");
        assert!(e.contains("queue.keep"), "{e}");
        let e = check("[front]\nenable = true\n[instances.\"a b\"]\n").expect_err("name");
        assert!(e.contains("instance name"), "{e}");
        let e = check("[front]\nenable = true\n[instances.a]\nvram = 1\n").expect_err("key");
        assert!(e.contains("vram"), "{e}");
    }

    #[test]
    fn names_are_checked() {
        assert!(name_problem("gpu0").is_none());
        assert!(name_problem("a_b-c").is_none());
        assert!(name_problem("-a").is_some());
        assert!(name_problem("a/b").is_some());
        assert!(name_problem("").is_some());
        assert!(name_problem(&"a".repeat(33)).is_some());
    }
}
