//! `check-config` on ComfyUI images, whose checks read the workflow file: a node
//! or input the workflow lacks, a UI-format export, and a good one. The corpus
//! in `tests/config` cannot hold these (paths must be absolute), so each test
//! writes its workflow and config into a temporary folder.

use std::fs;
use std::path::Path;
use std::process::Command;

const WORKFLOW: &str = r#"{
  "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
  "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
  "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "declared"}}
}"#;

/// Runs check-config on `images` (the `[images…]` part) with the workflow in
/// `wf.json`; returns (exit code, stderr with the config path as `FILE`).
fn check(dir: &Path, workflow: &str, images: &str) -> (i32, String) {
    fs::write(dir.join("wf.json"), workflow).expect("write workflow");
    let config = format!(
        "[ui]\nflavor = \"comfyui\"\ncommand = [\"/bin/comfyui\"]\n\n[data]\ndir = \"{}/data\"\n\n{}",
        dir.display(),
        images.replace("WF", &dir.join("wf.json").display().to_string())
    );
    let file = dir.join("c.toml");
    fs::write(&file, config).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_sd-webui-supervisor"))
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&file.display().to_string(), "FILE");
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn overrides_must_name_nodes_and_inputs_the_workflow_has() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, err) = check(
        dir.path(),
        WORKFLOW,
        "[images.blur]\nworkflow = \"WF\"\ninputs = { \"1.color\" = 255, \"9.seed\" = 1, \"2.sigmaa\" = 2.0 }\n\
         [images.other]\nworkflow = \"WF\"\n\
         [images.other.inputs.\"2\"]\nradius = 3\n",
    );
    assert_eq!(code, 1, "{err}");
    let want = [
        "FILE:10:29: images.blur.inputs.\"9.seed\": the workflow has no node \"9\" (its nodes: 1, 2, 3)",
        "FILE:10:43: images.blur.inputs.\"2.sigmaa\": node 2 (ImageBlur) has no input \"sigmaa\" (it has: blur_radius, image, sigma)",
        "FILE:14:1: images.other.inputs.2.radius: node 2 (ImageBlur) has no input \"radius\" (it has: blur_radius, image, sigma)",
    ];
    assert_eq!(err.lines().collect::<Vec<_>>(), want, "{err}");
}

#[test]
fn a_ui_format_or_broken_workflow_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, err) = check(
        dir.path(),
        r#"{"nodes": [], "links": [], "version": 0.4}"#,
        "[images.blur]\nworkflow = \"WF\"\n",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("images.blur.workflow:")
            && err.contains("is a UI-format workflow; export it with \"Export (API)\""),
        "{err}"
    );
    let (code, err) = check(dir.path(), "{\"1\": ", "[images.blur]\nworkflow = \"WF\"\n");
    assert_eq!(code, 1);
    assert!(err.contains("is not JSON"), "{err}");
}

#[test]
fn a_good_workflow_image_passes_silently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, err) = check(
        dir.path(),
        WORKFLOW,
        "[images.blur]\nworkflow = \"WF\"\ninputs = { \"1.color\" = 16711680, \"2.blur_radius\" = 4 }\n",
    );
    assert_eq!((code, err.as_str()), (0, ""));
}
