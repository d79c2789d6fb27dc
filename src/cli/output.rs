//! Rendering node status: an aligned table for people, JSON for scripts.

use crate::client::NodeStatus;
use crate::protocol::node::Exit;
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

fn exit_json(e: Option<Exit>) -> String {
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
            "\n  {{\"name\": {}, \"type\": {}, \"state\": {}, \"pid\": {}, \"uptime_ms\": {}, \"restarts\": {}, \"last_exit\": {}}}",
            json_str(&n.name),
            json_str(n.node_type.as_str()),
            json_str(n.state.as_str()),
            n.pid.map_or("null".into(), |p| p.to_string()),
            n.uptime.map_or("null".into(), |u| u.as_millis().to_string()),
            n.restarts,
            exit_json(n.last_exit),
        );
    }
    o.push_str(if nodes.is_empty() { "]" } else { "\n]" });
    o
}

/// The aligned table `status` prints.
pub fn status_table(nodes: &[NodeStatus]) -> String {
    let header = [
        "NAME",
        "TYPE",
        "STATE",
        "PID",
        "UPTIME",
        "RESTARTS",
        "LAST EXIT",
    ];
    let rows: Vec<[String; 7]> = nodes
        .iter()
        .map(|n| {
            let mut state = n.state.as_str().to_owned();
            if let Some(d) = n.deadline_in {
                if matches!(
                    n.state,
                    crate::protocol::node::NodeState::Backoff
                        | crate::protocol::node::NodeState::Stopping
                ) {
                    state = format!("{state} ({})", duration(d));
                }
            }
            [
                n.name.clone(),
                n.node_type.as_str().to_owned(),
                state,
                n.pid.map_or("-".into(), |p| p.to_string()),
                n.uptime.map_or("-".into(), duration),
                n.restarts.to_string(),
                n.last_exit.map_or("-".into(), Exit::describe),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut o = String::new();
    let line = |o: &mut String, cells: &[&str]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{:<w$}  ", c, w = widths[i]);
            }
        }
        o.push_str(l.trim_end());
        o.push('\n');
    };
    line(&mut o, &header);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&mut o, &cells);
    }
    o
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
