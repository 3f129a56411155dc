//! Merging the managed `[settings]` into the UI's own settings file.
//!
//! The file belongs to the UI and the user; the supervisor only enforces its
//! managed keys. Every other key keeps its position and its value *as written*
//! (numbers, escapes and nested formatting untouched), because the file is read
//! as raw JSON slices, not re-encoded values.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// What a merge decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Merge {
    /// Every managed key already has its declared value: write nothing.
    Unchanged,
    /// Write `contents`; `keys` are the managed keys that changed.
    Write {
        contents: Vec<u8>,
        keys: Vec<String>,
    },
}

/// The top-level members of an object in file order, values as raw slices.
/// A repeated key keeps its first position and its last value, as the UIs'
/// Python `json.load` does.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Members, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members: Vec<(String, Box<RawValue>)> = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
                    match members.iter_mut().find(|(k, _)| *k == key) {
                        Some(slot) => slot.1 = value,
                        None => members.push((key, value)),
                    }
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

/// Whether `bytes` are a JSON object, the only settings file [`merge`] accepts.
pub(crate) fn is_object(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Members>(bytes).is_ok()
}

/// Merges `managed` into the file's current bytes (`None`: no file yet).
///
/// `Err` carries why the bytes are not a JSON object; the caller sets the file
/// aside and starts from an empty object.
pub(crate) fn merge(
    existing: Option<&[u8]>,
    managed: &Map<String, Value>,
) -> Result<Merge, String> {
    let mut members = match existing {
        None => Vec::new(),
        Some(bytes) => {
            serde_json::from_slice::<Members>(bytes)
                .map_err(|e| e.to_string())?
                .0
        }
    };
    let mut keys = Vec::new();
    for (key, value) in managed {
        let slot = members.iter().position(|(k, _)| k == key);
        let same = |raw: &RawValue| {
            serde_json::from_str::<Value>(raw.get())
                .is_ok_and(|v| crate::ui::settings_sync::same(&v, value))
        };
        if slot.is_some_and(|i| same(&members[i].1)) {
            continue;
        }
        // A `Value` always serializes (its keys are strings, its numbers finite).
        let Ok(raw) = serde_json::value::to_raw_value(value) else {
            continue;
        };
        match slot {
            Some(i) => members[i].1 = raw,
            None => members.push((key.clone(), raw)),
        }
        keys.push(key.clone());
    }
    if keys.is_empty() && existing.is_some() {
        return Ok(Merge::Unchanged);
    }
    Ok(Merge::Write {
        contents: render(&members),
        keys,
    })
}

/// The layout the UIs write themselves (`json.dump(indent=4)`), so a diff of the
/// file after a merge shows only the managed keys.
fn render(members: &[(String, Box<RawValue>)]) -> Vec<u8> {
    if members.is_empty() {
        return b"{}".to_vec();
    }
    let mut out = String::from("{\n");
    for (i, (key, raw)) in members.iter().enumerate() {
        if i > 0 {
            out.push_str(",\n");
        }
        out.push_str("    ");
        out.push_str(&serde_json::to_string(key).unwrap_or_else(|_| "\"\"".into()));
        out.push_str(": ");
        out.push_str(raw.get());
    }
    out.push_str("\n}");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn managed(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn other_keys_keep_their_bytes_and_order() {
        let old = br#"{"z": 1.0e-5, "sd_model_checkpoint": "old.ckpt", "big": 123456789012345678901234567890, "s": "\u00e9", "n": {"a":  [1, 2]}}"#;
        let m = managed(
            json!({"sd_model_checkpoint": "new.safetensors", "CLIP_stop_at_last_layers": 2}),
        );
        let Ok(Merge::Write { contents, keys }) = merge(Some(old), &m) else {
            panic!("expected a write");
        };
        assert_eq!(keys, ["CLIP_stop_at_last_layers", "sd_model_checkpoint"]);
        let text = String::from_utf8(contents).unwrap();
        assert_eq!(
            text,
            "{\n    \"z\": 1.0e-5,\n    \"sd_model_checkpoint\": \"new.safetensors\",\n    \"big\": 123456789012345678901234567890,\n    \"s\": \"\\u00e9\",\n    \"n\": {\"a\":  [1, 2]},\n    \"CLIP_stop_at_last_layers\": 2\n}"
        );
        assert_eq!(merge(Some(text.as_bytes()), &m), Ok(Merge::Unchanged));
    }

    #[test]
    fn a_missing_file_gets_the_managed_keys() {
        let m = managed(json!({"a": true}));
        assert_eq!(
            merge(None, &m),
            Ok(Merge::Write {
                contents: b"{\n    \"a\": true\n}".to_vec(),
                keys: vec!["a".into()]
            })
        );
    }

    #[test]
    fn not_an_object_is_corrupt() {
        let m = managed(json!({"a": 1}));
        assert!(merge(Some(b"{\"a\": 1,"), &m).is_err());
        assert!(merge(Some(b"[1]"), &m).is_err());
        assert!(merge(Some(b""), &m).is_err());
        assert!(merge(Some(b"{\"a\": NaN}"), &m).is_err());
    }

    #[test]
    fn repeated_keys_keep_first_place_last_value() {
        let m = managed(json!({"a": 2}));
        assert_eq!(
            merge(Some(br#"{"a": 1, "b": 0, "a": 2}"#), &m),
            Ok(Merge::Unchanged)
        );
    }
}
