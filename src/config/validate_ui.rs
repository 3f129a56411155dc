//! `[ui]`: the program, its argv and environment (everything that reaches exec),
//! GPUs, credentials and the UI's timeouts.

use std::collections::BTreeMap;

use super::UiConfig;
use super::checker::Checker;
use super::diagnostics::{At, Seg};
use super::limits;
use super::raw::RawUi;
use crate::ui::flavor::Flavor;

pub(super) fn ui_config(c: &mut Checker<'_>, raw: RawUi) -> Option<UiConfig> {
    let flavor = match raw.flavor.as_deref() {
        None => {
            c.missing("ui", "flavor");
            None
        }
        Some(name) => {
            let f = Flavor::parse(name);
            if f.is_none() {
                c.value(
                    ["ui", "flavor"],
                    format!("unknown flavor {name:?} (expected one of: forge, a1111, comfyui)"),
                );
            }
            f
        }
    };
    match raw.command.as_deref().map(<[String]>::first) {
        None => c.missing("ui", "command"),
        Some(None) => c.value(
            ["ui", "command"],
            "must name the program to run (a non-empty list)",
        ),
        Some(Some(p)) if p.is_empty() => {
            c.value(["ui", "command"], "the program (first element) is empty")
        }
        Some(Some(p)) if p.contains('/') && !p.starts_with('/') => c.value(
            ["ui", "command"],
            format!("the program {p:?} must be an absolute path or a bare name found on PATH"),
        ),
        Some(Some(p)) if p.starts_with('/') && !p.contains('\0') => {
            if let Some(why) = limits::path(p) {
                c.value([Seg::from("ui"), "command".into(), 0.into()], why);
            }
        }
        Some(Some(p)) if !p.contains('/') && p.len() > limits::NAME_MAX => c.value(
            [Seg::from("ui"), "command".into(), 0.into()],
            format!(
                "the program's name is {} bytes long; a file name holds at most {}",
                p.len(),
                limits::NAME_MAX
            ),
        ),
        Some(Some(_)) => {}
    }
    let command = raw.command.unwrap_or_default();
    let extra_args = raw.extra_args.unwrap_or_default();
    for (key, list) in [("command", &command), ("extra_args", &extra_args)] {
        for (i, arg) in list.iter().enumerate() {
            c.arg(vec!["ui".into(), key.into(), i.into()], arg);
        }
    }
    let port = match raw.port {
        None => flavor.map_or(7860, Flavor::default_port),
        Some(p) if (1..=65535).contains(&p) => p as u16,
        Some(p) => {
            c.value(["ui", "port"], format!("{p} is out of range (1–65535)"));
            1
        }
    };
    let environment = raw.environment.unwrap_or_default();
    for (k, v) in &environment {
        if let Some(why) = limits::env_name(k) {
            c.at(["ui", "environment", k.as_str()], At::Key, why);
        }
        if v.contains('\0') {
            c.value(
                ["ui", "environment", k.as_str()],
                "value contains a NUL byte",
            );
        } else if let Some(why) = limits::arg(&format!("{k}={v}")) {
            c.value(
                ["ui", "environment", k.as_str()],
                format!("NAME=value {why}"),
            );
        }
    }
    let exec_bytes: usize = command
        .iter()
        .chain(&extra_args)
        .map(|a| a.len() + 1)
        .chain(environment.iter().map(|(k, v)| k.len() + v.len() + 2))
        .sum();
    if exec_bytes > limits::EXEC_BYTES_MAX {
        c.value(
            ["ui", "extra_args"],
            format!(
                "ui.command, ui.extra_args and ui.environment add up to {exec_bytes} bytes; \
                 the UI's exec allows the config at most {}",
                limits::EXEC_BYTES_MAX
            ),
        );
    }
    if raw.gpus.as_ref().is_some_and(Vec::is_empty) {
        c.value(
            ["ui", "gpus"],
            "is empty; omit it to inherit CUDA_VISIBLE_DEVICES",
        );
    }
    let gpus = raw.gpus.map(|ids| gpu_list(c, ids));
    if gpus.is_some() && environment.contains_key("CUDA_VISIBLE_DEVICES") {
        c.at(
            ["ui", "environment", "CUDA_VISIBLE_DEVICES"],
            At::Key,
            "conflicts with ui.gpus, which sets CUDA_VISIBLE_DEVICES; remove one of them",
        );
    }
    let api_auth_file = raw.api_auth_file.map(|p| {
        let path = c.absolute(&["ui".into(), "api_auth_file".into()], &p);
        if flavor == Some(Flavor::Comfyui) {
            c.value(
                ["ui", "api_auth_file"],
                "ComfyUI has no API authentication (--api-auth is Forge/A1111 only)",
            );
        }
        path
    });
    let startup_timeout = c.duration(
        "ui",
        "startup_timeout",
        raw.startup_timeout.as_deref(),
        "15m",
        limits::STARTUP_TIMEOUT,
    );
    let stop_timeout = c.duration(
        "ui",
        "stop_timeout",
        raw.stop_timeout.as_deref(),
        "30s",
        limits::STOP_TIMEOUT,
    );
    Some(UiConfig {
        flavor: flavor?,
        command,
        listen: raw.listen.unwrap_or(false),
        port,
        extra_args,
        environment,
        gpus,
        api_auth_file,
        startup_timeout,
        stop_timeout,
    })
}

/// GPU indices: each duplicate reported once (with how often it appears), however
/// long the list.
fn gpu_list(c: &mut Checker<'_>, ids: Vec<i64>) -> Vec<u32> {
    // id → (how often, index of its second appearance)
    let mut seen: BTreeMap<i64, (usize, Option<usize>)> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        if !(0..=i64::from(u32::MAX)).contains(&id) {
            c.value(
                [Seg::from("ui"), "gpus".into(), i.into()],
                format!("{id} is not a GPU index"),
            );
            continue;
        }
        let entry = seen.entry(id).or_insert((0, None));
        entry.0 += 1;
        match entry.0 {
            1 => out.push(id as u32),
            2 => entry.1 = Some(i),
            _ => {}
        }
    }
    for (id, (count, second)) in seen {
        if let Some(i) = second {
            let times = if count == 2 {
                "twice".to_string()
            } else {
                format!("{count} times")
            };
            c.value(
                [Seg::from("ui"), "gpus".into(), i.into()],
                format!("GPU {id} is listed {times}"),
            );
        }
    }
    if out.len() > limits::GPUS_MAX {
        c.value(
            ["ui", "gpus"],
            format!("lists {} GPUs; at most {}", out.len(), limits::GPUS_MAX),
        );
    }
    out
}
