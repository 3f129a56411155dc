//! What differs between the supported UIs: their model folders, the arguments the
//! supervisor must pass, and how to read their readiness and queue endpoints.
//!
//! Everything here is pure data and parsing, so it is tested without a UI; the HTTP
//! calls themselves live in [`crate::ui::api`].

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The web UI being supervised. Each one has its own flags, folders and API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// lllyasviel's stable-diffusion-webui-forge.
    Forge,
    /// AUTOMATIC1111's stable-diffusion-webui.
    A1111,
    /// ComfyUI.
    Comfyui,
}

impl Flavor {
    /// Every flavor, for messages that list the choices.
    pub const ALL: [Flavor; 3] = [Flavor::Forge, Flavor::A1111, Flavor::Comfyui];

    /// The name used in the config file and in status lines.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Forge => "forge",
            Flavor::A1111 => "a1111",
            Flavor::Comfyui => "comfyui",
        }
    }

    /// Parses the config file spelling.
    pub fn parse(s: &str) -> Option<Flavor> {
        Flavor::ALL.into_iter().find(|f| f.name() == s)
    }

    /// The port the UI listens on when the config does not say.
    pub fn default_port(self) -> u16 {
        match self {
            Flavor::Forge | Flavor::A1111 => 7860,
            Flavor::Comfyui => 8188,
        }
    }

    /// Whether the UI has a live settings API (`/sdapi/v1/options`) and a `config.json`.
    pub fn has_options_api(self) -> bool {
        !matches!(self, Flavor::Comfyui)
    }

    /// Whether a SIGINT may be lost while the UI starts: Forge and A1111 lose one
    /// that lands while torch is imported (ui-apis.md §10), ComfyUI never did. The
    /// supervisor sends SIGINT again during the stop grace for these.
    pub fn may_lose_sigint(self) -> bool {
        !matches!(self, Flavor::Comfyui)
    }

    /// Whether the UI reads `--api-auth` and its other flags from `COMMANDLINE_ARGS`
    /// too (Forge and A1111 append it to `sys.argv` at import, ui-apis.md §7.1), so
    /// credentials can reach it without appearing in `/proc/PID/cmdline`.
    pub fn reads_commandline_args_env(self) -> bool {
        !matches!(self, Flavor::Comfyui)
    }

    /// Folder (relative to the data dir) that holds extensions or custom nodes.
    pub fn extensions_dir(self) -> &'static str {
        match self {
            Flavor::Forge | Flavor::A1111 => "extensions",
            Flavor::Comfyui => "custom_nodes",
        }
    }

    /// Folder (relative to the data dir) where a model kind goes, or `None` when the
    /// flavor has no such kind (the model-kind table in docs/design.md#the-config-file).
    pub fn model_dir(self, kind: ModelKind) -> Option<&'static str> {
        use ModelKind::*;
        let comfy = matches!(self, Flavor::Comfyui);
        Some(match kind {
            Checkpoints if comfy => "models/checkpoints",
            Checkpoints => "models/Stable-diffusion",
            Loras if comfy => "models/loras",
            Loras => "models/Lora",
            Vae if comfy => "models/vae",
            Vae => "models/VAE",
            Embeddings if comfy => "models/embeddings",
            Embeddings => "embeddings",
            Controlnet if comfy => "models/controlnet",
            Controlnet => "models/ControlNet",
            Upscalers if comfy => "models/upscale_models",
            Upscalers => "models/ESRGAN",
            Hypernetworks => "models/hypernetworks",
            TextEncoders if comfy => "models/text_encoders",
            TextEncoders if self == Flavor::Forge => "models/text_encoder",
            TextEncoders => return None,
            DiffusionModels if comfy => "models/diffusion_models",
            ClipVision if comfy => "models/clip_vision",
            DiffusionModels | ClipVision => return None,
        })
    }

    /// Every folder the UI needs before its first start: all model folders and the
    /// extensions folder (a real ComfyUI dies at start without `custom_nodes/`).
    pub fn required_dirs(self) -> Vec<&'static str> {
        let mut dirs: Vec<&'static str> = ModelKind::ALL
            .iter()
            .filter_map(|k| self.model_dir(*k))
            .collect();
        dirs.push(self.extensions_dir());
        dirs
    }

    /// Where `[settings]` are written, relative to the data dir.
    pub fn settings_file(self) -> &'static str {
        match self {
            Flavor::Forge | Flavor::A1111 => "config.json",
            Flavor::Comfyui => "user/default/comfy.settings.json",
        }
    }

    /// The arguments the supervisor itself must pass (docs/design.md#the-ui-process), before `extra_args`.
    pub fn managed_args(self, data_dir: &Path, port: u16, listen: bool) -> Vec<String> {
        let dir = data_dir.display().to_string();
        match self {
            Flavor::Forge | Flavor::A1111 => {
                let mut args = vec![
                    "--api".into(),
                    "--data-dir".into(),
                    dir,
                    "--port".into(),
                    port.to_string(),
                ];
                if listen {
                    args.push("--listen".into());
                } else {
                    args.extend(["--server-name".into(), "127.0.0.1".into()]);
                }
                args.extend(["--skip-prepare-environment".into(), "--skip-install".into()]);
                args
            }
            // Without --database-url ComfyUI keeps its database in its install dir
            // (read-only in the Nix store: "Failed to initialize database", ui-apis.md §9).
            Flavor::Comfyui => vec![
                "--base-directory".into(),
                dir,
                "--database-url".into(),
                format!("sqlite:///{}", data_dir.join("user/comfyui.db").display()),
                "--port".into(),
                port.to_string(),
                "--listen".into(),
                if listen { "0.0.0.0" } else { "127.0.0.1" }.into(),
            ],
        }
    }
}

impl Flavor {
    /// The arguments that give an instance its own folders for what the UI
    /// writes (docs/instances.md), after [`Flavor::managed_args`]: the later
    /// flag wins in both UIs' argparse.
    pub fn instance_args(self, dir: &Path) -> Vec<String> {
        let at = |rel: &str| dir.join(rel).display().to_string();
        match self {
            Flavor::Forge | Flavor::A1111 => vec![
                "--ui-settings-file".into(),
                at("config.json"),
                "--ui-config-file".into(),
                at("ui-config.json"),
            ],
            Flavor::Comfyui => vec![
                "--output-directory".into(),
                at("output"),
                // ComfyUI appends `temp/` itself (ui-apis.md).
                "--temp-directory".into(),
                dir.display().to_string(),
                "--database-url".into(),
                format!("sqlite:///{}", at("comfyui.db")),
            ],
        }
    }

    /// Folders of an instance's own that must exist before its UI starts,
    /// relative to its folder.
    pub fn instance_dirs(self) -> &'static [&'static str] {
        match self {
            Flavor::Forge | Flavor::A1111 => &["outputs"],
            Flavor::Comfyui => &["output", "temp"],
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A kind of model file, named as in `[models.<kind>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Full Stable Diffusion checkpoints.
    Checkpoints,
    /// LoRA networks.
    Loras,
    /// VAEs.
    Vae,
    /// Textual-inversion embeddings.
    Embeddings,
    /// ControlNet models.
    Controlnet,
    /// Upscaler models (ESRGAN family).
    Upscalers,
    /// Hypernetworks.
    Hypernetworks,
    /// Text encoders (Forge, ComfyUI).
    TextEncoders,
    /// Diffusion models without text encoder/VAE (ComfyUI).
    DiffusionModels,
    /// CLIP vision models (ComfyUI).
    ClipVision,
}

impl ModelKind {
    /// Every kind, in the order of the model-kind table in docs/design.md#the-config-file.
    pub const ALL: [ModelKind; 10] = [
        ModelKind::Checkpoints,
        ModelKind::Loras,
        ModelKind::Vae,
        ModelKind::Embeddings,
        ModelKind::Controlnet,
        ModelKind::Upscalers,
        ModelKind::Hypernetworks,
        ModelKind::TextEncoders,
        ModelKind::DiffusionModels,
        ModelKind::ClipVision,
    ];

    /// The config file spelling.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Checkpoints => "checkpoints",
            ModelKind::Loras => "loras",
            ModelKind::Vae => "vae",
            ModelKind::Embeddings => "embeddings",
            ModelKind::Controlnet => "controlnet",
            ModelKind::Upscalers => "upscalers",
            ModelKind::Hypernetworks => "hypernetworks",
            ModelKind::TextEncoders => "text_encoders",
            ModelKind::DiffusionModels => "diffusion_models",
            ModelKind::ClipVision => "clip_vision",
        }
    }

    /// Parses the config file spelling.
    pub fn parse(s: &str) -> Option<ModelKind> {
        ModelKind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The Forge/A1111 refresh endpoint that makes the UI see new files of this kind,
    /// if the kind needs one (ComfyUI rescans by itself).
    pub fn refresh_endpoint(self) -> Option<&'static str> {
        match self {
            ModelKind::Checkpoints => Some("/sdapi/v1/refresh-checkpoints"),
            ModelKind::Loras => Some("/sdapi/v1/refresh-loras"),
            ModelKind::Vae | ModelKind::TextEncoders => Some("/sdapi/v1/refresh-vae"),
            ModelKind::Embeddings => Some("/sdapi/v1/refresh-embeddings"),
            _ => None,
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forge_args_bind_loopback_and_skip_installs() {
        let args = Flavor::Forge.managed_args(Path::new("/var/lib/f"), 7860, false);
        assert_eq!(
            args,
            [
                "--api",
                "--data-dir",
                "/var/lib/f",
                "--port",
                "7860",
                "--server-name",
                "127.0.0.1",
                "--skip-prepare-environment",
                "--skip-install"
            ]
        );
        let listen = Flavor::A1111.managed_args(Path::new("/d"), 1, true);
        assert!(listen.contains(&"--listen".to_string()));
        assert!(!listen.contains(&"--server-name".to_string()));
    }

    #[test]
    fn comfyui_args_use_base_directory() {
        let args = Flavor::Comfyui.managed_args(Path::new("/c"), 8188, true);
        assert_eq!(
            args,
            [
                "--base-directory",
                "/c",
                "--database-url",
                "sqlite:////c/user/comfyui.db",
                "--port",
                "8188",
                "--listen",
                "0.0.0.0"
            ]
        );
    }

    #[test]
    fn model_dirs_follow_the_design_table() {
        assert_eq!(
            Flavor::Forge.model_dir(ModelKind::TextEncoders),
            Some("models/text_encoder")
        );
        assert_eq!(Flavor::A1111.model_dir(ModelKind::TextEncoders), None);
        assert_eq!(Flavor::Forge.model_dir(ModelKind::DiffusionModels), None);
        assert_eq!(
            Flavor::Comfyui.model_dir(ModelKind::Upscalers),
            Some("models/upscale_models")
        );
        assert_eq!(
            Flavor::A1111.model_dir(ModelKind::Embeddings),
            Some("embeddings")
        );
        assert!(Flavor::Comfyui.required_dirs().contains(&"custom_nodes"));
    }
}
