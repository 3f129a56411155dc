//! The fingerprint of a declared image: a SHA-256 over its declaration and the
//! targets of the models it uses. It changes exactly when the picture would
//! (new prompt, seed, workflow, or a model file swapped for another), so a restart
//! or a no-op reload renders nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::config::{Config, ImageConfig};
use crate::ui::flavor::ModelKind;

/// The models an image uses: `kind/name` → target. Forge/A1111: its checkpoint.
/// ComfyUI: every declared model whose file name appears as an input value in
/// the graph (that is how a workflow names its models).
pub fn models_used(config: &Config, image: &ImageConfig) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    match image {
        ImageConfig::Txt2img(t) => {
            if let Some((name, target)) = t.checkpoint.as_ref().and_then(|c| {
                config
                    .models
                    .get(&ModelKind::Checkpoints)
                    .and_then(|m| m.get_key_value(c))
            }) {
                out.insert(format!("checkpoints/{name}"), target.clone());
            }
        }
        ImageConfig::Workflow(w) => {
            let mut strings = Vec::new();
            for node in w.graph.values() {
                if let Some(inputs) = node.get("inputs").and_then(Value::as_object) {
                    strings.extend(inputs.values().filter_map(Value::as_str));
                }
            }
            for (kind, files) in &config.models {
                for (name, target) in files {
                    if strings.contains(&name.as_str()) {
                        out.insert(format!("{}/{name}", kind.name()), target.clone());
                    }
                }
            }
        }
    }
    out
}

/// Hex SHA-256 of the declaration and the targets of the models it uses.
/// serde_json's maps are sorted, so the text hashed is canonical.
pub fn fingerprint(config: &Config, image: &ImageConfig) -> String {
    let text = json!({
        "declaration": declaration(image),
        "models": models_used(config, image),
    })
    .to_string();
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest.as_ref() {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// What is rendered: for a workflow the graph sent, not the file's path (the
/// same workflow moved to another store path is the same picture).
pub fn declaration(image: &ImageConfig) -> Value {
    match image {
        ImageConfig::Txt2img(t) => json!({ "txt2img": t }),
        ImageConfig::Workflow(w) => json!({ "workflow": w.graph }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(seed: i64, target: &str) -> Config {
        let text = format!(
            "[ui]\nflavor = \"forge\"\ncommand = [\"/bin/ui\"]\n[data]\ndir = \"/d\"\n\
             [models.checkpoints]\n\"a.safetensors\" = \"{target}\"\n\
             [images.cat]\nprompt = \"a cat\"\nseed = {seed}\ncheckpoint = \"a.safetensors\"\n"
        );
        match Config::parse(Path::new("t.toml"), &text) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    fn of(c: &Config) -> String {
        fingerprint(c, &c.images["cat"])
    }

    #[test]
    fn same_declaration_same_fingerprint() {
        assert_eq!(of(&config(1, "/m/a")), of(&config(1, "/m/a")));
        assert_eq!(of(&config(1, "/m/a")).len(), 64);
    }

    #[test]
    fn seed_and_model_target_change_it() {
        let base = of(&config(1, "/m/a"));
        assert_ne!(base, of(&config(2, "/m/a")));
        assert_ne!(base, of(&config(1, "/m/b")));
    }
}
