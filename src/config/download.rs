//! Models fetched at run time: the `{ url, sha256, token_file, token_header }`
//! form of a `[models.<kind>]` entry and the `[downloads]` section.
//!
//! Kept apart from [`super::validate`] so that the download rules (URL schemes,
//! the three spellings of a SHA-256, token files) live in one place; validation
//! only calls [`download`] and [`downloads_section`].

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::limits;

/// One `[models.<kind>]` value as written: a target path, or a download table.
#[derive(Debug)]
pub enum RawModel {
    /// `"name" = "/nix/store/…"`.
    Path(String),
    /// `"name" = { url = "…", sha256 = "…" }`.
    Download(RawDownload),
    /// Neither: the message, reported at the entry by validation (so one bad
    /// entry does not hide the problems of the others).
    Invalid(String),
}

/// By hand rather than `untagged`, so a wrong key in a download table is
/// named instead of "did not match any variant".
impl<'de> Deserialize<'de> for RawModel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match toml::Value::deserialize(d)? {
            toml::Value::String(s) => RawModel::Path(s),
            table @ toml::Value::Table(_) => match RawDownload::deserialize(table) {
                Ok(raw) => RawModel::Download(raw),
                Err(e) => RawModel::Invalid(e.message().to_string()),
            },
            other => RawModel::Invalid(format!(
                "a model is a path string or a {{ url, sha256 }} table, not {}",
                other.type_str()
            )),
        })
    }
}

/// A download table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDownload {
    pub url: Option<String>,
    pub sha256: Option<String>,
    pub token_file: Option<String>,
    pub token_header: Option<String>,
}

/// `[downloads]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDownloads {
    pub max_concurrent: Option<i64>,
}

/// Keys of `[downloads]`, for the unknown-key message.
pub const DOWNLOADS_KEYS: &[&str] = &["max_concurrent"];

/// Default for `downloads.max_concurrent`: two streams keep a fast link busy
/// without starving the UI of disk bandwidth.
pub const DEFAULT_MAX_CONCURRENT: usize = 2;

/// A SHA-256 digest: the name of a cached download and what it is checked against.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// Lower-case hex, the cache file's name.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses SRI (`sha256-<base64>`), 64 hex digits, or Nix base32 (52 chars).
    pub fn parse(text: &str) -> Result<Sha256, String> {
        let bytes = if let Some(b64) = text.strip_prefix("sha256-") {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| "the SRI hash after \"sha256-\" is not valid base64".to_string())?
        } else if text.len() == 64 {
            hex::decode(text).map_err(|_| "64 characters but not hex digits".to_string())?
        } else if text.len() == NIX32_LEN {
            nix32_decode(text)?.to_vec()
        } else {
            return Err(format!(
                "{text:?} is not a SHA-256: write \"sha256-<base64>\" (SRI), 64 hex digits, or 52 Nix base32 characters"
            ));
        };
        let digest: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "the SRI hash is not 32 bytes long".to_string())?;
        Ok(Sha256(digest))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

/// Nix's base32 alphabet (no e, o, u, t).
const NIX32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
/// Characters of a SHA-256 in Nix base32: ceil(256 / 5).
const NIX32_LEN: usize = 52;

/// Encodes as Nix base32: character `i` from the end holds bits `5i..5i+5`
/// of the digest read as a little-endian number.
pub fn nix32_encode(bytes: &[u8; 32]) -> String {
    (0..NIX32_LEN)
        .rev()
        .map(|n| {
            let b = n * 5;
            let (i, j) = (b / 8, b % 8);
            let lo = u16::from(bytes[i]) >> j;
            let hi = bytes.get(i + 1).map_or(0, |&h| u16::from(h) << (8 - j));
            char::from(NIX32[usize::from((lo | hi) & 0x1f)])
        })
        .collect()
}

/// Decodes Nix base32; rejects characters outside the alphabet and set bits
/// beyond the 256th.
fn nix32_decode(text: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    for (pos, c) in text.bytes().enumerate() {
        let digit = NIX32
            .iter()
            .position(|&a| a == c)
            .ok_or_else(|| format!("{:?} is not a Nix base32 character", char::from(c)))?;
        let digit = digit as u16; // < 32
        let n = NIX32_LEN - 1 - pos;
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let shifted = digit << j;
        out[i] |= (shifted & 0xff) as u8;
        let carry = (shifted >> 8) as u8;
        match out.get_mut(i + 1) {
            Some(next) => *next |= carry,
            None if carry != 0 => return Err("the Nix base32 hash is out of range".into()),
            None => {}
        }
    }
    Ok(out)
}

/// A model fetched at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Download {
    /// Where to fetch it (https, or http to a loopback host).
    pub url: String,
    /// What the file must hash to; also its name in the cache.
    pub sha256: Sha256,
    /// File holding the token, read when needed and sent to the URL's host only.
    pub token_file: Option<PathBuf>,
    /// Header carrying the token; `Authorization` sends `Bearer <token>`.
    pub token_header: String,
}

/// The default `token_header`.
pub const DEFAULT_TOKEN_HEADER: &str = "Authorization";

/// Where finished downloads live, relative to the data dir: inside the
/// supervisor's own folder, so the UI never lists a half file.
pub const CACHE_DIR: &str = ".sd-webui-supervisor/downloads";

/// The cached file of a digest under `data_dir`: what the model link points at.
pub fn cache_path(data_dir: &Path, sha256: &Sha256) -> PathBuf {
    data_dir.join(CACHE_DIR).join(sha256.hex())
}

/// Checks a download table; problems are `(key, message)` pairs.
pub fn download(raw: RawDownload) -> Result<Download, Vec<(&'static str, String)>> {
    let mut problems = Vec::new();
    let url = match raw.url.as_deref() {
        None => {
            problems.push(("url", "required key is missing".to_string()));
            None
        }
        Some(text) => check_url(text).map_err(|m| problems.push(("url", m))).ok(),
    };
    let sha256 = match raw.sha256.as_deref() {
        None => {
            problems.push(("sha256", "required key is missing".to_string()));
            None
        }
        Some(text) => Sha256::parse(text)
            .map_err(|m| problems.push(("sha256", m)))
            .ok(),
    };
    let token_file = raw.token_file.map(|text| {
        if let Some(why) = check_token_file(&text) {
            problems.push(("token_file", why));
        }
        PathBuf::from(text)
    });
    let token_header = raw
        .token_header
        .unwrap_or_else(|| DEFAULT_TOKEN_HEADER.to_string());
    if reqwest::header::HeaderName::from_bytes(token_header.as_bytes()).is_err() {
        problems.push((
            "token_header",
            format!("{token_header:?} is not an HTTP header name"),
        ));
    }
    match (url, sha256) {
        (Some(url), Some(sha256)) if problems.is_empty() => Ok(Download {
            url,
            sha256,
            token_file,
            token_header,
        }),
        _ => Err(problems),
    }
}

/// The same rules as every other path the config hands to the kernel.
fn check_token_file(text: &str) -> Option<String> {
    if text.is_empty() {
        Some("must not be empty".into())
    } else if text.contains('\0') {
        Some("must not contain a NUL byte".into())
    } else if !text.starts_with('/') {
        Some(format!("{text:?} is not an absolute path"))
    } else {
        limits::path(text)
    }
}

/// https anywhere; http only to a loopback host (a token or a model must not
/// cross a network in clear); no credentials in the URL itself.
fn check_url(text: &str) -> Result<String, String> {
    if text.contains('\0') {
        return Err("must not contain a NUL byte".into());
    }
    if text.len() > limits::URL_MAX {
        return Err(format!(
            "is {} bytes long; at most {} (servers refuse longer request lines)",
            text.len(),
            limits::URL_MAX
        ));
    }
    let url = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials; use token_file".into());
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => return Err("http is allowed only to a loopback host; use https".into()),
        other => return Err(format!("scheme {other:?} is not supported; use https")),
    }
    if url.host().is_none() {
        return Err("has no host".into());
    }
    Ok(url.into())
}

/// Whether the URL's host is this machine.
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Checks `[downloads]`; returns `max_concurrent`.
pub fn downloads_section(raw: &RawDownloads) -> Result<usize, String> {
    match raw.max_concurrent {
        None => Ok(DEFAULT_MAX_CONCURRENT),
        Some(n @ 1..=64) => usize::try_from(n).map_err(|_| "out of range".to_string()),
        Some(n) => Err(format!("{n} is out of range (1 to 64)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files() {
        assert_eq!(check_token_file("/run/credentials/x/civitai"), None);
        assert!(check_token_file("").is_some());
        assert!(check_token_file("relative/token").is_some());
        assert!(check_token_file("/run/t\0k").is_some());
        assert!(check_token_file(&format!("/{}", "a".repeat(256))).is_some());
        assert!(check_token_file(&format!("/a{}", "/a".repeat(2048))).is_some());
    }

    /// (sha256 hex, `nix-hash --type sha256 --to-base32` of it), for "",
    /// "abc" and "hello world\n".
    const PAIRS: &[(&str, &str)] = &[
        (
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
        ),
        (
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
        ),
        (
            "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447",
            "0ix4jahrkll5zg01wandq78jw3ab30q4nscph67rniqg5x7r0j59",
        ),
    ];

    #[test]
    fn nix_base32_matches_nix_hash() {
        for (hex, nix) in PAIRS {
            let h = Sha256::parse(hex).unwrap();
            assert_eq!(nix32_encode(&h.0), *nix);
            assert_eq!(Sha256::parse(nix).unwrap(), h, "{nix}");
        }
    }

    #[test]
    fn sri_and_hex_agree() {
        let sri = "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=";
        assert_eq!(
            Sha256::parse(sri).unwrap(),
            Sha256::parse(PAIRS[1].0).unwrap()
        );
    }

    #[test]
    fn bad_hashes_are_refused() {
        assert!(Sha256::parse("sha256-abc").is_err());
        assert!(Sha256::parse(&"g".repeat(64)).is_err());
        // 'e' is not in the Nix alphabet.
        assert!(Sha256::parse(&"e".repeat(52)).is_err());
        // The top character may carry only one bit (256 = 51*5 + 1).
        assert!(Sha256::parse(&format!("z{}", "0".repeat(51))).is_err());
        assert!(Sha256::parse("abcd").is_err());
    }

    #[test]
    fn urls() {
        assert!(check_url("https://civitai.com/api/download/models/1?x=1").is_ok());
        assert!(check_url("http://127.0.0.1:8080/m").is_ok());
        assert!(check_url("http://localhost/m").is_ok());
        assert!(check_url("http://[::1]/m").is_ok());
        assert!(check_url("http://example.com/m").is_err());
        assert!(check_url("ftp://example.com/m").is_err());
        assert!(check_url("https://user:pw@example.com/m").is_err());
        assert!(check_url("not a url").is_err());
        assert!(check_url("https://example.com/m\0").is_err());
        let long = format!("https://example.com/{}", "a".repeat(limits::URL_MAX));
        assert!(check_url(&long).is_err());
        let fits = format!("https://example.com/{}", "a".repeat(limits::URL_MAX - 21));
        assert!(check_url(&fits).is_ok());
    }
}
