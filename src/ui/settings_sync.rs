//! Managed settings and the UI: one rule for when two setting values are the same
//! ([`same`]: JSON `2` and `2.0` are one value), used when the config is diffed on
//! reload (`config/diff.rs`), when `config.json` is merged (`layout/settings.rs`)
//! and when the running UI is brought in line at start and on reload ([`sync`]).

use serde_json::{Map, Value};

use super::api::Probe;

/// Whether two setting values are the same setting: equal JSON, or numbers of
/// equal value (`2` and `2.0`; the UIs read both as the same float).
pub fn same(a: &Value, b: &Value) -> bool {
    a == b || matches!((a.as_f64(), b.as_f64()), (Some(x), Some(y)) if x == y)
}

/// What to send to a running UI.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Settings the UI knows and holds at another value.
    pub send: Map<String, Value>,
    /// Settings the UI does not know: never sent (A1111 answers 500 after
    /// applying the keys before an unknown one); they stay in the settings file.
    pub unknown: Vec<String>,
}

/// Splits `wanted` against the UI's `current` options.
pub fn plan(wanted: &Map<String, Value>, current: &Map<String, Value>) -> Plan {
    let mut plan = Plan::default();
    for (key, value) in wanted {
        match current.get(key) {
            None => plan.unknown.push(key.clone()),
            Some(now) if same(now, value) => {}
            Some(_) => {
                plan.send.insert(key.clone(), value.clone());
            }
        }
    }
    plan
}

/// What a [`sync`] did.
#[derive(Debug, Default)]
pub struct Synced {
    /// Keys sent (in one POST).
    pub sent: Vec<String>,
    /// Keys the UI does not know (not sent).
    pub unknown: Vec<String>,
    /// Why reading or writing the options failed, if it did.
    pub error: Option<String>,
}

/// Reads the UI's options, then sends the wanted settings that differ in one POST.
/// Slow when the UI is busy: callers run it as a task, never in the core's loop.
pub async fn sync(probe: &Probe, wanted: &Map<String, Value>) -> Synced {
    let current = match probe.options().await {
        Ok(current) => current,
        Err(e) => {
            return Synced {
                error: Some(format!("cannot read the UI's options: {e}")),
                ..Synced::default()
            };
        }
    };
    let plan = plan(wanted, &current);
    let mut done = Synced {
        unknown: plan.unknown,
        ..Synced::default()
    };
    if !plan.send.is_empty() {
        match probe.set_options(&plan.send).await {
            Ok(()) => done.sent = plan.send.keys().cloned().collect(),
            Err(e) => done.error = Some(format!("cannot set the UI's options: {e}")),
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn two_and_two_point_zero_are_one_value() {
        assert!(same(&json!(2), &json!(2.0)));
        assert!(same(&json!("a"), &json!("a")));
        assert!(!same(&json!(2), &json!("2")));
        assert!(!same(&json!(2), &json!(2.5)));
    }

    #[test]
    fn plan_sends_only_known_keys_that_differ() {
        let wanted = json!({"steps": 20, "cfg": 7.0, "made_up": 1});
        let current = json!({"steps": 30, "cfg": 7});
        let p = plan(
            wanted.as_object().unwrap_or(&Map::new()),
            current.as_object().unwrap_or(&Map::new()),
        );
        assert_eq!(
            p.send,
            json!({"steps": 20})
                .as_object()
                .cloned()
                .unwrap_or_default()
        );
        assert_eq!(p.unknown, vec!["made_up".to_string()]);
    }
}
