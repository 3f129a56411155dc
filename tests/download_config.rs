//! `check-config` on the download form of model entries and `[downloads]`:
//! every problem reported with its position, the good forms accepted.

mod support;

use std::process::Command;

use support::BIN;

fn check(models: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let text = format!(
        "[ui]\nflavor = \"forge\"\ncommand = [\"/bin/true\"]\n[data]\ndir = \"/var/lib/x\"\n{models}"
    );
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&*path.to_string_lossy(), "c.toml");
    (out.status.success(), stderr)
}

#[test]
fn every_hash_spelling_and_loopback_http_are_accepted() {
    let (ok, err) = check(
        r#"[downloads]
max_concurrent = 4
[models.checkpoints]
"hex.safetensors" = { url = "https://civitai.com/api/download/models/1?type=Model", sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" }
"sri.safetensors" = { url = "https://huggingface.co/a/b/resolve/main/c.safetensors", sha256 = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", token_file = "/run/credentials/x.service/hf" }
"nix.safetensors" = { url = "http://127.0.0.1:8000/m", sha256 = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73", token_header = "X-Api-Key" }
"store.safetensors" = "/nix/store/aaaa-store.safetensors"
"#,
    );
    assert!(ok, "{err}");
}

#[test]
fn every_problem_is_reported_at_its_key() {
    let (ok, err) = check(
        r#"[downloads]
max_concurrent = 0
[models.checkpoints]
"a.safetensors" = { url = "http://example.com/m.bin", sha256 = "abc" }
"b.safetensors" = { url = "https://example.com/m.bin", sha256 = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73", token_file = "rel/tok" }
"c.safetensors" = { url = "https://example.com/m.bin", sha = "x" }
"d.safetensors" = 5
"e.safetensors" = { url = "ftp://example.com/m", sha256 = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee" }
"f.safetensors" = { url = "https://user:pw@example.com/m", sha256 = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73" }
[models.loras]
"e.safetensors" = { sha256 = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73", token_header = "bad header" }
"#,
    );
    assert!(!ok);
    let expected = [
        "c.toml:7:18: downloads.max_concurrent: 0 is out of range (1 to 64)",
        "c.toml:9:27: models.checkpoints.\"a.safetensors\".url: http is allowed only to a loopback host; use https",
        "c.toml:9:64: models.checkpoints.\"a.safetensors\".sha256: \"abc\" is not a SHA-256",
        "c.toml:10:134: models.checkpoints.\"b.safetensors\".token_file: \"rel/tok\" is not an absolute path",
        "c.toml:11:19: models.checkpoints.\"c.safetensors\": unknown field `sha`",
        "c.toml:12:19: models.checkpoints.\"d.safetensors\": a model is a path string or a { url, sha256 } table, not integer",
        "models.checkpoints.\"e.safetensors\".url: scheme \"ftp\" is not supported",
        "models.checkpoints.\"e.safetensors\".sha256: 'e' is not a Nix base32 character",
        "models.checkpoints.\"f.safetensors\".url: must not carry credentials; use token_file",
        "models.loras.\"e.safetensors\".url: required key is missing",
        "models.loras.\"e.safetensors\".token_header: \"bad header\" is not an HTTP header name",
    ];
    for line in expected {
        assert!(err.contains(line), "missing {line:?} in:\n{err}");
    }
}
