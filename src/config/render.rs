//! Writing a [`Config`] back as TOML (see [`Config::to_toml`]).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::{signal_name, Config, NodeSpec};

/// A TOML basic string literal (one line; quotes, backslashes and control
/// characters escaped).
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A key, bare when it can be.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        string(k)
    }
}

fn path(p: &Path) -> String {
    // Paths in a Config come from TOML strings, so they are UTF-8.
    string(&p.to_string_lossy())
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn list<T, F: Fn(&T) -> String>(items: &[T], f: F) -> String {
    let inner: Vec<String> = items.iter().map(f).collect();
    format!("[{}]", inner.join(", "))
}

pub(super) fn config(cfg: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Effective configuration of {} (defaults applied, paths absolute).",
        cfg.path.display()
    );
    for n in &cfg.nodes {
        out.push('\n');
        node(&mut out, n);
    }
    out
}

fn node(out: &mut String, n: &NodeSpec) {
    let p = &n.policy;
    let env: Vec<String> = n
        .env
        .iter()
        .map(|(k, v)| format!("{} = {}", key(k), string(v)))
        .collect();
    let env = if env.is_empty() {
        "{}".to_string()
    } else {
        format!("{{ {} }}", env.join(", "))
    };
    // A named signal as its name, any other as a number.
    let name = signal_name(p.stop_signal);
    let signal = if name.parse::<i32>().is_ok() {
        name
    } else {
        string(&name)
    };
    let factor = if p.restart_delay_factor.is_nan() {
        "nan".to_string()
    } else {
        format!("{:?}", p.restart_delay_factor)
    };
    let lines = [
        "[[node]]".to_string(),
        format!("name = {}", string(&n.name)),
        format!("type = {}", string(n.node_type.as_str())),
        format!("command = {}", list(&n.command, |s| string(s))),
        format!("env = {env}"),
        format!("cwd = {}", path(&n.cwd)),
        format!("stdout = {}", path(&n.stdout)),
        format!("stderr = {}", path(&n.stderr)),
        format!(
            "cpu_affinity = {}",
            list(&n.cpu_affinity, |c| c.to_string())
        ),
        format!("start_after = {}", list(&n.start_after, |s| string(s))),
        format!("restart = {}", string(p.restart.as_str())),
        format!("stop_signal = {signal}"),
        format!("stop_timeout_ms = {}", ms(p.stop_timeout)),
        format!("autostart = {}", p.autostart),
        format!("path = {}", string(&p.path)),
        format!("inherit_env = {}", list(&p.inherit_env, |s| string(s))),
        format!("ready_check_interval_ms = {}", ms(p.ready_check_interval)),
        format!(
            "ready_timeout_action = {}",
            string(p.ready_timeout_action.as_str())
        ),
        format!("restart_delay_ms = {}", ms(p.restart_delay)),
        format!("restart_delay_max_ms = {}", ms(p.restart_delay_max)),
        format!("restart_delay_factor = {factor}"),
        format!("restart_reset_ms = {}", ms(p.restart_reset)),
        format!("give_up_after = {}", p.give_up_after),
        format!("give_up_window_ms = {}", ms(p.give_up_window)),
        format!("quick_death_ms = {}", ms(p.quick_death)),
        format!("ready_after_ms = {}", ms(p.ready_after)),
        format!("ready_timeout_ms = {}", ms(p.ready_timeout)),
        format!("log_max_bytes = {}", p.log_max_bytes),
        format!("log_keep = {}", p.log_keep),
        format!("log_direct = {}", p.log_direct),
    ];
    let mut lines = lines.to_vec();
    if let Some(u) = &p.user {
        lines.push(format!("user = {}", string(u)));
    }
    if let Some(g) = &p.group {
        lines.push(format!("group = {}", string(g)));
    }
    if let Some(m) = p.umask {
        lines.push(format!("umask = \"{m:03o}\""));
    }
    let limit = |v: u64| {
        if v == u64::MAX {
            "\"unlimited\"".to_string()
        } else {
            v.to_string()
        }
    };
    for (k, v) in [
        ("rlimit_nofile", p.rlimit_nofile),
        ("rlimit_core", p.rlimit_core),
        ("rlimit_memlock", p.rlimit_memlock),
    ] {
        if let Some(v) = v {
            lines.push(format!("{k} = {}", limit(v)));
        }
    }
    if let Some(n) = p.nice {
        lines.push(format!("nice = {n}"));
    }
    if let Some(m) = p.memory_max {
        lines.push(format!("memory_max = {m}"));
    }
    if !p.capabilities.is_empty() {
        lines.push(format!(
            "capabilities = {}",
            list(&p.capabilities, |c| string(c))
        ));
    }
    if !p.ready_check.is_empty() {
        lines.push(format!(
            "ready_check = {}",
            list(&p.ready_check, |s| string(s))
        ));
    }
    if p.notify {
        lines.push("ready = \"notify\"".to_owned());
    }
    if !p.watchdog.is_zero() {
        lines.push(format!("watchdog_ms = {}", ms(p.watchdog)));
    }
    if let Some(f) = &p.pid_file {
        lines.push(format!("pid_file = {}", path(f)));
    }
    if let Some(r) = &p.ready_file {
        lines.push(format!(
            "ready_file = {{ path = {}, line = {} }}",
            path(&r.path),
            string(&r.line)
        ));
    }
    for line in lines {
        out.push_str(&line);
        out.push('\n');
    }
    match p.ready_fd {
        Some(fd) => {
            let _ = writeln!(out, "ready_fd = {fd}");
        }
        None => out.push_str("# ready_fd is not set\n"),
    }
}
