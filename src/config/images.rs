//! `[images.<name>]`: pictures declared in the config, rendered by the running UI
//! (issue 15). Forge/A1111 images are txt2img parameters; ComfyUI images are an
//! API-format workflow file with per-input overrides.
//!
//! Kept apart from [`super::validate`] so the rest of the config needs only two
//! hooks: the raw section here, and one call after the typed config is built
//! (images refer to `[models.checkpoints]` and to the flavor).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use toml::Spanned;
use toml::de::{DeValue, ValueDeserializer};

use super::diagnostics::{At, Problem, Seg};
use super::validate::toml_to_json;
use crate::ui::flavor::{Flavor, ModelKind};

/// One `[images.<name>]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImage {
    prompt: Option<String>,
    negative_prompt: Option<String>,
    seed: Option<i64>,
    steps: Option<i64>,
    cfg_scale: Option<f64>,
    sampler_name: Option<String>,
    width: Option<i64>,
    height: Option<i64>,
    checkpoint: Option<String>,
    extra: Option<toml::Table>,
    workflow: Option<String>,
    inputs: Option<toml::Table>,
}

/// Keys that are txt2img parameters (Forge/A1111 only).
const TXT2IMG_KEYS: &[&str] = &[
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "cfg_scale",
    "sampler_name",
    "width",
    "height",
    "checkpoint",
    "extra",
];

/// What `extra` must not set: the named keys, and what the renderer relies on.
const EXTRA_RESERVED: &[&str] = &["send_images", "override_settings"];

/// A declared image: what to ask the UI for.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageConfig {
    /// Forge/A1111 `POST /sdapi/v1/txt2img`.
    Txt2img(Txt2img),
    /// ComfyUI `POST /prompt` with a workflow.
    Workflow(Workflow),
}

/// txt2img parameters (Forge/A1111).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Txt2img {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt; default empty.
    pub negative_prompt: String,
    /// The seed; -1 lets the UI choose once (the sidecar records it).
    pub seed: i64,
    /// Sampling steps.
    pub steps: u32,
    /// Classifier-free guidance scale.
    pub cfg_scale: f64,
    /// Sampler; `None` = the UI's default.
    pub sampler_name: Option<String>,
    /// Width in pixels (a multiple of 8).
    pub width: u32,
    /// Height in pixels (a multiple of 8).
    pub height: u32,
    /// A file name declared in `[models.checkpoints]`; `None` = the UI's current one.
    pub checkpoint: Option<String>,
    /// Further txt2img fields, passed through unchanged.
    pub extra: Map<String, Value>,
}

/// A ComfyUI workflow with overrides.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workflow {
    /// The API-format JSON file ("Export (API)").
    pub workflow: PathBuf,
    /// The overrides, `"<node id>.<input>"` → value.
    pub inputs: BTreeMap<String, Value>,
    /// The workflow as read, with `inputs` applied: what is sent.
    pub graph: Map<String, Value>,
}

/// Reads the `[images]` section table by table, so one bad image does not hide
/// the problems of the next.
pub(super) fn parse_raw(
    value: Spanned<DeValue<'_>>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, RawImage> {
    let mut out = BTreeMap::new();
    let DeValue::Table(table) = value.into_inner() else {
        return out;
    };
    for (key, value) in table {
        let name = key.get_ref().to_string();
        if !value.get_ref().is_table() {
            problems.push(Problem::new(
                ["images", name.as_str()],
                At::Value,
                "must be a table of image parameters".into(),
            ));
            continue;
        }
        let span = value.span();
        match RawImage::deserialize(ValueDeserializer::from(value)) {
            Ok(raw) => {
                out.insert(name, raw);
            }
            Err(e) => problems.push(Problem::serde(
                "images",
                e.message(),
                e.span().or(Some(span)),
            )),
        }
    }
    out
}

/// Validates every declared image against the flavor and the declared models.
pub(super) fn validate(
    raw: BTreeMap<String, RawImage>,
    flavor: Flavor,
    models: &BTreeMap<ModelKind, BTreeMap<String, PathBuf>>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, ImageConfig> {
    let mut out = BTreeMap::new();
    for (name, raw) in raw {
        let mut c = ImageChecker {
            name: &name,
            problems,
        };
        c.plain_name();
        let image = if flavor.has_options_api() {
            c.txt2img(raw, models).map(ImageConfig::Txt2img)
        } else {
            c.workflow(raw).map(ImageConfig::Workflow)
        };
        if let Some(image) = image {
            out.insert(name, image);
        }
    }
    out
}

struct ImageChecker<'a> {
    name: &'a str,
    problems: &'a mut Vec<Problem>,
}

impl ImageChecker<'_> {
    fn at(&mut self, keys: &[&str], at: At, msg: impl Into<String>) {
        let mut path: Vec<Seg> = vec!["images".into(), self.name.into()];
        path.extend(keys.iter().map(|k| Seg::from(*k)));
        self.problems.push(Problem::new(path, at, msg.into()));
    }

    /// The name becomes `<name>.png` and `<name>.json`.
    fn plain_name(&mut self) {
        let n = self.name;
        let ok = !n.is_empty()
            && !n.starts_with(['.', '-'])
            && n.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'));
        if !ok {
            self.at(
                &[],
                At::Key,
                "image name must be letters, digits, '-', '_' or '.' (it becomes <name>.png), not starting with '.' or '-'",
            );
        }
    }

    fn txt2img(
        &mut self,
        raw: RawImage,
        models: &BTreeMap<ModelKind, BTreeMap<String, PathBuf>>,
    ) -> Option<Txt2img> {
        for (key, set) in [
            ("workflow", raw.workflow.is_some()),
            ("inputs", raw.inputs.is_some()),
        ] {
            if set {
                self.at(
                    &[key],
                    At::Key,
                    "is for ComfyUI workflows; forge and a1111 images take txt2img parameters",
                );
            }
        }
        let prompt = match raw.prompt {
            Some(p) if !p.trim().is_empty() => Some(p),
            Some(_) => {
                self.at(&["prompt"], At::Value, "must not be empty");
                None
            }
            None => {
                self.at(&["prompt"], At::Value, "required key is missing");
                None
            }
        };
        let seed = raw.seed.unwrap_or(-1);
        if !(-1..=i64::from(u32::MAX)).contains(&seed) {
            self.at(
                &["seed"],
                At::Value,
                format!("{seed} is not a seed (0 to 4294967295, or -1 for one chosen by the UI)"),
            );
        }
        let steps = self.count("steps", raw.steps.unwrap_or(20), 1, 1000);
        let width = self.size("width", raw.width.unwrap_or(512));
        let height = self.size("height", raw.height.unwrap_or(512));
        let cfg_scale = raw.cfg_scale.unwrap_or(7.0);
        if !(cfg_scale.is_finite() && (0.0..=100.0).contains(&cfg_scale)) {
            self.at(&["cfg_scale"], At::Value, "must be between 0 and 100");
        }
        if let Some(ckpt) = &raw.checkpoint {
            let declared = models.get(&ModelKind::Checkpoints);
            if !declared.is_some_and(|m| m.contains_key(ckpt)) {
                let known: Vec<&str> = declared
                    .map(|m| m.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let known = if known.is_empty() {
                    "none are declared".to_string()
                } else {
                    format!("declared: {}", known.join(", "))
                };
                self.at(
                    &["checkpoint"],
                    At::Value,
                    format!("{ckpt:?} is not in [models.checkpoints] ({known})"),
                );
            }
        }
        let extra: Map<String, Value> = raw
            .extra
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, toml_to_json(v)))
            .collect();
        for key in extra.keys() {
            if TXT2IMG_KEYS.contains(&key.as_str()) || EXTRA_RESERVED.contains(&key.as_str()) {
                self.at(
                    &["extra", key],
                    At::Key,
                    if key == "override_settings" {
                        "is set by the supervisor (the checkpoint goes in images.<name>.checkpoint)"
                            .to_string()
                    } else if EXTRA_RESERVED.contains(&key.as_str()) {
                        "is set by the supervisor (it needs the picture back)".to_string()
                    } else {
                        format!("set images.{}.{key} directly, not in extra", self.name)
                    },
                );
            }
        }
        Some(Txt2img {
            prompt: prompt?,
            negative_prompt: raw.negative_prompt.unwrap_or_default(),
            seed,
            steps: steps?,
            cfg_scale,
            sampler_name: raw.sampler_name,
            width: width?,
            height: height?,
            checkpoint: raw.checkpoint,
            extra,
        })
    }

    fn count(&mut self, key: &str, v: i64, min: i64, max: i64) -> Option<u32> {
        if (min..=max).contains(&v) {
            u32::try_from(v).ok()
        } else {
            self.at(
                &[key],
                At::Value,
                format!("{v} is out of range ({min}–{max})"),
            );
            None
        }
    }

    fn size(&mut self, key: &str, v: i64) -> Option<u32> {
        let n = self.count(key, v, 64, 8192)?;
        if n % 8 != 0 {
            self.at(
                &[key],
                At::Value,
                format!("{n} is not a multiple of 8 (the UIs round it down)"),
            );
            return None;
        }
        Some(n)
    }

    fn workflow(&mut self, raw: RawImage) -> Option<Workflow> {
        let set = [
            ("prompt", raw.prompt.is_some()),
            ("negative_prompt", raw.negative_prompt.is_some()),
            ("seed", raw.seed.is_some()),
            ("steps", raw.steps.is_some()),
            ("cfg_scale", raw.cfg_scale.is_some()),
            ("sampler_name", raw.sampler_name.is_some()),
            ("width", raw.width.is_some()),
            ("height", raw.height.is_some()),
            ("checkpoint", raw.checkpoint.is_some()),
            ("extra", raw.extra.is_some()),
        ];
        for (key, _) in set.iter().filter(|(_, s)| *s) {
            self.at(
                &[key],
                At::Key,
                "is a txt2img parameter (forge, a1111); a comfyui image sets it in its workflow or inputs",
            );
        }
        let Some(file) = raw.workflow else {
            self.at(
                &["workflow"],
                At::Value,
                "required key is missing (an API-format workflow JSON file)",
            );
            return None;
        };
        let path = PathBuf::from(&file);
        if !path.is_absolute() {
            self.at(
                &["workflow"],
                At::Value,
                format!("{file:?} is not an absolute path"),
            );
            return None;
        }
        let mut graph = match read_graph(&path) {
            Ok(g) => g,
            Err(why) => {
                self.at(&["workflow"], At::Value, why);
                return None;
            }
        };
        let mut inputs = BTreeMap::new();
        for (key, value) in raw.inputs.unwrap_or_default() {
            match (key.split_once('.'), value) {
                (Some((node, input)), value) => {
                    let value = toml_to_json(value);
                    if self.set_input(&mut graph, &[&key], node, input, value.clone()) {
                        inputs.insert(key, value);
                    }
                }
                (None, toml::Value::Table(per_node)) => {
                    for (input, value) in per_node {
                        let value = toml_to_json(value);
                        if self.set_input(&mut graph, &[&key, &input], &key, &input, value.clone())
                        {
                            inputs.insert(format!("{key}.{input}"), value);
                        }
                    }
                }
                (None, _) => self.at(
                    &["inputs", &key],
                    At::Key,
                    "must name a node and its input: \"<node id>.<input>\" = value",
                ),
            }
        }
        Some(Workflow {
            workflow: path,
            inputs,
            graph,
        })
    }

    /// Applies one override; reports a node or input the workflow lacks.
    fn set_input(
        &mut self,
        graph: &mut Map<String, Value>,
        keys: &[&str],
        node: &str,
        input: &str,
        value: Value,
    ) -> bool {
        let mut path = vec!["inputs"];
        path.extend_from_slice(keys);
        let Some(found) = graph.get_mut(node) else {
            let mut ids: Vec<&String> = graph.keys().collect();
            ids.sort();
            let ids: Vec<&str> = ids.into_iter().map(String::as_str).collect();
            self.at(
                &path,
                At::Key,
                format!(
                    "the workflow has no node {node:?} (its nodes: {})",
                    ids.join(", ")
                ),
            );
            return false;
        };
        let class = found
            .get("class_type")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let Some(inputs) = found.get_mut("inputs").and_then(Value::as_object_mut) else {
            return false;
        };
        if !inputs.contains_key(input) {
            let names: Vec<&str> = inputs.keys().map(String::as_str).collect();
            self.at(
                &path,
                At::Key,
                format!(
                    "node {node} ({class}) has no input {input:?} (it has: {})",
                    names.join(", ")
                ),
            );
            return false;
        }
        inputs.insert(input.to_string(), value);
        true
    }
}

/// Reads an API-format workflow: `{"<id>": {"class_type": …, "inputs": {…}}, …}`.
fn read_graph(path: &Path) -> Result<Map<String, Value>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let Value::Object(graph) = value else {
        return Err(format!("{} is not a JSON object", path.display()));
    };
    if graph.contains_key("nodes") && graph.contains_key("links") {
        return Err(format!(
            "{} is a UI-format workflow; export it with \"Export (API)\"",
            path.display()
        ));
    }
    if graph.is_empty() {
        return Err(format!("{} has no nodes", path.display()));
    }
    for (id, node) in &graph {
        let ok = node.get("class_type").is_some_and(Value::is_string)
            && node.get("inputs").is_some_and(Value::is_object);
        if !ok {
            return Err(format!(
                "{}: node {id:?} has no \"class_type\" and \"inputs\"; is this an API-format workflow (\"Export (API)\")?",
                path.display()
            ));
        }
    }
    Ok(graph)
}
