//! A small JSON Schema checker for the subset `docs/status.schema.json` uses:
//! `type` (one or several), `enum`, `properties`, `required`,
//! `additionalProperties` (bool or schema), `items`, `minimum`, `maximum`,
//! `anyOf` and local `$ref`s (`#/$defs/...`). Keywords it does not know fail the
//! check, so the schema cannot silently use more than is checked.

use serde_json::Value;

const KNOWN: &[&str] = &[
    "$schema",
    "$defs",
    "title",
    "description",
    "type",
    "enum",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minimum",
    "maximum",
    "anyOf",
    "$ref",
];

/// Every violation of `schema` by `doc`, as `path: problem` lines.
pub fn violations(schema: &Value, doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check(schema, schema, doc, "$", &mut out);
    out
}

fn check(root: &Value, schema: &Value, doc: &Value, at: &str, out: &mut Vec<String>) {
    let Some(s) = schema.as_object() else {
        out.push(format!("{at}: schema is not an object"));
        return;
    };
    for key in s.keys().filter(|k| !KNOWN.contains(&k.as_str())) {
        out.push(format!(
            "{at}: schema keyword {key:?} is not supported by this checker"
        ));
    }
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        match r
            .strip_prefix("#/$defs/")
            .and_then(|name| root["$defs"].get(name))
        {
            Some(target) => check(root, target, doc, at, out),
            None => out.push(format!("{at}: unresolvable $ref {r}")),
        }
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !types.iter().any(|t| has_type(doc, t)) {
            out.push(format!("{at}: {doc} is not of type {types:?}"));
            return;
        }
    }
    if let Some(choices) = s.get("enum").and_then(Value::as_array)
        && !choices.contains(doc)
    {
        out.push(format!("{at}: {doc} is not one of {choices:?}"));
    }
    if let Some(alternatives) = s.get("anyOf").and_then(Value::as_array) {
        let fits = alternatives.iter().any(|alt| {
            let mut sub = Vec::new();
            check(root, alt, doc, at, &mut sub);
            sub.is_empty()
        });
        if !fits {
            out.push(format!("{at}: {doc} matches none of anyOf"));
        }
    }
    if let Some(n) = doc.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64).filter(|m| n < *m) {
            out.push(format!("{at}: {n} is below the minimum {min}"));
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64).filter(|m| n > *m) {
            out.push(format!("{at}: {n} is above the maximum {max}"));
        }
    }
    if let (Some(items), Some(array)) = (s.get("items"), doc.as_array()) {
        for (i, item) in array.iter().enumerate() {
            check(root, items, item, &format!("{at}[{i}]"), out);
        }
    }
    if let Some(object) = doc.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for name in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = name.as_str().filter(|n| !object.contains_key(*n)) {
                out.push(format!("{at}: required field {name:?} is missing"));
            }
        }
        for (key, value) in object {
            let here = format!("{at}.{key}");
            match (
                props.and_then(|p| p.get(key)),
                s.get("additionalProperties"),
            ) {
                (Some(sub), _) => check(root, sub, value, &here, out),
                (None, Some(Value::Bool(false))) => {
                    out.push(format!("{here}: field is not in the schema"))
                }
                (None, Some(extra @ Value::Object(_))) => check(root, extra, value, &here, out),
                (None, _) => {}
            }
        }
    }
}

fn has_type(doc: &Value, t: &str) -> bool {
    match t {
        "null" => doc.is_null(),
        "boolean" => doc.is_boolean(),
        "string" => doc.is_string(),
        "array" => doc.is_array(),
        "object" => doc.is_object(),
        "number" => doc.is_number(),
        "integer" => doc.is_u64() || doc.is_i64(),
        _ => false,
    }
}
