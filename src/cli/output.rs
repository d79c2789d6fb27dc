//! Rendering node status and settings: aligned tables for people, JSON for scripts.

use super::style::{code, state_color, table, Cell, Style};
use crate::client::NodeStatus;
use crate::config::NodeSpec;
use crate::protocol::node::{Exit, NodeState};
use std::fmt::Write;
use std::time::Duration;

/// `1h02m03s`, `4m05s`, `6.2s`, `350ms`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, (s % 3600) / 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s >= 1 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A configured limit: `10s`, `1.5s`, `500ms`, `2m`.
pub fn limit(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0".into()
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms > 1000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

/// Escapes a string for JSON.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// An exit as a JSON object (`null` for none).
pub fn exit_json(e: Option<Exit>) -> String {
    match e {
        None => "null".into(),
        Some(Exit::Code(c)) => format!("{{\"code\": {c}, \"signal\": null}}"),
        Some(Exit::Signal { signal, core }) => {
            format!("{{\"code\": null, \"signal\": {signal}, \"core_dumped\": {core}}}")
        }
        Some(Exit::Unknown) => "{\"code\": null, \"signal\": null, \"unknown\": true}".into(),
        Some(Exit::SpawnFailed(errno)) => format!(
            "{{\"code\": null, \"signal\": null, \"spawn_error\": {}}}",
            json_str(&std::io::Error::from_raw_os_error(errno).to_string())
        ),
    }
}

/// The JSON array `status --json` prints.
pub fn status_json(nodes: &[NodeStatus]) -> String {
    let mut o = String::from("[");
    for (i, n) in nodes.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        let _ = write!(
            o,
            "\n  {{\"name\": {}, \"type\": {}, \"state\": {}, \"pid\": {}, \"uptime_ms\": {}, \"restarts\": {}, \"last_exit\": {}, \"verified\": {}, \"last_state\": {}, \"pid_alive\": {}, \"blocked_by\": {}}}",
            json_str(&n.name),
            json_str(n.node_type.as_str()),
            json_str(n.state_word()),
            n.pid.map_or("null".into(), |p| p.to_string()),
            n.uptime.map_or("null".into(), |u| u.as_millis().to_string()),
            n.restarts,
            exit_json(n.last_exit),
            n.verified,
            json_str(n.state.as_str()),
            n.pid_alive.map_or("null".into(), |a| a.to_string()),
            n.blocked_by.map_or("null".into(), |p| p.to_string()),
        );
    }
    o.push_str(if nodes.is_empty() { "]" } else { "\n]" });
    o
}

/// Why a node in `backoff` does not start: another process of it lives.
pub fn blocked_reason(pid: u32) -> String {
    if pid == crate::protocol::node::BLOCKED_UNKNOWN {
        "blocked: a process of this node may still run".into()
    } else {
        format!("blocked by pid {pid}, a process of this node")
    }
}

/// The aligned table `status` prints (states colored with `style`).
pub fn status_table(nodes: &[NodeStatus], style: Style) -> String {
    let header = [
        "NAME",
        "TYPE",
        "STATE",
        "PID",
        "UPTIME",
        "RESTARTS",
        "LAST EXIT",
    ];
    let rows: Vec<Vec<Cell>> = nodes
        .iter()
        .map(|n| {
            let mut state = n.state_word().to_owned();
            if !n.verified {
                // The last recorded state, and what /proc says of its process.
                let alive = match n.pid_alive {
                    Some(true) => ", process alive",
                    Some(false) => ", process gone",
                    None => "",
                };
                state = format!("{state} (last: {}{alive})", n.state.as_str());
            }
            if let Some(d) = n.deadline_in {
                if matches!(n.state, NodeState::Backoff | NodeState::Stopping) {
                    state = format!("{state} ({})", duration(d));
                }
            }
            if n.state == NodeState::Starting && n.pid.is_none() {
                state.push_str(" (queued)");
            }
            if let Some(b) = n.blocked_by {
                state.push_str(&format!(" ({})", blocked_reason(b)));
            }
            let exit_color = match n.last_exit {
                Some(e) if e.is_failure() => code::RED,
                _ => "",
            };
            vec![
                Cell::new(n.name.clone()),
                Cell::new(n.node_type.as_str()),
                Cell::colored(state, state_color(n.state_word())),
                Cell::new(n.pid.map_or("-".into(), |p| p.to_string())),
                Cell::new(n.uptime.map_or("-".into(), duration)),
                Cell::new(n.restarts.to_string()),
                Cell::colored(n.last_exit.map_or("-".into(), Exit::describe), exit_color),
            ]
        })
        .collect();
    table(&header, &rows, style)
}

/// A JSON array of strings.
pub fn json_list<S: AsRef<str>>(items: &[S]) -> String {
    let inner: Vec<String> = items.iter().map(|s| json_str(s.as_ref())).collect();
    format!("[{}]", inner.join(", "))
}

/// One node's configured settings as a JSON object (what `nodes --json` and `config --json`
/// print for each node).
pub fn spec_json(n: &NodeSpec) -> String {
    let p = &n.policy;
    let env: Vec<String> = n
        .env
        .iter()
        .map(|(k, v)| format!("{}: {}", json_str(k), json_str(v)))
        .collect();
    format!(
        "{{\"name\": {}, \"type\": {}, \"command\": {}, \"cwd\": {}, \"stdout\": {}, \"stderr\": {}, \"env\": {{{}}}, \"cpu_affinity\": [{}], \"start_after\": {}, \"autostart\": {}, \"restart\": {}, \"stop_signal\": {}, \"stop_timeout_ms\": {}, \"restart_delay_ms\": {}, \"restart_delay_factor\": {}, \"restart_delay_max_ms\": {}, \"restart_reset_ms\": {}, \"quick_death_ms\": {}, \"give_up_after\": {}, \"give_up_window_ms\": {}, \"ready_after_ms\": {}, \"ready_fd\": {}, \"ready_timeout_ms\": {}, \"user\": {}, \"group\": {}, \"nice\": {}, \"memory_max\": {}, \"capabilities\": {}, \"path\": {}, \"inherit_env\": {}, \"pid_file\": {}, \"ready_file\": {}}}",
        json_str(&n.name),
        json_str(n.node_type.as_str()),
        json_list(&n.command),
        json_str(&n.cwd.to_string_lossy()),
        json_str(&n.stdout.to_string_lossy()),
        json_str(&n.stderr.to_string_lossy()),
        env.join(", "),
        n.cpu_affinity
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        json_list(&n.start_after),
        p.autostart,
        json_str(p.restart.as_str()),
        json_str(&format!("SIG{}", crate::config::signal_name(p.stop_signal))),
        p.stop_timeout.as_millis(),
        p.restart_delay.as_millis(),
        p.restart_delay_factor,
        p.restart_delay_max.as_millis(),
        p.restart_reset.as_millis(),
        p.quick_death.as_millis(),
        p.give_up_after,
        p.give_up_window.as_millis(),
        p.ready_after.as_millis(),
        p.ready_fd.map_or("null".into(), |f| f.to_string()),
        p.ready_timeout.as_millis(),
        p.user.as_deref().map_or("null".into(), json_str),
        p.group.as_deref().map_or("null".into(), json_str),
        p.nice.map_or("null".into(), |n| n.to_string()),
        p.memory_max.map_or("null".into(), |m| m.to_string()),
        json_list(&p.capabilities),
        json_str(&p.path),
        json_list(&p.inherit_env),
        p.pid_file
            .as_ref()
            .map_or("null".into(), |f| json_str(&f.to_string_lossy())),
        p.ready_file.as_ref().map_or("null".into(), |r| format!(
            "{{\"path\": {}, \"line\": {}}}",
            json_str(&r.path.to_string_lossy()),
            json_str(&r.line)
        )),
    )
}

/// `sh`-style quoting of one word, for showing command lines.
pub fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The aligned table `nodes` prints.
pub fn nodes_table(nodes: &[&NodeSpec], style: Style) -> String {
    let header = [
        "NAME",
        "TYPE",
        "AUTOSTART",
        "RESTART",
        "STOP",
        "READY",
        "START AFTER",
        "COMMAND",
    ];
    let rows: Vec<Vec<Cell>> = nodes
        .iter()
        .map(|n| {
            let p = &n.policy;
            let ready = match p.ready_fd {
                Some(fd) => format!("fd {fd}"),
                None if p.ready_after.is_zero() => "at once".into(),
                None => format!("after {}", limit(p.ready_after)),
            };
            vec![
                Cell::new(n.name.clone()),
                Cell::new(n.node_type.as_str()),
                Cell::new(if p.autostart { "yes" } else { "no" }),
                Cell::new(p.restart.as_str()),
                Cell::new(format!(
                    "SIG{} {}",
                    crate::config::signal_name(p.stop_signal),
                    limit(p.stop_timeout)
                )),
                Cell::new(ready),
                Cell::new(if n.start_after.is_empty() {
                    "-".to_owned()
                } else {
                    n.start_after.join(",")
                }),
                Cell::new(
                    n.command
                        .iter()
                        .map(|a| shell_quote(a))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
            ]
        })
        .collect();
    table(&header, &rows, style)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_millis(350)), "350ms");
        assert_eq!(duration(Duration::from_millis(6200)), "6.2s");
        assert_eq!(duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(duration(Duration::from_secs(3723)), "1h02m03s");
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\u0001""#);
    }
}
